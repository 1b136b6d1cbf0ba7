"""``dspexc stats``: reading the telemetry files, the summary's numbers, its text and JSON, and ``--since``."""
from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from dspex.runtime.stats import load_events, parse_since, render_text, stats_command, summarize, to_json
from dspex.runtime.telemetry import ROTATED_FILE, TELEMETRY_FILE, JsonlSink, TelemetryEvent

LM = "openai:gpt-4o-mini@http://127.0.0.1:8000/v1"
ROUTES = [{"node": "classify", "route": "native", "reason": "p95 3x lower than dspy", "samples": 200}]


def ev(kind: str, node: str = "", at: float = 1000.0, pipeline: str = "p", **fields: Any) -> TelemetryEvent:
    return TelemetryEvent(kind, "r", pipeline, node, at=at, **fields)


def write(path: Path, events: list[TelemetryEvent], extra: bytes = b"") -> None:
    path.write_bytes(b"".join(json.dumps(e.to_dict()).encode() + b"\n" for e in events) + extra)


# -- --since ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, back", [("30m", 1800), ("1h", 3600), ("2d", 172800), ("1w", 604800), ("45s", 45),
                                        ("1h30m", 5400), ("1.5h", 5400), (" 2d ", 172800)])
def test_parse_since_spans(text: str, back: float) -> None:
    assert parse_since(text, now=1_000_000.0) == 1_000_000.0 - back


def test_parse_since_iso_times() -> None:
    assert parse_since("2024-05-01T12:00:00Z") == datetime(2024, 5, 1, 12, tzinfo=timezone.utc).timestamp()
    assert parse_since("2024-05-01T14:00:00+02:00") == parse_since("2024-05-01T12:00:00Z")
    assert parse_since("2024-05-01") == datetime(2024, 5, 1).timestamp()  # no zone: local time


@pytest.mark.parametrize("text", ["", "yesterday", "1y", "h", "-1h", "1h 30m", "2024-13-01"])
def test_parse_since_rejects_clearly(text: str) -> None:
    with pytest.raises(ValueError, match=r"invalid --since .*expected a span such as 30m, 1h, 2d"):
        parse_since(text)


# -- reading ------------------------------------------------------------------------------------------------------

def test_load_events_reads_both_files_skips_garbage_and_filters(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path / ROTATED_FILE, [ev("node_end", "a", at=1.0), ev("node_end", "a", at=2.0)],
          b"\xff\xfe not utf-8\n[1, 2]\n")
    write(tmp_path / TELEMETRY_FILE, [ev("node_end", "a", at=4.0), ev("node_end", "a", at=3.0)],
          b'{"kind": "bogus", "at": 1}\n\n{"kind": "node_end", "at": 9, "node": "torn mid-wri')
    with caplog.at_level(logging.WARNING, logger="dspex.telemetry"):
        events = load_events(tmp_path)
    assert [e.at for e in events] == [1.0, 2.0, 3.0, 4.0] and events.skipped == 4
    assert "skipped 4 unreadable line(s)" in caplog.text
    assert [e.at for e in load_events(tmp_path, since=2.5)] == [3.0, 4.0]
    assert load_events(tmp_path / "nowhere") == []


def test_what_the_sink_writes_the_reader_reads(tmp_path: Path) -> None:
    events = [ev("run_start", at=1.0), ev("node_error", "n", at=2.0, error="ValueError: x", attrs={"call": 1}),
              ev("run_end", at=3.0, duration_s=2.0)]
    sink = JsonlSink(tmp_path / TELEMETRY_FILE)
    for e in events:
        sink.write(e)
    sink.close()
    assert load_events(tmp_path) == events[1:]  # start events are not written: ends carry the durations


# -- the summary --------------------------------------------------------------------------------------------------

def test_percentiles_on_known_data() -> None:
    stats = summarize([ev("node_end", "n", duration_s=float(i)) for i in range(1, 101)])
    (node,) = stats.nodes
    assert (node.p50_s, node.p95_s, node.p99_s) == pytest.approx((50.5, 95.05, 99.01))  # linear, as numpy
    (single,) = summarize([ev("node_end", "n", duration_s=0.3)]).nodes
    assert single.p50_s == single.p95_s == single.p99_s == 0.3


