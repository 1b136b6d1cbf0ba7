"""What parent and worker say to each other, and how a worker's end is named.

Every message is one msgpack map in a ``dspex.native`` frame on a shared-memory ring: a request
``{"id", "op", "args"}`` goes down, and ``{"id", "ok", "result"}`` or ``{"id", "ok": False, "error"}`` comes
back with the worker's resident memory (``rss_mb``), so the pool can recycle a worker that grew too big
between requests. A worker's first message is ``{"ready": pid}``. A worker also keeps a heartbeat in a small
shared status block (``Status``), which the supervisor reads to tell a busy worker from a hung one.
"""
from __future__ import annotations

import functools
import os
import signal
import struct
import time
from multiprocessing import shared_memory
from typing import Any, Callable

from dspex.engines.base import ValidationError
from dspex.errors import DSPexError, WorkerTaskError
from dspex.lm.base import LMError
from dspex.native.wire_py import attach_segment  # (the one helper both wire twins share)

__all__ = ["Status", "encode_error", "decode_error", "classify_exit", "EXIT_OUT_OF_MEMORY", "rss_mb"]

EXIT_OUT_OF_MEMORY = 3  # a worker that caught MemoryError exits with this code
_CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT}
_STATUS = struct.Struct("<qqq")  # heartbeat (monotonic ns), pid, requests served


class Status:
    """A worker's heartbeat block in shared memory: the worker writes, the supervisor reads.

    The pool creates it (and unlinks it on ``close``); a worker attaches it without the resource tracker, as it
    attaches its rings: a tracker would unlink the block when the worker exits (CPython gh-82300), and a forked
    worker would start a tracker process of its own just to say so."""

    SIZE = _STATUS.size

    def __init__(self, name: str, buf: memoryview, close: Callable[[], None]):
        self.name, self._buf, self._close = name, buf, close

    @classmethod
    def create(cls) -> "Status":
        shm = shared_memory.SharedMemory(create=True, size=cls.SIZE)

        def close() -> None:
            shm.close()
            shm.unlink()

        status = cls(shm.name, shm.buf, close)  # type: ignore[arg-type]  # typeshed: None once closed
        status.beat(0, 0)
        return status

    @classmethod
    def attach(cls, name: str) -> "Status":
        segment = attach_segment(name)
        return cls(name, segment.buf, functools.partial(segment.close, unlink=False))

    def beat(self, pid: int, requests: int) -> None:
        _STATUS.pack_into(self._buf, 0, time.monotonic_ns(), pid, requests)

    def read(self) -> tuple[float, int, int]:
        """Seconds since the last heartbeat, the worker's pid, and the requests it has served."""
        at, pid, requests = _STATUS.unpack_from(self._buf, 0)
        return (time.monotonic_ns() - at) / 1e9, pid, requests

    def close(self) -> None:
        self._close()


def encode_error(exc: BaseException) -> dict[str, Any]:
    """An exception raised in a worker as data the parent turns back into the same kind of error."""
    error: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, ValidationError):
        error.update(path=exc.path, rule=exc.rule, value=_plain(exc.value))
    elif isinstance(exc, LMError):
        error.update(retryable=exc.retryable, status=exc.status, retry_after=exc.retry_after,
                     message=exc.args[0] if exc.args else str(exc))
    return error


def decode_error(error: dict[str, Any]) -> DSPexError:
    """The parent's side of ``encode_error``: validation and LM errors keep their type and fields."""
    kind = error.get("type", "Exception")
    if kind == "ValidationError":
        return ValidationError(error["path"], error.get("value"), error["rule"])
    if kind == "LMError":
        return LMError(error["message"], retryable=bool(error.get("retryable")), status=error.get("status"),
                       retry_after=error.get("retry_after"))
    return WorkerTaskError(kind, error.get("message", ""))


def classify_exit(exitcode: int | None, hung: bool = False) -> str:
    """How a worker ended: ``segfault`` (a crash signal), ``killed`` (SIGKILL or SIGTERM from outside),
    ``out of memory`` (MemoryError in the worker), ``hung`` (no heartbeat: the supervisor killed it),
    or ``error`` (it exited on its own with a failure)."""
    if hung:
        return "hung"
    if exitcode is None:
        return "error"
    if exitcode < 0:
        return "segfault" if -exitcode in _CRASH_SIGNALS else "killed"
    if exitcode == EXIT_OUT_OF_MEMORY:
        return "out of memory"
    return "error"


def rss_mb() -> float:
    """This process's resident memory now, in MiB (Linux ``/proc``; 0 where unknown)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else repr(value)
