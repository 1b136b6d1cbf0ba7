"""The dspy engine runs each module of SPEC §3.9 through real DSPy modules, with our LM adapters underneath.

The scripted LM answers in DSPy's ChatAdapter format, so every DSPy module parses real text; an
OpenAI-compatible stub server on 127.0.0.1 checks the path through a real ``dspy.LM``.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import threading
import typing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.util import find_spec
from typing import Any, Iterator

import pytest

import dspex
from dspex.engines.base import StepCall, ValidationError
from dspex.engines.dspy_engine import DspyEngine, MissingRequirementError
from dspex.engines.dspy_lm import to_dspy_lm
from dspex.ir.modules import MODULES
from dspex.lang.compile import Compilation
from dspex.lm.base import LM, LMError, LMRequest
from dspex.lm.dspy_lm import DspyLM
from dspex.lm.openai import OpenAILM
from dspex.lm.scripted import ScriptedLM

dspy = pytest.importorskip("dspy")


@dspex.signature
class Classify:
    """Classify the review. {{style}}"""

    review: str = dspex.In()
    label: typing.Literal["positive", "negative"] = dspex.Out()
    confidence: float = dspex.Out(ge=0, le=1)


@dspex.signature
class Lookup:
    """Answer the question, looking words up."""

    question: str = dspex.In()
    answer: str = dspex.Out()


CITE = Compilation("""
type Citation {
  source: str
  page: int? where value >= 1
}
signature Cite {
  in  question: str
  out citations: list[Citation] where len(value) <= 2
  out counts: dict[str, int]
}
""", "<test>").program.signatures["Cite"]


def chat(**fields: Any) -> str:
    """An answer in DSPy's ChatAdapter format."""
    return "".join(f"[[ ## {k} ## ]]\n{v}\n\n" for k, v in fields.items()) + "[[ ## completed ## ]]"


GOOD = chat(label="positive", confidence=0.9)
TOO_SURE = chat(label="positive", confidence=1.5)


def system(request: LMRequest) -> str:
    return request.messages[0].content


def run(call: StepCall, lm: LM, engine: DspyEngine | None = None) -> Any:
    return asyncio.run((engine or DspyEngine()).run(call, lm))


def classify(module: str, **options: Any) -> StepCall:
    return StepCall(Classify, module, {"review": "loved it"}, options, {"style": "Be terse."})


def test_supports_every_module() -> None:
    engine = DspyEngine()
    assert all(engine.supports(m) for m in MODULES) and engine.supports("cot")
    assert not engine.supports("nope")


def test_predict_returns_validated_outputs_and_counts() -> None:
    lm = ScriptedLM([GOOD])
    result = run(classify("predict"), lm)
    assert result.outputs == {"label": "positive", "confidence": 0.9}
    assert (result.engine, result.lm_calls) == ("dspy", 1)
    assert result.prompt_tokens > 0 and result.completion_tokens > 0


def test_var_values_fill_the_instructions() -> None:
    lm = ScriptedLM([GOOD])
    run(classify("predict"), lm)
    prompt = system(lm.requests[0])
    assert "Classify the review. Be terse." in prompt and "{{" not in prompt
    run(StepCall(Classify, "predict", {"review": "ok"}, var_values={"style": ["terse", 2]}), lm)
    assert 'Classify the review. ["terse", 2]' in system(lm.requests[1])  # as the native engine renders it


def test_chain_of_thought_returns_reasoning() -> None:
    lm = ScriptedLM([chat(reasoning="It says loved.", label="positive", confidence=0.8)])
    result = run(classify("cot"), lm)
    assert result.outputs == {"label": "positive", "confidence": 0.8, "reasoning": "It says loved."}


def test_constraint_failure_raises_validation_error_naming_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        run(classify("predict"), ScriptedLM([TOO_SURE]))
    assert (info.value.path, info.value.value) == ("confidence", 1.5)


def test_unparsable_answer_raises_validation_error_naming_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        run(classify("predict"), ScriptedLM([chat(label="great", confidence=0.5)]))
    assert info.value.path == "label"


def test_record_outputs_come_back_as_plain_validated_values() -> None:
    lm = ScriptedLM([chat(citations=json.dumps([{"source": "a", "page": 2}, {"source": "b", "page": None}]),
                          counts=json.dumps({"a": 1}))])
    result = run(StepCall(CITE, "predict", {"question": "Where?"}), lm)
    assert result.outputs == {"citations": [{"source": "a", "page": 2}, {"source": "b", "page": None}],
                              "counts": {"a": 1}}


