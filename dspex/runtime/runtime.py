"""The public ``Runtime``: runs compiled pipelines on real LMs, one row or a batch.

A runtime owns an event loop on a background thread, so its synchronous methods work from any code
(scripts, notebooks, the CLI) while LM clients, pooled connections and the cache stay on one loop.
It picks each step's LM (the step's ``lm``, else the runtime's, else the program's ``default``, else
the embedded SmolLM2), its engine (``native`` where it exists, else ``dspy``) and caches step results.
"""
from __future__ import annotations

import asyncio
import atexit
import collections
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Coroutine, Iterable, Iterator, Mapping, TypeVar

from dspex.engines.base import Engine, StepCall
from dspex.ir.program import LMDecl, Pipeline, Signature
from dspex.lm.base import LM
from dspex.runtime.anomaly import AnomalyDetector
from dspex.runtime.executor import Executor, NodeEvent, ToolRunner, choose_engine, run_tool_here
from dspex.runtime.resilience import ResilientLM
from dspex.runtime.routing import Router
from dspex.runtime.scheduler import AdaptiveScheduler, Route
from dspex.runtime.telemetry import (RUN_CONTEXT, Telemetry, TelemetryEvent, error_text, from_node_event,
                                     from_worker_event, new_run_id)

if TYPE_CHECKING:
    from dspex.runtime.sessions import Session
    from dspex.workers.pools import Pools

__all__ = ["Runtime", "default_runtime", "DEFAULT_LM"]

DEFAULT_LM = "local:smollm2"
T = TypeVar("T")


