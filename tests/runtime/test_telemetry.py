"""Telemetry: events and their scrubbing, the hub, and each sink (ring, JSONL file, OpenTelemetry, Prometheus)."""
from __future__ import annotations

import json
import os
import logging
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from dspex.runtime.config import load_config
from dspex.runtime.executor import NodeEvent
from dspex.runtime.telemetry import (
    KINDS,
    MAX_ERROR_CHARS,
    ROTATED_FILE,
    TELEMETRY_FILE,
    JsonlSink,
    OtelSink,
    PrometheusSink,
    RingSink,
    Telemetry,
    TelemetryEvent,
    error_text,
    from_node_event,
    from_worker_event,
    new_run_id,
    scrub,
)
from dspex.workers.pool import WorkerEvent

LM = "openai:gpt-4o-mini@http://127.0.0.1:8000/v1"


def ev(kind: str, node: str = "", at: float = 1000.0, **fields: Any) -> TelemetryEvent:
    fields.setdefault("run_id", "r1")
    fields.setdefault("pipeline", "p")
    return TelemetryEvent(kind, node=node, at=at, **fields)


# -- events -------------------------------------------------------------------------------------------------------

def test_round_trip_through_json_and_msgpack() -> None:
    event = TelemetryEvent("node_end", "r1", "p", "classify", "native", LM, 0.25, 120, 7, "",
                           {"call": 3, "route": "native", "ok": True, "ratio": 0.5, "none": None}, at=1700000000.5)
    data = event.to_dict()
    assert TelemetryEvent.from_dict(json.loads(json.dumps(data))) == event
    assert TelemetryEvent.from_dict(msgpack.unpackb(msgpack.packb(data), raw=False)) == event
    bare = TelemetryEvent("run_start", at=5.0)
    assert bare.to_dict() == {"kind": "run_start", "at": 5.0}  # empty fields are left out of each line
    assert TelemetryEvent.from_dict(bare.to_dict()) == bare
    assert {k for k in data} <= {"kind", "at", "run_id", "pipeline", "node", "engine", "lm", "duration_s",
                                 "prompt_tokens", "completion_tokens", "error", "attrs"}


@pytest.mark.parametrize("data", [[1, 2], {"kind": "nope", "at": 1}, {"at": 1}, {"kind": "retry", "at": "x"},
                                  {"kind": "retry", "node": 3}, {"kind": "retry", "attrs": [1]},
                                  {"kind": "retry", "prompt_tokens": True}])
def test_from_dict_rejects_malformed(data: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        TelemetryEvent.from_dict(data)


def test_unknown_kind_is_refused_and_every_kind_is_accepted() -> None:
    with pytest.raises(ValueError, match="unknown telemetry event kind 'node_done'"):
        TelemetryEvent("node_done")
    assert all(TelemetryEvent(kind).kind == kind for kind in KINDS)


def test_non_scalar_attrs_become_strings() -> None:
    data = TelemetryEvent("anomaly", attrs={"thing": [1, 2]}).to_dict()  # type: ignore[dict-item]
    assert data["attrs"] == {"thing": "[1, 2]"}


def test_run_ids_are_fresh() -> None:
    ids = {new_run_id() for _ in range(100)}
    assert len(ids) == 100 and all(i.split("-")[1] == f"{os.getpid():x}" for i in ids)


# -- scrubbing ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, secret", [
    ("Incorrect API key provided: sk-abcdefghijklmnopqrstuvwxyz012345.", "abcdefghijklmnopqrstuvwxyz012345"),
    ("key sk-proj-AbC_dEf-1234567890abcdefXYZ rejected", "AbC_dEf-1234567890abcdefXYZ"),
    ("headers: Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig", "eyJhbGciOiJIUzI1NiJ9"),
    ("{'Authorization': 'Basic dXNlcjpwYXNzd29yZA=='}", "dXNlcjpwYXNzd29yZA=="),
    ("sent bearer abcdef0123456789 upstream", "abcdef0123456789"),
    ("request failed: api_key=abc123def456ghi", "abc123def456ghi"),
    ('body {"api_key": "zyx987wvu654", "model": "m"}', "zyx987wvu654"),
    ("x-api-key: q1w2e3r4t5y6u7", "q1w2e3r4t5y6u7"),
    ("login password='hunter2hunter2'", "hunter2hunter2"),
    ("GET https://maps.example.com/api?key=AIzaSyD-abcdefgh123&q=1", "AIzaSyD-abcdefgh123"),
])
def test_scrub_removes_secret_shapes(text: str, secret: str) -> None:
    cleaned = scrub(text)
    assert secret not in cleaned and "***" in cleaned


