"""Decorated Python as a front end: ``@dspex.signature``, ``dspex.var``, ``@dspex.pipeline``.

A decorated pipeline is traced once, symbolically: its parameters become traced values, each
``dspex.predict(...)``/``dspex.map(...)``/``dspex.cond(...)``/``dspex.call(...)`` adds a graph node
through the same step checker as ``.dspex`` source, and the graph is fingerprinted by the same code.
So a decorated program and its ``.dspex`` twin have equal fingerprints. Python control flow on a
traced value cannot be traced and raises ``TraceError`` naming ``dspex.cond``/``dspex.map``.
"""
from __future__ import annotations

import inspect
import json
import linecache
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from dspex.errors import CompileError, TraceError
from dspex.ir import expr as ir
from dspex.ir.fingerprint import finalize_graph
from dspex.ir.graph import Node
from dspex.ir.modules import OPTION_TYPES, TOOL_REFS
from dspex.ir.program import Field, Pipeline, Range, Signature, ToolDecl, VarDecl
from dspex.ir.types import (ANY, BOOL, FLOAT, INT, NONE, STR, ListOf, Type, assignable, element_type, from_python,
                            render, unify)
from dspex.lang.ast import Span
from dspex.lang.diagnostics import Reporter
from dspex.lang.exprs import ExprChecker
from dspex.lang.parse import cleandoc
from dspex.lang.pipelines import node_for_step
from dspex.lang.steps import StepArg, StepChecker, StepOption

__all__ = ["In", "Out", "signature", "var", "Var", "tool", "Tool", "pipeline", "predict", "chain_of_thought", "cot",
           "best_of", "react", "program_of_thought", "multi_chain_comparison", "refine", "map", "cond", "call",
           "Traced"]

_PACKAGE_DIR = __file__.rsplit("/", 2)[0]


# -- signatures -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Marker:
    role: str
    desc: str | None = None
    default: Any = inspect.Parameter.empty
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    min_len: int | None = None
    max_len: int | None = None
    pattern: str | None = None


def In(desc: str | None = None, *, default: Any = inspect.Parameter.empty) -> Any:
    """Marks an input field of a class signature (``review: str = dspex.In(desc="...")``)."""
    return _Marker("in", desc, default)


def Out(desc: str | None = None, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
        lt: float | None = None, min_len: int | None = None, max_len: int | None = None,
        pattern: str | None = None) -> Any:
    """Marks an output field; the bounds become the field's ``where`` constraint."""
    return _Marker("out", desc, inspect.Parameter.empty, ge, gt, le, lt, min_len, max_len, pattern)


def _constraint(m: _Marker) -> ir.Expr | None:
    """The predicate ``.dspex`` would write for these bounds (``ge=0, le=1`` is ``0 <= value <= 1``)."""
    parts: list[ir.Expr] = []
    low = ("<=", m.ge) if m.ge is not None else ("<", m.gt) if m.gt is not None else None
    high = ("<=", m.le) if m.le is not None else ("<", m.lt) if m.lt is not None else None
    if low and high:
        parts.append(ir.Compare((low[0], high[0]), (ir.Lit(low[1]), ir.Value(), ir.Lit(high[1]))))
    elif low:
        parts.append(ir.Compare((">=" if low[0] == "<=" else ">",), (ir.Value(), ir.Lit(low[1]))))
    elif high:
        parts.append(ir.Compare((high[0],), (ir.Value(), ir.Lit(high[1]))))
    length = ir.Call("len", (ir.Value(),))
    if m.min_len is not None:
        parts.append(ir.Compare((">=",), (length, ir.Lit(m.min_len))))
    if m.max_len is not None:
        parts.append(ir.Compare(("<=",), (length, ir.Lit(m.max_len))))
    if m.pattern is not None:
        parts.append(ir.Call("matches", (ir.Value(), ir.Lit(m.pattern))))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else ir.BoolOp("and", tuple(parts))


def _type_of(annotation: Any, where: str) -> Type:
    t = from_python(annotation)
    if t is None:
        raise TypeError(f"{where}: DSPex has no type for {annotation!r}; use str, int, float, bool, list[T], "
                        "dict[str, T], Optional[T] or Literal[...]")
    return t


