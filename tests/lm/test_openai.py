"""The openai adapter over real HTTP against the loopback OpenAI-compatible stub."""
from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest

from dspex.lm.base import LMError
from dspex.lm.openai import OpenAILM, parse_retry_after
from tests.lm.chat import ask
from tests.servers.openai_stub import Fault, OpenAIStub

SCHEMA = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}
KEY = "sk-test-0123456789abcdefghij"


@pytest.fixture
def lm(stub: OpenAIStub) -> Iterator[OpenAILM]:
    lm = OpenAILM("test-model", stub.base_url)
    yield lm
    lm.close()


def test_completion_maps_the_request_and_records_usage(stub: OpenAIStub, lm: OpenAILM) -> None:
    response = lm.complete(ask("one two three", temperature=0.3, max_tokens=7, stop=("\n",), seed=5))
    assert response.text == "one two three"
    assert (response.prompt_tokens, response.completion_tokens) == (5, 3)
    assert response.latency_s > 0 and response.model == "test-model"
    assert response.extra["finish_reason"] == "stop"
    [request] = stub.requests
    assert request.path == "/v1/chat/completions"
    assert request.body == {"model": "test-model", "temperature": 0.3, "max_tokens": 7, "stop": ["\n"], "seed": 5,
                            "messages": [{"role": "system", "content": "be brief"},
                                         {"role": "user", "content": "one two three"}]}
    assert "authorization" not in request.headers  # no key configured: a local server


def test_adapter_defaults_fill_what_the_request_leaves_out(stub: OpenAIStub) -> None:
    lm = OpenAILM("m", stub.base_url, temperature=0.9, max_tokens=50)
    try:
        lm.complete(ask())
        lm.complete(ask(temperature=0.0, max_tokens=3))
    finally:
        lm.close()
    assert [(r.body["temperature"], r.body["max_tokens"]) for r in stub.requests] == [(0.9, 50), (0.0, 3)]