def test_scrub_keeps_quotes_and_ordinary_text() -> None:
    assert scrub('{"api_key": "zyx987wvu654"}') == '{"api_key": "***"}'
    assert scrub("Authorization: Bearer abcdefghijk123") == "Authorization: ***"
    plain = "ValueError: expected a label among positive, negative (got 'maybe') after 3 attempts"
    assert scrub(plain) == plain
    assert scrub("") == "" and scrub("short") == "short"


def test_scrub_removes_values_of_secret_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-9f8e7d6c5b4a")
    monkeypatch.setenv("ACME_SECRET", "opensesame-42")
    monkeypatch.setenv("DSPEX_FLAG_KEY", "1")  # too short to be a secret: ordinary digits stay
    text = "upstream said tok-9f8e7d6c5b4a is invalid; opensesame-42 too; 1 retry"
    assert scrub(text) == "upstream said *** is invalid; *** too; 1 retry"
    monkeypatch.setenv("MY_SERVICE_TOKEN", "rotated-value-123")  # a new value of a known name is seen at once
    assert scrub("got rotated-value-123") == "got ***"


def test_errors_and_free_text_attrs_are_scrubbed_on_construction() -> None:
    event = TelemetryEvent("node_error", error="AuthenticationError: bad key sk-abcdefghijklmnopqrstuvwxyz",
                           attrs={"cause": "Authorization: Bearer abcdefghijklmnop", "attempt": 2})
    assert "abcdefghijklmnopqrstuvwxyz" not in event.error and event.error.startswith("AuthenticationError: ")
    assert event.attrs == {"cause": "Authorization: ***", "attempt": 2}
    loaded = TelemetryEvent.from_dict({"kind": "retry", "error": "api_key=leakedleaked"})
    assert "leaked" not in loaded.error


def test_error_text_is_one_short_scrubbed_line() -> None:
    exc = RuntimeError("line one\nline two api_key=abcdefgh12345 " + "x" * 1000)
    text = error_text(exc)
    assert text.startswith("RuntimeError: line one line two api_key=*** x")
    assert len(text) == MAX_ERROR_CHARS and "\n" not in text and "abcdefgh12345" not in text


# -- adapters -----------------------------------------------------------------------------------------------------

def test_from_node_event() -> None:
    start = from_node_event(NodeEvent("start", "p", "n", at=1.0), "r1", call=4)
    assert [(e.kind, e.run_id, e.node, e.attrs) for e in start] == [("node_start", "r1", "n", {"call": 4})]
    hit = from_node_event(NodeEvent("cache_hit", "p", "n", "native", LM, 0.001, at=2.0), "r1")
    assert [e.kind for e in hit] == ["cache_hit", "node_end"] and hit[1].duration_s == 0.001
    end = from_node_event(NodeEvent("end", "p", "n", "dspy", LM, 0.5, 1, 10, 3, at=3.0))
    assert (end[0].kind, end[0].prompt_tokens, end[0].completion_tokens, end[0].lm) == ("node_end", 10, 3, LM)
    err = from_node_event(NodeEvent("error", "p", "n", duration_s=0.2, error="ValueError: api_key=abcdefghij"))
    assert err[0].kind == "node_error" and err[0].error == "ValueError: api_key=***"
    assert from_node_event(NodeEvent("skip", "p", "n")) == []