def signature(spec: Any = None, *, name: str | None = None) -> Any:
    """A ``Signature`` from a class (used as a decorator) or from a DSPy string signature."""
    if isinstance(spec, str):
        return _string_signature(spec, name or "Signature")
    if spec is None:
        return lambda cls: _class_signature(cls, name)
    return _class_signature(spec, name)


def _string_signature(text: str, name: str) -> Signature:
    from dspex.lang.compile import Compilation

    compilation = Compilation(f"signature {name} = {json.dumps(text)}\n", "<dspex.signature>")
    if compilation.has_errors:
        raise CompileError(compilation.diagnostics)
    return compilation.program.signatures[name]


def _class_signature(cls: type, name: str | None) -> Signature:
    hints = typing.get_type_hints(cls)
    inputs: list[Field] = []
    outputs: list[Field] = []
    for fname in cls.__dict__.get("__annotations__", {}):
        marker = cls.__dict__.get(fname)
        if not isinstance(marker, _Marker):
            raise TypeError(f"{cls.__name__}.{fname}: mark the field with dspex.In() or dspex.Out()")
        t = _type_of(hints[fname], f"{cls.__name__}.{fname}")
        has_default = marker.default is not inspect.Parameter.empty
        f = Field(fname, t, marker.desc, marker.default if has_default else None, has_default, _constraint(marker))
        (inputs if marker.role == "in" else outputs).append(f)
    if not inputs or not outputs:
        raise TypeError(f"signature {cls.__name__} needs at least one dspex.In() and one dspex.Out() field")
    doc = cleandoc(cls.__doc__) if cls.__doc__ else ""
    return Signature(name or cls.__name__, doc, tuple(inputs), tuple(outputs), _instruction_vars(doc))


def _instruction_vars(doc: str) -> tuple[str, ...]:
    from dspex.lang.check import INSTRUCTION_VAR

    return tuple(dict.fromkeys(m.group(1) for m in INSTRUCTION_VAR.finditer(doc)))


# -- vars and tools ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Var:
    """A tunable value usable as a step argument or option in a traced pipeline."""

    decl: VarDecl

    @property
    def name(self) -> str:
        return self.decl.name


def var(name: str, type: Any, default: Any, domain: Any = None, desc: str | None = None) -> Var:
    """``dspex.var("k", int, 3, domain=(1, 10))``: a tuple of two numbers is a range, a list the allowed values."""
    t = _type_of(type, f"var {name}")
    if t == FLOAT and isinstance(default, int) and not isinstance(default, bool):
        default = float(default)
    if not assignable(_value_type(default), t):
        raise TypeError(f"var {name}: default {default!r} is not {render(t)}")
    dom: Range | tuple[Any, ...] | None = None
    if isinstance(domain, tuple) and len(domain) == 2 and all(isinstance(x, (int, float)) for x in domain):
        dom = Range(domain[0], domain[1])
    elif domain is not None:
        dom = tuple(domain)
    if dom is not None and default not in dom:
        raise ValueError(f"var {name}: default {default!r} is outside its domain {domain!r}")
    return Var(VarDecl(name, t, default, dom, desc))


@dataclass(frozen=True)
class Tool:
    """A typed Python callable a traced pipeline may ``dspex.call``; still callable as itself."""

    decl: ToolDecl
    fn: Callable[..., Any]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


def tool(fn: Callable[..., Any]) -> Tool:
    """Declares a tool from a typed function; its contract is the annotations."""
    hints = typing.get_type_hints(fn)
    params = []
    for p in inspect.signature(fn).parameters.values():
        has_default = p.default is not inspect.Parameter.empty
        params.append(Field(p.name, _type_of(hints[p.name], f"{fn.__name__}({p.name})"), None,
                            p.default if has_default else None, has_default))
    returns = _type_of(hints.get("return"), f"{fn.__name__} return")
    return Tool(ToolDecl(fn.__name__, tuple(params), returns, f"{fn.__module__}:{fn.__qualname__}"), fn)


