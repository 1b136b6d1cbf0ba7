"""``dspexc build --emit python``: a typed Python module describing a program's data, for code that calls it.

Every record type becomes a ``TypedDict``; every signature and pipeline gets ``<Name>Inputs`` and
``<Name>Outputs`` (inputs with defaults are ``NotRequired``); enum aliases become ``Literal`` aliases and
other named types plain aliases. The module needs only the standard library (Python 3.11+), imports
cleanly and passes ``mypy --strict``. It has no ``from __future__ import annotations`` on purpose:
``TypedDict`` reads ``NotRequired`` from evaluated annotations, so ``__optional_keys__`` stays right.
"""
from __future__ import annotations

import keyword
import re
import unicodedata

from dspex import __version__
from dspex.ir.program import Field, Program
from dspex.ir.types import AnyType, DictOf, EnumOf, ListOf, NoneType, OptionalOf, Prim, Record, Type

__all__ = ["emit_python"]

# Names the generated module itself uses: a declaration named like one of them gets a suffix instead.
_RESERVED = frozenset({"str", "int", "float", "bool", "list", "dict", "None", "Any", "Literal", "NotRequired",
                       "Optional", "TypeAlias", "TypedDict", "__all__"})


def emit_python(program: Program) -> str:
    """The source of the typed module for ``program``."""
    return _Emitter(program).module()


def _identifier(text: str) -> str:
    """A valid Python identifier close to ``text`` (Python compares identifiers after NFKC, so we do too)."""
    name = unicodedata.normalize("NFKC", re.sub(r"\W", "_", text))
    if not name.isidentifier():
        name = re.sub(r"[^0-9A-Za-z_]", "_", name) or "_"
        name = "_" + name if name[0].isdigit() else name
    return name + "_" if keyword.iskeyword(name) else name


