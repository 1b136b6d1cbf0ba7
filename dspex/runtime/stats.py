"""``dspexc stats``: what the runs recorded in ``$DSPEX_HOME/telemetry.jsonl`` add up to.

Per pipeline and per node: calls, latency percentiles, error, cache-hit and validation-failure rates,
retries and tokens, with the adaptive scheduler's current routes beside them when it supplies them. The
file is shared by every process that ran pipelines and may end in a torn line (a crash mid-write) or hold
garbage: such lines are counted and skipped, never fatal.
"""
from __future__ import annotations

import io
import json
import logging
import re
import statistics
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from dspex.runtime.telemetry import ROTATED_FILE, TELEMETRY_FILE, TelemetryEvent

__all__ = ["Events", "Row", "Stats", "load_events", "summarize", "render_text", "to_json", "parse_since",
           "stats_command"]

log = logging.getLogger("dspex.telemetry")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_SPAN = re.compile(rf"(?:{_DURATION.pattern})+")


class Events(list[TelemetryEvent]):
    """Events as read from the files; ``skipped`` counts the lines that were not events (torn or garbled)."""

    skipped: int = 0


def parse_since(text: str, now: float | None = None) -> float:
    """Epoch seconds for ``--since``: a span back from ``now`` (``30m``, ``1h``, ``2d``, ``1w``, ``1h30m``;
    s, m, h, d, w) or an ISO-8601 time (``2024-05-01``, ``2024-05-01T12:00:00Z``; without a zone: local
    time). Raises ValueError saying what is accepted."""
    spec = text.strip()
    if _SPAN.fullmatch(spec):
        seconds = sum(float(n) * _UNITS[unit] for n, unit in _DURATION.findall(spec))
        return (time.time() if now is None else now) - seconds
    try:
        return datetime.fromisoformat(spec).timestamp()
    except ValueError:
        raise ValueError(f"invalid --since {text!r}: expected a span such as 30m, 1h, 2d or 1w (s, m, h, d, w), "
                         "or an ISO-8601 time such as 2024-05-01T12:00:00Z") from None


def load_events(home: str | Path, since: float | None = None) -> Events:
    """The events in ``home``'s telemetry files (the rotated one first), oldest first, from ``since`` on.

    A line that is not an event is skipped and counted in ``skipped``; a missing file is no events."""
    events = Events()
    for name in (ROTATED_FILE, TELEMETRY_FILE):
        try:
            with open(Path(home) / name, "rb") as f:
                for line in f:
                    if not line.strip():
                        continue
                    try:
                        event = TelemetryEvent.from_dict(json.loads(line))
                    except (ValueError, TypeError, RecursionError):  # bad JSON or UTF-8, or not an event
                        events.skipped += 1
                        continue
                    if since is None or event.at >= since:
                        events.append(event)
        except FileNotFoundError:
            continue
    events.sort(key=lambda e: e.at)  # several processes append: nearly in order already
    if events.skipped:
        log.warning("telemetry: skipped %d unreadable line(s) in %s", events.skipped, home)
    return events


