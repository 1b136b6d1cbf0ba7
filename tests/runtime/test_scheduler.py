"""The adaptive scheduler on simulated routes: convergence, degradation and recovery, size-aware latency
prediction, pins, determinism, persistence (and damaged files), thread safety and the cost of ``choose``."""
from __future__ import annotations

import logging
import random
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from dspex.runtime.config import Config
from dspex.runtime.scheduler import (
    SCHEDULER_FILE,
    AdaptiveScheduler,
    Route,
    SchedulerStateError,
)

NATIVE: Route = ("native", "default")
FAST: Route = ("dspy", "fast")
SLOW: Route = ("dspy", "default")
ROUTES = [NATIVE, FAST, SLOW]

# latency = a + b * input size, for each route when healthy: NATIVE is the best, FAST is 1.5x it, SLOW 2x.
LINES = {NATIVE: (0.3, 0.0005), FAST: (0.45, 0.00075), SLOW: (0.6, 0.001)}

Model = Callable[[Route, float, int, random.Random], tuple[float, bool]]


def healthy(route: Route, x: float, t: int, rng: random.Random) -> tuple[float, bool]:
    """(latency, validation failed) of one call: lognormal noise around the route's line, 1% bad answers."""
    a, b = LINES[route]
    return (a + b * x) * rng.lognormvariate(0.0, 0.2), rng.random() < 0.01


def degrading(at: int, until: int | None = None) -> Model:
    """NATIVE gets 3x slower and fails validation 10% of the time from call ``at`` (until ``until``)."""
    def model(route: Route, x: float, t: int, rng: random.Random) -> tuple[float, bool]:
        latency, failed = healthy(route, x, t, rng)
        if route == NATIVE and t >= at and (until is None or t < until):
            return latency * 3, rng.random() < 0.10
        return latency, failed
    return model


def simulate(model: Model, rows: int, seed: int, fixed: Route | None = None, inflight: int = 4,
             scheduler: AdaptiveScheduler | None = None) -> tuple[float, list[Route]]:
    """Runs ``rows`` rows, ``inflight`` chosen at a time before any of them is observed (as under a ``map``);
    a row whose answer fails validation is retried, on a route chosen again. Returns the total time spent
    (work-seconds: with a fixed concurrency, throughput is rows over it) and the route of each call."""
    rng = random.Random(seed)
    sched = scheduler or AdaptiveScheduler(seed=seed)
    total, calls, t = 0.0, [], 0
    for start in range(0, rows, inflight):
        sizes = [rng.uniform(100, 2000) for _ in range(min(inflight, rows - start))]
        pending = [(x, fixed or sched.choose("n", ROUTES, x)) for x in sizes]
        while pending:
            retry = []
            for x, route in pending:
                latency, failed = model(route, x, t, rng)
                t += 1
                total += latency
                calls.append(route)
                if fixed is None:
                    sched.observe("n", route, latency, True, failed, 0, x)
                if failed:
                    retry.append((x, fixed or sched.choose("n", ROUTES, x)))
            pending = retry
    return total, calls


def first_window(calls: list[Route], start: int, test: Callable[[list[Route]], bool], width: int = 20) -> int:
    """Calls after ``start`` until the first window of ``width`` calls that passes ``test``."""
    return next(i - start for i in range(start, len(calls) - width) if test(calls[i:i + width]))


# -- learning ---------------------------------------------------------------------------------------------------


def test_it_converges_to_the_best_route() -> None:
    for seed in range(3):
        sched = AdaptiveScheduler(seed=seed)
        _, calls = simulate(healthy, 600, seed, scheduler=sched)
        assert Counter(calls[-300:])[NATIVE] >= 0.8 * 300  # the rest: exploring, the price of noticing change
        [row] = sched.describe()
        assert row["route"] == NATIVE and row["samples"] == len(calls) and row["failure_rate"] < 0.05
        assert row["reason"].startswith("lowest expected cost") and "next dspy/fast" in row["reason"]
        assert row["latency_s"] == pytest.approx(sched.predict_latency("n", NATIVE, 1050), rel=0.1)


