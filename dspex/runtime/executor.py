"""The dataflow executor: runs a pipeline's graph on asyncio, every node as soon as its inputs are ready.

Each node becomes a task that awaits the tasks it reads, so independent steps run concurrently with
no scheduler of our own. ``map`` fans out under a concurrency bound and keeps order; a node guarded by
an ``if`` runs only on the taken side (``SKIPPED`` otherwise) and a ``merge`` takes the side that ran.
A failing step raises ``StepError`` naming the node, its source line, its inputs and the cause, unless
its ``on_error`` says to drop the element (``skip``) or to use ``none``.
"""
from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

from dspex.engines.base import Engine, StepCall, StepResult, ValidationError
from dspex.errors import DSPexError, StepError
from dspex.ir.graph import Node
from dspex.ir.program import Field, Pipeline, ToolDecl
from dspex.lm.base import LM
from dspex.lang.diagnostics import did_you_mean
from dspex.native import compile_validator
from dspex.runtime.cache import MISSING, cache_key
from dspex.runtime.evaluate import evaluate, project
from dspex.runtime.routing import DEFAULT_LM, Router, input_size, node_key
from dspex.runtime.scheduler import Route
from dspex.runtime.telemetry import RUN_CONTEXT, error_text
from dspex.runtime.tools import load_tool

__all__ = ["Executor", "SKIPPED", "NodeEvent", "InputError", "choose_engine", "run_tool_here", "ToolRunner"]

SKIPPED: Any = type("Skipped", (), {"__repr__": lambda self: "SKIPPED"})()
_DROP: Any = object()  # a map element whose step failed with on_error = "skip"


class InputError(DSPexError):
    """The pipeline was called with a missing or unknown input."""

    code = "INPUT"


@dataclass
class NodeEvent:
    """What happened at one node: ``kind`` is start, end, error, cache_hit or skip. ``call`` numbers the
    node's calls within one executor, so a start and its end pair up when ``map`` runs a node many times.
    ``error`` is ``telemetry.error_text`` of the failure: scrubbed, and without the step's inputs or answer."""

    kind: str
    pipeline: str
    node: str
    engine: str = ""
    lm: str = ""
    duration_s: float = 0.0
    lm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str = ""
    at: float = field(default_factory=time.time)
    call: int = 0


LMResolver = Callable[[Pipeline, str | None], LM]
ToolRunner = Callable[[ToolDecl, dict[str, Any], "str | None"], Awaitable[Any]]


async def run_tool_here(tool: ToolDecl, args: dict[str, Any], session: str | None = None) -> Any:
    """A ``python(...)`` tool in this process, on a thread (tools are plain, possibly blocking, functions)."""
    return await asyncio.to_thread(load_tool(tool), **args)


