"""A scripted LM for unit tests (like dspy's DummyLM): answers come from a list or a function.

It is shipped in the package so users can test their own pipelines without a model. Never the only
proof of a feature: integration tests run the real local model and a real HTTP server.
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable, Iterable

from dspex.lm.base import LM, LMRequest, LMResponse

__all__ = ["ScriptedLM"]

Answer = str | Callable[[LMRequest], str]


class ScriptedLM(LM):
    """Answers in turn from ``answers`` (cycling), or by calling ``answers(request)``; records every request.

    ``delay`` (seconds) simulates latency without blocking the event loop.
    """

    supports_json_schema = True

    def __init__(self, answers: Iterable[str] | Callable[[LMRequest], str], *, delay: float = 0.0,
                 identity: str = "scripted"):
        self._fn = answers if callable(answers) else None
        self._answers = [] if callable(answers) else list(answers)
        self.delay = delay
        self.identity = identity
        self.requests: list[LMRequest] = []

    async def acomplete(self, request: LMRequest) -> LMResponse:
        started = time.perf_counter()
        self.requests.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self._fn is not None:
            text = self._fn(request)
        else:
            if not self._answers:
                raise RuntimeError("ScriptedLM has no answers")
            text = self._answers[(len(self.requests) - 1) % len(self._answers)]
        prompt_tokens = sum(len(m.content.split()) for m in request.messages)
        return LMResponse(text, prompt_tokens, len(text.split()), time.perf_counter() - started, self.identity)
