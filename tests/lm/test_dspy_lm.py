"""The dspy adapter: a real ``dspy.LM("openai/x", api_base=...)`` talking to the loopback stub."""
from __future__ import annotations

import asyncio

import pytest

from dspex.lm.base import LMError
from dspex.lm.dspy_lm import DspyLM
from tests.lm.chat import ask
from tests.servers.openai_stub import Fault, OpenAIStub

SCHEMA = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}


@pytest.fixture(autouse=True)
def offline_litellm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # should litellm load, no download


def make(stub: OpenAIStub, **kwargs: object) -> DspyLM:
    return DspyLM("openai/x", api_base=stub.base_url, api_key="x", **kwargs)


def test_completion_through_dspy(stub: OpenAIStub) -> None:
    lm = make(stub, temperature=0.4, max_tokens=20)
    first = lm.complete(ask("one two"))
    second = lm.complete(ask("one two", temperature=0.0))
    assert first.text == second.text == "one two"
    assert (first.prompt_tokens, first.completion_tokens) == (4, 2) and first.latency_s > 0
    assert len(stub.requests) == 2  # dspy's cache is off
    body = stub.requests[0].body
    assert body["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "one two"}]
    assert body["temperature"] == 0.4 and body.get("max_tokens", body.get("max_completion_tokens")) == 20
    assert stub.requests[1].body["temperature"] == 0.0
    assert lm.identity == "dspy:openai/x" and "api_key" not in repr(lm)


def test_async_completion_and_schema(stub: OpenAIStub) -> None:
    lm = make(stub)

    async def run() -> str:
        try:
            return (await lm.acomplete(ask("hi", json_schema=SCHEMA, stop=("\n",), seed=3))).text
        finally:
            await lm.aclose()

    assert asyncio.run(run()) == "hi"
    body = stub.requests[0].body
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == SCHEMA
    assert body["stop"] == ["\n"] and body["seed"] == 3


def test_a_rejected_schema_is_dropped_and_remembered() -> None:
    with OpenAIStub(formats=()) as stub:
        lm = make(stub)
        assert lm.complete(ask("hi", json_schema=SCHEMA)).text == "hi"
        assert not lm.supports_json_schema
        lm.complete(ask("again", json_schema=SCHEMA))
    assert ["response_format" in r.body for r in stub.requests] == [True, False, False]


def test_rate_limits_are_retryable_and_client_errors_are_not(stub: OpenAIStub) -> None:
    lm = make(stub)
    stub.inject(Fault(status=429, retry_after="3"), Fault(status=400, message="nope"))
    with pytest.raises(LMError) as limited:
        lm.complete(ask())
    assert limited.value.retryable and limited.value.status == 429 and limited.value.retry_after == 3.0
    with pytest.raises(LMError, match="nope") as bad:
        lm.complete(ask())
    assert not bad.value.retryable and bad.value.status == 400
    assert len(stub.requests) == 2  # dspy's own retries are off


def test_a_hung_server_times_out_retryably(stub: OpenAIStub) -> None:
    lm = make(stub)
    stub.inject(Fault(hang=True))

    async def run() -> None:
        try:
            await lm.acomplete(ask(timeout=0.2))
        finally:
            await lm.aclose()

    with pytest.raises(LMError, match="timed out") as caught:
        asyncio.run(run())
    assert caught.value.retryable


def test_api_key_env_is_read_when_the_lm_is_first_used(stub: OpenAIStub, monkeypatch: pytest.MonkeyPatch) -> None:
    lm = DspyLM("openai/x", api_base=stub.base_url, api_key_env="DSPEX_TEST_KEY")
    monkeypatch.delenv("DSPEX_TEST_KEY", raising=False)
    with pytest.raises(LMError, match="DSPEX_TEST_KEY"):
        lm.complete(ask())
    monkeypatch.setenv("DSPEX_TEST_KEY", "sk-dspy-0123456789abcdef")
    lm.complete(ask())
    assert stub.requests[0].headers["authorization"] == "Bearer sk-dspy-0123456789abcdef"
    assert "sk-dspy" not in repr(lm) + lm.identity
