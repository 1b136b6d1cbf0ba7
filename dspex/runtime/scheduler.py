"""The adaptive scheduler: learns, per step, which route (engine, lm) runs it cheapest, and keeps learning.

A fixed route choice (``engine = "auto"`` meaning native, one lm per step) is right until a provider slows
down or starts answering badly mid-run; then every remaining row pays for it. The scheduler treats the
routes that can run a step as arms of a bandit and minimises the expected cost of a *good* row::

    cost = latency(input_size) * (1 + failure_penalty * p / (1 - p)) + token_weight * tokens

where ``p`` is the rate of errors and validation failures (``1 / (1 - p)`` is the expected number of
attempts per good row; ``failure_penalty`` > 1 also charges for rows lost after the retries) and
``latency(x) = a + b * x`` is a weighted least-squares fit on the input size. The policy is Thompson
sampling: each ``choose`` samples a mean latency from its posterior (Normal, with the fit's residual variance
shrunk towards a 50% coefficient of variation) and a failure rate from a Beta(0.1, 1.9) posterior (by its
Normal approximation: ``random.betavariate`` alone would cost more than the whole choice), and takes the
route whose sampled cost is lowest. Thompson sampling explores in proportion to the chance that a route is
the best, so it wastes little on routes that are clearly worse, without a tuning constant per workload.

Every statistic is discounted by ``0.5 ** (1 / half_life)`` on each observation of the step, whichever route
it was for: recent calls outweigh old ones, so a route that degrades is abandoned within a few half-lives'
worth of calls, and a route nobody picks slowly loses its evidence, its posterior widens and Thompson
sampling tries it again, which is how a recovered route is found. A floor (``explore``, a uniform pick)
guarantees that no route is starved forever; each route is tried ``warmup`` times before any is judged.

Pins (``pins`` or ``pin``) make a step's route fixed, for reproducible runs; otherwise ``choose`` is
deterministic for a given ``seed`` and sequence of calls. The learned state is saved as versioned msgpack
(never pickle) at ``$DSPEX_HOME/scheduler.msgpack`` so the next run starts informed.
"""
from __future__ import annotations

import logging
import math
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgpack

from dspex.errors import DSPexError
from dspex.runtime.config import Config, ensure_home

__all__ = ["AdaptiveScheduler", "Route", "SchedulerStateError", "SCHEDULER_FILE", "STATE_VERSION", "learned_routes"]

log = logging.getLogger("dspex.scheduler")

Route = tuple[str, str]
"""``(engine, lm)`` names, e.g. ``("native", "default")``."""

SCHEDULER_FILE = "scheduler.msgpack"
STATE_VERSION = 1
_FORMAT = "dspex.scheduler"
_FAIL_PRIOR = (0.1, 1.9)  # Beta prior of the failure rate: 5% on the weight of two calls
_PRIOR_CV = 0.5  # latency noise assumed (as a fraction of the mean) before the data says otherwise
_PRIOR_WEIGHT = 1.0  # ... on the weight of one call
_MAX_FAILURE = 0.95
_FORGOTTEN = 1e-6  # a route's evidence below this weight is dropped
_ARM_FIELDS = 13  # engine, lm, tries, n, w, fails, tokens, lw, sx, sy, sxx, sxy, syy


class SchedulerStateError(DSPexError):
    """A scheduler state file cannot be read: damaged, not a scheduler file, or from a newer DSPex."""

    code = "SCHEDULER"


