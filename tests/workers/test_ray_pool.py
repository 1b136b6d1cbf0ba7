"""The Ray backend: the same worker operations as Ray actors, with the local pool's supervision (dispatch,
slot affinity, a killed actor replaced and its request re-run, recycling, shutdown), and a compiled program
that runs unchanged on it. One local Ray instance serves the whole module."""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="Ray cannot be installed on this platform")

import dspex
from dspex.errors import WorkerCrashedError, WorkerError, WorkerTaskError
from dspex.ir.codec import encode_tool
from dspex.ir.program import ToolDecl
from dspex.ir.types import ANY
from dspex.lm.openai import OpenAILM
from dspex.workers import ray_pool
from dspex.workers.ray_pool import RayPool, classify_ray_error
from tests.servers.openai_stub import OpenAIStub
from tests.workers.support import alive, full, tool, wait_until


@pytest.fixture(scope="module", autouse=True)
def ray_instance() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def pool(ray_instance: None) -> Iterator[RayPool]:
    with RayPool("general", 2) as p:
        yield p






def exits(pool: RayPool) -> list[str]:
    return [e.cause for e in pool.events if e.kind == "exit"]


def test_actors_start_and_answer(pool: RayPool) -> None:
    assert len(set(pool.pids)) == 2 and all(alive(p) for p in pool.pids)
    assert [e.kind for e in pool.events][:2] == ["start", "start"]
    assert pool.call("ping") is None
    value = {"a": [1, 2.5, "x", b"\x00", None], "nested": {"k": True}}
    assert pool.call("echo", {"value": value}) == value
    assert tool(pool, "add", a=2, b=3) == 5
    assert pool.call("info")["pid"] in pool.pids


def test_errors_come_back_as_their_type_and_the_actor_stays(pool: RayPool) -> None:
    before = set(pool.pids)
    with pytest.raises(WorkerTaskError, match="ValueError: bad input") as info:
        tool(pool, "fail", message="bad input")
    assert info.value.type == "ValueError"
    with pytest.raises(WorkerTaskError, match="unknown worker operation 'nope'"):
        pool.call("nope")
    lock = ToolDecl("lock", (), ANY, "threading:Lock")  # a result that is not msgpack data
    with pytest.raises(WorkerTaskError, match="TypeError"):
        pool.call("tool", {"tool": encode_tool(lock), "args": {}}, timeout=60)
    assert set(pool.pids) == before


def test_acall_runs_on_an_actor(pool: RayPool) -> None:
    import asyncio

    async def both() -> list[Any]:
        return list(await asyncio.gather(pool.acall("echo", {"value": 1}), pool.acall("echo", {"value": 2})))

    assert asyncio.run(both()) == [1, 2]


def test_requests_go_to_idle_actors_and_a_slot_keeps_its_actor(pool: RayPool) -> None:
    with ThreadPoolExecutor(2) as threads:
        pids = set(threads.map(lambda _: tool(pool, "nap", seconds=0.5), range(2)))
    assert pids == set(pool.pids)
    for slot in (0, 1):
        assert len({tool(pool, "pid", slot=slot) for _ in range(5)}) == 1
    assert tool(pool, "pid", slot=0) != tool(pool, "pid", slot=1)


def test_an_actor_that_kills_itself_is_replaced_and_its_request_answers_once(pool: RayPool, tmp_path: Path) -> None:
    before, seen = set(pool.pids), len(pool.events)
    assert tool(pool, "kill_once", marker=str(tmp_path / "marker")) == "survived"
    new = list(pool.events)[seen:]
    lost = [e for e in new if e.kind == "exit"]
    assert [e.cause for e in lost] == ["killed"] and lost[0].pid in before
    assert wait_until(lambda: full(pool) and not alive(lost[0].pid))
    assert len(set(pool.pids) - before) == 1
    assert pool.generation(lost[0].slot) == 1
    assert tool(pool, "add", a=1, b=1) == 2


def test_an_actor_killed_from_outside_mid_request_is_replaced_and_the_request_re_runs(pool: RayPool) -> None:
    assert wait_until(lambda: full(pool))
    victim = tool(pool, "pid", slot=0)
    generation, seen = pool.generation(0), len(pool.events)
    with ThreadPoolExecutor(1) as threads:
        busy = threads.submit(tool, pool, "nap", 0, 60, seconds=1.0)
        assert wait_until(lambda: 0 not in pool._idle)
        time.sleep(0.2)  # the nap has started in the actor
        os.kill(victim, signal.SIGKILL)
        answered = busy.result(timeout=60)
    assert answered != victim and answered in pool.pids  # the re-run's answer, from the slot's new actor
    assert pool.generation(0) == generation + 1
    assert [(e.kind, e.slot, e.pid, e.cause) for e in list(pool.events)[seen:] if e.kind == "exit"] == [
        ("exit", 0, victim, "killed")]
    assert not alive(victim)


