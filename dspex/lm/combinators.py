"""LMs made of other LMs: ``fallback(a, b, ...)`` and ``round_robin(a, b, ...)`` of SPEC §3.5.

They only route: timeouts, retries and circuit breakers live in the runtime's resilience layer, which
raises ``LMError`` for an open circuit, so a fallback moves past a member whose circuit is open.
"""
from __future__ import annotations

import itertools
from typing import AsyncIterator, Sequence

from dspex.lm.base import LM, LMError, LMRequest, LMResponse

__all__ = ["FallbackLM", "RoundRobinLM"]


class _Combined(LM):
    kind = ""

    def __init__(self, members: Sequence[LM]):
        if not members:
            raise ValueError(f"{self.kind} needs at least one lm")
        self.members = tuple(members)
        self.identity = f"{self.kind}({','.join(m.identity for m in self.members)})"
        # a schema can be asked for only if every member may be the one that answers
        self.supports_json_schema = all(m.supports_json_schema for m in self.members)

    async def aclose(self) -> None:
        for member in self.members:
            await member.aclose()


class FallbackLM(_Combined):
    """Tries each member in order; moves on when one raises ``LMError``; raises the last error if all fail."""

    kind = "fallback"

    async def acomplete(self, request: LMRequest) -> LMResponse:
        error: LMError | None = None
        for member in self.members:
            try:
                return await member.acomplete(request)
            except LMError as e:
                error = e
        assert error is not None
        raise error

    def complete(self, request: LMRequest) -> LMResponse:
        """Each member's own synchronous path (an HTTP member keeps its pooled loop)."""
        error: LMError | None = None
        for member in self.members:
            try:
                return member.complete(request)
            except LMError as e:
                error = e
        assert error is not None
        raise error

    async def astream(self, request: LMRequest) -> AsyncIterator[str]:
        """Falls back only before the first token: a stream cut short after it is not restarted elsewhere."""
        error: LMError | None = None
        for member in self.members:
            started = False
            try:
                async for token in member.astream(request):
                    started = True
                    yield token
                return
            except LMError as e:
                if started:
                    raise
                error = e
        assert error is not None
        raise error


class RoundRobinLM(_Combined):
    """Spreads calls across the members in turn."""

    kind = "round_robin"

    def __init__(self, members: Sequence[LM]):
        super().__init__(members)
        self._turn = itertools.cycle(self.members)

    async def acomplete(self, request: LMRequest) -> LMResponse:
        return await next(self._turn).acomplete(request)

    def complete(self, request: LMRequest) -> LMResponse:
        return next(self._turn).complete(request)

    async def astream(self, request: LMRequest) -> AsyncIterator[str]:
        async for token in next(self._turn).astream(request):
            yield token
