"""The adaptive scheduler against the best fixed route, when a server degrades mid-run (issue 6's measured claim).

A ``.dspex`` pipeline of one ``predict`` step (``text -> shout``, ``retries = 5``) whose lm is ``round_robin(a, b)``
and whose engine is ``auto``: the runtime splits the round robin into its members, so the step has four
candidate routes, ``native/a``, ``native/b``, ``dspy/a`` and ``dspy/b``. Servers ``a`` and ``b`` are
``tests/servers/openai_stub.py`` in child processes (so they share no GIL with the runtime), answering at
``LATENCY_A`` and ``LATENCY_B`` (``a`` slightly faster) in the native engine's JSON and in dspy's ChatAdapter format
(``tests.servers.openai_stub:shout``), so all four routes really run: the dspy engine drives real ``dspy.Predict``
modules through the same lms.

- The best fixed route is chosen **before the run**, as a user would: each candidate route, pinned, runs
  ``CALIBRATION_ROWS`` rows on the healthy servers, and the route with the lowest mean row latency wins (it is
  ``native/a``: the faster server, the leaner engine).
- Then ``N_ROWS`` rows run at concurrency ``CONCURRENCY``, and when row ``N_ROWS // 3`` is done server ``a``
  degrades through its control endpoint: its latency triples and 10% of its answers are wrong-shaped, so they
  fail validation (the engine re-asks; ``retries = 5`` makes losing a row to six wrong answers in a row a
  one-in-a-million event).
  ``competitor``: ``[scheduler] pins = {"*" = "native/a"}`` (the best fixed route); ``dspex``: the adaptive
  scheduler (the default), starting from nothing (a fresh ``DSPEX_HOME``).

Each side reports rows/s, p50/p95 row latency (each run's ``run_end`` duration), lost rows (errors or wrong
outputs: must be 0), the routes its rows took before and after the degradation, and for the adaptive side the
scheduler's final routes (``rt.scheduler.describe()``) and its ``adaptation`` / ``anomaly`` telemetry events.
Target: time per row <= 1/1.3 of the fixed route's (at least 30% more throughput).

Run with ``python -m pytest benchmarks/test_adaptation.py -q --no-cov``; ``DSPEX_BENCH_ADAPT_ROWS`` sets N_ROWS.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # dspy and litellm: no fetch of the model map

import pytest

import dspex
from dspex.ir.program import Pipeline
from dspex.runtime.scheduler import Route
from tests.servers.openai_stub import stop_child

ROOT = Path(__file__).resolve().parents[1]
N_ROWS = int(os.environ.get("DSPEX_BENCH_ADAPT_ROWS", "600"))
CONCURRENCY = 8
LATENCY_A, LATENCY_B = 0.035, 0.050
DEGRADE = {"latency_factor": 3.0, "wrong_share": 0.10}
CALIBRATION_ROWS = 64
SEED = 7
ROUTES: tuple[Route, ...] = (("native", "a"), ("native", "b"), ("dspy", "a"), ("dspy", "b"))

SOURCE = '''signature Shout = "text -> shout"
lm a = openai("m", base_url="{a}")
lm b = openai("m", base_url="{b}")
lm default = round_robin(a, b)
pipeline loud(text: str) -> (shout: str) {{
  shout = predict Shout(text = text).shout with (retries = 5)
}}'''


class Server:
    """``tests/servers/openai_stub.py`` in a child process, with its control endpoint."""

    def __init__(self, name: str, latency: float, seed: int):
        self.name, self.latency, self.seed = name, latency, seed
        self.base_url = ""
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Self:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.servers.openai_stub", "--latency", str(self.latency), "--control",
             "--answer-fn", "tests.servers.openai_stub:shout", "--seed", str(self.seed)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        self.base_url = self._proc.stdout.readline().strip()
        if not self.base_url.startswith("http://127.0.0.1:"):
            self.__exit__()
            raise RuntimeError(f"the stub process did not start (it printed {self.base_url!r})")
        return self

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        stop_child(proc)

    def control(self, **change: Any) -> dict[str, Any]:
        """``POST /_control`` (no change: ``GET``): the server's rates, degradation and outcome counts."""
        host, port = self.base_url.removeprefix("http://").split("/")[0].split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            body = json.dumps(change).encode() if change else None
            connection.request("POST" if change else "GET", "/_control", body=body,
                               headers={"Content-Type": "application/json"})
            reply = connection.getresponse()
            data: dict[str, Any] = json.loads(reply.read())
            if reply.status != 200:
                raise RuntimeError(f"control {change!r}: {reply.status} {data}")
            return data
        finally:
            connection.close()

    def heal(self) -> None:
        self.control(rates={}, degrade={}, reset_counts=True)


