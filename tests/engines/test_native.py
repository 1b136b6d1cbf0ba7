"""The native engine against a scripted LM: the request it sends (prompt, schema, options), re-asks with the
validation error, retries, chain-of-thought reasoning and best-of candidates run at once."""
from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

import pytest

from dspex.engines.base import StepCall, StepResult, ValidationError
from dspex.engines.native import NativeEngine
from dspex.engines.render import json_schema, render_system
from dspex.ir import expr as ir
from dspex.ir.program import Field, Signature
from dspex.ir.types import FLOAT, STR, EnumOf
from dspex.lm.base import LM, LMError, LMRequest, LMResponse, Message
from dspex.lm.scripted import ScriptedLM

CLASSIFY = Signature(
    "Classify", "Classify the sentiment of a review. Be {{tone}}.", (Field("review", STR, "the review text"),),
    (Field("label", EnumOf(("positive", "negative", "neutral"))),
     Field("confidence", FLOAT, constraint=ir.Compare(("<=", "<="), (ir.Lit(0), ir.Value(), ir.Lit(1))))),
    ("tone",))
GOOD = '{"label": "positive", "confidence": 0.9}'
BAD_LABEL = '{"label": "great", "confidence": 0.9}'
TOO_SURE = '{"label": "positive", "confidence": 1.7}'


def run(call: StepCall, lm: LM, engine: NativeEngine | None = None) -> StepResult:
    return asyncio.run((engine or NativeEngine()).run(call, lm))


def step(module: str = "predict", **options: Any) -> StepCall:
    return StepCall(CLASSIFY, module, {"review": "I loved it"}, options, {"tone": "brief"})


class TextOnlyLM(ScriptedLM):
    supports_json_schema = False


def test_predict_sends_the_rendered_prompt_schema_and_options() -> None:
    lm = ScriptedLM([GOOD])
    result = run(step(temperature=0.2, max_tokens=64, timeout=1.5), lm)
    (request,) = lm.requests
    prompt_tokens = sum(len(m.content.split()) for m in request.messages)  # ScriptedLM counts words
    assert result == StepResult({"label": "positive", "confidence": 0.9}, lm_calls=1, retries=0,
                                prompt_tokens=prompt_tokens, completion_tokens=4, engine="native")
    assert request.messages == (Message("system", render_system(CLASSIFY, "predict", {"tone": "brief"})),
                                Message("user", 'review: "I loved it"'))
    assert "Be brief." in request.messages[0].content
    assert request.json_schema == json_schema(CLASSIFY, "predict")
    assert (request.temperature, request.max_tokens, request.timeout, request.seed) == (0.2, 64, 1.5, None)


def test_no_schema_for_a_text_only_lm_and_lenient_parsing() -> None:
    lm = TextOnlyLM(['Sure!\n```json\n{"label": "Positive", "confidence": "0.5"}\n```'])
    result = run(step(), lm)
    assert result.outputs == {"label": "positive", "confidence": 0.5}
    assert lm.requests[0].json_schema is None
    assert (lm.requests[0].temperature, lm.requests[0].max_tokens, lm.requests[0].timeout) == (None, None, None)


def test_validation_failure_is_fed_back_and_retried() -> None:
    lm = ScriptedLM([TOO_SURE, GOOD])
    result = run(step(), lm)
    assert (result.outputs["confidence"], result.lm_calls, result.retries) == (0.9, 2, 1)
    first, second = lm.requests
    assert second.messages[:2] == first.messages
    assert second.messages[2] == Message("assistant", TOO_SURE)
    assert second.messages[3].role == "user"
    assert second.messages[3].content.startswith(
        "That answer is not valid: confidence: expected a value <= 1, got 1.7. Fix it.")
    assert second.json_schema == first.json_schema
    assert result.prompt_tokens == sum(len(m.content.split()) for r in lm.requests for m in r.messages)
    assert result.completion_tokens == 8


def test_each_reask_carries_only_the_latest_answer() -> None:
    lm = ScriptedLM([TOO_SURE, BAD_LABEL, GOOD])
    result = run(step(), lm)
    assert (result.lm_calls, result.retries) == (3, 2)
    third = lm.requests[2].messages
    assert len(third) == 4 and third[2].content == BAD_LABEL
    assert "label: expected one of `positive`, `negative`, `neutral`, got 'great'" in third[3].content


@pytest.mark.parametrize("options,calls", [({}, 3), ({"retries": 0}, 1), ({"retries": 4}, 5)])
def test_gives_up_after_retries_with_the_last_error(options: dict[str, Any], calls: int) -> None:
    lm = ScriptedLM([BAD_LABEL, TOO_SURE])
    with pytest.raises(ValidationError) as info:
        run(step(**options), lm)
    assert len(lm.requests) == calls
    last = BAD_LABEL if calls % 2 else TOO_SURE
    assert str(info.value) == (
        "label: expected one of `positive`, `negative`, `neutral`, got 'great'" if last == BAD_LABEL
        else "confidence: expected a value <= 1, got 1.7")