def test_from_worker_event() -> None:
    assert from_worker_event(WorkerEvent("start", "general", 0, 11)) is None
    exit_ = from_worker_event(WorkerEvent("exit", "general", 1, 12, "segfault", -11, at=7.0))
    assert exit_ is not None and exit_.kind == "worker_exit" and exit_.at == 7.0
    assert exit_.attrs == {"pool": "general", "slot": 1, "pid": 12, "cause": "segfault", "exitcode": -11}
    recycle = from_worker_event(WorkerEvent("recycle", "neural", 0, 13, "memory"))
    assert recycle is not None and recycle.attrs["cause"] == "recycled: memory"


# -- the hub ------------------------------------------------------------------------------------------------------

class Broken:
    closed = False

    def write(self, event: TelemetryEvent) -> None:
        raise OSError("disk on fire")

    def close(self) -> None:
        raise RuntimeError("cannot close either")


def test_a_failing_sink_never_breaks_emit_and_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    ring = RingSink()
    telemetry = Telemetry([Broken(), ring])
    with caplog.at_level(logging.DEBUG, logger="dspex.telemetry"):
        for i in range(3):
            telemetry.emit(ev("node_start", "n", at=float(i)))
        telemetry.close()
    assert len(ring) == 3 and telemetry.failures == 4
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Broken failed (OSError: disk on fire)" in warnings[0].getMessage()


def test_ring_sink_filters_and_bounds() -> None:
    ring = RingSink(maxlen=5)
    telemetry = Telemetry([ring])
    assert telemetry.ring is ring and telemetry.sink(JsonlSink) is None
    for i in range(7):
        telemetry.emit(ev("node_end" if i % 2 else "node_start", f"n{i % 3}", at=float(i)))
    assert len(ring) == 5 and [e.at for e in ring.events()] == [2.0, 3.0, 4.0, 5.0, 6.0]
    assert [e.at for e in ring.events(kind="node_end")] == [3.0, 5.0]
    assert [e.at for e in ring.events(kind={"node_end", "node_start"}, node="n0", since=3.0)] == [3.0, 6.0]
    assert ring.events(pipeline="other") == []
    ring.clear()
    assert ring.events() == []


def test_from_config_picks_available_sinks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DSPEX_HOME")  # the file's home, not the suite's private one
    config = load_config({"home": str(tmp_path / "home")})
    with Telemetry.from_config(config) as telemetry:
        kinds = [type(s) for s in telemetry.sinks]
        assert kinds == [RingSink, JsonlSink, OtelSink, PrometheusSink]
        telemetry.emit(ev("run_start"))  # not written: the run_end has its duration
        telemetry.emit(ev("run_end", duration_s=1.0))
    assert stat.S_IMODE((tmp_path / "home").stat().st_mode) == 0o700
    assert (tmp_path / "home" / TELEMETRY_FILE).read_text().count("\n") == 1
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with Telemetry.from_config(config, sinks=("ring", "otel", "prometheus")) as telemetry:
        assert [type(s) for s in telemetry.sinks] == [RingSink]
    with pytest.raises(ValueError, match="unknown telemetry sink 'statsd'"):
        Telemetry.from_config(config, sinks=("statsd",))


# -- the JSONL file -----------------------------------------------------------------------------------------------

@pytest.fixture
def jsonl(tmp_path: Path) -> Iterator[JsonlSink]:
    sink = JsonlSink(tmp_path / TELEMETRY_FILE)
    yield sink
    sink.close()


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_jsonl_writes_private_whole_lines(jsonl: JsonlSink) -> None:
    telemetry = Telemetry([jsonl])
    events = [ev("node_end", "n", at=float(i), duration_s=0.1, attrs={"note": "héllo"}) for i in range(50)]
    for event in events:
        telemetry.emit(event)
    assert jsonl.flush(5)
    assert stat.S_IMODE(jsonl.path.stat().st_mode) == 0o600
    assert [TelemetryEvent.from_dict(d) for d in lines(jsonl.path)] == events
    assert jsonl.written == 50 and jsonl.dropped == 0
    telemetry.close()
    telemetry.emit(events[0])  # after close: dropped, not raised
    assert jsonl.dropped == 1 and len(lines(jsonl.path)) == 50


