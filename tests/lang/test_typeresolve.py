"""Type expressions to IR types: builtins, DSPy spellings, declared names, and every error with its span."""
from __future__ import annotations

import pytest

from dspex.ir.types import (ANY, BOOL, FLOAT, INT, STR, DictOf, EnumOf, ListOf, OptionalOf, Record, RecordField,
                            Type)
from dspex.lang.ast import Lit, Name, Span, TypeEnum, TypeName, TypeOptional
from dspex.lang.diagnostics import Diagnostic, Reporter
from dspex.lang.sigstring import parse_signature_string
from dspex.lang.typeresolve import BUILTIN_TYPE_NAMES, resolve_type

SENTIMENT = EnumOf(("positive", "negative", "neutral"))
CITATION = Record("Citation", (RecordField("source", STR),))
DECLARED: dict[str, Type | str] = {"Sentiment": SENTIMENT, "Citation": CITATION, "Classify": "signature",
                                   "digest": "pipeline", "temperature": "var", "fast": "lm", "search": "tool",
                                   "Any": INT}
TYPE_NAMES = [name for name, found in DECLARED.items() if isinstance(found, Type)]


def span_of(start: int, end: int) -> Span:
    return Span(1, start + 1, 1, end + 1)


def resolve_text(type_text: str) -> tuple[Type, list[Diagnostic], str]:
    """Resolves the type written after ``x: `` in a signature string (the parser makes the tree)."""
    text = f"x: {type_text} -> y"
    rep = Reporter("t.dspex", text)
    fields = parse_signature_string(text, span_of, rep)
    assert fields is not None, rep.diagnostics
    return resolve_type(fields[0].type, DECLARED.get, TYPE_NAMES, rep), rep.diagnostics, text


@pytest.mark.parametrize("text, expected", [
    ("str", STR), ("int", INT), ("float", FLOAT), ("bool", BOOL),
    ("list[str]", ListOf(STR)), ("List[int]", ListOf(INT)),
    ("dict[str, int]", DictOf(STR, INT)), ("Dict[int, list[str]]", DictOf(INT, ListOf(STR))),
    ("dict[Sentiment, float]", DictOf(SENTIMENT, FLOAT)), ("dict[bool, str]", DictOf(BOOL, STR)),
    ("Optional[int]", OptionalOf(INT)), ("int | None", OptionalOf(INT)), ("Optional[int | None]", OptionalOf(INT)),
    ("Literal['a', 'b']", EnumOf(("a", "b"))),
    ("Sentiment", SENTIMENT), ("list[Citation]", ListOf(CITATION)), ("Optional[Citation]", OptionalOf(CITATION)),
    ("Any", INT),  # a declared type may reuse a Python name DSPex does not support
])
def test_resolves(text: str, expected: Type) -> None:
    t, diags, _ = resolve_text(text)
    assert diags == []
    assert t == expected


def test_no_annotation_is_str() -> None:
    assert resolve_type(None, DECLARED.get, (), Reporter("t", "")) == STR


def test_question_mark_optional_collapses() -> None:
    """``T??`` (the block grammar's spelling) is optional once."""
    span = Span(1, 1, 1, 2)
    inner = TypeName(Name("int", span), (), span)
    rep = Reporter("t", "")
    assert resolve_type(TypeOptional(TypeOptional(inner, span), span), DECLARED.get, (), rep) == OptionalOf(INT)
    assert rep.diagnostics == []


def test_enum_spelling() -> None:
    span = Span(1, 1, 1, 2)
    t = TypeEnum((Lit("x", "str", span, '"x"'), Lit("y", "str", span, '"y"')), span)
    assert resolve_type(t, DECLARED.get, (), Reporter("t", "")) == EnumOf(("x", "y"))


