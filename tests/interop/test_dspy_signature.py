"""DSPex signatures against real DSPy: string signatures compile to what ``dspy.Signature`` makes of them,
``to_dspy`` builds usable classes, and ``from_dspy`` brings DSPy classes back."""
from __future__ import annotations

import sys
import typing
from typing import Any, Literal, Optional

import dspy
import pydantic
import pytest
from dspy.utils.dummies import DummyLM

from dspex.interop.dspy_signature import from_dspy, to_dspy
from dspex.ir.program import Field, Signature
from dspex.ir.types import FLOAT, INT, STR, EnumOf, ListOf, OptionalOf, Record, RecordField, to_python
from dspex.lang.ast import Span
from dspex.lang.diagnostics import Reporter, render_all
from dspex.lang.sigstring import parse_signature_string
from dspex.lang.typeresolve import resolve_type

CORPUS = [
    "question -> answer",
    "question, context -> answer",
    "question: str -> answer: str",
    "question -> answer: int",
    "text -> is_spam: bool",
    "x: float, y: float -> distance: float",
    "texts: list[str], labels: list[str] -> summary",
    "document -> entities: dict[str, int]",
    "question -> answer: Optional[int]",
    "review -> sentiment: Literal['positive', 'negative', 'neutral']",
    'review -> label: Literal["a", "b"]',
    "  question   ->   answer  ",
    "question,context->answer",
    "a,\n b\t-> c",
    "items: List[str] -> counts: Dict[str, int]",
    "a, b, c, d, e, f -> g, h, i, j",
    "query: str, k: int -> passages: list[str], scores: list[float]",
    "x: int | None -> y: Optional[str]",
    "x: None | int -> y",
    "x: Union[int, None] -> y: bool",
    "matrix: list[list[int]] -> total: int",
    "nested: dict[str, list[str]] -> flat: list[str]",
    "x: typing.List[int] -> y",
    "flags: dict[str, bool] -> ok: bool",
    "context: list[str], question: str -> reasoning, answer",
    "sentence -> tags: list[Literal['noun', 'verb']]",
    "x: Optional[list[str]] -> y: dict[int, Optional[float]]",
    "a, b, -> c",
    "x: list [ int ] -> y",
    "doc: str -> keywords: List[str], score: float",
    "x -> y: Literal['a',]",
    "x: Dict[str, List[Optional[bool]]] -> y: List[Dict[str, float]]",
]


def compile_string(text: str, name: str = "StringSignature") -> Signature:
    """What the compiler makes of ``signature NAME = "text"`` with no declared types in scope."""
    rep = Reporter("t.dspex", text)
    decls = parse_signature_string(text, lambda s, e: Span(1, s + 1, 1, e + 1), rep)
    assert decls is not None, render_all(rep.diagnostics)
    fields = [(d.role, Field(d.name.text, resolve_type(d.type, lambda n: None, (), rep))) for d in decls]
    assert rep.diagnostics == []
    return Signature(name, "", tuple(f for role, f in fields if role == "in"),
                     tuple(f for role, f in fields if role == "out"))


def canonical(annotation: Any) -> Any:
    """``typing.List[X]`` as ``list[X]`` and ``typing.Dict`` as ``dict``: the same type in another spelling.

    DSPy keeps the spelling it was given; the IR has one list and one dict type, so ``to_python`` gives the
    builtin generics. Everything else is left as it is and compared exactly.
    """
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list:
        return list[canonical(args[0])]  # type: ignore[misc]
    if origin is dict:
        return dict[canonical(args[0]), canonical(args[1])]  # type: ignore[misc]
    if origin is typing.Union:
        return typing.Union[tuple(canonical(a) for a in args)]
    return annotation


def described(cls: type[dspy.Signature]) -> list[tuple[str, str, Any]]:
    return [(name, f.json_schema_extra["__dspy_field_type"], canonical(f.annotation))  # type: ignore[index]
            for name, f in cls.fields.items()]


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 25


@pytest.mark.parametrize("text", CORPUS)
def test_string_signature_matches_dspy(text: str) -> None:
    ref = dspy.Signature(text)
    sig = compile_string(text)
    ours = [(f.name, "input", to_python(f.type)) for f in sig.inputs]
    ours += [(f.name, "output", to_python(f.type)) for f in sig.outputs]
    assert ours == described(ref)
    if "List" not in text and "Dict" not in text:  # same spelling: the very same annotations
        assert [a for *_, a in ours] == [f.annotation for f in ref.fields.values()]
    assert described(sig.to_dspy()) == described(ref)


def test_to_dspy_keeps_the_string_signatures_default_instructions() -> None:
    ref = dspy.Signature("question, context -> answer")
    assert compile_string("question, context -> answer").to_dspy().instructions == ref.instructions


CITATION = Record("Citation", (RecordField("source", STR, "where the fact comes from"),
                               RecordField("page", OptionalOf(INT))))
