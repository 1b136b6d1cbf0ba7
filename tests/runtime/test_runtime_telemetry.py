"""Telemetry through the runtime: a real ``Runtime`` run (scripted LMs, or a real HTTP server on 127.0.0.1) frames
itself with run and node events, carries tokens and lm identities, pairs ``map`` calls, reports cache hits,
scrubbed errors, retries, breakers and worker exits, writes a private JSONL file that never holds what was said,
and feeds OpenTelemetry spans and Prometheus metrics."""
from __future__ import annotations

import json
import os
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dspex
from dspex.errors import StepError
from dspex.lm.base import LMError, LMRequest
from dspex.lm.openai import OpenAILM
from dspex.lm.scripted import ScriptedLM
from dspex.runtime.runtime import Runtime
from dspex.runtime.telemetry import (
    TELEMETRY_FILE,
    OtelSink,
    PrometheusSink,
    RingSink,
    TelemetryEvent,
)
from tests.servers.openai_stub import Fault, OpenAIStub

SOURCE = '''
type Sentiment = enum("positive", "negative", "neutral")
signature Classify {
  in  review: str
  out label: Sentiment
  out confidence: float
}
signature Sum = "text: str -> summary: str"
tool pid() -> int = python("tests.workers.tools:pid")
pipeline classify_one(review: str) -> (label: Sentiment) {
  label = predict Classify(review = review).label
}
pipeline classify_all(reviews: list[str]) -> (labels: list[Sentiment]) {
  classified = map r in reviews: predict Classify(review = r)
  labels = classified.label
}
pipeline summarize(text: str) -> (summary: str) {
  summary = predict Sum(text = text).summary
}
pipeline who() -> (p: int) {
  p = call pid()
}
'''
PROGRAM = dspex.compile_source(SOURCE)
ONE, ALL, SUMMARIZE, WHO = (PROGRAM.pipelines[n] for n in ("classify_one", "classify_all", "summarize", "who"))
ANSWER = '{"label": "positive", "confidence": 0.9}'
SECRET = "sk-" + "Zq7" * 12  # an OpenAI-shaped key
# resilience fast enough for tests; no adaptive routing, so every call takes the native engine
CONFIG: dict[str, Any] = {"scheduler": {"adaptive": False},
                          "resilience": {"backoff_s": 0.01, "max_backoff_s": 0.05, "jitter": False}}


def runtime(lm: Any, config: dict[str, Any] | None = None, **kw: Any) -> Runtime:
    return Runtime(lm=lm, config={**CONFIG, **(config or {})}, **kw)


def ring(rt: Runtime) -> RingSink:
    sink = rt.telemetry.ring
    assert sink is not None
    return sink


def kinds(rt: Runtime, **filters: Any) -> list[str]:
    return [e.kind for e in ring(rt).events(**filters)]


