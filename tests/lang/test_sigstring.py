"""DSPy string signatures: what parses, into which declarations, and exactly where errors point."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dspex.lang.ast import FieldDecl, Span, TypeEnum, TypeExpr, TypeName, TypeOptional
from dspex.lang.diagnostics import Diagnostic, Reporter
from dspex.lang.sigstring import parse_signature_string


def span_of(start: int, end: int) -> Span:
    """Offsets as 1-based columns on line 1, so ``text[col - 1:end_col - 1]`` is what a span covers."""
    return Span(1, start + 1, 1, end + 1)


def parse(text: str) -> tuple[list[FieldDecl] | None, list[Diagnostic]]:
    rep = Reporter("t.dspex", text)
    return parse_signature_string(text, span_of, rep), rep.diagnostics


def covered(text: str, span: Span) -> str:
    return text[span.col - 1:span.end_col - 1]


def show(t: TypeExpr | None) -> str:
    """A type expression written back, to compare structure compactly."""
    if t is None:
        return "-"
    if isinstance(t, TypeOptional):
        return f"?{show(t.inner)}"
    if isinstance(t, TypeEnum):
        return f"{t.spelling}(" + ",".join(v.value for v in t.values) + ")"
    args = ",".join(show(a) for a in t.args)
    return f"{t.name.text}[{args}]" if t.bracketed else t.name.text


@pytest.mark.parametrize("text, expected", [
    ("question -> answer", ["in question -", "out answer -"]),
    ("a, b: int -> c: float, d: bool", ["in a -", "in b int", "out c float", "out d bool"]),
    ("texts: list[str] -> m: dict[str, list[int]]", ["in texts list[str]", "out m dict[str,list[int]]"]),
    ("x: List[str] -> y: Dict[str, int]", ["in x List[str]", "out y Dict[str,int]"]),
    ("x: typing.List[str] -> y", ["in x List[str]", "out y -"]),
    ("x: Optional[int] -> y: int | None", ["in x ?int", "out y ?int"]),
    ("x: None | int -> y: Union[None, str]", ["in x ?int", "out y ?str"]),
    ("x: Union[int] -> y: tuple[int, str]", ["in x int", "out y tuple[int,str]"]),
    ("x: Optional[int, str] -> y", ["in x Optional[int,str]", "out y -"]),
    ("x -> y: Literal['a', \"b\"]", ["in x -", "out y Literal(a,b)"]),
    ("x -> y: Literal['a',]", ["in x -", "out y Literal(a)"]),
    ("x: list[int,] -> y", ["in x list[int]", "out y -"]),
    ("x: list [ int ] -> y", ["in x list[int]", "out y -"]),
    ("a, b, -> c,", ["in a -", "in b -", "out c -"]),
    ("\n  a ,\n\tb\r\n->\fc  ", ["in a -", "in b -", "out c -"]),
    ("x -> y: Sentiment", ["in x -", "out y Sentiment"]),
    ("café -> naïve", ["in café -", "out naïve -"]),
    ("x -> y: Literal['a\\'b', '\\u00e9']", ["in x -", "out y Literal(a'b,é)"]),
])
def test_parses(text: str, expected: list[str]) -> None:
    fields, diags = parse(text)
    assert diags == []
    assert fields is not None
    assert [f"{f.role} {f.name.text} {show(f.type)}" for f in fields] == expected
    assert all(f.default is None and f.desc is None and f.where is None for f in fields)


def test_spans_are_exact() -> None:
    text = "question, ctx: list[Optional[str]] -> label: Literal['a', 'b'], n: int | None"
    fields, _ = parse(text)
    assert fields is not None
    q, ctx, label, n = fields
    assert covered(text, q.name.span) == covered(text, q.span) == "question"
    assert covered(text, ctx.span) == "ctx: list[Optional[str]]"
    assert isinstance(ctx.type, TypeName)
    assert covered(text, ctx.type.span) == "list[Optional[str]]"
    assert covered(text, ctx.type.name.span) == "list"
    inner = ctx.type.args[0]
    assert isinstance(inner, TypeOptional)
    assert covered(text, inner.span) == "Optional[str]"
    assert isinstance(inner.inner, TypeName)
    assert covered(text, inner.inner.span) == covered(text, inner.inner.name.span) == "str"
    assert isinstance(label.type, TypeEnum)
    assert covered(text, label.type.span) == "Literal['a', 'b']"
    assert [covered(text, v.span) for v in label.type.values] == ["'a'", "'b'"]
    assert [v.raw for v in label.type.values] == ["'a'", "'b'"]
    assert [v.kind for v in label.type.values] == ["str", "str"]
    assert isinstance(n.type, TypeOptional)
    assert covered(text, n.type.span) == "int | None"
    assert covered(text, n.span) == "n: int | None"


def test_spans_follow_span_of() -> None:
    """Whatever ``span_of`` does (e.g. map into a multi-line source) is what the nodes carry."""
    rep = Reporter("t.dspex", "")
    fields = parse_signature_string("a ->\nb", lambda s, e: Span(7, 100 + s, 8, 100 + e), rep)
    assert fields is not None
    assert [f.name.span for f in fields] == [Span(7, 100, 8, 101), Span(7, 105, 8, 106)]


def test_typing_prefix_span_covers_the_dotted_name() -> None:
    text = "x: typing.Dict[str, int] -> y"
    fields, _ = parse(text)
    assert fields is not None and isinstance(fields[0].type, TypeName)
    assert fields[0].type.name.text == "Dict"
    assert covered(text, fields[0].type.name.span) == "typing.Dict"


def test_unknown_dotted_names_are_kept_for_the_resolver() -> None:
    fields, diags = parse("x: dspy.Image, y: typing.str -> z")
    assert diags == [] and fields is not None
    assert [show(f.type) for f in fields] == ["dspy.Image", "typing.str", "-"]


@pytest.mark.parametrize("text, code, message, where", [
    ("question answer", "E001", "expected '->' in a signature string", "question answer"),
    ("", "E001", "expected '->' in a signature string", ""),
    ("a -> b -> c", "E001", "expected only one '->' in a signature string", "->"),
    ("x: Literal['->'] -> y", "E001", "expected only one '->' in a signature string", "->"),
    ("-> b", "E203", "signature has no inputs", "->"),
    ("a ->  ", "E203", "signature has no outputs", "->"),
    ("a b -> c", "E001", "expected ':', ',' or '->', found 'b'", "b"),
    ("a -> b c", "E001", "expected ':', ',' or the end of the signature, found 'c'", "c"),
    ("a: int b -> c", "E001", "expected ',' or '->', found 'b'", "b"),
    ("a = 3 -> c", "E001", "expected ':', ',' or '->', found '='", "="),
    ("a, , b -> c", "E001", "expected a field name, found ','", ","),
    ("a -> b:", "E001", "expected a type, found the end of the signature", ""),
    ("a: -> b", "E001", "expected a type, found '->'", "->"),
    ("a: list[int -> b", "E001", "expected ',' or ']', found '->'", "->"),
    ("a: list[] -> b", "E001", "expected a type, found ']'", "]"),
    ("a: 3 -> b", "E001", "expected a type, found '3'", "3"),
    ("a: class -> b", "E001", "expected a type, found 'class'", "class"),
    ("a -> b: Literal[]", "E001", "expected a string, found ']'", "]"),
    ("a -> b: Literal[x]", "E201", "Literal values must be strings, found 'x'", "x"),
    ("a -> b: Literal[1, 2]", "E201", "Literal values must be strings, found '1'", "1"),
    ("a -> b: Literal['x", "E002", "unterminated string", "'x"),
    ("a -> b: Literal['x\\']", "E002", "unterminated string", "'x\\']"),
    ("a -> b: Literal['\\x4']", "E002", "invalid string literal '\\x4'", "'\\x4'"),
    ("a: int | str -> b", "E201", "union types are not supported: only 'T | None', 'Optional[T]' and "
                                  "'Union[T, None]'", "int | str"),
    ("a: Union[int, str, None] -> b", "E201", "union types are not supported: only 'T | None', "
                                              "'Optional[T]' and 'Union[T, None]'", "Union[int, str, None]"),
    ("a: None -> b", "E201", "'None' is not a field type on its own: write 'T | None' or 'Optional[T]'", "None"),
    ("a: list[None] -> b", "E201", "'None' is not a field type on its own: write 'T | None' or 'Optional[T]'",
     "None"),
    ("class -> b", "E001", "'class' is a Python keyword and cannot be a field name", "class"),
    ("a -> None", "E001", "'None' is a Python keyword and cannot be a field name", "None"),
    ("1a -> b", "E001", "'1a' is not a valid field name", "1a"),
    ("ﬁx -> b", "E001", "'ﬁx' is not a normalized identifier", "ﬁx"),
    ("a, b -> a", "E102", "field 'a' is declared twice", "a"),
    ("a -> b: $", "E001", "expected a type, found '$'", "$"),
    ("a -> b: .x", "E001", "expected a type, found '.'", "."),
    ("a -> b: x.", "E001", "expected ',' or the end of the signature, found '.'", "."),
])
def test_errors(text: str, code: str, message: str, where: str) -> None:
    fields, diags = parse(text)
    assert fields is None
    assert [(d.code, d.message) for d in diags] == [(code, message)]
    assert covered(text, Span(diags[0].line, diags[0].col, diags[0].end_line, diags[0].end_col)) == where


def test_defaults_get_help() -> None:
    _, diags = parse("a, k: int = 3 -> b")
    assert diags[0].help == "the string form has no defaults (DSPy drops them); write a block signature: in k: int = 3"


def test_duplicate_points_at_the_second_declaration() -> None:
    text = "a, b -> a"
    _, diags = parse(text)
    assert (diags[0].col, diags[0].end_col) == (9, 10)


def test_both_sides_report_their_errors() -> None:
    _, diags = parse("a b -> c d")
    assert [d.message.rsplit(", found ", 1)[1] for d in diags] == ["'b'", "'d'"]


def test_syntax_error_on_one_side_does_not_claim_the_side_is_empty() -> None:
    _, diags = parse(", -> c")
    assert [d.code for d in diags] == ["E001"]


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    text = "a: " + "list[" * 500 + "int" + "]" * 500 + " -> b"
    fields, diags = parse(text)
    assert fields is None
    assert [(d.code, d.message) for d in diags] == [("E001", "type is nested too deeply")]


def test_earlier_errors_in_the_reporter_do_not_fail_a_good_string() -> None:
    rep = Reporter("t.dspex", "")
    rep.error("E101", Span(1, 1, 1, 2), "something else")
    assert parse_signature_string("a -> b", span_of, rep) is not None


_ALPHABET = st.sampled_from(list("ab_:,->[]|'\"\\. \n\t0") + ["->", "list", "dict", "Optional", "Union", "None",
                                                               "Literal", "int", "class", "é", "\x00"])


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(), st.lists(_ALPHABET, max_size=30).map("".join)))
def test_never_raises(text: str) -> None:
    fields, diags = parse(text)
    assert (fields is None) == any(d.severity == "error" for d in diags)
    for d in diags:
        assert 1 <= d.col <= d.end_col <= len(text) + 1
    for f in fields or []:
        assert covered(text, f.name.span) == f.name.text
