"""The stub server itself: the parts adapter tests do not reach."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.servers.openai_stub import Fault, OpenAIStub


def test_models_unknown_routes_and_a_failing_answer() -> None:
    def answer(body: dict[str, object]) -> str:
        raise RuntimeError("boom")

    with OpenAIStub(answer, model="tiny") as stub, httpx.Client(base_url=stub.base_url) as client:
        assert client.get("/models").json()["data"][0]["id"] == "tiny"
        assert client.get("/nope").status_code == 404
        failed = client.post("/chat/completions", json={"model": "m", "messages": []})
        assert failed.status_code == 500 and "boom" in failed.json()["error"]["message"]


def test_stream_usage() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x y"}], "stream": True,
            "stream_options": {"include_usage": True}}
    with OpenAIStub() as stub, httpx.Client(base_url=stub.base_url) as client:
        lines = client.post("/chat/completions", json=body).text.split("\n\n")
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"]) == "x y"
    assert events[-1]["usage"]["completion_tokens"] == 2 and lines[-2] == "data: [DONE]"


def test_closing_ends_a_hung_request() -> None:
    stub = OpenAIStub()
    stub.start()
    stub.inject(Fault(hang=True))
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, f"{stub.base_url}/chat/completions", json={"messages": []}, timeout=30)
        while not stub.requests:
            time.sleep(0.01)
        stub.close()
        with pytest.raises(httpx.TransportError):
            pending.result(timeout=10)


def test_runs_as_a_process_until_stdin_closes() -> None:
    with subprocess.Popen([sys.executable, "-m", "tests.servers.openai_stub", "--answer", "fixed"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        try:
            base_url = proc.stdout.readline().strip()
            reply = httpx.post(f"{base_url}/chat/completions", json={"model": "m", "messages": []})
            assert reply.json()["choices"][0]["message"]["content"] == "fixed"
        finally:
            proc.stdin.close()
        assert proc.wait(10) == 0
