"""The benchmark program generator (``benchmarks/programs.py``) makes programs that compile cleanly, and each
signature's DSPy string makes, in ``dspy.Signature``, the same fields (names, order, roles, types) as the
compiled signature: the compile benchmark compares like with like."""
from __future__ import annotations

import random

import dspy
import pytest

import dspex
from benchmarks.programs import generate_program
from dspex.ir.types import to_python
from tests.interop.test_dspy_signature import canonical

N_SIGNATURES, N_PIPELINES = 60, 6


@pytest.fixture(scope="module")
def small() -> tuple[str, list[str]]:
    return generate_program(N_SIGNATURES, N_PIPELINES, seed=0)


def test_generator_is_deterministic(small: tuple[str, list[str]]) -> None:
    assert generate_program(N_SIGNATURES, N_PIPELINES, seed=0) == small
    assert generate_program(N_SIGNATURES, N_PIPELINES, seed=1) != small


def test_small_program_compiles_without_any_diagnostic(small: tuple[str, list[str]]) -> None:
    src, strings = small
    assert dspex.check_source(src, filename="bench.dspex") == []
    prog = dspex.compile_source(src, filename="bench.dspex")
    assert len(prog.signatures) == len(strings) == N_SIGNATURES
    assert len(prog.pipelines) == N_PIPELINES


def test_program_has_the_promised_mix(small: tuple[str, list[str]]) -> None:
    src, strings = small
    string_form = sum(f'= "{s}"' in src for s in strings)
    assert 0.3 * N_SIGNATURES < string_form < 0.7 * N_SIGNATURES
    for feature in ('"""', " where ", " = map ", "if ", "} else {", " with (", "retries = 3",
                    "temperature = temperature", "chain_of_thought ", "predict ", "type Doc {", "= enum(", "lm ",
                    "var ", "Literal[", "Optional[int]", "dict[str, int]", "list[str]", "bool", "float"):
        assert feature in src, feature


@pytest.mark.parametrize("seed", [0, 7])
def test_larger_programs_compile_cleanly(seed: int) -> None:
    src, strings = generate_program(300, 30, seed=seed)
    assert dspex.check_source(src, filename="bench.dspex") == []


def test_string_signatures_match_dspy() -> None:
    src, strings = generate_program(400, 10, seed=3)
    prog = dspex.compile_source(src, filename="bench.dspex")
    sigs = list(prog.signatures.values())
    assert len(sigs) == len(strings)
    for i in sorted(random.Random(0).sample(range(len(strings)), 40)):
        ref = dspy.Signature(strings[i])
        theirs = [(name, f.json_schema_extra["__dspy_field_type"], canonical(f.annotation))  # type: ignore[index]
                  for name, f in ref.fields.items()]
        ours = [(f.name, "input", canonical(to_python(f.type))) for f in sigs[i].inputs]
        ours += [(f.name, "output", canonical(to_python(f.type))) for f in sigs[i].outputs]
        assert ours == theirs, (sigs[i].name, strings[i])
