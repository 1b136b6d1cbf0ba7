"""The value types of DSPex programs: what a field, var, tool parameter or pipeline value may hold.

Types are immutable and structural: a named alias (``type Sentiment = enum(...)``) resolves to the
structure it names, so renaming an alias changes nothing that depends on it. Records keep their name
for display and code generation only; equality and fingerprints look at their fields.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Type", "Prim", "ListOf", "DictOf", "OptionalOf", "EnumOf", "Record", "RecordField", "AnyType", "NoneType",
    "STR", "INT", "FLOAT", "BOOL", "ANY", "NONE", "PRIMITIVES",
    "assignable", "unify", "render", "to_python", "from_python", "element_type",
]


class Type:
    """Base of every type; subclasses are frozen dataclasses."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Prim(Type):
    name: str  # "str" | "int" | "float" | "bool"


@dataclass(frozen=True, slots=True)
class ListOf(Type):
    item: Type


@dataclass(frozen=True, slots=True)
class DictOf(Type):
    key: Type
    value: Type


@dataclass(frozen=True, slots=True)
class OptionalOf(Type):
    inner: Type


@dataclass(frozen=True, slots=True)
class EnumOf(Type):
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RecordField:
    """One field of a record type; ``constraint`` is a ``where`` predicate (``dspex.ir.expr.Expr``) or None."""

    name: str
    type: Type
    desc: str | None = None
    constraint: Any = None


@dataclass(frozen=True, slots=True)
class Record(Type):
    name: str = field(compare=False)
    fields: tuple[RecordField, ...] = ()

    def field(self, name: str) -> RecordField | None:
        for f in self.fields:
            if f.name == name:
                return f
        return None


@dataclass(frozen=True, slots=True)
class AnyType(Type):
    """The type of a value the checker could not type (after an error): fits everywhere, stops cascades."""


@dataclass(frozen=True, slots=True)
class NoneType(Type):
    """The type of the literal ``none``: fits any optional."""


STR, INT, FLOAT, BOOL = Prim("str"), Prim("int"), Prim("float"), Prim("bool")
ANY, NONE = AnyType(), NoneType()
PRIMITIVES: dict[str, Type] = {"str": STR, "int": INT, "float": FLOAT, "bool": BOOL}


def assignable(src: Type, dst: Type) -> bool:
    """Can a value of type ``src`` be passed where ``dst`` is expected?

    ints widen to float, enum members are strings, anything fits its optional, lists and dicts are
    covariant (values are immutable once produced), records match by structure.
    """
    if src == dst or isinstance(src, AnyType) or isinstance(dst, AnyType):
        return True
    if isinstance(dst, OptionalOf):
        return isinstance(src, NoneType) or assignable(src.inner if isinstance(src, OptionalOf) else src, dst.inner)
    if isinstance(src, Prim) and isinstance(dst, Prim):
        return src.name == "int" and dst.name == "float"
    if isinstance(src, EnumOf):
        if dst == STR:
            return True
        return isinstance(dst, EnumOf) and set(src.values) <= set(dst.values)
    if isinstance(src, ListOf) and isinstance(dst, ListOf):
        return assignable(src.item, dst.item)
    if isinstance(src, DictOf) and isinstance(dst, DictOf):
        return assignable(src.key, dst.key) and assignable(src.value, dst.value)
    if isinstance(src, Record) and isinstance(dst, Record):
        theirs = {f.name: f.type for f in src.fields}
        return all(f.name in theirs and assignable(theirs[f.name], f.type) for f in dst.fields)
    return False


def unify(a: Type, b: Type) -> Type | None:
    """The narrowest type both ``a`` and ``b`` fit in, or None (used for list literals and branches)."""
    if assignable(a, b):
        return b
    if assignable(b, a):
        return a
    if isinstance(a, NoneType):
        return OptionalOf(b)
    if isinstance(b, NoneType):
        return OptionalOf(a)
    if isinstance(a, EnumOf) and isinstance(b, EnumOf):
        return EnumOf(tuple(dict.fromkeys(a.values + b.values)))
    if (isinstance(a, EnumOf) and b == STR) or (isinstance(b, EnumOf) and a == STR):
        return STR
    return None


def element_type(t: Type) -> Type | None:
    """The element type of a list (or of an optional list), else None."""
    if isinstance(t, OptionalOf):
        t = t.inner
    if isinstance(t, ListOf):
        return t.item
    if isinstance(t, AnyType):
        return ANY
    return None


def render(t: Type, expand_records: bool = False) -> str:
    """The ``.dspex`` spelling of a type: records by name, or spelled out field by field (for an LM,
    which has never seen their declarations)."""
    def r(x: Type) -> str:
        return render(x, expand_records)

    if isinstance(t, Prim):
        return t.name
    if isinstance(t, ListOf):
        return f"list[{r(t.item)}]"
    if isinstance(t, DictOf):
        return f"dict[{r(t.key)}, {r(t.value)}]"
    if isinstance(t, OptionalOf):
        return f"{r(t.inner)}?"
    if isinstance(t, EnumOf):
        return "enum(" + ", ".join(_quote(v) for v in t.values) + ")"
    if isinstance(t, Record):
        return "{" + ", ".join(f"{f.name}: {r(f.type)}" for f in t.fields) + "}" if expand_records else t.name
    if isinstance(t, NoneType):
        return "none"
    return "any"


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'


def to_python(t: Type, records: dict[str, Any] | None = None) -> Any:
    """The Python annotation DSPy would use for ``t`` (records map through ``records`` by name)."""
    if isinstance(t, Prim):
        return {"str": str, "int": int, "float": float, "bool": bool}[t.name]
    if isinstance(t, ListOf):
        return list[to_python(t.item, records)]  # type: ignore[misc]
    if isinstance(t, DictOf):
        return dict[to_python(t.key, records), to_python(t.value, records)]  # type: ignore[misc]
    if isinstance(t, OptionalOf):
        return typing.Optional[to_python(t.inner, records)]
    if isinstance(t, EnumOf):
        return typing.Literal[t.values]
    if isinstance(t, Record):
        if records and t.name in records:
            return records[t.name]
        return dict[str, Any]
    return Any


def from_python(annotation: Any) -> Type | None:
    """The DSPex type of a Python annotation, or None when it has no DSPex spelling."""
    if annotation in (str, int, float, bool):
        return PRIMITIVES[annotation.__name__]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and len(args) == 1:
        item = from_python(args[0])
        return ListOf(item) if item else None
    if origin is dict and len(args) == 2:
        key, value = from_python(args[0]), from_python(args[1])
        return DictOf(key, value) if key and value else None
    if origin is typing.Literal and args and all(isinstance(a, str) for a in args):
        return EnumOf(tuple(args))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType")) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            inner = from_python(rest[0])
            return OptionalOf(inner) if inner else None
    return None
