"""Batches through the public Runtime: input order, checkpoints, resume, row errors."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import dspex
from dspex.engines.base import StepCall
from dspex.lm.scripted import ScriptedLM
from dspex.runtime.batch import read_checkpoint, read_rows
from tests.runtime.test_executor import FakeEngine

SOURCE = '''signature Echo = "text -> shout"
pipeline loud(text: str) -> (shout: str) {
  shout = predict Echo(text = text).shout
}'''


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DSPEX_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DSPEX_LM", raising=False)
    return tmp_path


def shout(call: StepCall) -> dict[str, Any]:
    if call.inputs["text"] == "boom":
        raise RuntimeError("cannot shout that")
    return {"shout": call.inputs["text"].upper()}


def runtime(engine: FakeEngine) -> dspex.Runtime:
    return dspex.Runtime(lm=ScriptedLM(["x"]), engines={"native": engine, "dspy": engine}, cache=False)


def test_batch_in_input_order_with_row_errors(home: Path) -> None:
    pipe = dspex.compile_source(SOURCE).pipelines["loud"]
    delays = {"a": 0.05, "b": 0.0, "boom": 0.01, "d": 0.02}
    engine = FakeEngine("native", shout, delay=lambda call: delays[call.inputs["text"]])
    rows = [{"id": "r1", "text": "a"}, {"text": "b"}, {"id": 7, "text": "boom"}, {"id": "r4", "text": "d"}]
    with runtime(engine) as rt:
        results = list(rt.batch(pipe, rows, concurrency=4))
    assert [r.id for r in results] == ["r1", 2, 7, "r4"]
    assert [r.outputs for r in results] == [{"shout": "A"}, {"shout": "B"}, None, {"shout": "D"}]
    assert results[2].error == {"type": "RuntimeError", "message": "cannot shout that", "node": "shout"}


def test_checkpoint_resume_runs_only_missing_rows(home: Path) -> None:
    pipe = dspex.compile_source(SOURCE).pipelines["loud"]
    out = home / "out.jsonl"
    # An earlier run that was killed: two rows done, a torn third line.
    out.write_text(json.dumps({"id": 3, "outputs": {"shout": "C"}}) + "\n"
                   + json.dumps({"id": 1, "outputs": {"shout": "A"}}) + "\n" + '{"id": 2, "outp')
    engine = FakeEngine("native", shout)
    rows = read_rows(['{"text": "a"}', '{"text": "b"}', '{"text": "c"}', '{"text": "d"}'])
    with runtime(engine) as rt:
        results = list(rt.batch(pipe, rows, checkpoint=out, resume=True))
    assert sorted(c.inputs["text"] for c in engine.calls) == ["b", "d"]
    assert [r.to_json() for r in results] == [{"id": i, "outputs": {"shout": t}}
                                              for i, t in enumerate("ABCD", 1)]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == [r.to_json() for r in results]  # rewritten in input order, no duplicates
    assert set(read_checkpoint(out)) == {"1", "2", "3", "4"}


def test_without_resume_the_checkpoint_starts_over(home: Path) -> None:
    pipe = dspex.compile_source(SOURCE).pipelines["loud"]
    out = home / "out.jsonl"
    out.write_text(json.dumps({"id": 1, "outputs": {"shout": "OLD"}}) + "\n")
    with runtime(FakeEngine("native", shout)) as rt:
        results = list(rt.batch(pipe, [{"text": "a"}], checkpoint=out))
    assert results[0].outputs == {"shout": "A"}
    assert json.loads(out.read_text()) == {"id": 1, "outputs": {"shout": "A"}}


def test_bad_rows_and_duplicate_ids(home: Path) -> None:
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_rows(['{"text": "a"}', "{oops"])
    with pytest.raises(ValueError, match="not a JSON object"):
        read_rows(["[1, 2]"])
    assert read_rows(["", '{"text": "a"}']) == [{"id": 2, "text": "a"}]
    pipe = dspex.compile_source(SOURCE).pipelines["loud"]
    with runtime(FakeEngine("native", shout)) as rt, pytest.raises(ValueError, match="duplicate row ids"):
        list(rt.batch(pipe, [{"id": 1, "text": "a"}, {"id": 1, "text": "b"}]))


def test_missing_input_is_a_row_error(home: Path) -> None:
    pipe = dspex.compile_source(SOURCE).pipelines["loud"]
    with runtime(FakeEngine("native", shout)) as rt:
        [result] = list(rt.batch(pipe, [{"txt": "a"}]))
    assert result.error is not None and result.error["type"] == "InputError"


def test_stream_call_and_decorated_pipeline(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from dspex.runtime.executor import NodeEvent
    from tests.servers.openai_stub import OpenAIStub

    pipe = dspex.compile_source(SOURCE).pipelines["loud"]
    engine = FakeEngine("native", shout)
    with runtime(engine) as rt:
        async def collect() -> list[Any]:
            return [item async for item in rt.stream(pipe, text="hey")]

        items = asyncio.run_coroutine_threadsafe(collect(), rt.loop).result()
        assert [e.kind for e in items[:-1] if isinstance(e, NodeEvent)] == ["start", "end"]
        assert items[-1] == {"shout": "HEY"}
        assert rt.call(pipe.signatures["Echo"], text="yo") == {"shout": "YO"}

    Echo = dspex.signature("text -> shout", name="Echo")

    @dspex.pipeline
    def loud(text: str) -> dict:
        return {"shout": dspex.predict(Echo, text=text).shout}

    with OpenAIStub(answer=lambda body: '{"shout": "HI"}') as stub:
        monkeypatch.setenv("DSPEX_LM", f"openai:stub@{stub.base_url}")
        monkeypatch.setattr("dspex.runtime.runtime._default", None)
        try:
            assert loud(text="hi") == {"shout": "HI"}
        finally:
            from dspex.runtime import runtime as runtime_module

            assert runtime_module._default is not None
            runtime_module._default.close()