class Executor:
    """Runs pipelines. ``resolve_lm(pipeline, name)`` gives the LM for a step (``name`` None: the default);
    ``run_tool`` runs ``python(...)`` tools (here, or in a worker pool); ``session`` names the session whose
    steps these are, if any."""

    def __init__(self, resolve_lm: LMResolver, engines: Mapping[str, Engine], cache: Any = None,
                 on_event: Callable[[NodeEvent], None] | None = None, map_concurrency: int = 16,
                 run_tool: ToolRunner = run_tool_here, session: str | None = None, router: Router | None = None):
        self.resolve_lm = resolve_lm
        self.engines = engines
        self.cache = cache
        self.on_event = on_event
        self.map_concurrency = map_concurrency
        self.run_tool = run_tool
        self.session = session
        self.router = router
        self._calls = itertools.count(1)

    async def run(self, pipeline: Pipeline, inputs: Mapping[str, Any],
                  var_values: Mapping[str, Any] | None = None) -> dict[str, Any]:
        values = bind_inputs(pipeline, inputs)
        variables = {name: v.default for name, v in pipeline.vars.items()}
        variables.update(var_values or {})
        waiting = {n.id: {d for d in n.deps if d not in values} for n in pipeline.graph if n.kind != "input"}
        readers: dict[str, list[str]] = {}
        for node_id, deps in waiting.items():
            for dep in deps:
                readers.setdefault(dep, []).append(node_id)
        ready = [node_id for node_id, deps in waiting.items() if not deps]
        running: dict[asyncio.Future[Any], str] = {}

        def finished(node_id: str) -> None:
            for reader in readers.get(node_id, ()):
                deps = waiting[reader]
                deps.discard(node_id)
                if not deps:
                    ready.append(reader)

        try:
            while True:
                steps: list[Node] = []
                while ready:  # cheap nodes at once, in this task; steps are collected to run
                    node = pipeline.graph.node(ready.pop())
                    if node.kind in ("step", "map") and not _skipped(node, values):
                        steps.append(node)
                    else:
                        self._evaluate(node, values, variables)
                        finished(node.id)
                if len(steps) == 1 and not running:  # a lone step: no task needed
                    await self._run_step(pipeline, steps[0], values, variables)
                    finished(steps[0].id)
                    continue
                for node in steps:
                    running[asyncio.ensure_future(self._run_step(pipeline, node, values, variables))] = node.id
                if not running:
                    break
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    future.result()
                    finished(running.pop(future))
        except BaseException:
            for future in running:
                future.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            raise
        return {n.id.removeprefix("out:"): values[n.id] for n in pipeline.graph.outputs}

    @staticmethod
    def _evaluate(node: Node, values: dict[str, Any], variables: Mapping[str, Any]) -> None:
        """A node that computes no step: an expression, projection, output, branch or merge (or a skipped step)."""
        if _skipped(node, values):
            values[node.id] = SKIPPED
        elif node.kind == "branch":
            values[node.id] = bool(evaluate(node.args[0][1], values, variables))
        elif node.kind == "merge":
            side = "then" if values[node.branch or ""] else "else"
            values[node.id] = evaluate(dict(node.args)[side], values, variables)
        else:
            values[node.id] = evaluate(node.args[0][1], values, variables)

    async def _run_step(self, pipeline: Pipeline, node: Node, values: dict[str, Any],
                        variables: Mapping[str, Any]) -> None:
        if node.kind == "step":
            values[node.id] = await self._step(pipeline, node, values, variables, None)
        else:
            values[node.id] = await self._map(pipeline, node, values, variables)

    async def _map(self, pipeline: Pipeline, node: Node, values: dict[str, Any],
                   variables: Mapping[str, Any]) -> list[Any]:
        assert node.over is not None
        items = evaluate(node.over, values, variables)
        limit = asyncio.Semaphore(self.map_concurrency)

        async def one(item: Any) -> Any:
            async with limit:
                return await self._step(pipeline, node, values, variables, (item,))

        results = await asyncio.gather(*(one(i) for i in items))
        return [r for r in results if r is not _DROP]

    async def _step(self, pipeline: Pipeline, node: Node, values: Mapping[str, Any], variables: Mapping[str, Any],
                    item: tuple[Any] | None) -> Any:
        current = item[0] if item else None
        args = {name: evaluate(e, values, variables, current) for name, e in node.args}
        options = {name: evaluate(e, values, variables, current) for name, e in node.options}
        on_error = options.pop("on_error", "fail")
        started = time.perf_counter()
        call = next(self._calls)
        self._emit(NodeEvent("start", pipeline.name, node.id, call=call))
        context = RUN_CONTEXT.set((RUN_CONTEXT.get()[0], pipeline.name, node.id, call))  # for events from inside
        try:
            result = await self._dispatch(pipeline, node, args, options, variables, call)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a StepError or an on_error value
            self._emit(NodeEvent("error", pipeline.name, node.id, duration_s=time.perf_counter() - started,
                                 error=error_text(exc), call=call))
            if on_error == "skip" and item is not None:
                return _DROP
            if on_error in ("none", "skip"):
                return None
            if isinstance(exc, StepError):
                raise
            raise StepError(node.id, node.line, args, exc, node.file) from exc
        finally:
            RUN_CONTEXT.reset(context)
        return project(result, (node.select,)) if node.select else result

    async def _dispatch(self, pipeline: Pipeline, node: Node, args: dict[str, Any], options: dict[str, Any],
                        variables: Mapping[str, Any], call_id: int) -> Any:
        if node.module == "call":
            return await self._call(pipeline, node, args, variables)
        signature = pipeline.signatures[node.target or ""]
        lm_name, asked = options.pop("lm", None), str(options.pop("engine", "auto"))
        use_cache = bool(options.pop("cache", True)) and self.cache is not None
        options.pop("stream", None)
        tool_decls = {name: pipeline.tools[name] for name in options.pop("tools", None) or pipeline.tools}
        tools = {name: load_tool(decl) for name, decl in tool_decls.items()}
        step_vars = {name: variables[name] for name in node.vars if name in variables}
        call = StepCall(signature, node.module or "predict", args, options, step_vars, tools, tool_decls,
                        self.session)
        started = time.perf_counter()
        router = self.router
        if router is None:
            routes: list[Route] = [(choose_engine(self.engines, node.module or "", asked).name, lm_name or DEFAULT_LM)]
        else:
            routes = router.routes(pipeline, node.module or "", asked, lm_name, self.engines)
        keys: dict[Route, bytes] = {}  # each route's cache key, made once: the computing call reuses it
        if use_cache:  # an answer cached under any route beats running (or exploring) one
            for route in routes:
                engine, lm = self._route(pipeline, route)
                keys[route] = self._cache_key(node, args, options, step_vars, engine, lm)
                cached = self.cache.get(keys[route], count_miss=False)
                if cached is not MISSING:
                    self._emit(NodeEvent("cache_hit", pipeline.name, node.id, engine.name, lm.identity,
                                         time.perf_counter() - started, call=call_id))
                    return cached
        route_key, size = (node_key(pipeline, node), input_size(args)) if router is not None else ("", 0.0)
        route = routes[0] if router is None else router.choose(route_key, routes, size)
        try:
            result, hit, engine, lm = await self._compute(pipeline, node, call, route, route_key, size, keys.get(route))
        except Exception:
            if router is None or not router.explored(route_key, route, routes):
                raise
            # an exploratory route failed: the row is run on the default route rather than lost
            result, hit, engine, lm = await self._compute(pipeline, node, call, routes[0], route_key, size,
                                                          keys.get(routes[0]))
        self._emit(NodeEvent("cache_hit" if hit else "end", pipeline.name, node.id, engine.name, lm.identity,
                             time.perf_counter() - started, result.lm_calls, result.prompt_tokens,
                             result.completion_tokens, call=call_id))
        return result.outputs

    def _route(self, pipeline: Pipeline, route: Route) -> tuple[Engine, LM]:
        return self.engines[route[0]], self.resolve_lm(pipeline, None if route[1] == DEFAULT_LM else route[1])

    @staticmethod
    def _cache_key(node: Node, args: Mapping[str, Any], options: Mapping[str, Any], step_vars: Mapping[str, Any],
                   engine: Engine, lm: LM) -> bytes:
        return cache_key(node.fingerprint, args, lm.identity, {**options, "engine": engine.name}, step_vars)

    async def _compute(self, pipeline: Pipeline, node: Node, call: StepCall, route: Route, route_key: str,
                       size: float, key: bytes | None) -> tuple[StepResult, bool, Engine, LM]:
        """Run ``call`` on ``route`` (sharing an identical call already in flight under cache ``key``; None: the
        cache is off), telling the router how it went; the result, whether it came from the cache, and the
        engine and lm that served it."""
        engine, lm = self._route(pipeline, route)
        router = self.router
        ran: list[StepResult] = []

        async def compute() -> dict[str, Any]:
            began = time.perf_counter()
            try:
                result = await engine.run(call, lm)
            except Exception as exc:
                if router is not None:
                    router.observe(route_key, pipeline.name, node.id, route, lm.identity, time.perf_counter() - began,
                                   False, isinstance(exc, ValidationError), 0, size)
                raise
            if router is not None:
                router.observe(route_key, pipeline.name, node.id, route, lm.identity, time.perf_counter() - began,
                               True, result.retries > 0, result.prompt_tokens + result.completion_tokens, size)
            ran.append(result)
            return result.outputs

        if key is not None:
            outputs, hit = await self.cache.get_or_compute(key, compute)
        else:
            outputs, hit = await compute(), False
        return (ran[0] if ran else StepResult(outputs, engine=engine.name)), hit, engine, lm

    async def _call(self, pipeline: Pipeline, node: Node, args: dict[str, Any], variables: Mapping[str, Any]) -> Any:
        if node.target_kind == "pipeline":
            callee = pipeline.pipelines[node.target or ""]
            return await self.run(callee, args, {k: v for k, v in variables.items() if k in callee.vars})
        tool = pipeline.tools[node.target or ""]
        value = await self.run_tool(tool, args, self.session)
        return compile_validator((Field("return", tool.returns),)).validate({"return": value})["return"]

    def _emit(self, event: NodeEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)


