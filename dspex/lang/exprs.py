"""Typing of expressions: one checker for ``where`` predicates and pipeline expressions.

The two differ only in what a name means (``value`` in a predicate; bound names, inputs, vars and
the map item in a pipeline), so the caller passes a ``resolve`` function for names.
"""
from __future__ import annotations

import re
from typing import Callable

from dspex.ir import expr as ir
from dspex.ir.types import (ANY, BOOL, FLOAT, INT, NONE, STR, AnyType, DictOf, EnumOf, ListOf, NoneType,
                            OptionalOf, Record, Type, assignable, element_type, render, unify)
from dspex.lang import ast
from dspex.lang.diagnostics import Reporter, did_you_mean

__all__ = ["Typed", "ExprChecker", "literal_type", "coerce_literal", "fits"]

Typed = tuple[ir.Expr, Type]
Resolver = Callable[[ast.Name], Typed]


def literal_type(lit: ast.Lit) -> Type:
    return {"str": STR, "int": INT, "float": FLOAT, "bool": BOOL, "none": NONE}.get(lit.kind, ANY)


def coerce_literal(e: ir.Expr, expected: Type) -> ir.Expr:
    """An int literal passed where a float is expected becomes a float, so ``1`` and ``1.0`` mean the same."""
    inner = expected.inner if isinstance(expected, OptionalOf) else expected
    if isinstance(e, ir.Lit) and inner == FLOAT and type(e.value) is int:
        return ir.Lit(float(e.value))
    if isinstance(e, ir.ListExpr) and isinstance(inner, ListOf):
        return ir.ListExpr(tuple(coerce_literal(i, inner.item) for i in e.items))
    return e


def fits(e: ir.Expr, t: Type, expected: Type) -> bool:
    """Can ``e`` (of type ``t``) be passed where ``expected`` is wanted? Like ``assignable``, but a string
    literal that is a member of an expected enum fits it (``tone = "formal"`` for ``tone: Tone``)."""
    if assignable(t, expected):
        return True
    inner = expected.inner if isinstance(expected, OptionalOf) else expected
    if isinstance(e, ir.Lit) and isinstance(e.value, str) and isinstance(inner, EnumOf):
        return e.value in inner.values
    if isinstance(e, ir.ListExpr) and isinstance(inner, ListOf):
        return all(fits(i, _literal_type(i), inner.item) for i in e.items)
    return False


def _literal_type(e: ir.Expr) -> Type:
    if isinstance(e, ir.Lit):
        v = e.value
        return NONE if v is None else BOOL if isinstance(v, bool) else INT if isinstance(v, int) else \
            FLOAT if isinstance(v, float) else STR if isinstance(v, str) else ANY
    return ANY


def _numeric(t: Type) -> bool:
    return t in (INT, FLOAT) or isinstance(t, AnyType)


def _strip_optional(t: Type) -> Type:
    return t.inner if isinstance(t, OptionalOf) else t


