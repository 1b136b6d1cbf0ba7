"""The one interface every LM adapter implements, and the values that cross it.

An adapter turns an ``LMRequest`` (chat messages plus decoding options, optionally a JSON schema the
answer must follow) into an ``LMResponse`` (text plus measured latency and token counts). Adapters are
async first; ``complete`` is the same call for synchronous callers. ``identity`` names the model and
endpoint for cache keys and telemetry and never contains a secret.
"""
from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from dspex.errors import DSPexError

__all__ = ["Message", "LMRequest", "LMResponse", "LM", "LMError"]


@dataclass(frozen=True, slots=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True, slots=True)
class LMRequest:
    messages: tuple[Message, ...]
    temperature: float | None = None
    max_tokens: int | None = None
    json_schema: dict[str, Any] | None = None  # ask for JSON following this schema, where the backend can
    stop: tuple[str, ...] = ()
    timeout: float | None = None  # seconds
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class LMResponse:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    model: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class LMError(DSPexError):
    """An LM call failed. ``retryable`` says whether trying again may help (timeouts, 429, 5xx)."""

    code = "LM"

    def __init__(self, message: str, *, retryable: bool = False, status: int | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


class LM(ABC):
    """An LM endpoint. Subclasses implement ``acomplete`` (and ``astream`` where tokens can stream)."""

    identity: str = "lm"
    supports_json_schema: bool = False

    @abstractmethod
    async def acomplete(self, request: LMRequest) -> LMResponse: ...

    def complete(self, request: LMRequest) -> LMResponse:
        return asyncio.run(self.acomplete(request))

    async def astream(self, request: LMRequest) -> AsyncIterator[str]:
        """Tokens as they come; adapters without streaming yield the whole answer once."""
        yield (await self.acomplete(request)).text

    async def aclose(self) -> None:
        """Release connections and models; the adapter is not used afterwards."""

    def worker_spec(self) -> dict[str, Any] | None:
        """How a worker process rebuilds this LM: ``{"provider", "args"}`` for ``dspex.lm.spec``; never a secret
        (keys stay in environment variables, which workers inherit). None: this LM stays in its process."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.identity}>"
