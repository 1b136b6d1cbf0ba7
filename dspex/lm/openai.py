"""The ``openai`` adapter: any OpenAI-compatible chat-completions server (OpenAI, vLLM, llama.cpp, Ollama).

Speaks the wire protocol directly over a pooled ``aiohttp.ClientSession`` (one per event loop, keep-alive),
which is leaner than an SDK on the hot path, and than ``httpx``, whose pool stalls under concurrency
(encode/httpx#3215: a tenth of the calls per second with 64 in flight). Structured output degrades step by
step, and remembers it: ``response_format`` of type ``json_schema`` (OpenAI, vLLM, llama.cpp's C++ server),
else ``json_object`` with a ``schema`` (llama-cpp-python's server), else plain prompting, each step taken
when the server answers 400/422 naming ``response_format``. The API key is read from the environment at
call time and appears nowhere else: not in ``identity``, ``repr`` or any error message.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, AsyncIterator, Iterator, Mapping

import aiohttp

from dspex.lm._loops import LoopThread, PerLoop
from dspex.lm.base import LM, LMError, LMRequest, LMResponse

__all__ = ["OpenAILM", "DEFAULT_BASE_URL", "RESPONSE_FORMATS", "parse_retry_after"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RESPONSE_FORMATS = ("json_schema", "json_object", "none")  # strongest first; a rejection moves one step down
_MAX_DETAIL = 300
_KEEPALIVE_S = 4.0  # idle connections go before the server drops them (uvicorn, hence vLLM, after 5 s)


class OpenAILM(LM):
    """An OpenAI-compatible endpoint. ``api_key_env`` names the variable holding the key (default
    ``OPENAI_API_KEY`` for OpenAI itself, none elsewhere: local servers take no key); ``api_key`` is for
    keys held at run time only, never for source. ``response_format`` is the first structured-output
    form to try (``"none"``: always plain prompting)."""

    def __init__(self, model: str, base_url: str = DEFAULT_BASE_URL, *, api_key_env: str | None = None,
                 api_key: str | None = None, max_tokens: int | None = None, temperature: float | None = None,
                 timeout: float = 60.0, max_connections: int = 64, response_format: str = "json_schema"):
        if response_format not in RESPONSE_FORMATS:
            raise ValueError(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, not {response_format!r}")
        self.model = model
        self.base_url = base_url.rstrip("/")
        if api_key_env is None and api_key is None and self.base_url == DEFAULT_BASE_URL:
            api_key_env = "OPENAI_API_KEY"
        self.api_key_env = api_key_env
        self._api_key = api_key
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.timeout = timeout
        self.max_connections = max_connections
        self.response_format = response_format  # the form in use now
        self.supports_json_schema = response_format != "none"
        self.identity = f"openai:{model}@{self.base_url}"
        self._url = f"{self.base_url}/chat/completions"
        self._proxy = _env_proxy(self._url)  # aiohttp's trust_env would look it up per request, in a thread
        self._sessions: PerLoop[aiohttp.ClientSession] = PerLoop(self._new_session)
        self._sync = LoopThread(f"dspex-{self.identity}", self._close_loop_clients)

    def worker_spec(self) -> dict[str, Any] | None:
        if self._api_key is not None:  # a key given at run time never leaves this process
            return None
        return {"provider": "openai", "args": {
            "model": self.model, "base_url": self.base_url, "api_key_env": self.api_key_env,
            "max_tokens": self.max_tokens, "temperature": self.temperature, "timeout": self.timeout,
            "max_connections": self.max_connections, "response_format": self.response_format}}

    def _new_session(self) -> aiohttp.ClientSession:
        """This loop's pool, made on the loop: a session belongs to the loop it was made on."""
        connector = aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=_KEEPALIVE_S)
        return aiohttp.ClientSession(connector=connector)

    def api_key(self) -> str | None:
        """The key for this call: read now, so a rotated key is picked up; a named but unset variable fails."""
        if self._api_key is not None:
            return self._api_key
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise LMError(f"{self.identity}: the environment variable {self.api_key_env} (api_key_env) is not set")
        return key

    def _headers(self) -> dict[str, str]:
        key = self.api_key()
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def body(self, request: LMRequest, fmt: str, *, stream: bool = False) -> dict[str, Any]:
        """The JSON body for ``request`` with structured-output form ``fmt``."""
        body: dict[str, Any] = {"model": self.model,
                                "messages": [{"role": m.role, "content": m.content} for m in request.messages]}
        temperature = request.temperature if request.temperature is not None else self.temperature
        if temperature is not None:
            body["temperature"] = temperature
        max_tokens = request.max_tokens if request.max_tokens is not None else self.max_tokens
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if request.stop:
            body["stop"] = list(request.stop)
        if request.seed is not None:
            body["seed"] = request.seed
        if request.json_schema is not None and fmt == "json_schema":
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "output", "schema": request.json_schema,
                                                       "strict": True}}
        elif request.json_schema is not None and fmt == "json_object":
            body["response_format"] = {"type": "json_object", "schema": request.json_schema}
        if stream:
            body["stream"] = True
        return body

    def _rejected_format(self, status: int, text: str, body: Mapping[str, Any], fmt: str) -> bool:
        """Did the server refuse ``fmt``? If so, step down (once, however many calls saw it) and say so."""
        # 400 (OpenAI), 422, and 500 from llama-cpp-python's server, whose request validation fails late
        if "response_format" not in body or status not in (400, 422, 500) or "response_format" not in text:
            return False
        if self.response_format == fmt:
            self.response_format = RESPONSE_FORMATS[RESPONSE_FORMATS.index(fmt) + 1]
            self.supports_json_schema = self.response_format != "none"
        return True

    async def acomplete(self, request: LMRequest) -> LMResponse:
        started = time.perf_counter()
        session = self._sessions.get()
        timeout = request.timeout or self.timeout
        with self._http_errors(timeout):
            headers = self._headers()
            while True:
                fmt = self.response_format
                body = self.body(request, fmt)
                async with session.post(self._url, data=_json(body), headers=headers, proxy=self._proxy,
                                        timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                    raw = await response.read()
                if response.status < 400:
                    break
                text = raw.decode("utf-8", "replace")
                if not self._rejected_format(response.status, text, body, fmt):
                    raise self._status_error(response.status, text, response.headers)
        try:
            data = json.loads(raw)
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
            usage = data.get("usage") or {}
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion_tokens = int(usage.get("completion_tokens") or 0)
        except (ValueError, LookupError, TypeError, AttributeError) as e:
            raise LMError(f"{self.identity}: malformed response ({type(e).__name__}: {e})", retryable=True,
                          status=response.status) from None
        return LMResponse(text, prompt_tokens, completion_tokens, time.perf_counter() - started,
                          str(data.get("model") or self.model), {"finish_reason": choice.get("finish_reason")})

    async def astream(self, request: LMRequest) -> AsyncIterator[str]:
        """Tokens from the server's SSE stream (``data:`` events until ``[DONE]``). ``timeout`` bounds the
        connection and each wait for data, not the whole stream, which lasts as long as tokens keep coming."""
        session = self._sessions.get()
        timeout = request.timeout or self.timeout
        with self._http_errors(timeout):
            headers = self._headers()
            limits = aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout)
            while True:
                fmt = self.response_format
                body = self.body(request, fmt, stream=True)
                async with session.post(self._url, data=_json(body), headers=headers, proxy=self._proxy,
                                        timeout=limits) as resp:
                    if resp.status >= 400:
                        text = (await resp.read()).decode("utf-8", "replace")
                        if self._rejected_format(resp.status, text, body, fmt):
                            continue
                        raise self._status_error(resp.status, text, resp.headers)
                    pending = b""  # lines split here: StreamReader.readline refuses lines over 128 KiB
                    async for chunk in resp.content.iter_any():
                        *lines, pending = (pending + chunk).split(b"\n")
                        for line in lines:
                            if not line.startswith(b"data:"):
                                continue
                            data = line[5:].strip()
                            if data == b"[DONE]":
                                return
                            delta = self._delta(data)
                            if delta:
                                yield delta
                    return

    def _delta(self, data: bytes) -> str | None:
        try:
            chunk = json.loads(data)
            if "error" in chunk:
                raise LMError(f"{self.identity}: error in stream: {self._scrub(str(chunk['error']))}")
            choices = chunk.get("choices") or [{}]
            content = choices[0].get("delta", {}).get("content")
            return content if isinstance(content, str) else None
        except (ValueError, TypeError, AttributeError) as e:
            raise LMError(f"{self.identity}: malformed stream event ({type(e).__name__})", retryable=True) from None

    def complete(self, request: LMRequest) -> LMResponse:
        """The synchronous call, on a private loop whose pooled session is reused across calls."""
        return self._sync.run(self.acomplete(request))

    async def aclose(self) -> None:
        """Close this loop's session, and the private loop of ``complete`` if it was started."""
        await self._close_loop_clients()
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Release the private loop of ``complete`` (sessions of other loops are closed by ``aclose``)."""
        self._sync.close()

    async def _close_loop_clients(self) -> None:
        """Close what the running loop holds (subclasses holding more extend this)."""
        session = self._sessions.pop()
        if session is not None:
            await session.close()

    @contextlib.contextmanager
    def _http_errors(self, timeout: float) -> Iterator[None]:
        """Transport failures as ``LMError``: timeouts, broken connections and cut-off bodies may succeed on
        a retry; anything else aiohttp raises (a bad URL, say) will not."""
        try:
            yield
        except TimeoutError as e:  # aiohttp's timeouts are TimeoutErrors, asyncio's too
            raise LMError(f"{self.identity}: timed out after {timeout:g} s ({type(e).__name__})",
                          retryable=True) from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as e:
            raise LMError(f"{self.identity}: {type(e).__name__}: {self._scrub(str(e))}", retryable=True) from None
        except aiohttp.ClientError as e:
            raise LMError(f"{self.identity}: {type(e).__name__}: {self._scrub(str(e))}") from None

    def _status_error(self, status: int, text: str, headers: Mapping[str, str]) -> LMError:
        try:
            error = json.loads(text).get("error")
            detail = str(error.get("message") if isinstance(error, dict) else error or text)
        except (ValueError, AttributeError):
            detail = text
        retryable = status in (408, 409, 429) or status >= 500
        return LMError(f"{self.identity}: HTTP {status}: {self._scrub(detail)[:_MAX_DETAIL]}", retryable=retryable,
                       status=status, retry_after=parse_retry_after(headers))

    def _scrub(self, text: str) -> str:
        """``text`` without the API key, should a server or library echo it back."""
        key = self._api_key or (os.environ.get(self.api_key_env) if self.api_key_env else None)
        return text.replace(key, "***") if key else text


def _json(body: Mapping[str, Any]) -> bytes:
    """The request body: compact UTF-8 JSON, as httpx sent it (``json.dumps``' default is larger)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _env_proxy(url: str) -> str | None:
    """The proxy that ``*_PROXY`` (less ``NO_PROXY``) names for ``url``, as httpx honoured them."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    if not proxies or (parts.hostname and urllib.request.proxy_bypass(parts.hostname)):
        return None
    return proxies.get(parts.scheme) or proxies.get("all")


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date); None if absent."""
    try:
        millis = headers.get("retry-after-ms")
        if millis is not None:
            return max(0.0, float(millis) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
