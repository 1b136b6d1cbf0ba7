"""Decorated Python compiles to the same IR as `.dspex` source (SPEC §6)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal, Optional

import pytest

import dspex
from dspex.errors import CompileError, TraceError
from dspex.ir.types import STR, EnumOf, ListOf, OptionalOf

EXAMPLES = Path(__file__).parents[2] / "examples"


@dspex.signature
class Classify:
    """Classify the sentiment of a product review."""
    review: str = dspex.In(desc="the review text")
    label: Literal["positive", "negative", "neutral"] = dspex.Out()
    confidence: float = dspex.Out(desc="how sure, from 0 to 1", ge=0, le=1)


Summarize = dspex.signature("texts: list[str], labels: list[str] -> summary", name="Summarize")
temperature = dspex.var("temperature", float, 0.2, domain=(0.0, 1.0))


@dspex.pipeline
def digest(reviews: list[str]) -> dict:
    classified = dspex.map(reviews, lambda r: dspex.predict(Classify, review=r, temperature=temperature))
    return {"labels": classified.label,
            "summary": dspex.chain_of_thought(Summarize, texts=reviews, labels=classified.label).summary}


@pytest.fixture(scope="module")
def reviews_program() -> dspex.Program:
    return dspex.compile_file(EXAMPLES / "reviews.dspex")


def test_class_signature_equals_dspex_signature(reviews_program: dspex.Program) -> None:
    assert Classify == reviews_program.signatures["Classify"]
    assert Classify.fingerprint == reviews_program.signatures["Classify"].fingerprint


def test_string_signature_equals_dspex_signature(reviews_program: dspex.Program) -> None:
    assert Summarize == reviews_program.signatures["Summarize"]
    assert [f.type for f in Summarize.inputs] == [ListOf(STR), ListOf(STR)]


def test_spec_decorator_program_matches_reviews_dspex(reviews_program: dspex.Program) -> None:
    assert isinstance(digest, dspex.Pipeline)
    assert digest.graph.fingerprint == reviews_program.pipelines["digest"].graph.fingerprint
    assert [f.name for f in digest.outputs] == ["labels", "summary"]
    assert digest.outputs[0].type == ListOf(EnumOf(("positive", "negative", "neutral")))
    kinds = [n.kind for n in digest.graph]
    assert kinds == ["input", "map", "step", "output", "output"]
    assert digest.vars["temperature"].default == 0.2


def test_support_twin_with_cond_call_and_instruction_vars() -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import support_tools
    finally:
        sys.path.remove(str(EXAMPLES))
    search_docs = dspex.tool(support_tools.search_docs)

    @dspex.signature
    class Triage:
        """Decide how urgent a customer message is."""
        message: str = dspex.In()
        urgency: Literal["low", "high"] = dspex.Out()

    @dspex.signature
    class Answer:
        """Answer the customer politely. {{tone}}"""
        message: str = dspex.In()
        context: list[str] = dspex.In(default=[])
        reply: str = dspex.Out(max_len=600)

    @dspex.pipeline
    def support(message: str) -> dict:
        t = dspex.predict(Triage, message=message, lm="safe")
        docs = dspex.call(search_docs, query=message, k=2)
        out = dspex.cond(
            t.urgency == "high",
            then=lambda: {"reply": dspex.chain_of_thought(Answer, message=message, context=docs, retries=3).reply},
            otherwise=lambda: {"reply": dspex.predict(Answer, message=message, context=docs).reply})
        return {"urgency": t.urgency, "reply": out["reply"]}

    prog = dspex.compile_file(EXAMPLES / "support.dspex")
    assert support.graph.fingerprint == prog.pipelines["support"].graph.fingerprint
    guarded = [n for n in support.graph if n.guard]
    assert {n.guard[0][1] for n in guarded} == {True, False}
    assert all("tone" in n.vars for n in guarded)


def test_python_if_on_traced_value_names_cond() -> None:
    with pytest.raises(TraceError, match=r"dspex\.cond"):
        @dspex.pipeline
        def bad(review: str) -> dict:
            c = dspex.predict(Classify, review=review)
            if c.label == "positive":
                return {"x": c.confidence}
            return {"x": c.confidence}


def test_python_loop_on_traced_value_names_map() -> None:
    with pytest.raises(TraceError, match=r"dspex\.map"):
        @dspex.pipeline
        def bad(reviews: list[str]) -> dict:
            return {"x": [dspex.predict(Classify, review=r) for r in reviews]}


def test_misspelled_input_is_a_diagnostic_at_the_python_line() -> None:
    with pytest.raises(CompileError) as info:
        @dspex.pipeline
        def bad(review: str) -> dict:
            return {"x": dspex.predict(Classify, reveiw=review).label}
    d = info.value.diagnostics[0]
    assert (d.code, d.file) == ("E202", __file__)
    assert "did you mean 'review'" in (d.help or "")
    assert "reveiw=review" in (d.source_line or "")


def test_unknown_field_and_option_errors() -> None:
    with pytest.raises(CompileError, match="E202|has no field"):
        @dspex.pipeline
        def bad(review: str) -> dict:
            return {"x": dspex.predict(Classify, review=review).lable}
    with pytest.raises(CompileError) as info:
        @dspex.pipeline
        def bad2(review: str) -> dict:
            return {"x": dspex.predict(Classify, review=review, n=3).label}
    assert info.value.diagnostics[0].code == "E208"


def test_steps_outside_a_pipeline_are_an_error() -> None:
    with pytest.raises(TraceError, match="inside a @dspex.pipeline"):
        dspex.predict(Classify, review="x")


def test_map_must_run_one_step() -> None:
    with pytest.raises(TraceError, match="exactly one step"):
        @dspex.pipeline
        def bad(reviews: list[str]) -> dict:
            return {"x": dspex.map(reviews, lambda r: r)}


def test_cond_sides_must_agree() -> None:
    with pytest.raises(TraceError, match="same names"):
        @dspex.pipeline
        def bad(review: str) -> dict:
            c = dspex.predict(Classify, review=review)
            return dspex.cond(c.confidence > 0.5, then=lambda: {"a": c.label}, otherwise=lambda: {"b": c.label})


def test_optional_annotation_and_defaults() -> None:
    @dspex.signature
    class S:
        q: str = dspex.In()
        k: int = dspex.In(default=3)
        a: Optional[int] = dspex.Out()

    assert S.outputs[0].type == OptionalOf(dspex.ir.types.INT)
    assert S.inputs[1].has_default and S.inputs[1].default == 3
    compiled = dspex.compile_source("signature S {\n in q: str\n in k: int = 3\n out a: int?\n}").signatures["S"]
    assert compiled.fingerprint == S.fingerprint


def test_var_domain_checked() -> None:
    with pytest.raises(ValueError, match="outside its domain"):
        dspex.var("k", int, 12, domain=(1, 10))
    assert dspex.var("tone", str, "a", domain=["a", "b"]).decl.domain == ("a", "b")


def test_signature_needs_marked_fields() -> None:
    with pytest.raises(TypeError, match="dspex.In"):
        @dspex.signature
        class Bad:
            q: str


def test_decorated_signature_to_dspy() -> None:
    cls = Classify.to_dspy()
    assert list(cls.input_fields) == ["review"]
    assert list(cls.output_fields) == ["label", "confidence"]