def test_record_field_constraint_failure_names_the_path() -> None:
    lm = ScriptedLM([chat(citations=json.dumps([{"source": "a", "page": 0}]), counts="{}")])
    with pytest.raises(ValidationError) as info:
        run(StepCall(CITE, "predict", {"question": "Where?"}), lm)
    assert info.value.path.startswith("citations") and "page" in info.value.path


def test_the_dspy_lm_works_in_plain_synchronous_dspy_code() -> None:
    lm = ScriptedLM([chat(answer="Paris")])
    with dspy.context(lm=to_dspy_lm(lm)):
        assert dspy.Predict("question -> answer")(question="Capital of France?").answer == "Paris"


def test_lm_failure_raises_our_lm_error() -> None:
    def down(request: LMRequest) -> str:
        raise LMError("server down", retryable=True, status=503)

    with pytest.raises(LMError) as info:
        run(classify("predict"), ScriptedLM(down))
    assert info.value.status == 503 and info.value.retryable


def test_best_of_keeps_the_first_answer_that_validates_calls_on_the_step_loop() -> None:
    threads: set[int] = set()
    answers = iter([TOO_SURE, GOOD])

    def answer(request: LMRequest) -> str:
        threads.add(threading.get_ident())
        return next(answers)

    lm = ScriptedLM(answer)
    result = run(classify("best_of", n=3), lm)
    assert result.outputs["confidence"] == 0.9 and result.lm_calls == 2
    assert threads == {threading.get_ident()}  # BestOfN runs in a worker thread; the adapter stays on the loop
    assert {r.temperature for r in lm.requests} == {1.0}  # dspy's rollouts


def test_best_of_with_every_attempt_failing_raises_the_attempts_error() -> None:
    def down(request: LMRequest) -> str:
        raise LMError("server down")

    with pytest.raises(LMError):
        run(classify("best_of", n=2), ScriptedLM(down))


def test_best_of_with_no_valid_attempt_raises_validation_error() -> None:
    with pytest.raises(ValidationError) as info:
        run(classify("best_of", n=2), ScriptedLM([TOO_SURE]))
    assert info.value.path == "confidence"


def test_refine_feeds_advice_back_until_an_answer_validates() -> None:
    main = iter([TOO_SURE, GOOD])

    def answer(request: LMRequest) -> str:
        if "discussion" in system(request):  # dspy.Refine's OfferFeedback step
            return chat(discussion="Too confident.", advice=json.dumps({"self": "Keep confidence within 0..1."}))
        return next(main)

    lm = ScriptedLM(answer)
    result = run(classify("refine", n=2, threshold=1.0), lm)
    assert result.outputs == {"label": "positive", "confidence": 0.9} and result.lm_calls == 3
    assert "Keep confidence within 0..1." in lm.requests[-1].messages[-1].content


def test_multi_chain_comparison_compares_n_chains() -> None:
    def answer(request: LMRequest) -> str:
        if "reasoning_attempt_2" in system(request):
            return chat(rationale="Both attempts agree.", label="positive", confidence=0.7)
        return chat(reasoning="Loved means positive.", label="positive", confidence=0.6)

    lm = ScriptedLM(answer)
    result = run(classify("multi_chain_comparison", n=2), lm)
    assert result.outputs == {"label": "positive", "confidence": 0.7} and result.lm_calls == 3
    assert "Loved means positive." in lm.requests[-1].messages[-1].content


def test_react_calls_the_programs_tool() -> None:
    calls: list[str] = []

    def lookup(word: str) -> str:
        """Looks a word up in the glossary."""
        calls.append(word)
        return f"{word}: a compiled language for LM programs"

    lm = ScriptedLM([
        chat(next_thought="Look it up.", next_tool_name="lookup", next_tool_args=json.dumps({"word": "dspex"})),
        chat(next_thought="I know now.", next_tool_name="finish", next_tool_args="{}"),
        chat(reasoning="The glossary says so.", answer="a compiled language"),
    ])
    call = StepCall(Lookup, "react", {"question": "What is dspex?"}, {"max_iters": 3}, tools={"lookup": lookup})
    result = run(call, lm)
    assert calls == ["dspex"] and result.lm_calls == 3
    assert result.outputs["answer"] == "a compiled language"
    trajectory = result.outputs["trajectory"]
    assert trajectory["observation_0"] == "dspex: a compiled language for LM programs"
    assert json.loads(trajectory["tool_args_0"]) == {"word": "dspex"}
    assert all(isinstance(v, str) for v in trajectory.values())