# -- tracing ----------------------------------------------------------------------------------------
class Traced:
    """A value inside a traced pipeline: an IR expression with its type."""

    __slots__ = ("_tracer", "_expr", "_type")

    def __init__(self, tracer: "_Tracer", expr: ir.Expr, t: Type):
        self._tracer, self._expr, self._type = tracer, expr, t

    def __getattr__(self, name: str) -> "Traced":
        if name.startswith("__"):
            raise AttributeError(name)
        return self._tracer.attr(self, name)

    def __bool__(self) -> bool:
        raise TraceError("Python control flow (if, while, and, or, not) on a traced value cannot be traced: "
                         "use dspex.cond(condition, then=..., otherwise=...)")

    def __iter__(self) -> Iterator[Any]:
        raise TraceError("iterating over a traced value cannot be traced: use dspex.map(values, lambda x: ...)")

    def __len__(self) -> int:
        raise TraceError("len() of a traced value is not known while tracing")

    def _compare(self, op: str, other: Any) -> "Traced":
        return self._tracer.compare(op, self, other)

    def __eq__(self, other: Any) -> "Traced":  # type: ignore[override]
        return self._compare("==", other)

    def __ne__(self, other: Any) -> "Traced":  # type: ignore[override]
        return self._compare("!=", other)

    def __lt__(self, other: Any) -> "Traced":
        return self._compare("<", other)

    def __le__(self, other: Any) -> "Traced":
        return self._compare("<=", other)

    def __gt__(self, other: Any) -> "Traced":
        return self._compare(">", other)

    def __ge__(self, other: Any) -> "Traced":
        return self._compare(">=", other)

    def __and__(self, other: Any) -> "Traced":
        return self._tracer.boolean("and", self, other)

    def __or__(self, other: Any) -> "Traced":
        return self._tracer.boolean("or", self, other)

    def __invert__(self) -> "Traced":
        return self._tracer.negate(self)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<traced {ir.render_expr(self._expr)}: {render(self._type)}>"


@dataclass
class _PendingStep:
    module: str
    target: Any
    kwargs: dict[str, Any]


@dataclass
class _MapFrame:
    pending: list[_PendingStep] = field(default_factory=list)