def test_summarize_counts_rates_and_tokens() -> None:
    events = [ev("run_start", at=1.0)]
    for i in range(8):
        if i < 2:
            events.append(ev("cache_hit", "classify"))
        if i == 3:
            events.append(ev("validation_failure", "classify"))
            events.append(ev("retry", "classify", lm=LM, attrs={"attempt": 1}))
        events.append(ev("node_error" if i == 7 else "node_end", "classify", duration_s=0.1, prompt_tokens=10,
                         completion_tokens=2, at=1.0 + i))
    events += [ev("node_end", "answer", duration_s=1.0, prompt_tokens=100, completion_tokens=20),
               ev("retry", lm=LM), ev("retry", lm=LM, pipeline=""),  # an lm retry outside any node
               ev("run_end", duration_s=2.0, at=20.0), ev("run_end", duration_s=4.0, error="StepError: x"),
               ev("node_end", "x", pipeline="other", duration_s=0.5),
               ev("worker_exit", pipeline="", attrs={"pool": "general", "cause": "segfault"}),
               ev("adaptation", "classify", attrs={"route": "native"})]
    stats = summarize(events)
    assert (stats.events, stats.skipped, stats.first_at, stats.last_at) == (len(events), 0, 1.0, 1000.0)
    other, p = stats.pipelines  # sorted by name
    assert (p.pipeline, p.node, p.calls, p.errors, p.error_rate) == ("p", "", 2, 1, 0.5)
    assert (p.p50_s, p.steps, p.cache_hits, p.retries) == (3.0, 9, 2, 2)
    assert (p.prompt_tokens, p.completion_tokens) == (180, 36)
    assert (other.calls, other.steps, other.p50_s) == (0, 1, None)
    x, answer, classify = stats.nodes
    assert (answer.node, answer.calls, answer.prompt_tokens, answer.cache_hit_rate) == ("answer", 1, 100, 0.0)
    assert (classify.calls, classify.errors, classify.error_rate, classify.cache_hit_rate) == (8, 1, 1 / 8, 2 / 8)
    assert (classify.validation_failure_rate, classify.retries, classify.p50_s) == (1 / 8, 1, pytest.approx(0.1))
    assert (x.pipeline, x.node) == ("other", "x")
    assert stats.worker_exits == {"general: segfault": 1}


def test_summarize_nothing() -> None:
    stats = summarize([])
    assert (stats.events, stats.pipelines, stats.nodes, stats.first_at) == (0, (), (), None)


# -- output -------------------------------------------------------------------------------------------------------

def sample_stats() -> Any:
    return summarize([ev("node_end", "classify", duration_s=0.012, prompt_tokens=40, completion_tokens=3),
                      ev("node_end", "classify", duration_s=1.5), ev("run_end", duration_s=2.25),
                      ev("worker_exit", attrs={"pool": "general", "cause": "hung"})])


def test_render_text() -> None:
    text = render_text(sample_stats(), ROUTES)
    assert text.startswith("4 events from ")
    for expected in ("pipelines", "nodes", "classify", "2.25s", "756ms", "1.43s", "1.49s", "0.0%", "40", "worker exits",
                     "general: hung", "routes", "native", "p95 3x lower than dspy", "200"):
        assert expected in text, expected
    assert "\x1b[" not in text  # plain text: no colour codes
    assert "routes" not in render_text(sample_stats())


def test_to_json_is_json_safe() -> None:
    data = json.loads(json.dumps(to_json(sample_stats(), ROUTES)))
    assert data["routes"] == ROUTES and data["events"] == 4 and data["skipped"] == 0
    (node,) = data["nodes"]
    assert (node["node"], node["calls"], node["p50_s"], node["error_rate"], node["prompt_tokens"]) == (
        "classify", 2, pytest.approx(0.756), 0.0, 40)
    assert data["pipelines"][0]["p99_s"] == 2.25 and data["worker_exits"] == {"general: hung": 1}
    assert to_json(summarize([]))["routes"] == []


# -- the command --------------------------------------------------------------------------------------------------

def test_stats_command(tmp_path: Path) -> None:
    now = datetime.now().timestamp()
    write(tmp_path / TELEMETRY_FILE, [ev("node_end", "old", at=now - 7200, duration_s=0.1),
                                      ev("node_end", "new", at=now - 60, duration_s=0.2)])
    text, code = stats_command(tmp_path, None, "text", ROUTES)
    assert code == 0 and "old" in text and "new" in text and "routes" in text
    text, code = stats_command(tmp_path, "1h", "json", None)
    assert code == 0 and [n["node"] for n in json.loads(text)["nodes"]] == ["new"]


def test_stats_command_errors_and_empty(tmp_path: Path) -> None:
    text, code = stats_command(tmp_path, "last tuesday", "text", None)
    assert code == 2 and text.startswith("error: invalid --since 'last tuesday'")
    text, code = stats_command(tmp_path, None, "yaml", None)
    assert code == 2 and "expected text or json" in text
    text, code = stats_command(tmp_path, "1d", "text", None)
    assert code == 0 and text.startswith("no telemetry recorded since ") and str(tmp_path) in text
    text, code = stats_command(tmp_path, None, "json", None)
    assert code == 0 and json.loads(text)["events"] == 0


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_stats_command_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / TELEMETRY_FILE
    path.write_text("")
    path.chmod(0)
    text, code = stats_command(tmp_path, None, "text", None)
    assert code == 1 and text.startswith("error: cannot read telemetry")
