"""Phase 2: check one parsed file's declarations and lower them to IR.

Names are collected first (so declaration order never matters), then every declaration is resolved
on demand with cycle detection: types, signatures, lms, vars and tools here, pipelines in
``dspex.lang.pipelines``. Every problem goes to the ``Reporter``; nothing here raises on bad source.
"""
from __future__ import annotations

import re
from typing import Any

from dspex.ir import expr as ir
from dspex.ir.program import Field, LMDecl, Pipeline, Program, Range, Signature, ToolDecl, VarDecl
from dspex.ir.types import ANY, FLOAT, INT, AnyType, EnumOf, OptionalOf, Record, RecordField, Type, render
from dspex.lang import ast
from dspex.lang.ast import Span
from dspex.lang.diagnostics import Reporter, did_you_mean
from dspex.lang.exprs import ExprChecker, coerce_literal, fits
from dspex.lang.parse import gc_paused
from dspex.lang.sigstring import parse_signature_string
from dspex.lang.steps import KIND_WORDS
from dspex.lang.typeresolve import resolve_type

__all__ = ["Declarations", "Imported", "INSTRUCTION_VAR", "PROVIDERS", "looks_like_secret", "literal_value"]

# An imported name: its kind and lowered IR object.
Imported = tuple[str, Any]

PROVIDERS: dict[str, tuple[tuple[str, ...], frozenset[str] | None]] = {
    # provider: (required args, allowed args or None for "anything dspy.LM takes")
    "local": ((), frozenset({"model", "path", "n_ctx", "threads", "seed"})),
    "openai": (("model",), frozenset({"model", "base_url", "api_key_env", "max_tokens", "temperature", "timeout",
                                      "max_connections", "response_format"})),
    "instructor": (("model",), frozenset({"model", "base_url", "api_key_env", "max_tokens", "temperature", "timeout",
                                          "max_connections", "mode"})),
    "dspy": (("model",), None),
    "fallback": ((), frozenset()),
    "round_robin": ((), frozenset()),
}
_COMBINATORS = ("fallback", "round_robin")
_KIND_OF_DECL = {ast.TypeDecl: "type", ast.SignatureDecl: "signature", ast.LMDecl: "lm", ast.VarDecl: "var",
                 ast.ToolDecl: "tool", ast.PipelineDecl: "pipeline"}
_SECRET_NAME = re.compile(r"(^|_)(api_?key|secret|password|token|access_key)$", re.I)
_SECRET_VALUE = re.compile(r"^(sk-|sk_|pk_|rk_|xox[abpr]-|ghp_|gho_|github_pat_|AKIA|AIza|hf_)[A-Za-z0-9_\-]{8,}$")
INSTRUCTION_VAR = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_TOOL_TARGET = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$")


def looks_like_secret(value: str) -> bool:
    """A string that is probably an API key: a known key prefix, or a long random-looking token."""
    if _SECRET_VALUE.match(value):
        return True
    if len(value) >= 32 and re.fullmatch(r"[A-Za-z0-9_\-]+", value):
        return bool(re.search(r"\d", value)) and bool(re.search(r"[A-Z]", value)) and bool(re.search(r"[a-z]", value))
    return False


def literal_value(e: ast.Expr) -> Any:
    """The Python value of a literal or a list of literals (``_NOT_LITERAL`` otherwise)."""
    if isinstance(e, ast.Lit):
        return e.value
    if isinstance(e, ast.ListLit):
        items = [literal_value(i) for i in e.items]
        return _NOT_LITERAL if any(i is _NOT_LITERAL for i in items) else items
    return _NOT_LITERAL


_NOT_LITERAL = object()
_REPORTED = object()  # an argument already reported as wrong: not "missing" as well