def test_an_unparseable_answer_is_retried_too() -> None:
    lm = ScriptedLM(["I am not sure.", GOOD])
    assert run(step(), lm).retries == 1
    assert ("<output>: could not find the output fields `label`, `confidence` in the answer, got 'I am not sure.'"
            in lm.requests[1].messages[3].content)


def test_chain_of_thought_returns_reasoning() -> None:
    lm = ScriptedLM([json.dumps({"reasoning": "It says loved.", "label": "positive", "confidence": 1})])
    result = run(step("chain_of_thought"), lm)
    assert result.outputs == {"reasoning": "It says loved.", "label": "positive", "confidence": 1.0}
    schema = lm.requests[0].json_schema
    assert schema is not None and schema["required"] == ["reasoning", "label", "confidence"]
    assert "- `reasoning` (str): think step by step" in lm.requests[0].messages[0].content


def test_chain_of_thought_needs_reasoning() -> None:
    with pytest.raises(ValidationError, match="^reasoning: missing"):
        run(step("chain_of_thought", retries=0), ScriptedLM([GOOD]))


class BarrierLM(LM):
    """Answers only once ``n`` requests are in flight together, so a test proves concurrency without timing."""

    supports_json_schema = True

    def __init__(self, n: int, answer: Any):
        self.n, self.answer = n, answer
        self.requests: list[LMRequest] = []
        self.waiting = 0
        self.full: asyncio.Event | None = None

    async def acomplete(self, request: LMRequest) -> LMResponse:
        self.full = self.full or asyncio.Event()
        self.requests.append(request)
        self.waiting += 1
        if self.waiting == self.n:
            self.full.set()
        await asyncio.wait_for(self.full.wait(), timeout=10)
        return LMResponse(self.answer(request), prompt_tokens=10, completion_tokens=5)


def by_seed(*answers: str) -> Any:
    return lambda request: answers[request.seed]


def test_best_of_runs_candidates_at_once_and_takes_the_first_valid() -> None:
    lm = BarrierLM(3, by_seed(BAD_LABEL, '{"label": "negative", "confidence": 0.3}', GOOD))
    result = run(step("best_of"), lm)
    assert result == StepResult({"label": "negative", "confidence": 0.3}, lm_calls=3, retries=0, prompt_tokens=30,
                                completion_tokens=15, engine="native")
    assert sorted(r.seed or 0 for r in lm.requests) == [0, 1, 2]
    assert {r.temperature for r in lm.requests} == {1.0}  # like dspy.BestOfN when no temperature is set
    assert len({r.messages for r in lm.requests}) == 1


def test_best_of_takes_n_and_temperature() -> None:
    lm = BarrierLM(5, lambda request: GOOD)
    assert run(step("best_of", n=5, temperature=0.3), lm).lm_calls == 5
    assert {r.temperature for r in lm.requests} == {0.3}


def test_best_of_reasks_with_the_first_candidates_error() -> None:
    answers = iter([BAD_LABEL, TOO_SURE, TOO_SURE, GOOD])
    lm = ScriptedLM(lambda request: next(answers))
    result = run(step("best_of", n=2, retries=1), lm)
    assert (result.lm_calls, result.retries, result.outputs["label"]) == (4, 1, "positive")
    assert [r.seed for r in lm.requests] == [0, 1, 2, 3]
    reask = lm.requests[2].messages
    assert reask[:2] == lm.requests[0].messages and reask[2].content == BAD_LABEL
    assert "label: expected one of" in reask[3].content


def test_best_of_gives_up_with_the_first_candidates_error() -> None:
    lm = ScriptedLM([TOO_SURE, BAD_LABEL])
    with pytest.raises(ValidationError, match=r"^confidence: expected a value <= 1, got 1.7$"):
        run(step("best_of", n=2, retries=1), lm)
    assert len(lm.requests) == 4


def test_lm_errors_propagate_without_reasking() -> None:
    class Down(ScriptedLM):
        async def acomplete(self, request: LMRequest) -> LMResponse:
            self.requests.append(request)
            raise LMError("connection refused", retryable=True)

    lm = Down([GOOD])
    with pytest.raises(LMError):
        run(step(), lm)
    assert len(lm.requests) == 1


def test_supports_the_native_modules_only() -> None:
    engine = NativeEngine()
    assert engine.name == "native"
    assert [engine.supports(m) for m in ("predict", "chain_of_thought", "best_of", "react", "refine")] == [
        True, True, True, False, False]
    with pytest.raises(ValueError, match="does not run 'react'"):
        run(step("react"), ScriptedLM([GOOD]), engine)


def test_prompts_are_rendered_once_per_signature_module_and_vars() -> None:
    engine, lm = NativeEngine(), ScriptedLM([GOOD])
    twin = replace(CLASSIFY)  # an equal signature, another object
    calls = [step(), step(), StepCall(twin, "predict", {"review": "x"}, {}, {"tone": "brief"}),
             replace(step(), var_values={"tone": "warm", "unused": 1})]
    for call in calls:
        run(call, lm, engine)
    systems = [r.messages[0].content for r in lm.requests]
    assert systems[0] is systems[1] is systems[2]
    assert "Be warm." in systems[3]
    assert lm.requests[0].json_schema is lm.requests[3].json_schema
