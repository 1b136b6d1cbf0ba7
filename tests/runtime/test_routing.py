"""Routing through the runtime: a step's routes, pins, the adaptive scheduler learning from real runs (a failed
exploration re-run on the default route, state that persists under DSPEX_HOME), cached answers served whatever
route the scheduler would pick, adaptations when a route degrades, and anomalies that open an lm's breaker."""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dspex
from dspex.engines.dspy_engine import DspyEngine
from dspex.engines.native import NativeEngine
from dspex.errors import StepError
from dspex.lm import spec as lm_spec
from dspex.lm.base import LM, LMError, LMRequest
from dspex.lm.scripted import ScriptedLM
from dspex.runtime.resilience import CircuitOpenError
from dspex.runtime.routing import Router
from dspex.runtime.runtime import Runtime
from dspex.runtime.scheduler import SCHEDULER_FILE
from dspex.runtime.telemetry import RingSink

SOURCE = '''
type Sentiment = enum("positive", "negative", "neutral")
signature Classify {
  in  review: str
  out label: Sentiment
  out confidence: float
}
lm fast   = openai(model = "fast", base_url = "http://127.0.0.1:9/v1")
lm slow   = openai(model = "slow", base_url = "http://127.0.0.1:9/v1")
lm safe   = fallback(fast, slow)
lm spread = round_robin(fast, slow)
pipeline classify(review: str) -> (label: Sentiment) {
  label = predict Classify(review = review).label
}
pipeline several(review: str) -> (a: Sentiment, b: Sentiment, c: Sentiment) {
  a = predict Classify(review = review).label with (lm = fast)
  b = predict Classify(review = review).label with (lm = safe)
  c = predict Classify(review = review).label with (lm = spread)
}
'''
SPREAD_SOURCE = '''
signature Tag = "text: str -> tag: str"
lm a = openai(model = "a", base_url = "http://127.0.0.1:9/v1")
lm b = openai(model = "b", base_url = "http://127.0.0.1:9/v1")
lm default = round_robin(a, b)
pipeline tag(text: str) -> (tag: str) {
  tag = predict Tag(text = text).tag with (engine = "native")
}
'''
PROGRAM = dspex.compile_source(SOURCE)
CLASSIFY = PROGRAM.pipelines["classify"]
NODE = "classify.label"  # what the scheduler learns under: pipeline.node
NATIVE, DSPY = ("native", "@default"), ("dspy", "@default")
GOOD = '{"label": "positive", "confidence": 0.9}'


def native_only(request: LMRequest) -> str:
    """Good JSON for the native engine (it asks with a schema); an unparsable answer for dspy's adapters."""
    return GOOD if request.json_schema is not None else "no fields here at all"


def ring(rt: Runtime) -> RingSink:
    sink = rt.telemetry.ring
    assert sink is not None
    return sink


def run_rows(rt: Runtime, lm: ScriptedLM, n: int, tag: str) -> str:
    """Run ``n`` distinct rows (each must succeed); one character per row: ``x`` when the dspy route was tried."""
    marks = []
    for i in range(n):
        before = sum(r.json_schema is None for r in lm.requests)
        assert rt.run(CLASSIFY, review=f"{tag} {i:03d}") == {"label": "positive"}
        marks.append("x" if sum(r.json_schema is None for r in lm.requests) > before else ".")
    return "".join(marks)


# -- routes -------------------------------------------------------------------------------------------------------

def test_routes() -> None:
    engines = {"native": NativeEngine(), "dspy": DspyEngine()}
    bare = dspex.compile_source('signature S = "q -> a"\npipeline p(q: str) -> (a: str) { a = predict S(q = q).a }')
    p = bare.pipelines["p"]
    assert Router.routes(p, "predict", "auto", None, engines) == [NATIVE, DSPY]  # native first where it can
    assert Router.routes(p, "react", "auto", None, engines) == [DSPY]  # native cannot run react
    assert Router.routes(p, "predict", "dspy", None, engines) == [DSPY]  # an explicit engine is the only one
    assert Router.routes(p, "predict", "auto", None, {"dspy": DspyEngine()}) == [DSPY]
    several = PROGRAM.pipelines["several"]
    assert Router.routes(several, "predict", "native", "fast", engines) == [("native", "fast")]
    # a fallback is one route: its order is an availability contract
    assert Router.routes(several, "predict", "auto", "safe", engines) == [("native", "safe"), ("dspy", "safe")]
    # a round_robin is split into its members, so measured routing replaces blind rotation
    assert Router.routes(several, "chain_of_thought", "auto", "spread", engines) == [
        ("native", "fast"), ("native", "slow"), ("dspy", "fast"), ("dspy", "slow")]
    spread_default = dspex.compile_source(SPREAD_SOURCE).pipelines["tag"]
    assert Router.routes(spread_default, "predict", "native", None, engines) == [("native", "a"), ("native", "b")]


