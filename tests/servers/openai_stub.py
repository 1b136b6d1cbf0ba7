"""An OpenAI-compatible chat-completions server on 127.0.0.1, for tests and benchmarks.

Real HTTP/1.1 over real sockets (keep-alive, chunked SSE streaming), so adapters are tested through the
same client code that talks to OpenAI, vLLM or llama.cpp. It runs an asyncio server in a background
thread: latency is an ``asyncio.sleep``, so many slow requests overlap as they would on a real server,
and a hung request ends when its client gives up or the stub closes. Answers come from ``answer(body) -> str``.

    with OpenAIStub(answer=lambda body: '{"label": "positive"}', latency=0.05) as stub:
        lm = OpenAILM("m", base_url=stub.base_url)
        stub.inject(Fault(status=429, retry_after="2"))   # the next request gets a 429

Faults can also come **at rates**, each request drawing independently from a seeded RNG (``FaultRates``: 500s,
429s with Retry-After, hangs until the client gives up, truncated JSON bodies, dropped connections), and a
server can **degrade** mid-run (``Degrade``: its latency multiplied, a share of its answers wrong-shaped so they
fail validation). A queued ``inject`` fault comes first; rates apply to the requests with none queued.

    stub = OpenAIStub(shout, rates=FaultRates(server_error=0.05, hang=0.05), seed=7)
    stub.set_degrade(Degrade(latency_factor=3, wrong_share=0.1))   # from the test, mid-run

Benchmarks that must not share the GIL with the server run it as a process instead:
``python -m tests.servers.openai_stub --latency 0.05`` prints its base URL and serves until stdin closes;
``--answer-fn MODULE:FUNCTION`` answers with an importable ``answer(body)`` instead of the echo; ``--rate
KIND=P`` and ``--seed`` set fault rates; ``--control`` opens ``POST /_control`` (JSON ``{"rates": {...},
"degrade": {...}, "reset_counts": true}``; ``GET`` reads the state and the outcome counts back), which a
parent uses to degrade or heal the server mid-run. The control endpoint answers loopback peers only, takes
bodies of at most ``CONTROL_MAX_BYTES`` and checks every value.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib
import ipaddress
import json
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, fields, replace
from http import HTTPStatus
from typing import Any, Callable, Iterable, Mapping

__all__ = ["OpenAIStub", "Fault", "FaultRates", "Degrade", "RecordedRequest", "echo", "shout", "stop_child", "CONTROL_PATH",
           "CONTROL_MAX_BYTES", "OUTCOMES"]

Answer = Callable[[dict[str, Any]], str]

CONTROL_PATH = "/_control"
CONTROL_MAX_BYTES = 4096
MAX_LATENCY_FACTOR = 100.0
OUTCOMES = ("ok", "wrong", "server_error", "rate_limited", "hang", "truncate", "disconnect", "injected")
"""What a chat request got: a right answer, a wrong-shaped one, a fault drawn at its rate, or a queued fault."""


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
class FaultRates:
    """The probability that a request (one with no queued fault) gets each fault; every request draws once,
    independently, so the kinds are exclusive and their rates may sum to at most 1. ``retry_after`` is the
    Retry-After header of the 429s (seconds, as text)."""

    server_error: float = 0.0  # 500 with an OpenAI-style error body
    rate_limited: float = 0.0  # 429 with Retry-After
    hang: float = 0.0  # no answer until the client gives up (closes the connection) or the stub closes
    truncate: float = 0.0  # a 200 whose JSON body is cut in half
    disconnect: float = 0.0  # the connection closed without a response
    retry_after: str = "1"

    def __post_init__(self) -> None:
        total = 0.0
        for name in _RATE_KINDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {value!r}")
            total += value
        if total > 1.0 + 1e-9:
            raise ValueError(f"the fault rates sum to {total:g}, more than 1")
        if not isinstance(self.retry_after, str) or not re.fullmatch(r"\d{1,6}(\.\d{1,6})?", self.retry_after):
            raise ValueError(f"retry_after: expected seconds as text (\"1\", \"0.5\"), got {self.retry_after!r}")

    def draw(self, rng: random.Random) -> str | None:
        """The fault kind this request gets, or None."""
        u = rng.random()
        for name in _RATE_KINDS:
            u -= getattr(self, name)
            if u < 0.0:
                return name
        return None


_RATE_KINDS = ("server_error", "rate_limited", "hang", "truncate", "disconnect")


@dataclass(frozen=True)
class Degrade:
    """A server gone bad: every latency multiplied by ``latency_factor``, and ``wrong_share`` of the answers
    replaced by ``wrong_answer`` (valid JSON of the wrong shape, which fails a step's validation)."""

    latency_factor: float = 1.0
    wrong_share: float = 0.0
    wrong_answer: str = '{"unexpected": "wrong-shaped answer"}'

    def __post_init__(self) -> None:
        factor = self.latency_factor
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0.0 <= factor <= MAX_LATENCY_FACTOR:
            raise ValueError(f"latency_factor: expected a number in [0, {MAX_LATENCY_FACTOR:g}], got {factor!r}")
        share = self.wrong_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
            raise ValueError(f"wrong_share: expected a probability in [0, 1], got {share!r}")
        if not isinstance(self.wrong_answer, str) or len(self.wrong_answer) > 1000:
            raise ValueError("wrong_answer: expected a string of at most 1000 characters")


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: dict[str, Any]
    connection: int  # which TCP connection carried it (1, 2, ...): shows keep-alive and pool sizes
    at: float = 0.0  # when it arrived (time.monotonic)
    outcome: str = "ok"  # one of OUTCOMES (requests other than chat completions: "ok" or "injected")


class OpenAIStub:
    """``POST /v1/chat/completions`` and ``GET /v1/models`` on a free port; records every request.

    ``formats`` are the ``response_format`` types it accepts besides ``text``; any other type is answered
    with ``reject_status`` (400 as OpenAI does, 422 as llama-cpp-python's server does) naming
    ``response_format``. A request with ``tools`` is answered with a call of the chosen tool whose
    arguments are the answer, as instructor's tools mode expects.
    """

    def __init__(self, answer: Answer = echo, *, latency: float = 0.0,
                 formats: Iterable[str] = ("json_schema", "json_object"), reject_status: int = 400,
                 model: str = "stub-model", rates: FaultRates | None = None, degrade: Degrade | None = None,
                 seed: int | None = 0, control: bool = False):
        self.answer = answer
        self.latency = latency
        self.formats = set(formats)
        self.reject_status = reject_status
        self.model = model
        self.requests: list[RecordedRequest] = []
        self.faults: deque[Fault] = deque()
        self.rates = rates or FaultRates()  # replaced whole (frozen): safe to set from another thread mid-run
        self.degrade = degrade or Degrade()
        self.control = control
        self.counts: Counter[str] = Counter()  # chat requests by outcome (OUTCOMES)
        self._rng = random.Random(seed)  # drawn on the server's loop only
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

    def set_rates(self, rates: FaultRates | None = None, /, **changes: Any) -> FaultRates:
        """Fault rates from now on: ``rates``, or the current ones with ``changes`` (``set_rates()``: none)."""
        self.rates = rates if rates is not None else FaultRates() if not changes else replace(self.rates, **changes)
        return self.rates

    def set_degrade(self, degrade: Degrade | None = None, /, **changes: Any) -> Degrade:
        """Degradation from now on: ``degrade``, or the current one with ``changes`` (``set_degrade()``: healed)."""
        self.degrade = (degrade if degrade is not None else Degrade() if not changes
                        else replace(self.degrade, **changes))
        return self.degrade

    def state(self) -> dict[str, Any]:
        """Rates, degradation and outcome counts, as plain data (what ``GET /_control`` answers)."""
        return {"rates": asdict(self.rates), "degrade": asdict(self.degrade), "counts": dict(self.counts),
                "requests": len(self.requests)}

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
        keep_alive = headers.get("connection", "").lower() != "close"
        length = int(headers.get("content-length", "0"))
        if self.control and path.split("?", 1)[0].rstrip("/") == CONTROL_PATH:
            return await self._control(reader, writer, method, length, keep_alive)
        raw = await reader.readexactly(length)
        body = json.loads(raw) if raw else {}
        fault = self.faults.popleft() if self.faults else None
        chat = method == "POST" and path.rstrip("/").endswith("/chat/completions")
        drawn = self.rates.draw(self._rng) if fault is None and chat else None
        degrade = self.degrade
        wrong = fault is None and drawn is None and chat and degrade.wrong_share > 0.0 \
            and self._rng.random() < degrade.wrong_share
        outcome = "injected" if fault is not None else drawn or ("wrong" if wrong else "ok")
        self.requests.append(RecordedRequest(method, path, headers, body, connection, time.monotonic(), outcome))
        if chat:
            self.counts[outcome] += 1
        if drawn is not None:
            fault = _RATE_FAULTS[drawn] if drawn != "rate_limited" else Fault(
                status=429, retry_after=self.rates.retry_after, message="rate limited (injected)")
        latency = self.latency * degrade.latency_factor
        if latency:
            await asyncio.sleep(latency)
        if fault is not None:
            if fault.hang:
                while await reader.read(65536):  # until the client gives up and closes (or the stub closes)
                    pass
                return False
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
        elif not chat:
            await self._send(writer, 404, _error(404, f"no route {method} {path}"))
        elif (fmt := (body.get("response_format") or {}).get("type", "text")) not in self.formats | {"text"}:
            message = f"Invalid value for 'response_format.type': '{fmt}' is not supported"
            await self._send(writer, self.reject_status, _error(self.reject_status, message, "response_format"))
        else:
            try:
                text = degrade.wrong_answer if wrong else self.answer(body)
            except Exception as e:  # noqa: BLE001 - a failing answer function is the server's 500
                await self._send(writer, 500, _error(500, f"answer failed: {e!r}"))
                return keep_alive
            if body.get("stream"):
                await self._stream(writer, body, text)
            else:
                await self._send(writer, 200, self._completion(body, text))
        return keep_alive

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str, length: int,
                       keep_alive: bool) -> bool:
        """``GET``/``POST /_control``: read, or set, the fault rates and the degradation (loopback peers only)."""
        peer = writer.get_extra_info("peername")
        try:
            loopback = ipaddress.ip_address(peer[0]).is_loopback
        except (TypeError, ValueError, IndexError):
            loopback = False
        if not loopback:
            await self._send(writer, 403, _error(403, "the control endpoint answers loopback peers only"))
            return False
        if not 0 <= length <= CONTROL_MAX_BYTES:
            await self._send(writer, 413, _error(413, f"a control body holds at most {CONTROL_MAX_BYTES} bytes"))
            return False
        raw = await reader.readexactly(length)
        if method == "POST":
            try:
                self._apply(json.loads(raw) if raw else {})
            except (ValueError, TypeError) as e:
                await self._send(writer, 400, _error(400, f"bad control request: {e}"))
                return keep_alive
        elif method != "GET":
            await self._send(writer, 405, _error(405, "GET or POST"))
            return keep_alive
        await self._send(writer, 200, self.state())
        return keep_alive

    def _apply(self, data: Any) -> None:
        """A control request's changes, all checked before any is made."""
        if not isinstance(data, dict) or set(data) - {"rates", "degrade", "reset_counts"}:
            raise ValueError("expected an object with some of: rates, degrade, reset_counts")
        rates, degrade = self.rates, self.degrade
        if data.get("rates") is not None:
            rates = FaultRates(**_known(data["rates"], FaultRates))
        if data.get("degrade") is not None:
            degrade = Degrade(**_known(data["degrade"], Degrade))
        if not isinstance(data.get("reset_counts", False), bool):
            raise ValueError("reset_counts: expected a boolean")
        self.rates, self.degrade = rates, degrade
        if data.get("reset_counts"):
            self.counts.clear()
            self.requests.clear()

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


