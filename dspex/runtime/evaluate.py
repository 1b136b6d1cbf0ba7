"""Evaluating IR expressions on runtime values: the wiring between nodes (``c.label``, ``x in xs``)."""
from __future__ import annotations

import operator
import re
from typing import Any, Mapping

from dspex.ir import expr as ir

__all__ = ["evaluate", "project"]

_OPS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
        ">=": operator.ge, "in": lambda a, b: a in b}


def project(value: Any, path: tuple[str, ...]) -> Any:
    """``value.a.b``: a record's field; on a list of records, the list of that field; none stays none."""
    for name in path:
        if value is None:
            return None
        if isinstance(value, list):
            value = [None if v is None else v[name] for v in value]
        else:
            value = value[name]
    return value


def evaluate(e: ir.Expr, values: Mapping[str, Any], var_values: Mapping[str, Any], item: Any = None) -> Any:
    """The value of ``e``; ``values`` holds finished nodes by id, ``item`` the current map element."""
    if isinstance(e, ir.Lit):
        return e.value.seconds if isinstance(e.value, ir.Duration) else e.value
    if isinstance(e, ir.Ref):
        return project(values[e.node], e.path)
    if isinstance(e, ir.Item):
        return project(item, e.path)
    if isinstance(e, ir.VarRef):
        return var_values[e.name]
    if isinstance(e, ir.ListExpr):
        return [evaluate(i, values, var_values, item) for i in e.items]
    if isinstance(e, ir.Attr):
        return project(evaluate(e.base, values, var_values, item), (e.name,))
    if isinstance(e, ir.Compare):
        operands = [evaluate(o, values, var_values, item) for o in e.operands]
        return all(_OPS[op](a, b) for op, a, b in zip(e.ops, operands, operands[1:]))
    if isinstance(e, ir.BoolOp):
        if e.op == "and":
            return all(evaluate(a, values, var_values, item) for a in e.args)
        return any(evaluate(a, values, var_values, item) for a in e.args)
    if isinstance(e, ir.Not):
        return not evaluate(e.arg, values, var_values, item)
    assert isinstance(e, ir.Call)
    args = [evaluate(a, values, var_values, item) for a in e.args]
    if e.fn == "len":
        return len(args[0])
    return re.fullmatch(str(args[1]), args[0]) is not None
