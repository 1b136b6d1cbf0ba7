"""The supervised pool with real worker processes: start, dispatch, crashes of every kind, hangs, memory
and request recycling, graceful and forced shutdown, and no orphan even when the parent is killed."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from dspex.errors import WorkerCrashedError, WorkerError, WorkerTaskError
from dspex.ir.codec import encode_tool
from dspex.ir.program import ToolDecl
from dspex.ir.types import ANY
from dspex.workers.pool import WorkerPool
from dspex.workers.protocol import classify_exit
from tests.workers.support import alive, full, tool, wait_until

ROOT = Path(__file__).resolve().parents[2]






@pytest.fixture
def pool() -> Iterator[WorkerPool]:
    with WorkerPool("general", 2, hang_s=1.0, heartbeat_s=0.1, grace_s=2.0) as p:
        yield p


def test_workers_start_concurrently_and_answer(pool: WorkerPool) -> None:
    assert len(set(pool.pids)) == 2 and all(alive(p) for p in pool.pids)
    assert pool.call("ping") is None
    assert pool.call("echo", {"value": {"a": [1, 2.5, "x", b"\x00", None]}}) == {"a": [1, 2.5, "x", b"\x00", None]}
    assert {e.kind for e in pool.events} == {"start"} and len(pool.events) == 2


def test_requests_go_to_idle_workers(pool: WorkerPool) -> None:
    with ThreadPoolExecutor(2) as threads:
        pids = set(threads.map(lambda _: tool(pool, "nap", seconds=0.5), range(2)))
    assert pids == set(pool.pids)


def test_a_slot_always_gets_the_same_worker(pool: WorkerPool) -> None:
    pids = {tool(pool, "pid", slot=1) for _ in range(10)}
    assert len(pids) == 1 and pids <= set(pool.pids)


def test_errors_come_back_and_the_worker_stays(pool: WorkerPool) -> None:
    before = set(pool.pids)
    with pytest.raises(WorkerTaskError, match="ValueError: bad input") as info:
        tool(pool, "fail", message="bad input")
    assert info.value.type == "ValueError"
    with pytest.raises(WorkerTaskError, match="unknown worker operation 'nope'"):
        pool.call("nope")
    assert set(pool.pids) == before


@pytest.mark.parametrize("crasher,cause", [("kill_once", "killed"), ("segfault_once", "segfault"),
                                           ("hang_once", "hung")])
def test_a_crashed_worker_is_replaced_and_its_request_runs_again(pool: WorkerPool, tmp_path: Path, crasher: str,
                                                                 cause: str) -> None:
    before = set(pool.pids)
    assert tool(pool, crasher, marker=str(tmp_path / "marker")) == "survived"
    exits = [e for e in pool.events if e.kind == "exit"]
    assert [e.cause for e in exits] == [cause]
    assert exits[0].pid in before and not alive(exits[0].pid)
    assert wait_until(lambda: full(pool))
    assert len(set(pool.pids) - before) == 1
    assert tool(pool, "add", a=2, b=3) == 5


def test_a_request_that_always_crashes_fails_with_the_cause(pool: WorkerPool) -> None:
    with pytest.raises(WorkerCrashedError, match="lost 4 workers; the last one ended: segfault") as info:
        tool(pool, "segfault")
    assert info.value.cause == "segfault" and info.value.exitcode == -signal.SIGSEGV
    assert wait_until(lambda: full(pool))


def call_target(pool: WorkerPool, target: str, **args: Any) -> Any:
    """Run any importable callable as a tool (``module:function``)."""
    decl = ToolDecl(target.rpartition(":")[2], (), ANY, target)
    return pool.call("tool", {"tool": encode_tool(decl), "args": args}, timeout=60)


def test_a_worker_that_closes_its_rings_on_the_way_out_is_a_crash(pool: WorkerPool) -> None:
    # SystemExit leaves the worker through its cleanup, which closes the response ring: its caller, waiting on
    # that ring, gets EOFError, and that is the worker's death, not an error of the call
    with pytest.raises(WorkerCrashedError, match="lost 4 workers; the last one ended: error") as info:
        call_target(pool, "builtins:exit", code=7)
    assert info.value.exitcode == 7
    assert [(e.cause, e.exitcode) for e in pool.events if e.kind == "exit"] == [("error", 7)] * 4
    assert wait_until(lambda: full(pool))


def test_a_result_that_cannot_be_sent_is_an_error_and_the_worker_stays(pool: WorkerPool) -> None:
    before = set(pool.pids)
    with pytest.raises(WorkerTaskError, match="TypeError") as info:
        call_target(pool, "threading:Lock")  # a lock: msgpack cannot pack it
    assert info.value.type == "TypeError"
    assert set(pool.pids) == before and not [e for e in pool.events if e.kind == "exit"]
    assert tool(pool, "add", a=1, b=2) == 3


def test_out_of_memory_is_named(pool: WorkerPool) -> None:
    with pytest.raises(WorkerCrashedError) as info:
        tool(pool, "out_of_memory")
    assert info.value.cause == "out of memory"
    assert {e.cause for e in pool.events if e.kind == "exit"} == {"out of memory"}


def test_a_worker_over_its_memory_is_recycled_between_requests() -> None:
    with WorkerPool("general", 1, memory_mb=120, heartbeat_s=0.1) as pool:
        first = tool(pool, "hog", mb=150)  # answered, then recycled
        assert wait_until(lambda: full(pool) and pool.pids[0] != first)
        assert tool(pool, "pid") != first
        assert [(e.kind, e.cause) for e in pool.events if e.kind == "recycle"] == [("recycle", "memory")]


def test_workers_are_recycled_after_max_requests() -> None:
    with WorkerPool("general", 1, max_requests=3, heartbeat_s=0.1) as pool:
        pids = []
        for _ in range(7):
            assert wait_until(lambda: full(pool))
            pids.append(tool(pool, "pid"))
        assert len(set(pids[:3])) == 1 and len(set(pids[3:6])) == 1 and pids[0] != pids[3] != pids[6]
        assert sum(e.kind == "recycle" for e in pool.events) == 2


def test_close_is_graceful_and_leaves_nothing_behind() -> None:
    pool = WorkerPool("general", 2)
    pids = pool.pids
    names = [p for w in pool._workers.values() for p in (w.requests.name, w.responses.name, w.status.name)]
    pool.close()
    pool.close()  # idempotent
    assert not any(alive(p) for p in pids)
    assert not any(Path("/dev/shm", n.lstrip("/")).exists() for n in names)
    with pytest.raises(WorkerError, match="closed"):
        pool.call("ping")


def test_close_kills_a_worker_that_will_not_stop() -> None:
    pool = WorkerPool("general", 1, grace_s=0.5)
    with ThreadPoolExecutor(1) as threads:
        busy = threads.submit(tool, pool, "nap", seconds=30)
        assert wait_until(lambda: not pool._idle)
        started = time.monotonic()
        pid = pool.pids[0]
        pool.close()
        assert time.monotonic() - started < 10
        assert not alive(pid)
        with pytest.raises(Exception):
            busy.result(timeout=10)


def test_workers_exit_when_the_parent_is_killed(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import sys, time
        from dspex.workers.pool import WorkerPool
        pool = WorkerPool("general", 2)
        print(" ".join(map(str, pool.pids)), flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              stderr=subprocess.DEVNULL)  # its resource tracker reports the rings it frees
    with parent:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
        parent.kill()
        parent.wait(10)
        assert wait_until(lambda: not any(alive(p) for p in pids), timeout=10)


def test_a_worker_that_cannot_start_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/bin/false")
    with pytest.raises(WorkerError, match="did not start"):
        WorkerPool("general", 1, start_timeout_s=5)


@pytest.mark.parametrize("code,hung,cause", [
    (-signal.SIGSEGV, False, "segfault"), (-signal.SIGBUS, False, "segfault"), (-signal.SIGKILL, False, "killed"),
    (-signal.SIGTERM, False, "killed"), (3, False, "out of memory"), (1, False, "error"), (None, False, "error"),
    (-signal.SIGKILL, True, "hung")])
def test_exit_causes(code: int | None, hung: bool, cause: str) -> None:
    assert classify_exit(code, hung) == cause
