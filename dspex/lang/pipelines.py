"""Phase 2b: check a pipeline body and lower it to its execution graph.

The body is a dataflow graph, not a script: names are collected per scope first, then each binding
is lowered on demand (dependencies before dependents, so the node list comes out in topological
order), with cycle detection. A name bound on both sides of an ``if`` becomes a ``merge`` node in
the enclosing scope; a name bound on one side only is not visible after the ``if`` (E101 where used).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dspex.ir import expr as ir
from dspex.ir.fingerprint import finalize_graph
from dspex.ir.graph import Node
from dspex.ir.modules import DURATION, LM_REF, OPTION_TYPES, TOOL_REFS
from dspex.ir.program import Field, Pipeline
from dspex.ir.types import ANY, ListOf, Type, assignable, element_type, render, unify
from dspex.lang import ast
from dspex.lang.ast import Span
from dspex.lang.diagnostics import did_you_mean
from dspex.lang.exprs import ExprChecker, Typed
from dspex.lang.steps import KIND_WORDS, StepArg, StepChecker, StepOption, StepSpec

if TYPE_CHECKING:
    from dspex.lang.check import Declarations

__all__ = ["lower_pipeline", "node_for_step", "pipeline_closure"]


@dataclass(eq=False)
class _Branch:
    id: str
    cond: ast.Expr
    scope: "_Scope"
    line: int
    done: bool = False
    active: bool = False


@dataclass(eq=False)
class _Binding:
    name: ast.Name
    scope: "_Scope"
    node_id: str
    stmt: ast.Bind | None = None
    merge: tuple[_Branch, "_Binding", "_Binding"] | None = None
    result: Typed | None = None
    active: bool = False
    read: bool = False


@dataclass(eq=False)
class _Scope:
    parent: "_Scope | None"
    guard: tuple[tuple[str, bool], ...]
    prefix: str
    bindings: dict[str, _Binding] = field(default_factory=dict)
    partial: dict[str, int] = field(default_factory=dict)  # name -> line of the `if` that binds it on one side
    children: list["_Scope"] = field(default_factory=list)


def lower_pipeline(d: ast.PipelineDecl, env: "Declarations") -> Pipeline | None:
    """The checked ``Pipeline`` of ``d``, or None when it has errors (all of them reported)."""
    return _Lowerer(d, env).run()


def node_for_step(spec: StepSpec, node_id: str, guard: tuple[tuple[str, bool], ...], span: Span | None,
                  file: str, over: ir.Expr | None = None, item: str | None = None) -> Node:
    """The graph node of a checked step (kind ``map`` when ``over`` is given); shared with the decorators."""
    exprs = [e for _, e in spec.args + spec.options] + ([over] if over is not None else [])
    deps = _deps(exprs, guard)
    var_names = list(spec.vars) + [v for e in exprs for v in ir.var_refs(e)]
    return Node(node_id, "map" if over is not None else "step", spec.type, module=spec.module, target=spec.target,
                target_kind=spec.target_kind, args=spec.args, options=spec.options, select=spec.select, over=over,
                item=item, guard=guard, deps=deps, vars=tuple(dict.fromkeys(var_names)), file=file,
                line=span.line if span else 0, col=span.col if span else 0)


def _deps(exprs: list[ir.Expr], guard: tuple[tuple[str, bool], ...]) -> tuple[str, ...]:
    ids = [g for g, _ in guard]
    for e in exprs:
        ids.extend(ir.refs(e))
    return tuple(dict.fromkeys(ids))


def pipeline_closure(nodes: list[Node], env: "Declarations") -> dict[str, dict[str, object]]:
    """The signatures, tools, callee pipelines, vars and lms the nodes name (so a pipeline runs on its own)."""
    out: dict[str, dict[str, object]] = {"signatures": {}, "tools": {}, "pipelines": {}, "vars": {}, "lms": {}}
    for n in nodes:
        if n.target_kind == "signature" and n.target:
            out["signatures"][n.target] = env.signature(n.target)
        elif n.target_kind == "tool" and n.target:
            out["tools"][n.target] = env.tool(n.target)
        elif n.target_kind == "pipeline" and n.target:
            out["pipelines"][n.target] = env.pipeline(n.target, Span(0, 0, 0, 0))
        for v in n.vars:
            out["vars"][v] = env.var(v)
        lm = n.option("lm")
        if isinstance(lm, ir.Lit):
            _add_lm(str(lm.value), env, out["lms"])
        tools = n.option("tools")
        if isinstance(tools, ir.ListExpr):
            for t in tools.items:
                if isinstance(t, ir.Lit):
                    out["tools"][str(t.value)] = env.tool(str(t.value))
    if env.kind_of("default") == "lm":
        _add_lm("default", env, out["lms"])
    return {k: {n: v for n, v in table.items() if v is not None} for k, table in out.items()}


def _add_lm(name: str, env: "Declarations", table: dict[str, object]) -> None:
    lm = env.lm(name)
    if lm is None or name in table:
        return
    table[name] = lm
    for member in lm.members:
        _add_lm(member, env, table)


class _Lowerer:
    def __init__(self, d: ast.PipelineDecl, env: "Declarations"):
        self.d = d
        self.env = env
        self.rep = env.rep
        self.file = env.module.file
        self.steps = StepChecker(env, env.rep)
        self.nodes: list[Node] = []
        self.inputs: dict[str, Field] = {}
        self.branches: dict[str, _Branch] = {}
        self.stack: list[str] = []
        self.if_count = 0
        self.partial_reads: set[str] = set()

    def run(self) -> Pipeline | None:
        errors_before = sum(1 for x in self.rep.diagnostics if x.severity == "error")
        inputs = self.env.fields(self.d.inputs, "input")
        outputs = self.env.fields(self.d.outputs, "output", defaults=False)
        for f in inputs:
            self.inputs[f.name] = f
            self.nodes.append(Node(f.name, "input", f.type, file=self.file))
        top = self._scope(self.d.body, None, (), "")
        self._lower_all(top)
        for out_decl, out in zip(self.d.outputs, outputs):
            self._output(top, out_decl, out)
        self._warn_unused(top)
        if sum(1 for x in self.rep.diagnostics if x.severity == "error") > errors_before:
            return None
        graph = finalize_graph(self.nodes, self.env.signature, self.env.tool,
                               lambda name: self.env.pipeline(name, Span(0, 0, 0, 0)))
        closure = pipeline_closure(self.nodes, self.env)
        return Pipeline(self.d.name.text, inputs, outputs, graph, **closure)  # type: ignore[arg-type]

    # -- scopes -----------------------------------------------------------------------------------
    def _scope(self, stmts: tuple[ast.Stmt, ...], parent: _Scope | None, guard: tuple[tuple[str, bool], ...],
               prefix: str) -> _Scope:
        scope = _Scope(parent, guard, prefix)
        if parent is not None:
            parent.children.append(scope)
        for s in stmts:
            if isinstance(s, ast.Bind):
                self._bind(scope, _Binding(s.name, scope, prefix + s.name.text, stmt=s))
                continue
            self.if_count += 1
            bid = f"if@{self.if_count}"
            branch = _Branch(bid, s.cond, scope, s.cond.span.line)
            self.branches[bid] = branch
            then = self._scope(s.then, scope, guard + ((bid, True),), f"{bid}.then.")
            orelse = self._scope(s.orelse or (), scope, guard + ((bid, False),), f"{bid}.else.")
            for name, b in then.bindings.items():
                if name in orelse.bindings:
                    self._bind(scope, _Binding(b.name, scope, prefix + name, merge=(branch, b, orelse.bindings[name])))
                elif name not in scope.bindings:
                    scope.partial[name] = s.cond.span.line
            for name in orelse.bindings:
                if name not in then.bindings and name not in scope.bindings:
                    scope.partial[name] = s.cond.span.line
        return scope

    def _bind(self, scope: _Scope, b: _Binding) -> None:
        name = b.name.text
        visible = self._visible_binding(scope, name)
        if name in self.inputs or visible is not None:
            where = "a pipeline input" if name in self.inputs else f"bound on line {visible.name.span.line}"  # type: ignore[union-attr]
            self.rep.error("E104", b.name.span, f"'{name}' is bound twice ({where})",
                           "each name is bound once per scope; pick another name")
            return
        scope.partial.pop(name, None)
        scope.bindings[name] = b

    @staticmethod
    def _visible_binding(scope: _Scope | None, name: str) -> _Binding | None:
        while scope is not None:
            if name in scope.bindings:
                return scope.bindings[name]
            scope = scope.parent
        return None

    def _lower_all(self, scope: _Scope) -> None:
        for b in list(scope.bindings.values()):
            self._value(b)
        for bid, branch in self.branches.items():
            if branch.scope is scope:
                self._branch(branch)
        for child in scope.children:
            self._lower_all(child)

    # -- names ------------------------------------------------------------------------------------
    def _resolver(self, scope: _Scope, item: tuple[str, Type] | None = None):  # type: ignore[no-untyped-def]
        def resolve(name: ast.Name) -> Typed:
            text = name.text
            if item is not None and text == item[0]:
                return ir.Item(), item[1]
            s: _Scope | None = scope
            while s is not None:
                if text in s.bindings:
                    b = s.bindings[text]
                    b.read = True
                    return self._value(b)
                if text in s.partial:
                    self.partial_reads.add(text)
                    self.rep.error("E101", name.span, f"'{text}' is bound only in some branches of the `if` on line "
                                   f"{s.partial[text]}", "bind it in every branch, or bind it before the `if`")
                    return ir.Ref(text), ANY
                s = s.parent
            if text in self.inputs:
                return ir.Ref(text), self.inputs[text].type
            kind = self.env.kind_of(text)
            if kind == "var":
                var = self.env.var(text)
                return ir.VarRef(text), var.type if var else ANY
            if kind is not None:
                self.rep.error("E103", name.span, f"'{text}' is {KIND_WORDS.get(kind, kind)}, not a value")
            elif text not in self.env.broken:
                self.rep.error("E101", name.span, f"undefined name '{text}'",
                               did_you_mean(text, self._visible_names(scope, item)))
            return ir.Ref(text), ANY

        return resolve

    def _visible_names(self, scope: _Scope, item: tuple[str, Type] | None) -> list[str]:
        names = list(self.inputs) + self.env.names_of("var") + ([item[0]] if item else [])
        s: _Scope | None = scope
        while s is not None:
            names.extend(s.bindings)
            s = s.parent
        return names

    # -- lowering ---------------------------------------------------------------------------------
    def _value(self, b: _Binding) -> Typed:
        if b.result is not None:
            return b.result
        if b.active:
            cycle = " -> ".join(self.stack[self.stack.index(b.name.text):] + [b.name.text])
            self.rep.error("E302", b.name.span, f"dependency cycle: {cycle}")
            b.result = (ir.Ref(b.node_id), ANY)
            return b.result
        b.active = True
        self.stack.append(b.name.text)
        try:
            for bid, _ in b.scope.guard:
                self._branch(self.branches[bid])
            t = self._lower_binding(b)
        finally:
            self.stack.pop()
            b.active = False
        if b.result is None:
            b.result = (ir.Ref(b.node_id), t)
        return b.result

    def _lower_binding(self, b: _Binding) -> Type:
        guard = b.scope.guard
        if b.merge is not None:
            branch, then_b, else_b = b.merge
            (te, tt), (ee, et) = self._value(then_b), self._value(else_b)
            then_b.read = else_b.read = True
            merged = unify(tt, et)
            if merged is None:
                self.rep.error("E201", else_b.name.span, f"'{b.name.text}' is {render(tt)} in one branch and "
                               f"{render(et)} in the other")
                merged = ANY
            self._add(Node(b.node_id, "merge", merged, branch=branch.id, args=(("then", te), ("else", ee)),
                           guard=guard, deps=_deps([te, ee], guard + ((branch.id, True),)),
                           file=self.file, line=b.name.span.line, col=b.name.span.col))
            return merged
        assert b.stmt is not None
        value = b.stmt.value
        if isinstance(value, ast.Step):
            spec = self._step(value, b.scope, None)
            self._add(node_for_step(spec, b.node_id, guard, value.span, self.file))
            return spec.type
        if isinstance(value, ast.MapStep):
            return self._map(b, value)
        expr, t = ExprChecker(self.rep, self._resolver(b.scope)).check(value)
        kind = "project" if isinstance(expr, (ir.Ref, ir.Attr)) and getattr(expr, "path", True) else "expr"
        self._add(Node(b.node_id, kind, t, args=(("value", expr),), guard=guard, deps=_deps([expr], guard),
                       vars=tuple(ir.var_refs(expr)), file=self.file, line=b.name.span.line, col=b.name.span.col))
        return t

    def _map(self, b: _Binding, m: ast.MapStep) -> Type:
        over, t = ExprChecker(self.rep, self._resolver(b.scope)).check(m.over)
        item_type = element_type(t)
        if item_type is None:
            self.rep.error("E201", m.over.span, f"map needs a list, got {render(t)}")
            item_type = ANY
        if self._visible_binding(b.scope, m.item.text) or m.item.text in self.inputs:
            self.rep.error("E104", m.item.span, f"'{m.item.text}' is already bound; pick another name for the item")
        spec = self._step(m.step, b.scope, (m.item.text, item_type))
        result = ListOf(spec.type)
        spec = StepSpec(spec.module, spec.target, spec.target_kind, spec.args, spec.options, spec.select, result,
                        spec.vars)
        self._add(node_for_step(spec, b.node_id, b.scope.guard, m.step.span, self.file, over=over, item=m.item.text))
        return result

    def _branch(self, br: _Branch) -> None:
        if br.done:
            return
        if br.active:
            self.rep.error("E302", br.cond.span, "dependency cycle: the condition of this `if` needs a value "
                           "bound inside it")
            return
        br.active = True
        for bid, _ in br.scope.guard:
            self._branch(self.branches[bid])
        cond = ExprChecker(self.rep, self._resolver(br.scope)).condition(br.cond)
        br.active, br.done = False, True
        guard = br.scope.guard
        self._add(Node(br.id, "branch", ANY, args=(("cond", cond),), guard=guard, deps=_deps([cond], guard),
                       vars=tuple(ir.var_refs(cond)), file=self.file, line=br.line, col=br.cond.span.col))

    def _step(self, s: ast.Step, scope: _Scope, item: tuple[str, Type] | None) -> StepSpec:
        checker = ExprChecker(self.rep, self._resolver(scope, item))
        args = [StepArg(a.name.text if a.name else None, a.name.span if a.name else a.span, checker.check(a.value),
                        a.value.span) for a in s.args]
        options = [self._option(o, checker) for o in s.options]
        select = (s.select.text, s.select.span) if s.select else None
        return self.steps.check(s.module.text, s.module.span, s.target.text, s.target.span, args,
                                [o for o in options if o is not None], select)

    def _option(self, o: ast.Arg, checker: ExprChecker) -> StepOption | None:
        if o.name is None:
            self.rep.error("E202", o.span, "options must be named: with (temperature = 0.2)")
            return None
        if isinstance(o.value, ast.Lit) and o.value.kind == "error":
            return None  # a malformed literal, already reported (E002)
        kind = OPTION_TYPES.get(o.name.text)
        base = dict(name=o.name.text, span=o.name.span, value_span=o.value.span)
        names: tuple[tuple[str, Span], ...] | None
        if kind == LM_REF:
            names = ((o.value.name.text, o.value.span),) if isinstance(o.value, ast.NameRef) else None
            return StepOption(**base, names=names)  # type: ignore[arg-type]
        if kind == TOOL_REFS:
            items = o.value.items if isinstance(o.value, ast.ListLit) else None
            names = tuple((i.name.text, i.span) for i in items if isinstance(i, ast.NameRef)) if items is not None \
                else None
            if items is not None and names is not None and len(names) != len(items):
                names = None
            return StepOption(**base, names=names)  # type: ignore[arg-type]
        if kind == DURATION:
            duration = o.value.value if isinstance(o.value, ast.Lit) and o.value.kind == "duration" else None
            return StepOption(**base, duration=duration)  # type: ignore[arg-type]
        if kind is None:
            return StepOption(**base)  # type: ignore[arg-type]
        return StepOption(**base, value=checker.check(o.value))  # type: ignore[arg-type]

    def _add(self, node: Node) -> None:
        self.nodes.append(node)

    # -- outputs and warnings ---------------------------------------------------------------------
    def _output(self, top: _Scope, decl: ast.FieldDecl, out: Field) -> None:
        name = out.name
        if name in top.bindings:
            b = top.bindings[name]
            b.read = True
            expr, t = self._value(b)
            if not assignable(t, out.type):
                self.rep.error("E201", b.name.span, f"output '{name}' is declared {render(out.type)} but bound to "
                               f"{render(t)}")
        elif name in self.inputs:
            expr = ir.Ref(name)
            if not assignable(self.inputs[name].type, out.type):
                self.rep.error("E201", decl.name.span, f"output '{name}' is declared {render(out.type)} but the "
                               f"input is {render(self.inputs[name].type)}")
        else:
            detail = (f" (bound only in some branches of the `if` on line {top.partial[name]})"
                      if name in top.partial else "")
            self.rep.error("E301", decl.name.span, f"output '{name}' is never bound{detail}",
                           f"bind it in the body: {name} = ...")
            return
        self._add(Node(f"out:{name}", "output", out.type, args=(("value", expr),), deps=tuple(ir.refs(expr)),
                       file=self.file, line=decl.name.span.line, col=decl.name.span.col))

    def _warn_unused(self, scope: _Scope) -> None:
        outputs = {f.name.text for f in self.d.outputs}  # bound in some branches only: E301 says it already
        for b in scope.bindings.values():
            if not b.read and b.name.text not in self.partial_reads and b.name.text not in outputs:
                self.rep.warning("W301", b.name.span, f"'{b.name.text}' is bound but never used")
        for child in scope.children:
            self._warn_unused(child)
