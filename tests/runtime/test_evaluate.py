"""Expressions between nodes, evaluated on runtime values."""
from __future__ import annotations

from dspex.ir import expr as ir
from dspex.runtime.evaluate import evaluate, project

VALUES = {"c": {"label": "high", "tags": ["a", "b"], "n": 3}, "rows": [{"x": 1}, {"x": 2}, None]}
VARS = {"k": 2, "rec": {"f": "v"}}


def ev(e: ir.Expr, item: object = None) -> object:
    return evaluate(e, VALUES, VARS, item)


def test_projection_over_records_lists_and_none() -> None:
    assert project(VALUES["rows"], ("x",)) == [1, 2, None]
    assert project(None, ("x",)) is None
    assert ev(ir.Ref("c", ("label",))) == "high"
    assert ev(ir.Item(("x",)), {"x": 9}) == 9
    assert ev(ir.Attr(ir.VarRef("rec"), "f")) == "v"


def test_operators() -> None:
    assert ev(ir.Compare(("<", "<="), (ir.Lit(1), ir.VarRef("k"), ir.Lit(2)))) is True
    assert ev(ir.Compare(("in",), (ir.Lit("a"), ir.Ref("c", ("tags",))))) is True
    assert ev(ir.Compare(("!=",), (ir.Ref("c", ("label",)), ir.Lit("high")))) is False
    assert ev(ir.BoolOp("and", (ir.Lit(True), ir.Not(ir.Lit(False))))) is True
    assert ev(ir.BoolOp("or", (ir.Lit(False), ir.Lit(False)))) is False
    assert ev(ir.Call("len", (ir.Ref("c", ("tags",)),))) == 2
    assert ev(ir.Call("matches", (ir.Ref("c", ("label",)), ir.Lit("h.*")))) is True
    assert ev(ir.ListExpr((ir.Lit(1), ir.VarRef("k")))) == [1, 2]
    assert ev(ir.Lit(ir.Duration(1500))) == 1.5