_RATE_FAULTS = {"server_error": Fault(status=500, message="server error (injected)"), "hang": Fault(hang=True),
                "truncate": Fault(truncate=True), "disconnect": Fault(disconnect=True)}


def _known(data: Any, kind: type) -> dict[str, Any]:
    """``data`` as keyword arguments of the dataclass ``kind``: a JSON object of its fields only."""
    if not isinstance(data, dict):
        raise ValueError(f"{kind.__name__}: expected an object")
    names = {f.name for f in fields(kind)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{kind.__name__}: unknown keys {sorted(unknown)}; expected some of {sorted(names)}")
    return data


_NATIVE_INPUT = re.compile(r'^text: (".*")$', re.M)
_CHAT_INPUT = re.compile(r"\[\[ ## text ## \]\]\n(.*?)(?:\n\n|\n?$)", re.S)


def shout(body: Mapping[str, Any]) -> str:
    """Answers a ``text -> shout`` step with the text upper-cased: as JSON for the native engine (its user message
    holds ``text: "<JSON string>"``), in dspy's ChatAdapter format for a ChatAdapter prompt (``[[ ## text ## ]]``
    fields) and as JSON for any other prompt (dspy's JSONAdapter). A prompt without the input raises: a 500."""
    messages = list(body.get("messages") or ())
    user = next(str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user")
    system = str(messages[0].get("content") or "") if messages else ""
    native = next((json.loads(m.group(1)) for msg in messages if msg.get("role") == "user"
                   for m in [_NATIVE_INPUT.search(str(msg.get("content") or ""))] if m), None)
    if native is not None:
        return json.dumps({"shout": str(native).upper()})
    found = _CHAT_INPUT.search(user) or next((m for msg in messages if msg.get("role") == "user"
                                              for m in [_CHAT_INPUT.search(str(msg.get("content") or ""))] if m), None)
    if found is None:
        raise ValueError("no text input in the prompt")
    text = found.group(1).strip().upper()
    if "[[ ## completed ## ]]" in system and not body.get("response_format"):
        return f"[[ ## shout ## ]]\n{text}\n\n[[ ## completed ## ]]"
    return json.dumps({"shout": text})


def _error(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def stop_child(proc: "subprocess.Popen[str] | None") -> None:
    """End a stub started as a child process (``main``): closing its stdin asks it to stop; it is killed if it
    has not within 10 s."""
    if proc is None:
        return
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.stdout.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="An OpenAI-compatible stub server on 127.0.0.1.")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--answer", help="a fixed answer (default: echo the last message)")
    parser.add_argument("--answer-fn", metavar="MODULE:FUNCTION",
                        help="answer with FUNCTION(body) from an importable MODULE")
    parser.add_argument("--rate", action="append", default=[], metavar="KIND=P",
                        help=f"a fault rate (repeatable); KIND is one of {', '.join(_RATE_KINDS)}")
    parser.add_argument("--retry-after", default="1", help="the Retry-After of rate-drawn 429s (seconds)")
    parser.add_argument("--seed", type=int, default=0, help="the seed of the fault and wrong-answer draws")
    parser.add_argument("--control", action="store_true", help=f"serve {CONTROL_PATH} (loopback peers only)")
    args = parser.parse_args(argv)
    fixed: str | None = args.answer
    answer: Answer = echo if fixed is None else (lambda body: fixed)
    if args.answer_fn is not None:
        module, _, function = args.answer_fn.partition(":")
        answer = getattr(importlib.import_module(module), function)
    rates: dict[str, Any] = {"retry_after": args.retry_after}
    for item in args.rate:
        kind, _, value = item.partition("=")
        if kind not in _RATE_KINDS:
            parser.error(f"--rate {item}: KIND is one of {', '.join(_RATE_KINDS)}")
        rates[kind] = float(value)
    with OpenAIStub(answer, latency=args.latency, rates=FaultRates(**rates), seed=args.seed,
                    control=args.control) as stub:
        print(stub.base_url, flush=True)
        sys.stdin.read()  # serve until the parent closes our stdin (or exits)


if __name__ == "__main__":
    main()