class _Tracer:
    """Collects the nodes of one decorated pipeline; also the ``Env`` its steps are checked against."""

    def __init__(self, name: str):
        self.name = name
        self.nodes: list[Node] = []
        self.signatures: dict[str, Signature] = {}
        self.tools: dict[str, ToolDecl] = {}
        self.pipelines: dict[str, Pipeline] = {}
        self.vars: dict[str, VarDecl] = {}
        self.lm_names: set[str] = set()
        self.guard: tuple[tuple[str, bool], ...] = ()
        self.map_frame: _MapFrame | None = None
        self.counts: dict[str, int] = {}

    # Env protocol
    def kind_of(self, name: str) -> str | None:
        for kind, table in (("signature", self.signatures), ("tool", self.tools), ("pipeline", self.pipelines),
                            ("var", self.vars)):
            if name in table:
                return kind
        return "lm" if name in self.lm_names else None

    def names_of(self, kind: str) -> list[str]:
        tables: dict[str, dict[str, Any]] = {"signature": self.signatures, "tool": self.tools,
                                             "pipeline": self.pipelines, "var": self.vars}
        return list(tables.get(kind, {}))

    def signature(self, name: str) -> Signature | None:
        return self.signatures.get(name)

    def tool(self, name: str) -> ToolDecl | None:
        return self.tools.get(name)

    def pipeline(self, name: str, span: Span) -> Pipeline | None:
        return self.pipelines.get(name)

    # values
    def new_id(self, stem: str) -> str:
        self.counts[stem] = self.counts.get(stem, 0) + 1
        prefix = "".join(f"{g}.{'then' if side else 'else'}." for g, side in self.guard[-1:])
        return f"{prefix}{stem.lower()}_{self.counts[stem]}"

    def value(self, v: Any) -> tuple[ir.Expr, Type]:
        """The IR expression and type of a Python value passed into the graph."""
        if isinstance(v, Traced):
            if v._tracer is not self:
                raise TraceError("a traced value from another pipeline was used here")
            return v._expr, v._type
        if isinstance(v, Var):
            self.vars[v.name] = v.decl
            return ir.VarRef(v.name), v.decl.type
        if isinstance(v, (list, tuple)):
            items = [self.value(i) for i in v]
            item_type: Type | None = items[0][1] if items else ANY
            for _, t in items[1:]:
                item_type = unify(item_type, t) if item_type is not None else None
            return ir.ListExpr(tuple(e for e, _ in items)), ListOf(item_type or ANY)
        if v is None or isinstance(v, (str, int, float, bool)):
            return ir.Lit(v), _value_type(v)
        raise TraceError(f"cannot use {type(v).__name__} value {v!r} in a traced pipeline")

    def attr(self, base: Traced, name: str) -> Traced:
        rep = _reporter()
        t = ExprChecker(rep, _no_names).field_type(base._type, _name_at(name))
        _raise_if_errors(rep)
        e = base._expr
        if isinstance(e, ir.Ref):
            return Traced(self, ir.Ref(e.node, e.path + (name,)), t)
        if isinstance(e, ir.Item):
            return Traced(self, ir.Item(e.path + (name,)), t)
        return Traced(self, ir.Attr(e, name), t)

    def compare(self, op: str, left: Any, right: Any) -> Traced:
        (le, _), (re_, _) = self.value(left), self.value(right)
        return Traced(self, ir.Compare((op,), (le, re_)), BOOL)

    def boolean(self, op: str, left: Any, right: Any) -> Traced:
        (le, _), (re_, _) = self.value(left), self.value(right)
        return Traced(self, ir.BoolOp(op, (le, re_)), BOOL)

    def negate(self, v: Traced) -> Traced:
        return Traced(self, ir.Not(v._expr), BOOL)

    # steps
    def step(self, module: str, target: Any, kwargs: dict[str, Any]) -> Traced:
        if self.map_frame is not None:
            self.map_frame.pending.append(_PendingStep(module, target, kwargs))
            return Traced(self, ir.Ref("__map_step__"), ANY)
        spec, name = self._check_step(module, target, kwargs, None, None)
        node_id = self.new_id(name)
        self.nodes.append(node_for_step(spec, node_id, self.guard, None, "", None, None))
        return Traced(self, ir.Ref(node_id), spec.type)

    def _check_step(self, module: str, target: Any, kwargs: dict[str, Any], select: str | None,
                    item: tuple[str, Type] | None) -> tuple[Any, str]:
        name = self._register(target)
        inputs = _input_names(target)
        args, options = [], []
        here = _caller_span()
        for key, v in kwargs.items():
            if key in OPTION_TYPES and key not in inputs:
                options.append(self._option(key, v, here))
            else:
                args.append(StepArg(key, here, self.value(v), here))
        rep = _reporter()
        spec = StepChecker(self, rep).check(module, here, name, here, args, options,
                                            (select, here) if select else None)
        _raise_if_errors(rep)
        return spec, name

    def _register(self, target: Any) -> str:
        if isinstance(target, Signature):
            self.signatures[target.name] = target
            return target.name
        if isinstance(target, Tool):
            self.tools[target.decl.name] = target.decl
            return target.decl.name
        if isinstance(target, Pipeline):
            self.pipelines[target.name] = target
            return target.name
        raise TraceError(f"expected a signature, tool or pipeline, got {target!r}")

    def _option(self, key: str, v: Any, here: Span) -> StepOption:
        if key == "lm":
            name = v if isinstance(v, str) else getattr(v, "name", None)
            if name:
                self.lm_names.add(name)
            return StepOption(key, here, here, names=((name, here),) if name else None)
        if OPTION_TYPES[key] == TOOL_REFS:
            tools = [t for t in (v if isinstance(v, (list, tuple)) else [v]) if isinstance(t, Tool)]
            for t in tools:
                self.tools[t.decl.name] = t.decl
            return StepOption(key, here, here, names=tuple((t.decl.name, here) for t in tools))
        if key == "timeout":
            return StepOption(key, here, here, duration=_duration(v))
        return StepOption(key, here, here, value=self.value(v))

    def map(self, over: Any, fn: Callable[[Traced], Any]) -> Traced:
        over_expr, over_type = self.value(over)
        item_type = element_type(over_type)
        if item_type is None:
            raise TraceError(f"dspex.map needs a list, got {render(over_type)}")
        outer, self.map_frame = self.map_frame, _MapFrame()
        frame = self.map_frame
        try:
            result = fn(Traced(self, ir.Item(), item_type))
        finally:
            self.map_frame = outer
        if len(frame.pending) != 1 or not isinstance(result, Traced) or not isinstance(result._expr, ir.Ref) \
                or result._expr.node != "__map_step__" or len(result._expr.path) > 1:
            raise TraceError("the function given to dspex.map must run exactly one step and return its result "
                             "(or one field of it)")
        step = frame.pending[0]
        select = result._expr.path[0] if result._expr.path else None
        spec, name = self._check_step(step.module, step.target, step.kwargs, select, ("item", item_type))
        spec = type(spec)(spec.module, spec.target, spec.target_kind, spec.args, spec.options, spec.select,
                          ListOf(spec.type), spec.vars)
        node_id = self.new_id(f"map_{name}")
        self.nodes.append(node_for_step(spec, node_id, self.guard, None, "", over=over_expr, item="item"))
        return Traced(self, ir.Ref(node_id), spec.type)

    def cond(self, pred: Any, then: Callable[[], Any], otherwise: Callable[[], Any]) -> Any:
        cond_expr, cond_type = self.value(pred)
        if not assignable(cond_type, BOOL):
            raise TraceError(f"dspex.cond needs a true/false condition, got {render(cond_type)}")
        self.counts["if"] = self.counts.get("if", 0) + 1
        bid = f"if@{self.counts['if']}"
        outer = self.guard
        self.nodes.append(Node(bid, "branch", ANY, args=(("cond", cond_expr),), guard=outer,
                               deps=tuple(dict.fromkeys([g for g, _ in outer] + ir.refs(cond_expr))),
                               vars=tuple(ir.var_refs(cond_expr))))
        results = []
        for side, fn in ((True, then), (False, otherwise)):
            self.guard = outer + ((bid, side),)
            try:
                results.append(fn())
            finally:
                self.guard = outer
        return self._merge(bid, results[0], results[1])

    def _merge(self, bid: str, a: Any, b: Any) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            if set(a) != set(b):
                raise TraceError(f"both sides of dspex.cond must return the same names, got {sorted(a)} and "
                                 f"{sorted(b)}")
            return {k: self._merge_one(bid, k, a[k], b[k]) for k in a}
        if isinstance(a, dict) or isinstance(b, dict):
            raise TraceError("both sides of dspex.cond must return a dict, or both a single value")
        return self._merge_one(bid, "value", a, b)

    def _merge_one(self, bid: str, key: str, a: Any, b: Any) -> Traced:
        (ae, at), (be, bt) = self.value(a), self.value(b)
        merged = unify(at, bt)
        if merged is None:
            raise TraceError(f"'{key}' is {render(at)} on one side of dspex.cond and {render(bt)} on the other")
        node_id = f"{key}@{bid}" if key != "value" else f"merge@{bid}"
        deps = [g for g, _ in self.guard] + [bid] + ir.refs(ae) + ir.refs(be)
        self.nodes.append(Node(node_id, "merge", merged, branch=bid, args=(("then", ae), ("else", be)),
                               guard=self.guard, deps=tuple(dict.fromkeys(deps))))
        return Traced(self, ir.Ref(node_id), merged)