def test_a_degraded_route_is_abandoned_and_the_run_beats_the_best_fixed_route() -> None:
    """The issue's target: NATIVE, the best route beforehand, degrades (3x latency, 10% validation failures)
    half way through; adapting must beat staying on it by 30% in throughput."""
    for seed in range(3):
        events: list[dict[str, Any]] = []
        sched = AdaptiveScheduler(seed=seed, on_adapt=events.append)
        adaptive, calls = simulate(degrading(500), 1000, seed, scheduler=sched)
        fixed, _ = simulate(degrading(500), 1000, seed, fixed=NATIVE)
        hindsight, _ = simulate(degrading(500), 1000, seed, fixed=FAST)  # the best fixed route, in hindsight
        assert fixed / adaptive >= 1.3
        assert adaptive < hindsight  # it also had NATIVE's good first half
        assert first_window(calls, 500, lambda w: w.count(NATIVE) <= 2) <= 60
        assert [(e["from"], e["to"]) for e in events] == [(NATIVE, FAST)]
        assert events[0]["node"] == "n" and "failures" in events[0]["reason"]


def test_a_recovered_route_is_tried_again_and_taken_back() -> None:
    for seed in range(3):
        events: list[dict[str, Any]] = []
        sched = AdaptiveScheduler(seed=seed, on_adapt=events.append)
        _, calls = simulate(degrading(300, until=700), 1400, seed, scheduler=sched)
        assert Counter(calls[500:700])[NATIVE] <= 0.1 * 200  # away while it is degraded, but tried now and then
        assert 0 < Counter(calls[500:700])[NATIVE]
        assert first_window(calls, 700, lambda w: w.count(NATIVE) >= 17) <= 150
        assert [(e["from"], e["to"]) for e in events] == [(NATIVE, FAST), (FAST, NATIVE)]


def test_the_best_route_can_depend_on_the_input_size() -> None:
    """NATIVE is cheaper on small inputs, FAST on large ones: the size-aware latency model picks each where it wins."""
    lines = {NATIVE: (0.1, 0.001), FAST: (0.6, 0.0002)}  # equal at size 625
    sched, rng = AdaptiveScheduler(seed=3), random.Random(3)
    picks: dict[bool, Counter[Route]] = {True: Counter(), False: Counter()}
    for t in range(2000):
        x = rng.choice((100.0, 2000.0)) if t % 2 else rng.uniform(100, 2000)
        route = sched.choose("n", [NATIVE, FAST], x)
        a, b = lines[route]
        sched.observe("n", route, (a + b * x) * rng.lognormvariate(0, 0.1), input_size=x)
        if t >= 1000 and t % 2:
            picks[x < 625][route] += 1
    assert picks[True][NATIVE] >= 0.9 * sum(picks[True].values())
    assert picks[False][FAST] >= 0.9 * sum(picks[False].values())


def test_latency_prediction_from_the_input_size_is_accurate_on_linear_data() -> None:
    sched, rng = AdaptiveScheduler(), random.Random(0)
    for _ in range(300):
        x = rng.uniform(0, 4000)
        sched.observe("n", NATIVE, 0.2 + 0.001 * x + rng.gauss(0, 0.02), input_size=x)
    for x in (50.0, 1000.0, 3900.0):
        assert sched.predict_latency("n", NATIVE, x) == pytest.approx(0.2 + 0.001 * x, rel=0.03)
    # constant sizes: a flat fit, the mean; an unseen route: the step's mean; an unseen step: 1s
    for _ in range(50):
        sched.observe("m", FAST, 0.5 + rng.gauss(0, 0.01), input_size=10)
    assert sched.predict_latency("m", FAST, 10_000) == pytest.approx(0.5, rel=0.02)
    assert sched.predict_latency("m", SLOW, 10) == pytest.approx(0.5, rel=0.02)
    assert sched.predict_latency("nowhere", SLOW, 10) == 1.0


