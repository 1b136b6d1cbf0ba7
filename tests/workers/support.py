"""What the worker tests share: running a misbehaving tool (tests/workers/tools.py) on a pool, and waiting,
boundedly, for processes to come and go."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from dspex.ir.codec import encode_tool
from dspex.ir.program import ToolDecl
from dspex.ir.types import ANY

__all__ = ["tool", "alive", "wait_until", "full"]


def tool(pool: Any, name: str, slot: int | None = None, timeout: float | None = 60, **args: Any) -> Any:
    """``tests.workers.tools.<name>(**args)`` run on ``pool`` (on ``slot``'s worker when given)."""
    decl = ToolDecl(name, (), ANY, f"tests.workers.tools:{name}")
    return pool.call("tool", {"tool": encode_tool(decl), "args": args}, slot=slot, timeout=timeout)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (exited, not yet reaped by its parent) counts as gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def wait_until(condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


def full(pool: Any) -> bool:
    """Every slot of ``pool`` has a live worker."""
    return len(pool.pids) == pool.size and all(alive(p) for p in pool.pids)
