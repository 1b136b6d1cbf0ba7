"""The IR's value types and expressions: assignability, unification, spelling, Python interop."""
from __future__ import annotations

from typing import Any, Literal, Optional

import pytest

from dspex.ir import expr as ir
from dspex.ir.types import (ANY, BOOL, FLOAT, INT, NONE, STR, DictOf, EnumOf, ListOf, OptionalOf, Record,
                            RecordField, assignable, element_type, from_python, render, to_python, unify)

MOOD = EnumOf(("up", "down"))
POINT = Record("Point", (RecordField("x", INT), RecordField("y", INT)))


@pytest.mark.parametrize("src,dst,ok", [
    (INT, FLOAT, True), (FLOAT, INT, False), (MOOD, STR, True), (STR, MOOD, False),
    (EnumOf(("up",)), MOOD, True), (MOOD, EnumOf(("up",)), False), (NONE, OptionalOf(INT), True),
    (INT, OptionalOf(FLOAT), True), (OptionalOf(INT), INT, False), (ListOf(INT), ListOf(FLOAT), True),
    (DictOf(STR, INT), DictOf(STR, FLOAT), True), (DictOf(STR, INT), ListOf(INT), False),
    (Record("P2", (RecordField("x", INT), RecordField("y", INT), RecordField("z", INT))), POINT, True),
    (POINT, Record("Q", (RecordField("z", INT),)), False), (ANY, INT, True), (BOOL, INT, False),
])
def test_assignable(src: Any, dst: Any, ok: bool) -> None:
    assert assignable(src, dst) is ok


def test_unify() -> None:
    assert unify(INT, FLOAT) == FLOAT
    assert unify(NONE, STR) == OptionalOf(STR)
    assert unify(STR, NONE) == OptionalOf(STR)
    assert unify(EnumOf(("a",)), EnumOf(("b",))) == EnumOf(("a", "b"))
    assert unify(MOOD, STR) == STR
    assert unify(INT, STR) is None


def test_element_type() -> None:
    assert element_type(ListOf(STR)) == STR
    assert element_type(OptionalOf(ListOf(INT))) == INT
    assert element_type(ANY) == ANY
    assert element_type(STR) is None


def test_render() -> None:
    assert render(DictOf(STR, ListOf(OptionalOf(INT)))) == "dict[str, list[int?]]"
    assert render(EnumOf(('a"b', "c"))) == 'enum("a\\"b", "c")'
    assert render(POINT) == "Point" and render(NONE) == "none" and render(ANY) == "any"


def test_records_compare_by_structure() -> None:
    assert POINT == Record("Other", POINT.fields)
    assert POINT.field("y") == RecordField("y", INT) and POINT.field("z") is None


@pytest.mark.parametrize("annotation,t", [
    (str, STR), (list[int], ListOf(INT)), (dict[str, float], DictOf(STR, FLOAT)),
    (Optional[int], OptionalOf(INT)), (int | None, OptionalOf(INT)), (Literal["up", "down"], MOOD),
])
def test_python_round_trip(annotation: Any, t: Any) -> None:
    assert from_python(annotation) == t
    assert from_python(to_python(t)) == t


def test_python_unsupported() -> None:
    assert from_python(set[int]) is None
    assert from_python(list[set[int]]) is None
    assert from_python(int | str) is None
    assert to_python(POINT) == dict[str, Any]
    assert to_python(POINT, {"Point": tuple}) is tuple
    assert to_python(ANY) is Any


def test_render_expr_and_refs() -> None:
    e = ir.BoolOp("and", (
        ir.Compare(("<=", "<="), (ir.Lit(0), ir.Value(), ir.Lit(1.5))),
        ir.Not(ir.BoolOp("or", (ir.Call("matches", (ir.Value(), ir.Lit("a+"))), ir.Lit(True)))),
        ir.Compare(("in",), (ir.Ref("c", ("label",)), ir.ListExpr((ir.Lit("x"), ir.Lit(None))))),
        ir.Compare(("==",), (ir.Attr(ir.VarRef("v"), "f"), ir.Item(("name",)))),
        ir.Compare(("<",), (ir.Lit(ir.Duration(1500)), ir.Lit([1, False]))),
    ))
    text = ir.render_expr(e, {"c": "classified"})
    assert text == ('0 <= value <= 1.5 and not (matches(value, "a+") or true) and classified.label in ["x", none] '
                    'and v.f == item.name and 1500ms < [1, false]')
    assert ir.refs(e) == ["c"]
    assert ir.var_refs(e) == ["v"]


def test_durations() -> None:
    assert str(ir.Duration(120000)) == "2m" and str(ir.Duration(30000)) == "30s"
    assert ir.Duration(250).seconds == 0.25