class _Arm:
    """What one route has shown on one step: discounted sums, and what ``choose`` needs from them, ready."""

    __slots__ = ("tries", "n", "w", "fails", "tokens", "lw", "sx", "sy", "sxx", "sxy", "syy",
                 "a", "b", "s2", "xbar", "inv_lw", "inv_sxx", "p", "p_sd", "tok")

    def __init__(self) -> None:
        self.tries = self.n = 0  # raw counts: times chosen, times observed
        self.w = self.fails = self.tokens = 0.0  # every observation
        self.lw = self.sx = self.sy = self.sxx = self.sxy = self.syy = 0.0  # calls that returned: (size, latency)
        self.a = self.b = self.s2 = self.xbar = self.inv_lw = self.inv_sxx = 0.0  # latency ~ a + b * size
        self.p = self.p_sd = self.tok = 0.0  # failure rate (posterior mean, sd), tokens per call
        self.refresh()

    def decay(self, g: float) -> None:
        if self.w == 0.0:
            return
        if self.w * g < _FORGOTTEN:  # nothing left worth the name: forget it all, so no sum underflows
            self.w = self.fails = self.tokens = self.lw = self.sx = self.sy = self.sxx = self.sxy = self.syy = 0.0
            self.refresh()
            return
        self.w *= g
        self.fails *= g
        self.tokens *= g
        if self.lw * g < _FORGOTTEN:  # only failures of late: the latency fit is forgotten
            self.lw = self.sx = self.sy = self.sxx = self.sxy = self.syy = self.inv_lw = 0.0
        else:
            self.lw *= g
            self.sx *= g
            self.sy *= g
            self.sxx *= g
            self.sxy *= g
            self.syy *= g
            self.inv_lw /= g  # the fit itself does not change when every weight is scaled alike
            self.inv_sxx /= g
        self._failure()

    def refresh(self) -> None:
        """Everything derived from the sums: the weighted least-squares latency fit and the failure posterior."""
        self._failure()
        self.tok = self.tokens / self.w if self.w > 0.0 else 0.0
        lw = self.lw
        if lw < _FORGOTTEN:
            self.inv_lw = 0.0  # no latency data: ``latency`` falls back on the step's pooled mean
            return
        self.xbar = xbar = self.sx / lw
        ybar = self.sy / lw
        sxx_c = self.sxx - self.sx * xbar
        slope = sxx_c > 1e-9 * self.sxx  # else every size seen is (nearly) the same: a flat fit
        self.b = b = (self.sxy - self.sx * ybar) / sxx_c if slope else 0.0
        self.a = a = ybar - b * xbar
        rss = max(self.syy - a * self.sy - b * self.sxy, 0.0)
        self.s2 = (rss + _PRIOR_WEIGHT * (_PRIOR_CV * ybar) ** 2) / (lw + _PRIOR_WEIGHT)
        self.inv_lw = 1.0 / lw
        self.inv_sxx = 1.0 / sxx_c if slope else 0.0

    def _failure(self) -> None:
        total = self.w + _FAIL_PRIOR[0] + _FAIL_PRIOR[1]
        self.p = p = (self.fails + _FAIL_PRIOR[0]) / total
        self.p_sd = math.sqrt(p * (1.0 - p) / (total + 1.0))

    def latency(self, x: float, pooled: float) -> float:
        """Predicted mean latency at size ``x``; ``pooled`` (the step's mean) if there is no data."""
        return self.a + self.b * x if self.inv_lw != 0.0 else pooled

    def pack(self, route: Route) -> list[Any]:
        return [route[0], route[1], self.tries, self.n, self.w, self.fails, self.tokens,
                self.lw, self.sx, self.sy, self.sxx, self.sxy, self.syy]

    @classmethod
    def unpack(cls, row: list[Any]) -> tuple[Route, _Arm]:
        if len(row) != _ARM_FIELDS or not all(isinstance(v, str) for v in row[:2]) \
                or not all(isinstance(v, int) and v >= 0 for v in row[2:4]) \
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in row[4:]):
            raise ValueError(f"bad route record {row!r}")
        arm = cls()
        arm.tries, arm.n = row[2], row[3]
        (arm.w, arm.fails, arm.tokens, arm.lw, arm.sx, arm.sy, arm.sxx, arm.sxy, arm.syy) = map(float, row[4:])
        arm.refresh()
        return (row[0], row[1]), arm


class _Node:
    """One step's routes, its discounted input sizes, and the route currently judged best. ``choose`` keeps the
    arms of the routes it was last asked about (and whether they are all warmed up) to skip the lookups."""

    __slots__ = ("arms", "xw", "xs", "preferred", "asked", "asked_arms", "warm")

    def __init__(self) -> None:
        self.arms: dict[Route, _Arm] = {}
        self.xw = self.xs = 0.0
        self.preferred: Route | None = None
        self.asked: tuple[Route, ...] = ()
        self.asked_arms: list[_Arm] = []
        self.warm = False

    def arm(self, route: Route) -> _Arm:
        arm = self.arms.get(route)
        if arm is None:
            arm = self.arms[route] = _Arm()
        return arm

    def pooled(self) -> float:
        """Mean latency over every route with data: the guess for a route that has none (1s if none has)."""
        lw = sum(a.lw for a in self.arms.values())
        return sum(a.sy for a in self.arms.values()) / lw if lw > 1e-9 else 1.0

    def size(self) -> float:
        return self.xs / self.xw if self.xw > 0.0 else 0.0