def test_a_pin_on_every_step_takes_native_every_time() -> None:
    lm = ScriptedLM(native_only)
    with Runtime(lm=lm, cache=False, config={"scheduler": {"pins": {"*": "native/@default"}}}) as rt:
        assert run_rows(rt, lm, 12, "pinned") == "." * 12
        assert {e.engine for e in ring(rt).events(kind="node_end")} == {"native"}
        assert rt.scheduler is not None
        assert [(r["node"], r["route"], r["reason"]) for r in rt.scheduler.describe()] == [(NODE, NATIVE, "pinned")]
    assert all(r.json_schema is not None for r in lm.requests) and len(lm.requests) == 12


def test_a_pinned_route_that_fails_fails_the_row_rather_than_running_elsewhere() -> None:
    pytest.importorskip("dspy")
    lm = ScriptedLM(native_only)
    with Runtime(lm=lm, cache=False, config={"scheduler": {"pins": {NODE: "dspy/@default"}}}) as rt:
        with pytest.raises(StepError, match="ValidationError"):
            rt.run(CLASSIFY, review="pinned to dspy")
        assert [e.engine for e in ring(rt).events(kind="validation_failure")] == ["dspy"]
    assert lm.requests and all(r.json_schema is None for r in lm.requests)  # never re-run on native


# -- learning -----------------------------------------------------------------------------------------------------

def test_exploring_a_failing_route_loses_no_row_and_the_scheduler_ends_preferring_native() -> None:
    pytest.importorskip("dspy")
    lm = ScriptedLM(native_only, delay=0.005)
    with Runtime(lm=lm, cache=False, config={"scheduler": {"seed": 4}}) as rt:
        marks = run_rows(rt, lm, 60, "learn")  # every row succeeds, explored or not
        assert marks[:2] == ".x"  # warm-up: native first, then dspy once
        explored = marks.count("x")
        failures = ring(rt).events(kind="validation_failure")
        assert [e.engine for e in failures] == ["dspy"] * explored  # each exploration failed, once
        assert all(e.run_id and e.node == "label" for e in failures)
        assert {e.engine for e in ring(rt).events(kind="node_end")} == {"native"}  # re-run on the default route
        assert not ring(rt).events(kind="node_error")
        assert marks[30:].count("x") <= 8  # a route that always fails gets little traffic once it is known
        assert rt.scheduler is not None
        (row,) = rt.scheduler.describe()
        assert row["node"] == NODE and row["route"] == NATIVE and row["reason"].startswith("lowest expected cost")
        assert not any(e.kind == "breaker" for e in ring(rt).events())  # bad answers say nothing of the lm


def test_the_scheduler_state_persists_and_the_next_runtime_starts_informed(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("dspy")
    home = Path(os.environ["DSPEX_HOME"])
    config = {"scheduler": {"seed": 4}}
    first = ScriptedLM(native_only, delay=0.005)
    with Runtime(lm=first, cache=False, config=config) as rt:
        run_rows(rt, first, 40, "first")
        assert rt.scheduler is not None
        learned = rt.scheduler.describe()
    assert (home / SCHEDULER_FILE).is_file()

    second = ScriptedLM(native_only, delay=0.005)
    with Runtime(lm=second, cache=False, config=config) as rt:
        assert rt.scheduler is not None and rt.scheduler.describe() == learned  # before any call
        assert run_rows(rt, second, 3, "second") == "..."  # no warm-up exploration of the failing route
    assert all(r.json_schema is not None for r in second.requests) and len(second.requests) == 3

    monkeypatch.setenv("DSPEX_HOME", str(tmp_path / "fresh"))  # the control: a runtime that knows nothing
    fresh = ScriptedLM(native_only, delay=0.005)
    with Runtime(lm=fresh, cache=False, config=config) as rt:
        assert run_rows(rt, fresh, 3, "fresh")[:2] == ".x"


def test_a_cached_answer_is_served_whatever_route_the_scheduler_would_pick() -> None:
    lm = ScriptedLM(native_only)
    with Runtime(lm=lm, config={"scheduler": {"pins": {NODE: "native/@default"}}}) as rt:
        rt.run(CLASSIFY, review="cache me")
        assert rt.scheduler is not None
        rt.scheduler.pin(NODE, DSPY)  # the scheduler would now run this step on dspy
        ring(rt).clear()
        assert rt.run(CLASSIFY, review="cache me") == {"label": "positive"}
        hit = ring(rt).events(kind="cache_hit")
        assert [(e.engine, e.lm) for e in hit] == [("native", "scripted")]
    assert len(lm.requests) == 1  # neither route ran again


# -- adaptation ---------------------------------------------------------------------------------------------------

@pytest.fixture
def members(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, ScriptedLM]]:
    """The ``a`` and ``b`` lms of SPREAD_SOURCE as scripted LMs whose latency the test sets (``delay``)."""
    built = {name: ScriptedLM([json.dumps({"tag": name})], identity=f"fake:{name}") for name in ("a", "b")}
    real = lm_spec.build_lm

    def build(provider: str, args: dict[str, Any]) -> LM:
        if provider != "openai" or args.get("model") not in built:
            return real(provider, args)
        return built[args["model"]]

    monkeypatch.setattr(lm_spec, "build_lm", build)
    yield built


