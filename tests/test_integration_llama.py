"""End to end on real parts: a real ``llama_cpp.server`` with SmolLM2 on 127.0.0.1, driven through the
OpenAI-compatible adapter by both engines, and the in-process ``local`` adapter through the Runtime.

SmolLM2-135M is tiny, so these tests hold the contract (types, constraints, timings and tokens recorded),
not the wisdom of the answers."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

import dspex
from dspex.runtime.executor import NodeEvent
from tests.llama_server import LlamaServer

ROOT = Path(__file__).parents[1]
SOURCE = (ROOT / "examples" / "reviews.dspex").read_text() + '''
pipeline classify_dspy(review: str) -> (label: Sentiment) {
  label = predict Classify(review = review).label with (engine = "dspy", retries = 1)
}
'''
LABELS = ("positive", "negative", "neutral")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with LlamaServer() as base_url:
        yield base_url


@pytest.fixture(scope="module")
def program() -> dspex.Program:
    return dspex.compile_source(SOURCE, "reviews.dspex")


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DSPEX_HOME", str(tmp_path))
    monkeypatch.delenv("DSPEX_LM", raising=False)
    return tmp_path


def ends(rt: dspex.Runtime) -> list[NodeEvent]:
    return [e for e in rt.events if e.kind == "end"]


def test_native_engine_through_llama_server(server: str, program: dspex.Program, home: Path) -> None:
    with dspex.Runtime(lm=f"openai:smollm2@{server}") as rt:
        out = rt.run(program.pipelines["classify_one"], review="Battery lasts two days, love it.")
        assert out["label"] in LABELS and 0 <= out["confidence"] <= 1
        [event] = ends(rt)
        assert event.engine == "native" and event.lm == f"openai:smollm2@{server}"
        assert event.lm_calls >= 1 and event.prompt_tokens > 0 and event.completion_tokens > 0
        assert event.duration_s > 0
        again = rt.run(program.pipelines["classify_one"], review="Battery lasts two days, love it.")
        assert again == out and rt.events[-1].kind == "cache_hit"


def test_dspy_engine_through_llama_server(server: str, program: dspex.Program, home: Path) -> None:
    with dspex.Runtime(lm=f"openai:smollm2@{server}", cache=False) as rt:
        try:
            out = rt.run(program.pipelines["classify_dspy"], review="Fast shipping and great build quality.")
        except dspex.StepError as exc:  # the 135M model may not follow dspy's answer format
            assert exc.node == "label" and type(exc.cause).__name__ in ("ValidationError", "LMError")
        else:
            assert out["label"] in LABELS
        events = [e for e in rt.events if e.node == "label"]
        assert events[0].kind == "start"
        assert events[-1].kind in ("end", "error")
        if events[-1].kind == "end":
            assert events[-1].engine == "dspy" and events[-1].lm_calls >= 1


def test_local_adapter_in_process_through_the_runtime(program: dspex.Program, home: Path) -> None:
    with dspex.Runtime() as rt:  # no lm anywhere but the program's `lm default = local("smollm2")`
        out = rt.run(program.pipelines["classify_one"], review="Way too loud and the app keeps crashing.")
        assert out["label"] in LABELS and 0 <= out["confidence"] <= 1
        [event] = ends(rt)
        assert event.lm == "local:smollm2" and event.completion_tokens > 0
