"""Anomaly detection: one anomaly per latency shift or error burst, none on noise, spikes or during warm-up."""
from __future__ import annotations

import random
import threading
from collections.abc import Callable

import pytest

from dspex.runtime.anomaly import Anomaly, AnomalyDetector


def noisy(rng: random.Random, mean: float = 0.5, spikes: float = 0.005) -> float:
    """A latency: lognormal around ``mean``, now and then a 10x spike."""
    latency = mean * rng.lognormvariate(0.0, 0.3)
    return latency * 10 if rng.random() < spikes else latency


def feed(detector: AnomalyDetector, key: str, n: int, latency: Callable[[int], float],
         ok: Callable[[int], bool] = lambda i: True) -> list[Anomaly]:
    """The anomalies ``n`` calls at ``key`` raise: call ``i`` took ``latency(i)`` and succeeded if ``ok(i)``."""
    found = (detector.observe(key, latency(i), ok(i)) for i in range(n))
    return [a for a in found if a is not None]


@pytest.mark.parametrize("seed", range(5))
def test_noise_spikes_and_scattered_errors_raise_nothing(seed: int) -> None:
    rng, detector = random.Random(seed), AnomalyDetector()
    assert feed(detector, "k", 5000, lambda i: noisy(rng), lambda i: rng.random() > 0.03) == []


@pytest.mark.parametrize("seed", range(5))
def test_a_latency_shift_is_reported_once(seed: int) -> None:
    rng, seen = random.Random(seed), list[Anomaly]()
    detector = AnomalyDetector(on_anomaly=seen.append)
    assert feed(detector, "k", 500, lambda i: noisy(rng)) == []
    returned = feed(detector, "k", 1000, lambda i: noisy(rng, 1.5))
    assert returned == seen and len(seen) == 1
    [anomaly] = seen
    assert anomaly.key == "k" and anomaly.metric == "latency"
    assert anomaly.baseline == pytest.approx(0.5 * 1.046, rel=0.15)  # the lognormal's mean
    assert anomaly.current > 2 * anomaly.baseline
    assert (anomaly.severity, anomaly.action) == ("critical", "switch_route")
    baseline = detector.baseline("k")
    assert baseline is not None and baseline[0] == pytest.approx(1.5 * 1.046, rel=0.15)  # the new normal
    # a further shift is a new anomaly; getting faster is not one
    assert feed(detector, "k", 500, lambda i: noisy(rng, 0.5)) == []
    assert len(feed(detector, "k", 300, lambda i: noisy(rng, 2.0))) == 1


def test_a_mild_slowdown_suggests_lowering_concurrency() -> None:
    rng, detector = random.Random(0), AnomalyDetector()
    assert feed(detector, "k", 300, lambda i: 1.0 + rng.gauss(0, 0.02)) == []
    found = feed(detector, "k", 300, lambda i: 1.7 + rng.gauss(0, 0.02))
    assert [(a.metric, a.severity, a.action) for a in found] == [("latency", "warning", "lower_concurrency")]
    # a steady service does not alarm on a small change, however many sigmas it is
    assert feed(detector, "k", 300, lambda i: 1.9 + rng.gauss(0, 0.02)) == []


@pytest.mark.parametrize("seed", range(5))
def test_an_error_burst_is_reported_once_and_the_next_one_again(seed: int) -> None:
    rng, seen = random.Random(seed), list[Anomaly]()
    detector = AnomalyDetector(on_anomaly=seen.append)
    for _ in range(300):
        detector.observe("lm", noisy(rng), rng.random() > 0.03)
    for i in range(60):
        detector.observe("lm", noisy(rng), i % 2 == 0)  # flaky: every other call fails
    assert len(seen) == 1
    anomaly = seen[0]
    assert (anomaly.key, anomaly.metric, anomaly.severity, anomaly.action) == ("lm", "error_rate", "warning",
                                                                             "switch_route")
    assert anomaly.baseline < 0.1 and anomaly.current >= 0.25
    for _ in range(300):
        detector.observe("lm", noisy(rng), rng.random() > 0.03)
    for _ in range(40):
        detector.observe("lm", 30.0, False)  # down: timeouts (their latency is not learnt)
    assert len(seen) == 2 and seen[1].metric == "error_rate"
    assert (seen[1].severity, seen[1].action) == ("critical", "open_breaker")
    baseline = detector.baseline("lm")
    assert baseline is not None and baseline[0] < 1.0


def test_nothing_is_judged_during_warm_up_and_keys_are_independent() -> None:
    detector = AnomalyDetector(warmup=20)
    assert feed(detector, "a", 19, lambda i: 0.1 if i < 5 else 5.0, lambda i: i > 10) == []
    assert feed(detector, "b", 100, lambda i: 0.1) == []
    assert detector.baseline("c") is None
    assert [a.key for a in feed(detector, "b", 5, lambda i: 1.0)] == ["b"]
    assert isinstance(Anomaly("b", "latency", 0.1, 1.0, "critical", "switch_route").as_dict()["baseline"], float)
    with pytest.raises(ValueError):
        AnomalyDetector(error_rate=1.5)


def test_threads_share_a_detector_safely() -> None:
    seen: list[Anomaly] = []
    detector = AnomalyDetector(on_anomaly=seen.append)

    def work(i: int) -> None:
        rng = random.Random(i)
        for _ in range(2000):
            detector.observe(f"k{i % 2}", noisy(rng, spikes=0.0))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == []
    for key in ("k0", "k1"):
        baseline = detector.baseline(key)
        assert baseline is not None and baseline[0] == pytest.approx(0.5 * 1.046, rel=0.2)
        assert [a.key for a in feed(detector, key, 10, lambda i: 5.0)] == [key]
