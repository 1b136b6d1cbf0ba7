"""A supervised pool of worker processes fed msgpack frames over shared-memory rings (SPEC §8's pools).

Each worker owns a slot: a request ring, a response ring and a heartbeat block, all created here. A
request goes to an idle worker (or to one slot, for a session's strict affinity); the calling thread writes
the frame and waits on the response ring itself, so a round trip is two ring hops and no thread hand-off.

Workers are forked from the pool's zygote (``dspex.workers.zygote``), a template process that imported the
worker code and the pool's ``preload`` modules once (dspy for the general and optimizer pools): a replacement
is ready in milliseconds, and warm, where a fresh interpreter takes a third of a second to start and a second
more on its first dspy step (``import dspy``). Where ``os.fork`` is missing, or the zygote cannot start (a
preload fails, or leaves a thread running), every worker is a fresh interpreter
(``python -m dspex.workers.worker``) instead.

Supervision, by one thread per pool that also starts the zygote and every worker (a process dies with the
thread that started it, so that thread lives as long as the pool). It never waits on one worker while others
need it: a replacement is spawned, and enlisted by a later round once it says ready, with death and hang
checks going on meanwhile.
- a worker that dies (segfault, ``kill -9``, out of memory) is replaced in its slot, and the request it held
  runs again on another worker, up to ``max_reruns`` times; its answer is delivered once, since a response
  already in the ring is read before the worker is declared lost;
- a worker whose heartbeat stops for ``hang_s`` while it holds a request is killed and replaced the same way;
- a worker over ``memory_mb`` after a request, or past ``max_requests``, is recycled: asked to stop between
  requests (killed if it has not after ``grace_s``) while its replacement starts;
- ``close`` asks every worker to stop, waits ``grace_s``, kills what is left, then ends the zygote. Workers and
  the zygote also watch their parent, so none outlives a killed pool.
Every start, exit (with its cause: ``segfault``, ``killed``, ``out of memory``, ``hung``, ``error``) and
recycle is a ``WorkerEvent``, kept in ``events`` and passed to ``on_event``.
"""
from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from dspex.errors import WorkerError
from dspex.native import Ring
from dspex.workers.protocol import Status, classify_exit
from dspex.workers.slots import Lost, SlotPool, WorkerEvent
from dspex.workers.zygote import Zygote

__all__ = ["WorkerPool", "WorkerEvent", "DEFAULT_PRELOAD"]

_POLL_S = 0.05  # how often a waiting caller looks up from the ring to check that its worker is alive
_TICK_S = 0.005  # how often the supervisor looks at workers starting and stopping, while there are any
# What a dspy step loads on first use: dspy, our engine and its signature and LM bridges, the LM adapters (with
# aiohttp, for the openai one), and dspy's model-metadata map (read, or fetched, on a process's first step).
# Measured on the chaos test's step: a replacement's first step takes 60-90 ms with all of these preloaded,
# 180 ms with dspy and the engine only, and over 1 s with nothing (``import dspy`` included).
_DSPY = ("dspy", "dspex.engines.dspy_engine", "dspex.interop.dspy_signature", "dspex.lm.dspy_lm", "dspex.lm.spec",
         "dspex.lm.openai", "dspex.runtime.resilience", "dspy.clients.model_metadata:source_info")
DEFAULT_PRELOAD: dict[str, tuple[str, ...]] = {"general": _DSPY, "optimizer": _DSPY}
"""What a pool's zygote imports when ``preload`` is not given, by pool name (none for other pools)."""

log = logging.getLogger("dspex.workers")


