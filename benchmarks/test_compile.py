"""Compile speed: DSPex's whole compile (parse, check, lower) of a generated program against DSPy building
the same signatures from their strings with ``dspy.Signature``.

The program (``benchmarks/programs.py``) has 2,000 signatures and 200 pipelines; DSPy builds only the 2,000
signatures, so it does strictly less. The target is a ratio dspex / dspy of at most 0.25. Run with
``python -m pytest benchmarks -q``; ``DSPEX_BENCH_ROUNDS`` changes the number of rounds (default 5).
"""
from __future__ import annotations

import os
import re
import sys
from typing import Any

import pytest

import dspex
from benchmarks.programs import generate_program

__all__ = ["N_SIGNATURES", "N_PIPELINES", "ROUNDS", "reset_caches"]

N_SIGNATURES, N_PIPELINES = 2000, 200
ROUNDS = int(os.environ.get("DSPEX_BENCH_ROUNDS", "5"))
TARGET = 0.25
# Built once per process, as DSPy's own import is: the Lark parser object (grammar analysis and tables).
_KEEP = re.compile(r"parser|grammar|lark", re.I)


def reset_caches() -> None:
    """Clear every ``functools`` cache of the loaded ``dspex`` modules, so no round reuses an earlier one's work
    (except the parser object itself)."""
    for name, module in list(sys.modules.items()):
        if not name.startswith("dspex.") or module is None:
            continue
        for attr, value in list(vars(module).items()):
            if callable(getattr(value, "cache_clear", None)) and not _KEEP.search(attr):
                value.cache_clear()


@pytest.fixture(scope="module")
def program() -> tuple[str, list[str]]:
    src, strings = generate_program(N_SIGNATURES, N_PIPELINES, seed=0)
    # Untimed: builds the parser once, and makes sure the program is clean (no error, no warning).
    assert dspex.check_source(src, filename="bench.dspex") == []
    return src, strings


def _pedantic(benchmark: Any, fn: Any, *args: Any, setup: Any = None, **kwargs: Any) -> Any:
    return benchmark.pedantic(fn, args=args, kwargs=kwargs, setup=setup, rounds=ROUNDS, iterations=1,
                              warmup_rounds=1)


@pytest.mark.benchmark(group="compile")
def test_dspex_compile(benchmark: Any, program: tuple[str, list[str]]) -> None:
    src, strings = program
    benchmark.extra_info.update(side="dspex", items=len(strings), unit="signature", target=TARGET,
                                pipelines=N_PIPELINES, source_bytes=len(src.encode()))
    prog = _pedantic(benchmark, dspex.compile_source, src, filename="bench.dspex", setup=reset_caches)
    assert len(prog.signatures) == N_SIGNATURES and len(prog.pipelines) == N_PIPELINES


def _build_all(strings: list[str]) -> list[Any]:
    import dspy

    return [dspy.Signature(s) for s in strings]


@pytest.mark.benchmark(group="compile")
def test_dspy_signatures(benchmark: Any, program: tuple[str, list[str]]) -> None:
    import dspy

    _, strings = program
    dspy.Signature(strings[0])  # DSPy's imports happen here, outside the timing
    benchmark.extra_info.update(side="competitor", competitor=f"dspy {dspy.__version__}", items=len(strings),
                                unit="signature")
    built = _pedantic(benchmark, _build_all, strings)
    assert len(built) == N_SIGNATURES