@dataclass
class Outcome:
    """One run: what ``run_rows`` measured."""

    seconds: float
    rows: int
    lost: list[Any]
    latencies: list[float]
    routes: dict[str, Counter[str]]  # "before" / "after" the degradation -> "engine/lm" -> node runs
    served: dict[str, dict[str, int]]  # server -> outcome counts
    scheduler: list[dict[str, Any]] = field(default_factory=list)
    adaptations: list[str] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds

    def percentile(self, q: int) -> float:
        return statistics.quantiles(self.latencies, n=100)[q - 1]


@contextlib.contextmanager
def fresh_home(path: Path) -> Iterator[None]:
    """``DSPEX_HOME`` at ``path`` for one run: nothing learnt by an earlier run (or by the user) leaks in; and no
    ``DSPEX_LM``, which would replace the program's lms."""
    before = {name: os.environ.pop(name, None) for name in ("DSPEX_HOME", "DSPEX_LM")}
    os.environ["DSPEX_HOME"] = str(path)
    try:
        yield
    finally:
        for name, value in before.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


def runtime(pin: Route | None) -> dspex.Runtime:
    scheduler: dict[str, Any] = {"seed": SEED}
    if pin is not None:
        scheduler["pins"] = {"*": "/".join(pin)}
    return dspex.Runtime(cache=False, concurrency=CONCURRENCY,
                         config={"scheduler": scheduler, "telemetry": {"sinks": ["ring"]}})


def run_rows(rt: dspex.Runtime, pipe: Pipeline, servers: dict[str, Server], n: int,
             degrade_at: int | None) -> Outcome:
    """``n`` rows through ``rt.batch``; server ``a`` degrades once row ``degrade_at`` is done."""
    rows = [{"id": i, "text": f"row {i}"} for i in range(n)]
    results = []
    switched = float("inf")
    began = time.perf_counter()
    for result in rt.batch(pipe, rows, concurrency=CONCURRENCY):
        results.append(result)
        if len(results) == degrade_at:
            servers["a"].control(degrade=DEGRADE)
            switched = time.time()
    seconds = time.perf_counter() - began
    lost = [r.id for r in results if not r.ok or r.outputs != {"shout": f"ROW {r.id}"}]
    ring = rt.telemetry.ring
    assert ring is not None
    names = {server.base_url: name for name, server in servers.items()}
    routes: dict[str, Counter[str]] = {"before": Counter(), "after": Counter()}
    for event in ring.events("node_end"):
        lm = names.get(event.lm.partition("@")[2], event.lm)
        routes["before" if event.at < switched else "after"][f"{event.engine}/{lm}"] += 1
    latencies = [e.duration_s for e in ring.events("run_end")]
    assert len(latencies) == n
    outcome = Outcome(seconds, n, lost, latencies, routes,
                      {name: server.control()["counts"] for name, server in servers.items()})
    if rt.scheduler is not None:
        outcome.scheduler = [{**row, "route": "/".join(row["route"])} for row in rt.scheduler.describe()]
    outcome.adaptations = [f"{e.attrs.get('action')} {e.attrs.get('from', '')} -> {e.attrs.get('route', '')}: "
                           f"{e.attrs.get('reason')}" for e in ring.events("adaptation")]
    outcome.anomalies = [_anomaly(e.attrs, names) for e in ring.events("anomaly")]
    return outcome


def _anomaly(attrs: Mapping[str, Any], names: Mapping[str, str]) -> str:
    key = str(attrs.get("key", ""))
    for url, name in names.items():
        key = key.replace(f"openai:m@{url}", name)
    baseline, current = attrs.get("baseline"), attrs.get("current")
    shift = (f"{baseline:.3f} -> {current:.3f}" if isinstance(baseline, float) and isinstance(current, float)
             else f"{baseline} -> {current}")
    return f"{key} {attrs.get('metric')} {attrs.get('severity')} ({attrs.get('action')}): {shift}"


# -- fixtures -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Server]]:
    with Server("a", LATENCY_A, 1) as a, Server("b", LATENCY_B, 2) as b:
        yield {"a": a, "b": b}


@pytest.fixture(scope="module")
def pipe(servers: dict[str, Server]) -> Pipeline:
    source = SOURCE.format(a=servers["a"].base_url, b=servers["b"].base_url)
    return dspex.compile_source(source).pipelines["loud"]


