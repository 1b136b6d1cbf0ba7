"""The syntax tree of a ``.dspex`` file: what the parser builds and the checker, lowering and
formatter read. Every node carries the ``Span`` of the source it came from."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

__all__ = [
    "Span", "Name", "Lit", "TypeName", "TypeEnum", "TypeOptional", "TypeExpr",
    "NameRef", "AttrExpr", "ListLit", "CompareExpr", "BoolExpr", "NotExpr", "CallExpr", "Expr",
    "Arg", "FieldDecl", "Import", "TypeDecl", "SignatureDecl", "LMDecl", "VarDecl", "RangeDomain",
    "ToolDecl", "PipelineDecl", "Step", "MapStep", "Bind", "If", "Stmt", "Decl", "Module",
]


@dataclass(frozen=True, slots=True)
class Span:
    """1-based line and column of the first character; ``end_col`` is one past the last."""

    line: int
    col: int
    end_line: int
    end_col: int

    def to(self, other: "Span") -> "Span":
        return Span(self.line, self.col, other.end_line, other.end_col)


@dataclass(frozen=True, slots=True)
class Name:
    text: str
    span: Span


@dataclass(frozen=True, slots=True)
class Lit:
    """A decoded literal; ``kind`` is one of str int float bool none duration list."""

    value: Any
    kind: str
    span: Span
    raw: str = ""


# -- types ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TypeName:
    """``str``, ``Sentiment``, ``list[T]``, ``dict[str, T]``, ``Optional[T]`` (DSPy spelling)."""

    name: Name
    args: tuple["TypeExpr", ...]
    span: Span
    bracketed: bool = False


@dataclass(frozen=True, slots=True)
class TypeEnum:
    """``enum("a", "b")`` or ``Literal["a", "b"]``."""

    values: tuple[Lit, ...]
    span: Span
    spelling: str = "enum"


@dataclass(frozen=True, slots=True)
class TypeOptional:
    inner: "TypeExpr"
    span: Span


TypeExpr = Union[TypeName, TypeEnum, TypeOptional]


# -- expressions -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class NameRef:
    name: Name
    span: Span


@dataclass(frozen=True, slots=True)
class AttrExpr:
    base: "Expr"
    name: Name
    span: Span


@dataclass(frozen=True, slots=True)
class ListLit:
    items: tuple["Expr", ...]
    span: Span


@dataclass(frozen=True, slots=True)
class CompareExpr:
    ops: tuple[str, ...]
    operands: tuple["Expr", ...]
    span: Span


@dataclass(frozen=True, slots=True)
class BoolExpr:
    op: str
    args: tuple["Expr", ...]
    span: Span


@dataclass(frozen=True, slots=True)
class NotExpr:
    arg: "Expr"
    span: Span


@dataclass(frozen=True, slots=True)
class CallExpr:
    fn: Name
    args: tuple["Expr", ...]
    span: Span


Expr = Union[Lit, NameRef, AttrExpr, ListLit, CompareExpr, BoolExpr, NotExpr, CallExpr]


# -- declarations ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Arg:
    """``name = value`` in a call, step or ``with``; ``name`` is None for a positional argument."""

    name: Name | None
    value: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class FieldDecl:
    """A signature field (``role`` in/out), record field, tool parameter or pipeline input/output."""

    role: str | None
    name: Name
    type: TypeExpr | None
    default: Expr | None
    desc: Lit | None
    where: Expr | None
    span: Span


@dataclass(frozen=True, slots=True)
class Import:
    """``import "x.dspex"`` (``names`` None) or ``from "x.dspex" import A, B as C``."""

    path: Lit
    names: tuple[tuple[Name, Name | None], ...] | None
    span: Span


@dataclass(frozen=True, slots=True)
class TypeDecl:
    """``type X = T`` (``type`` set) or ``type X { fields }`` (``fields`` set)."""

    name: Name
    type: TypeExpr | None
    fields: tuple[FieldDecl, ...] | None
    span: Span


@dataclass(frozen=True, slots=True)
class SignatureDecl:
    """The block form (``doc`` and ``fields``) or the DSPy string form (``string``)."""

    name: Name
    doc: Lit | None
    fields: tuple[FieldDecl, ...]
    string: Lit | None
    span: Span


@dataclass(frozen=True, slots=True)
class LMDecl:
    name: Name
    provider: Name
    args: tuple[Arg, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class RangeDomain:
    lo: Lit
    hi: Lit
    span: Span


@dataclass(frozen=True, slots=True)
class VarDecl:
    name: Name
    type: TypeExpr
    default: Expr
    domain: RangeDomain | ListLit | None
    desc: Lit | None
    span: Span


@dataclass(frozen=True, slots=True)
class ToolDecl:
    name: Name
    params: tuple[FieldDecl, ...]
    returns: TypeExpr
    impl: Name
    target: Lit
    span: Span


@dataclass(frozen=True, slots=True)
class Step:
    """``MODULE SIG(args) [.select] [with (options)]``; ``module.text == "call"`` for a tool or pipeline."""

    module: Name
    target: Name
    args: tuple[Arg, ...]
    select: Name | None
    options: tuple[Arg, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class MapStep:
    item: Name
    over: Expr
    step: Step
    span: Span


@dataclass(frozen=True, slots=True)
class Bind:
    name: Name
    value: Union[Expr, Step, MapStep]
    span: Span


@dataclass(frozen=True, slots=True)
class If:
    cond: Expr
    then: tuple["Stmt", ...]
    orelse: tuple["Stmt", ...] | None
    span: Span


Stmt = Union[Bind, If]


@dataclass(frozen=True, slots=True)
class PipelineDecl:
    name: Name
    inputs: tuple[FieldDecl, ...]
    outputs: tuple[FieldDecl, ...]
    body: tuple[Stmt, ...]
    span: Span
    parenthesized_outputs: bool = True


Decl = Union[Import, TypeDecl, SignatureDecl, LMDecl, VarDecl, ToolDecl, PipelineDecl]


@dataclass(frozen=True, slots=True)
class Module:
    """One parsed file."""

    decls: tuple[Decl, ...]
    file: str