def test_failures_and_errors_cost_more_than_latency_and_tokens_count() -> None:
    rng = random.Random(1)
    # FAST is 20% quicker but 30% of its answers fail validation: NATIVE costs less per good row
    sched = AdaptiveScheduler(seed=1)
    for _ in range(400):
        route = sched.choose("n", [NATIVE, FAST])
        failed = route == FAST and rng.random() < 0.3
        sched.observe("n", route, 1.0 if route == NATIVE else 0.8, validation_failed=failed)
    assert sched.describe()[0]["route"] == NATIVE
    # SLOW raises at once every time: its (unlearnt) speed must not win over a slow route that answers
    sched = AdaptiveScheduler(seed=1)
    for _ in range(200):
        route = sched.choose("n", [SLOW, NATIVE])
        sched.observe("n", route, 0.001 if route == SLOW else 2.0, ok=route == NATIVE)
    row = sched.describe()[0]
    assert row["route"] == NATIVE and row["latency_s"] == pytest.approx(2.0)
    # equal latency and failures, FAST spends ten times the tokens
    sched = AdaptiveScheduler(seed=1, token_weight=1e-4)
    for _ in range(300):
        route = sched.choose("n", [FAST, NATIVE])
        sched.observe("n", route, 1.0 * rng.lognormvariate(0, 0.05), tokens=5000 if route == FAST else 500)
    assert sched.describe()[0]["route"] == NATIVE


def test_every_route_is_warmed_up_first_even_when_chosen_concurrently() -> None:
    sched = AdaptiveScheduler(seed=0, warmup=2)
    assert [sched.choose("n", ROUTES) for _ in range(6)] == ROUTES * 2  # in flight at once: spread, in order
    assert sched.describe()[0]["reason"] == "warming up"


# -- pins and determinism ---------------------------------------------------------------------------------------


def test_pins_are_always_honoured() -> None:
    sched = AdaptiveScheduler(seed=0, pins={"n": FAST})
    assert {sched.choose("n", ROUTES) for _ in range(100)} == {FAST}
    sched.pin("*", SLOW)
    assert sched.choose("n", ROUTES) == FAST  # the step's own pin beats "*"
    assert {sched.choose("m", ROUTES) for _ in range(100)} == {SLOW}
    assert sched.choose("m", [NATIVE, FAST]) == NATIVE  # "*" cannot run here: the caller's first route
    with pytest.raises(ValueError, match="pinned"):
        sched.choose("n", [NATIVE, SLOW])
    sched.observe("m", SLOW, 1.0)
    assert sched.describe()[0]["reason"] == "pinned"
    sched.unpin("*")
    sched.unpin("n")
    assert len({sched.choose("n", ROUTES) for _ in range(50)}) > 1  # learning again


def test_choose_is_deterministic_for_a_seed() -> None:
    runs = [simulate(degrading(100), 300, seed=0, scheduler=AdaptiveScheduler(seed=7))[1] for _ in range(2)]
    assert runs[0] == runs[1]
    other = simulate(degrading(100), 300, seed=0, scheduler=AdaptiveScheduler(seed=8))[1]
    assert other != runs[0]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        AdaptiveScheduler().choose("n", [])
    with pytest.raises(ValueError):
        AdaptiveScheduler(half_life=0)
    with pytest.raises(ValueError):
        AdaptiveScheduler().save()
    assert AdaptiveScheduler().choose("n", [FAST]) == FAST


# -- persistence ------------------------------------------------------------------------------------------------


def trained(seed: int = 0) -> AdaptiveScheduler:
    sched = AdaptiveScheduler(seed=seed)
    simulate(healthy, 300, seed, scheduler=sched)
    return sched


def test_state_round_trips_and_a_second_run_starts_informed(tmp_path: Path) -> None:
    first = trained()
    path = first.save(tmp_path / SCHEDULER_FILE)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    second = AdaptiveScheduler(seed=99)
    assert second.load(path)
    assert same(second.describe(), first.describe())
    assert second.predict_latency("n", FAST, 900) == pytest.approx(first.predict_latency("n", FAST, 900))
    # no second warm-up and no relearning: the next calls go to the best route straight away
    picks = [second.choose("n", ROUTES, 1000) for _ in range(50)]
    assert picks.count(NATIVE) >= 40
    assert not AdaptiveScheduler().load(tmp_path / "absent.msgpack")


def test_from_config_loads_and_saves_under_dspex_home(tmp_path: Path) -> None:
    config = Config(home=tmp_path / "home")
    sched = AdaptiveScheduler.from_config(config, seed=1)
    assert sched.path == tmp_path / "home" / SCHEDULER_FILE and sched.describe() == []
    simulate(healthy, 200, 1, scheduler=sched)
    sched.save()
    again = AdaptiveScheduler.from_config(config)
    assert same(again.describe(), sched.describe()) and again.describe()[0]["route"] == NATIVE