@dataclass(frozen=True, slots=True)
class Row:
    """One pipeline (``node`` empty) or one node of a pipeline. ``calls`` counts runs for a pipeline and
    calls for a node, with ``errors`` among them and latency percentiles (seconds; None without data);
    ``steps`` counts node calls (under a pipeline: of all its nodes), which the rates are over."""

    pipeline: str
    node: str
    calls: int = 0
    errors: int = 0
    p50_s: float | None = None
    p95_s: float | None = None
    p99_s: float | None = None
    steps: int = 0
    cache_hits: int = 0
    validation_failures: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.calls if self.calls else None

    @property
    def cache_hit_rate(self) -> float | None:
        return self.cache_hits / self.steps if self.steps else None

    @property
    def validation_failure_rate(self) -> float | None:
        return self.validation_failures / self.steps if self.steps else None

    def to_json(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "node": self.node, "calls": self.calls, "errors": self.errors,
                "error_rate": self.error_rate, "p50_s": self.p50_s, "p95_s": self.p95_s, "p99_s": self.p99_s,
                "steps": self.steps, "cache_hits": self.cache_hits, "cache_hit_rate": self.cache_hit_rate,
                "validation_failures": self.validation_failures,
                "validation_failure_rate": self.validation_failure_rate, "retries": self.retries,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


@dataclass(frozen=True, slots=True)
class Stats:
    """The summary of ``events`` events (``skipped`` unreadable lines) between ``first_at`` and ``last_at``."""

    events: int = 0
    skipped: int = 0
    first_at: float | None = None
    last_at: float | None = None
    pipelines: tuple[Row, ...] = ()
    nodes: tuple[Row, ...] = ()
    worker_exits: Mapping[str, int] = field(default_factory=dict)  # by "pool: cause"


@dataclass
class _Tally:
    calls: int = 0
    errors: int = 0
    durations: list[float] = field(default_factory=list)
    steps: int = 0
    cache_hits: int = 0
    validation_failures: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def row(self, pipeline: str, node: str) -> Row:
        p50, p95, p99 = _percentiles(self.durations)
        return Row(pipeline, node, self.calls, self.errors, p50, p95, p99, self.steps, self.cache_hits,
                   self.validation_failures, self.retries, self.prompt_tokens, self.completion_tokens)


def _percentiles(values: list[float]) -> tuple[float | None, float | None, float | None]:
    """p50, p95 and p99, interpolated between the closest ranks (numpy's default, ``method="inclusive"``)."""
    if not values:
        return None, None, None
    if len(values) == 1:
        return values[0], values[0], values[0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[94], cuts[98]


def summarize(events: Iterable[TelemetryEvent]) -> Stats:
    """Per pipeline (from ``run_end`` events, plus its nodes' counts) and per node (``node_end``/``node_error``
    calls; ``cache_hit``, ``validation_failure`` and ``retry`` events at the node). A retry with no node (an lm
    retried outside any step) counts only toward its pipeline, if it names one."""
    pipelines: defaultdict[str, _Tally] = defaultdict(_Tally)
    nodes: defaultdict[tuple[str, str], _Tally] = defaultdict(_Tally)
    exits: defaultdict[str, int] = defaultdict(int)
    count = 0
    first = last = None
    for e in events:
        count += 1
        first = e.at if first is None or e.at < first else first
        last = e.at if last is None or e.at > last else last
        kind = e.kind
        if kind == "run_end":
            tally = pipelines[e.pipeline]
            tally.calls += 1
            tally.errors += bool(e.error)
            tally.durations.append(e.duration_s)
            continue
        if kind == "worker_exit":
            exits[f"{e.attrs.get('pool', '')}: {e.attrs.get('cause', '')}"] += 1
            continue
        if kind not in ("node_end", "node_error", "cache_hit", "validation_failure", "retry"):
            continue
        targets = [pipelines[e.pipeline]] if e.pipeline else []
        if e.node:
            targets.append(nodes[(e.pipeline, e.node)])
        for tally in targets:
            if kind in ("node_end", "node_error"):
                tally.steps += 1
                tally.prompt_tokens += e.prompt_tokens
                tally.completion_tokens += e.completion_tokens
            elif kind == "cache_hit":
                tally.cache_hits += 1
            elif kind == "validation_failure":
                tally.validation_failures += 1
            else:
                tally.retries += 1
        if e.node and kind in ("node_end", "node_error"):
            tally = nodes[(e.pipeline, e.node)]
            tally.calls += 1
            tally.errors += kind == "node_error"
            tally.durations.append(e.duration_s)
    return Stats(count, getattr(events, "skipped", 0), first, last,
                 tuple(t.row(name, "") for name, t in sorted(pipelines.items())),
                 tuple(t.row(p, n) for (p, n), t in sorted(nodes.items())), dict(sorted(exits.items())))


# -- output -------------------------------------------------------------------------------------------------------

def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _when(at: float | None) -> str:
    return "-" if at is None else datetime.fromtimestamp(at).astimezone().isoformat(timespec="seconds")


def render_text(stats: Stats, routes: list[dict[str, Any]] | None = None) -> str:
    """Plain-text tables (rich, no colour): pipelines, nodes, worker exits and the scheduler's ``routes``
    (dicts with node, route, reason and samples)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None, force_terminal=False, highlight=False)
    skipped = f"; {stats.skipped} unreadable line(s) skipped" if stats.skipped else ""
    console.print(f"{stats.events} events from {_when(stats.first_at)} to {_when(stats.last_at)}{skipped}",
                  markup=False)

    def table(title: str, first: list[str], rows: Iterable[Row], runs: bool) -> None:
        t = Table(*first, "runs" if runs else "calls", "p50", "p95", "p99", "errors", *(["steps"] if runs else []),
                  "cache hits", "invalid", "retries", "tokens in", "tokens out", title=title, box=box.SIMPLE_HEAD,
                  title_justify="left", show_edge=False)
        for c in t.columns[len(first):]:
            c.justify = "right"
        for r in rows:
            names = [r.pipeline, r.node][:len(first)]
            t.add_row(*names, str(r.calls), _seconds(r.p50_s), _seconds(r.p95_s), _seconds(r.p99_s),
                      _rate(r.error_rate), *([str(r.steps)] if runs else []), _rate(r.cache_hit_rate),
                      _rate(r.validation_failure_rate), str(r.retries), str(r.prompt_tokens),
                      str(r.completion_tokens))
        console.print()
        console.print(t)

    if stats.pipelines:
        table("pipelines", ["pipeline"], stats.pipelines, runs=True)
    if stats.nodes:
        table("nodes", ["pipeline", "node"], stats.nodes, runs=False)
    if stats.worker_exits:
        t = Table("pool: cause", "exits", title="worker exits", box=box.SIMPLE_HEAD, title_justify="left",
                  show_edge=False)
        for cause, n in stats.worker_exits.items():
            t.add_row(cause, str(n))
        console.print()
        console.print(t)
    if routes:
        t = Table("node", "route", "reason", "samples", title="routes", box=box.SIMPLE_HEAD, title_justify="left",
                  show_edge=False)
        for r in routes:
            t.add_row(*(str(r.get(k, "")) for k in ("node", "route", "reason", "samples")))
        console.print()
        console.print(t)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines()) + "\n"


def to_json(stats: Stats, routes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``stats`` (and the scheduler's ``routes``) as a JSON-safe dict; rates are fractions, times seconds."""
    return {"events": stats.events, "skipped": stats.skipped, "first_at": stats.first_at, "last_at": stats.last_at,
            "pipelines": [r.to_json() for r in stats.pipelines], "nodes": [r.to_json() for r in stats.nodes],
            "worker_exits": dict(stats.worker_exits), "routes": list(routes or [])}


def stats_command(home: Path, since: str | None, fmt: str, routes: list[dict[str, Any]] | None = None
                  ) -> tuple[str, int]:
    """What ``dspexc stats`` prints and its exit code: 0, or 2 (with an ``error: ...`` line, for stderr) for a
    bad ``--since`` or ``--format``; 1 when the telemetry file cannot be read."""
    if fmt not in ("text", "json"):
        return f"error: invalid --format {fmt!r}: expected text or json", 2
    try:
        start = parse_since(since) if since is not None else None
    except ValueError as exc:
        return f"error: {exc}", 2
    try:
        events = load_events(home, start)
    except OSError as exc:
        return f"error: cannot read telemetry in {home}: {exc.strerror or exc}", 1
    stats = summarize(events)
    if fmt == "json":
        return json.dumps(to_json(stats, routes), indent=2, ensure_ascii=False), 0
    if not stats.events and not routes:
        window = f" since {_when(start)}" if start is not None else ""
        return f"no telemetry recorded{window} in {Path(home) / TELEMETRY_FILE}", 0
    return render_text(stats, routes).rstrip("\n"), 0
