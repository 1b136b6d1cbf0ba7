"""The worker pool on Ray (``[runtime] backend = "ray"``): the same workers, as Ray actors.

``RayPool`` has ``WorkerPool``'s interface (``call``, ``acall``, ``generation``, ``events``, ``close``), so a
program runs unchanged on one machine or on a Ray cluster. Each slot is one actor wrapping the same
``WorkerState`` a local worker process keeps, with one method that takes a request frame (``pack_frame``
bytes) and returns a response frame built exactly like the local worker's. Our data crosses as msgpack, not as
pickled Python objects: Ray only moves the bytes, so what a worker accepts and returns is the same on both
backends, and nothing a remote node sends is unpickled here.

Actors are created with ``num_cpus=0`` (a pool larger than the CPU count still schedules; the work is mostly
waiting on LMs) and ``num_gpus=1`` for a GPU pool, and are never restarted by Ray: supervision is ours, as in
the local pool:
- an actor that dies mid-request (``kill -9``, segfault, Ray's memory monitor) is replaced in its slot
  (generation + 1) and the request runs again, up to ``max_reruns`` times, then ``WorkerCrashedError``: cause
  ``out of memory`` when Ray reports an out-of-memory kill or the request raised ``MemoryError`` in the actor
  (which is then killed, as a local worker exits), ``hung`` when the call outlived its ``timeout`` (the actor
  is killed), else ``killed`` (Ray does not tell a segfault from a kill; ``exitcode`` is None);
- an actor whose response reports more than ``memory_mb`` resident, or that served ``max_requests``, is
  recycled between requests;
- every start, exit and recycle is a ``WorkerEvent``.
Ray has no heartbeat of ours: a hang is found by the call's ``timeout`` only.

``ray.init`` runs only when Ray is not initialised yet: ``address=None`` starts a local instance (no dashboard,
worker logs not forwarded), ``"auto"`` or ``"ray://host:port"`` connects to a cluster. Ray is shut down by
``close`` only when a pool started it, once the last pool using that instance is closed.
"""
from __future__ import annotations

import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import ray
import ray.exceptions

from dspex.errors import WorkerError
from dspex.native import pack_frame, unpack_frame
from dspex.workers.handlers import WorkerState
from dspex.workers.slots import Lost, SlotPool, WorkerEvent
from dspex.workers.protocol import encode_error, rss_mb

__all__ = ["RayPool", "WorkerEvent", "classify_ray_error"]

_OOM = re.compile(r"exit type:\s*NODE_OUT_OF_MEMORY|killed due to (the )?(node|memory)[^.]*out of memory"
                  r"|\bOutOfMemoryError\b", re.IGNORECASE)
_LOST = "lost"  # a response key: the actor must not serve again (it hit MemoryError); its value is the cause


class _Actor:
    """One worker as a Ray actor: a ``WorkerState`` and a frame-in, frame-out ``serve``."""

    def __init__(self, paths: list[str]) -> None:
        for path in paths:  # the driver's import paths that exist here, after the actor's own (tools import)
            if path not in sys.path and os.path.isdir(path):
                sys.path.append(path)
        self.state = WorkerState()

    def pid(self) -> int:
        return os.getpid()

    def serve(self, frame: bytes) -> bytes:
        """The response frame to one request frame, as the local worker builds it (``worker.serve``)."""
        request, _ = unpack_frame(frame)
        message: dict[str, Any]
        try:
            message = {"id": request["id"], "ok": True,
                       "result": self.state.handle(request["op"], request.get("args") or {})}
        except MemoryError:  # the pool kills this actor and names the cause, as a local worker's exit code does
            message = {"id": request["id"], "ok": False, _LOST: "out of memory"}
        except Exception as e:  # noqa: BLE001 - every failure goes back to the caller as data
            message = {"id": request["id"], "ok": False, "error": encode_error(e)}
        message["rss_mb"] = rss_mb()
        try:
            return pack_frame(message)
        except Exception as e:  # noqa: BLE001 - a result that is not msgpack data is the request's error
            return pack_frame({"id": request["id"], "ok": False, "error": encode_error(e), "rss_mb": message["rss_mb"]})

    def stop(self) -> None:
        """Close the state's LM clients and loop, then leave (a recycle between requests)."""
        try:
            self.state.close()
        finally:
            ray.actor.exit_actor()


_RemoteActor: Any = ray.remote(_Actor)


def classify_ray_error(error: BaseException) -> str:
    """How an actor ended, from the error Ray raised to its caller: ``out of memory`` when Ray says its memory
    monitor (or the node running out of memory) killed it, else ``killed``. Ray's generic message for a dead
    worker mentions the kernel's OOM killer as a possible cause, so only Ray's own verdict counts."""
    if isinstance(error, ray.exceptions.OutOfMemoryError) or _OOM.search(str(error)):
        return "out of memory"
    return "killed"


# -- Ray's lifetime: started by the first pool that needs it, shut down with the last one -----------------------
_ray_lock = threading.Lock()
_ray_users = 0  # open pools on the Ray instance this module started
_ray_started = False


