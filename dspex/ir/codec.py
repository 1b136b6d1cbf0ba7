"""The IR as plain data (dicts, lists, str, int, float, bool, None) for the ``.dspexc`` artifact, and back.

Every object is a map tagged with its kind (``{"k": "list", "item": ...}``) and decoding dispatches on
that tag through fixed tables of IR classes: nothing named by the data is ever imported or called, so a
hostile artifact can at worst fail to decode. Decoding checks every shape and raises ``CodecError``
(a ``ValueError``) that says where the data went wrong, e.g. ``$.pipelines.digest.graph.nodes[2].kind``.

Literal values (defaults, lm arguments, ``Lit``) are msgpack scalars and arrays as they are; tuples and
durations are tagged maps, so a decoded program compares equal to the one encoded, tuples staying tuples.
A pipeline's signatures, tools, callees, vars and lms are stored by name when they are the program's own
(the usual case) and inline otherwise, and re-linked on decode: a callee is one shared object again.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, TypeVar

from dspex.ir.expr import (Attr, BoolOp, Call, Compare, Duration, Expr, Item, ListExpr, Lit, Not, Ref, Value,
                           VarRef)
from dspex.ir.graph import NODE_KINDS, Graph, Node
from dspex.ir.program import Field, LMDecl, Pipeline, Program, Range, Signature, ToolDecl, VarDecl
from dspex.ir.types import (AnyType, DictOf, EnumOf, ListOf, NoneType, OptionalOf, Prim, Record, RecordField,
                            Type)

__all__ = ["CodecError", "encode_program", "decode_program", "encode_type", "decode_type", "encode_expr",
           "decode_expr", "encode_value", "decode_value", "encode_signature", "decode_signature", "encode_tool",
           "decode_tool"]

T = TypeVar("T")
Decoder = Callable[[Any, str], T]

# The declaration tables a pipeline shares with its program, by attribute name (callees nest, so apart).
_TABLES = ("signatures", "tools", "vars", "lms")


class CodecError(ValueError):
    """Data that is not the encoding of an IR object; the message names the path to the bad part."""


# -- encoding -------------------------------------------------------------------------------------------

def encode_value(v: Any) -> Any:
    """A literal value (str int float bool None, Duration, list or tuple of these) as msgpack-able data."""
    if v is None or isinstance(v, (str, bool, float)):
        return v
    if isinstance(v, int):
        if not -(1 << 63) <= v < (1 << 64):
            raise CodecError(f"integer {v} does not fit in 64 bits")
        return v
    if isinstance(v, Duration):
        return {"k": "duration", "ms": encode_value(v.ms)}
    if isinstance(v, list):
        return [encode_value(i) for i in v]
    if isinstance(v, tuple):
        return {"k": "tuple", "items": [encode_value(i) for i in v]}
    raise CodecError(f"cannot encode a literal of type {type(v).__name__}: {v!r}")


def encode_type(t: Type) -> dict[str, Any]:
    """A type as a tagged map; records keep their name."""
    if isinstance(t, Prim):
        return {"k": "prim", "name": t.name}
    if isinstance(t, ListOf):
        return {"k": "list", "item": encode_type(t.item)}
    if isinstance(t, DictOf):
        return {"k": "dict", "key": encode_type(t.key), "value": encode_type(t.value)}
    if isinstance(t, OptionalOf):
        return {"k": "optional", "inner": encode_type(t.inner)}
    if isinstance(t, EnumOf):
        return {"k": "enum", "values": list(t.values)}
    if isinstance(t, Record):
        return {"k": "record", "name": t.name, "fields": [_encode_record_field(f) for f in t.fields]}
    if isinstance(t, AnyType):
        return {"k": "any"}
    if isinstance(t, NoneType):
        return {"k": "none"}
    raise CodecError(f"cannot encode type {t!r}")


def _encode_record_field(f: RecordField) -> dict[str, Any]:
    return {"k": "record_field", "name": f.name, "type": encode_type(f.type), "desc": f.desc,
            "constraint": _encode_opt_expr(f.constraint)}


def encode_expr(e: Expr) -> dict[str, Any]:
    """An expression as a tagged map."""
    if isinstance(e, Lit):
        return {"k": "lit", "value": encode_value(e.value)}
    if isinstance(e, Value):
        return {"k": "value"}
    if isinstance(e, Ref):
        return {"k": "ref", "node": e.node, "path": list(e.path)}
    if isinstance(e, Item):
        return {"k": "item", "path": list(e.path)}
    if isinstance(e, VarRef):
        return {"k": "var", "name": e.name}
    if isinstance(e, ListExpr):
        return {"k": "list", "items": [encode_expr(i) for i in e.items]}
    if isinstance(e, Attr):
        return {"k": "attr", "base": encode_expr(e.base), "name": e.name}
    if isinstance(e, Compare):
        return {"k": "compare", "ops": list(e.ops), "operands": [encode_expr(o) for o in e.operands]}
    if isinstance(e, BoolOp):
        return {"k": "boolop", "op": e.op, "args": [encode_expr(a) for a in e.args]}
    if isinstance(e, Not):
        return {"k": "not", "arg": encode_expr(e.arg)}
    if isinstance(e, Call):
        return {"k": "call", "fn": e.fn, "args": [encode_expr(a) for a in e.args]}
    raise CodecError(f"cannot encode expression {e!r}")


def _encode_opt_expr(e: Expr | None) -> dict[str, Any] | None:
    return None if e is None else encode_expr(e)


def _encode_pairs(pairs: tuple[tuple[str, Expr], ...]) -> list[list[Any]]:
    return [[name, encode_expr(e)] for name, e in pairs]


def _encode_field(f: Field) -> dict[str, Any]:
    return {"k": "field", "name": f.name, "type": encode_type(f.type), "desc": f.desc,
            "default": encode_value(f.default), "has_default": f.has_default,
            "constraint": _encode_opt_expr(f.constraint)}


def _encode_signature(s: Signature) -> dict[str, Any]:
    return {"k": "signature", "name": s.name, "instructions": s.instructions,
            "inputs": [_encode_field(f) for f in s.inputs], "outputs": [_encode_field(f) for f in s.outputs],
            "instruction_vars": list(s.instruction_vars)}


def _encode_lm(lm: LMDecl) -> dict[str, Any]:
    return {"k": "lm", "name": lm.name, "provider": lm.provider,
            "args": [[name, encode_value(v)] for name, v in lm.args], "members": list(lm.members)}


def _encode_var(v: VarDecl) -> dict[str, Any]:
    domain: Any
    if v.domain is None:
        domain = None
    elif isinstance(v.domain, Range):
        domain = {"k": "range", "lo": encode_value(v.domain.lo), "hi": encode_value(v.domain.hi)}
    else:
        domain = {"k": "choices", "items": [encode_value(i) for i in v.domain]}
    return {"k": "var", "name": v.name, "type": encode_type(v.type), "default": encode_value(v.default),
            "domain": domain, "desc": v.desc}


def _encode_tool(t: ToolDecl) -> dict[str, Any]:
    return {"k": "tool", "name": t.name, "params": [_encode_field(f) for f in t.params],
            "returns": encode_type(t.returns), "target": t.target}


def _encode_node(n: Node) -> dict[str, Any]:
    return {"k": "node", "id": n.id, "kind": n.kind, "type": encode_type(n.type), "module": n.module,
            "target": n.target, "target_kind": n.target_kind, "args": _encode_pairs(n.args),
            "options": _encode_pairs(n.options), "select": n.select, "over": _encode_opt_expr(n.over),
            "item": n.item, "branch": n.branch, "guard": [[g, side] for g, side in n.guard], "deps": list(n.deps),
            "vars": list(n.vars), "fingerprint": n.fingerprint, "file": n.file, "line": n.line, "col": n.col}


def _encode_graph(g: Graph) -> dict[str, Any]:
    return {"k": "graph", "nodes": [_encode_node(n) for n in g.nodes], "fingerprint": g.fingerprint}


_ENCODERS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "signatures": _encode_signature, "tools": _encode_tool, "vars": _encode_var, "lms": _encode_lm}


def _encode_pipeline(p: Pipeline, program: Program) -> dict[str, Any]:
    def use(table: Mapping[str, Any], key: str, value: Any, encode: Callable[[Any], dict[str, Any]]) -> Any:
        # The program's own object is stored by name; anything else travels with the pipeline.
        return {"k": "ref", "name": key} if key in table and table[key] == value else encode(value)

    out: dict[str, Any] = {"k": "pipeline", "name": p.name, "inputs": [_encode_field(f) for f in p.inputs],
                           "outputs": [_encode_field(f) for f in p.outputs], "graph": _encode_graph(p.graph)}
    for attr in _TABLES:
        table = getattr(program, attr)
        out[attr] = {key: use(table, key, value, _ENCODERS[attr]) for key, value in getattr(p, attr).items()}
    out["pipelines"] = {key: use(program.pipelines, key, callee, lambda c: _encode_pipeline(c, program))
                        for key, callee in p.pipelines.items()}
    return out


def encode_program(p: Program) -> dict[str, Any]:
    """The whole program as msgpack-able data; raises ``CodecError`` on a value it cannot represent."""
    return {
        "k": "program",
        "types": {name: encode_type(t) for name, t in p.types.items()},
        "signatures": {name: _encode_signature(s) for name, s in p.signatures.items()},
        "lms": {name: _encode_lm(lm) for name, lm in p.lms.items()},
        "vars": {name: _encode_var(v) for name, v in p.vars.items()},
        "tools": {name: _encode_tool(t) for name, t in p.tools.items()},
        "pipelines": {name: _encode_pipeline(pipe, p) for name, pipe in p.pipelines.items()},
        "source_sha256": p.source_sha256,
    }


# -- decoding: shapes -----------------------------------------------------------------------------------

def _fail(at: str, what: str, got: Any) -> CodecError:
    shown = repr(got)
    return CodecError(f"{at}: expected {what}, got {shown if len(shown) <= 60 else shown[:57] + '...'}")


def _str(v: Any, at: str) -> str:
    if not isinstance(v, str):
        raise _fail(at, "a string", v)
    return v


def _int(v: Any, at: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise _fail(at, "an integer", v)
    return v


def _bool(v: Any, at: str) -> bool:
    if not isinstance(v, bool):
        raise _fail(at, "a boolean", v)
    return v


def _list(v: Any, at: str) -> list[Any]:
    if not isinstance(v, list):
        raise _fail(at, "an array", v)
    return v


def _opt(decode: Decoder[T]) -> Decoder[T | None]:
    return lambda v, at: None if v is None else decode(v, at)


def _tuple(decode: Decoder[T]) -> Decoder[tuple[T, ...]]:
    return lambda v, at: tuple(decode(x, f"{at}[{i}]") for i, x in enumerate(_list(v, at)))


def _pair(first: Decoder[Any], second: Decoder[Any]) -> Decoder[tuple[Any, Any]]:
    def decode(v: Any, at: str) -> tuple[Any, Any]:
        items = _list(v, at)
        if len(items) != 2:
            raise _fail(at, "a [name, value] pair", v)
        return first(items[0], f"{at}[0]"), second(items[1], f"{at}[1]")
    return decode


def _table(decode: Decoder[T]) -> Decoder[dict[str, T]]:
    def table(v: Any, at: str) -> dict[str, T]:
        if not isinstance(v, dict):
            raise _fail(at, "a map", v)
        return {_str(k, at): decode(x, f"{at}.{k}") for k, x in v.items()}
    return table


def _tag(v: Any, at: str) -> str:
    if not isinstance(v, dict) or not isinstance(v.get("k"), str):
        raise _fail(at, "a tagged map", v)
    tag: str = v["k"]
    return tag


class _Obj:
    """One tagged map being decoded: checks its tag and exact keys, and reads fields with their paths."""

    __slots__ = ("data", "at")

    def __init__(self, v: Any, at: str, kind: str, keys: tuple[str, ...]):
        if _tag(v, at) != kind:
            raise _fail(at, f"a {kind!r} map", v)
        if set(v) != {"k", *keys}:
            missing, extra = sorted({*keys} - set(v)), sorted(map(str, set(v) - {"k", *keys}))
            raise CodecError(f"{at}: {kind!r} map " + (f"lacks {missing}" if missing else f"has unknown {extra}"))
        self.data: dict[str, Any] = v
        self.at = at

    def __call__(self, key: str, decode: Decoder[T]) -> T:
        return decode(self.data[key], f"{self.at}.{key}")


# -- decoding: values, types, expressions ----------------------------------------------------------------

def _value(v: Any, at: str) -> Any:
    if v is None or isinstance(v, (str, bool, int, float)):
        return v
    if isinstance(v, list):
        return [_value(x, f"{at}[{i}]") for i, x in enumerate(v)]
    tag = _tag(v, at)
    if tag == "duration":
        return Duration(_Obj(v, at, "duration", ("ms",))("ms", _int))
    if tag == "tuple":
        return _Obj(v, at, "tuple", ("items",))("items", _tuple(_value))
    raise _fail(at, "a literal", v)


def _record_field(v: Any, at: str) -> RecordField:
    o = _Obj(v, at, "record_field", ("name", "type", "desc", "constraint"))
    return RecordField(o("name", _str), o("type", _type), o("desc", _opt(_str)),
                       o("constraint", _opt(_expr)))


def _prim(o: _Obj) -> Prim:
    name = o("name", _str)
    if name not in ("str", "int", "float", "bool"):
        raise _fail(f"{o.at}.name", "str, int, float or bool", name)
    return Prim(name)


_TYPES: dict[str, tuple[tuple[str, ...], Callable[[_Obj], Type]]] = {
    "prim": (("name",), _prim),
    "list": (("item",), lambda o: ListOf(o("item", _type))),
    "dict": (("key", "value"), lambda o: DictOf(o("key", _type), o("value", _type))),
    "optional": (("inner",), lambda o: OptionalOf(o("inner", _type))),
    "enum": (("values",), lambda o: EnumOf(o("values", _tuple(_str)))),
    "record": (("name", "fields"), lambda o: Record(o("name", _str), o("fields", _tuple(_record_field)))),
    "any": ((), lambda o: AnyType()),
    "none": ((), lambda o: NoneType()),
}

_path = _tuple(_str)
_exprs = _tuple(lambda v, at: _expr(v, at))

_EXPRS: dict[str, tuple[tuple[str, ...], Callable[[_Obj], Expr]]] = {
    "lit": (("value",), lambda o: Lit(o("value", _value))),
    "value": ((), lambda o: Value()),
    "ref": (("node", "path"), lambda o: Ref(o("node", _str), o("path", _path))),
    "item": (("path",), lambda o: Item(o("path", _path))),
    "var": (("name",), lambda o: VarRef(o("name", _str))),
    "list": (("items",), lambda o: ListExpr(o("items", _exprs))),
    "attr": (("base", "name"), lambda o: Attr(o("base", _expr), o("name", _str))),
    "compare": (("ops", "operands"), lambda o: Compare(o("ops", _tuple(_str)), o("operands", _exprs))),
    "boolop": (("op", "args"), lambda o: BoolOp(o("op", _str), o("args", _exprs))),
    "not": (("arg",), lambda o: Not(o("arg", _expr))),
    "call": (("fn", "args"), lambda o: Call(o("fn", _str), o("args", _exprs))),
}


def _dispatch(table: Mapping[str, tuple[tuple[str, ...], Callable[[_Obj], T]]], what: str, v: Any, at: str) -> T:
    tag = _tag(v, at)
    if tag not in table:
        raise _fail(f"{at}.k", what, tag)
    keys, build = table[tag]
    return build(_Obj(v, at, tag, keys))


def _type(v: Any, at: str) -> Type:
    return _dispatch(_TYPES, "a type tag", v, at)


def _expr(v: Any, at: str) -> Expr:
    return _dispatch(_EXPRS, "an expression tag", v, at)


# -- decoding: declarations --------------------------------------------------------------------------------

def _field(v: Any, at: str) -> Field:
    o = _Obj(v, at, "field", ("name", "type", "desc", "default", "has_default", "constraint"))
    return Field(o("name", _str), o("type", _type), o("desc", _opt(_str)), o("default", _value),
                 o("has_default", _bool), o("constraint", _opt(_expr)))


_fields = _tuple(_field)


def _signature(v: Any, at: str) -> Signature:
    o = _Obj(v, at, "signature", ("name", "instructions", "inputs", "outputs", "instruction_vars"))
    return Signature(o("name", _str), o("instructions", _str), o("inputs", _fields), o("outputs", _fields),
                     o("instruction_vars", _tuple(_str)))


def _lm(v: Any, at: str) -> LMDecl:
    o = _Obj(v, at, "lm", ("name", "provider", "args", "members"))
    return LMDecl(o("name", _str), o("provider", _str), o("args", _tuple(_pair(_str, _value))),
                  o("members", _tuple(_str)))


def _domain(v: Any, at: str) -> Range | tuple[Any, ...]:
    if _tag(v, at) == "range":
        o = _Obj(v, at, "range", ("lo", "hi"))
        return Range(o("lo", _value), o("hi", _value))
    return _Obj(v, at, "choices", ("items",))("items", _tuple(_value))


def _var(v: Any, at: str) -> VarDecl:
    o = _Obj(v, at, "var", ("name", "type", "default", "domain", "desc"))
    return VarDecl(o("name", _str), o("type", _type), o("default", _value), o("domain", _opt(_domain)),
                   o("desc", _opt(_str)))


def _tool(v: Any, at: str) -> ToolDecl:
    o = _Obj(v, at, "tool", ("name", "params", "returns", "target"))
    return ToolDecl(o("name", _str), o("params", _fields), o("returns", _type), o("target", _str))


def _node_kind(v: Any, at: str) -> str:
    kind = _str(v, at)
    if kind not in NODE_KINDS:
        raise _fail(at, "a node kind", kind)
    return kind


_NODE_KEYS = ("id", "kind", "type", "module", "target", "target_kind", "args", "options", "select", "over", "item",
              "branch", "guard", "deps", "vars", "fingerprint", "file", "line", "col")


def _node(v: Any, at: str) -> Node:
    o = _Obj(v, at, "node", _NODE_KEYS)
    ostr, pairs = _opt(_str), _tuple(_pair(_str, _expr))
    return Node(id=o("id", _str), kind=o("kind", _node_kind), type=o("type", _type), module=o("module", ostr),
                target=o("target", ostr), target_kind=o("target_kind", ostr), args=o("args", pairs),
                options=o("options", pairs), select=o("select", ostr), over=o("over", _opt(_expr)),
                item=o("item", ostr), branch=o("branch", ostr), guard=o("guard", _tuple(_pair(_str, _bool))),
                deps=o("deps", _tuple(_str)), vars=o("vars", _tuple(_str)), fingerprint=o("fingerprint", _str),
                file=o("file", _str), line=o("line", _int), col=o("col", _int))


def _graph(v: Any, at: str) -> Graph:
    o = _Obj(v, at, "graph", ("nodes", "fingerprint"))
    return Graph(o("nodes", _tuple(_node)), o("fingerprint", _str))


_DECODERS: dict[str, Decoder[Any]] = {"signatures": _signature, "tools": _tool, "vars": _var, "lms": _lm}
_PIPELINE_KEYS = ("name", "inputs", "outputs", "graph", *_TABLES, "pipelines")


class _Linker:
    """Decodes a program's pipelines in whatever order callees need them, each exactly once."""

    def __init__(self, raw: dict[str, Any], decls: dict[str, dict[str, Any]]):
        self.raw, self.decls = raw, decls
        self.done: dict[str, Pipeline] = {}
        self.busy: set[str] = set()

    def named(self, name: str, at: str) -> Pipeline:
        if name not in self.done:
            if name not in self.raw:
                raise CodecError(f"{at}: no pipeline {name!r} in the program")
            if name in self.busy:
                raise CodecError(f"{at}: pipeline {name!r} is part of a call cycle")
            self.busy.add(name)
            self.done[name] = self.pipeline(self.raw[name], f"$.pipelines.{name}")
        return self.done[name]

    def callee(self, v: Any, at: str) -> Pipeline:
        if _tag(v, at) == "ref":
            return self.named(_Obj(v, at, "ref", ("name",))("name", _str), at)
        return self.pipeline(v, at)

    def decl(self, attr: str) -> Decoder[Any]:
        def resolve(v: Any, at: str) -> Any:
            if _tag(v, at) != "ref":
                return _DECODERS[attr](v, at)
            name = _Obj(v, at, "ref", ("name",))("name", _str)
            if name not in self.decls[attr]:
                raise CodecError(f"{at}: no {attr[:-1]} {name!r} in the program")
            return self.decls[attr][name]
        return resolve

    def pipeline(self, v: Any, at: str) -> Pipeline:
        o = _Obj(v, at, "pipeline", _PIPELINE_KEYS)
        tables = {attr: o(attr, _table(self.decl(attr))) for attr in _TABLES}
        return Pipeline(o("name", _str), o("inputs", _fields), o("outputs", _fields), o("graph", _graph),
                        pipelines=o("pipelines", _table(self.callee)), **tables)