class AdaptiveScheduler:
    """Chooses a route per step (``choose``) and learns from each call's outcome (``observe``). Thread-safe.

    ``half_life``: observations of a step after which old evidence counts half. ``explore``: the probability of
    a uniform pick (the floor). ``warmup``: tries of each route before any is judged. ``failure_penalty`` and
    ``token_weight`` (seconds per token) shape the cost above. ``on_adapt({node, from, to, reason})`` is called,
    outside the lock, when a step's preferred route changes (not when it is first set); ``switch_margin`` is the
    cost advantage a new route needs to become preferred, so near-ties do not flap. ``default_bias``: how much
    cheaper (as a share) a route must look than the caller's first route to be drawn instead of it; latency
    is all the scheduler sees, so an alternative that merely ties (a dspy module answering as fast as the native
    engine, while using more of this machine's CPU) should not take traffic."""

    def __init__(self, *, seed: int | None = None, pins: Mapping[str, Route] | None = None,
                 half_life: float = 25.0, explore: float = 0.02, warmup: int = 2, failure_penalty: float = 2.0,
                 token_weight: float = 1e-5, switch_margin: float = 0.05, default_bias: float = 0.0,
                 on_adapt: Callable[[dict[str, Any]], None] | None = None):
        if half_life <= 0 or not 0.0 <= explore <= 1.0 or warmup < 0:
            raise ValueError("need half_life > 0, 0 <= explore <= 1 and warmup >= 0")
        self.half_life = half_life
        self.gamma = 0.5 ** (1.0 / half_life)
        self.explore = explore
        self.warmup = warmup
        self.failure_penalty = failure_penalty
        self.token_weight = token_weight
        self.switch_margin = switch_margin
        self.default_bias = default_bias
        self.on_adapt = on_adapt
        self.path: Path | None = None  # where ``save()`` writes by default (``from_config`` sets it)
        self._pins: dict[str, Route] = {k: (v[0], v[1]) for k, v in (pins or {}).items()}
        self._nodes: dict[str, _Node] = {}
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Config, **kwargs: Any) -> AdaptiveScheduler:
        """A scheduler that starts from ``$DSPEX_HOME/scheduler.msgpack`` and saves there. A damaged or foreign
        file never fails a run: it is moved aside to ``scheduler.msgpack.corrupt-<time>`` with a warning on the
        ``dspex.scheduler`` logger, and learning starts afresh."""
        scheduler = cls(**kwargs)
        path = scheduler.path = ensure_home(config) / SCHEDULER_FILE
        try:
            scheduler.load(path)
        except SchedulerStateError as exc:
            aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            os.replace(path, aside)
            log.warning("scheduler: %s; moved it to %s and started afresh", exc, aside)
        return scheduler

    # -- choosing ---------------------------------------------------------------------------------------------

    def pin(self, node_key: str, route: Route) -> None:
        """Always run ``node_key`` (``"*"``: every step) on ``route``; a step's own pin beats ``"*"``."""
        with self._lock:
            self._pins[node_key] = (route[0], route[1])

    def unpin(self, node_key: str) -> None:
        with self._lock:
            self._pins.pop(node_key, None)

    def pinned(self, node_key: str) -> Route | None:
        """The route ``node_key`` is pinned to (its own pin, else ``"*"``'s), or None."""
        with self._lock:
            return self._pins.get(node_key) or self._pins.get("*")

    def choose(self, node_key: str, routes: Sequence[Route], input_size: float = 0.0) -> Route:
        """The route to run ``node_key`` on now, one of ``routes`` (in the caller's order of preference: ties and
        warm-up go to the earlier one). A step's pin that is not among ``routes`` is a ``ValueError``; where a
        ``"*"`` pin is not among them, the first route is taken, so pinned runs never explore."""
        if not routes:
            raise ValueError(f"no route can run {node_key!r}")
        with self._lock:
            pinned = self._pins.get(node_key)
            if pinned is not None:
                if pinned not in routes:
                    raise ValueError(f"{node_key!r} is pinned to {pinned!r}, which is not among {list(routes)!r}")
                return pinned
            if "*" in self._pins:
                pinned = self._pins["*"]
                return pinned if pinned in routes else routes[0]
            if len(routes) == 1:
                return routes[0]
            node = self._nodes.get(node_key)
            if node is None:
                node = self._nodes[node_key] = _Node()
            asked = tuple(routes)
            if asked != node.asked:
                node.asked, node.asked_arms, node.warm = asked, [node.arm(r) for r in asked], False
            arms = node.asked_arms
            rng = self._rng
            if not node.warm:  # each route is tried ``warmup`` times first, the least tried (then earliest) next
                fewest = min(range(len(arms)), key=lambda i: arms[i].tries)
                node.warm = arms[fewest].tries >= self.warmup
            if not node.warm:
                best = fewest
            elif rng.random() < self.explore:
                best = rng.randrange(len(routes))
            else:  # Thompson sampling: the lowest cost under one draw from each route's posterior (``_cost``, inlined)
                gauss, penalty, token_weight = rng.gauss, self.failure_penalty, self.token_weight
                pooled = -1.0
                best, best_cost = 0, math.inf
                for i, arm in enumerate(arms):
                    if arm.inv_lw == 0.0:  # no call returned yet: the step's mean, at the prior's spread (a
                        # wider one would often draw a latency <= 0, a free route whatever its failure rate)
                        pooled = node.pooled() if pooled < 0.0 else pooled
                        lat, lat_sd = pooled, _PRIOR_CV * pooled
                    else:
                        d = input_size - arm.xbar
                        lat, lat_sd = arm.a + arm.b * input_size, math.sqrt(arm.s2 * (arm.inv_lw + d * d * arm.inv_sxx))
                    lat += lat_sd * gauss(0.0, 1.0)
                    p = arm.p + arm.p_sd * gauss(0.0, 1.0)
                    p = 0.0 if p < 0.0 else _MAX_FAILURE if p > _MAX_FAILURE else p
                    cost = (lat if lat > 0.0 else 0.0) * (1.0 + penalty * p / (1.0 - p)) + token_weight * arm.tok
                    if i:
                        cost *= 1.0 + self.default_bias
                    if cost < best_cost:
                        best, best_cost = i, cost
            arms[best].tries += 1
            return routes[best]

    def _cost(self, latency: float, p: float, tokens: float) -> float:
        p = min(max(p, 0.0), _MAX_FAILURE)
        return latency * (1.0 + self.failure_penalty * p / (1.0 - p)) + self.token_weight * tokens

    # -- learning ---------------------------------------------------------------------------------------------

    def observe(self, node_key: str, route: Route, latency_s: float, ok: bool = True,
                validation_failed: bool = False, tokens: int = 0, input_size: float = 0.0) -> None:
        """What a call of ``node_key`` on ``route`` did. ``ok`` False: it raised (its latency is not learnt: the
        failure penalty charges for it); ``validation_failed``: it returned an answer that failed validation."""
        with self._lock:
            node = self._nodes.get(node_key)
            if node is None:
                node = self._nodes[node_key] = _Node()
            arm = node.arm((route[0], route[1]))
            g = self.gamma
            for other in node.arms.values():
                other.decay(g)
            node.xw = node.xw * g + 1.0
            node.xs = node.xs * g + input_size
            arm.n += 1
            arm.w += 1.0
            arm.fails += 1.0 if validation_failed or not ok else 0.0
            arm.tokens += tokens
            if ok:
                x, y = float(input_size), float(latency_s)
                arm.lw += 1.0
                arm.sx += x
                arm.sy += y
                arm.sxx += x * x
                arm.sxy += x * y
                arm.syy += y * y
            arm.refresh()
            event = self._track(node_key, node)
        if event is not None and self.on_adapt is not None:
            self.on_adapt(event)

    def _expected(self, node: _Node, x: float) -> dict[Route, tuple[float, float, float]]:
        """Each route's expected (cost, latency, failure rate) at size ``x``."""
        pooled = node.pooled()
        out = {}
        for route, arm in node.arms.items():
            lat = arm.latency(x, pooled)
            out[route] = (self._cost(lat, arm.p, arm.tok), lat, arm.p)
        return out

    def _track(self, node_key: str, node: _Node) -> dict[str, Any] | None:
        """Update the step's preferred route, once every route is warmed up and the step has been seen for a
        half-life (so early noise is not reported as an adaptation); the change event, if it changed."""
        arms = node.arms.values()
        if sum(a.n for a in arms) < self.half_life or any(a.n < max(self.warmup, 1) for a in arms):
            return None
        expected = self._expected(node, node.size())
        best = min(expected, key=lambda r: expected[r][0])
        old = node.preferred
        if old is None or old not in expected:
            node.preferred = best
            return None
        if best == old or expected[best][0] >= expected[old][0] * (1.0 - self.switch_margin):
            return None
        node.preferred = best
        (c0, l0, p0), (c1, l1, p1) = expected[old], expected[best]
        return {"node": node_key, "from": old, "to": best,
                "reason": f"expected {c1:.3g}s per row vs {c0:.3g}s (latency {l0:.3g}s -> {l1:.3g}s, "
                          f"failures {p0:.0%} -> {p1:.0%})"}

    def predict_latency(self, node_key: str, route: Route, input_size: float) -> float:
        """The mean latency ``route`` is expected to take on ``node_key`` for an input of ``input_size``."""
        with self._lock:
            node = self._nodes.get(node_key)
            if node is None:
                return 1.0
            arm = node.arms.get((route[0], route[1]))
            return arm.latency(input_size, node.pooled()) if arm is not None else node.pooled()

    def describe(self) -> list[dict[str, Any]]:
        """One row per step for ``dspexc stats``: the route it runs on, why, and what that route has shown."""
        with self._lock:
            rows = []
            for key, node in self._nodes.items():
                samples = sum(a.n for a in node.arms.values())
                expected = self._expected(node, node.size())
                pinned = self._pins.get(key) or self._pins.get("*")
                if pinned is not None:
                    route, reason = pinned, "pinned"
                elif node.preferred is None:
                    route, reason = max(node.arms, key=lambda r: node.arms[r].tries), "warming up"
                else:
                    route = node.preferred
                    others = sorted((c, r) for r, (c, _, _) in expected.items() if r != route)
                    reason = f"lowest expected cost ({expected[route][0]:.3g}s per row" + (
                        f"; next {others[0][1][0]}/{others[0][1][1]} {others[0][0]:.3g}s)" if others else ")")
                _, lat, p = expected.get(route, (0.0, node.pooled(), 0.0))
                rows.append({"node": key, "route": route, "reason": reason, "samples": samples,
                             "latency_s": lat, "failure_rate": p})
            return rows

    # -- persistence ------------------------------------------------------------------------------------------

    def save(self, path: str | Path | None = None) -> Path:
        """Write the learned state (not the pins: they are configuration) atomically, mode 0600."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("no path to save the scheduler state to")
        with self._lock:
            nodes = [[key, list(node.preferred) if node.preferred else None, node.xw, node.xs,
                      [arm.pack(route) for route, arm in node.arms.items()]] for key, node in self._nodes.items()]
        data = msgpack.packb({"format": _FORMAT, "version": STATE_VERSION, "nodes": nodes}, use_bin_type=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def load(self, path: str | Path) -> bool:
        """Replace the learned state with the one saved at ``path``; False if there is no file. Raises
        ``SchedulerStateError`` (leaving the state as it was) for a damaged, foreign or newer file."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return False
        try:
            data = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        except Exception as exc:  # noqa: BLE001 - msgpack raises several unrelated types for bad bytes
            raise SchedulerStateError(f"{path}: not a scheduler state file ({type(exc).__name__})") from None
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise SchedulerStateError(f"{path}: not a scheduler state file")
        if data.get("version") != STATE_VERSION:
            raise SchedulerStateError(f"{path}: scheduler state version {data.get('version')!r}, "
                                      f"this DSPex reads version {STATE_VERSION}")
        nodes: dict[str, _Node] = {}
        try:
            for key, preferred, xw, xs, arms in data["nodes"]:
                node = _Node()
                node.xw, node.xs = float(xw), float(xs)
                node.arms = dict(_Arm.unpack(row) for row in arms)
                node.preferred = (preferred[0], preferred[1]) if preferred else None
                if not isinstance(key, str) or (node.preferred is not None and node.preferred not in node.arms):
                    raise ValueError(f"bad step record {key!r}")
                nodes[key] = node
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise SchedulerStateError(f"{path}: damaged scheduler state ({exc})") from None
        with self._lock:
            self._nodes = nodes
        return True


def learned_routes(config: Config) -> list[dict[str, Any]]:
    """What the scheduler has learnt under ``config.home``, for ``dspexc stats`` (read-only: a damaged state file
    is reported as one row, not moved)."""
    path = config.home / SCHEDULER_FILE
    if not path.is_file():
        return []
    scheduler = AdaptiveScheduler()
    try:
        scheduler.load(path)
    except SchedulerStateError as exc:
        return [{"node": "*", "route": "-", "reason": f"unreadable state: {exc}", "samples": 0}]
    return [{**row, "route": "/".join(row["route"])} for row in scheduler.describe()]
