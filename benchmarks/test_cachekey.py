"""Cache-key speed (group ``cache-key``): the key of a typical step call, ours against dspy's way of keying a call.

Every side keys the same 1,000 step calls per round (``items=1000``, time per key): a fingerprint string, inputs
``{"question": <200-char str>, "context": [5 strs of ~100 chars], "temperature": 0.7, "k": 5}`` (the question
differs from call to call), an lm identity string, options ``{"temperature": 0.7}`` and no variables.

- ``test_cachekey_c``: ``dspex.native`` compiled twin, ``cache_key(...)`` (canonical msgpack written into a C
  buffer, XXH3-128). Target: at most 0.5 of the competitor's time per key.
- ``test_cachekey_py``: the Python twin (``msgpack.packb`` of the canonicalised call, ``xxhash``), for reference:
  what a machine without a compiler gets.
- ``test_cachekey_orjson_sha256`` (competitor): ``hashlib.sha256(orjson.dumps(call, option=OPT_SORT_KEYS))``, dspy's
  way of keying a request, over one dict holding the same five parts. That dict is built before the timing, so
  the competitor is not charged for assembling it.

Run with ``python -m pytest benchmarks/test_cachekey.py -q --no-cov``; ``DSPEX_BENCH_CACHEKEY_ROUNDS`` sets the
rounds (default 100).
"""
from __future__ import annotations

import hashlib
import os
import random
import string
from collections.abc import Callable
from types import ModuleType
from typing import Any

import orjson
import pytest
from dspex.native import twin

__all__ = ["CALLS", "FINGERPRINT", "LM_IDENTITY", "OPTIONS", "ROUNDS", "TARGET", "step_inputs"]

CALLS = 1000
ROUNDS = int(os.environ.get("DSPEX_BENCH_CACHEKEY_ROUNDS", "100"))
TARGET = 0.5
FINGERPRINT = "3f" * 32
LM_IDENTITY = "openai:gpt-4o-mini@http://127.0.0.1:8000/v1"
OPTIONS: dict[str, Any] = {"temperature": 0.7}
VARS: dict[str, Any] = {}


def step_inputs(n: int = CALLS, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` typical step inputs: a 200-character question (a different one each), five ~100-character passages."""
    rnd = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + "      .,"

    def text(size: int) -> str:
        return "".join(rnd.choice(alphabet) for _ in range(size))

    context = [text(rnd.randint(90, 110)) for _ in range(5)]
    return [{"question": text(200), "context": list(context), "temperature": 0.7, "k": 5} for _ in range(n)]


INPUTS = step_inputs()


def _compiled() -> ModuleType:
    try:
        return twin("cachekey", "c")
    except ImportError:
        pytest.skip("the compiled cache-key twin is not built (no compiler at install, or DSPEX_NO_EXTENSIONS=1)")


def _our_keys(module: ModuleType) -> Callable[[], list[bytes]]:
    cache_key = module.cache_key

    def run() -> list[bytes]:
        return [cache_key(FINGERPRINT, inputs, LM_IDENTITY, OPTIONS, VARS) for inputs in INPUTS]
    return run


def _measure(benchmark: Any, run: Callable[[], list[bytes]]) -> list[bytes]:
    return benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)  # type: ignore[no-any-return]


@pytest.mark.benchmark(group="cache-key")
def test_cachekey_c(benchmark: Any) -> None:
    module = _compiled()
    benchmark.extra_info.update(side="dspex", items=CALLS, unit="key", target=TARGET,
                                variant="compiled twin (Cython, XXH3-128)")
    keys = _measure(benchmark, _our_keys(module))
    assert keys == _our_keys(twin("cachekey", "py"))() and len(set(keys)) == CALLS


@pytest.mark.benchmark(group="cache-key")
def test_cachekey_py(benchmark: Any) -> None:
    benchmark.extra_info.update(side="dspex", items=CALLS, unit="key", variant="python twin")
    keys = _measure(benchmark, _our_keys(twin("cachekey", "py")))
    assert len(set(keys)) == CALLS


@pytest.mark.benchmark(group="cache-key")
def test_cachekey_orjson_sha256(benchmark: Any) -> None:
    benchmark.extra_info.update(side="competitor", competitor="sha256(orjson.dumps(OPT_SORT_KEYS)) (dspy's way)",
                                items=CALLS, unit="key")
    calls = [{"fingerprint": FINGERPRINT, "inputs": inputs, "lm": LM_IDENTITY, "options": OPTIONS, "vars": VARS}
             for inputs in INPUTS]
    sha256, dumps, sort_keys = hashlib.sha256, orjson.dumps, orjson.OPT_SORT_KEYS

    def run() -> list[bytes]:
        return [sha256(dumps(call, option=sort_keys)).digest() for call in calls]
    keys = _measure(benchmark, run)
    assert len(set(keys)) == CALLS