class Declarations:
    """The declarations of one file, resolved on demand; also the ``Env`` steps are checked against."""

    def __init__(self, module: ast.Module, rep: Reporter, imported: dict[str, Imported] | None = None,
                 broken: set[str] | None = None):
        self.module = module
        self.rep = rep
        self.imported = imported or {}
        self.broken = broken or set()
        self.decls: dict[str, Any] = {}
        self._done: dict[str, Any] = {}
        self._active: list[str] = []
        self._names: dict[tuple[str, int, int], tuple[str, ...]] = {}
        for d in module.decls:
            if isinstance(d, ast.Import):
                continue
            name = d.name.text
            if name in self.decls or name in self.imported:
                self.rep.error("E102", d.name.span, f"'{name}' is declared twice",
                               "the first declaration is " + ("imported" if name in self.imported
                                                              else f"on line {self.decls[name].name.span.line}"))
                continue
            self.decls[name] = d

    # -- the Env protocol -------------------------------------------------------------------------
    def kind_of(self, name: str) -> str | None:
        if name in self.decls:
            return _KIND_OF_DECL[type(self.decls[name])]
        if name in self.imported:
            return self.imported[name][0]
        return None

    def names_of(self, kind: str) -> list[str]:
        return list(self._names_of(kind))

    def _names_of(self, kind: str) -> tuple[str, ...]:
        """The names of one kind, in declaration order; computed once per kind (the tables only grow in
        ``__init__``; the sizes in the key keep it right should they change)."""
        key = (kind, len(self.decls), len(self.imported))
        names = self._names.get(key)
        if names is None:
            names = self._names[key] = tuple(n for n in (*self.decls, *self.imported) if self.kind_of(n) == kind)
        return names

    def signature(self, name: str) -> Signature | None:
        return self._get(name, "signature")  # type: ignore[no-any-return]

    def tool(self, name: str) -> ToolDecl | None:
        return self._get(name, "tool")  # type: ignore[no-any-return]

    def var(self, name: str) -> VarDecl | None:
        return self._get(name, "var")  # type: ignore[no-any-return]

    def lm(self, name: str) -> LMDecl | None:
        return self._get(name, "lm")  # type: ignore[no-any-return]

    def pipeline(self, name: str, span: Span) -> Pipeline | None:
        if name in self._active:
            cycle = " -> ".join(self._active[self._active.index(name):] + [name])
            self.rep.error("E302", span, f"pipelines call each other in a cycle: {cycle}")
            return None
        return self._get(name, "pipeline")  # type: ignore[no-any-return]

    def type_named(self, name: str) -> Type | None:
        return self._get(name, "type")  # type: ignore[no-any-return]

    # -- resolution -------------------------------------------------------------------------------
    def _get(self, name: str, kind: str) -> Any:
        if self.kind_of(name) != kind:
            return None
        if name in self.imported:
            return self.imported[name][1]
        if name in self._done:
            return self._done[name]
        if name in self._active:
            return None  # the caller that can name the cycle reports it
        self._active.append(name)
        try:
            result = getattr(self, "_lower_" + kind)(self.decls[name])
        finally:
            self._active.pop()
        self._done[name] = result
        return result

    def lower(self) -> Program:
        """Resolve every declaration; the program holds every name in scope (local and imported)."""
        tables: dict[str, dict[str, Any]] = {k: {} for k in ("type", "signature", "lm", "var", "tool", "pipeline")}
        with gc_paused():  # the IR all lives on: collecting while building it only rescans it
            for name in list(self.imported) + list(self.decls):
                kind = self.kind_of(name)
                assert kind is not None
                value = self._get(name, kind)
                if value is not None:
                    tables[kind][name] = value
        return Program(types=tables["type"], signatures=tables["signature"], lms=tables["lm"], vars=tables["var"],
                       tools=tables["tool"], pipelines=tables["pipeline"])

    def resolve_type(self, t: ast.TypeExpr | None) -> Type:
        return resolve_type(t, self._type_lookup, self._names_of("type"), self.rep)

    def _type_lookup(self, name: str) -> Type | str | None:
        kind = self.kind_of(name)
        if kind is None:
            return ANY if name in self.broken else None
        if kind != "type":
            return kind
        if name in self._active:
            decl = self.decls[name]
            self.rep.error("E302", decl.name.span, f"type '{name}' refers to itself")
            return ANY
        return self.type_named(name) or ANY

    def _lower_type(self, d: ast.TypeDecl) -> Type:
        if d.fields is None:
            return self.resolve_type(d.type)
        fields = self.fields(d.fields, "field")
        return Record(d.name.text, tuple(RecordField(f.name, f.type, f.desc, f.constraint) for f in fields))

    def fields(self, decls: tuple[ast.FieldDecl, ...], noun: str, defaults: bool = True) -> tuple[Field, ...]:
        out: list[Field] = []
        seen: dict[str, ast.FieldDecl] = {}
        for fd in decls:
            if fd.name.text in seen:
                self.rep.error("E102", fd.name.span, f"{noun} '{fd.name.text}' is declared twice")
                continue
            seen[fd.name.text] = fd
            out.append(self.field(fd, defaults))
        return tuple(out)

    def field(self, fd: ast.FieldDecl, defaults: bool = True) -> Field:
        t = self.resolve_type(fd.type)
        default, has_default = None, False
        if fd.default is not None:
            if not defaults:
                self.rep.error("E201", fd.default.span, f"'{fd.name.text}' cannot have a default here")
            else:
                default, has_default = self.literal(fd.default, t, f"the default of '{fd.name.text}'")
        constraint = self.predicate(fd.where, t) if fd.where is not None else None
        return Field(fd.name.text, t, fd.desc.value if fd.desc else None, default, has_default, constraint)

    def literal(self, e: ast.Expr, t: Type, what: str) -> tuple[Any, bool]:
        """Check a literal against ``t``; returns its (coerced) Python value."""
        value = literal_value(e)
        if value is _NOT_LITERAL:
            self.rep.error("E201", e.span, f"{what} must be a literal")
            return None, False
        checker = ExprChecker(self.rep, self._no_names)
        expr, lt = checker.check(e)
        if not fits(expr, lt, t):
            inner = t.inner if isinstance(t, OptionalOf) else t
            if isinstance(e, ast.Lit) and e.kind == "str" and isinstance(inner, EnumOf):
                checker.check_member(inner, e)
            else:
                self.rep.error("E201", e.span, f"{what} must be {render(t)}, got {render(lt)}")
            return None, False
        coerced = coerce_literal(expr, t)
        return _python(coerced), True

    def _no_names(self, name: ast.Name) -> tuple[ir.Expr, Type]:
        self.rep.error("E201", name.span, f"expected a literal value, found the name '{name.text}'")
        return ir.Lit(None), ANY

    def predicate(self, e: ast.Expr, t: Type) -> ir.Expr:
        def resolve(name: ast.Name) -> tuple[ir.Expr, Type]:
            if name.text == "value":
                return ir.Value(), t
            self.rep.error("E205", name.span, f"a where clause can only read 'value', not '{name.text}'")
            return ir.Lit(None), ANY

        return ExprChecker(self.rep, resolve, code="E205", allow_in=False).condition(e)

    def _lower_signature(self, d: ast.SignatureDecl) -> Signature:
        if d.string is not None:
            decls = self._string_fields(d.string)
            if decls is None:
                return Signature(d.name.text, "", (), ())
            instructions = ""
        else:
            decls = list(d.fields)
            instructions = d.doc.value if d.doc and d.doc.value is not None else ""
        inputs = self.fields(tuple(f for f in decls if f.role == "in"), "input")
        outputs = self.fields(tuple(f for f in decls if f.role == "out"), "output", defaults=False)
        dup = {f.name for f in inputs} & {f.name for f in outputs}
        for fd in decls:
            if fd.role == "out" and fd.name.text in dup:
                self.rep.error("E102", fd.name.span, f"'{fd.name.text}' is both an input and an output")
        if d.string is None and (not inputs or not outputs):
            self.rep.error("E203", d.name.span, f"signature '{d.name.text}' has no "
                           + ("inputs" if not inputs else "outputs"), "add an `in` field and an `out` field")
        ivars = self._instruction_vars(d.doc) if d.doc else ()
        return Signature(d.name.text, instructions, inputs, outputs, ivars)

    def _string_fields(self, lit: ast.Lit) -> list[ast.FieldDecl] | None:
        if lit.value is None:
            return None
        exact = lit.raw == '"' + lit.value + '"'
        span = lit.span

        def span_of(start: int, end: int) -> Span:
            if not exact:
                return span
            return Span(span.line, span.col + 1 + start, span.line, span.col + 1 + end)

        return parse_signature_string(lit.value, span_of, self.rep)

    def _instruction_vars(self, doc: ast.Lit) -> tuple[str, ...]:
        names: list[str] = []
        for m in INSTRUCTION_VAR.finditer(doc.raw):
            name = m.group(1)
            span = _offset_span(doc, m.start(1), m.end(1))
            kind = self.kind_of(name)
            if kind == "var":
                names.append(name)
            elif kind is None:
                if name not in self.broken:
                    self.rep.error("E101", span, f"undefined var '{name}' in instructions",
                                   did_you_mean(name, self.names_of("var")))
            else:
                self.rep.error("E103", span, f"'{name}' is {KIND_WORDS.get(kind, kind)}, not a var")
        return tuple(dict.fromkeys(names))

    def _lower_lm(self, d: ast.LMDecl) -> LMDecl:
        provider = d.provider.text
        if provider not in PROVIDERS:
            self.rep.error("E101", d.provider.span, f"unknown lm provider '{provider}'",
                           did_you_mean(provider, PROVIDERS))
            return LMDecl(d.name.text, provider)
        if provider in _COMBINATORS:
            return LMDecl(d.name.text, provider, (), self._members(d))
        required, allowed = PROVIDERS[provider]
        args: dict[str, Any] = {}
        for i, a in enumerate(d.args):
            name = a.name.text if a.name else ("model" if i == 0 else None)
            if name is not None:
                args.setdefault(name, _REPORTED)
            if name is None:
                self.rep.error("E202", a.span, "only the first argument may be positional (the model)")
                continue
            if a.name is not None and _SECRET_NAME.search(name):
                self.rep.error("E401", a.span, f"secret written in source: '{name}'",
                               'name an environment variable instead: api_key_env = "OPENAI_API_KEY"')
                continue
            if allowed is not None and name not in allowed:
                self.rep.error("E202", a.name.span if a.name else a.span, f"{provider} lms take no argument '{name}'",
                               did_you_mean(name, allowed))
                continue
            if args[name] is not _REPORTED:
                self.rep.error("E104", a.span, f"argument '{name}' is given twice")
                continue
            value = literal_value(a.value)
            if value is _NOT_LITERAL:
                self.rep.error("E201", a.value.span, f"lm argument '{name}' must be a literal")
                continue
            if isinstance(value, str) and looks_like_secret(value):
                self.rep.error("E401", a.value.span, f"secret written in source: the value of '{name}' looks like "
                               "an API key", "put it in an environment variable and name it with api_key_env")
                continue
            args[name] = value
        present = set(args)
        args = {k: v for k, v in args.items() if v is not _REPORTED}
        if provider == "local" and not present & {"model", "path"}:
            self.rep.error("E207", d.provider.span, 'local lms need a model name or a path: local("smollm2")')
        for r in required:
            if r not in present:
                self.rep.error("E207", d.provider.span, f"{provider} lms need '{r}'")
        return LMDecl(d.name.text, provider, tuple(args.items()))

    def _members(self, d: ast.LMDecl) -> tuple[str, ...]:
        members: list[str] = []
        for a in d.args:
            if a.name is not None or not isinstance(a.value, ast.NameRef):
                self.rep.error("E201", a.span, f"{d.provider.text} takes the names of other lms")
                continue
            name = a.value.name.text
            kind = self.kind_of(name)
            if kind is None:
                self.rep.error("E101", a.span, f"undefined lm '{name}'", did_you_mean(name, self.names_of("lm")))
            elif kind != "lm":
                self.rep.error("E103", a.span, f"'{name}' is {KIND_WORDS.get(kind, kind)}, not an lm")
            elif name in self._active:
                self.rep.error("E302", a.span, f"lm '{d.name.text}' depends on itself through '{name}'")
            else:
                self.lm(name)
                members.append(name)
        if not d.args:
            self.rep.error("E207", d.provider.span, f"{d.provider.text} needs at least one lm")
        return tuple(members)

    def _lower_var(self, d: ast.VarDecl) -> VarDecl:
        t = self.resolve_type(d.type)
        default, ok = self.literal(d.default, t, f"the default of var '{d.name.text}'")
        domain: Range | tuple[Any, ...] | None = None
        if isinstance(d.domain, ast.RangeDomain):
            domain = self._range(d.domain, t)
            if ok and domain is not None and default not in domain:
                self.rep.error("E206", d.default.span, f"default {_show(default)} of var '{d.name.text}' is outside "
                               f"its domain [{_show(domain.lo)} .. {_show(domain.hi)}]")
        elif isinstance(d.domain, ast.ListLit):
            values = [self.literal(i, t, "a domain value") for i in d.domain.items]
            domain = tuple(v for v, good in values if good)
            if ok and len(domain) == len(values) and default not in domain:
                self.rep.error("E206", d.default.span, f"default {_show(default)} of var '{d.name.text}' is not one "
                               f"of its domain {_show(list(domain))}")
        return VarDecl(d.name.text, t, default, domain, d.desc.value if d.desc else None)

    def _range(self, r: ast.RangeDomain, t: Type) -> Range | None:
        if t not in (INT, FLOAT) and not isinstance(t, AnyType):
            self.rep.error("E201", r.span, f"a range domain needs an int or float var, not {render(t)}")
            return None
        bounds = []
        for lit in (r.lo, r.hi):
            if lit.kind not in ("int", "float") or (t == INT and lit.kind == "float"):
                self.rep.error("E201", lit.span, f"range bounds must be {render(t)} numbers")
                return None
            bounds.append(lit.value)
        if bounds[0] > bounds[1]:
            self.rep.error("E201", r.span, f"empty range: {r.lo.raw} is greater than {r.hi.raw}")
            return None
        return Range(bounds[0], bounds[1])

    def _lower_tool(self, d: ast.ToolDecl) -> ToolDecl:
        params = self.fields(d.params, "parameter")
        returns = self.resolve_type(d.returns)
        target = d.target.value or ""
        if d.impl.text != "python":
            self.rep.error("E101", d.impl.span, f"unknown tool implementation '{d.impl.text}'",
                           did_you_mean(d.impl.text, ["python"]))
        elif not _TOOL_TARGET.match(target):
            self.rep.error("E002", d.target.span, f"tool target {d.target.raw} must be \"module:function\"")
        return ToolDecl(d.name.text, params, returns, target)

    def _lower_pipeline(self, d: ast.PipelineDecl) -> Pipeline | None:
        from dspex.lang.pipelines import lower_pipeline

        return lower_pipeline(d, self)


def _offset_span(lit: ast.Lit, start: int, end: int) -> Span:
    """The span of ``raw[start:end]`` of a (possibly multi-line) string token."""
    line = lit.span.line + lit.raw.count("\n", 0, start)
    first = lit.raw.rfind("\n", 0, start)
    col = (lit.span.col + start) if first < 0 else start - first
    return Span(line, col, line, col + end - start)


def _python(e: ir.Expr) -> Any:
    if isinstance(e, ir.Lit):
        return e.value
    if isinstance(e, ir.ListExpr):
        return [_python(i) for i in e.items]
    return None


def _show(v: Any) -> str:
    return ir.render_expr(ir.Lit(v))