def _program(v: Any, at: str) -> Program:
    o = _Obj(v, at, "program", ("types", "signatures", "lms", "vars", "tools", "pipelines", "source_sha256"))
    decls = {attr: o(attr, _table(_DECODERS[attr])) for attr in _TABLES}
    raw = o("pipelines", _table(lambda x, _: x))
    linker = _Linker(raw, decls)
    pipelines = {name: linker.named(name, f"{at}.pipelines.{name}") for name in raw}
    return Program(types=o("types", _table(_type)), pipelines=pipelines,
                   source_sha256=o("source_sha256", _str), **decls)


def _guarded(decode: Decoder[T], data: Any) -> T:
    try:
        return decode(data, "$")
    except RecursionError:
        raise CodecError("$: nested too deeply") from None


def decode_value(data: Any) -> Any:
    """The literal ``encode_value`` encoded."""
    return _guarded(_value, data)


def decode_type(data: Any) -> Type:
    """The type ``encode_type`` encoded."""
    return _guarded(_type, data)


def decode_expr(data: Any) -> Expr:
    """The expression ``encode_expr`` encoded."""
    return _guarded(_expr, data)


def decode_program(data: Any) -> Program:
    """The program ``encode_program`` encoded; raises ``CodecError`` on anything else."""
    return _guarded(_program, data)


def encode_signature(s: Signature) -> dict[str, Any]:
    """One signature as plain data (a worker process rebuilds it with ``decode_signature``)."""
    return _encode_signature(s)


def decode_signature(data: Any) -> Signature:
    return _guarded(_signature, data)


def encode_tool(t: ToolDecl) -> dict[str, Any]:
    return _encode_tool(t)


def decode_tool(data: Any) -> ToolDecl:
    return _guarded(_tool, data)