class _Process(Protocol):
    """What the pool uses of a worker's process: a ``subprocess.Popen``, or a zygote's ``Forked``."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...


@dataclass(eq=False)
class _Worker:
    slot: int
    generation: int
    proc: _Process
    requests: Ring
    responses: Ring
    status: Status
    due: float  # starting: the time by which it must say ready; stopping: the time it is killed
    served: int = 0
    hung: bool = False
    retired: bool = False  # replaced or being replaced: no new request goes to it
    reported: bool = False  # its exit event has been emitted

    @property
    def pid(self) -> int:
        return self.proc.pid

    def release(self) -> None:
        for part in (self.requests, self.responses, self.status):
            try:
                part.close()
            except Exception:  # noqa: BLE001 - a half-made worker has nothing more to free
                pass


class WorkerPool(SlotPool[_Worker]):
    """``size`` supervised worker processes named ``name``; ``call`` / ``acall`` run one operation on one.

    ``preload``: what the zygote imports once for every worker, as ``module`` or ``module:function`` (called
    once imported, to warm what the module loads lazily); by default ``DEFAULT_PRELOAD[name]``."""

    def __init__(self, name: str = "general", size: int = 2, *, memory_mb: int = 512, max_requests: int = 0,
                 hang_s: float = 30.0, heartbeat_s: float = 0.2, start_timeout_s: float = 60.0,
                 grace_s: float = 5.0, max_reruns: int = 3, ring_bytes: int = 1 << 20,
                 preload: Sequence[str] | None = None, on_event: Callable[[WorkerEvent], None] | None = None):
        super().__init__(name, size, memory_mb=memory_mb, max_requests=max_requests, max_reruns=max_reruns,
                         on_event=on_event)
        self.hang_s, self.heartbeat_s = hang_s, heartbeat_s
        self.start_timeout_s, self.grace_s = start_timeout_s, grace_s
        self.ring_bytes = ring_bytes
        self.preload = tuple(DEFAULT_PRELOAD.get(name, ()) if preload is None else preload)
        # Only the supervisor thread touches these (and ``close``, once it has joined that thread).
        self._zygote: Zygote | None = None
        self._forking = hasattr(os, "fork")  # False once the zygote failed to start: fresh interpreters from then on
        self._starting: list[_Worker] = []
        self._stopping: list[_Worker] = []
        self._respawns: list[tuple[float, int, int]] = []  # (not before, slot, generation) of failed starts
        self._supervisor = threading.Thread(target=self._supervise, name=f"dspex-{name}-supervisor", daemon=True)
        started: Future[None] = Future()
        self._jobs.put(lambda: self._start_all(started))
        self._supervisor.start()
        try:
            started.result()
        except BaseException:
            self.close()
            raise

    # -- calling --------------------------------------------------------------------------------------
    def _exitcode(self, worker: _Worker) -> int | None:
        return worker.proc.returncode

    def _exchange(self, worker: _Worker, request: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            worker.requests.put(request)
        except BrokenPipeError:
            raise Lost(worker, "error") from None
        while True:
            try:
                response: dict[str, Any] = worker.responses.get(timeout=_POLL_S)
            except EOFError:  # it closed its ring on its way out (a frame already there would have come first)
                raise Lost(worker, classify_exit(self._reap(worker), worker.hung)) from None
            except TimeoutError:
                if worker.proc.poll() is not None or worker.hung:
                    try:  # it may have answered just before it died: that answer counts, once
                        response = worker.responses.get(timeout=0)
                    except (TimeoutError, EOFError):
                        raise Lost(worker, classify_exit(self._reap(worker), worker.hung)) from None
                elif deadline is not None and time.monotonic() > deadline:
                    worker.hung = True  # it may be stuck: a fresh worker is cheaper than a doubt
                    self._kill(worker)
                    raise Lost(worker, "hung") from None
                else:
                    continue
            if response.get("id") == request["id"]:
                return response

    # -- supervision ----------------------------------------------------------------------------------
    def _retire(self, worker: _Worker, cause: str, graceful: bool = False) -> None:
        """Take ``worker`` out of service and have the supervisor replace it in its slot."""
        if not self._take_out(worker):
            return
        if not graceful and worker.proc.poll() is not None:  # already gone: its exit is recorded before the
            self._report_exit(worker, cause)                # caller re-runs the request, not some time later
        self._jobs.put(lambda: self._replace(worker, cause, graceful))

    def _replace(self, worker: _Worker, cause: str, graceful: bool) -> None:
        """End ``worker`` and start its successor, waiting for neither: a graceful stop is left to ``_tend``."""
        if graceful:
            worker.requests.mark_closed()  # it leaves its loop between requests
            worker.due = time.monotonic() + self.grace_s
            self._stopping.append(worker)
        else:
            self._kill(worker)
            worker.proc.wait()
            self._report_exit(worker, cause)
            worker.release()
        self._start(worker.slot, worker.generation + 1)

    def _start(self, slot: int, generation: int) -> None:
        """Spawn the worker of ``slot``: ``_tend`` enlists it once it says ready, or starts another."""
        if self._closed:
            return
        try:
            self._starting.append(self._spawn(slot, generation))
        except (WorkerError, OSError):  # no process, or no shared memory, for now: try again on a later round
            self._respawns.append((time.monotonic() + self.heartbeat_s, slot, generation))

    def _tend(self) -> None:
        """Enlist the new workers that said ready and restart those that failed; reap the recycled ones."""
        now = time.monotonic()
        for worker in list(self._starting):
            ready = self._readiness(worker, 0.0)
            if ready is None:
                continue
            self._starting.remove(worker)
            if ready:
                self._enlist(worker)
            else:
                self._discard(worker)
                self._respawns.append((now + self.heartbeat_s, worker.slot, worker.generation))
        for worker in list(self._stopping):
            if worker.proc.poll() is None and now < worker.due:
                continue
            self._stopping.remove(worker)
            self._discard(worker)
        for respawn in [r for r in self._respawns if r[0] <= now]:
            self._respawns.remove(respawn)
            self._start(respawn[1], respawn[2])

    def _report_exit(self, worker: _Worker, cause: str) -> None:
        """The exit event of a worker that has exited, once."""
        if not worker.reported:
            worker.reported = True
            code = worker.proc.returncode
            self._emit(WorkerEvent("exit", self.name, worker.slot, worker.proc.pid,
                                   cause or classify_exit(code, worker.hung), code))

    def _supervise(self) -> None:
        while True:
            busy = self._starting or self._stopping or self._respawns
            try:
                job = self._jobs.get(timeout=_TICK_S if busy else self.heartbeat_s)
            except queue.Empty:
                job = self._check
            if job is None:
                self._shutdown()
                return
            for step in (job, self._tend):
                try:
                    step()
                except Exception:  # noqa: BLE001 - the supervisor must outlive any one failure
                    pass

    def _check(self) -> None:
        """Replace idle workers that died; kill busy ones whose heartbeat stopped for ``hang_s``."""
        with self._cond:
            workers = [(w, w.slot in self._idle) for w in self._workers.values() if not w.retired]
        for worker, idle in workers:
            if worker.proc.poll() is not None:
                if idle:
                    self._retire(worker, "")
            elif not idle and worker.status.read()[0] > self.hang_s:
                worker.hung = True
                self._kill(worker)  # its caller sees the exit and re-runs the request

    # -- processes ------------------------------------------------------------------------------------
    def _start_all(self, started: Future[None]) -> None:
        workers: list[_Worker] = []
        try:
            for slot in range(self.size):
                workers.append(self._spawn(slot, 0))
            self._await_ready(workers)
        except BaseException as e:  # noqa: BLE001 - reported to the constructor
            for worker in workers:
                self._discard(worker)
            started.set_exception(e)
            return
        for worker in workers:
            self._enlist(worker)
        started.set_result(None)

    def _template(self) -> Zygote | None:
        """The pool's zygote, started (again, if it was killed: this thread then waits for its imports) while
        forking works; None: start fresh interpreters."""
        if self._zygote is not None and self._zygote.alive:
            return self._zygote
        if self._zygote is not None:
            self._zygote.close(0.0)
            self._zygote = None
        if self._forking:
            try:
                self._zygote = Zygote.start(self.name, self.preload, self._env(), self.start_timeout_s,
                                            on_exit=lambda: self._jobs.put(self._check))
            except WorkerError as e:
                log.warning("pool %r: %s; its workers start as fresh interpreters", self.name, e)
                self._forking = False
        return self._zygote

    def _spawn(self, slot: int, generation: int) -> _Worker:
        requests = Ring.create(self.ring_bytes)
        responses = Ring.create(self.ring_bytes)
        status = Status.create()
        argv = ["--req", requests.name, "--resp", responses.name, "--status", status.name,
                "--heartbeat", str(self.heartbeat_s)]
        proc: _Process
        try:
            zygote = self._template()
            if zygote is not None:
                proc = zygote.spawn(argv, self.start_timeout_s)
            else:
                proc = subprocess.Popen([sys.executable, "-m", "dspex.workers.worker", *argv, "--parent",
                                         str(os.getpid())], env=self._env(), stdin=subprocess.DEVNULL, stdout=2,
                                        close_fds=True)
        except (OSError, WorkerError) as e:
            for part in (requests, responses, status):
                part.close()
            raise WorkerError(f"pool {self.name!r}: cannot start a worker: {e}") from e
        return _Worker(slot, generation, proc, requests, responses, status, time.monotonic() + self.start_timeout_s)

    @staticmethod
    def _env() -> dict[str, str]:
        """A new process's environment: ours, with our ``sys.path``, so that it imports what we would."""
        return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))

    def _readiness(self, worker: _Worker, wait_s: float) -> bool | None:
        """True once ``worker`` said ready; False when it died first or is late (past ``due``); None: not yet."""
        try:
            hello = worker.responses.get(timeout=wait_s)
        except TimeoutError:
            return None if worker.proc.poll() is None and time.monotonic() < worker.due else False
        return True if hello.get("ready") == worker.proc.pid else None

    def _await_ready(self, workers: list[_Worker]) -> None:
        """Wait for every new worker's ``ready`` (they start concurrently); WorkerError when one fails."""
        for worker in workers:
            while (ready := self._readiness(worker, _POLL_S)) is None:
                pass
            if not ready:
                raise WorkerError(f"pool {self.name!r}: a worker did not start (exit code "
                                  f"{worker.proc.returncode}, within {self.start_timeout_s:g} s)")

    def _enlist(self, worker: _Worker) -> None:
        with self._cond:
            self._workers[worker.slot] = worker
            self._idle.add(worker.slot)
            self._cond.notify_all()
        self._emit(WorkerEvent("start", self.name, worker.slot, worker.proc.pid))

    def _discard(self, worker: _Worker) -> None:
        """Kill (if need be), reap and free a worker that is out of service."""
        self._kill(worker)
        worker.proc.wait()
        worker.release()

    def _reap(self, worker: _Worker) -> int:
        """The exit code of ``worker``, which is ending: killed if it is still there after ``grace_s``."""
        try:
            return worker.proc.wait(self.grace_s)
        except subprocess.TimeoutExpired:
            self._kill(worker)
            return worker.proc.wait()

    @staticmethod
    def _kill(worker: _Worker) -> None:
        if worker.proc.poll() is None:
            try:
                worker.proc.send_signal(signal.SIGKILL)
            except ProcessLookupError:  # pragma: no cover - it exited in between
                pass

    # -- shutdown -------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop every worker (gracefully, then by force after ``grace_s``), then the zygote; idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._jobs.put(None)
        self._supervisor.join()
        self._threads.shutdown(wait=False, cancel_futures=True)

    def _shutdown(self) -> None:
        """``close``'s work, done by the supervisor thread before it ends: the processes it started are killed
        by the kernel when it ends (``PR_SET_PDEATHSIG``), which would make every stop a ``kill -9``."""
        for worker in self._starting:
            self._discard(worker)
        with self._cond:  # a recycled worker is in both until its successor is enlisted
            workers = list(dict.fromkeys([*self._workers.values(), *self._stopping]))
        for worker in workers:
            try:
                worker.requests.mark_closed()
            except Exception:  # noqa: BLE001 - already released by a replacement
                pass
        deadline = time.monotonic() + self.grace_s
        for worker in workers:
            try:
                worker.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._kill(worker)
                worker.proc.wait()
            worker.release()
        if self._zygote is not None:
            self._zygote.close(self.grace_s)
