"""Tools that misbehave on purpose, run inside pool workers by the supervision tests (``python(...)`` targets).

``*_once`` tools misbehave the first time only: they leave a marker file, so the request's re-run on a
fresh worker succeeds, as a transient crash would.
"""
from __future__ import annotations

import ctypes
import os
import signal
import time
from pathlib import Path

__all__ = ["pid", "add", "fail", "kill_once", "segfault", "segfault_once", "hang_once", "hog", "out_of_memory",
           "nap"]

_HELD: list[bytearray] = []


def pid() -> int:
    return os.getpid()


def add(a: int, b: int) -> int:
    return a + b


def nap(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def fail(message: str) -> None:
    raise ValueError(message)


def _first_time(marker: str) -> bool:
    try:
        Path(marker).touch(exist_ok=False)
    except FileExistsError:
        return False
    return True


def kill_once(marker: str) -> str:
    if _first_time(marker):
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


def segfault() -> None:
    ctypes.string_at(0)


def segfault_once(marker: str) -> str:
    if _first_time(marker):
        ctypes.string_at(0)
    return "survived"


def hang_once(marker: str) -> str:
    if _first_time(marker):
        os.kill(os.getpid(), signal.SIGSTOP)  # stopped: no heartbeat, no answer, until the supervisor steps in
    return "survived"


def hog(mb: int) -> int:
    _HELD.append(bytearray(os.urandom(1024)) * (mb * 1024))
    return os.getpid()


def out_of_memory() -> None:
    raise MemoryError("simulated")