def test_a_request_that_always_crashes_fails_with_the_cause(ray_instance: None) -> None:
    with RayPool("general", 1, max_reruns=1) as pool:
        with pytest.raises(WorkerCrashedError, match="lost 2 workers; the last one ended: out of memory") as info:
            tool(pool, "out_of_memory")
        assert info.value.cause == "out of memory" and info.value.exitcode is None
        assert exits(pool) == ["out of memory", "out of memory"]
        assert wait_until(lambda: full(pool))
        with pytest.raises(WorkerCrashedError, match="ended: hung"):
            pool.max_reruns = 0
            tool(pool, "nap", timeout=0.5, seconds=30)
        assert wait_until(lambda: full(pool))
        assert pool.generation(0) == 3 and tool(pool, "add", a=1, b=2) == 3


def test_ray_errors_are_classified() -> None:
    generic = ("The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR Worker exit "
               "detail: ... (1) the process was killed by the OOM killer due to high memory usage, ...")
    assert classify_ray_error(ray.exceptions.RayActorError(error_msg=generic)) == "killed"
    oom = ("The actor is dead because its worker process has died. Worker exit type: NODE_OUT_OF_MEMORY Worker "
           "exit detail: Task was killed due to the node running out of memory.")
    assert classify_ray_error(ray.exceptions.RayActorError(error_msg=oom)) == "out of memory"
    assert classify_ray_error(ray.exceptions.OutOfMemoryError("evicted")) == "out of memory"


def test_actors_are_recycled_over_memory_and_after_max_requests(ray_instance: None) -> None:
    with RayPool("general", 1, memory_mb=1) as pool:  # every actor is over 1 MiB: recycled after each answer
        first = tool(pool, "pid")
        assert wait_until(lambda: full(pool) and pool.pids[0] != first)
        assert tool(pool, "pid") not in (first, None)
        assert [(e.kind, e.cause) for e in pool.events if e.kind == "recycle"][:1] == [("recycle", "memory")]
        assert exits(pool) == []
    with RayPool("general", 1, max_requests=2) as pool:
        pids = []
        for _ in range(4):
            assert wait_until(lambda: full(pool))
            pids.append(tool(pool, "pid"))
        assert pids[0] == pids[1] != pids[2] == pids[3]
        assert sum(e.kind == "recycle" for e in pool.events) == 2


def test_close_leaves_no_actor_alive(ray_instance: None) -> None:
    pool = RayPool("general", 2)
    pids = pool.pids
    assert all(alive(p) for p in pids)
    pool.close()
    pool.close()  # idempotent
    assert wait_until(lambda: not any(alive(p) for p in pids))
    with pytest.raises(WorkerError, match="closed"):
        pool.call("ping")
    assert ray.is_initialized()  # the pool did not start Ray, so it leaves it running


def test_ray_is_shut_down_by_the_last_pool_that_started_it(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    state = {"up": False}

    def init(**options: Any) -> None:
        calls.append(f"init {options.get('address')}")
        state["up"] = True

    def shutdown() -> None:
        calls.append("shutdown")
        state["up"] = False

    monkeypatch.setattr(ray_pool.ray, "is_initialized", lambda: state["up"])
    monkeypatch.setattr(ray_pool.ray, "init", init)
    monkeypatch.setattr(ray_pool.ray, "shutdown", shutdown)
    assert ray_pool._use_ray(None) and ray_pool._use_ray("auto")  # the second pool shares the first's instance
    ray_pool._release_ray()
    assert calls == ["init None"]
    ray_pool._release_ray()
    assert calls == ["init None", "shutdown"]
    state["up"] = True  # Ray started by someone else: used, never shut down
    assert not ray_pool._use_ray("ray://example:10001")
    assert calls == ["init None", "shutdown"]


def chat(**fields: Any) -> str:
    """An answer in DSPy's ChatAdapter format."""
    return "".join(f"[[ ## {k} ## ]]\n{v}\n\n" for k, v in fields.items()) + "[[ ## completed ## ]]"


SOURCE = '''
signature Shout {
  in text: str
  out loud: str
}
tool add(a: int, b: int) -> int = python("tests.workers.tools:add")
pipeline shout(text: str, a: int, b: int) -> (loud: str, total: int) {
  loud = predict Shout(text = text).loud with (engine = "dspy")
  total = call add(a = a, b = b)
}
'''


def test_a_compiled_program_runs_unchanged_on_ray(ray_instance: None) -> None:
    pytest.importorskip("dspy")
    program = dspex.compile_source(SOURCE)
    with OpenAIStub(answer=lambda body: chat(loud="HELLO")) as stub:
        here = dspex.Runtime(lm=OpenAILM("m", base_url=stub.base_url), cache=False)
        try:
            expected = here.run(program.pipelines["shout"], text="hello", a=2, b=3)
        finally:
            here.close()
        calls_here = len(stub.requests)
        remote = dspex.Runtime(lm=OpenAILM("m", base_url=stub.base_url), workers=2, cache=False,
                               config={"runtime": {"backend": "ray"}})
        try:
            assert remote.run(program.pipelines["shout"], text="hello", a=2, b=3) == expected
            assert remote.pools is not None
            general = remote.pools.started["general"]
            assert isinstance(general, RayPool) and general.size == 2
            infos = [general.call("info", slot=slot) for slot in range(2)]
            assert any(info["dspy_imported"] for info in infos)  # the dspy step ran in an actor
            assert all(info["pid"] != os.getpid() for info in infos)
        finally:
            remote.close()
    assert expected == {"loud": "HELLO", "total": 5}
    assert calls_here >= 1 and len(stub.requests) == 2 * calls_here