def _pascal(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_")) or name


def _one_line(text: str) -> str:
    """``text`` fit for a comment: every control character and line break becomes a space."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def _comment(text: str | None) -> str:
    return f"  # {_one_line(text)}" if text else ""


def _docstring(text: str) -> str:
    """An indented class docstring: triple-quoted when ``text`` allows it verbatim, else ``repr``."""
    plain = all(c.isprintable() or c == "\n" for c in text)
    if plain and '"""' not in text and "\\" not in text and not text.endswith('"'):
        return '    """' + text.replace("\n", "\n    ") + '"""'
    return "    " + repr(text)


def _plain_key(key: str) -> bool:
    """Can ``key`` be written as a ``TypedDict`` class attribute (no keyword, no name mangling, no NFKC change)?"""
    return (key.isidentifier() and not keyword.iskeyword(key) and not key.startswith("__")
            and unicodedata.normalize("NFKC", key) == key)


class _Emitter:
    """Collects the module's definitions in dependency order: a record is written before its first user."""

    def __init__(self, program: Program):
        self.program = program
        self.used: set[str] = set(_RESERVED)
        self.imports: set[str] = {"TypedDict"}
        self.blocks: list[str] = []
        self.exported: list[str] = []
        self.records: list[tuple[Record, str]] = []
        self.enums: list[tuple[EnumOf, str]] = []

    def name(self, wanted: str) -> str:
        base = _identifier(wanted)
        name, n = base, 1
        while name in self.used:
            n += 1
            name = f"{base}_{n}"
        self.used.add(name)
        self.exported.append(name)
        return name

    def annotation(self, t: Type) -> str:
        if isinstance(t, Prim):
            return t.name
        if isinstance(t, ListOf):
            return f"list[{self.annotation(t.item)}]"
        if isinstance(t, DictOf):
            return f"dict[{self.annotation(t.key)}, {self.annotation(t.value)}]"
        if isinstance(t, OptionalOf):
            self.imports.add("Optional")
            return f"Optional[{self.annotation(t.inner)}]"
        if isinstance(t, EnumOf):
            return next((name for enum, name in self.enums if enum == t), None) or self.literal(t)
        if isinstance(t, Record):
            return self.record(t)
        if isinstance(t, NoneType):
            return "None"
        assert isinstance(t, AnyType), t
        self.imports.add("Any")
        return "Any"

    def literal(self, t: EnumOf) -> str:
        if not t.values:
            return "str"
        self.imports.add("Literal")
        return "Literal[" + ", ".join(repr(v) for v in t.values) + "]"

    def record(self, t: Record) -> str:
        for seen, name in self.records:
            if seen == t and seen.name == t.name:
                return name
        rows = [(f.name, self.annotation(f.type), f.desc) for f in t.fields]  # nested records first
        name = self.name(t.name)
        self.records.append((t, name))
        self.typed_dict(name, f"The record type {t.name!r}.", rows)
        return name

    def alias(self, wanted: str, annotation: str) -> None:
        self.imports.add("TypeAlias")
        self.blocks.append(f"{self.name(wanted)}: TypeAlias = {annotation}")

    def typed_dict(self, name: str, doc: str, rows: list[tuple[str, str, str | None]]) -> None:
        if all(_plain_key(key) for key, _, _ in rows):
            lines = [f"class {name}(TypedDict):", _docstring(doc)]
            lines += [f"    {key}: {annotation}{_comment(desc)}" for key, annotation, desc in rows]
        else:
            lines = [f"# {_one_line(doc)}", f"{name} = TypedDict({name!r}, {{"]
            lines += [f"    {key!r}: {annotation},{_comment(desc)}" for key, annotation, desc in rows]
            lines += ["})"]
        self.blocks.append("\n".join(lines))

    def fields(self, name: str, doc: str, fields: tuple[Field, ...], inputs: bool) -> None:
        rows = []
        for f in fields:
            annotation = self.annotation(f.type)
            if inputs and f.has_default:
                self.imports.add("NotRequired")
                annotation = f"NotRequired[{annotation}]"
            rows.append((f.name, annotation, f.desc))
        self.typed_dict(self.name(name), doc, rows)

    def module(self) -> str:
        p = self.program
        for key, t in p.types.items():  # enum aliases first: every later use of the enum is spelled by name
            if isinstance(t, EnumOf):
                self.alias(key, self.annotation(t))
                if t not in (enum for enum, _ in self.enums):
                    self.enums.append((t, self.exported[-1]))
        for key, t in p.types.items():
            if isinstance(t, Record):
                name = self.record(t)
                if key != t.name:
                    self.alias(key, name)
            elif not isinstance(t, EnumOf):
                self.alias(key, self.annotation(t))
        for sig in p.signatures.values():
            about = f"signature {sig.name!r}" + (f": {sig.instructions}" if sig.instructions else ".")
            self.fields(f"{sig.name}Inputs", f"Inputs of {about}", sig.inputs, inputs=True)
            self.fields(f"{sig.name}Outputs", f"Outputs of {about}", sig.outputs, inputs=False)
        for pipe in p.pipelines.values():
            self.fields(f"{_pascal(pipe.name)}Inputs", f"Inputs of pipeline {pipe.name!r}.", pipe.inputs, inputs=True)
            self.fields(f"{_pascal(pipe.name)}Outputs", f"Outputs of pipeline {pipe.name!r}.", pipe.outputs,
                        inputs=False)
        sha = re.sub(r"[^0-9A-Za-z]", "", p.source_sha256) or "unknown"
        head = [
            f'"""Typed inputs and outputs of a DSPex program: source sha256 {sha}.',
            "",
            f"Generated by dspexc {__version__} (``dspexc build --emit python``); do not edit.",
            '"""',
            "from typing import " + ", ".join(sorted(self.imports)),
            "",
            "__all__: list[str] = [",
            *(f'    "{name}",' for name in self.exported),
            "]",
        ]
        return "\n".join(head) + "".join(f"\n\n\n{block}" for block in self.blocks) + "\n"
