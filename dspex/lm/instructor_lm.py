"""The ``instructor`` adapter: structured outputs through the ``instructor`` library.

The same endpoint as the ``openai`` adapter (it is one, for plain completions and streaming), but a
request that carries a JSON schema goes through ``instructor``: the schema becomes a pydantic model and
instructor asks for it in its ``mode`` (``json`` by default: ``response_format`` ``json_object`` plus the
schema in the prompt, which OpenAI, vLLM and both llama.cpp servers accept; ``tools``, ``json_schema`` and
``md_json`` are the other common ones). Its validation re-asks are off: DSPex validates and re-asks itself.
"""
from __future__ import annotations

import functools
import json
import time
from typing import Any, AsyncIterator

from pydantic import BaseModel

from dspex.lm._loops import PerLoop
from dspex.lm.base import LMError, LMRequest, LMResponse
from dspex.lm.openai import DEFAULT_BASE_URL, OpenAILM, parse_retry_after
from dspex.lm.schema_model import model_from_schema

__all__ = ["InstructorLM"]


class InstructorLM(OpenAILM):
    """An OpenAI-compatible endpoint whose structured outputs go through ``instructor`` in ``mode``."""

    def __init__(self, model: str, base_url: str = DEFAULT_BASE_URL, *, api_key_env: str | None = None,
                 api_key: str | None = None, max_tokens: int | None = None, temperature: float | None = None,
                 timeout: float = 60.0, max_connections: int = 64, mode: str = "json"):
        try:
            import instructor
        except ImportError as e:
            raise LMError("the instructor lm needs instructor: pip install 'dspex[instructor]'") from e
        try:
            self.mode = instructor.Mode[mode.upper()] if mode.upper() in instructor.Mode.__members__ \
                else instructor.Mode(mode)
        except ValueError:
            raise ValueError(f"unknown instructor mode {mode!r}; e.g. json, tools, json_schema, md_json") from None
        super().__init__(model, base_url, api_key_env=api_key_env, api_key=api_key, max_tokens=max_tokens,
                         temperature=temperature, timeout=timeout, max_connections=max_connections,
                         response_format="none")
        self.supports_json_schema = True
        self.identity = f"instructor:{model}@{self.base_url}"
        self._instructors: PerLoop[tuple[Any, Any]] = PerLoop(self._new_instructor)

    def _new_instructor(self) -> tuple[Any, Any]:
        """An OpenAI SDK client (it pools its own connections) and instructor over it, for this loop."""
        import instructor
        import openai

        client = openai.AsyncOpenAI(base_url=self.base_url, api_key="none", max_retries=0, timeout=self.timeout)
        return client, instructor.from_openai(client, mode=self.mode)

    async def acomplete(self, request: LMRequest) -> LMResponse:
        if request.json_schema is None:
            return await super().acomplete(request)
        started = time.perf_counter()
        output = _output_model(json.dumps(request.json_schema, sort_keys=True))
        key = self.api_key()
        options: dict[str, Any] = {
            "model": self.model, "response_model": output, "max_retries": 0, "strict": False,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "timeout": request.timeout or self.timeout,
            "extra_headers": {"Authorization": f"Bearer {key}" if key else _omit()},
        }
        body = self.body(request, "none")
        options.update({k: body[k] for k in ("temperature", "max_tokens", "stop", "seed") if k in body})
        try:
            result, raw = await self._instructors.get()[1].chat.completions.create_with_completion(**options)
        except Exception as e:  # noqa: BLE001 - instructor wraps SDK and validation errors alike
            raise self._instructor_error(e) from None
        usage = raw.usage
        return LMResponse(result.model_dump_json(by_alias=True), usage.prompt_tokens if usage else 0,
                          usage.completion_tokens if usage else 0, time.perf_counter() - started,
                          raw.model or self.model, {"finish_reason": raw.choices[0].finish_reason})

    async def astream(self, request: LMRequest) -> AsyncIterator[str]:
        """Plain requests stream token by token; a structured answer comes whole, once validated."""
        if request.json_schema is not None:
            yield (await self.acomplete(request)).text
            return
        async for token in super().astream(request):
            yield token

    async def _close_loop_clients(self) -> None:
        clients = self._instructors.pop()
        if clients is not None:
            await clients[0].close()
        await super()._close_loop_clients()

    def _instructor_error(self, error: BaseException) -> LMError:
        """The SDK error behind instructor's wrapper, as an ``LMError``; anything else failed validation."""
        import openai

        cause: BaseException | None = error
        while cause is not None and not isinstance(cause, openai.OpenAIError):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, openai.APITimeoutError):
            return LMError(f"{self.identity}: timed out", retryable=True)
        if isinstance(cause, openai.APIConnectionError):
            return LMError(f"{self.identity}: {type(cause).__name__}: {self._scrub(str(cause))}", retryable=True)
        if isinstance(cause, openai.APIStatusError):
            status = cause.status_code
            return LMError(f"{self.identity}: HTTP {status}: {self._scrub(str(cause))[:300]}",
                           retryable=status in (408, 409, 429) or status >= 500, status=status,
                           retry_after=parse_retry_after(cause.response.headers))
        return LMError(f"{self.identity}: no valid structured output: {type(error).__name__}: "
                       f"{self._scrub(str(error))[:500]}")


@functools.lru_cache(maxsize=256)
def _output_model(schema_json: str) -> type[BaseModel]:
    """One model per distinct schema: building a pydantic model costs far more than a call's overhead."""
    return model_from_schema(json.loads(schema_json))


def _omit() -> Any:
    """The openai SDK's marker that removes a default header: local servers get no Authorization at all."""
    import openai

    return openai.omit
