"""The operations a worker runs, the same in a local worker process and in a Ray actor.

A ``WorkerState`` lives as long as its worker: it imports dspy once (on the first dspy step), keeps the
dspy modules it built (one ``DspyEngine`` per session, so a session's modules are its own), the LMs it
rebuilt from their ``worker_spec`` and an event loop for their clients. Every argument and result is plain
msgpack data; signatures and tools travel in the IR codec's form.
"""
from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import OrderedDict
from typing import Any, Callable

from dspex.engines.base import StepCall
from dspex.ir.codec import decode_signature, decode_tool
from dspex.lm.base import LM, LMRequest, Message

__all__ = ["WorkerState", "OPS"]

_MAX_SESSIONS = 256  # sessions whose modules a worker keeps; the oldest is rebuilt on its next call


class WorkerState:
    """What one worker keeps between requests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._engines: OrderedDict[str | None, Any] = OrderedDict()
        self._lms: dict[str, LM] = {}

    def handle(self, op: str, args: dict[str, Any]) -> Any:
        handler = OPS.get(op)
        if handler is None:
            raise ValueError(f"unknown worker operation {op!r}")
        return handler(self, args)

    def engine(self, session: str | None) -> Any:
        """The dspy engine (and so the built modules) of ``session``; None is the worker's shared one."""
        engine = self._engines.get(session)
        if engine is None:
            from dspex.engines.dspy_engine import DspyEngine

            engine = self._engines[session] = DspyEngine()
            if len(self._engines) > _MAX_SESSIONS:
                self._engines.popitem(last=False)
        else:
            self._engines.move_to_end(session)
        return engine

    def lm(self, spec: dict[str, Any]) -> LM:
        """The LM a ``worker_spec`` describes, built once; with the parent's resilience wrapper when it had one
        (sharing its circuit breaker and rate limiter through their files under DSPEX_HOME)."""
        key = repr(sorted(spec["args"].items())) + spec["provider"] + repr(spec.get("resilience"))
        lm = self._lms.get(key)
        if lm is None:
            from dspex.lm.spec import build_lm
            from dspex.runtime.resilience import wrap_from_spec

            inner = build_lm(spec["provider"], {k: v for k, v in spec["args"].items() if v is not None})
            lm = self._lms[key] = wrap_from_spec(inner, spec)
        return lm

    def close(self) -> None:
        for lm in self._lms.values():
            self.loop.run_until_complete(lm.aclose())
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()


def _ping(state: WorkerState, args: dict[str, Any]) -> Any:
    return None


def _echo(state: WorkerState, args: dict[str, Any]) -> Any:
    return args.get("value")


def _sleep(state: WorkerState, args: dict[str, Any]) -> Any:
    time.sleep(float(args.get("seconds", 0)))
    return None


def _tool(state: WorkerState, args: dict[str, Any]) -> Any:
    from dspex.runtime.tools import load_tool

    return load_tool(decode_tool(args["tool"]))(**args["args"])


def _dspy_step(state: WorkerState, args: dict[str, Any]) -> Any:
    from dspex.runtime.tools import load_tool

    tools = {name: load_tool(decode_tool(data)) for name, data in args.get("tools", {}).items()}
    call = StepCall(decode_signature(args["signature"]), args["module"], args["inputs"], args.get("options", {}),
                    args.get("var_values", {}), tools)
    result = state.loop.run_until_complete(state.engine(args.get("session")).run(call, state.lm(args["lm"])))
    return {"outputs": result.outputs, "lm_calls": result.lm_calls, "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens}


def _lm_complete(state: WorkerState, args: dict[str, Any]) -> Any:
    request = args["request"]
    messages = tuple(Message(m["role"], m["content"]) for m in request.pop("messages"))
    if request.get("stop") is not None:
        request["stop"] = tuple(request["stop"])
    response = state.loop.run_until_complete(state.lm(args["lm"]).acomplete(LMRequest(messages, **request)))
    return {"text": response.text, "prompt_tokens": response.prompt_tokens,
            "completion_tokens": response.completion_tokens, "latency_s": response.latency_s, "model": response.model}


def _info(state: WorkerState, args: dict[str, Any]) -> Any:
    """What this worker holds: its pid, whether dspy is imported, and how many dspy modules it keeps."""
    return {"pid": os.getpid(), "dspy_imported": "dspy" in sys.modules,
            "dspy_modules": sum(len(engine._modules) for engine in state._engines.values()),
            "sessions": [s for s in state._engines if s is not None]}


def _session_drop(state: WorkerState, args: dict[str, Any]) -> Any:
    state._engines.pop(args["session"], None)
    return None


OPS: dict[str, Callable[[WorkerState, dict[str, Any]], Any]] = {
    "ping": _ping, "echo": _echo, "sleep": _sleep, "tool": _tool, "dspy_step": _dspy_step,
    "lm_complete": _lm_complete, "session_drop": _session_drop, "info": _info}
"""Every operation by name; a request naming another is an error, never an import."""
