"""Coerce an LM's output values to their field types and check ``where`` constraints (SPEC §3.4).

The pure-Python twin of the validator: the readable reference for the compiled twin, with the same API
and the same messages. ``compile_validator`` turns fields into closures once, so that checking a value
is a few calls on the hot path; path strings are only built when a value fails.
"""
from __future__ import annotations

import json
import math
import operator
import re
from typing import Any, Callable, Sequence

from dspex.engines.base import ValidationError
from dspex.ir import expr as ir
from dspex.ir.types import (AnyType, DictOf, EnumOf, ListOf, NoneType, OptionalOf, Prim, Record, Type)

__all__ = ["Validator", "compile_validator"]

Coerce = Callable[[Any], Any]
Check = Callable[[Any], "str | None"]  # the rule a value breaks, or None

_MISSING = object()
_INT_TEXT = re.compile(r"([+-]?\d+)(?:\.0*)?")  # exact for big ints, where float() would round
_TRUE, _FALSE = frozenset({"true", "yes"}), frozenset({"false", "no"})
_NULLS = frozenset({"none", "null"})
_QUOTES = "\"'` \t\r\n"
_ENUM_NOISE = _QUOTES + "."  # small models end a one-word answer with a full stop
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_FLIP = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


class _Invalid(Exception):
    """A value broke a rule somewhere below a field; parents add their path steps as it propagates."""

    def __init__(self, rule: str, value: Any):
        self.rule, self.value = rule, value
        self.steps: list[str] = []  # innermost first


class Validator:
    """Validates one set of fields; ``validate`` returns the coerced values in field order."""

    __slots__ = ("fields", "_plan")

    def __init__(self, fields: tuple[Any, ...], plan: tuple[tuple[str, Coerce, Check | None, Any], ...]):
        self.fields = fields
        self._plan = plan

    def validate(self, values: dict[str, Any]) -> dict[str, Any]:
        """Coerce and check every field; raises ``ValidationError`` for the first field (in order) that fails."""
        out: dict[str, Any] = {}
        for name, coerce, check, default in self._plan:
            value = values.get(name, _MISSING)
            if value is _MISSING:
                if default is _MISSING:
                    raise ValidationError(name, values, "missing")
                out[name] = default
                continue
            try:
                value = coerce(value)
                if check is not None and value is not None:
                    rule = check(value)
                    if rule is not None:
                        raise _Invalid(rule, value)
            except _Invalid as e:
                raise ValidationError(name + "".join(reversed(e.steps)), e.value, e.rule) from None
            out[name] = value
        return out


def compile_validator(fields: Sequence[Any]) -> Validator:
    """A validator for ``fields`` (``Field`` or ``RecordField``: anything with name, type, constraint).

    A missing field takes its default when it has one, ``None`` when its type is optional, and is an
    error otherwise. Constraints see the coerced value and are skipped when an optional value is ``None``.
    """
    plan = []
    for f in fields:
        if getattr(f, "has_default", False):
            default = f.default
        elif isinstance(f.type, OptionalOf):
            default = None
        else:
            default = _MISSING
        check = _compile_check(f.constraint) if f.constraint is not None else None
        plan.append((f.name, _coercer(f.type), check, default))
    return Validator(tuple(fields), tuple(plan))


# --- coercion -------------------------------------------------------------------------------------------------

def _coercer(t: Type) -> Coerce:
    if isinstance(t, Prim):
        return _PRIMS[t.name]
    if isinstance(t, EnumOf):
        return _enum(t.values)
    if isinstance(t, OptionalOf):
        return _optional(_coercer(t.inner))
    if isinstance(t, ListOf):
        return _list(_coercer(t.item))
    if isinstance(t, DictOf):
        return _dict(_coercer(t.key), _coercer(t.value))
    if isinstance(t, Record):
        return _record(t)
    if isinstance(t, NoneType):
        return _none
    assert isinstance(t, AnyType), t
    return _any


def _str(v: Any) -> Any:
    if type(v) is str:
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)  # an LM that answers 42 for a str field meant "42"
    raise _Invalid("expected a string", v)


def _int(v: Any) -> Any:
    if type(v) is int:
        return v
    if isinstance(v, str):
        s = v.strip()
        m = _INT_TEXT.fullmatch(s)
        if m:
            return int(m.group(1))
        try:
            f = float(s)
        except ValueError:
            raise _Invalid("expected an integer", v) from None
        if math.isfinite(f) and f.is_integer():
            return int(f)
    elif isinstance(v, float) and v.is_integer():
        return int(v)
    raise _Invalid("expected an integer", v)


def _float(v: Any) -> Any:
    if type(v) is float:
        if math.isfinite(v):
            return v
    elif isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    elif isinstance(v, str):
        try:
            f = float(v.strip())
        except ValueError:
            raise _Invalid("expected a number", v) from None
        if math.isfinite(f):
            return f
    raise _Invalid("expected a number", v)


def _bool(v: Any) -> Any:
    if type(v) is bool:
        return v
    if isinstance(v, str):
        s = v.strip().strip(_QUOTES).lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
    raise _Invalid("expected a boolean (true or false)", v)


_PRIMS: dict[str, Coerce] = {"str": _str, "int": _int, "float": _float, "bool": _bool}


def _enum(values: tuple[str, ...]) -> Coerce:
    exact = frozenset(values)
    loose = {v.strip(_ENUM_NOISE).casefold(): v for v in reversed(values)}  # first spelling wins on a clash
    rule = "expected one of " + ", ".join(f"`{v}`" for v in values)

    def coerce(v: Any) -> Any:
        if isinstance(v, str):
            if v in exact:
                return v
            canonical = loose.get(v.strip(_ENUM_NOISE).casefold())
            if canonical is not None:
                return canonical
        raise _Invalid(rule, v)

    return coerce


