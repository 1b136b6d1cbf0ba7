"""The instructor adapter over real HTTP against the loopback stub answering JSON."""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Iterator

import pytest

from dspex.lm.base import LMError, LMRequest, Message
from dspex.lm.instructor_lm import InstructorLM
from tests.servers.openai_stub import Fault, OpenAIStub

SCHEMA = {"type": "object", "required": ["label", "confidence"],
          "properties": {"label": {"type": "string", "enum": ["positive", "negative"]},
                         "confidence": {"type": "number", "minimum": 0, "maximum": 1}}}


@pytest.fixture(autouse=True)
def quiet_instructor(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="instructor")  # it logs each failed attempt; we raise LMError


def ask(**options: Any) -> LMRequest:
    return LMRequest((Message("system", "Classify."), Message("user", "great phone")), **options)


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub(answer=lambda body: '{"label": "positive", "confidence": "0.9"}') as s:
        yield s


@pytest.fixture
def lm(stub: OpenAIStub) -> Iterator[InstructorLM]:
    lm = InstructorLM("m", stub.base_url)
    yield lm
    lm.close()


def test_structured_output_is_validated_and_returned_as_json(stub: OpenAIStub, lm: InstructorLM) -> None:
    response = lm.complete(ask(json_schema=SCHEMA, temperature=0.1, max_tokens=40))
    assert json.loads(response.text) == {"label": "positive", "confidence": 0.9}  # "0.9" coerced to a number
    assert response.prompt_tokens > 0 and response.completion_tokens == 4 and response.latency_s > 0
    [request] = stub.requests
    assert request.body["response_format"] == {"type": "json_object"}  # the default mode: json
    assert request.body["temperature"] == 0.1 and request.body["max_tokens"] == 40
    assert "positive" in json.dumps(request.body["messages"])  # the schema rides in the prompt
    assert "authorization" not in request.headers
    assert lm.supports_json_schema and lm.identity == f"instructor:m@{stub.base_url}"


@pytest.mark.parametrize(("mode", "sent"), [("tools", "tools"), ("json_schema", "response_format"),
                                            ("md_json", None), ("TOOLS", "tools")])
def test_modes_shape_the_request(stub: OpenAIStub, mode: str, sent: str | None) -> None:
    lm = InstructorLM("m", stub.base_url, mode=mode)
    try:
        assert json.loads(lm.complete(ask(json_schema=SCHEMA)).text)["label"] == "positive"
    finally:
        lm.close()
    body = stub.requests[0].body
    assert {"tools", "response_format"} & set(body) == ({sent} if sent else set())


def test_an_unknown_mode_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown instructor mode 'yaml'"):
        InstructorLM("m", "http://127.0.0.1:1/v1", mode="yaml")


def test_an_invalid_answer_fails_once_without_a_reask(stub: OpenAIStub, lm: InstructorLM) -> None:
    stub.answer = lambda body: '{"label": "great", "confidence": 0.5}'
    with pytest.raises(LMError, match="no valid structured output") as caught:
        lm.complete(ask(json_schema=SCHEMA))
    assert not caught.value.retryable and len(stub.requests) == 1


def test_rate_limits_are_retryable_with_retry_after(stub: OpenAIStub, lm: InstructorLM) -> None:
    stub.inject(Fault(status=429, retry_after="4"))
    with pytest.raises(LMError, match="HTTP 429") as caught:
        lm.complete(ask(json_schema=SCHEMA))
    assert caught.value.retryable and caught.value.status == 429 and caught.value.retry_after == 4.0


def test_a_bad_request_is_not_retryable(stub: OpenAIStub, lm: InstructorLM) -> None:
    stub.inject(Fault(status=400))
    with pytest.raises(LMError) as caught:
        lm.complete(ask(json_schema=SCHEMA))
    assert not caught.value.retryable and caught.value.status == 400


def test_a_hung_server_times_out_retryably(stub: OpenAIStub, lm: InstructorLM) -> None:
    stub.inject(Fault(hang=True))
    with pytest.raises(LMError, match="timed out") as caught:
        lm.complete(ask(json_schema=SCHEMA, timeout=0.2))
    assert caught.value.retryable


def test_without_a_schema_it_is_a_plain_completion(stub: OpenAIStub, lm: InstructorLM) -> None:
    stub.answer = lambda body: "just text"
    assert lm.complete(ask()).text == "just text"
    assert not {"tools", "response_format"} & set(stub.requests[0].body)


def test_streaming(stub: OpenAIStub, lm: InstructorLM) -> None:
    async def run(request: LMRequest) -> list[str]:
        try:
            return [token async for token in lm.astream(request)]
        finally:
            await lm.aclose()

    [whole] = asyncio.run(run(ask(json_schema=SCHEMA)))
    assert json.loads(whole)["label"] == "positive"
    stub.answer = lambda body: "a b"
    assert asyncio.run(run(ask())) == ["a ", "b"]


def test_the_key_is_read_at_call_time_and_never_shown(stub: OpenAIStub, monkeypatch: pytest.MonkeyPatch) -> None:
    key = "sk-instructor-0123456789abcdef"
    lm = InstructorLM("m", stub.base_url, api_key_env="DSPEX_TEST_KEY")
    monkeypatch.setenv("DSPEX_TEST_KEY", key)
    try:
        lm.complete(ask(json_schema=SCHEMA))
        stub.inject(Fault(status=401, message=f"Incorrect API key provided: {key}"))
        with pytest.raises(LMError) as caught:
            lm.complete(ask(json_schema=SCHEMA))
    finally:
        lm.close()
    assert stub.requests[0].headers["authorization"] == f"Bearer {key}"
    assert key not in str(caught.value) and key not in repr(lm) and key not in lm.identity
