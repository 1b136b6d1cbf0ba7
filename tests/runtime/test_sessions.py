"""Sessions over a real HTTP server: history injected into an input named ``history``, per-session vars, the
record persisted (privately) after each turn and resumed by a new runtime, strict worker affinity that
survives a ``kill -9`` of the session's worker, a damaged file named as such, and turns from many threads."""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

import dspex
from dspex.lm.openai import OpenAILM
from dspex.runtime.runtime import Runtime
from dspex.runtime.sessions import SESSIONS_FILE, Session, SessionError
from dspex.workers.pool import WorkerPool
from tests.servers.openai_stub import OpenAIStub

pytest.importorskip("dspy")

SOURCE = """
type Turn {
  call: str
  inputs: dict[str, str]
  outputs: dict[str, str]
}
var style: str = "plain"
signature Chat {
  \"\"\"Reply to the message. Style: {{style}}\"\"\"
  in  message: str
  in  history: list[Turn] = []
  out reply: str
}
tool pid() -> int = python("tests.workers.tools:pid")
pipeline chat(message: str, history: list[Turn] = []) -> (reply: str, mode: str) {
  reply = predict Chat(message = message, history = history).reply with (engine = "dspy")
  mode  = style
}
pipeline where(message: str) -> (reply: str, who: int) {
  reply = predict Chat(message = message).reply with (engine = "dspy")
  who   = call pid()
}
"""
PROGRAM = dspex.compile_source(SOURCE)
CHAT, WHERE = PROGRAM.pipelines["chat"], PROGRAM.pipelines["where"]


def answer(body: dict[str, Any]) -> str:
    """``STYLE|TURNS|MESSAGE``: the style the instructions carried, how many turns of history the prompt
    carried, and the message; in DSPy's ChatAdapter format, or as JSON for the native engine."""
    system, last = (str(m["content"]) for m in (body["messages"][0], body["messages"][-1]))
    style = re.search(r"Style: (\S+)", system)
    native = "Reply with a JSON object" in system
    if native:
        message = re.search(r'^message: "(.*?)"$', last, re.MULTILINE)
        history = re.search(r"^history: (.*)$", last, re.MULTILINE)
    else:
        message = re.search(r"\[\[ ## message ## \]\]\n(.*?)\n", last)
        history = re.search(r"\[\[ ## history ## \]\]\n(.*?)\n", last)
    turns = history.group(1).count('"call"') if history else 0
    reply = f"{style.group(1) if style else '?'}|{turns}|{message.group(1) if message else '?'}"
    return json.dumps({"reply": reply}) if native else f"[[ ## reply ## ]]\n{reply}\n\n[[ ## completed ## ]]"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DSPEX_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub(answer) as s:
        yield s


@pytest.fixture
def rt(stub: OpenAIStub) -> Iterator[Runtime]:
    with Runtime(lm=OpenAILM("m", stub.base_url), cache=False) as r:
        yield r


@pytest.fixture
def pooled(stub: OpenAIStub) -> Iterator[Runtime]:
    with Runtime(lm=OpenAILM("m", stub.base_url), workers=2, cache=False) as r:
        yield r


def general(rt: Runtime) -> WorkerPool:
    assert rt.pools is not None
    pool = rt.pools.get("general")
    assert isinstance(pool, WorkerPool)
    return pool


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