@pytest.fixture(scope="module")
def best_fixed(servers: dict[str, Server], pipe: Pipeline,
               tmp_path_factory: pytest.TempPathFactory) -> tuple[Route, dict[str, float]]:
    """The best fixed route, chosen before the run: each candidate, pinned, on the healthy servers; the lowest
    mean row latency wins. (This also imports dspy, so neither measured run pays for that.)"""
    means: dict[str, float] = {}
    for route in ROUTES:
        servers["a"].heal()
        servers["b"].heal()
        with fresh_home(tmp_path_factory.mktemp("calibrate")), runtime(route) as rt:
            outcome = run_rows(rt, pipe, servers, CALIBRATION_ROWS, None)
        assert not outcome.lost, (route, outcome.lost)
        assert set(outcome.routes["before"]) == {"/".join(route)}
        means["/".join(route)] = statistics.fmean(outcome.latencies)
    best = min(means, key=means.__getitem__)
    engine, lm = best.split("/")
    return (engine, lm), means


RESULTS: dict[str, Outcome] = {}


def _summary(outcome: Outcome) -> list[str]:
    lines = [(f"{outcome.rows_per_s:.1f} rows/s, row latency p50 {outcome.percentile(50) * 1e3:.0f} ms, "
              f"p95 {outcome.percentile(95) * 1e3:.0f} ms, lost rows {len(outcome.lost)} of {outcome.rows}")]
    for phase in ("before", "after"):
        used = ", ".join(f"{route} {count}" for route, count in outcome.routes[phase].most_common())
        lines.append(f"step runs by route {phase} a degraded: {used}")
    served = [f"{name}: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no requests")
              for name, counts in outcome.served.items()]
    lines.append("server outcomes: " + "; ".join(served))
    return lines


# -- the two sides ------------------------------------------------------------------------------------------------

@pytest.mark.benchmark(group="adaptation")
def test_best_fixed_route(benchmark: Any, servers: dict[str, Server], pipe: Pipeline,
                          best_fixed: tuple[Route, dict[str, float]], tmp_path: Path) -> None:
    route, means = best_fixed
    servers["a"].heal()
    servers["b"].heal()
    with fresh_home(tmp_path), runtime(route) as rt:
        outcome = benchmark.pedantic(lambda: run_rows(rt, pipe, servers, N_ROWS, N_ROWS // 3), rounds=1,
                                     iterations=1)
    RESULTS["fixed"] = outcome
    calibration = ", ".join(f"{r} {m * 1e3:.1f} ms" for r, m in sorted(means.items(), key=lambda kv: kv[1]))
    benchmark.extra_info.update(
        side="competitor", competitor=f"best fixed route ({'/'.join(route)})", items=N_ROWS, unit="row",
        rows_per_s=round(outcome.rows_per_s, 1), p95_s=round(outcome.percentile(95), 4), lost=len(outcome.lost),
        variant=f"[scheduler] pins = {{\"*\" = \"{'/'.join(route)}\"}}",
        summary=[f"chosen before the run by mean row latency on {CALIBRATION_ROWS} healthy rows: {calibration}",
                 *_summary(outcome)])
    assert outcome.lost == []


@pytest.mark.benchmark(group="adaptation")
def test_adaptive_scheduler(benchmark: Any, servers: dict[str, Server], pipe: Pipeline, tmp_path: Path) -> None:
    servers["a"].heal()
    servers["b"].heal()
    with fresh_home(tmp_path), runtime(None) as rt:
        outcome = benchmark.pedantic(lambda: run_rows(rt, pipe, servers, N_ROWS, N_ROWS // 3), rounds=1,
                                     iterations=1)
    RESULTS["adaptive"] = outcome
    lines = _summary(outcome)
    lines += [f"scheduler's route for {row['node']}: {row['route']} ({row['reason']}; {row['samples']} samples, "
              f"latency {row['latency_s'] * 1e3:.0f} ms, failures {row['failure_rate']:.0%})"
              for row in outcome.scheduler]
    lines += [f"adaptation: {text}" for text in outcome.adaptations]
    lines += [f"anomaly: {text}" for text in outcome.anomalies]
    fixed = RESULTS.get("fixed")
    if fixed is not None:
        lines.append(f"vs the fixed route: throughput x{outcome.rows_per_s / fixed.rows_per_s:.2f} (target >= 1.3), "
                     f"p95 {outcome.percentile(95) * 1e3:.0f} ms vs {fixed.percentile(95) * 1e3:.0f} ms")
    benchmark.extra_info.update(
        side="dspex", target=round(1 / 1.3, 3), items=N_ROWS, unit="row", rows_per_s=round(outcome.rows_per_s, 1),
        p95_s=round(outcome.percentile(95), 4), lost=len(outcome.lost), variant="adaptive scheduler (default)",
        scheduler=json.dumps(outcome.scheduler, default=str), summary=lines)
    assert outcome.lost == []
    assert outcome.routes["after"].most_common(1)[0][0].endswith("/b")  # it moved off the degraded server
