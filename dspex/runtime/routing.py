"""Where each step runs, and what the runtime does when that goes wrong: the executor's link to the adaptive
scheduler, the anomaly detector and telemetry.

A step's **routes** are the (engine, lm) pairs that can run it: its ``engine`` option or, for ``auto``, the
native engine (where it runs the module) then dspy; its ``lm`` option, else the runtime's default, with a
``round_robin`` lm split into its members so that measured routing replaces blind rotation (a ``fallback``
stays one route: its order is an availability contract). The first route is the one a run without
adaptation takes, so turning the scheduler off changes nothing else.

After each computed call the router feeds the scheduler (latency, validation failures, errors, tokens, input
size) and the anomaly detector (per node and per lm), and carries out what an anomaly suggests: open the lm's
circuit breaker, lower the runtime's concurrency, or (for a route switch) let the scheduler's own evidence
move traffic. Every adaptation, anomaly and validation failure becomes a telemetry event.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from dspex.engines.base import Engine
from dspex.ir.graph import Node
from dspex.ir.program import Pipeline
from dspex.runtime.anomaly import Anomaly, AnomalyDetector
from dspex.runtime.scheduler import AdaptiveScheduler, Route
from dspex.runtime.telemetry import RUN_CONTEXT, Telemetry, TelemetryEvent

__all__ = ["Router", "DEFAULT_LM", "node_key", "input_size"]

DEFAULT_LM = "@default"  # a route's lm when the step names none: the runtime's lm, else the program's default


def node_key(pipeline: Pipeline, node: Node) -> str:
    """What the scheduler learns under, and what ``[scheduler] pins`` name: ``pipeline.node``."""
    return f"{pipeline.name}.{node.id}"


def input_size(args: Mapping[str, Any]) -> float:
    """A cheap size of a step's inputs: characters of text, counting list items."""
    size = 0
    for value in args.values():
        if isinstance(value, str):
            size += len(value)
        elif isinstance(value, (list, tuple)):
            size += sum(len(v) if isinstance(v, str) else 1 for v in value)
    return float(size)


class Router:
    """One runtime's routing: ``routes`` and ``choose`` before a step, ``observe`` after it."""

    def __init__(self, scheduler: AdaptiveScheduler | None, detector: AnomalyDetector | None, telemetry: Telemetry,
                 breaker_for: Callable[[str], Any], slow_down: Callable[[str], None]):
        self.scheduler, self.detector, self.telemetry = scheduler, detector, telemetry
        self.breaker_for, self.slow_down = breaker_for, slow_down
        self._current: tuple[str, str] = ("", "")  # (pipeline, node) of the observe in progress, for the hooks
        if scheduler is not None:
            scheduler.on_adapt = self._adapted
        if detector is not None:
            detector.on_anomaly = self._anomaly

    @staticmethod
    def routes(pipeline: Pipeline, module: str, engine: str, lm: str | None,
               engines: Mapping[str, Engine]) -> list[Route]:
        if engine != "auto":
            names = [engine]
        else:
            native = engines.get("native")
            names = ["native", "dspy"] if native is not None and native.supports(module) else ["dspy"]
        lms = [lm] if lm is not None else [DEFAULT_LM]
        decl = pipeline.lms.get(lm if lm is not None else "default")
        if decl is not None and decl.provider == "round_robin":
            lms = list(decl.members)
        return [(e, m) for e in names for m in lms]

    def choose(self, key: str, routes: list[Route], size: float) -> Route:
        if self.scheduler is None or len(routes) == 1:
            return routes[0]
        return self.scheduler.choose(key, routes, size)

    def explored(self, key: str, route: Route, routes: list[Route]) -> bool:
        """Was ``route`` an exploration (neither the default route nor a pinned one)? A failed exploration is
        re-run on the default route; a pinned route's failure is the row's, as it would be without adaptation."""
        return route != routes[0] and (self.scheduler is None or self.scheduler.pinned(key) != route)

    def observe(self, key: str, pipeline: str, node: str, route: Route, lm: str, latency_s: float, ok: bool,
                validation_failed: bool, tokens: int, size: float) -> None:
        self._current = (pipeline, node)
        if validation_failed:
            self.telemetry.emit(TelemetryEvent("validation_failure", _run_id(), pipeline, node, route[0], lm,
                                               attrs=_call({"final": not ok})))
        if self.scheduler is not None:
            self.scheduler.observe(key, route, latency_s, ok, validation_failed, tokens, size)
        if self.detector is not None:
            if ok or not validation_failed:  # an answer that failed validation says nothing of the lm's health
                self.detector.observe(f"lm:{lm}", latency_s, ok)
            self.detector.observe(f"node:{key}", latency_s, ok)

    def _adapted(self, change: dict[str, Any]) -> None:
        pipeline, node = self._current  # the step's id, as on its other events (``change["node"]`` is its key)
        self.telemetry.emit(TelemetryEvent(
            "adaptation", _run_id(), pipeline, node,
            attrs={"action": "switch_route", "from": _route(change.get("from")), "route": _route(change.get("to")),
                   "reason": str(change.get("reason", ""))}))

    def _anomaly(self, anomaly: Anomaly) -> None:
        pipeline, node = self._current
        facts = {k: v for k, v in anomaly.as_dict().items() if isinstance(v, (str, int, float, bool))}
        subject = anomaly.key.partition(":")[2]
        lm = subject if anomaly.key.startswith("lm:") else ""  # the key says what was anomalous: an lm or the step
        self.telemetry.emit(TelemetryEvent("anomaly", _run_id(), pipeline, node, lm=lm, attrs=_call(facts)))
        if anomaly.action == "open_breaker" and anomaly.key.startswith("lm:"):
            breaker = self.breaker_for(subject)
            if breaker is None:
                return
            breaker.trip()
        elif anomaly.action == "lower_concurrency":
            self.slow_down(subject)
        else:
            return  # switch_route: the scheduler sees the same evidence and moves traffic itself
        self.telemetry.emit(TelemetryEvent("adaptation", _run_id(), pipeline, node, lm=lm,
                                           attrs=_call({"action": anomaly.action, "reason": anomaly.metric})))


def _run_id() -> str:
    return RUN_CONTEXT.get()[0]


def _call(attrs: dict[str, Any]) -> dict[str, Any]:
    """``attrs`` with the current step's call number, so OpenTelemetry puts the event on that call's span."""
    call = RUN_CONTEXT.get()[3]
    return {**attrs, "call": call} if call else attrs


def _route(route: Any) -> str:
    return "/".join(route) if isinstance(route, (tuple, list)) else str(route or "")
