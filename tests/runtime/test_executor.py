"""The dataflow executor: concurrency, map order, branches, errors, tools and nested pipelines."""
from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import dspex
from dspex.engines.base import Engine, StepCall, StepResult
from dspex.errors import StepError, ToolLoadError
from dspex.lm.scripted import ScriptedLM
from dspex.runtime.executor import Executor, InputError, NodeEvent

EXAMPLES = Path(__file__).parents[2] / "examples"


class FakeEngine(Engine):
    """Answers from a function of the call, after ``delay`` seconds; records the calls."""

    def __init__(self, name: str, answer: Any, delay: float = 0.0, modules: tuple[str, ...] = ("predict",
                 "chain_of_thought", "best_of")):
        self.name, self.answer, self.delay, self.modules = name, answer, delay, modules
        self.calls: list[StepCall] = []

    def supports(self, module: str) -> bool:
        return module in self.modules

    async def run(self, call: StepCall, lm: Any) -> StepResult:
        self.calls.append(call)
        delay = self.delay(call) if callable(self.delay) else self.delay
        await asyncio.sleep(delay)
        return StepResult(self.answer(call), lm_calls=1, engine=self.name)


def executor(engine: Engine, events: list[NodeEvent] | None = None, dspy: Engine | None = None) -> Executor:
    lm = ScriptedLM(["unused"])
    engines = {"native": engine, "dspy": dspy or engine}
    return Executor(lambda pipeline, name: lm, engines, None, (events.append if events is not None else None), 4)


SOURCE = '''
type Sentiment = enum("positive", "negative", "neutral")
signature Classify {
  in review: str
  out label: Sentiment
  out confidence: float
}
signature Summarize = "texts: list[str], labels: list[str] -> summary"
var temperature: float = 0.2 in [0.0 .. 1.0]
pipeline digest(reviews: list[str]) -> (labels: list[Sentiment], summary: str) {
  classified = map r in reviews: predict Classify(review = r) with (temperature = temperature)
  labels = classified.label
  summary = chain_of_thought Summarize(texts = reviews, labels = labels).summary
}
pipeline two(a: str, b: str) -> (x: str, y: str) {
  x = predict Classify(review = a).label
  y = predict Classify(review = b).label
}
'''


def answer(call: StepCall) -> dict[str, Any]:
    if call.signature.name == "Classify":
        text = call.inputs["review"]
        return {"label": "negative" if "bad" in text else "positive", "confidence": 0.9}
    return {"summary": f"{len(call.inputs['texts'])} reviews: {','.join(call.inputs['labels'])}",
            "reasoning": "counted"}


@pytest.fixture(scope="module")
def program() -> dspex.Program:
    return dspex.compile_source(SOURCE)


def test_map_keeps_order_under_uneven_latency(program: dspex.Program) -> None:
    engine = FakeEngine("native", answer, delay=lambda call: 0.03 if "bad" in call.inputs.get("review", "") else 0)
    reviews = ["bad one", "fine", "bad two", "great", "ok"]
    out = asyncio.run(executor(engine).run(program.pipelines["digest"], {"reviews": reviews}))
    assert out["labels"] == ["negative", "positive", "negative", "positive", "positive"]
    assert out["summary"] == "5 reviews: negative,positive,negative,positive,positive"
    classify = [c for c in engine.calls if c.signature.name == "Classify"]
    assert all(c.options["temperature"] == 0.2 for c in classify)


def test_independent_steps_run_concurrently(program: dspex.Program) -> None:
    engine = FakeEngine("native", answer, delay=0.2)
    started = time.perf_counter()
    asyncio.run(executor(engine).run(program.pipelines["two"], {"a": "x", "b": "y"}))
    assert time.perf_counter() - started < 0.35  # two 0.2 s steps, side by side


def test_map_concurrency_is_bounded(program: dspex.Program) -> None:
    running, peak = 0, 0

    class Counting(FakeEngine):
        async def run(self, call: StepCall, lm: Any) -> StepResult:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            try:
                return await super().run(call, lm)
            finally:
                running -= 1

    engine = Counting("native", answer, delay=0.01)
    asyncio.run(executor(engine).run(program.pipelines["digest"], {"reviews": ["r"] * 20}))
    assert peak == 4


def test_only_the_taken_branch_runs() -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        prog = dspex.compile_file(EXAMPLES / "support.dspex")
        for urgency, module in (("high", "chain_of_thought"), ("low", "predict")):
            def reply(call: StepCall, urgency: str = urgency) -> dict[str, Any]:
                if call.signature.name == "Triage":
                    return {"urgency": urgency}
                return {"reply": f"re: {call.inputs['context'][0][:10]}", "reasoning": "r"}

            engine = FakeEngine("native", reply)
            out = asyncio.run(executor(engine).run(prog.pipelines["support"], {"message": "reset my password"}))
            assert out["urgency"] == urgency
            assert out["reply"] == "re: To reset y"
            answers = [c for c in engine.calls if c.signature.name == "Answer"]
            assert [c.module for c in answers] == [module]
            assert answers[0].var_values == {"tone": "Be brief."}
            assert answers[0].inputs["context"][0].startswith("To reset your password")
    finally:
        sys.path.remove(str(EXAMPLES))


