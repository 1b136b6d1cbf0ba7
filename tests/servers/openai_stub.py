"""An OpenAI-compatible chat-completions server on 127.0.0.1, for tests and benchmarks.

Real HTTP/1.1 over real sockets (keep-alive, chunked SSE streaming), so adapters are tested through the
same client code that talks to OpenAI, vLLM or llama.cpp. It runs an asyncio server in a background
thread: latency is an ``asyncio.sleep``, so many slow requests overlap as they would on a real server,
and a hung request is cancelled when the stub closes. Answers come from ``answer(body) -> str``.

    with OpenAIStub(answer=lambda body: '{"label": "positive"}', latency=0.05) as stub:
        lm = OpenAILM("m", base_url=stub.base_url)
        stub.inject(Fault(status=429, retry_after="2"))   # the next request gets a 429

Benchmarks that must not share the GIL with the server run it as a process instead:
``python -m tests.servers.openai_stub --latency 0.05`` prints its base URL and serves until stdin closes;
``--answer-fn MODULE:FUNCTION`` answers with an importable ``answer(body)`` instead of the echo.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Callable, Iterable

__all__ = ["OpenAIStub", "Fault", "RecordedRequest", "echo"]

Answer = Callable[[dict[str, Any]], str]


def echo(body: dict[str, Any]) -> str:
    """The default answer: the last message's content."""
    messages = body.get("messages") or [{}]
    return str(messages[-1].get("content", ""))


@dataclass(frozen=True)
class Fault:
    """What the next request gets instead of an answer; ``inject`` queues them, one per request."""

    status: int = 0  # an error response with this status and an OpenAI-style error body
    retry_after: str | None = None  # the Retry-After header sent with ``status``
    hang: bool = False  # never answer: the client times out, or the stub's exit cancels it
    truncate: bool = False  # a 200 whose JSON body is cut in half
    disconnect: bool = False  # close the connection without a response
    message: str = "injected fault"


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: dict[str, Any]
    connection: int  # which TCP connection carried it (1, 2, ...): shows keep-alive and pool sizes