def _use_ray(address: str | None) -> bool:
    """Connect to (or start) Ray; True when this pool shares an instance this module started."""
    global _ray_users, _ray_started
    with _ray_lock:
        if not ray.is_initialized():
            if address is None:
                ray.init(include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
            _ray_started, _ray_users = True, 0
        if _ray_started:
            _ray_users += 1
        return _ray_started


def _release_ray() -> None:
    global _ray_users, _ray_started
    with _ray_lock:
        _ray_users -= 1
        if _ray_users <= 0 and _ray_started:
            _ray_started, _ray_users = False, 0
            ray.shutdown()


@dataclass(eq=False)
class _Worker:
    slot: int
    generation: int
    handle: Any  # the actor's handle
    pid: int
    served: int = 0
    retired: bool = False  # replaced or being replaced: no new request goes to it


class RayPool(SlotPool[_Worker]):
    """``size`` Ray actors named ``name``; ``call`` / ``acall`` run one operation on one (see the module doc)."""

    def __init__(self, name: str = "general", size: int = 2, *, memory_mb: int = 512, gpu: bool = False,
                 address: str | None = None, max_requests: int = 0, max_reruns: int = 3,
                 start_timeout_s: float = 120.0, grace_s: float = 5.0,
                 on_event: Callable[[WorkerEvent], None] | None = None):
        super().__init__(name, size, memory_mb=memory_mb, max_requests=max_requests, max_reruns=max_reruns,
                         on_event=on_event)
        self.gpu, self.address = gpu, address
        self.start_timeout_s, self.grace_s = start_timeout_s, grace_s
        self._owns_ray = _use_ray(address)
        self._options: dict[str, Any] = {"num_cpus": 0, "num_gpus": 1 if gpu else 0, "max_restarts": 0,
                                         "max_task_retries": 0, "max_concurrency": 1}
        self._paths = [p for p in sys.path if p]
        self._supervisor = threading.Thread(target=self._supervise, name=f"dspex-{name}-ray-supervisor", daemon=True)
        try:
            workers = self._start([(slot, 0) for slot in range(size)])
        except BaseException:
            self._closed = True
            self._threads.shutdown(wait=False)
            if self._owns_ray:
                _release_ray()
            raise
        self._supervisor.start()
        for worker in workers:
            self._enlist(worker)

    # -- calling --------------------------------------------------------------------------------------
    def _prepare(self, request: dict[str, Any]) -> bytes:
        return pack_frame(request)  # our data crosses as msgpack: Ray only moves the bytes

    def _exchange(self, worker: _Worker, frame: bytes, timeout: float | None) -> dict[str, Any]:
        ref = worker.handle.serve.remote(frame)
        try:
            data = ray.get(ref, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise Lost(worker, "hung") from None  # it may be stuck: a fresh actor is cheaper than a doubt
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                ray.exceptions.OutOfMemoryError) as e:
            raise Lost(worker, classify_ray_error(e)) from None
        response: dict[str, Any] = unpack_frame(data)[0]
        if _LOST in response:
            raise Lost(worker, str(response[_LOST]))
        return response

    # -- supervision ----------------------------------------------------------------------------------
    def _retire(self, worker: _Worker, cause: str, graceful: bool = False) -> None:
        """Take ``worker`` out of service and have the supervisor replace it in its slot. A lost actor's exit
        is recorded here, before its request runs again."""
        if not self._take_out(worker):
            return
        if not graceful:
            self._emit(WorkerEvent("exit", self.name, worker.slot, worker.pid, cause or "killed"))
        self._jobs.put(lambda: self._replace(worker, graceful))

    def _replace(self, worker: _Worker, graceful: bool) -> None:
        if graceful:
            self._stop(worker)
        else:
            self._kill(worker)
        if self._closed:
            return
        try:
            (fresh,) = self._start([(worker.slot, worker.generation + 1)])
        except WorkerError:
            time.sleep(0.5)
            self._jobs.put(lambda: self._replace(worker, False))  # try again on the next round
            return
        self._enlist(fresh)

    def _supervise(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:  # noqa: BLE001 - the supervisor must outlive any one failure
                pass

    # -- actors ---------------------------------------------------------------------------------------
    def _start(self, slots: list[tuple[int, int]]) -> list[_Worker]:
        """New actors for ``(slot, generation)`` pairs, started concurrently; each is ready when its pid is known."""
        handles = [_RemoteActor.options(**self._options).remote(self._paths) for _ in slots]
        try:
            pids = ray.get([h.pid.remote() for h in handles], timeout=self.start_timeout_s)
        except (ray.exceptions.RayError, TimeoutError) as e:
            for handle in handles:
                self._kill_handle(handle)
            raise WorkerError(f"pool {self.name!r}: a Ray actor did not start: {e}") from e
        return [_Worker(slot, generation, handle, pid) for (slot, generation), handle, pid in zip(slots, handles, pids)]

    def _enlist(self, worker: _Worker) -> None:
        with self._cond:
            if self._closed:
                self._kill(worker)
                return
            self._workers[worker.slot] = worker
            self._idle.add(worker.slot)
            self._cond.notify_all()
        self._emit(WorkerEvent("start", self.name, worker.slot, worker.pid))

    def _stop(self, worker: _Worker) -> None:
        """Ask an idle actor to close its state and leave; kill it after ``grace_s``."""
        try:
            ray.get(worker.handle.stop.remote(), timeout=self.grace_s)
        except Exception:  # noqa: BLE001 - it left (an actor error) or did not in time: either way, kill
            pass
        self._kill(worker)

    def _kill(self, worker: _Worker) -> None:
        self._kill_handle(worker.handle)

    @staticmethod
    def _kill_handle(handle: Any) -> None:
        try:
            ray.kill(handle, no_restart=True)
        except Exception:  # noqa: BLE001 - already dead, or Ray is gone
            pass

    # -- shutdown -------------------------------------------------------------------------------------
    def close(self) -> None:
        """Kill every actor of the pool (a request in flight fails with ``WorkerError``); shut Ray down when
        this pool started it and no other pool still uses it. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            workers = list(self._workers.values())
            self._cond.notify_all()
        self._jobs.put(None)
        self._supervisor.join()
        for worker in workers:
            self._kill(worker)
        self._threads.shutdown(wait=False, cancel_futures=True)
        if self._owns_ray:
            _release_ray()
