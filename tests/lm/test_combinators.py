"""fallback and round_robin over scripted members and over real HTTP members."""
from __future__ import annotations

import asyncio
from typing import AsyncIterator

import pytest

from dspex.lm.base import LM, LMError, LMRequest, LMResponse, Message
from dspex.lm.combinators import FallbackLM, RoundRobinLM
from dspex.lm.openai import OpenAILM
from dspex.lm.scripted import ScriptedLM
from tests.servers.openai_stub import Fault, OpenAIStub

REQUEST = LMRequest((Message("user", "hi"),))


class Failing(LM):
    """Raises ``error`` on every call, after streaming ``tokens_first`` tokens."""

    def __init__(self, error: Exception, identity: str = "failing", tokens_first: int = 0):
        self.error = error
        self.identity = identity
        self.tokens_first = tokens_first
        self.calls = 0
        self.closed = False

    async def acomplete(self, request: LMRequest) -> LMResponse:
        self.calls += 1
        raise self.error

    async def astream(self, request: LMRequest) -> AsyncIterator[str]:
        for i in range(self.tokens_first):
            yield f"t{i} "
        raise self.error

    async def aclose(self) -> None:
        self.closed = True


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_fallback_moves_on_after_an_lm_error() -> None:
    broken = Failing(LMError("down", retryable=True))
    lm = FallbackLM([broken, ScriptedLM(["from b"], identity="b")])
    assert lm.complete(REQUEST).text == "from b" and broken.calls == 1


def test_fallback_raises_the_last_error_when_all_fail() -> None:
    first, last = LMError("first"), LMError("last", retryable=True, status=503)
    with pytest.raises(LMError, match="last"):
        FallbackLM([Failing(first), Failing(last)]).complete(REQUEST)


def test_fallback_lets_other_exceptions_through() -> None:
    spare = ScriptedLM(["unused"])
    with pytest.raises(KeyError):
        FallbackLM([Failing(KeyError("bug")), spare]).complete(REQUEST)
    assert not spare.requests


def test_fallback_over_real_http_members() -> None:
    with OpenAIStub(answer=lambda body: "primary") as primary, OpenAIStub(answer=lambda body: "backup") as backup:
        a, b = OpenAILM("m", primary.base_url), OpenAILM("m", backup.base_url)
        lm = FallbackLM([a, b])
        primary.inject(Fault(status=500))

        async def calls() -> list[str]:
            try:
                return [(await lm.acomplete(REQUEST)).text for _ in range(2)]
            finally:
                await lm.aclose()

        assert run(calls()) == ["backup", "primary"]
    assert len(primary.requests) == 2 and len(backup.requests) == 1


def test_sync_calls_use_each_members_own_sync_path() -> None:
    with OpenAIStub(answer=lambda body: "primary") as primary, OpenAIStub(answer=lambda body: "backup") as backup:
        a, b = OpenAILM("m", primary.base_url), OpenAILM("m", backup.base_url)
        primary.inject(Fault(status=503))
        try:
            assert [FallbackLM([a, b]).complete(REQUEST).text for _ in range(2)] == ["backup", "primary"]
            spread = RoundRobinLM([a, b])
            assert [spread.complete(REQUEST).text for _ in range(2)] == ["primary", "backup"]
        finally:
            a.close()
            b.close()


def test_fallback_streams_from_the_next_member_only_before_the_first_token() -> None:
    async def tokens(lm: LM) -> list[str]:
        return [t async for t in lm.astream(REQUEST)]

    spare = ScriptedLM(["spare answer"])
    assert run(tokens(FallbackLM([Failing(LMError("down")), spare]))) == ["spare answer"]
    with pytest.raises(LMError, match="cut"):
        run(tokens(FallbackLM([Failing(LMError("cut"), tokens_first=2), spare])))
    with pytest.raises(LMError, match="b down"):
        run(tokens(FallbackLM([Failing(LMError("a down")), Failing(LMError("b down"))])))


def test_round_robin_rotates() -> None:
    a, b = ScriptedLM(["a"], identity="a"), ScriptedLM(["b"], identity="b")
    lm = RoundRobinLM([a, b])

    async def six() -> list[str]:
        return [(await lm.acomplete(REQUEST)).text for _ in range(5)] + \
            [t async for t in lm.astream(REQUEST)]

    assert run(six()) == ["a", "b", "a", "b", "a", "b"]


def test_round_robin_does_not_hide_failures() -> None:
    lm = RoundRobinLM([Failing(LMError("down")), ScriptedLM(["ok"])])
    with pytest.raises(LMError):
        lm.complete(REQUEST)
    assert lm.complete(REQUEST).text == "ok"


def test_identity_schema_support_and_close() -> None:
    members = [Failing(LMError("x"), identity="x"), ScriptedLM(["y"], identity="y")]
    lm = FallbackLM(members)
    assert lm.identity == "fallback(x,y)" and RoundRobinLM(members).identity == "round_robin(x,y)"
    assert not lm.supports_json_schema  # Failing says no, so a schema may not be honoured
    assert FallbackLM([ScriptedLM(["y"])]).supports_json_schema
    run(lm.aclose())
    assert members[0].closed  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="at least one"):
        FallbackLM([])
