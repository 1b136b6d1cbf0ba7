"""The ``dspy`` adapter: a real ``dspy.LM`` (any provider dspy reaches: its lm15 engine or litellm).

Calls go through dspy's canonical ``lm15.Request`` interface, so generation options and the JSON schema are
explicit per call. dspy's response cache and its retries are off by default: DSPex caches and retries
around every LM itself, and a second layer of either would hide failures and skew latencies. The
``dspy.LM`` is built on first use, so a declared but unused lm costs no import and reads no key.
"""
from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

from dspex.lm.base import LM, LMError, LMRequest, LMResponse

__all__ = ["DspyLM"]


class DspyLM(LM):
    """``DspyLM("openai/gpt-4o-mini", api_base=..., temperature=...)``: ``kwargs`` go to ``dspy.LM``, except
    ``api_key_env``, the environment variable whose value is passed as ``api_key`` when the LM is built."""

    supports_json_schema = True  # asked for as lm15's response_format; dropped if the server rejects it

    def __init__(self, model: str, **kwargs: Any):
        self.model = model
        self.api_key_env: str | None = kwargs.pop("api_key_env", None)
        kwargs.setdefault("cache", False)
        kwargs.setdefault("num_retries", 0)
        self._kwargs = kwargs
        self._lm: Any = None
        self._lock = threading.Lock()
        self.identity = f"dspy:{model}"

    def worker_spec(self) -> dict[str, Any] | None:
        if "api_key" in self._kwargs:  # a key given at run time never leaves this process
            return None
        return {"provider": "dspy", "args": {"model": self.model, "api_key_env": self.api_key_env, **self._kwargs}}

    @property
    def dspy_lm(self) -> Any:
        """The wrapped ``dspy.LM``, built on first use."""
        with self._lock:
            if self._lm is None:
                try:
                    import dspy
                except ImportError as e:
                    raise LMError("the dspy lm needs dspy: pip install 'dspex[dspy]'") from e
                kwargs = dict(self._kwargs)
                if self.api_key_env is not None:
                    key = os.environ.get(self.api_key_env)
                    if not key:
                        raise LMError(f"{self.identity}: the environment variable {self.api_key_env} "
                                      "(api_key_env) is not set")
                    kwargs["api_key"] = key
                self._lm = dspy.LM(self.model, **kwargs)
            return self._lm

    def _request(self, request: LMRequest, schema: bool) -> Any:
        from dspy import lm15

        defaults = self.dspy_lm.kwargs
        system = "\n\n".join(m.content for m in request.messages if m.role == "system") or None
        messages = tuple(lm15.Message(role=m.role, parts=(lm15.TextPart(text=m.content),))
                         for m in request.messages if m.role != "system")
        response_format = None
        if schema and request.json_schema is not None:
            response_format = {"type": "json_schema", "name": "output", "schema": request.json_schema,
                               "strict": True}
        config = lm15.Config(
            max_tokens=request.max_tokens if request.max_tokens is not None else defaults.get("max_tokens"),
            temperature=request.temperature if request.temperature is not None else defaults.get("temperature"),
            stop=request.stop, seed=request.seed, response_format=response_format)
        return lm15.Request(model=self.model, messages=messages, system=system, config=config)

    def _response(self, response: Any, started: float) -> LMResponse:
        usage = response.usage
        return LMResponse(response.text or "", usage.input_tokens or 0, usage.output_tokens or 0,
                          time.perf_counter() - started, response.model or self.model,
                          {"finish_reason": response.finish_reason})

    def _error(self, error: Exception) -> LMError:
        from dspy.utils.exceptions import is_retryable_lm_error

        return LMError(f"{self.identity}: {type(error).__name__}: {error}", retryable=is_retryable_lm_error(error),
                       status=getattr(error, "status", None), retry_after=getattr(error, "retry_after", None))

    def _rejected_schema(self, error: Exception, request: LMRequest) -> bool:
        """Did the server refuse the JSON schema? Then stop asking for one (for every later call too)."""
        if request.json_schema is None or getattr(error, "status", None) not in (400, 422) \
                or "response_format" not in str(error):
            return False
        self.supports_json_schema = False
        return True

    async def acomplete(self, request: LMRequest) -> LMResponse:
        from dspy.utils.exceptions import LMError as DspyLMError

        started = time.perf_counter()
        lm = self.dspy_lm
        while True:
            schema = self.supports_json_schema
            call = lm.acall(self._request(request, schema))
            try:
                response = await (asyncio.wait_for(call, request.timeout) if request.timeout else call)
            except asyncio.TimeoutError:
                raise LMError(f"{self.identity}: timed out after {request.timeout:g} s", retryable=True) from None
            except DspyLMError as e:
                if schema and self._rejected_schema(e, request):
                    continue
                raise self._error(e) from None
            return self._response(response, started)

    def complete(self, request: LMRequest) -> LMResponse:
        """dspy's own synchronous path (``request.timeout`` does not apply; the LM's ``timeout`` does)."""
        from dspy.utils.exceptions import LMError as DspyLMError

        started = time.perf_counter()
        lm = self.dspy_lm
        while True:
            try:
                schema = self.supports_json_schema
                response = lm(self._request(request, schema))
            except DspyLMError as e:
                if schema and self._rejected_schema(e, request):
                    continue
                raise self._error(e) from None
            return self._response(response, started)

    async def aclose(self) -> None:
        if self._lm is not None:
            await self._lm.aclose()
            self._lm.close()