def test_step_error_names_node_line_inputs_and_cause(program: dspex.Program) -> None:
    def boom(call: StepCall) -> dict[str, Any]:
        if call.signature.name == "Summarize":
            raise RuntimeError("model fell over")
        return answer(call)

    events: list[NodeEvent] = []
    with pytest.raises(StepError) as info:
        asyncio.run(executor(FakeEngine("native", boom), events).run(program.pipelines["digest"],
                                                                     {"reviews": ["a"]}))
    err = info.value
    assert (err.node, err.line) == ("summary", 13)
    assert err.inputs == {"texts": ["a"], "labels": ["positive"]}
    assert isinstance(err.cause, RuntimeError) and "model fell over" in str(err)
    assert [e.kind for e in events if e.node == "summary"] == ["start", "error"]


def test_on_error_skip_and_none() -> None:
    src = SOURCE.replace("predict Classify(review = r) with (temperature = temperature)",
                         'predict Classify(review = r) with (temperature = temperature, on_error = "skip")')
    prog = dspex.compile_source(src)

    def flaky(call: StepCall) -> dict[str, Any]:
        if call.inputs.get("review") == "crash":
            raise RuntimeError("no")
        return answer(call)

    out = asyncio.run(executor(FakeEngine("native", flaky)).run(prog.pipelines["digest"],
                                                               {"reviews": ["a", "crash", "bad"]}))
    assert out["labels"] == ["positive", "negative"]
    prog = dspex.compile_source(SOURCE.replace("x = predict Classify(review = a).label",
                                               'x = predict Classify(review = a).label with (on_error = "none")')
                                .replace("-> (x: str, y: str)", "-> (x: str?, y: str)"))
    out = asyncio.run(executor(FakeEngine("native", flaky)).run(prog.pipelines["two"], {"a": "crash", "b": "bad"}))
    assert out == {"x": None, "y": "negative"}


def test_engine_choice_auto_native_and_dspy() -> None:
    src = '''signature S = "q -> a"
pipeline p(q: str) -> (a: str, b: str, c: str) {
  a = predict S(q = q).a
  b = react S(q = q).a
  c = predict S(q = q).a with (engine = "dspy")
}'''
    prog = dspex.compile_source(src)
    native = FakeEngine("native", lambda c: {"a": "n"})
    dspy = FakeEngine("dspy", lambda c: {"a": "d", "trajectory": {}}, modules=("predict", "react"))
    out = asyncio.run(executor(native, dspy=dspy).run(prog.pipelines["p"], {"q": "?"}))
    assert out == {"a": "n", "b": "d", "c": "d"}


def test_inputs_are_checked(program: dspex.Program) -> None:
    ex = executor(FakeEngine("native", answer))
    with pytest.raises(InputError, match="needs input 'reviews'"):
        asyncio.run(ex.run(program.pipelines["digest"], {}))
    with pytest.raises(InputError, match="did you mean 'reviews'"):
        asyncio.run(ex.run(program.pipelines["digest"], {"reviewz": []}))


def test_tools_and_nested_pipelines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mytools.py").write_text("def double(x: int) -> int:\n    return 2 * x\n"
                                         "def wrong(x: int) -> int:\n    return 'nope'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    src = '''tool double(x: int) -> int = python("mytools:double")
tool wrong(x: int) -> int = python("mytools:wrong")
tool missing(x: int) -> int = python("nosuchmodule_xyz:f")
pipeline inner(x: int) -> (y: int) {
  y = call double(x = x)
}
pipeline outer(x: int) -> (z: int) {
  z = call inner(x = x).y
}
pipeline bad(x: int) -> (z: int) {
  z = call wrong(x = x)
}
pipeline gone(x: int) -> (z: int) {
  z = call missing(x = x)
}'''
    prog = dspex.compile_source(src)
    ex = executor(FakeEngine("native", answer))
    assert asyncio.run(ex.run(prog.pipelines["outer"], {"x": 21})) == {"z": 42}
    with pytest.raises(StepError, match="return"):
        asyncio.run(ex.run(prog.pipelines["bad"], {"x": 1}))
    with pytest.raises(StepError) as info:
        asyncio.run(ex.run(prog.pipelines["gone"], {"x": 1}))
    assert isinstance(info.value.cause, ToolLoadError)
