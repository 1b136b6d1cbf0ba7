"""What every pool does with its slots, whatever runs in them (a local process or a Ray actor).

A pool has ``size`` slots, each served by one worker at a time. A request goes to an idle slot (or to the
one it names: a session's strict affinity), is re-run on another worker when its worker is lost (up to
``max_reruns`` times, then ``WorkerCrashedError`` with the cause), and leaves its worker idle again, or
recycled when the answer says it grew past ``memory_mb`` or it served ``max_requests``. Subclasses say how a
request reaches a worker (``_exchange``) and how a worker is taken out of service and replaced (``_retire``).
"""
from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import queue
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Protocol, TypeVar

from dspex.errors import WorkerCrashedError, WorkerError
from dspex.workers.protocol import decode_error

__all__ = ["SlotPool", "WorkerEvent", "Lost"]


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


class _Slotted(Protocol):
    slot: int
    generation: int
    served: int
    retired: bool

    @property
    def pid(self) -> int: ...


W = TypeVar("W", bound=_Slotted)


class Lost(Exception):
    """The worker serving a request died (or must not serve again) before answering."""

    def __init__(self, worker: Any, cause: str):
        self.worker, self.cause = worker, cause


class SlotPool(ABC, Generic[W]):
    """The slots, the idle set and the request loop shared by ``WorkerPool`` and ``RayPool``."""

    def __init__(self, name: str, size: int, *, memory_mb: int, max_requests: int, max_reruns: int,
                 on_event: Callable[[WorkerEvent], None] | None):
        if size < 1:
            raise ValueError(f"pool {name!r}: size must be at least 1, not {size}")
        self.name, self.size = name, size
        self.memory_mb, self.max_requests, self.max_reruns = memory_mb, max_requests, max_reruns
        self.on_event = on_event
        self.events: collections.deque[WorkerEvent] = collections.deque(maxlen=10_000)
        self._workers: dict[int, W] = {}
        self._idle: set[int] = set()
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._closed = False
        self._threads = ThreadPoolExecutor(max_workers=size * 2 + 2, thread_name_prefix=f"dspex-{name}-call")

    # -- calling --------------------------------------------------------------------------------------
    def call(self, op: str, args: dict[str, Any] | None = None, *, slot: int | None = None,
             timeout: float | None = None) -> Any:
        """The result of ``op`` run on an idle worker (on ``slot``'s worker when given); the error it raised
        there, re-raised here (``ValidationError``, ``LMError``, else ``WorkerTaskError``); or
        ``WorkerCrashedError`` once the request has lost ``max_reruns + 1`` workers."""
        request = self._prepare({"id": next(self._ids), "op": op, "args": args or {}})
        for attempt in itertools.count():
            worker = self._acquire(slot, timeout)
            try:
                response = self._exchange(worker, request, timeout)
            except Lost as lost:
                self._retire(lost.worker, lost.cause)
                if attempt >= self.max_reruns:
                    code = self._exitcode(lost.worker)
                    raise WorkerCrashedError(
                        f"pool {self.name!r}: request {op!r} lost {attempt + 1} workers; the last one ended: "
                        f"{lost.cause}" + (f" (exit code {code})" if code is not None else ""), lost.cause,
                        code) from None
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
        """How many workers ``slot`` has had before this one: a session sees its worker was replaced."""
        with self._cond:
            worker = self._workers.get(slot)
            return worker.generation if worker is not None else -1

    @property
    def pids(self) -> list[int]:
        """The process ids of the workers in service (a Ray actor's on its own node)."""
        with self._cond:
            return [w.pid for w in self._workers.values() if not w.retired]

    def _prepare(self, request: dict[str, Any]) -> Any:
        """The request as ``_exchange`` sends it (made once, whatever the re-runs)."""
        return request

    def _exitcode(self, worker: W) -> int | None:
        return None

    @abstractmethod
    def _exchange(self, worker: W, request: Any, timeout: float | None) -> dict[str, Any]:
        """The worker's response to ``request``; raises ``Lost`` when the worker is gone."""

    @abstractmethod
    def _retire(self, worker: W, cause: str, graceful: bool = False) -> None:
        """Take ``worker`` out of service (``retired``, not idle) and have it replaced in its slot."""

    @abstractmethod
    def close(self) -> None: ...

    def _acquire(self, slot: int | None, timeout: float | None) -> W:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._closed:
                    raise WorkerError(f"pool {self.name!r} is closed")
                if slot is None and self._idle:
                    return self._workers[self._idle.pop()]
                if slot is not None and slot in self._idle:
                    self._idle.discard(slot)
                    return self._workers[slot]
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"pool {self.name!r}: no idle worker within {timeout:g} s")
                self._cond.wait(left)

    def _settle(self, worker: W, response: dict[str, Any]) -> None:
        """Back to idle, or recycled when it grew past ``memory_mb`` or served ``max_requests``."""
        worker.served += 1
        rss = float(response.get("rss_mb") or 0.0)
        cause = ("memory" if rss > self.memory_mb else
                 "max_requests" if self.max_requests and worker.served >= self.max_requests else "")
        if cause:
            self._emit(WorkerEvent("recycle", self.name, worker.slot, worker.pid, cause))
            self._retire(worker, "", graceful=True)
        else:
            self._release(worker)

    def _release(self, worker: W) -> None:
        with self._cond:
            if not worker.retired:
                self._idle.add(worker.slot)
                self._cond.notify_all()

    def _take_out(self, worker: W) -> bool:
        """Mark ``worker`` retired and not idle; False when it already was (someone else replaces it)."""
        with self._cond:
            if worker.retired:
                return False
            worker.retired = True
            self._idle.discard(worker.slot)
            return True

    def _emit(self, event: WorkerEvent) -> None:
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    def __enter__(self) -> "SlotPool[W]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
