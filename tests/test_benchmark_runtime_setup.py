"""The runtime benchmarks (``benchmarks/test_runtime.py``) compare like with like: both sides' instant LMs give
valid outputs, dspy's cached LM is really hit, the stub process answers each side in its own format, the bare
HTTP baseline counts its answers, the SmolLM2 figures add up, and the summary prints every ratio per item."""
from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import dspy
import pytest

import dspex
from benchmarks.conftest import summarize
from benchmarks.test_runtime import (
    EXAMPLES,
    EXPECTED,
    REVIEW,
    InstantLM,
    RowOutcome,
    StubProcess,
    classify_rows,
    describe_rows,
    instant_dspy_lm,
    raw_http_calls,
)
from dspex.engines.native import NativeEngine
from dspex.ir.program import Program
from dspex.lm.base import LMRequest
from dspex.lm.openai import OpenAILM
from dspex.lm.scripted import ScriptedLM
from dspex.runtime.config import Config


@pytest.fixture(scope="module")
def program() -> Program:
    return dspex.compile_file(str(EXAMPLES / "reviews.dspex"))


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(home=tmp_path / "home")


def test_instant_lms_give_valid_outputs_on_both_sides(program: Program, config: Config) -> None:
    sig = program.signatures["Classify"]
    lm = InstantLM()
    with dspex.Runtime(lm=lm, cache=False, config=config) as rt:
        assert rt.call(sig, review=REVIEW) == EXPECTED
    assert lm.calls == 1
    dspy_lm, count = instant_dspy_lm(cache=False)
    with dspy.context(lm=dspy_lm):
        assert dict(dspy.Predict(sig.to_dspy())(review=REVIEW)) == EXPECTED
    assert count.calls == 1


def test_both_caches_answer_a_repeat_without_the_lm(program: Program, config: Config) -> None:
    lm = InstantLM()
    with dspex.Runtime(lm=lm, cache=True, config=config) as rt:
        for _ in range(3):
            assert rt.run(program.pipelines["classify_one"], review=REVIEW) == EXPECTED
    assert lm.calls == 1
    dspy_lm, count = instant_dspy_lm(cache=True)
    predict = dspy.Predict(program.signatures["Classify"].to_dspy())
    review = f"{REVIEW} ({uuid.uuid4()})"  # dspy's cache is on disk: an input no earlier run has seen
    with dspy.context(lm=dspy_lm):
        for _ in range(3):
            assert dict(predict(review=review)) == EXPECTED
    assert count.calls == 1


def test_stub_process_answers_each_side_in_its_format(program: Program, config: Config) -> None:
    sig = program.signatures["Classify"]
    with StubProcess(0.0) as stub:
        with dspex.Runtime(lm=OpenAILM("x", base_url=stub.base_url), cache=False, config=config) as rt:
            assert rt.call(sig, review=REVIEW) == EXPECTED
        lm = dspy.LM("openai/x", api_base=stub.base_url, api_key="x", cache=False, num_retries=0)
        with dspy.context(lm=lm):
            assert dict(dspy.Predict(sig.to_dspy())(review=REVIEW)) == EXPECTED
        body = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
        assert asyncio.run(raw_http_calls(stub.port, body, 10, 3)) == 10


def test_classify_rows_counts_valid_rows_and_accuracy(program: Program, config: Config) -> None:
    def answer(request: LMRequest) -> str:  # row b's answers never validate, re-asks included
        label = "great" if any("row b" in m.content for m in request.messages) else "positive"
        return f'{{"label": "{label}", "confidence": 0.9}}'

    rows = [{"id": "a", "review": "row a"}, {"id": "b", "review": "row b"}]
    engines = {"native": NativeEngine()}
    with dspex.Runtime(lm=ScriptedLM(answer), cache=False, config=config, engines=engines) as rt:
        outcomes = classify_rows(rt, program.pipelines["classify_one"], rows)
    assert [o.outputs is not None for o in outcomes] == [True, False]
    assert "ValidationError" in outcomes[1].error
    figures, line = describe_rows(outcomes, {"a": "positive", "b": "positive"})
    assert figures["valid_share"] == 0.5 and figures["accuracy"] == 0.5 and figures["rows"] == 2
    assert "valid: 1/2" in line and "accuracy vs gold: 1/2" in line
    assert describe_rows([RowOutcome("a", 1.0, {"label": "negative"})], {"a": "positive"})[0]["accuracy"] == 0


def _bench(name: str, side: str, minimum: float, items: int = 1, **info: Any) -> dict[str, Any]:
    return {"name": name, "group": "g", "min": minimum, "median": minimum * 1.5, "path": None,
            "extra_info": {"side": side, "items": items, "unit": "call", **info}}


def test_summary_compares_per_item_with_variants_baselines_and_figures() -> None:
    lines = summarize([
        _bench("ours_sync", "dspex", 2.0, target=0.1, variant="sync", summary=["42 calls/s"]),
        _bench("ours_loop", "dspex", 100.0, items=200, target=0.1),
        _bench("theirs", "competitor", 10.0, competitor="dspy X"),
        _bench("floor", "baseline", 0.1),
        {**_bench("old", "dspex", 1.0), "path": "stored.json"},  # --benchmark-compare's stored run: ignored
    ])
    text = "\n".join(lines)
    assert lines[0] == "[g] ours_sync, ours_loop vs dspy X"
    assert "      42 calls/s" in lines and "[sync]" in text
    assert "ratio ours_sync / dspy X: 0.200 (median), 0.200 (min)  (target <= 0.1: NOT met" in text
    assert "ratio ours_loop / dspy X: 0.050 (median), 0.050 (min)  (target <= 0.1: met on the median, met" in text
    assert "ratio ours_sync / floor (baseline): 20.000" in text
    assert "old" not in text