def file_lines(home: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (home / TELEMETRY_FILE).read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def home() -> Path:
    return Path(os.environ["DSPEX_HOME"])  # the suite's private home (tests/conftest.py)


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub(answer=lambda body: ANSWER) as s:
        yield s


# -- the events of a run ------------------------------------------------------------------------------------------

def test_a_run_is_framed_by_run_and_node_events_with_engine_lm_tokens_and_duration() -> None:
    lm = ScriptedLM([ANSWER], delay=0.01, identity="scripted:telemetry")
    with runtime(lm) as rt:
        assert rt.run(ONE, review="great") == {"label": "positive"}
        events = ring(rt).events()
    assert [e.kind for e in events] == ["run_start", "node_start", "node_end", "run_end"]
    start, node_start, end, run_end = events
    assert start.run_id and all(e.run_id == start.run_id for e in events)
    assert all(e.pipeline == "classify_one" for e in events)
    assert node_start.node == end.node == "label"  # the step's node id
    assert node_start.attrs["call"] == end.attrs["call"]
    assert (end.engine, end.lm) == ("native", "scripted:telemetry")
    assert end.prompt_tokens > 0 and end.completion_tokens == len(ANSWER.split())
    assert 0.01 <= end.duration_s <= run_end.duration_s < 5
    assert not end.error and not run_end.error


def test_map_calls_pair_their_start_and_end_by_call() -> None:
    lm = ScriptedLM([ANSWER], delay=0.01)
    with runtime(lm) as rt:
        assert rt.run(ALL, reviews=["a", "b", "c", "d"])["labels"] == ["positive"] * 4
        starts = ring(rt).events(kind="node_start")
        ends = ring(rt).events(kind="node_end")
    assert len(starts) == len(ends) == 4
    calls = [e.attrs["call"] for e in starts]
    assert len(set(calls)) == 4 and {e.attrs["call"] for e in ends} == set(calls)
    by_call = {e.attrs["call"]: e for e in starts}
    assert all(by_call[e.attrs["call"]].at <= e.at for e in ends)  # each end after its own start
    assert len(lm.requests) == 4


def test_a_cache_hit_is_a_cache_hit_then_a_node_end() -> None:
    lm = ScriptedLM([ANSWER])
    with runtime(lm, cache=True) as rt:
        rt.run(ONE, review="same words")
        ring(rt).clear()
        rt.run(ONE, review="same words")
        events = ring(rt).events()
    assert [e.kind for e in events] == ["run_start", "node_start", "cache_hit", "node_end", "run_end"]
    hit, end = events[2], events[3]
    assert hit.attrs["call"] == end.attrs["call"] and (hit.engine, hit.lm) == ("native", "scripted")
    assert end.prompt_tokens == end.completion_tokens == 0  # nothing was spent
    assert len(lm.requests) == 1


def test_a_failing_step_is_a_node_error_whose_key_never_reaches_the_ring_or_the_file(home: Path) -> None:
    def refuse(request: LMRequest) -> str:
        raise LMError(f"HTTP 401: Incorrect API key provided: {SECRET}. Authorization: Bearer {SECRET}")

    with runtime(ScriptedLM(refuse)) as rt:
        with pytest.raises(StepError):
            rt.run(ONE, review="hello")
        events = ring(rt).events()
    assert [e.kind for e in events] == ["run_start", "node_start", "node_error", "run_end"]
    error, run_end = events[2], events[3]
    assert error.error.startswith("LMError: HTTP 401") and "sk-***" in error.error
    assert run_end.error.startswith("StepError: step ") and "LMError" in run_end.error
    assert error.attrs["call"] == events[1].attrs["call"]
    assert not any(SECRET in json.dumps(e.to_dict()) for e in events)
    assert "Zq7Zq7" not in (home / TELEMETRY_FILE).read_text()
    assert [d["kind"] for d in file_lines(home)] == ["node_error", "run_end"]


def test_the_file_is_private_holds_the_end_events_and_never_inputs_or_outputs(home: Path) -> None:
    said_in, said_out, bad_out = "quokka-zebra-7731", "walrus-output-5521", "garbage-narwhal-9911"

    def answer(request: LMRequest) -> str:
        if request.json_schema is not None and "label" in json.dumps(request.json_schema):
            return json.dumps({"label": bad_out, "confidence": 0.5})  # not a Sentiment
        return json.dumps({"summary": said_out})

    with runtime(ScriptedLM(answer), cache=True) as rt:
        assert rt.run(SUMMARIZE, text=said_in) == {"summary": said_out}
        rt.run(SUMMARIZE, text=said_in)  # a cache hit
        with pytest.raises(StepError) as failed:
            rt.run(ONE, review=said_in)  # its answer fails validation, is re-asked, and fails again
        # the caller's error names the inputs and the answer; telemetry must not
        assert said_in in str(failed.value) and bad_out in str(failed.value)
    mode = stat.S_IMODE((home / TELEMETRY_FILE).stat().st_mode)
    assert mode == 0o600
    text = (home / TELEMETRY_FILE).read_text(encoding="utf-8")
    assert said_in not in text and said_out not in text and bad_out not in text
    lines = file_lines(home)
    assert [d["kind"] for d in lines] == ["node_end", "run_end", "cache_hit", "node_end", "run_end",
                                          "validation_failure", "node_error", "run_end"]  # no start events
    failure, last = lines[-2], lines[-1]
    assert failure["error"].startswith("ValidationError: label: expected one of `positive`")
    assert last["error"].startswith("StepError: step ") and "ValidationError: label: expected one of" in last["error"]
    assert all(TelemetryEvent.from_dict(d).run_id for d in lines)  # every line joins its run


# -- the resilience layer -----------------------------------------------------------------------------------------

def test_a_retried_call_shows_as_a_retry_event_of_its_run_and_node(stub: OpenAIStub) -> None:
    stub.inject(Fault(status=500, message="upstream hiccup"))
    lm = OpenAILM("stub", stub.base_url)
    with runtime(lm) as rt:
        assert rt.run(ONE, review="hello") == {"label": "positive"}
        events = ring(rt).events()
    assert [e.kind for e in events] == ["run_start", "node_start", "retry", "node_end", "run_end"]
    retry, end = events[2], events[3]
    assert retry.lm == lm.identity and retry.attrs["attempt"] == 1 and retry.attrs["delay_s"] == 0.01
    assert "500" in retry.error
    assert (retry.run_id, retry.pipeline, retry.node, retry.attrs["call"]) == (end.run_id, end.pipeline, end.node,
                                                                               end.attrs["call"])
    assert len(stub.requests) == 2


def test_a_breaker_opening_shows_as_breaker_events(stub: OpenAIStub) -> None:
    stub.inject(Fault(status=500), Fault(status=500))
    lm = OpenAILM("stub", stub.base_url)
    with runtime(lm, {"resilience": {"retries": 0, "breaker_failures": 2, "breaker_reset_s": 60,
                                      "wait_for_probe": False}}) as rt:
        for review in ("a", "b", "c"):
            with pytest.raises(StepError):
                rt.run(ONE, review=review)
        breakers = ring(rt).events(kind="breaker")
        errors = ring(rt).events(kind="node_error")
        assert rt._guards[lm.identity].breaker.state == "open"
    assert [(e.lm, e.attrs["state"]) for e in breakers] == [(lm.identity, "open")]
    assert breakers[0].pipeline == "classify_one" and breakers[0].run_id == errors[1].run_id
    assert "CircuitOpenError" in errors[2].error
    assert len(stub.requests) == 2  # the third call never reached the server


# -- worker exits -------------------------------------------------------------------------------------------------

def test_a_killed_worker_shows_as_a_worker_exit(home: Path) -> None:
    with runtime(ScriptedLM([ANSWER]), workers=1, cache=False) as rt:
        first = rt.run(WHO)["p"]
        assert first != os.getpid()
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not ring(rt).events(kind="worker_exit") and time.monotonic() < deadline:
            time.sleep(0.05)
        exits = ring(rt).events(kind="worker_exit")
        assert exits, "no worker_exit event within 30 s of kill -9"
        assert exits[0].attrs["pool"] == "general" and exits[0].attrs["pid"] == first
        assert exits[0].attrs["cause"] == "killed" and exits[0].attrs["exitcode"] == -signal.SIGKILL
        second = rt.run(WHO)["p"]  # a fresh worker serves the next run
        assert second not in (first, os.getpid())
    assert any(d["kind"] == "worker_exit" and d["attrs"]["pid"] == first for d in file_lines(home))


# -- exporters ----------------------------------------------------------------------------------------------------

@pytest.fixture
def spans() -> Iterator[tuple[Any, Any]]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        InMemorySpanExporter,
    )

    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def test_one_run_is_one_run_span_with_a_child_span_per_node_call(spans: tuple[Any, Any], stub: OpenAIStub) -> None:
    provider, exporter = spans
    stub.inject(Fault(status=503))
    lm = OpenAILM("stub", stub.base_url)
    with runtime(lm) as rt:
        # the global tracer provider can be set once per process: bind the runtime's sink to ours instead
        assert any(isinstance(s, OtelSink) for s in rt.telemetry.sinks)
        rt.telemetry.sinks = tuple(OtelSink(provider=provider) if isinstance(s, OtelSink) else s
                                   for s in rt.telemetry.sinks)
        rt.run(ALL, reviews=["a", "b", "c"])
    found: dict[str, list[Any]] = {}
    for span in exporter.get_finished_spans():
        found.setdefault(span.name, []).append(span)
    (run,) = found.pop("dspex.run classify_all")
    (name,) = found  # one node: the map's step
    nodes = found[name]
    assert name.startswith("dspex.node ") and len(nodes) == 3
    assert run.parent is None and run.attributes["dspex.pipeline"] == "classify_all"
    for node in nodes:
        assert node.parent.span_id == run.context.span_id and node.context.trace_id == run.context.trace_id
        assert run.start_time <= node.start_time <= node.end_time <= run.end_time
        assert node.attributes["dspex.engine"] == "native" and node.attributes["dspex.lm"] == lm.identity
        assert node.attributes["gen_ai.usage.input_tokens"] > 0
    retried = [e for node in nodes for e in node.events if e.name == "dspex.retry"]
    assert len(retried) == 1 and retried[0].attributes["dspex.lm"] == lm.identity  # on the call it delayed