# -- history and vars -----------------------------------------------------------------------------------
def test_history_is_injected_turn_by_turn(rt: Runtime) -> None:
    session = rt.session("a")
    assert not session.resumed and session.history == []
    assert session.run(CHAT, message="hi")["reply"] == "plain|0|hi"
    assert session.run(CHAT, message="again")["reply"] == "plain|1|again"
    assert session.history == [
        {"call": "chat", "inputs": {"message": "hi"}, "outputs": {"reply": "plain|0|hi", "mode": "plain"}},
        {"call": "chat", "inputs": {"message": "again"}, "outputs": {"reply": "plain|1|again", "mode": "plain"}}]
    signature = PROGRAM.signatures["Chat"]  # a single step (native engine) gets the history too, and is a turn
    session.set_var("style", "plain")  # outside a pipeline, no var has a default
    assert session.call(signature, message="solo") == {"reply": "plain|2|solo"}
    assert session.history[-1] == {"call": "Chat", "inputs": {"message": "solo"}, "outputs": {"reply": "plain|2|solo"}}
    assert session.run(CHAT, message="mine", history=[])["reply"] == "plain|0|mine"  # a given history wins
    assert len(session.history) == 4
    assert rt.run(CHAT, message="outside")["reply"] == "plain|0|outside"  # no session, no history
    session.reset()
    assert session.history == [] and session.run(CHAT, message="anew")["reply"] == "plain|0|anew"


def test_vars_are_per_session(rt: Runtime) -> None:
    pirate, plain = rt.session("pirate"), rt.session("plain")
    pirate.set_var("style", "arr")
    assert pirate.run(CHAT, message="hi") == {"reply": "arr|0|hi", "mode": "arr"}  # instructions and expressions
    assert plain.run(CHAT, message="hi") == {"reply": "plain|0|hi", "mode": "plain"}
    assert rt.run(CHAT, message="hi") == {"reply": "plain|0|hi", "mode": "plain"}
    rt.var_values["style"] = "terse"  # a runtime var is the session's default; the session's own wins
    assert plain.run(CHAT, message="x")["mode"] == "terse" and pirate.run(CHAT, message="x")["mode"] == "arr"


def test_the_same_id_is_the_same_session(rt: Runtime) -> None:
    assert rt.session("a") is rt.session("a") and rt.session("a") is not rt.session("b")


# -- persistence ----------------------------------------------------------------------------------------
def test_the_record_is_persisted_privately_and_resumed_by_a_new_runtime(stub: OpenAIStub, home: Path) -> None:
    with Runtime(lm=OpenAILM("m", stub.base_url), cache=False) as first:
        session = first.session("resumable")
        session.set_var("style", "arr")
        session.run(CHAT, message="one")
        session.run(CHAT, message="two")
        path = home / SESSIONS_FILE
        for name in (path, path.with_name(path.name + "-wal")):
            if name.exists():
                assert stat.S_IMODE(name.stat().st_mode) == 0o600, name
        with sqlite3.connect(path) as db:  # a plain msgpack record, readable without DSPex
            (data,) = db.execute("SELECT record FROM sessions WHERE id = 'resumable'").fetchone()
        assert msgpack.unpackb(data)["vars"] == {"style": "arr"} and len(msgpack.unpackb(data)["history"]) == 2
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    with Runtime(lm=OpenAILM("m", stub.base_url), cache=False) as second:
        again = second.session("resumable")
        assert again.resumed and len(again.history) == 2 and again.vars == {"style": "arr"}
        assert again.history[1]["outputs"]["reply"] == "arr|1|two"
        assert again.run(CHAT, message="three")["reply"] == "arr|2|three"
        assert not second.session("other").resumed


def test_a_damaged_sessions_file_is_a_session_error(rt: Runtime, home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / SESSIONS_FILE).write_bytes(b"this is not a database" * 100)
    with pytest.raises(SessionError, match="not a sessions file"):
        rt.session("a")


@pytest.mark.parametrize("record", [b"\xc1\xc1", b"\x93\x01", msgpack.packb({"history": 3}),
                                    msgpack.packb({"history": [], "vars": [1]}), "text, not bytes"])
def test_a_damaged_record_is_a_session_error(stub: OpenAIStub, home: Path, record: Any) -> None:
    with Runtime(lm=OpenAILM("m", stub.base_url), cache=False) as first:
        first.session("a").set_var("style", "arr")
    with sqlite3.connect(home / SESSIONS_FILE) as db:
        db.execute("UPDATE sessions SET record = ? WHERE id = 'a'", (record,))
    with Runtime(lm=OpenAILM("m", stub.base_url), cache=False) as second:
        with pytest.raises(SessionError, match="session 'a' is damaged"):
            second.session("a")
        assert second.session("b").history == []  # other sessions still work