class ExprChecker:
    """Types an ``ast`` expression into an ``ir`` expression, reporting every problem to ``rep``."""

    def __init__(self, rep: Reporter, resolve: Resolver, code: str = "E201", allow_in: bool = True):
        self.rep = rep
        self.resolve = resolve
        self.code = code  # E205 inside `where` predicates
        self.allow_in = allow_in

    def check(self, e: ast.Expr) -> Typed:
        method = getattr(self, "_" + type(e).__name__)
        return method(e)  # type: ignore[no-any-return]

    def _Lit(self, e: ast.Lit) -> Typed:
        if e.kind == "duration":
            return ir.Lit(e.value), ANY
        return ir.Lit(e.value), literal_type(e)

    def _NameRef(self, e: ast.NameRef) -> Typed:
        return self.resolve(e.name)

    def _ListLit(self, e: ast.ListLit) -> Typed:
        items = [self.check(i) for i in e.items]
        item_type: Type | None = items[0][1] if items else ANY
        for (_, t), node in zip(items[1:], e.items[1:]):
            merged = unify(item_type, t) if item_type is not None else None
            if merged is None:
                self.rep.error(self.code, node.span, f"list items have different types: {render(item_type or ANY)} "
                               f"and {render(t)}")
                merged = ANY
            item_type = merged
        return ir.ListExpr(tuple(x for x, _ in items)), ListOf(item_type or ANY)

    def _AttrExpr(self, e: ast.AttrExpr) -> Typed:
        base, t = self.check(e.base)
        name = e.name.text
        result = self.field_type(t, e.name)
        if isinstance(base, ir.Ref):
            return ir.Ref(base.node, base.path + (name,)), result
        if isinstance(base, ir.Item):
            return ir.Item(base.path + (name,)), result
        return ir.Attr(base, name), result

    def field_type(self, t: Type, name: ast.Name) -> Type:
        """The type of ``x.name`` for ``x: t``; on a list of records, the list of that field."""
        if isinstance(t, AnyType):
            return ANY
        optional = isinstance(t, OptionalOf)
        base = _strip_optional(t)
        item = element_type(base) if isinstance(base, ListOf) else None
        record = _strip_optional(item) if item is not None else base
        if isinstance(record, Record):
            f = record.field(name.text)
            if f is None:
                self.rep.error("E202", name.span, f"'{record.name}' has no field '{name.text}'",
                               did_you_mean(name.text, [x.name for x in record.fields]))
                return ANY
            ft = ListOf(f.type) if item is not None else f.type
            return OptionalOf(ft) if optional and not isinstance(ft, OptionalOf) else ft
        self.rep.error("E202", name.span, f"a value of type {render(t)} has no field '{name.text}'")
        return ANY

    def _CompareExpr(self, e: ast.CompareExpr) -> Typed:
        operands = [self.check(o) for o in e.operands]
        for i, op in enumerate(e.ops):
            (_, left), (_, right) = operands[i], operands[i + 1]
            self._check_compare(op, left, right, e.operands[i], e.operands[i + 1])
        return ir.Compare(e.ops, tuple(x for x, _ in operands)), BOOL

    def _check_compare(self, op: str, left: Type, right: Type, lnode: ast.Expr, rnode: ast.Expr) -> None:
        if op == "in":
            if not self.allow_in:
                self.rep.error(self.code, rnode.span, "'in' cannot be used here; use an enum type for a fixed set")
                return
            elem = element_type(right)
            if isinstance(right, DictOf):
                elem = right.key
            if elem is None and _strip_optional(right) == STR:
                elem = STR
            if elem is None:
                self.rep.error(self.code, rnode.span, f"'in' needs a list, dict or str on the right, "
                               f"got {render(right)}")
            elif not self._comparable(left, elem):
                self.rep.error(self.code, lnode.span, f"cannot look for {render(left)} in {render(right)}")
            return
        if op in ("==", "!="):
            if not self._comparable(left, right):
                self.rep.error(self.code, rnode.span, f"cannot compare {render(left)} with {render(right)}")
                return
            for lit, other in ((rnode, _strip_optional(left)), (lnode, _strip_optional(right))):
                if isinstance(lit, ast.Lit) and isinstance(other, EnumOf):
                    self.check_member(other, lit)
            return
        ok = (_numeric(_strip_optional(left)) and _numeric(_strip_optional(right))) or (
            _strip_optional(left) == STR and _strip_optional(right) == STR)
        if not ok:
            bad, node = (left, lnode) if not (_numeric(left) or left == STR) else (right, rnode)
            self.rep.error(self.code, node.span, f"'{op}' needs numbers (or two strings), got {render(bad)}")

    def check_member(self, enum: EnumOf, lit: ast.Lit) -> None:
        if lit.kind == "str" and lit.value not in enum.values:
            self.rep.error("E201", lit.span, f"{lit.raw} is not one of {render(enum)}",
                           did_you_mean(str(lit.value), enum.values))

    @staticmethod
    def _comparable(a: Type, b: Type) -> bool:
        if isinstance(a, (AnyType, NoneType)) or isinstance(b, (AnyType, NoneType)):
            return True
        a, b = _strip_optional(a), _strip_optional(b)
        if _numeric(a) and _numeric(b):
            return True
        return assignable(a, b) or assignable(b, a)

    def _BoolExpr(self, e: ast.BoolExpr) -> Typed:
        args = [self._condition(a) for a in e.args]
        return ir.BoolOp(e.op, tuple(args)), BOOL

    def _NotExpr(self, e: ast.NotExpr) -> Typed:
        return ir.Not(self._condition(e.arg)), BOOL

    def _condition(self, e: ast.Expr) -> ir.Expr:
        x, t = self.check(e)
        if not assignable(t, BOOL) and not isinstance(_strip_optional(t), AnyType) and _strip_optional(t) != BOOL:
            self.rep.error(self.code, e.span, f"expected true or false here, got {render(t)}")
        return x

    def condition(self, e: ast.Expr) -> ir.Expr:
        """Check ``e`` where a bool is required (an ``if``, a predicate)."""
        return self._condition(e)

    def _CallExpr(self, e: ast.CallExpr) -> Typed:
        fn = e.fn.text
        args = [self.check(a) for a in e.args]
        if fn == "len":
            if len(args) != 1:
                self.rep.error(self.code, e.fn.span, f"len() takes 1 argument, got {len(args)}")
                return ir.Call("len", tuple(a for a, _ in args)), INT
            t = _strip_optional(args[0][1])
            if not isinstance(t, (ListOf, DictOf, AnyType)) and t != STR:
                self.rep.error(self.code, e.args[0].span, f"len() needs a str, list or dict, got {render(t)}")
            return ir.Call("len", (args[0][0],)), INT
        if fn == "matches":
            if len(args) != 2 or not (isinstance(e.args[1], ast.Lit) and e.args[1].kind == "str"):
                self.rep.error(self.code, e.fn.span, 'matches() takes a value and a regular expression: '
                               'matches(value, "[a-z]+")')
                return ir.Call("matches", tuple(a for a, _ in args)), BOOL
            if not assignable(args[0][1], OptionalOf(STR)):
                self.rep.error(self.code, e.args[0].span, f"matches() needs a str, got {render(args[0][1])}")
            pattern = e.args[1]
            try:
                re.compile(str(pattern.value))
            except re.error as exc:
                self.rep.error("E204", pattern.span, f"invalid regular expression: {exc}")
            return ir.Call("matches", (args[0][0], args[1][0])), BOOL
        self.rep.error("E101", e.fn.span, f"undefined function '{fn}'", did_you_mean(fn, ["len", "matches"]))
        return ir.Call(fn, tuple(a for a, _ in args)), ANY