def test_jsonl_close_drains_the_queue(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / TELEMETRY_FILE)
    for i in range(2000):
        sink.write(ev("node_end", "n", at=float(i)))
    sink.close()
    sink.close()  # idempotent
    assert len(lines(sink.path)) == 2000 and sink.flush() is True


def test_jsonl_bounds_its_queue(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / TELEMETRY_FILE, max_pending=0)
    sink.write(ev("node_end"))
    sink.close()
    assert sink.dropped == 1 and not sink.path.exists()


def test_jsonl_rotates_past_the_size_limit(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / TELEMETRY_FILE, max_bytes=2000)
    for i in range(40):  # ~70 bytes a line: one rotation
        sink.write(ev("node_end", "n", at=float(i)))
        sink.flush(5)
    sink.close()
    rotated = tmp_path / ROTATED_FILE
    assert rotated.exists() and stat.S_IMODE(rotated.stat().st_mode) == 0o600
    assert rotated.stat().st_size > 2000 >= (tmp_path / TELEMETRY_FILE).stat().st_size
    kept = [d["at"] for d in lines(rotated) + lines(tmp_path / TELEMETRY_FILE)]
    assert kept == sorted(kept) and kept[-1] == 39.0  # the newest events, in order, across the two files


def test_jsonl_writer_follows_a_rotation_by_another_writer(tmp_path: Path) -> None:
    path = tmp_path / TELEMETRY_FILE
    other, mine = JsonlSink(path, max_bytes=500), JsonlSink(path, max_bytes=10**9)
    try:
        mine.write(ev("node_end", at=1.0))
        mine.flush(5)
        for i in range(10):  # pushes the shared file past 500 bytes: ``other`` renames it aside
            other.write(ev("node_end", at=2.0 + i))
        other.flush(5)
        assert (tmp_path / ROTATED_FILE).exists()
        mine.write(ev("node_end", at=100.0))
        mine.flush(5)
    finally:
        other.close()
        mine.close()
    assert lines(path)[-1]["at"] == 100.0  # reopened the new file rather than writing into the rotated one


def test_jsonl_write_failures_are_logged_once_and_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sink = JsonlSink(tmp_path / "missing" / TELEMETRY_FILE)
    with caplog.at_level(logging.WARNING, logger="dspex.telemetry"):
        for i in range(3):
            sink.write(ev("node_end", at=float(i)))
            sink.flush(5)
        sink.close()
    assert sink.dropped == 3 and sink.written == 0
    assert len([r for r in caplog.records if "cannot write" in r.getMessage()]) == 1


_WRITER = textwrap.dedent("""
    import sys
    from dspex.runtime.telemetry import JsonlSink, TelemetryEvent
    sink = JsonlSink(sys.argv[1], max_bytes=int(sys.argv[3]))
    for i in range(1500):
        sink.write(TelemetryEvent("node_end", pipeline=sys.argv[2], node="n" * 300, attrs={"i": i}))
        if i % 100 == 0:
            sink.flush()
    sink.close()
""")


@pytest.mark.parametrize("max_bytes", [64 << 20, 200_000])
def test_two_processes_append_only_whole_lines(tmp_path: Path, max_bytes: int) -> None:
    path = tmp_path / TELEMETRY_FILE
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), name, str(max_bytes)])
             for name in ("a", "b")]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    raw = b"".join(f.read_bytes() for f in (tmp_path / ROTATED_FILE, path) if f.exists())
    assert raw.endswith(b"\n")
    records = [json.loads(line) for line in raw.splitlines()]  # raises on any torn or interleaved line
    if max_bytes == 64 << 20:
        for name in ("a", "b"):
            assert [r["attrs"]["i"] for r in records if r["pipeline"] == name] == list(range(1500))
    else:
        assert (tmp_path / ROTATED_FILE).exists() and len(records) < 3000


# -- OpenTelemetry ------------------------------------------------------------------------------------------------

