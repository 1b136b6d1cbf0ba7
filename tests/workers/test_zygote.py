"""The pool's fork server: workers are children of a template that imported dspy once, every way a child ends
is reported as ``subprocess`` would report it, nothing outlives a killed pool or a killed zygote, and the
fresh-interpreter fallback (no ``os.fork``, or a zygote that cannot start) still gives a working pool."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dspex.errors import WorkerCrashedError
from dspex.ir.codec import encode_tool
from dspex.ir.program import ToolDecl
from dspex.ir.types import ANY
from dspex.workers.pool import WorkerPool
from dspex.workers.zygote import Forked
from tests.workers.support import alive, full, wait_until

ROOT = Path(__file__).resolve().parents[2]


def run_tool(pool: WorkerPool, target: str, slot: int | None = None, **args: Any) -> Any:
    decl = ToolDecl(target.rpartition(":")[2], (), ANY, target)
    return pool.call("tool", {"tool": encode_tool(decl), "args": args}, slot=slot, timeout=60)


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and parent_of(int(entry.name)) == pid:
                found.add(int(entry.name))
        except OSError:  # it exited while we looked
            pass
    return found





def start_a_thread() -> None:
    """A preload that leaves a thread running, which a zygote must refuse (used as ``module:function``)."""
    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()


@pytest.fixture(scope="module")
def general() -> Iterator[WorkerPool]:
    """A general pool with its default preload (dspy), shared by the tests that only look."""
    with WorkerPool("general", 2, heartbeat_s=0.1) as pool:
        yield pool


def test_workers_are_children_of_the_zygote(general: WorkerPool) -> None:
    zygote = general._zygote
    assert zygote is not None and zygote.alive and parent_of(zygote.pid) == os.getpid()
    assert all(isinstance(w.proc, Forked) for w in general._workers.values())
    assert [parent_of(pid) for pid in general.pids] == [zygote.pid] * 2
    assert children_of(zygote.pid) == set(general.pids)
    assert not any(children_of(pid) for pid in general.pids)  # no resource tracker of their own, nor anything
    with pytest.raises(subprocess.TimeoutExpired):  # ``Forked`` waits as ``Popen`` does
        general._workers[0].proc.wait(0.01)
    draws = {run_tool(general, "random:random", slot=slot) for slot in range(2)}
    assert len(draws) == 2  # each child has its own random state, not a copy of the template's


def test_a_fresh_worker_has_dspy_imported_before_its_first_dspy_step(general: WorkerPool) -> None:
    for slot in range(2):
        info = general.call("info", slot=slot)
        assert info["dspy_imported"] and info["dspy_modules"] == 0


def test_a_replacement_is_forked_warm_and_quickly() -> None:
    with WorkerPool("general", 1, heartbeat_s=0.1) as pool:
        assert pool._zygote is not None
        victim = pool.pids[0]
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: pool.pids and pool.pids[0] != victim, timeout=10)
        enlisted = time.monotonic() - killed
        assert pool.call("info", slot=0)["dspy_imported"] and parent_of(pool.pids[0]) == pool._zygote.pid
        assert enlisted < 5  # ~15 ms on a quiet machine; bounded loosely for a busy one
        assert [(e.cause, e.exitcode) for e in pool.events if e.kind == "exit"] == [("killed", -signal.SIGKILL)]


@pytest.mark.parametrize("ending,code", [("kill -9", -signal.SIGKILL), ("kill -TERM", -signal.SIGTERM),
                                         ("segfault", -signal.SIGSEGV), ("exit 7", 7), ("stop", 0)])
def test_every_ending_is_reported_as_subprocess_would(ending: str, code: int, tmp_path: Path) -> None:
    with WorkerPool("neural", 1, heartbeat_s=0.1, max_requests=1 if ending == "stop" else 0) as pool:
        proc = pool._workers[0].proc
        assert isinstance(proc, Forked)
        if ending.startswith("kill"):
            os.kill(proc.pid, signal.SIGKILL if ending == "kill -9" else signal.SIGTERM)
        elif ending == "segfault":
            assert run_tool(pool, "tests.workers.tools:segfault_once", marker=str(tmp_path / "m")) == "survived"
        elif ending == "exit 7":
            with pytest.raises(WorkerCrashedError):
                run_tool(pool, "builtins:exit", code=7)  # SystemExit(7), on every worker it is re-run on
        else:
            pool.call("ping")  # its one request: then it is asked to stop, and leaves on its own
        assert proc.wait(10) == code and proc.poll() == proc.returncode == code
        if ending != "stop":
            assert wait_until(lambda: any(e.kind == "exit" and e.pid == proc.pid for e in pool.events))
            assert next(e.exitcode for e in pool.events if e.kind == "exit" and e.pid == proc.pid) == code
        assert wait_until(lambda: full(pool))
        assert pool.call("ping") is None


def test_killing_the_pools_process_kills_the_zygote_and_every_worker() -> None:
    script = textwrap.dedent("""
        import time
        from dspex.workers.pool import WorkerPool
        pool = WorkerPool("general", 2)
        print(pool._zygote.pid, *pool.pids, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              stderr=subprocess.DEVNULL)
    with parent:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 3 and all(alive(p) for p in pids)
        assert parent_of(pids[0]) == parent.pid and {parent_of(p) for p in pids[1:]} == {pids[0]}
        parent.kill()
        parent.wait(10)
        assert wait_until(lambda: not any(alive(p) for p in pids), timeout=10)


def test_a_killed_zygote_takes_its_workers_and_the_pool_starts_another() -> None:
    with WorkerPool("neural", 2, heartbeat_s=0.1) as pool:
        assert pool._zygote is not None
        first, workers = pool._zygote.pid, pool.pids
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: not any(alive(p) for p in workers), timeout=10)
        assert wait_until(lambda: full(pool) and not set(pool.pids) & set(workers))
        assert pool._zygote is not None and pool._zygote.pid != first
        assert {parent_of(p) for p in pool.pids} == {pool._zygote.pid}
        assert pool.call("ping") is None
        assert sorted(e.pid for e in pool.events if e.kind == "exit") == sorted(workers)


def check_fresh_interpreters(pool: WorkerPool) -> None:
    assert pool._zygote is None
    assert all(isinstance(w.proc, subprocess.Popen) for w in pool._workers.values())
    assert {parent_of(p) for p in pool.pids} == {os.getpid()}
    assert pool.call("echo", {"value": 5}) == 5
    victim = pool.pids[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: full(pool) and victim not in pool.pids)
    assert [(e.cause, e.exitcode) for e in pool.events if e.kind == "exit"] == [("killed", -signal.SIGKILL)]


def test_without_fork_workers_are_fresh_interpreters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "fork")
    with WorkerPool("neural", 2, heartbeat_s=0.1) as pool:
        check_fresh_interpreters(pool)


@pytest.mark.parametrize("preload,why", [(("no_such_module_anywhere",), "ModuleNotFoundError"),
                                         (("tests.workers.test_zygote:start_a_thread",), "threads are running")])
def test_a_zygote_that_cannot_start_leaves_fresh_interpreters(preload: tuple[str, ...], why: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dspex.workers"), \
            WorkerPool("general", 2, heartbeat_s=0.1, preload=preload) as pool:
        check_fresh_interpreters(pool)
    assert any(why in r.getMessage() and "fresh interpreters" in r.getMessage() for r in caplog.records)
