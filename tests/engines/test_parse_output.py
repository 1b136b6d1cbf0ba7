"""Lenient parsing of LM answers: strict JSON, JSON inside prose or fences, DSPy sections, ``name: value``
lines, a bare answer for one output, and the error when nothing is found."""
from __future__ import annotations

from typing import Any

import pytest

from dspex.engines.base import ValidationError
from dspex.engines.parse_output import OUTPUT_PATH, parse_output
from dspex.ir.program import Field
from dspex.ir.types import FLOAT, INT, STR, EnumOf, ListOf

TWO = (Field("label", EnumOf(("positive", "negative"))), Field("confidence", FLOAT))
COT = (Field("reasoning", STR),) + TWO


@pytest.mark.parametrize("text,expected", [
    ('{"label": "positive", "confidence": 0.9}', {"label": "positive", "confidence": 0.9}),
    ('  \n{"label": "positive"}\n', {"label": "positive"}),
    ('Sure! Here it is: {"label": "negative", "confidence": 0.2} Hope it helps.',
     {"label": "negative", "confidence": 0.2}),
    ('```json\n{"label": "positive", "confidence": "0.5"}\n```', {"label": "positive", "confidence": "0.5"}),
    ('```\n{"label": "positive"}```', {"label": "positive"}),
    ('Format: {"a": 1}. Answer: {"label": "negative", "confidence": 1}', {"label": "negative", "confidence": 1}),
    ('{"label": "pos {x}", "confidence": 1} {"label": "negative"}', {"label": "pos {x}", "confidence": 1}),
    ('{broken {"label": "positive"}', {"label": "positive"}),
    ('{"other": 1}', {"other": 1}),
    ('I think {"other": 1} fits', {"other": 1}),
])
def test_json_answers(text: str, expected: dict[str, Any]) -> None:
    assert parse_output(text, TWO) == expected


def test_dspy_sections() -> None:
    text = ("[[ ## reasoning ## ]]\nIt says great.\nSo positive.\n\n[[ ## label ## ]]\npositive\n\n"
            "[[ ## confidence ## ]]\n0.8\n\n[[ ## completed ## ]]\n")
    assert parse_output(text, COT) == {"reasoning": "It says great.\nSo positive.", "label": "positive",
                                       "confidence": "0.8"}


@pytest.mark.parametrize("text,expected", [
    ("label: positive\nconfidence: 0.9", {"label": "positive", "confidence": "0.9"}),
    ("**Label**: negative\n**Confidence:** 0.1,", {"label": "negative", "confidence": "0.1"}),
    ('- "label": "positive",\n- "confidence": 0.7', {"label": "positive", "confidence": "0.7"}),
    ("Reasoning: first,\nthen second.\nlabel = positive\nlabel: negative\nconfidence: 1",
     {"reasoning": "first,\nthen second.", "label": "positive", "confidence": "1"}),
])
def test_name_value_lines(text: str, expected: dict[str, Any]) -> None:
    assert parse_output(text, COT) == expected


@pytest.mark.parametrize("field,text,expected", [
    (Field("answer", STR), "  Paris is the capital.  ", {"answer": "Paris is the capital."}),
    (Field("answer", STR), "true", {"answer": "true"}),
    (Field("answer", STR), '"quoted"', {"answer": "quoted"}),
    (Field("answer", STR), "answer: Paris", {"answer": "Paris"}),
    (Field("n", INT), "42", {"n": 42}),
    (Field("n", INT), "```\n42\n```", {"n": 42}),
    (Field("xs", ListOf(INT)), "[1, 2]", {"xs": [1, 2]}),
])
def test_single_output_takes_the_bare_answer(field: Field, text: str, expected: dict[str, Any]) -> None:
    assert parse_output(text, (field,)) == expected


@pytest.mark.parametrize("fields,text", [
    (TWO, "I cannot decide."),
    ((Field("n", INT),), "forty-two"),
    ((Field("answer", STR),), "   "),
])
def test_nothing_found(fields: tuple[Field, ...], text: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_output(text, fields)
    names = ", ".join(f"`{f.name}`" for f in fields)
    assert info.value.path == OUTPUT_PATH
    assert str(info.value) == f"<output>: could not find the output fields {names} in the answer, got {text.strip()!r}"


def test_long_answers_are_shortened_in_the_error() -> None:
    with pytest.raises(ValidationError) as info:
        parse_output("x" * 500, TWO)
    assert info.value.value == "x" * 200 + "..."
