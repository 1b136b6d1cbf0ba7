"""A supervised pool of worker processes fed msgpack frames over shared-memory rings (SPEC §8's pools).

Each worker owns a slot: a request ring, a response ring and a heartbeat block, all created here. A
request goes to an idle worker (or to one slot, for a session's strict affinity); the calling thread writes
the frame and waits on the response ring itself, so a round trip is two ring hops and no thread hand-off.

Supervision, by one thread per pool that also starts every worker (a worker dies with the thread that
started it, so that thread lives as long as the pool):
- a worker that dies (segfault, ``kill -9``, out of memory) is replaced in its slot, and the request it held
  runs again on another worker, up to ``max_reruns`` times; its answer is delivered once, since a response
  already in the ring is read before the worker is declared lost;
- a worker whose heartbeat stops for ``hang_s`` while it holds a request is killed and replaced the same way;
- a worker over ``memory_mb`` after a request, or past ``max_requests``, is recycled: asked to stop between
  requests, then replaced;
- ``close`` asks every worker to stop, waits ``grace_s``, then kills what is left. Workers also watch their
  parent, so none outlives a killed pool.
Every start, exit (with its cause: ``segfault``, ``killed``, ``out of memory``, ``hung``, ``error``) and
recycle is a ``WorkerEvent``, kept in ``events`` and passed to ``on_event``.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from dspex.errors import WorkerCrashedError, WorkerError
from dspex.native import Ring
from dspex.workers.protocol import Status, classify_exit, decode_error

__all__ = ["WorkerPool", "WorkerEvent"]

_POLL_S = 0.05  # how often a waiting caller looks up from the ring to check that its worker is alive


@dataclass(frozen=True, slots=True)
class WorkerEvent:
    """``kind``: start, exit or recycle; ``cause`` for an exit (see ``classify_exit``) or a recycle."""

    kind: str
    pool: str
    slot: int
    pid: int
    cause: str = ""
    exitcode: int | None = None
    at: float = field(default_factory=time.time)


@dataclass(eq=False)
class _Worker:
    slot: int
    generation: int
    proc: subprocess.Popen[bytes]
    requests: Ring
    responses: Ring
    status: Status
    served: int = 0
    hung: bool = False
    retired: bool = False  # replaced or being replaced: no new request goes to it
    reported: bool = False  # its exit event has been emitted

    def release(self) -> None:
        for part in (self.requests, self.responses, self.status):
            try:
                part.close()
            except Exception:  # noqa: BLE001 - a half-made worker has nothing more to free
                pass


class _Lost(Exception):
    """The worker serving a request died before answering."""

    def __init__(self, worker: _Worker, cause: str):
        self.worker, self.cause = worker, cause


class WorkerPool:
    """``size`` supervised worker processes named ``name``; ``call`` / ``acall`` run one operation on one."""

    def __init__(self, name: str = "general", size: int = 2, *, memory_mb: int = 512, max_requests: int = 0,
                 hang_s: float = 30.0, heartbeat_s: float = 0.2, start_timeout_s: float = 60.0,
                 grace_s: float = 5.0, max_reruns: int = 3, ring_bytes: int = 1 << 20,
                 on_event: Callable[[WorkerEvent], None] | None = None):
        if size < 1:
            raise ValueError(f"pool {name!r}: size must be at least 1, not {size}")
        self.name, self.size = name, size
        self.memory_mb, self.max_requests = memory_mb, max_requests
        self.hang_s, self.heartbeat_s = hang_s, heartbeat_s
        self.start_timeout_s, self.grace_s, self.max_reruns = start_timeout_s, grace_s, max_reruns
        self.ring_bytes = ring_bytes
        self.on_event = on_event
        self.events: collections.deque[WorkerEvent] = collections.deque(maxlen=10_000)
        self._workers: dict[int, _Worker] = {}
        self._idle: set[int] = set()
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._closed = False
        self._threads = ThreadPoolExecutor(max_workers=size * 2 + 2, thread_name_prefix=f"dspex-{name}-call")
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
    def call(self, op: str, args: dict[str, Any] | None = None, *, slot: int | None = None,
             timeout: float | None = None) -> Any:
        """The result of ``op`` run on an idle worker (on ``slot``'s worker when given); the error it raised
        there, re-raised here (``ValidationError``, ``LMError``, else ``WorkerTaskError``); or
        ``WorkerCrashedError`` once the request has lost ``max_reruns + 1`` workers."""
        request = {"id": next(self._ids), "op": op, "args": args or {}}
        for attempt in itertools.count():
            worker = self._acquire(slot, timeout)
            try:
                response = self._exchange(worker, request, timeout)
            except _Lost as lost:
                self._retire(lost.worker, lost.cause)
                if attempt >= self.max_reruns:
                    raise WorkerCrashedError(
                        f"pool {self.name!r}: request {op!r} lost {attempt + 1} workers; the last one ended: "
                        f"{lost.cause} (exit code {lost.worker.proc.returncode})", lost.cause,
                        lost.worker.proc.returncode) from None
                continue
            except BaseException:
                self._release(worker)  # nothing was lost: the request never left, or its answer is moot
                raise
            self._settle(worker, response)
            if response["ok"]:
                return response["result"]
            raise decode_error(response["error"])
        raise AssertionError("unreachable")  # pragma: no cover

    async def acall(self, op: str, args: dict[str, Any] | None = None, *, slot: int | None = None,
                    timeout: float | None = None) -> Any:
        """``call`` for a coroutine: the wait happens on one of the pool's calling threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, functools.partial(self.call, op, args, slot=slot,
                                                                            timeout=timeout))

    def generation(self, slot: int) -> int:
        """How many workers ``slot`` has had: a session sees its worker was replaced when this changes."""
        with self._cond:
            worker = self._workers.get(slot)
            return worker.generation if worker is not None else -1

    @property
    def pids(self) -> list[int]:
        with self._cond:
            return [w.proc.pid for w in self._workers.values() if not w.retired]

    def _acquire(self, slot: int | None, timeout: float | None) -> _Worker:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._closed:
                    raise WorkerError(f"pool {self.name!r} is closed")
                if slot is None and self._idle:
                    chosen = self._idle.pop()
                    return self._workers[chosen]
                if slot is not None and slot in self._idle:
                    self._idle.discard(slot)
                    return self._workers[slot]
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"pool {self.name!r}: no idle worker within {timeout:g} s")
                self._cond.wait(left)

    def _exchange(self, worker: _Worker, request: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            worker.requests.put(request)
        except BrokenPipeError:
            raise _Lost(worker, "error") from None
        while True:
            try:
                response: dict[str, Any] = worker.responses.get(timeout=_POLL_S)
            except TimeoutError:
                if worker.proc.poll() is not None or worker.hung:
                    try:  # it may have answered just before it died: that answer counts, once
                        response = worker.responses.get(timeout=0)
                    except (TimeoutError, EOFError):
                        raise _Lost(worker, classify_exit(worker.proc.wait(), worker.hung)) from None
                elif deadline is not None and time.monotonic() > deadline:
                    worker.hung = True  # it may be stuck: a fresh worker is cheaper than a doubt
                    self._kill(worker)
                    raise _Lost(worker, "hung") from None
                else:
                    continue
            if response.get("id") == request["id"]:
                return response

    def _settle(self, worker: _Worker, response: dict[str, Any]) -> None:
        """Back to idle, or recycled when it grew past ``memory_mb`` or served ``max_requests``."""
        worker.served += 1
        rss = float(response.get("rss_mb") or 0.0)
        cause = ("memory" if rss > self.memory_mb else
                 "max_requests" if self.max_requests and worker.served >= self.max_requests else "")
        if cause:
            self._emit(WorkerEvent("recycle", self.name, worker.slot, worker.proc.pid, cause))
            self._retire(worker, "", graceful=True)
        else:
            self._release(worker)

    def _release(self, worker: _Worker) -> None:
        with self._cond:
            if not worker.retired:
                self._idle.add(worker.slot)
                self._cond.notify_all()

    # -- supervision ----------------------------------------------------------------------------------
    def _retire(self, worker: _Worker, cause: str, graceful: bool = False) -> None:
        """Take ``worker`` out of service and have the supervisor replace it in its slot."""
        with self._cond:
            if worker.retired:
                return
            worker.retired = True
            self._idle.discard(worker.slot)
        if not graceful and worker.proc.poll() is not None:  # already gone: its exit is recorded before the
            self._report_exit(worker, cause)                # caller re-runs the request, not some time later
        self._jobs.put(lambda: self._replace(worker, cause, graceful))

    def _replace(self, worker: _Worker, cause: str, graceful: bool) -> None:
        if graceful:
            self._stop(worker)
        else:
            self._kill(worker)
            worker.proc.wait()
            self._report_exit(worker, cause)
        worker.release()
        if self._closed:
            return
        try:
            fresh = self._spawn(worker.slot, worker.generation + 1)
            self._await_ready([fresh])
        except WorkerError:
            self._jobs.put(lambda: self._replace(worker, cause, graceful))  # try again on the next round
            time.sleep(self.heartbeat_s)
            return
        self._enlist(fresh)

    def _report_exit(self, worker: _Worker, cause: str) -> None:
        """The exit event of a worker that has exited, once."""
        if not worker.reported:
            worker.reported = True
            code = worker.proc.returncode
            self._emit(WorkerEvent("exit", self.name, worker.slot, worker.proc.pid,
                                   cause or classify_exit(code, worker.hung), code))

    def _supervise(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self.heartbeat_s)
            except queue.Empty:
                job = self._check
            if job is None:
                return
            try:
                job()
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
        try:
            workers = [self._spawn(slot, 0) for slot in range(self.size)]
            self._await_ready(workers)
        except BaseException as e:  # noqa: BLE001 - reported to the constructor
            started.set_exception(e)
            return
        for worker in workers:
            self._enlist(worker)
        started.set_result(None)

    def _spawn(self, slot: int, generation: int) -> _Worker:
        requests = Ring.create(self.ring_bytes)
        responses = Ring.create(self.ring_bytes)
        status = Status.create()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        cmd = [sys.executable, "-m", "dspex.workers.worker", "--req", requests.name, "--resp", responses.name,
               "--status", status.name, "--parent", str(os.getpid()), "--heartbeat", str(self.heartbeat_s)]
        try:
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=2, close_fds=True)
        except OSError as e:
            for part in (requests, responses, status):
                part.close()
            raise WorkerError(f"pool {self.name!r}: cannot start a worker: {e}") from e
        return _Worker(slot, generation, proc, requests, responses, status)

    def _await_ready(self, workers: list[_Worker]) -> None:
        """Wait for every new worker's ``ready`` (they start concurrently); a worker that fails is cleaned up."""
        deadline = time.monotonic() + self.start_timeout_s
        for worker in workers:
            while True:
                try:
                    hello = worker.responses.get(timeout=_POLL_S)
                except TimeoutError:
                    if worker.proc.poll() is None and time.monotonic() < deadline:
                        continue
                    for w in workers:
                        self._kill(w)
                        w.proc.wait()
                        w.release()
                    raise WorkerError(f"pool {self.name!r}: a worker did not start (exit code "
                                      f"{worker.proc.returncode}, within {self.start_timeout_s:g} s)") from None
                if hello.get("ready") == worker.proc.pid:
                    break

    def _enlist(self, worker: _Worker) -> None:
        with self._cond:
            if self._closed:
                self._stop(worker)
                worker.release()
                return
            self._workers[worker.slot] = worker
            self._idle.add(worker.slot)
            self._cond.notify_all()
        self._emit(WorkerEvent("start", self.name, worker.slot, worker.proc.pid))

    def _stop(self, worker: _Worker) -> None:
        """Ask a worker to finish (it leaves its loop when its request ring closes); kill it after ``grace_s``."""
        try:
            worker.requests.mark_closed()
            worker.proc.wait(self.grace_s)
        except subprocess.TimeoutExpired:
            self._kill(worker)
            worker.proc.wait()

    @staticmethod
    def _kill(worker: _Worker) -> None:
        if worker.proc.poll() is None:
            try:
                worker.proc.send_signal(signal.SIGKILL)
            except ProcessLookupError:  # pragma: no cover - it exited in between
                pass

    def _emit(self, event: WorkerEvent) -> None:
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    # -- shutdown -------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop every worker (gracefully, then by force after ``grace_s``); idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            workers = list(self._workers.values())
            self._cond.notify_all()
        self._jobs.put(None)
        self._supervisor.join()
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
        self._threads.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