def test_json_schema_goes_as_response_format(stub: OpenAIStub, lm: OpenAILM) -> None:
    lm.complete(ask(json_schema=SCHEMA))
    assert stub.requests[0].body["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "output", "schema": SCHEMA, "strict": True}}
    assert lm.supports_json_schema and lm.response_format == "json_schema"


def test_a_server_without_structured_output_falls_back_to_plain_prompting_and_remembers() -> None:
    with OpenAIStub(formats=()) as stub:
        lm = OpenAILM("m", stub.base_url)
        try:
            assert lm.complete(ask("hi", json_schema=SCHEMA)).text == "hi"
            assert [r.body.get("response_format", {}).get("type") for r in stub.requests] == \
                ["json_schema", "json_object", None]
            assert not lm.supports_json_schema and lm.response_format == "none"
            lm.complete(ask("again", json_schema=SCHEMA))
        finally:
            lm.close()
        assert len(stub.requests) == 4 and "response_format" not in stub.requests[-1].body


def test_llama_cpp_python_style_server_gets_json_object_with_schema() -> None:
    """llama-cpp-python's server validates with FastAPI: json_schema is a 422, json_object + schema works."""
    with OpenAIStub(formats=("json_object",), reject_status=422) as stub:
        lm = OpenAILM("m", stub.base_url)
        try:
            lm.complete(ask(json_schema=SCHEMA))
            lm.complete(ask(json_schema=SCHEMA))
        finally:
            lm.close()
    assert [r.body["response_format"]["type"] for r in stub.requests] == ["json_schema", "json_object", "json_object"]
    assert stub.requests[-1].body["response_format"]["schema"] == SCHEMA
    assert lm.supports_json_schema and lm.response_format == "json_object"


def test_response_format_none_never_sends_one(stub: OpenAIStub) -> None:
    lm = OpenAILM("m", stub.base_url, response_format="none")
    try:
        lm.complete(ask(json_schema=SCHEMA))
    finally:
        lm.close()
    assert "response_format" not in stub.requests[0].body and not lm.supports_json_schema
    with pytest.raises(ValueError, match="json_schema, json_object, none"):
        OpenAILM("m", response_format="xml")


def test_streaming_yields_tokens_from_server_sent_events(stub: OpenAIStub, lm: OpenAILM) -> None:
    async def run() -> list[str]:
        try:
            return [token async for token in lm.astream(ask("a b  c"))]
        finally:
            await lm.aclose()

    assert asyncio.run(run()) == ["a ", "b  ", "c"]
    assert stub.requests[0].body["stream"] is True


def test_a_stream_event_longer_than_aiohttps_line_limit_arrives_whole(stub: OpenAIStub, lm: OpenAILM) -> None:
    word = "x" * 300_000  # one event of ~300 KB: StreamReader.readline refuses lines over 128 KiB

    async def run() -> list[str]:
        try:
            return [token async for token in lm.astream(ask(f"a {word}"))]
        finally:
            await lm.aclose()

    assert asyncio.run(run()) == ["a ", word]


def test_streaming_steps_down_a_rejected_format_too() -> None:
    with OpenAIStub(formats=()) as stub:
        lm = OpenAILM("m", stub.base_url)

        async def run() -> str:
            try:
                return "".join([token async for token in lm.astream(ask("x y", json_schema=SCHEMA))])
            finally:
                await lm.aclose()

        assert asyncio.run(run()) == "x y"
    assert len(stub.requests) == 3 and lm.response_format == "none"


def test_streaming_errors_are_lm_errors(stub: OpenAIStub, lm: OpenAILM) -> None:
    stub.inject(Fault(status=503, retry_after="1"))

    async def run() -> list[str]:
        try:
            return [token async for token in lm.astream(ask())]
        finally:
            await lm.aclose()

    with pytest.raises(LMError) as caught:
        asyncio.run(run())
    assert caught.value.retryable and caught.value.status == 503 and caught.value.retry_after == 1.0


@pytest.mark.parametrize(("status", "retry_after", "expected"), [(429, "3", 3.0), (500, None, None),
                                                                  (503, "0.5", 0.5), (502, None, None)])
def test_rate_limits_and_server_errors_are_retryable(stub: OpenAIStub, lm: OpenAILM, status: int,
                                                     retry_after: str | None, expected: float | None) -> None:
    stub.inject(Fault(status=status, retry_after=retry_after, message="slow down"))
    with pytest.raises(LMError, match=f"HTTP {status}: slow down") as caught:
        lm.complete(ask())
    assert caught.value.retryable and caught.value.status == status and caught.value.retry_after == expected
    assert lm.complete(ask("ok")).text == "ok"  # the next call goes through


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_not_retryable(stub: OpenAIStub, lm: OpenAILM, status: int) -> None:
    stub.inject(Fault(status=status, message="bad request"))
    with pytest.raises(LMError, match="bad request") as caught:
        lm.complete(ask())
    assert not caught.value.retryable and caught.value.status == status


def test_a_hung_server_times_out_retryably(stub: OpenAIStub, lm: OpenAILM) -> None:
    stub.inject(Fault(hang=True))
    with pytest.raises(LMError, match="timed out after 0.2 s") as caught:
        lm.complete(ask(timeout=0.2))
    assert caught.value.retryable


def test_the_adapter_timeout_applies_when_the_request_has_none(stub: OpenAIStub) -> None:
    lm = OpenAILM("m", stub.base_url, timeout=0.2)
    stub.inject(Fault(hang=True))
    try:
        with pytest.raises(LMError, match="timed out") as caught:
            lm.complete(ask())
    finally:
        lm.close()
    assert caught.value.retryable


@pytest.mark.parametrize("fault", [Fault(truncate=True), Fault(disconnect=True)], ids=["truncated", "dropped"])
def test_broken_responses_are_retryable(stub: OpenAIStub, lm: OpenAILM, fault: Fault) -> None:
    stub.inject(fault)
    with pytest.raises(LMError) as caught:
        lm.complete(ask())
    assert caught.value.retryable


def test_a_refused_connection_is_retryable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lm = OpenAILM("m", f"http://127.0.0.1:{port}/v1")
    try:
        with pytest.raises(LMError) as caught:
            lm.complete(ask())
    finally:
        lm.close()
    assert caught.value.retryable and caught.value.status is None


def test_api_key_env_is_read_at_call_time_and_never_shown(stub: OpenAIStub,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DSPEX_TEST_KEY", raising=False)
    lm = OpenAILM("m", stub.base_url, api_key_env="DSPEX_TEST_KEY")
    try:
        with pytest.raises(LMError, match="DSPEX_TEST_KEY") as missing:
            lm.complete(ask())
        assert not missing.value.retryable and not stub.requests  # nothing was sent
        monkeypatch.setenv("DSPEX_TEST_KEY", KEY)
        lm.complete(ask())
        assert stub.requests[-1].headers["authorization"] == f"Bearer {KEY}"
        monkeypatch.setenv("DSPEX_TEST_KEY", KEY + "-rotated")
        lm.complete(ask())
        assert stub.requests[-1].headers["authorization"] == f"Bearer {KEY}-rotated"
        stub.inject(Fault(status=401, message=f"Incorrect API key provided: {KEY}-rotated"))
        with pytest.raises(LMError) as rejected:
            lm.complete(ask())
    finally:
        lm.close()
    assert KEY not in str(rejected.value) and "***" in str(rejected.value)
    for text in (lm.identity, repr(lm), str(missing.value)):
        assert KEY not in text
    assert lm.identity == f"openai:m@{stub.base_url}"


def test_a_runtime_key_is_sent_but_not_shown(stub: OpenAIStub) -> None:
    lm = OpenAILM("m", stub.base_url, api_key=KEY)
    try:
        lm.complete(ask())
    finally:
        lm.close()
    assert stub.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert KEY not in repr(lm) and KEY not in lm.identity


def test_openai_itself_reads_OPENAI_API_KEY_by_default() -> None:
    assert OpenAILM("gpt-4o-mini").api_key_env == "OPENAI_API_KEY"
    assert OpenAILM("m", "http://127.0.0.1:8080/v1/").api_key_env is None
    assert OpenAILM("m", "http://127.0.0.1:8080/v1/").identity == "openai:m@http://127.0.0.1:8080/v1"


@pytest.mark.parametrize("bypassed", [False, True], ids=["proxied", "no_proxy"])
def test_the_environments_proxy_is_used_unless_no_proxy_names_the_host(stub: OpenAIStub, bypassed: bool,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{stub.port}")  # the stub answers as the proxy
    if bypassed:
        monkeypatch.setenv("NO_PROXY", "unreachable.invalid")
    lm = OpenAILM("m", "http://unreachable.invalid/v1", timeout=5)
    try:
        if bypassed:
            with pytest.raises(LMError, match="unreachable.invalid"):
                lm.complete(ask("direct"))
        else:
            assert lm.complete(ask("via proxy")).text == "via proxy"
    finally:
        lm.close()
    assert [r.path for r in stub.requests] == ([] if bypassed else ["http://unreachable.invalid/v1/chat/completions"])


def test_an_unclosed_sync_path_is_closed_at_exit_not_complained_about() -> None:
    """aiohttp complains of a session collected unclosed; the private loop's is kept, and closed, until exit."""
    script = ("import gc; from dspex.lm.base import LMRequest, Message; from dspex.lm.openai import OpenAILM; "
              "from tests.servers.openai_stub import OpenAIStub; stub = OpenAIStub(); stub.start(); "
              "lm = OpenAILM('m', stub.base_url); print(lm.complete(LMRequest((Message('user', 'hi'),))).text); "
              "del lm; gc.collect()")
    done = subprocess.run([sys.executable, "-X", "dev", "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "hi", "")


def test_sync_calls_reuse_one_kept_alive_connection(stub: OpenAIStub, lm: OpenAILM) -> None:
    for i in range(5):
        assert lm.complete(ask(str(i))).text == str(i)
    assert {r.connection for r in stub.requests} == {stub.requests[0].connection}


def test_concurrent_calls_stay_within_max_connections() -> None:
    with OpenAIStub(latency=0.02) as stub:
        lm = OpenAILM("m", stub.base_url, max_connections=4)

        async def run() -> list[str]:
            try:
                responses = await asyncio.gather(*(lm.acomplete(ask(str(i))) for i in range(24)))
                return [r.text for r in responses]
            finally:
                await lm.aclose()

        assert asyncio.run(run()) == [str(i) for i in range(24)]
    assert len({r.connection for r in stub.requests}) == 4


def test_each_event_loop_gets_its_own_client(stub: OpenAIStub, lm: OpenAILM) -> None:
    async def once(text: str) -> str:
        try:
            return (await lm.acomplete(ask(text))).text
        finally:
            await lm.aclose()

    assert [asyncio.run(once(t)) for t in "ab"] == ["a", "b"]


def test_parse_retry_after() -> None:
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "soon"}) is None
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 < (parse_retry_after({"retry-after": later}) or 0) <= 30
    assert parse_retry_after({"retry-after": "Mon, 01 Jan 2001 00:00:00 GMT"}) == 0.0
