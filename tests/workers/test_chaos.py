"""Chaos: a 2,000-row batch through a dspy-engine step and a ``python(...)`` tool on ``Runtime(workers=2)``,
against an OpenAI-compatible server in its own process, while a killer thread ``kill -9``s a random live
worker of the general pool at a fixed interval. Every row must come back exactly once with its own right
answer, every exit must be recorded as ``killed``, and the pool must be whole again once the killer stops.

The interval is the issue's 0.5 s (``KILL_EVERY_S``). That holds because replacements are forked from the
pool's zygote, which has dspy imported: one is enlisted some 15 ms after its predecessor's death and serves its
first dspy step some 60-90 ms later (``test_a_replacement_serves_its_first_dspy_step``), against 0.35 s and
1 s for a fresh interpreter, which at 0.5 s lost rows (``lost 4 workers``) on a busy machine.
"""
from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dspex
from dspex.engines.base import StepCall
from dspex.lm.openai import OpenAILM
from dspex.runtime.runtime import Runtime
from dspex.workers.pool import WorkerPool
from dspex.workers.remote import step_request
from tests.workers.support import alive, full, wait_until

pytest.importorskip("dspy")

ROOT = Path(__file__).resolve().parents[2]
ROWS = 2000
WORKERS = 2
KILL_EVERY_S = 0.5
CONCURRENCY = 16

PROGRAM = dspex.compile_source("""
signature Shout {
  in  text: str
  out loud: str
}
tool add(a: int, b: int) -> int = python("tests.workers.tools:add")
pipeline shout(text: str, n: int) -> (loud: str, total: int) {
  loud  = predict Shout(text = text).loud with (engine = "dspy")
  total = call add(a = n, b = 1)
}
""")
SHOUT = PROGRAM.pipelines["shout"]


def answer(body: dict[str, Any]) -> str:
    """The stub's answer (``--answer-fn``): the text input upper-cased, in DSPy's ChatAdapter format."""
    found = re.search(r"\[\[ ## text ## \]\]\n(.*?)\n", str(body["messages"][-1]["content"]))
    return f"[[ ## loud ## ]]\n{(found.group(1) if found else '?').upper()}\n\n[[ ## completed ## ]]"





@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPEX_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The stub as a child process, so serving 2,000 requests does not take this process's GIL."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.servers.openai_stub", "--answer-fn",
                             "tests.workers.test_chaos:answer"], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        yield proc.stdout.readline().strip()
    finally:
        proc.stdin.close()
        proc.stdout.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - it serves until stdin closes
            proc.kill()
            proc.wait()


def general(rt: Runtime) -> WorkerPool:
    assert rt.pools is not None
    pool = rt.pools.get("general")
    assert isinstance(pool, WorkerPool)
    return pool


class Killer(threading.Thread):
    """``kill -9`` a random live worker of ``pool`` every ``every`` seconds until stopped."""

    def __init__(self, pool: WorkerPool, every: float):
        super().__init__(name="chaos-killer", daemon=True)
        self.pool, self.every = pool, every
        self.killed: list[int] = []
        self.halt = threading.Event()

    def run(self) -> None:
        chooser = random.Random(1234)
        while not self.halt.wait(self.every):
            pids = [p for p in self.pool.pids if alive(p)]
            if not pids:
                continue
            victim = chooser.choice(pids)
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:  # it died in between
                continue
            self.killed.append(victim)

    def stop(self) -> None:
        self.halt.set()
        self.join()


@pytest.mark.slow
def test_a_batch_survives_a_worker_killer(server: str) -> None:
    rows = [{"id": i, "text": f"row {i}", "n": i} for i in range(ROWS)]
    with Runtime(lm=OpenAILM("m", server), workers=WORKERS, cache=False) as rt:
        pool = general(rt)
        first = set(pool.pids)
        killer = Killer(pool, KILL_EVERY_S)
        started = time.monotonic()
        killer.start()
        try:
            results = list(rt.batch(SHOUT, rows, concurrency=CONCURRENCY))
        finally:
            killer.stop()
        elapsed = time.monotonic() - started
        print(f"\nchaos: {ROWS} rows in {elapsed:.1f} s, {len(killer.killed)} workers killed")

        assert len(results) == ROWS and [r.id for r in results] == list(range(ROWS))  # each row once, in order
        failed = [r for r in results if not r.ok]
        assert not failed, f"{len(failed)} rows failed, e.g. {failed[:3]}"
        wrong = [r for r in results if r.outputs != {"loud": f"ROW {r.id}", "total": r.id + 1}]
        assert not wrong, f"{len(wrong)} rows have another row's answer, e.g. {wrong[:3]}"

        assert killer.killed, "the batch ended before the killer struck"
        assert wait_until(lambda: full(pool), timeout=30)  # whole again once the killer stops
        exits = [e for e in pool.events if e.kind == "exit"]
        assert sorted(e.pid for e in exits) == sorted(killer.killed)
        assert {e.cause for e in exits} == {"killed"} and {e.exitcode for e in exits} == {-signal.SIGKILL}
        starts = [e for e in pool.events if e.kind == "start"]
        assert len(starts) == WORKERS + len(exits) and {e.slot for e in starts} == set(range(WORKERS))
        assert not set(pool.pids) & set(killer.killed)
        last = set(pool.pids)
    assert not any(alive(p) for p in last | first)


def test_a_replacement_serves_its_first_dspy_step(server: str) -> None:
    """The time from ``kill -9`` to a replacement's first dspy step: what the killer's interval must exceed."""
    lm = OpenAILM("m", server)
    spec = lm.worker_spec()
    assert spec is not None

    def step(text: str) -> Any:
        request = step_request(StepCall(PROGRAM.signatures["Shout"], "predict", {"text": text}), spec)
        return pool.call("dspy_step", request, slot=0, timeout=60)["outputs"]

    with WorkerPool("general", 1) as pool:
        assert step("warm") == {"loud": "WARM"}
        timings = []
        for n in range(2):
            victim = pool.pids[0]
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            assert wait_until(lambda gone=victim: pool.pids and pool.pids[0] != gone and alive(pool.pids[0]),
                              timeout=30, interval=0.002)  # fine enough to time a replacement
            enlisted = time.monotonic() - killed_at
            assert step(f"after {n}") == {"loud": f"AFTER {n}"}
            timings.append((enlisted, time.monotonic() - killed_at))
        print("\nreplacement: " + ", ".join(f"started in {a:.3f} s, first dspy step at {b:.3f} s" for a, b in timings))
        assert all(b < 10 for _, b in timings)  # ~0.1 s on a quiet machine; bounded loosely for a busy one
        assert [e.cause for e in pool.events if e.kind == "exit"] == ["killed", "killed"]