def test_prometheus_node_durations_count_each_call() -> None:
    from prometheus_client import REGISTRY, CollectorRegistry

    registry = CollectorRegistry()
    with runtime(ScriptedLM([ANSWER])) as rt:
        default = rt.telemetry.sink(PrometheusSink)
        assert default is not None and default.registry is REGISTRY  # the runtime's own sink, on the default
        rt.telemetry.sinks = (*rt.telemetry.sinks, PrometheusSink(registry))  # and a fresh registry to count on
        labels = {"pipeline": "classify_all", "node": "classified", "engine": "native", "lm": "scripted"}

        def count(registry: Any) -> float:
            return registry.get_sample_value("dspex_node_duration_seconds_count", labels) or 0.0

        before = count(REGISTRY)  # other tests' runs may have counted there already
        rt.run(ALL, reviews=["x", "y"])
        assert count(registry) == 2 and count(REGISTRY) == before + 2
        rt.run(ALL, reviews=["z"])
        assert count(registry) == 3 and count(REGISTRY) == before + 3
        assert (registry.get_sample_value("dspex_node_duration_seconds_sum", labels) or 0.0) > 0
        assert (registry.get_sample_value("dspex_tokens_total", {"lm": "scripted", "kind": "prompt"}) or 0.0) > 0
