"""Type expressions of the syntax tree resolved to IR types, with diagnostics.

A type that an error made unknowable resolves to ``ANY``, which fits everywhere, so one mistake is
reported once instead of again at every use of the value.
"""
from __future__ import annotations

from typing import Callable, Iterable

from dspex.ir.types import ANY, PRIMITIVES, AnyType, DictOf, EnumOf, ListOf, OptionalOf, Prim, Type, render
from dspex.lang.ast import Lit, TypeEnum, TypeExpr, TypeName, TypeOptional
from dspex.lang.diagnostics import Reporter, did_you_mean

__all__ = ["resolve_type", "BUILTIN_TYPE_NAMES", "Lookup"]

Lookup = Callable[[str], Type | str | None]
"""A declared name's type, its kind (``"signature"``, ``"var"``, ...) when it is not a type, or None."""

# name -> (type arguments, what it needs in words, how it is written)
_GENERICS: dict[str, tuple[int, str, str]] = {
    "list": (1, "an item type", "list[T]"),
    "List": (1, "an item type", "List[T]"),
    "dict": (2, "key and value types", "dict[K, V]"),
    "Dict": (2, "key and value types", "Dict[K, V]"),
    "Optional": (1, "a type", "Optional[T]"),
}
BUILTIN_TYPE_NAMES: tuple[str, ...] = (*PRIMITIVES, *_GENERICS, "Literal")
"""The type names every program knows; a declaration cannot redefine them."""

# Python types a DSPy user may reach for that DSPex has no spelling of (a declared type may still use the name).
_UNSUPPORTED = frozenset({"Any", "Union", "tuple", "Tuple", "set", "Set", "frozenset", "FrozenSet", "bytes",
                          "complex", "object", "None", "NoneType"})
_SUPPORTED = "DSPex types are str, int, float, bool, list[T], dict[K, V], T?, enums and declared types"


def resolve_type(t: TypeExpr | None, lookup: Lookup, type_names: Iterable[str], rep: Reporter) -> Type:
    """The IR type ``t`` denotes (``str`` when there is no annotation), reporting every problem to ``rep``.

    ``type_names`` are the declared type names in scope, offered as did-you-mean suggestions.
    """
    return _Resolver(lookup, type_names, rep).resolve(t)


class _Resolver:
    def __init__(self, lookup: Lookup, type_names: Iterable[str], rep: Reporter):
        self.lookup, self.type_names, self.rep = lookup, tuple(type_names), rep

    def resolve(self, t: TypeExpr | None) -> Type:
        if t is None:
            return PRIMITIVES["str"]
        if isinstance(t, TypeOptional):
            return _optional(self.resolve(t.inner))
        if isinstance(t, TypeEnum):
            return self.enum(t)
        if isinstance(t, Lit):  # a string where a type belongs: only Literal[...] takes strings
            self.rep.error("E201", t.span, f"expected a type, found the string {t.raw}",
                           "only Literal[...] and enum(...) take strings")
            return ANY
        return self.named(t)

    def enum(self, t: TypeEnum) -> Type:
        ok = bool(t.values)
        if not ok:
            self.rep.error("E201", t.span, f"{t.spelling} needs at least one value")
        seen: set[str] = set()
        for lit in t.values:
            problem = None
            if not isinstance(lit, Lit):  # Literal[int]: a type where a string belongs
                self.rep.error("E201", lit.span, f"{t.spelling} values must be strings")
                ok = False
                continue
            if lit.kind != "str":
                problem = f"{t.spelling} values must be strings, found {lit.raw or repr(lit.value)}"
            elif lit.value == "":
                problem = f"{t.spelling} values must not be empty"
            elif lit.value in seen:
                problem = f"duplicate value '{lit.value}' in {t.spelling}"
            else:
                seen.add(lit.value)
            if problem:
                ok = False
                self.rep.error("E201", lit.span, problem)
        return EnumOf(tuple(lit.value for lit in t.values)) if ok else ANY

    def named(self, t: TypeName) -> Type:
        name = t.name.text
        args = [self.resolve(a) for a in t.args]  # resolved even when unusable, to report their own errors
        if name in _GENERICS:
            return self.generic(t, args)
        if name == "Literal":
            self.rep.error("E201", t.span, 'Literal needs string values: Literal["a", "b"]')
            return ANY
        found = PRIMITIVES.get(name) or self.lookup(name)
        if isinstance(found, Type):
            if t.bracketed:
                self.rep.error("E201", t.span, f"type '{name}' takes no type arguments")
                return ANY
            return found
        if isinstance(found, str):
            article = "an" if found[0] in "aeiou" or found == "lm" else "a"
            self.rep.error("E103", t.name.span, f"'{name}' is {article} {found}, not a type")
        elif name in _UNSUPPORTED:
            self.rep.error("E201", t.name.span, f"type '{name}' is not supported", _SUPPORTED)
        else:
            self.rep.error("E101", t.name.span, f"undefined type '{name}'",
                           did_you_mean(name, (*BUILTIN_TYPE_NAMES, *self.type_names)))
        return ANY

    def generic(self, t: TypeName, args: list[Type]) -> Type:
        arity, needs, usage = _GENERICS[t.name.text]
        if not args:
            self.rep.error("E201", t.span, f"{t.name.text} needs {needs}: {usage}")
            return ANY
        if len(args) != arity:
            plural = "s" if arity > 1 else ""
            self.rep.error("E201", t.span,
                           f"{t.name.text} takes {arity} type argument{plural} ({usage}), got {len(args)}")
            return ANY
        if arity == 1:
            return ListOf(args[0]) if t.name.text.lower() == "list" else _optional(args[0])
        key, value = args
        if not isinstance(key, (Prim, EnumOf, AnyType)):
            self.rep.error("E201", t.args[0].span,
                           f"dict keys must be str, int, float, bool or an enum, not {render(key)}")
            key = ANY
        return DictOf(key, value)


def _optional(inner: Type) -> Type:
    """``T?``; optional twice is optional once, and an unknown type stays unknown."""
    return inner if isinstance(inner, (OptionalOf, AnyType)) else OptionalOf(inner)