CLASSIFY = Signature(
    "Classify", "Classify the sentiment of a product review.",
    inputs=(Field("review", STR, "the review text"), Field("context", ListOf(STR), "retrieved passages", [], True)),
    outputs=(Field("label", EnumOf(("positive", "negative", "neutral"))),
             Field("confidence", FLOAT, "how sure, from 0 to 1"),
             Field("citations", ListOf(CITATION))),
)


def test_to_dspy_block_signature() -> None:
    cls = CLASSIFY.to_dspy()
    assert issubclass(cls, dspy.Signature) and cls.__name__ == "Classify"
    assert cls.instructions == "Classify the sentiment of a product review."
    assert list(cls.input_fields) == ["review", "context"]
    assert list(cls.output_fields) == ["label", "confidence", "citations"]
    extra = {name: f.json_schema_extra for name, f in cls.fields.items()}
    assert extra["review"]["desc"] == "the review text"  # type: ignore[index]
    assert extra["context"]["desc"] == "retrieved passages"  # type: ignore[index]
    assert extra["label"]["desc"] == "${label}"  # type: ignore[index]  # DSPy's own placeholder: no desc given
    assert cls.input_fields["context"].default == [] and cls.input_fields["review"].is_required()
    assert cls.output_fields["label"].annotation == Literal["positive", "negative", "neutral"]
    model = typing.get_args(cls.output_fields["citations"].annotation)[0]
    assert issubclass(model, pydantic.BaseModel) and model.__name__ == "Citation"
    assert {n: (f.annotation, f.description) for n, f in model.model_fields.items()} == {
        "source": (str, "where the fact comes from"), "page": (Optional[int], None)}
    assert typing.get_args(CLASSIFY.to_dspy().output_fields["citations"].annotation)[0] is model  # cached


def test_to_dspy_class_runs_in_dspy() -> None:
    answer = {"label": "positive", "confidence": 0.9, "citations": [{"source": "review", "page": None}]}
    with dspy.context(lm=DummyLM([answer])):
        out = dspy.Predict(CLASSIFY.to_dspy())(review="Great!")
    assert out.label == "positive" and out.confidence == 0.9
    assert out.citations[0].source == "review" and out.citations[0].page is None
    assert "reasoning" in dspy.ChainOfThought(CLASSIFY.to_dspy()).predict.signature.output_fields


def test_to_dspy_without_instructions_uses_dspys_default() -> None:
    sig = Signature("S", "", (Field("a", STR),), (Field("b", INT),))
    assert sig.to_dspy().instructions == "Given the fields `a`, produce the fields `b`."


def test_to_dspy_names_a_signature_dspy_cannot_hold() -> None:
    sig = Signature("Private", "", (Field("_x", STR),), (Field("y", STR),))
    with pytest.raises(ValueError, match="signature 'Private' cannot be a dspy.Signature: .*underscore"):
        sig.to_dspy()
    nested = Signature("Nested", "", (Field("x", STR),), (Field("y", Record("R", (RecordField("_z", STR),))),))
    with pytest.raises(ValueError, match="signature 'Nested' cannot be a dspy.Signature: .*underscore"):
        nested.to_dspy()


def test_to_dspy_needs_dspy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dspy", None)
    with pytest.raises(ImportError, match="pip install dspy"):
        to_dspy(CLASSIFY)


def test_from_dspy_round_trips() -> None:
    back = from_dspy(to_dspy(CLASSIFY))
    assert back == CLASSIFY
    assert back.outputs[2].type.item.name == "Citation"  # type: ignore[attr-defined]
    plain = Signature("S", "", (Field("a", STR),), (Field("b", INT),))
    assert from_dspy(to_dspy(plain)) == plain


def test_from_dspy_class() -> None:
    class QA(dspy.Signature):
        """Answer with short phrases."""

        question: str = dspy.InputField(desc="the question")
        k: int = dspy.InputField(default=3)
        answers: list[str] = dspy.OutputField()
        verdict: Literal["yes", "no"] | None = dspy.OutputField(desc="if it is a yes/no question")

    assert from_dspy(QA) == Signature(
        "QA", "Answer with short phrases.",
        (Field("question", STR, "the question"), Field("k", INT, None, 3, True)),
        (Field("answers", ListOf(STR)),
         Field("verdict", OptionalOf(EnumOf(("yes", "no"))), "if it is a yes/no question")),
    )


@pytest.mark.parametrize("text", CORPUS)
def test_from_dspy_string_signature_equals_compiled(text: str) -> None:
    assert from_dspy(dspy.Signature(text)) == compile_string(text)


def test_from_dspy_names_the_unsupported_field() -> None:
    class Odd(dspy.Signature):
        question: str = dspy.InputField()
        pair: tuple[int, str] = dspy.OutputField()

    with pytest.raises(ValueError, match="field 'pair' of Odd"):
        from_dspy(Odd)