_active: list[_Tracer] = []


def _tracer(what: str) -> _Tracer:
    if not _active:
        raise TraceError(f"dspex.{what} can only be used inside a @dspex.pipeline function")
    return _active[-1]


def _step_fn(module: str) -> Callable[..., Traced]:
    def step(target: Any, **kwargs: Any) -> Traced:
        return _tracer(module).step(module, target, kwargs)

    step.__name__ = module
    step.__doc__ = f"Runs ``{module}`` over a signature inside a traced pipeline (kwargs: inputs and options)."
    return step


predict = _step_fn("predict")
chain_of_thought = _step_fn("chain_of_thought")
cot = chain_of_thought
best_of = _step_fn("best_of")
react = _step_fn("react")
program_of_thought = _step_fn("program_of_thought")
multi_chain_comparison = _step_fn("multi_chain_comparison")
refine = _step_fn("refine")


def call(target: Any, **kwargs: Any) -> Traced:
    """Calls a ``@dspex.tool`` or another pipeline inside a traced pipeline."""
    return _tracer("call").step("call", target, kwargs)


def map(values: Any, fn: Callable[[Traced], Any]) -> Traced:  # noqa: A001 - the SPEC's name
    """Runs ``fn``'s one step per element of ``values``, concurrently, keeping order."""
    return _tracer("map").map(values, fn)


def cond(condition: Any, then: Callable[[], Any], otherwise: Callable[[], Any]) -> Any:
    """``if``/``else`` for traced values: runs only the taken side; both sides return the same names."""
    return _tracer("cond").cond(condition, then, otherwise)