class OpenAIStub:
    """``POST /v1/chat/completions`` and ``GET /v1/models`` on a free port; records every request.

    ``formats`` are the ``response_format`` types it accepts besides ``text``; any other type is answered
    with ``reject_status`` (400 as OpenAI does, 422 as llama-cpp-python's server does) naming
    ``response_format``. A request with ``tools`` is answered with a call of the chosen tool whose
    arguments are the answer, as instructor's tools mode expects.
    """

    def __init__(self, answer: Answer = echo, *, latency: float = 0.0,
                 formats: Iterable[str] = ("json_schema", "json_object"), reject_status: int = 400,
                 model: str = "stub-model"):
        self.answer = answer
        self.latency = latency
        self.formats = set(formats)
        self.reject_status = reject_status
        self.model = model
        self.requests: list[RecordedRequest] = []
        self.faults: deque[Fault] = deque()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._ids = 0
        self._connections = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def inject(self, *faults: Fault) -> None:
        self.faults.extend(faults)

    def __enter__(self) -> OpenAIStub:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(ready),), name="openai-stub",
                                        daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the OpenAI stub server did not start")

    def close(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
            self._loop = None

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        await self._stop.wait()
        server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._connections += 1
        connection = self._connections
        try:
            while await self._one(reader, writer, connection):
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away
        except asyncio.CancelledError:
            pass  # the stub is closing; returning (not re-raising) keeps Python 3.11's streams from logging it
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: int) -> bool:
        """Serve one request; False when the connection should close."""
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        method, path, _ = head[0].split(" ", 2)
        headers = {}
        for line in head[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        raw = await reader.readexactly(int(headers.get("content-length", "0")))
        body = json.loads(raw) if raw else {}
        self.requests.append(RecordedRequest(method, path, headers, body, connection))
        keep_alive = headers.get("connection", "").lower() != "close"
        fault = self.faults.popleft() if self.faults else None
        if self.latency:
            await asyncio.sleep(self.latency)
        if fault is not None:
            if fault.hang:
                await asyncio.Event().wait()
            if fault.disconnect:
                return False
            if fault.truncate:
                full = json.dumps(self._completion(body, "truncated")).encode()
                await self._send(writer, 200, full[: len(full) // 2])
                return keep_alive
            extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            await self._send(writer, fault.status, _error(fault.status, fault.message), extra)
            return keep_alive
        if method == "GET" and path.rstrip("/").endswith("/models"):
            await self._send(writer, 200, {"object": "list", "data": [{"id": self.model, "object": "model"}]})
        elif method != "POST" or not path.rstrip("/").endswith("/chat/completions"):
            await self._send(writer, 404, _error(404, f"no route {method} {path}"))
        elif (fmt := (body.get("response_format") or {}).get("type", "text")) not in self.formats | {"text"}:
            message = f"Invalid value for 'response_format.type': '{fmt}' is not supported"
            await self._send(writer, self.reject_status, _error(self.reject_status, message, "response_format"))
        else:
            try:
                text = self.answer(body)
            except Exception as e:  # noqa: BLE001 - a failing answer function is the server's 500
                await self._send(writer, 500, _error(500, f"answer failed: {e!r}"))
                return keep_alive
            if body.get("stream"):
                await self._stream(writer, body, text)
            else:
                await self._send(writer, 200, self._completion(body, text))
        return keep_alive

    def _completion(self, body: dict[str, Any], text: str) -> dict[str, Any]:
        self._ids += 1
        message: dict[str, Any] = {"role": "assistant", "content": text}
        finish = "stop"
        if body.get("tools"):
            choice = body.get("tool_choice")
            name = (choice["function"]["name"] if isinstance(choice, dict)
                    else body["tools"][0]["function"]["name"])
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": f"call_{self._ids}", "type": "function", "function": {"name": name, "arguments": text}}]}
            finish = "tool_calls"
        prompt = sum(len(str(m.get("content") or "").split()) for m in body.get("messages", []))
        completion = len(text.split())
        return {"id": f"chatcmpl-{self._ids}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", self.model),
                "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion}}

    async def _stream(self, writer: asyncio.StreamWriter, body: dict[str, Any], text: str) -> None:
        """Server-sent events, one per word (with its trailing space), then ``[DONE]``."""
        full = self._completion(body, text)
        base = {"id": full["id"], "object": "chat.completion.chunk", "created": full["created"],
                "model": full["model"]}
        pieces = [{"role": "assistant", "content": ""}]
        pieces += [{"content": w} for w in _words(text)]
        events = [{**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in pieces]
        events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({**base, "choices": [], "usage": full["usage"]})
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        for data in [json.dumps(e) for e in events] + ["[DONE]"]:
            chunk = f"data: {data}\n\n".encode()
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: int, payload: dict[str, Any] | bytes,
                    headers: dict[str, str] | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "Content-Type: application/json",
                 f"Content-Length: {len(data)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data)
        await writer.drain()


def _words(text: str) -> list[str]:
    """``text`` cut after each run of spaces, so the pieces join back to ``text``."""
    pieces: list[str] = []
    start = 0
    for i in range(1, len(text)):
        if text[i - 1].isspace() and not text[i].isspace():
            pieces.append(text[start:i])
            start = i
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def _error(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="An OpenAI-compatible stub server on 127.0.0.1.")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--answer", help="a fixed answer (default: echo the last message)")
    parser.add_argument("--answer-fn", metavar="MODULE:FUNCTION",
                        help="answer with FUNCTION(body) from an importable MODULE")
    args = parser.parse_args(argv)
    fixed: str | None = args.answer
    answer: Answer = echo if fixed is None else (lambda body: fixed)
    if args.answer_fn is not None:
        module, _, function = args.answer_fn.partition(":")
        answer = getattr(importlib.import_module(module), function)
    with OpenAIStub(answer, latency=args.latency) as stub:
        print(stub.base_url, flush=True)
        sys.stdin.read()  # serve until the parent closes our stdin (or exits)


if __name__ == "__main__":
    main()
