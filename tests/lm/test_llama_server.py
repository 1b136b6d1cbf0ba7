"""A real ``python -m llama_cpp.server`` on SmolLM2, spoken to over HTTP like any OpenAI-compatible server."""
from __future__ import annotations

import json
from typing import Any, Iterator

import httpx
import pytest

from tests.llama_server import LlamaServer

SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["positive", "negative"]}, "confidence": {"type": "number"}},
    "required": ["label", "confidence"],
}
PROMPT = "Review: 'Broke after one day.' Classify the sentiment as JSON with label and confidence."


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with LlamaServer() as url:
        yield url


def chat(base_url: str, content: str, **options: Any) -> dict[str, Any]:
    body = {"model": "smollm2", "messages": [{"role": "user", "content": content}], "max_tokens": 32,
            "temperature": 0.0, **options}
    response = httpx.post(f"{base_url}/chat/completions", json=body, timeout=60)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def test_chat_completion(base_url: str) -> None:
    result = chat(base_url, "Say hello in one word.")
    assert result["choices"][0]["message"]["content"].strip()
    assert result["usage"]["prompt_tokens"] > 0 and result["usage"]["completion_tokens"] > 0


def test_json_object_with_a_schema_constrains_the_answer(base_url: str) -> None:
    response_format = {"type": "json_object", "schema": SCHEMA}  # llama.cpp's form: grammar-constrained decoding
    data = json.loads(chat(base_url, PROMPT, max_tokens=48, response_format=response_format)
                      ["choices"][0]["message"]["content"])
    assert data["label"] in ("positive", "negative")
    assert isinstance(data["confidence"], (int, float))


def test_openai_json_schema_form_is_refused(base_url: str) -> None:
    """llama-cpp-python's server (0.3.x) knows only "text" and "json_object": OpenAI's form fails (as a 500)."""
    response_format = {"type": "json_schema", "json_schema": {"name": "sentiment", "schema": SCHEMA}}
    with pytest.raises(httpx.HTTPStatusError) as caught:
        chat(base_url, PROMPT, response_format=response_format)
    assert caught.value.response.status_code >= 400
    assert "json_object" in caught.value.response.text


def test_the_server_stops_when_the_block_ends() -> None:
    server = LlamaServer(startup_timeout=0.0)  # never waits: the cleanup path runs at once
    with pytest.raises(TimeoutError):
        server.__enter__()
    assert server._proc is not None and server._proc.returncode is not None