def _optional(inner: Coerce) -> Coerce:
    def coerce(v: Any) -> Any:
        if v is None or (isinstance(v, str) and v.strip().lower() in _NULLS):
            return None
        return inner(v)

    return coerce


def _decoded(v: Any, opener: str) -> Any:
    """``v`` itself, or the JSON it spells when it is a string of that kind (LMs often quote structures)."""
    if isinstance(v, str):
        s = v.strip()
        if s.startswith(opener):
            try:
                return json.loads(s)
            except ValueError:
                return v
    return v


def _list(item: Coerce) -> Coerce:
    def coerce(v: Any) -> Any:
        v = _decoded(v, "[")
        if not isinstance(v, list):
            raise _Invalid("expected a list", v)
        out = []
        for i, x in enumerate(v):
            try:
                out.append(item(x))
            except _Invalid as e:
                e.steps.append(f"[{i}]")
                raise
        return out

    return coerce


def _dict(key: Coerce, value: Coerce) -> Coerce:
    def coerce(v: Any) -> Any:
        v = _decoded(v, "{")
        if not isinstance(v, dict):
            raise _Invalid("expected an object", v)
        out = {}
        for k, x in v.items():
            try:
                out[key(k)] = value(x)
            except _Invalid as e:
                e.steps.append(f"[{json.dumps(k, ensure_ascii=False)}]")
                raise
        return out

    return coerce


def _record(t: Record) -> Coerce:
    validator = compile_validator(t.fields)

    def coerce(v: Any) -> Any:
        v = _decoded(v, "{")
        if not isinstance(v, dict):
            raise _Invalid(f"expected an object ({t.name})", v)
        try:
            return validator.validate(v)
        except ValidationError as e:
            inner = _Invalid(e.rule, e.value)
            inner.steps.append("." + e.path)
            raise inner from None

    return coerce


def _none(v: Any) -> Any:
    if v is None or (isinstance(v, str) and v.strip().lower() in _NULLS):
        return None
    raise _Invalid("expected none", v)


def _any(v: Any) -> Any:
    return v


# --- constraints ----------------------------------------------------------------------------------------------

def _compile_check(e: ir.Expr) -> Check:
    """A function giving the rule ``e`` breaks for a value (naming the failing bound of a chain), or None."""
    if isinstance(e, ir.Compare):
        return _compare(e)
    if isinstance(e, ir.BoolOp) and e.op == "and":
        parts = tuple(_compile_check(a) for a in e.args)

        def all_of(v: Any) -> str | None:
            for part in parts:
                rule = part(v)
                if rule is not None:
                    return rule
            return None

        return all_of
    test = _compile_eval(e)
    rule = "expected " + ir.render_expr(e)
    return lambda v: None if test(v) else rule


def _compare(e: ir.Compare) -> Check:
    links = []
    for op, left, right in zip(e.ops, e.operands, e.operands[1:]):
        if _reads_value(left) or not _reads_value(right):
            rule = f"expected {_subject(left)} {op} {ir.render_expr(right)}"
        else:  # `0 <= value` reads better as `value >= 0`
            rule = f"expected {_subject(right)} {_FLIP[op]} {ir.render_expr(left)}"
        links.append((_link(_OPS[op], left, right), rule))

    def check(v: Any) -> str | None:
        for test, rule in links:
            if not test(v):
                return rule
        return None

    return check


def _link(test: Callable[[Any, Any], bool], left: ir.Expr, right: ir.Expr) -> Callable[[Any], bool]:
    """One comparison of a chain; a bound against the bare value (the common case) is a single call."""
    if isinstance(left, ir.Lit) and isinstance(right, ir.Value):
        bound = left.value
        return lambda v: test(bound, v)
    if isinstance(left, ir.Value) and isinstance(right, ir.Lit):
        bound = right.value
        return lambda v: test(v, bound)
    lhs, rhs = _compile_eval(left), _compile_eval(right)
    return lambda v: test(lhs(v), rhs(v))


def _reads_value(e: ir.Expr) -> bool:
    return any(isinstance(x, ir.Value) for x in ir.walk(e))


def _subject(e: ir.Expr) -> str:
    return "a value" if isinstance(e, ir.Value) else ir.render_expr(e)


def _compile_eval(e: ir.Expr) -> Callable[[Any], Any]:
    """``e`` as a function of the value."""
    if isinstance(e, ir.Value):
        return _any
    if isinstance(e, ir.Lit):
        lit = e.value
        return lambda v: lit
    if isinstance(e, ir.Call) and e.fn == "len":
        arg = _compile_eval(e.args[0])
        return lambda v: len(arg(v))
    if isinstance(e, ir.Call) and e.fn == "matches":
        subject = _compile_eval(e.args[0])
        pattern = e.args[1]
        assert isinstance(pattern, ir.Lit), "the checker only allows a literal pattern"
        fullmatch = re.compile(pattern.value).fullmatch
        return lambda v: isinstance(s := subject(v), str) and fullmatch(s) is not None
    if isinstance(e, ir.Compare):
        check = _compare(e)
        return lambda v: check(v) is None
    if isinstance(e, ir.BoolOp):
        args = tuple(_compile_eval(a) for a in e.args)
        if e.op == "and":
            return lambda v: all(a(v) for a in args)
        return lambda v: any(a(v) for a in args)
    if isinstance(e, ir.Not):
        arg = _compile_eval(e.arg)
        return lambda v: not arg(v)
    raise TypeError(f"not a constraint expression: {ir.render_expr(e)}")
