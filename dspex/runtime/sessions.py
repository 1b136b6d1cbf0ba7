"""Sessions: stateful conversations over a runtime, persisted so that they survive workers and restarts.

A session has a history (one turn per call: what was asked, what came back), var overrides of its own, and,
with worker pools on, one worker slot of the general pool that every one of its dspy steps and tools runs on
(strict affinity), where its dspy modules are kept apart from other sessions'. Its record (history and vars)
is written to ``$DSPEX_HOME/sessions.sqlite`` after every turn, so a replaced worker rebuilds the session's
modules from it on the next call and a restarted runtime resumes the session by its id.

A signature or pipeline input named ``history`` that a call leaves out is given the session's history: a
list of ``{"call", "inputs", "outputs"}`` turns (``call`` names the pipeline or signature), oldest first.
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import msgpack

from dspex.errors import DSPexError
from dspex.ir.program import Pipeline, Signature
from dspex.runtime.config import Config, ensure_home

if TYPE_CHECKING:
    from dspex.runtime.runtime import Runtime

__all__ = ["Session", "SessionStore", "SessionError", "SESSIONS_FILE", "HISTORY_INPUT"]

SESSIONS_FILE = "sessions.sqlite"
HISTORY_INPUT = "history"
_SCHEMA = "CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, record BLOB NOT NULL, updated REAL NOT NULL)"


class SessionError(DSPexError):
    """A session record cannot be read (the file is damaged or not a DSPex sessions file)."""

    code = "SESSION"


class SessionStore:
    """Session records in one SQLite file (WAL, private to the user), msgpack-encoded, never pickled."""

    def __init__(self, path: Path):
        self.path = path
        try:  # created private: never readable by others, not even between creation and a chmod
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self.live: weakref.WeakValueDictionary[str, Session] = weakref.WeakValueDictionary()  # see Runtime.session
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)
            self._db.execute("SELECT id, record, updated FROM sessions LIMIT 0")  # a table of another shape fails here
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise SessionError(f"{path}: not a sessions file ({e})") from None

    @classmethod
    def from_config(cls, config: Config) -> "SessionStore":
        return cls(ensure_home(config) / SESSIONS_FILE)

    def load(self, session_id: str) -> dict[str, Any] | None:
        """The record of ``session_id`` (``{"history": [turn, ...], "vars": {name: value}}``), None if there is none."""
        try:
            with self._lock:
                row = self._db.execute("SELECT record FROM sessions WHERE id = ?", (session_id,)).fetchone()
        except sqlite3.DatabaseError as e:
            raise SessionError(f"{self.path}: cannot read session {session_id!r} ({e})") from None
        if row is None:
            return None
        try:
            record = msgpack.unpackb(row[0], raw=False, strict_map_key=False)
        except (ValueError, TypeError, msgpack.UnpackException) as e:
            raise SessionError(f"{self.path}: session {session_id!r} is damaged ({type(e).__name__})") from None
        history, variables = (record.get("history", []), record.get("vars", {})) if isinstance(record, dict) else (0, 0)
        if not (isinstance(history, list) and all(isinstance(t, dict) for t in history)
                and isinstance(variables, dict) and all(isinstance(k, str) for k in variables)):
            raise SessionError(f"{self.path}: session {session_id!r} is damaged (not a session record)")
        return {"history": history, "vars": variables}

    def save(self, session_id: str, record: Mapping[str, Any]) -> None:
        data = msgpack.packb(dict(record), use_bin_type=True)
        with self._lock:  # one statement: SQLite makes it atomic
            self._db.execute("INSERT OR REPLACE INTO sessions (id, record, updated) VALUES (?, ?, ?)",
                             (session_id, data, time.time()))

    def delete(self, session_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT id FROM sessions ORDER BY updated")]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Session:
    """One session of ``runtime``; use ``run``/``call`` (or ``arun``/``acall``) as on the runtime itself."""

    def __init__(self, runtime: "Runtime", session_id: str, store: SessionStore):
        self.runtime, self.id, self.store = runtime, session_id, store
        record = store.load(session_id) or {}
        self.history: list[dict[str, Any]] = list(record.get("history", []))
        self.vars: dict[str, Any] = dict(record.get("vars", {}))
        self._lock = threading.Lock()

    @property
    def resumed(self) -> bool:
        """Whether this session had turns before this object was made."""
        return bool(self.history)

    def set_var(self, name: str, value: Any) -> None:
        """Override var ``name`` for this session only (kept with the session)."""
        self.vars[name] = value
        self.save()

    async def arun(self, pipeline: Pipeline, /, **inputs: Any) -> dict[str, Any]:
        inputs = self._with_history({f.name for f in pipeline.inputs}, inputs)
        variables = {**self.runtime.var_values, **self.vars}
        outputs = await self.runtime.execute(pipeline, inputs, variables, session=self.id)
        self._turn(pipeline.name, inputs, outputs)
        return outputs

    def run(self, pipeline: Pipeline, /, **inputs: Any) -> dict[str, Any]:
        with self._lock:  # one turn at a time: the history is a sequence
            return self.runtime._submit(self.arun(pipeline, **inputs))

    async def acall(self, signature: Signature, module: str = "predict", **inputs: Any) -> dict[str, Any]:
        inputs = self._with_history({f.name for f in signature.inputs}, inputs)
        variables = {**self.runtime.var_values, **self.vars}
        outputs = await self.runtime.acall_in(self.id, variables, signature, module, inputs)
        self._turn(signature.name, inputs, outputs)
        return outputs

    def call(self, signature: Signature, module: str = "predict", **inputs: Any) -> dict[str, Any]:
        with self._lock:
            return self.runtime._submit(self.acall(signature, module, **inputs))

    def reset(self) -> None:
        """Forget the history (vars stay)."""
        self.history.clear()
        self.save()

    def save(self) -> None:
        self.store.save(self.id, {"history": self.history, "vars": self.vars})

    def _with_history(self, accepted: set[str], inputs: dict[str, Any]) -> dict[str, Any]:
        if HISTORY_INPUT in accepted and HISTORY_INPUT not in inputs:
            return {**inputs, HISTORY_INPUT: [dict(turn) for turn in self.history]}
        return inputs

    def _turn(self, name: str, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
        asked = {k: v for k, v in inputs.items() if k != HISTORY_INPUT}
        self.history.append({"call": name, "inputs": asked, "outputs": dict(outputs)})
        self.save()

    def __repr__(self) -> str:
        return f"<Session {self.id!r}: {len(self.history)} turns>"