def choose_engine(engines: Mapping[str, Engine], module: str, asked: str = "auto") -> Engine:
    """The engine a step asked for; for ``auto``, native where it runs the module, else dspy."""
    if asked != "auto":
        return engines[asked]
    native = engines.get("native")
    if native is not None and native.supports(module):
        return native
    return engines["dspy"]


def _skipped(node: Node, values: Mapping[str, Any]) -> bool:
    """Is ``node`` on a side of an ``if`` that was not taken?"""
    return any(values.get(g) is SKIPPED or bool(values.get(g)) != side for g, side in node.guard)


def bind_inputs(pipeline: Pipeline, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The input nodes' values: given ones, then defaults; a missing or unknown input is an ``InputError``."""
    known = {f.name: f for f in pipeline.inputs}
    for name in inputs:
        if name not in known:
            hint = did_you_mean(name, known)
            raise InputError(f"pipeline '{pipeline.name}' has no input '{name}'" + (f"; {hint}" if hint else ""))
    values: dict[str, Any] = {}
    for f in pipeline.inputs:
        if f.name in inputs:
            values[f.name] = inputs[f.name]
        elif f.has_default:
            values[f.name] = f.default
        else:
            raise InputError(f"pipeline '{pipeline.name}' needs input '{f.name}'")
    return values