def pipeline(fn: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """Traces ``fn`` once into a ``Pipeline``. It returns a dict of outputs (or one value, named ``output``)."""
    if fn is None:
        return lambda f: pipeline(f, name=name)
    return _trace(fn, name or fn.__name__)


def _trace(fn: Callable[..., Any], name: str) -> Pipeline:
    tracer = _Tracer(name)
    hints = typing.get_type_hints(fn)
    inputs: list[Field] = []
    params: dict[str, Traced] = {}
    for p in inspect.signature(fn).parameters.values():
        if p.name not in hints:
            raise TypeError(f"pipeline {name}: annotate parameter '{p.name}' with its type")
        t = _type_of(hints[p.name], f"pipeline {name}({p.name})")
        has_default = p.default is not inspect.Parameter.empty
        inputs.append(Field(p.name, t, None, p.default if has_default else None, has_default))
        tracer.nodes.append(Node(p.name, "input", t))
        params[p.name] = Traced(tracer, ir.Ref(p.name), t)
    _active.append(tracer)
    try:
        result = fn(**params)
    finally:
        _active.pop()
    results = result if isinstance(result, dict) else {"output": result}
    outputs: list[Field] = []
    for out_name, value in results.items():
        expr, t = tracer.value(value)
        outputs.append(Field(out_name, t))
        tracer.nodes.append(Node(f"out:{out_name}", "output", t, args=(("value", expr),),
                                 deps=tuple(ir.refs(expr))))
    graph = finalize_graph(tracer.nodes, tracer.signature, tracer.tool, lambda n: tracer.pipelines.get(n))
    used_vars = {v for n in graph for v in n.vars}
    return Pipeline(name, tuple(inputs), tuple(outputs), graph, signatures=dict(tracer.signatures),
                    tools=dict(tracer.tools), pipelines=dict(tracer.pipelines),
                    vars={k: v for k, v in tracer.vars.items() if k in used_vars})


# -- helpers ----------------------------------------------------------------------------------------
def _input_names(target: Any) -> set[str]:
    if isinstance(target, Signature):
        return {f.name for f in target.inputs}
    if isinstance(target, Tool):
        return {f.name for f in target.decl.params}
    if isinstance(target, Pipeline):
        return {f.name for f in target.inputs}
    return set()


def _value_type(v: Any) -> Type:
    if v is None:
        return NONE
    if isinstance(v, bool):
        return BOOL
    if isinstance(v, int):
        return INT
    if isinstance(v, float):
        return FLOAT
    if isinstance(v, str):
        return STR
    if isinstance(v, (list, tuple)):
        item: Type | None = _value_type(v[0]) if v else ANY
        for i in v[1:]:
            item = unify(item, _value_type(i)) if item is not None else None
        return ListOf(item or ANY)
    return ANY


def _duration(v: Any) -> ir.Duration | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return ir.Duration(round(v * 1000))
    if isinstance(v, str):
        from dspex.lang.parse import DURATION_UNITS

        for unit in ("ms", "s", "m"):
            number = v[: -len(unit)]
            if v.endswith(unit) and number.replace(".", "", 1).isdigit():
                return ir.Duration(round(float(number) * DURATION_UNITS[unit]))
    return None


def _user_frame() -> Any:
    """The innermost frame outside DSPex: the user's line that is being traced."""
    frame = inspect.currentframe()
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
    return frame


def _caller_span() -> Span:
    """Where in the user's Python the current step was written (for diagnostics)."""
    frame = _user_frame()
    if frame is None:
        return Span(1, 1, 1, 2)
    text = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
    start = len(text) - len(text.lstrip()) + 1
    return Span(frame.f_lineno, start, frame.f_lineno, max(start + 1, len(text.rstrip()) + 1))


def _reporter() -> Reporter:
    frame = _user_frame()
    filename = frame.f_code.co_filename if frame is not None else "<python>"
    return Reporter(filename, "".join(linecache.getlines(filename)))


def _raise_if_errors(rep: Reporter) -> None:
    if rep.has_errors:
        raise CompileError(rep.diagnostics)


def _name_at(name: str) -> Any:
    from dspex.lang.ast import Name

    return Name(name, _caller_span())


def _no_names(name: Any) -> tuple[ir.Expr, Type]:
    raise AssertionError("field lookups read no names")

