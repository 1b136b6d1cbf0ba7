"""Structural fingerprints (SPEC §6): stable content hashes of signatures, nodes and graphs.

A fingerprint hashes a canonical msgpack encoding of *structure*: instructions, field names, types,
descriptions and constraints, modules, options, var references and wiring. It ignores what does not
change behaviour: whitespace, comments, declaration order, type alias names, the names bound to
intermediate values and node ids. Graphs are hashed Merkle-style: a node's hash covers the hashes
of the nodes it reads, so a binding (``labels = c.label``) is transparent and ``.dspex`` and traced
Python programs with the same dataflow get the same fingerprint.
"""
from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any, Callable

import msgpack

from dspex.ir import expr as ir
from dspex.ir.graph import Graph, Node
from dspex.ir.types import (AnyType, DictOf, EnumOf, ListOf, NoneType, OptionalOf, Prim, Record, Type)

__all__ = ["digest", "encode_type", "encode_expr", "signature_fingerprint", "tool_fingerprint", "finalize_graph",
           "program_fingerprint"]


def digest(obj: Any) -> str:
    """The sha256 (hex) of the canonical msgpack encoding of ``obj`` (maps with sorted keys)."""
    return hashlib.sha256(msgpack.packb(obj, use_bin_type=True)).hexdigest()


def encode_type(t: Type) -> Any:
    if isinstance(t, Prim):
        return t.name
    if isinstance(t, ListOf):
        return ["list", encode_type(t.item)]
    if isinstance(t, DictOf):
        return ["dict", encode_type(t.key), encode_type(t.value)]
    if isinstance(t, OptionalOf):
        return ["opt", encode_type(t.inner)]
    if isinstance(t, EnumOf):
        return ["enum", list(t.values)]
    if isinstance(t, Record):
        return ["record", [[f.name, encode_type(f.type), f.desc, _constraint(f.constraint)] for f in t.fields]]
    if isinstance(t, NoneType):
        return "none"
    assert isinstance(t, AnyType)
    return "any"


def _constraint(c: ir.Expr | None) -> Any:
    return None if c is None else encode_expr(c, {})


def _literal(v: Any) -> Any:
    if isinstance(v, ir.Duration):
        return ["duration", v.ms]
    if isinstance(v, list):
        return ["list", [_literal(i) for i in v]]
    return v  # msgpack keeps int, float, str, bool and None apart


def encode_expr(e: ir.Expr, values: dict[str, Any]) -> Any:
    """``values`` maps node ids to how a read of them encodes: a ``Ref`` encodes as what it reads, not its name."""
    if isinstance(e, ir.Lit):
        return ["lit", _literal(e.value)]
    if isinstance(e, ir.Value):
        return ["value"]
    if isinstance(e, ir.Ref):
        return _path(values.get(e.node, ["node", e.node]), e.path)
    if isinstance(e, ir.Item):
        return _path(["item"], e.path)
    if isinstance(e, ir.VarRef):
        return ["var", e.name]
    if isinstance(e, ir.ListExpr):
        return ["list", [encode_expr(i, values) for i in e.items]]
    if isinstance(e, ir.Attr):
        return ["attr", encode_expr(e.base, values), e.name]
    if isinstance(e, ir.Compare):
        return ["cmp", list(e.ops), [encode_expr(o, values) for o in e.operands]]
    if isinstance(e, ir.BoolOp):
        return [e.op, [encode_expr(a, values) for a in e.args]]
    if isinstance(e, ir.Not):
        return ["not", encode_expr(e.arg, values)]
    assert isinstance(e, ir.Call)
    return ["call", e.fn, [encode_expr(a, values) for a in e.args]]


def _path(base: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        base = ["attr", base, name]
    return base


def _fields(fields: Any) -> Any:
    return [[f.name, encode_type(f.type), f.desc, _literal(f.default), f.has_default, _constraint(f.constraint)]
            for f in fields]


def signature_fingerprint(sig: Any) -> str:
    """Covers instructions and fields; not the signature's name."""
    return digest(["signature", sig.instructions, _fields(sig.inputs), _fields(sig.outputs)])


def tool_fingerprint(tool: Any) -> str:
    return digest(["tool", _fields(tool.params), encode_type(tool.returns), tool.target])


def _target(node: Node, signature: Callable[[str], Any], tool: Callable[[str], Any],
            pipeline: Callable[[str], Any]) -> Any:
    if node.target is None:
        return None
    if node.target_kind == "signature":
        sig = signature(node.target)
        return signature_fingerprint(sig) if sig is not None else node.target
    if node.target_kind == "tool":
        t = tool(node.target)
        return tool_fingerprint(t) if t is not None else node.target
    p = pipeline(node.target)
    return p.graph.fingerprint if p is not None else node.target


def finalize_graph(nodes: list[Node], signature: Callable[[str], Any], tool: Callable[[str], Any],
                   pipeline: Callable[[str], Any]) -> Graph:
    """Give every node its fingerprint and build the ``Graph`` (``nodes`` must be in dependency order).

    A node's fingerprint is its own structure plus what it reads. Readers see a step through its
    fingerprint (and the field it selects), and an expression binding as the expression itself.
    """
    values: dict[str, Any] = {}
    finished: list[Node] = []
    effects: list[str] = []
    inputs: list[Any] = []
    outputs: list[Any] = []

    for n in nodes:
        guard = [[values.get(g, g), side] for g, side in n.guard]
        args = sorted([k, encode_expr(v, values)] for k, v in n.args)
        if n.kind == "input":
            body: Any = ["input", n.id, encode_type(n.type)]
            inputs.append(body)
        elif n.kind in ("step", "map"):
            options = sorted([k, encode_expr(v, values)] for k, v in n.options)
            body = [n.kind, n.module, _target(n, signature, tool, pipeline), args, options, guard,
                    encode_expr(n.over, values) if n.over is not None else None]
        elif n.kind in ("expr", "project"):
            body = ["value", args[0][1]]
        elif n.kind == "branch":
            body = ["branch", args, guard]
        elif n.kind == "merge":
            body = ["merge", values.get(n.branch or "", n.branch), args, guard]
        else:
            body = ["output", n.id.removeprefix("out:"), args]
        fp = digest(body)
        if n.kind in ("expr", "project"):
            values[n.id] = args[0][1]  # an alias reads as the expression it names
        else:
            values[n.id] = _path(["node", fp], (n.select,) if n.select else ())
        if n.kind in ("step", "map", "branch"):
            effects.append(fp)
        if n.kind == "output":
            outputs.append([n.id, args])
        finished.append(replace(n, fingerprint=fp))
    graph_fp = digest(["graph", inputs, outputs, sorted(set(effects))])
    return Graph(tuple(finished), graph_fp)


def program_fingerprint(program: Any) -> str:
    """Covers every declaration's structure, by name (a program's names are its interface)."""
    body = [
        sorted([n, encode_type(t)] for n, t in program.types.items()),
        sorted([n, signature_fingerprint(s)] for n, s in program.signatures.items()),
        sorted([n, lm.provider, [[k, _literal(v)] for k, v in lm.args], list(lm.members)] for n, lm in program.lms.items()),
        sorted([n, encode_type(v.type), _literal(v.default), repr(v.domain), v.desc] for n, v in program.vars.items()),
        sorted([n, tool_fingerprint(t)] for n, t in program.tools.items()),
        sorted([n, p.graph.fingerprint] for n, p in program.pipelines.items()),
    ]
    return digest(body)