def test_a_degrading_member_of_a_round_robin_is_abandoned_with_an_adaptation_event(
        members: dict[str, ScriptedLM]) -> None:
    tag = dspex.compile_source(SPREAD_SOURCE).pipelines["tag"]
    with Runtime(cache=False, config={"scheduler": {"seed": 3}}) as rt:
        def run_until(done: Callable[[], bool], limit: int) -> int:
            for i in range(limit):
                rt.run(tag, text=f"row {i:04d}")
                if done():
                    return i + 1
            raise AssertionError(f"not done after {limit} rows")

        members["a"].delay, members["b"].delay = 0.003, 0.015  # a is the better member
        assert rt.scheduler is not None
        scheduler = rt.scheduler

        def prefers(route: tuple[str, str]) -> bool:
            rows = scheduler.describe()
            return bool(rows) and rows[0]["route"] == route and rows[0]["reason"].startswith("lowest")

        run_until(lambda: prefers(("native", "a")), 120)
        assert not ring(rt).events(kind="adaptation")  # the first preference is no change
        served_by_a = sum(e.lm == "fake:a" for e in ring(rt).events(kind="node_end"))
        assert served_by_a > len(ring(rt).events(kind="node_end")) / 2

        members["a"].delay = 0.06  # a degrades: b is now the better one
        run_until(lambda: bool(ring(rt).events(kind="adaptation")), 120)
        (change,) = ring(rt).events(kind="adaptation")
        assert change.attrs["action"] == "switch_route" and change.pipeline == "tag" and change.node == "tag"
        assert (change.attrs["from"], change.attrs["route"]) == ("native/a", "native/b")
        assert "latency" in str(change.attrs["reason"]) and change.run_id
        assert prefers(("native", "b"))
        assert ring(rt).events(kind="anomaly")  # the detector saw a's latency shift too


def test_an_error_burst_on_an_lm_opens_its_breaker(monkeypatch: pytest.MonkeyPatch) -> None:
    failing = {"on": False}
    calls = {"n": 0}

    def answer(request: LMRequest) -> str:
        calls["n"] += 1
        if failing["on"]:
            raise LMError("HTTP 500: upstream is down", retryable=True, status=500)
        return GOOD

    lm = ScriptedLM(answer, identity="scripted:bursty")
    # the breaker would never open by itself (breaker_failures = 0): only the anomaly detector can open it
    config = {"scheduler": {"adaptive": False}, "resilience": {"retries": 0, "breaker_failures": 0, "wait_for_probe": False}}
    with Runtime(lm=lm, cache=False, config=config) as rt:
        for i in range(25):  # the detector's baseline
            rt.run(CLASSIFY, review=f"fine {i}")
        failing["on"] = True
        guard = rt._guards["scripted:bursty"]
        for i in range(15):
            with pytest.raises(StepError):
                rt.run(CLASSIFY, review=f"burst {i}")
            if guard.breaker.state == "open":
                break
        assert guard.breaker.state == "open"
        anomalies = [e for e in ring(rt).events(kind="anomaly") if e.lm]
        assert [(e.lm, e.attrs["key"], e.attrs["metric"], e.attrs["severity"], e.attrs["action"]) for e in anomalies] \
            == [("scripted:bursty", "lm:scripted:bursty", "error_rate", "critical", "open_breaker")]
        adaptations = ring(rt).events(kind="adaptation")
        assert [(e.lm, e.attrs["action"]) for e in adaptations] == [("scripted:bursty", "open_breaker")]
        breakers = ring(rt).events(kind="breaker")
        assert [(e.lm, e.attrs["state"]) for e in breakers] == [("scripted:bursty", "open")]
        assert all(e.run_id and e.pipeline == "classify" for e in (*anomalies, *adaptations, *breakers))
        before = calls["n"]
        with pytest.raises(StepError) as failed:  # the open circuit fails fast, without calling the lm
            rt.run(CLASSIFY, review="after")
        assert isinstance(failed.value.cause, CircuitOpenError) and calls["n"] == before
