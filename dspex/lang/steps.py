"""Checking one step (``predict Classify(review = r) with (...)`` or ``call tool(...)``): the rules
shared by ``.dspex`` pipelines and traced ``@dspex.pipeline`` functions.

The front ends turn their syntax into ``StepArg``/``StepOption`` values; this module checks them
against the signature, tool or pipeline and the module table, and returns the typed ``StepSpec``
the graph node is built from.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from dspex.ir import expr as ir
from dspex.ir.modules import (CALL_OPTIONS, DURATION, LM_REF, MODULES, OPTION_TYPES, TOOL_REFS, canonical_module)
from dspex.ir.program import Field, Pipeline, Signature, ToolDecl
from dspex.ir.types import ANY, AnyType, EnumOf, OptionalOf, Record, RecordField, Type, render
from dspex.lang.ast import Span
from dspex.lang.diagnostics import Reporter, did_you_mean
from dspex.lang.exprs import Typed, coerce_literal, fits

__all__ = ["Env", "StepArg", "StepOption", "StepSpec", "StepChecker", "result_type", "KIND_WORDS"]

KIND_WORDS = {"type": "a type", "signature": "a signature", "lm": "an lm", "var": "a var", "tool": "a tool",
              "pipeline": "a pipeline", "value": "a value"}


class Env(Protocol):
    """What a step needs to know about the program around it."""

    def kind_of(self, name: str) -> str | None: ...

    def names_of(self, kind: str) -> list[str]: ...

    def signature(self, name: str) -> Signature | None: ...

    def tool(self, name: str) -> ToolDecl | None: ...

    def pipeline(self, name: str, span: Span) -> Pipeline | None: ...


@dataclass(frozen=True)
class StepArg:
    name: str | None
    span: Span
    value: Typed
    value_span: Span


@dataclass(frozen=True)
class StepOption:
    """An option as written: ``value`` for value options, ``names`` for ``lm``/``tools``, ``duration`` for timeouts."""

    name: str
    span: Span
    value_span: Span
    value: Typed | None = None
    names: tuple[tuple[str, Span], ...] | None = None
    duration: ir.Duration | None = None


@dataclass(frozen=True)
class StepSpec:
    module: str
    target: str
    target_kind: str
    args: tuple[tuple[str, ir.Expr], ...]
    options: tuple[tuple[str, ir.Expr], ...]
    select: str | None
    type: Type
    vars: tuple[str, ...] = field(default=())


def result_type(name: str, fields: tuple[Field, ...], extras: tuple[tuple[str, Type], ...] = ()) -> Record:
    """The record a step returns: the signature's outputs (after the module's extra outputs, as DSPy orders them)."""
    extra = tuple(RecordField(n, t) for n, t in extras if all(f.name != n for f in fields))
    return Record(name, extra + tuple(RecordField(f.name, f.type, f.desc, f.constraint) for f in fields))


class StepChecker:
    def __init__(self, env: Env, rep: Reporter):
        self.env = env
        self.rep = rep

    def check(self, module: str, module_span: Span, target: str, target_span: Span, args: list[StepArg],
              options: list[StepOption], select: tuple[str, Span] | None) -> StepSpec:
        module = canonical_module(module)
        if module == "call":
            return self._call(target, target_span, args, options, select)
        sig = self._lookup(target, target_span, "signature")
        spec = MODULES[module]
        inputs = sig.inputs if sig else None
        checked_args = self._args(f"signature '{target}'", inputs, args, target_span)
        checked_options = self._options(module, spec.options, options)
        result: Type = ANY
        if sig is not None:
            result = result_type(sig.name, sig.outputs, spec.extra_outputs)
        result = self._select(result, select)
        if _literal_option(checked_options, "on_error") == "none":
            result = result if isinstance(result, OptionalOf) else OptionalOf(result)
        engine = _literal_option(checked_options, "engine")
        if engine == "native" and not spec.native:
            span = next(o.value_span for o in options if o.name == "engine")
            self.rep.error("E209", span, f"module '{module}' has no native implementation",
                           'use engine = "dspy" or "auto"')
        var_names = _vars(checked_args, checked_options) + (sig.instruction_vars if sig else ())
        return StepSpec(module, target, "signature", checked_args, checked_options, select[0] if select else None,
                        result, tuple(dict.fromkeys(var_names)))

    def _call(self, target: str, span: Span, args: list[StepArg], options: list[StepOption],
              select: tuple[str, Span] | None) -> StepSpec:
        kind = self.env.kind_of(target)
        checked_options = self._options("call", CALL_OPTIONS, options)
        result: Type = ANY
        params: tuple[Field, ...] | None = None
        if kind == "tool":
            tool = self.env.tool(target)
            assert tool is not None
            params, result = tool.params, tool.returns
        elif kind == "pipeline":
            callee = self.env.pipeline(target, span)
            if callee is not None:
                params, result = callee.inputs, result_type(callee.name, callee.outputs)
        elif kind is None and target not in getattr(self.env, "broken", ()):
            self.rep.error("E101", span, f"undefined tool or pipeline '{target}'",
                           did_you_mean(target, self.env.names_of("tool") + self.env.names_of("pipeline")))
        elif kind is not None:
            self.rep.error("E103", span, f"'{target}' is {KIND_WORDS.get(kind, kind)}; `call` takes a tool or a "
                           "pipeline")
        checked_args = self._args(f"{kind} '{target}'", params, args, span)
        result = self._select(result, select)
        if _literal_option(checked_options, "on_error") == "none" and not isinstance(result, OptionalOf):
            result = OptionalOf(result)
        return StepSpec("call", target, kind or "tool", checked_args, checked_options, select[0] if select else None,
                        result, tuple(_vars(checked_args, checked_options)))

    def _lookup(self, name: str, span: Span, kind: str) -> Signature | None:
        found = self.env.kind_of(name)
        if found == kind:
            return self.env.signature(name)
        if found is None:
            if name not in getattr(self.env, "broken", ()):
                self.rep.error("E101", span, f"undefined {kind} '{name}'", did_you_mean(name, self.env.names_of(kind)))
        else:
            self.rep.error("E103", span, f"'{name}' is {KIND_WORDS.get(found, found)}, not {KIND_WORDS[kind]}")
        return None

    def _args(self, what: str, params: tuple[Field, ...] | None, args: list[StepArg],
              target_span: Span) -> tuple[tuple[str, ir.Expr], ...]:
        given: dict[str, ir.Expr] = {}
        unknown: list[str] = []
        by_name = {f.name: f for f in params} if params is not None else None
        for a in args:
            if a.name is None:
                self.rep.error("E202", a.span, f"arguments of {what} must be named: field = value")
                continue
            if a.name in given:
                self.rep.error("E104", a.span, f"argument '{a.name}' is given twice")
                continue
            expr, t = a.value
            if by_name is not None:
                f = by_name.get(a.name)
                if f is None:
                    noun = "input" if what.startswith(("signature", "pipeline")) else "parameter"
                    self.rep.error("E202", a.span, f"{what} has no {noun} '{a.name}'", did_you_mean(a.name, by_name))
                    unknown.append(a.name)
                    continue
                if not fits(expr, t, f.type):
                    self.rep.error("E201", a.value_span, f"'{a.name}' expects {render(f.type)}, got {render(t)}",
                                   _member_hint(expr, f.type))
                expr = coerce_literal(expr, f.type)
            given[a.name] = expr
        if params is None:
            return tuple(sorted(given.items()))
        for f in params:  # an input a misspelled argument was meant for is not missing too (E202 said so)
            if f.required and f.name not in given and not any(did_you_mean(u, [f.name]) for u in unknown):
                self.rep.error("E207", target_span, f"missing input '{f.name}' of {what}")
        return tuple((f.name, given[f.name]) for f in params if f.name in given)

    def _options(self, module: str, allowed: frozenset[str], options: list[StepOption]) -> tuple[tuple[str, ir.Expr], ...]:
        out: dict[str, ir.Expr] = {}
        for o in options:
            if o.name not in OPTION_TYPES:
                self.rep.error("E202", o.span, f"unknown option '{o.name}'", did_you_mean(o.name, OPTION_TYPES))
                continue
            if o.name not in allowed:
                takers = sorted(m for m, s in MODULES.items() if o.name in s.options)
                self.rep.error("E208", o.span, f"option '{o.name}' is not valid for {module}",
                               f"'{o.name}' is taken by {', '.join(takers)}" if takers else None)
                continue
            if o.name in out:
                self.rep.error("E104", o.span, f"option '{o.name}' is given twice")
                continue
            value = self._option_value(o)
            if value is not None:
                out[o.name] = value
        return tuple(sorted(out.items()))

    def _option_value(self, o: StepOption) -> ir.Expr | None:
        expected = OPTION_TYPES[o.name]
        if expected == LM_REF:
            return self._names(o, "lm", single=True)
        if expected == TOOL_REFS:
            return self._names(o, "tool", single=False)
        if expected == DURATION:
            if o.duration is None:
                self.rep.error("E201", o.value_span, f"'{o.name}' expects a duration like 30s or 500ms")
                return None
            return ir.Lit(o.duration)
        if o.value is None:
            self.rep.error("E201", o.value_span, f"'{o.name}' expects {render(expected)}")  # type: ignore[arg-type]
            return None
        expr, t = o.value
        assert isinstance(expected, Type)
        if isinstance(expected, EnumOf):
            if not (isinstance(expr, ir.Lit) and expr.value in expected.values):
                self.rep.error("E201", o.value_span, f"'{o.name}' must be one of {render(expected)}",
                               did_you_mean(str(getattr(expr, "value", "")), expected.values))
                return None
            return expr
        if not fits(expr, t, expected) or isinstance(t, AnyType) and isinstance(expr, ir.Lit):
            self.rep.error("E201", o.value_span, f"'{o.name}' expects {render(expected)}, got {render(t)}")
            return None
        return coerce_literal(expr, expected)

    def _names(self, o: StepOption, kind: str, single: bool) -> ir.Expr | None:
        names = o.names
        if names is None or (single and len(names) != 1):
            shape = f"the name of {KIND_WORDS[kind]}" if single else f"a list of {kind} names"
            self.rep.error("E201", o.value_span, f"'{o.name}' expects {shape}")
            return None
        ok = True
        for name, span in names:
            found = self.env.kind_of(name)
            if found is None:
                self.rep.error("E101", span, f"undefined {kind} '{name}'", did_you_mean(name, self.env.names_of(kind)))
                ok = False
            elif found != kind:
                self.rep.error("E103", span, f"'{name}' is {KIND_WORDS.get(found, found)}, not {KIND_WORDS[kind]}")
                ok = False
        if not ok:
            return None
        if single:
            return ir.Lit(names[0][0])
        return ir.ListExpr(tuple(ir.Lit(n) for n, _ in names))

    def _select(self, result: Type, select: tuple[str, Span] | None) -> Type:
        if select is None or isinstance(result, AnyType):
            return ANY if select is not None else result
        name, span = select
        if not isinstance(result, Record):
            self.rep.error("E202", span, f"a value of type {render(result)} has no field '{name}'")
            return ANY
        f = result.field(name)
        if f is None:
            self.rep.error("E202", span, f"'{result.name}' has no output '{name}'",
                           did_you_mean(name, [x.name for x in result.fields]))
            return ANY
        return f.type


def _member_hint(e: ir.Expr, t: Type) -> str | None:
    inner = t.inner if isinstance(t, OptionalOf) else t
    if isinstance(e, ir.Lit) and isinstance(e.value, str) and isinstance(inner, EnumOf):
        return did_you_mean(e.value, inner.values)
    return None


def _literal_option(options: tuple[tuple[str, ir.Expr], ...], name: str) -> object:
    for key, value in options:
        if key == name and isinstance(value, ir.Lit):
            return value.value
    return None


def _vars(args: tuple[tuple[str, ir.Expr], ...], options: tuple[tuple[str, ir.Expr], ...]) -> tuple[str, ...]:
    names: list[str] = []
    for _, e in args + options:
        names.extend(ir.var_refs(e))
    return tuple(dict.fromkeys(names))