def test_program_of_thought_runs_the_generated_code() -> None:
    code = "```python\nSUBMIT({'label': 'positive', 'confidence': 0.25 * 2})\n```"

    def answer(request: LMRequest) -> str:
        if "code_output" in system(request):
            assert "0.5" in request.messages[-1].content  # the code really ran
            return chat(reasoning="The code says so.", label="positive", confidence=0.5)
        return chat(reasoning="Compute it.", generated_code=code)

    engine = DspyEngine(interpreter_factory=dspy.LocalInterpreter)
    result = run(classify("program_of_thought"), ScriptedLM(answer), engine)
    assert result.outputs == {"label": "positive", "confidence": 0.5} and result.lm_calls == 2


@pytest.mark.skipif(find_spec("deno") is not None or shutil.which("deno") is not None, reason="Deno is installed")
def test_program_of_thought_without_deno_names_the_requirement() -> None:
    with pytest.raises(MissingRequirementError, match="Deno"):
        run(classify("program_of_thought"), ScriptedLM([GOOD]))


def test_modules_are_built_once_per_structure() -> None:
    engine = DspyEngine(cache_size=2)
    first = engine.module_for(classify("predict"))
    assert engine.module_for(StepCall(Classify, "predict", {"review": "meh"}, {"temperature": 0.3},
                                      {"style": "Be terse."})) is first
    assert engine.module_for(StepCall(Classify, "predict", {}, {}, {"style": "Be kind."})) is not first
    assert engine.module_for(classify("best_of", n=2)) is not engine.module_for(classify("best_of", n=3))
    assert engine.module_for(classify("predict")) is not first  # evicted: the LRU holds two


def test_concurrent_steps_count_their_own_calls() -> None:
    async def many() -> list[Any]:
        engine, lm = DspyEngine(), ScriptedLM([GOOD], delay=0.01)
        return await asyncio.gather(*(engine.run(classify("predict"), lm) for _ in range(8)))

    assert [r.lm_calls for r in asyncio.run(many())] == [1] * 8


def test_the_dspy_lm_is_made_once_per_adapter_and_settings() -> None:
    lm = ScriptedLM([GOOD])
    assert to_dspy_lm(lm, temperature=0.2) is to_dspy_lm(lm, temperature=0.2)
    assert to_dspy_lm(lm, temperature=0.2) is not to_dspy_lm(lm, temperature=0.7)


class _Stub(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat-completions endpoint answering at once (``status`` other than 200: an error)."""

    protocol_version = "HTTP/1.1"
    bodies: list[dict[str, Any]] = []
    status = 200

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.bodies.append(body)
        out = json.dumps({
            "id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": chat(answer="Paris")}}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
        } if self.status == 200 else {"error": {"message": "overloaded", "type": "server_error"}}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def stub_server() -> Iterator[str]:
    _Stub.bodies, _Stub.status = [], 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


def test_the_openai_adapter_runs_through_a_real_dspy_lm_on_the_same_server(stub_server: str) -> None:
    lm = OpenAILM("smol", stub_server)
    assert type(to_dspy_lm(lm)) is dspy.LM
    call = StepCall(Lookup, "predict", {"question": "Capital of France?"}, {"temperature": 0.0, "max_tokens": 20})
    result = run(call, lm)
    assert result.outputs == {"answer": "Paris"}
    assert (result.lm_calls, result.prompt_tokens, result.completion_tokens) == (1, 11, 3)
    assert _Stub.bodies[0]["model"] == "smol" and _Stub.bodies[0]["temperature"] == 0.0



def test_a_server_error_through_dspy_lm_is_a_retryable_lm_error(stub_server: str) -> None:
    _Stub.status = 503
    with pytest.raises(LMError) as info:
        run(StepCall(Lookup, "predict", {"question": "Capital of France?"}), OpenAILM("smol", stub_server))
    assert info.value.retryable and info.value.status == 503 and len(_Stub.bodies) == 1  # dspy did not retry


def test_the_dspy_adapter_lends_its_own_dspy_lm_with_the_steps_settings(stub_server: str) -> None:
    lm = DspyLM("openai/smol", api_base=stub_server, api_key="x")
    assert to_dspy_lm(lm) is lm.dspy_lm
    result = run(StepCall(Lookup, "predict", {"question": "Capital of France?"}, {"max_tokens": 7}), lm)
    assert result.outputs == {"answer": "Paris"} and result.lm_calls == 1
    assert _Stub.bodies[0]["max_completion_tokens"] == 7 and lm.dspy_lm.kwargs.get("max_tokens") is None