@pytest.mark.parametrize("text, code, message, where, help", [
    ("Sentimnet", "E101", "undefined type 'Sentimnet'", "Sentimnet", "did you mean 'Sentiment'?"),
    ("Lst[str]", "E101", "undefined type 'Lst'", "Lst", "did you mean 'List'?"),
    ("Widget", "E101", "undefined type 'Widget'", "Widget", None),
    ("dspy.Image", "E101", "undefined type 'dspy.Image'", "dspy.Image", None),
    ("Classify", "E103", "'Classify' is a signature, not a type", "Classify", None),
    ("list[digest]", "E103", "'digest' is a pipeline, not a type", "digest", None),
    ("temperature", "E103", "'temperature' is a var, not a type", "temperature", None),
    ("fast", "E103", "'fast' is an lm, not a type", "fast", None),
    ("search", "E103", "'search' is a tool, not a type", "search", None),
    ("list", "E201", "list needs an item type: list[T]", "list", None),
    ("Dict", "E201", "Dict needs key and value types: Dict[K, V]", "Dict", None),
    ("Optional", "E201", "Optional needs a type: Optional[T]", "Optional", None),
    ("Literal", "E201", 'Literal needs string values: Literal["a", "b"]', "Literal", None),
    ("list[str, int]", "E201", "list takes 1 type argument (list[T]), got 2", "list[str, int]", None),
    ("dict[str]", "E201", "dict takes 2 type arguments (dict[K, V]), got 1", "dict[str]", None),
    ("Optional[int, str]", "E201", "Optional takes 1 type argument (Optional[T]), got 2", "Optional[int, str]",
     None),
    ("str[int]", "E201", "type 'str' takes no type arguments", "str[int]", None),
    ("Citation[int]", "E201", "type 'Citation' takes no type arguments", "Citation[int]", None),
    ("dict[list[str], int]", "E201", "dict keys must be str, int, float, bool or an enum, not list[str]",
     "list[str]", None),
    ("dict[Citation, int]", "E201", "dict keys must be str, int, float, bool or an enum, not Citation",
     "Citation", None),
    ("tuple[int, str]", "E201", "type 'tuple' is not supported", "tuple",
     "DSPex types are str, int, float, bool, list[T], dict[K, V], T?, enums and declared types"),
    ("Literal['a', 'b', 'a']", "E201", "duplicate value 'a' in Literal", "'a'", None),
    ("Literal['a', '']", "E201", "Literal values must not be empty", "''", None),
])
def test_errors(text: str, code: str, message: str, where: str, help: str | None) -> None:
    t, diags, source = resolve_text(text)
    assert [(d.code, d.message, d.help) for d in diags] == [(code, message, help)]
    d = diags[0]
    assert source[d.col - 1:d.end_col - 1] == where
    assert t in (ANY, ListOf(ANY), DictOf(ANY, INT))  # unknown where the error is, and no further


def test_duplicate_enum_value_points_at_the_duplicate() -> None:
    _, diags, _ = resolve_text("Literal['a', 'b', 'a']")
    assert (diags[0].col, diags[0].end_col) == (22, 25)


def test_errors_inside_generics_keep_the_outer_shape() -> None:
    """``list[Sentimnet]`` is still a list: the checker can map over it without more errors."""
    t, diags, _ = resolve_text("list[Sentimnet]")
    assert t == ListOf(ANY) and [d.code for d in diags] == ["E101"]
    t, diags, _ = resolve_text("Optional[Sentimnet]")
    assert t == ANY and [d.code for d in diags] == ["E101"]


def test_every_error_in_a_type_is_reported() -> None:
    t, diags, _ = resolve_text("dict[Foo, Bar]")
    assert [d.message for d in diags] == ["undefined type 'Foo'", "undefined type 'Bar'"]
    assert t == DictOf(ANY, ANY)
    t, diags, _ = resolve_text("list[Foo, Bar]")
    assert [d.code for d in diags] == ["E101", "E101", "E201"] and t == ANY


def test_enum_values_must_be_strings() -> None:
    span = Span(1, 3, 1, 4)
    t = TypeEnum((Lit(1, "int", span, "1"), Lit("a", "str", span, '"a"')), Span(1, 1, 1, 9))
    rep = Reporter("t", "")
    assert resolve_type(t, DECLARED.get, (), rep) == ANY
    assert [(d.code, d.message, d.col) for d in rep.diagnostics] == [
        ("E201", "enum values must be strings, found 1", 3)]


def test_empty_enum() -> None:
    rep = Reporter("t", "")
    assert resolve_type(TypeEnum((), Span(1, 1, 1, 7)), DECLARED.get, (), rep) == ANY
    assert [(d.code, d.message) for d in rep.diagnostics] == [("E201", "enum needs at least one value")]


def test_type_names_are_read_once_even_for_many_errors() -> None:
    """A generator of names serves every did-you-mean in one type."""
    text = "x: dict[Sentimnet, Sentimnet] -> y"
    rep = Reporter("t", text)
    fields = parse_signature_string(text, span_of, rep)
    assert fields is not None
    resolve_type(fields[0].type, lambda n: None, (n for n in ["Sentiment"]), rep)
    assert [d.help for d in rep.diagnostics] == ["did you mean 'Sentiment'?"] * 2


def test_builtin_names() -> None:
    assert set(BUILTIN_TYPE_NAMES) == {"str", "int", "float", "bool", "list", "List", "dict", "Dict", "Optional",
                                       "Literal"}

