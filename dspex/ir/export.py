"""A pipeline's execution graph for people and tools (``dspexc graph``, SPEC §7): JSON, Graphviz DOT, Mermaid.

All three show the same content: every node with its kind, module and signature, data edges from
``deps`` (guard edges labelled ``then``/``else``), and dashed edges from each var to the nodes that read
it, since those are what changing the var invalidates. Node ids such as ``if@1.then.reply`` or
``out:reply`` are not identifiers in DOT or Mermaid, so DOT quotes them and Mermaid numbers them.
"""
from __future__ import annotations

import json

from dspex.ir.expr import refs, render_expr
from dspex.ir.graph import Node
from dspex.ir.program import Pipeline
from dspex.ir.types import render

__all__ = ["graph_json", "graph_dot", "graph_mermaid"]

# (DOT shape, Mermaid opening and closing bracket) per node kind; vars are drawn as their own nodes.
_SHAPES: dict[str, tuple[str, str, str]] = {
    "input": ("ellipse", "([", "])"),
    "output": ("ellipse", "([", "])"),
    "step": ("box", "[", "]"),
    "map": ("box3d", "[[", "]]"),
    "branch": ("diamond", "{", "}"),
    "merge": ("invtrapezium", "[\\", "/]"),
    "project": ("box", "(", ")"),
    "expr": ("box", "(", ")"),
    "var": ("hexagon", "{{", "}}"),
}


def graph_json(pipeline: Pipeline) -> dict[str, object]:
    """The SPEC §7 graph object; ``type``, ``line`` and ``guard`` are extra keys for tools that want them."""
    return {
        "pipeline": pipeline.name,
        "fingerprint": pipeline.fingerprint,
        "nodes": [{
            "id": n.id,
            "kind": n.kind,
            "module": n.module,
            "signature": n.target,
            "engine": n.engine or None,
            "deps": list(n.deps),
            "vars": list(n.vars),
            "type": render(n.type),
            "line": n.line or None,
            "guard": [{"branch": b, "then": side} for b, side in n.guard],
        } for n in pipeline.graph],
    }


def graph_dot(pipeline: Pipeline) -> str:
    """A Graphviz ``digraph`` named after the pipeline."""
    names = _local_names(pipeline)
    lines = [f"digraph {_dot_id(pipeline.name)} {{", "  rankdir=TB;", '  node [fontname="Helvetica"];']
    for n in pipeline.graph:
        style = ", style=rounded" if n.kind in ("project", "expr") else ""
        lines.append(f"  {_dot_id(n.id)} [shape={_SHAPES[n.kind][0]}{style}, label={_dot_id(_label(n, names))}];")
    for var in _vars(pipeline):
        lines.append(f"  {_dot_id('var:' + var)} [shape={_SHAPES['var'][0]}, style=dashed, "
                     f"label={_dot_id('var ' + var)}];")
    for src, dst, label in _edges(pipeline):
        attrs = f' [label="{label}"]' if label else ""
        lines.append(f"  {_dot_id(src)} -> {_dot_id(dst)}{attrs};")
    for n in pipeline.graph:
        for var in n.vars:
            lines.append(f"  {_dot_id('var:' + var)} -> {_dot_id(n.id)} [style=dashed];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def graph_mermaid(pipeline: Pipeline) -> str:
    """A Mermaid ``flowchart TD``; nodes are ``n0, n1, ...`` and vars ``v0, v1, ...`` with quoted labels."""
    names = _local_names(pipeline)
    ids = {n.id: f"n{i}" for i, n in enumerate(pipeline.graph)}
    ids.update({"var:" + v: f"v{i}" for i, v in enumerate(_vars(pipeline))})
    lines = ["flowchart TD"]
    for n in pipeline.graph:
        _, open_, close = _SHAPES[n.kind]
        lines.append(f"  {ids[n.id]}{open_}\"{_mermaid_text(_label(n, names))}\"{close}")
    for var in _vars(pipeline):
        _, open_, close = _SHAPES["var"]
        lines.append(f"  {ids['var:' + var]}{open_}\"{_mermaid_text('var ' + var)}\"{close}")
    for src, dst, label in _edges(pipeline):
        arrow = f"-->|{label}|" if label else "-->"
        lines.append(f"  {ids[src]} {arrow} {ids[dst]}")
    for n in pipeline.graph:
        for var in n.vars:
            lines.append(f"  {ids['var:' + var]} -.-> {ids[n.id]}")
    return "\n".join(lines) + "\n"


def _local_names(pipeline: Pipeline) -> dict[str, str]:
    """Node id -> the name the source binds (``if@1.then.reply`` -> ``reply``, ``out:reply`` -> ``reply``)."""
    return {n.id: n.id.removeprefix("out:").rsplit(".", 1)[-1] for n in pipeline.graph}


def _label(n: Node, names: dict[str, str]) -> str:
    name = names[n.id]
    if n.kind == "input":
        return f"{name}: {render(n.type)}"
    if n.kind == "output":
        return f"out {name}: {render(n.type)}"
    if n.kind in ("step", "map"):
        step = f"{n.module} {n.target}" + (f".{n.select}" if n.select else "")
        if n.kind == "map" and n.over is not None:
            step = f"map {n.item} in {render_expr(n.over, names)}: {step}"
        return f"{name} = {step}"
    if n.kind == "branch":
        return "if " + render_expr(n.args[0][1], names)
    if n.kind == "merge":
        return f"{name} = then | else"
    return f"{name} = {render_expr(n.args[0][1], names)}"


def _edges(pipeline: Pipeline) -> list[tuple[str, str, str]]:
    """(from, to, label) data edges: guard edges say ``then``/``else``, and so do a merge's two inputs."""
    edges: list[tuple[str, str, str]] = []
    for n in pipeline.graph:
        sides = {b: "then" if side else "else" for b, side in n.guard}
        if n.kind == "merge":
            sides.update({dep: side for side, value in n.args for dep in refs(value)})
        edges.extend((dep, n.id, sides.get(dep, "")) for dep in n.deps if dep in pipeline.graph)
    return edges


def _vars(pipeline: Pipeline) -> list[str]:
    return list(dict.fromkeys(v for n in pipeline.graph for v in n.vars))


def _dot_id(text: str) -> str:
    """A DOT double-quoted string: backslashes and quotes escaped, newlines as ``\\n``."""
    return json.dumps(text, ensure_ascii=False)


def _mermaid_text(text: str) -> str:
    """Label text safe inside Mermaid quotes: characters Mermaid or its HTML would read become entity codes."""
    return "".join(f"#{ord(c)};" if c in '"#<>&' else c for c in text)
