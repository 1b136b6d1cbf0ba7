"""Our LM adapters as ``dspy.LM`` objects, so that the dspy engine's modules reach the step's own endpoint.

The ``openai`` adapter becomes a real ``dspy.LM`` aimed at the same server: dspy's own client, as a DSPy user
would run it; the ``dspy`` adapter gives its own ``dspy.LM``. Any other adapter (the embedded model, the scripted
test LM) is plugged in as a dspy *custom engine* (``complete(Request) -> Response``), the interface dspy 3.4
asks for instead of the ``BaseLM.forward`` subclasses it deprecates. DSPy is imported only when called.
"""
from __future__ import annotations

import asyncio
import os
import weakref
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterator

from dspex.lm.base import LM, LMError, LMRequest, LMResponse, Message

if TYPE_CHECKING:
    import dspy
    from dspy import lm15

__all__ = ["to_dspy_lm", "as_lm_error", "STEP_LOOP"]

# The event loop a step runs on. A dspy module that only runs synchronously runs in a worker thread, and its
# LM calls are sent back to this loop, where the adapter's pooled clients live.
STEP_LOOP: ContextVar[asyncio.AbstractEventLoop | None] = ContextVar("dspex_step_loop", default=None)

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "user"}
# One dspy LM per adapter and decoding settings: building one is far slower than a call.
_LMS: weakref.WeakKeyDictionary[LM, dict[tuple[Any, ...], dspy.LM]] = weakref.WeakKeyDictionary()


def to_dspy_lm(lm: LM, *, temperature: float | None = None, max_tokens: int | None = None,
               timeout: float | None = None) -> dspy.LM:
    """A ``dspy.LM`` (a ``dspy.BaseLM``) for ``lm``, without dspy's response cache and retries: DSPex has its
    own cache, and retrying an ``LMError`` (``retryable`` says when) is the runtime's business."""
    key = (temperature, max_tokens, timeout)
    per_lm = _LMS.setdefault(lm, {})
    made = per_lm.get(key)
    if made is None:
        made = per_lm[key] = _make(lm, temperature, max_tokens, timeout)
    return made


def as_lm_error(error: BaseException) -> LMError | None:
    """Our ``LMError`` for an LM failure raised inside dspy (ours passes through), None for anything else."""
    from dspy.utils import exceptions as dx

    chain: list[BaseException] = []
    seen: BaseException | None = error
    while seen is not None and seen not in chain:  # dspy wraps what our adapter raised
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    ours = next((e for e in chain if isinstance(e, LMError)), None)
    if ours is not None:
        return ours
    theirs = next((e for e in chain if isinstance(e, dx.LMError)), None)
    if theirs is not None:
        made = LMError(str(theirs), retryable=dx.is_retryable_lm_error(theirs), status=theirs.status,
                       retry_after=theirs.retry_after)
        made.__cause__ = theirs
        return made
    return None


def _make(lm: LM, temperature: float | None, max_tokens: int | None, timeout: float | None) -> dspy.LM:
    import dspy

    from dspex.lm.dspy_lm import DspyLM
    from dspex.lm.openai import OpenAILM

    if isinstance(lm, DspyLM):  # already a dspy.LM: only the step's settings change
        given = {k: v for k, v in (("temperature", temperature), ("max_tokens", max_tokens), ("timeout", timeout))
                 if v is not None}
        return lm.dspy_lm.copy(**given) if given else lm.dspy_lm
    if isinstance(lm, OpenAILM):
        # dspy would otherwise fetch a model price list from the internet on first use: a step aimed at a
        # local server must not reach out (nor stall where there is no network).
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        name = lm.model if lm.model.startswith("openai/") else "openai/" + lm.model
        return dspy.LM(name, api_base=lm.base_url, api_key=lm.api_key() or "x", cache=False, num_retries=0,
                       temperature=lm.temperature if temperature is None else temperature,
                       max_tokens=lm.max_tokens if max_tokens is None else max_tokens,
                       timeout=lm.timeout if timeout is None else timeout)
    return dspy.LM(f"dspex/{lm.identity}", engine=_Engine(lm, timeout), async_engine=_AsyncEngine(lm, timeout),
                   cache=False, num_retries=0, temperature=temperature, max_tokens=max_tokens)


class _Engine:
    """dspy's synchronous engine contract over our async adapter."""

    def __init__(self, lm: LM, timeout: float | None):
        self.lm, self.timeout = lm, timeout

    def complete(self, request: lm15.Request) -> lm15.Response:
        ours = _request(request, self.timeout)
        loop = STEP_LOOP.get()
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or loop is running or loop.is_closed():
            return _response(self.lm.complete(ours))  # no step loop to hand the call to
        return _response(asyncio.run_coroutine_threadsafe(self.lm.acomplete(ours), loop).result())

    def stream(self, request: lm15.Request) -> Iterator[Any]:
        from dspy import lm15

        return lm15.response_to_events(self.complete(request))

    def close(self) -> None:
        """The adapter belongs to the runtime, which closes it."""


class _AsyncEngine:
    """dspy's asynchronous engine contract: awaits the adapter on the caller's loop."""

    def __init__(self, lm: LM, timeout: float | None):
        self.lm, self.timeout = lm, timeout

    async def complete(self, request: lm15.Request) -> lm15.Response:
        return _response(await self.lm.acomplete(_request(request, self.timeout)))

    async def stream(self, request: lm15.Request) -> AsyncIterator[Any]:
        from dspy import lm15

        for event in lm15.response_to_events(await self.complete(request)):
            yield event

    async def aclose(self) -> None:
        """The adapter belongs to the runtime, which closes it."""


def _text(parts: Any) -> str:
    if isinstance(parts, str):
        return parts
    return "\n".join(p.text for p in parts if getattr(p, "type", None) == "text")


def _request(request: lm15.Request, timeout: float | None) -> LMRequest:
    messages = [Message("system", _text(request.system))] if request.system else []
    messages += [Message(_ROLES[m.role], _text(m.parts)) for m in request.messages]
    config = request.config
    return LMRequest(tuple(messages), temperature=config.temperature, max_tokens=config.max_tokens,
                     stop=tuple(config.stop), timeout=timeout, seed=config.seed)


def _response(response: LMResponse) -> lm15.Response:
    from dspy import lm15

    usage = lm15.Usage(input_tokens=response.prompt_tokens, output_tokens=response.completion_tokens)
    return lm15.Response(id=None, model=response.model or "dspex", message=lm15.Message.assistant(response.text),
                         finish_reason="stop", usage=usage)
