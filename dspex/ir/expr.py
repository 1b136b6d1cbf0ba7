"""Expressions of the IR: pipeline wiring (``c.label``, ``urgency == "high"``) and ``where`` predicates.

One small tree serves both: a predicate is an expression over ``Value()``; a pipeline expression
reads graph nodes (``Ref``), the element of a ``map`` (``Item``) and vars (``VarRef``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator

__all__ = [
    "Expr", "Lit", "Value", "Ref", "Item", "VarRef", "ListExpr", "Attr", "Compare", "BoolOp", "Not", "Call",
    "Duration", "Pred", "render_expr", "walk", "refs", "var_refs",
]


class Expr:
    """Base of every expression node; subclasses are frozen dataclasses."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Duration:
    """A duration literal (``500ms``, ``30s``, ``2m``), kept in milliseconds."""

    ms: int

    @property
    def seconds(self) -> float:
        return self.ms / 1000

    def __str__(self) -> str:
        if self.ms % 60000 == 0:
            return f"{self.ms // 60000}m"
        if self.ms % 1000 == 0:
            return f"{self.ms // 1000}s"
        return f"{self.ms}ms"


@dataclass(frozen=True, slots=True)
class Lit(Expr):
    value: Any  # str | int | float | bool | None | Duration | list of these


@dataclass(frozen=True, slots=True)
class Value(Expr):
    """The value a ``where`` predicate constrains."""


@dataclass(frozen=True, slots=True)
class Ref(Expr):
    node: str
    path: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Item(Expr):
    """The current element of the enclosing ``map``."""

    path: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class VarRef(Expr):
    name: str


@dataclass(frozen=True, slots=True)
class ListExpr(Expr):
    items: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Attr(Expr):
    base: Expr
    name: str


@dataclass(frozen=True, slots=True)
class Compare(Expr):
    ops: tuple[str, ...]  # "==" "!=" "<" "<=" ">" ">=" "in"
    operands: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class BoolOp(Expr):
    op: str  # "and" | "or"
    args: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Not(Expr):
    arg: Expr


@dataclass(frozen=True, slots=True)
class Call(Expr):
    fn: str  # "len" | "matches"
    args: tuple[Expr, ...]


Pred = Expr

_PRECEDENCE = {BoolOp: 1, Not: 2, Compare: 3}


def render_expr(e: Expr, names: dict[str, str] | None = None) -> str:
    """Source-like text of an expression; ``names`` maps node ids to the names to show."""
    names = names or {}

    def r(x: Expr, parent: int = 0) -> str:
        if isinstance(x, Lit):
            return _literal(x.value)
        if isinstance(x, Value):
            return "value"
        if isinstance(x, Ref):
            return ".".join((names.get(x.node, x.node),) + x.path)
        if isinstance(x, Item):
            return ".".join(("item",) + x.path)
        if isinstance(x, VarRef):
            return x.name
        if isinstance(x, ListExpr):
            return "[" + ", ".join(r(i) for i in x.items) + "]"
        if isinstance(x, Attr):
            return f"{r(x.base, 9)}.{x.name}"
        if isinstance(x, Call):
            return f"{x.fn}(" + ", ".join(r(a) for a in x.args) + ")"
        prec = _PRECEDENCE[type(x)]
        if isinstance(x, Compare):
            text = r(x.operands[0], prec + 1)
            for op, operand in zip(x.ops, x.operands[1:]):
                text += f" {op} {r(operand, prec + 1)}"
        elif isinstance(x, BoolOp):
            text = f" {x.op} ".join(r(a, prec + 1) for a in x.args)
        else:
            assert isinstance(x, Not)
            text = "not " + r(x.arg, prec)
        return f"({text})" if prec < parent else text

    return r(e)


def _literal(v: Any) -> str:
    if v is None:
        return "none"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, Duration):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_literal(i) for i in v) + "]"
    return repr(v)


def walk(e: Expr) -> Iterator[Expr]:
    """Every node of the tree, ``e`` first."""
    yield e
    if isinstance(e, ListExpr):
        for i in e.items:
            yield from walk(i)
    elif isinstance(e, Attr):
        yield from walk(e.base)
    elif isinstance(e, Compare):
        for o in e.operands:
            yield from walk(o)
    elif isinstance(e, (BoolOp, Call)):
        for a in e.args:
            yield from walk(a)
    elif isinstance(e, Not):
        yield from walk(e.arg)


def refs(e: Expr) -> list[str]:
    """Graph node ids the expression reads, in first-use order, without repeats."""
    return list(dict.fromkeys(x.node for x in walk(e) if isinstance(x, Ref)))


def var_refs(e: Expr) -> list[str]:
    """Var names the expression reads, in first-use order, without repeats."""
    return list(dict.fromkeys(x.name for x in walk(e) if isinstance(x, VarRef)))