@pytest.mark.parametrize("content, message", [
    (b"\xc1\x00garbage", "not a scheduler state file"),
    (msgpack.packb({"some": "other file"}), "not a scheduler state file"),
    (msgpack.packb([1, 2, 3]), "not a scheduler state file"),
    (msgpack.packb({"format": "dspex.scheduler", "version": 99, "nodes": []}), "version 99"),
    (msgpack.packb({"format": "dspex.scheduler", "version": 1, "nodes": [["n", None, 1.0, 1.0, [["x"]]]]}),
     "damaged"),
    (msgpack.packb({"format": "dspex.scheduler", "version": 1,
                    "nodes": [["n", ["a", "b"], 1.0, 1.0, [["c", "d", 1, 1] + [1.0] * 9]]]}), "damaged"),
    (msgpack.packb({"format": "dspex.scheduler", "version": 1,
                    "nodes": [["n", None, 1.0, 1.0, [["c", "d", 1, 1, float("nan")] + [1.0] * 8]]]}), "damaged"),
])
def test_a_damaged_or_foreign_file_raises_and_leaves_the_state_alone(tmp_path: Path, content: bytes,
                                                                     message: str) -> None:
    path = tmp_path / SCHEDULER_FILE
    path.write_bytes(content)
    sched = trained()
    before = sched.describe()
    with pytest.raises(SchedulerStateError, match=message) as info:
        sched.load(path)
    assert info.value.code == "SCHEDULER" and str(path) in str(info.value)
    assert sched.describe() == before


def same(rows: list[dict[str, Any]], expected: list[dict[str, Any]]) -> bool:
    """Equal ``describe`` rows, up to rounding (a loaded fit is recomputed from the sums)."""
    return len(rows) == len(expected) and all(
        r.keys() == e.keys() and all(r[k] == pytest.approx(e[k]) if isinstance(e[k], float) else r[k] == e[k]
                                     for k in e) for r, e in zip(rows, expected))


def test_from_config_moves_a_damaged_file_aside_and_starts_afresh(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / SCHEDULER_FILE).write_bytes(b"not msgpack at all \xc1")
    with caplog.at_level(logging.WARNING, logger="dspex.scheduler"):
        sched = AdaptiveScheduler.from_config(Config(home=tmp_path))
    assert sched.describe() == []
    assert "moved it to" in caplog.text
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(f"{SCHEDULER_FILE}.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == b"not msgpack at all \xc1"
    assert not (tmp_path / SCHEDULER_FILE).exists()


# -- concurrency and cost ---------------------------------------------------------------------------------------


def test_threads_share_a_scheduler_safely() -> None:
    sched, errors = AdaptiveScheduler(seed=0), []
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        rng = random.Random(i)
        try:
            barrier.wait()
            for _ in range(1000):
                node = f"n{rng.randrange(3)}"
                route = sched.choose(node, ROUTES, 500)
                sched.observe(node, route, LINES[route][0] * rng.lognormvariate(0, 0.2), input_size=500)
                if rng.random() < 0.01:
                    sched.describe()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    rows = sched.describe()
    assert sum(r["samples"] for r in rows) == 8000 and {r["route"] for r in rows} == {NATIVE}


def test_choose_is_cheap() -> None:
    """A few microseconds on an idle core; the bound here is loose, for a shared, busy machine."""
    sched = trained()
    n = 20_000
    started = time.process_time()
    for _ in range(n):
        sched.choose("n", ROUTES, 800)
    assert (time.process_time() - started) / n < 50e-6


def test_a_default_bias_keeps_ties_on_the_first_route() -> None:
    """Latency is all the scheduler sees: an alternative that only ties the first route should not take half of
    the traffic (it may cost more of this machine than its latency shows)."""
    routes = [("native", "@default"), ("dspy", "@default")]

    def share_of_first(bias: float) -> float:
        scheduler, rng = AdaptiveScheduler(seed=3, default_bias=bias), random.Random(3)
        picks = Counter()
        for _ in range(2000):
            route = scheduler.choose("p.n", routes)
            picks[route] += 1
            scheduler.observe("p.n", route, 0.05 + rng.gauss(0, 0.005))
        return picks[routes[0]] / 2000

    assert share_of_first(0.3) > share_of_first(0.0) + 0.15