def test_a_sessions_file_of_another_shape_is_a_session_error(rt: Runtime, home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(home / SESSIONS_FILE) as db:
        db.execute("CREATE TABLE sessions (id TEXT PRIMARY KEY, something TEXT)")
    with pytest.raises(SessionError):
        rt.session("a")


# -- concurrency ----------------------------------------------------------------------------------------
def test_concurrent_turns_from_threads_keep_the_history_consistent(rt: Runtime) -> None:
    errors: list[BaseException] = []

    def talk(thread: int) -> None:
        try:
            for n in range(5):
                rt.session("shared").run(CHAT, message=f"t{thread}n{n}")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=talk, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    history = rt.session("shared").history
    assert len(history) == 20
    assert sorted(turn["inputs"]["message"] for turn in history) == sorted(f"t{t}n{n}" for t in range(4)
                                                                           for n in range(5))
    for position, turn in enumerate(history):  # each turn saw exactly the turns before it
        assert turn["outputs"]["reply"] == f"plain|{position}|{turn['inputs']['message']}"
    for thread in range(4):  # and each thread's turns are in its own order
        mine = [turn["inputs"]["message"] for turn in history if turn["inputs"]["message"].startswith(f"t{thread}")]
        assert mine == [f"t{thread}n{n}" for n in range(5)]
    stored = rt.session("shared").store.load("shared")
    assert stored is not None and stored["history"] == history


# -- workers: strict affinity ---------------------------------------------------------------------------
def test_a_session_keeps_its_worker_and_two_sessions_get_different_slots(pooled: Runtime) -> None:
    a, b = pooled.session("a"), pooled.session("b")
    pids_a = {a.run(WHERE, message=f"a{n}")["who"] for n in range(4)}
    pids_b = {b.run(WHERE, message=f"b{n}")["who"] for n in range(4)}
    assert len(pids_a) == 1 and len(pids_b) == 1 and pids_a != pids_b
    assert pooled.pools is not None
    slot_a, slot_b = pooled.pools.slot_for("a"), pooled.pools.slot_for("b")
    assert slot_a != slot_b
    pool = general(pooled)
    info_a, info_b = pool.call("info", slot=slot_a), pool.call("info", slot=slot_b)
    assert info_a["pid"] in pids_a and info_a["sessions"] == ["a"] and info_a["dspy_modules"] == 1
    assert info_b["pid"] in pids_b and info_b["sessions"] == ["b"]
    assert os.getpid() not in pids_a | pids_b


def test_a_session_survives_a_kill_of_its_worker(pooled: Runtime) -> None:
    session = pooled.session("a")
    first = session.run(WHERE, message="one")
    assert session.run(CHAT, message="two")["reply"] == "plain|1|two"
    pool = general(pooled)
    assert pooled.pools is not None
    slot = pooled.pools.slot_for("a")
    generation = pool.generation(slot)
    os.kill(first["who"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while alive(first["who"]) and time.monotonic() < deadline:
        time.sleep(0.01)

    third = session.run(CHAT, message="three")  # runs on the replacement, with the history from the parent
    assert third["reply"] == "plain|2|three"
    after = session.run(WHERE, message="four")
    assert after["who"] != first["who"] and after["who"] in pool.pids
    assert pooled.pools.slot_for("a") == slot and pool.generation(slot) == generation + 1
    info = pool.call("info", slot=slot)
    assert info["pid"] == after["who"] and info["sessions"] == ["a"] and info["dspy_modules"] >= 1  # rebuilt there
    assert len(session.history) == 4 and session.store.load("a") == {"history": session.history, "vars": {}}
    exits = [e for e in pool.events if e.kind == "exit"]
    assert [(e.slot, e.pid, e.cause) for e in exits] == [(slot, first["who"], "killed")]


def test_a_session_is_a_session_object(rt: Runtime) -> None:
    session = rt.session("x")
    assert isinstance(session, Session) and repr(session) == "<Session 'x': 0 turns>"