class Runtime:
    """Runs pipelines and single steps. ``workers=N`` turns on supervised worker pools (SPEC §8): dspy-engine
    steps and ``python(...)`` tools then run in the ``general`` pool (N processes; a Ray actor each with
    ``[runtime] backend = "ray"``) and local models in the ``neural`` pool; without it everything runs in
    this process. ``session(id)`` gives a persisted, stateful session with strict worker affinity."""

    def __init__(self, lm: str | LM | None = None, *, workers: int | None = None, config: Any = None,
                 cache: bool = True, vars: Mapping[str, Any] | None = None, concurrency: int | None = None,
                 engines: Mapping[str, Engine] | None = None):
        from dspex.runtime.config import load_config

        self.config = load_config(config)
        self.workers = workers
        self.concurrency = concurrency or self.config.runtime.concurrency
        self.var_values = dict(vars or {})
        self.telemetry = Telemetry.from_config(self.config, self.config.telemetry.sinks)
        self._guards: dict[str, ResilientLM] = {}  # every lm endpoint's resilience wrapper, by identity
        self._lms: dict[Any, LM] = {}
        self.cache = None
        if cache:
            from dspex.runtime.cache import StepCache

            self.cache = StepCache.from_config(self.config)
        self.engines = dict(engines) if engines is not None else _default_engines()
        self.events: collections.deque[NodeEvent] = collections.deque(maxlen=10_000)
        self.pools: Pools | None = None
        self._run_tool: ToolRunner = run_tool_here
        if workers:
            from dspex.workers.pools import Pools
            from dspex.workers.remote import RemoteDspyEngine, remote_tool_runner

            self.pools = Pools(self.config, workers, on_event=self._worker_event)
            if "dspy" in self.engines:
                self.engines["dspy"] = RemoteDspyEngine(self.engines["dspy"], self.pools.get, self.pools.slot_for)
            self._run_tool = remote_tool_runner(self.pools.get, self.pools.slot_for)
        spec = lm if lm is not None else self.config.lm
        self._override: LM | None = self._guarded(_as_lm(spec), None) if spec is not None else None
        self._sessions: Any = None
        self.scheduler = (AdaptiveScheduler.from_config(self.config, seed=self.config.scheduler.seed, warmup=1,
                                                        default_bias=0.1,
                                                        pins=_pins(self.config.scheduler.pins))
                          if self.config.scheduler.adaptive else None)
        self.router = Router(self.scheduler, AnomalyDetector(), self.telemetry, self._breaker_for, self._slow_down)
        self._loop: asyncio.AbstractEventLoop | None = None  # batches and callers inside a running loop
        self._thread: threading.Thread | None = None
        self._local = threading.local()  # each calling thread's own loop for synchronous calls
        self._thread_loops: list[asyncio.AbstractEventLoop] = []
        self._lock = threading.Lock()

    # -- lms --------------------------------------------------------------------------------------
    def lm_for(self, pipeline: Pipeline | None, name: str | None) -> LM:
        """The LM a step uses: its named lm, else the runtime's, else the program's ``default``, else SmolLM2."""
        lms: Mapping[str, LMDecl] = pipeline.lms if pipeline is not None else {}
        if name is None:
            if self._override is not None:
                return self._override
            if "default" not in lms:
                return self._cached(("spec", DEFAULT_LM), lambda: self._guarded(_as_lm(DEFAULT_LM), None))
            name = "default"
        decl = lms[name]

        def make() -> LM:
            from dspex.lm.spec import lm_from_decl

            backups = {m for d in lms.values() if d.provider == "fallback" for m in d.members}
            return lm_from_decl(decl, lms, lambda lm, name: self._guarded(lm, name, name not in backups))

        return self._cached(("decl", repr(decl)), make)

    def _cached(self, key: Any, make: Any) -> LM:
        with self._lock:
            if key not in self._lms:
                self._lms[key] = make()
            return self._lms[key]

    def _guarded(self, lm: LM, name: str | None, wait_when_open: bool = True) -> LM:
        """``lm`` behind its resilience policy (``[resilience.lms.NAME]`` by declared name or identity, else
        ``[resilience]``): timeouts, retries, a circuit breaker and a rate limiter that every process of this
        runtime shares (their state lives under ``$DSPEX_HOME/resilience``). A member of a ``fallback`` fails
        at once while its circuit is open (the fallback moves on); any other lm waits for the probe, so a short
        outage costs time, not rows."""
        if isinstance(lm, ResilientLM):
            return lm
        lm = self._placed(lm)
        policies = self.config.resilience_lms
        policy = policies.get(name or "") or policies.get(lm.identity) or self.config.resilience
        guard = ResilientLM(lm, policy, shared_dir=self.config.home / "resilience", on_event=self._lm_event,
                            wait_when_open=wait_when_open and (policy is None or policy.wait_for_probe))
        self._guards.setdefault(lm.identity, guard)
        return guard

    def _breaker_for(self, identity: str) -> Any:
        guard = self._guards.get(identity)
        return guard.breaker if guard is not None else None

    def _slow_down(self, subject: str) -> None:
        """An anomaly suggested less load: slow the lm's rate limiter if it has one, else run fewer at once."""
        guard = self._guards.get(subject)
        if guard is not None and guard.limiter is not None:
            guard.limiter.slow_down()
        else:
            self.concurrency = max(1, self.concurrency * 3 // 4)

    def _lm_event(self, kind: str, data: dict[str, Any]) -> None:
        """Resilience events (retry, breaker, rate_limited, hedge) as telemetry, stamped with the run and step
        whose lm call they happened in."""
        error = str(data.get("error", ""))
        attrs = {k: v for k, v in data.items() if k not in ("lm", "error") and isinstance(v, (str, int, float, bool))}
        run_id, pipeline, node, call = RUN_CONTEXT.get()
        if call:
            attrs["call"] = call
        self.telemetry.emit(TelemetryEvent(kind, run_id, pipeline, node, lm=str(data.get("lm", "")), error=error,
                                           attrs=attrs))

    def _worker_event(self, event: Any) -> None:
        telemetry = from_worker_event(event)
        if telemetry is not None:
            self.telemetry.emit(telemetry)

    def _placed(self, lm: LM) -> LM:
        """``lm``, or with worker pools on, a proxy to it in the neural pool when it is a local model."""
        if self.pools is None or not lm.identity.startswith("local:") or lm.worker_spec() is None:
            return lm
        from dspex.workers.remote import RemoteLM

        return RemoteLM(lm, self.pools.get)  # the weights load in a worker, once, not in this process

    # -- running ----------------------------------------------------------------------------------
    def executor(self, on_event: Any = None, session: str | None = None, run_id: str = "") -> Executor:
        telemetry = self.telemetry

        def emit(event: NodeEvent) -> None:
            self.events.append(event)
            for converted in from_node_event(event, run_id, event.call):
                telemetry.emit(converted)
            if on_event is not None:
                on_event(event)

        return Executor(self.lm_for, self.engines, self.cache, emit, self.concurrency, self._run_tool, session,
                        self.router)

    async def execute(self, pipeline: Pipeline, inputs: Mapping[str, Any], variables: Mapping[str, Any], *,
                      session: str | None = None, on_event: Any = None) -> dict[str, Any]:
        """One run of ``pipeline``, framed by ``run_start`` / ``run_end`` telemetry (what ``arun``, ``stream``,
        batches and sessions share)."""
        run_id = new_run_id()
        self.telemetry.emit(TelemetryEvent("run_start", run_id, pipeline.name))
        started = time.perf_counter()
        context = RUN_CONTEXT.set((run_id, pipeline.name, "", 0))
        try:
            outputs = await self.executor(on_event, session, run_id).run(pipeline, inputs, variables)
        except BaseException as exc:
            self.telemetry.emit(TelemetryEvent("run_end", run_id, pipeline.name,
                                               duration_s=time.perf_counter() - started, error=error_text(exc)))
            raise
        finally:
            RUN_CONTEXT.reset(context)
        self.telemetry.emit(TelemetryEvent("run_end", run_id, pipeline.name, duration_s=time.perf_counter() - started))
        return outputs

    async def arun(self, pipeline: Pipeline, /, **inputs: Any) -> dict[str, Any]:
        """The pipeline's outputs for these inputs; raises ``StepError`` naming the failing node."""
        return await self.execute(pipeline, inputs, self.var_values)

    def session(self, session_id: str) -> "Session":
        """The session ``session_id``: resumed from ``$DSPEX_HOME/sessions.sqlite`` when it exists there. While
        it is in use, every call for the same id gets the same object, so turns from many threads share one
        history instead of overwriting each other's record."""
        from dspex.runtime.sessions import Session, SessionStore

        with self._lock:
            if self._sessions is None:
                self._sessions = SessionStore.from_config(self.config)
            session: Session | None = self._sessions.live.get(session_id)
            if session is None:
                session = self._sessions.live[session_id] = Session(self, session_id, self._sessions)
            return session

    def run(self, pipeline: Pipeline, /, **inputs: Any) -> dict[str, Any]:
        return self._submit(self.arun(pipeline, **inputs))

    async def acall(self, signature: Signature, module: str = "predict", **inputs: Any) -> dict[str, Any]:
        """One step outside any pipeline: ``module`` over ``signature``."""
        return await self.acall_in(None, self.var_values, signature, module, inputs)

    async def acall_in(self, session: str | None, var_values: Mapping[str, Any], signature: Signature, module: str,
                       inputs: dict[str, Any]) -> dict[str, Any]:
        """``acall`` on behalf of ``session`` with these var values (what a ``Session`` calls)."""
        from dspex.ir.modules import canonical_module

        module = canonical_module(module)
        engine = choose_engine(self.engines, module)
        call = StepCall(signature, module, inputs, {}, dict(var_values), session=session)
        result = await engine.run(call, self.lm_for(None, None))
        return result.outputs

    def call(self, signature: Signature, module: str = "predict", **inputs: Any) -> dict[str, Any]:
        return self._submit(self.acall(signature, module, **inputs))

    async def stream(self, pipeline: Pipeline, /, **inputs: Any) -> AsyncIterator[NodeEvent | dict[str, Any]]:
        """Node events as they happen, then the outputs (a dict) last."""
        queue: asyncio.Queue[NodeEvent] = asyncio.Queue()
        task = asyncio.ensure_future(self.execute(pipeline, inputs, self.var_values, on_event=queue.put_nowait))
        while not task.done() or not queue.empty():
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
            else:
                getter.cancel()
        yield task.result()

    def batch(self, pipeline: Pipeline, rows: Iterable[Mapping[str, Any]], concurrency: int | None = None,
              progress: bool = False, checkpoint: str | Path | None = None,
              resume: bool = False) -> Iterator[Any]:
        """Each row's ``RowResult``, in input order. With ``checkpoint``, results are appended there as they
        finish and the file is put in input order at the end; ``resume`` skips rows already in it."""
        from dspex.runtime.batch import run_batch

        yield from run_batch(self, pipeline, rows, concurrency or self.concurrency, progress, checkpoint, resume)

    # -- the loop ---------------------------------------------------------------------------------
    def _submit(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` for a synchronous caller: on this thread's own loop (no thread hop: this is the
        hot path of ``run`` and ``call``), or on the runtime's loop when this thread is already running one."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            loop = getattr(self._local, "loop", None)
            if loop is None:
                loop = self._local.loop = asyncio.new_event_loop()
                with self._lock:
                    self._thread_loops.append(loop)
            return loop.run_until_complete(coro)
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name="dspex-runtime", daemon=True)
                self._thread.start()
            return self._loop

    def close(self) -> None:
        """Close LM clients, the cache, the worker pools and the loops; the runtime is not used afterwards."""
        if self.cache is not None:
            self.cache.close()
        if self.pools is not None:
            self.pools.close()
        if self._sessions is not None:
            self._sessions.close()
        if self.scheduler is not None:
            self.scheduler.save()
        self.telemetry.close()
        lms = list(self._lms.values()) + ([self._override] if self._override is not None else [])
        for loop in self._thread_loops:
            for lm in lms:
                loop.run_until_complete(lm.aclose())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()
        self._thread_loops.clear()
        self._local = threading.local()
        if self._loop is None:
            return
        for lm in lms:
            asyncio.run_coroutine_threadsafe(lm.aclose(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join()
        self._loop.close()
        self._loop = None

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pins(pins: Mapping[str, str]) -> dict[str, Route]:
    """``[scheduler] pins`` (``"pipeline.node"`` or ``"*"`` -> ``"engine/lm"``) as the scheduler's routes."""
    return {node: tuple(route.split("/", 1)) for node, route in pins.items()}  # type: ignore[misc]


def _as_lm(spec: str | LM) -> LM:
    if not isinstance(spec, str):
        return spec
    from dspex.lm.spec import lm_from_spec

    return lm_from_spec(spec)


def _default_engines() -> dict[str, Engine]:
    from dspex.engines.dspy_engine import DspyEngine
    from dspex.engines.native import NativeEngine

    return {"native": NativeEngine(), "dspy": DspyEngine()}


_default: Runtime | None = None
_default_lock = threading.Lock()


def default_runtime() -> Runtime:
    """The runtime a decorated pipeline runs on when called directly (configured from env and files)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Runtime()
            atexit.register(_default.close)  # nobody else will: its clients and cache must shut down cleanly
        return _default
