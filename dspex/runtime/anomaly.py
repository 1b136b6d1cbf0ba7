"""Anomaly detection on step and lm latencies and error rates, so the runtime can react before a run is lost.

Per key (a step, an lm, a route) it keeps EWMA baselines: latency mean and variance, and error rate. After a
warm-up, a latency is *high* when it is beyond both ``k`` standard deviations and ``ratio`` times the mean (the
ratio keeps a very steady service from alarming on a change nobody would notice), and *raised* when beyond
half of that. ``consecutive`` high latencies in a run of raised ones are a shift, not a spike: a shifted
service still answers fast now and then, which must not reset the count. The error rate is its own EWMA,
compared with ``error_rate``.

One shift is one anomaly: after a latency anomaly the baseline moves to the new level (so a lasting slowdown
is reported once, and a further one again), and an error anomaly is latched until the rate falls below half
its threshold. Raised samples are held out of the baseline while they may be a shift (so they cannot hide it
by inflating the variance), and join it winsorized once they turn out to be spikes. Only degradations are
reported: a faster or healthier key is good news.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["Anomaly", "AnomalyDetector"]

Action = Literal["open_breaker", "switch_route", "lower_concurrency"]


@dataclass(frozen=True, slots=True)
class Anomaly:
    """A shift of ``metric`` ("latency" in seconds, or "error_rate") at ``key`` from ``baseline`` to ``current``.

    ``action`` is a suggestion: ``open_breaker`` when every call fails, ``switch_route`` for a flaky key
    or a latency ``critical_ratio`` times the baseline or more, ``lower_concurrency`` for a milder slowdown (often
    the provider queueing our own load)."""

    key: str
    metric: Literal["latency", "error_rate"]
    baseline: float
    current: float
    severity: Literal["warning", "critical"]
    action: Action

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Baseline:
    __slots__ = ("n", "ln", "highs", "run", "mean", "var", "err", "slow_err", "latched", "held")

    def __init__(self) -> None:
        self.n = self.ln = self.highs = self.run = 0  # samples, latency samples, high ones in ``held``, errors in a row
        self.mean = self.var = 0.0
        self.held: list[float] = []  # raised latencies in a row, kept out of the baseline while they may be a shift
        self.err = self.slow_err = 0.0  # the error rate, recent and long-run (the baseline reported)
        self.latched = False  # an error anomaly was reported and the rate has not come back down yet

    def update(self, x: float, alpha: float) -> None:
        diff = x - self.mean
        step = alpha * diff
        self.mean += step
        self.var = (1.0 - alpha) * (self.var + diff * step)


class AnomalyDetector:
    """Watches keys' latencies and errors; ``observe`` returns the ``Anomaly`` a sample completes (and calls
    ``on_anomaly`` with it, outside the lock), else None. Thread-safe.

    ``alpha`` / ``error_alpha``: EWMA weights of latency and of errors; ``warmup``: samples before judging;
    ``k``, ``ratio``, ``consecutive``: what makes a latency shift; ``error_rate``: the error-rate threshold;
    ``critical_ratio``: the latency ratio that is critical; ``outage_run``: failures in a row that make an error
    anomaly critical (the key looks down, not flaky)."""

    def __init__(self, *, alpha: float = 0.1, error_alpha: float = 0.05, warmup: int = 20, k: float = 4.0,
                 ratio: float = 1.5, consecutive: int = 3, error_rate: float = 0.25, critical_ratio: float = 2.0,
                 outage_run: int = 5, on_anomaly: Callable[[Anomaly], None] | None = None):
        if not (0.0 < alpha <= 1.0 and 0.0 < error_alpha <= 1.0 and consecutive >= 1 and 0.0 < error_rate < 1.0):
            raise ValueError("need 0 < alpha, error_alpha <= 1, consecutive >= 1 and 0 < error_rate < 1")
        self.alpha, self.error_alpha, self.warmup = alpha, error_alpha, warmup
        self.k, self.ratio, self.consecutive = k, ratio, consecutive
        self.error_rate, self.critical_ratio, self.outage_run = error_rate, critical_ratio, outage_run
        self.on_anomaly = on_anomaly
        self._keys: dict[str, _Baseline] = {}
        self._lock = threading.Lock()

    def observe(self, key: str, latency_s: float, ok: bool = True) -> Anomaly | None:
        """One call at ``key``. A failed call (``ok`` False) counts as an error; its latency is not learnt."""
        with self._lock:
            b = self._keys.get(key)
            if b is None:
                b = self._keys[key] = _Baseline()
            b.n += 1
            error = 0.0 if ok else 1.0
            b.run = 0 if ok else b.run + 1
            b.err += max(self.error_alpha, 1.0 / b.n) * (error - b.err)
            b.slow_err += max(self.error_alpha / 10, 1.0 / b.n) * (error - b.slow_err)
            anomaly = self._errors(key, b) if not ok else self._latency(key, b, float(latency_s))
            if ok and b.latched and b.err < self.error_rate / 2:
                b.latched = False
        if anomaly is not None and self.on_anomaly is not None:
            self.on_anomaly(anomaly)
        return anomaly

    def baseline(self, key: str) -> tuple[float, float] | None:
        """``key``'s (latency mean, error rate) baselines, or None if it has not been seen."""
        with self._lock:
            b = self._keys.get(key)
            return (b.mean, b.slow_err) if b is not None else None

    def _errors(self, key: str, b: _Baseline) -> Anomaly | None:
        if b.latched or b.n < self.warmup or b.err < self.error_rate:
            return None
        b.latched = True
        critical = b.run >= self.outage_run
        return Anomaly(key, "error_rate", b.slow_err, b.err, "critical" if critical else "warning",
                       "open_breaker" if critical else "switch_route")

    def _latency(self, key: str, b: _Baseline, x: float) -> Anomaly | None:
        b.ln += 1
        if b.ln <= self.warmup:
            b.update(x, max(self.alpha, 1.0 / b.ln))
            return None
        mean = b.mean
        sd = max(math.sqrt(b.var), 0.01 * mean)
        high = max(mean + self.k * sd, self.ratio * mean)
        raised = max(mean + self.k * sd / 2, (1.0 + self.ratio) / 2 * mean)
        if x > raised and len(b.held) < 4 * self.consecutive:  # maybe a shift: held out of the baseline
            b.held.append(x)
            b.highs += x > high
            if b.highs < self.consecutive:
                return None
        else:
            for h in (*b.held, x):  # spikes, not a shift: they join the baseline, winsorized
                b.update(min(h, high), self.alpha)
            b.held.clear()
            b.highs = 0
            return None
        level = sum(b.held) / len(b.held)  # the new level: the baseline moves there, so this shift is reported once
        b.var = max(b.var * (level / mean) ** 2 if mean > 0.0 else 0.0,
                    sum((h - level) ** 2 for h in b.held) / len(b.held))
        b.mean = level
        b.held.clear()
        b.highs = 0
        critical = level >= self.critical_ratio * mean
        return Anomaly(key, "latency", mean, level, "critical" if critical else "warning",
                       "switch_route" if critical else "lower_concurrency")