@pytest.fixture
def spans() -> Iterator[tuple[Any, Any]]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def by_name(exporter: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for span in exporter.get_finished_spans():
        out.setdefault(span.name, []).append(span)
    return out


def test_otel_run_and_node_spans(spans: tuple[Any, Any]) -> None:
    from opentelemetry.trace import StatusCode

    provider, exporter = spans
    sink = OtelSink(provider=provider)
    telemetry = Telemetry([sink])
    for event in [ev("run_start", at=10.0),
                  ev("node_start", "classify", at=10.1),
                  ev("retry", "classify", at=10.2, lm=LM, error="RateLimitError: slow down",
                     attrs={"attempt": 1, "delay_s": 0.5}),
                  ev("cache_hit", "classify", at=10.25),
                  ev("node_end", "classify", at=10.3, engine="native", lm=LM, duration_s=0.2, prompt_tokens=11,
                     completion_tokens=2),
                  ev("node_start", "summarize", at=10.4),
                  ev("node_error", "summarize", at=10.6, duration_s=0.2, error="ValueError: bad"),
                  ev("run_end", at=10.7, duration_s=0.7, error="StepError: summarize failed")]:
        telemetry.emit(event)
    found = by_name(exporter)
    (run,), (classify,), (summarize,) = found["dspex.run p"], found["dspex.node classify"], found[
        "dspex.node summarize"]
    assert run.parent is None
    assert classify.parent.span_id == run.context.span_id == summarize.parent.span_id
    assert classify.context.trace_id == run.context.trace_id
    assert (classify.start_time, classify.end_time) == (10_100_000_000, 10_300_000_000)
    attrs = classify.attributes
    assert (attrs["dspex.engine"], attrs["dspex.lm"], attrs["gen_ai.usage.input_tokens"],
            attrs["gen_ai.usage.output_tokens"]) == ("native", LM, 11, 2)
    assert classify.status.status_code is StatusCode.UNSET
    assert [(e.name, dict(e.attributes)) for e in classify.events] == [
        ("dspex.retry", {"dspex.attempt": 1, "dspex.delay_s": 0.5, "dspex.node": "classify", "dspex.lm": LM,
                         "dspex.error": "RateLimitError: slow down"}),
        ("dspex.cache_hit", {"dspex.node": "classify"})]
    assert summarize.status.status_code is StatusCode.ERROR and summarize.status.description == "ValueError: bad"
    assert run.status.status_code is StatusCode.ERROR and run.attributes["dspex.run_id"] == "r1"


def test_otel_pairs_map_calls_by_call_id_else_first_in_first_out(spans: tuple[Any, Any]) -> None:
    provider, exporter = spans
    telemetry = Telemetry([OtelSink(provider=provider)])
    telemetry.emit(ev("run_start", at=1.0))
    for call in range(3):
        telemetry.emit(ev("node_start", "each", at=2.0 + call, attrs={"call": call}))
    for call in (2, 0, 1):  # finish out of order
        telemetry.emit(ev("node_end", "each", at=10.0 + call, attrs={"call": call}))
    telemetry.emit(ev("node_start", "plain", at=20.0))
    telemetry.emit(ev("node_start", "plain", at=21.0))
    telemetry.emit(ev("node_end", "plain", at=30.0))
    telemetry.emit(ev("node_end", "plain", at=31.0))
    telemetry.emit(ev("run_end", at=40.0))
    found = by_name(exporter)
    each = sorted((s.start_time // 10**9, s.end_time // 10**9) for s in found["dspex.node each"])
    assert each == [(2, 10), (3, 11), (4, 12)]  # each call's own start and end
    assert sorted((s.start_time // 10**9, s.end_time // 10**9) for s in found["dspex.node plain"]) == [(20, 30),
                                                                                                      (21, 31)]
    run = found["dspex.run p"][0]
    assert all(s.parent.span_id == run.context.span_id for s in found["dspex.node each"] + found["dspex.node plain"])


def test_otel_unpaired_and_unfinished_spans(spans: tuple[Any, Any]) -> None:
    from opentelemetry.trace import StatusCode

    provider, exporter = spans
    sink = OtelSink(provider=provider, max_open=1)
    telemetry = Telemetry([sink])
    telemetry.emit(ev("node_end", "lonely", at=5.0, duration_s=1.5, run_id=""))  # no start seen: from its duration
    telemetry.emit(ev("worker_exit", attrs={"pool": "general", "cause": "killed"}))  # nothing open: ignored
    telemetry.emit(ev("run_start", run_id="a", at=1.0))
    telemetry.emit(ev("node_start", "n", run_id="a", at=1.5))
    telemetry.emit(ev("run_start", run_id="b", at=2.0))  # over max_open: run a is ended, its node unfinished
    telemetry.emit(ev("run_start", run_id="c", at=3.0))
    telemetry.close()  # ends c
    found = by_name(exporter)
    lonely = found["dspex.node lonely"][0]
    assert (lonely.start_time, lonely.end_time, lonely.parent) == (3_500_000_000, 5_000_000_000, None)
    assert len(found["dspex.run p"]) == 3
    unfinished = found["dspex.node n"][0]
    assert unfinished.status.status_code is StatusCode.ERROR and "unfinished" in unfinished.status.description


def test_otel_with_the_global_no_op_tracer_costs_nothing_visible() -> None:
    telemetry = Telemetry([OtelSink()])
    telemetry.emit(ev("run_start"))
    telemetry.emit(ev("node_start", "n"))
    telemetry.emit(ev("node_end", "n"))
    telemetry.emit(ev("run_end"))
    assert telemetry.failures == 0


# -- Prometheus ---------------------------------------------------------------------------------------------------

def test_prometheus_metrics() -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    telemetry = Telemetry([PrometheusSink(registry), PrometheusSink(registry)])  # a shared registry is fine
    node = {"pipeline": "p", "node": "n"}
    for event in [ev("node_end", "n", engine="native", lm=LM, duration_s=0.2, prompt_tokens=10, completion_tokens=3),
                  ev("node_error", "n", engine="native", lm=LM, duration_s=0.4, error="ValueError: x"),
                  ev("cache_hit", "n"), ev("validation_failure", "n"), ev("retry", "n", lm=LM),
                  ev("worker_exit", attrs={"pool": "general", "cause": "segfault"}),
                  ev("breaker", lm=LM, attrs={"state": "open"}), ev("adaptation", "n", attrs={"route": "dspy"})]:
        telemetry.emit(event)
    sample = registry.get_sample_value
    labels = {**node, "engine": "native", "lm": LM}
    assert sample("dspex_node_duration_seconds_count", labels) == 4  # two sinks, two events each
    assert sample("dspex_node_duration_seconds_sum", labels) == pytest.approx(1.2)
    assert sample("dspex_node_errors_total", node) == 2
    assert sample("dspex_cache_hits_total", node) == 2
    assert sample("dspex_validation_failures_total", node) == 2
    assert sample("dspex_retries_total", {"lm": LM}) == 2
    assert sample("dspex_tokens_total", {"lm": LM, "kind": "prompt"}) == 20
    assert sample("dspex_tokens_total", {"lm": LM, "kind": "completion"}) == 6
    assert sample("dspex_worker_exits_total", {"pool": "general", "cause": "segfault"}) == 2
    assert sample("dspex_breaker_state", {"lm": LM}) == 2
    assert sample("dspex_adaptations_total", node) == 2
    for state, value in (("half_open", 1), ("half-open", 1), ("closed", 0)):
        telemetry.emit(ev("breaker", lm=LM, attrs={"state": state}))
        assert sample("dspex_breaker_state", {"lm": LM}) == value
    assert telemetry.failures == 0


def test_a_clashing_default_registry_skips_the_sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    import prometheus_client

    taken = prometheus_client.CollectorRegistry()
    prometheus_client.Counter("dspex_retries", "someone else's", registry=taken)
    monkeypatch.setattr(prometheus_client, "REGISTRY", taken)
    with caplog.at_level(logging.WARNING, logger="dspex.telemetry"):
        telemetry = Telemetry.from_config(load_config({"home": str(tmp_path)}), sinks=("ring", "prometheus"))
    assert [type(s) for s in telemetry.sinks] == [RingSink] and "no prometheus sink" in caplog.text
