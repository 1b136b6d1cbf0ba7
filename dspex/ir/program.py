"""The checked program: signatures, lms, vars, tools and pipelines, as immutable values.

These objects are what the compiler produces (from ``.dspex`` or decorated Python), what the
artifact stores and what the runtime executes. Mappings inside them are read-only by convention.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from dspex.ir.expr import Expr
from dspex.ir.graph import Graph
from dspex.ir.types import Type

if TYPE_CHECKING:
    import dspy

__all__ = ["Field", "Signature", "LMDecl", "VarDecl", "ToolDecl", "Pipeline", "Program", "Range"]


@dataclass(frozen=True, slots=True)
class Field:
    """An input or output of a signature, a tool parameter, or a pipeline input/output."""

    name: str
    type: Type
    desc: str | None = None
    default: Any = None
    has_default: bool = False
    constraint: Expr | None = None

    @property
    def required(self) -> bool:
        return not self.has_default


@dataclass(frozen=True, slots=True)
class Signature:
    """A typed input -> output contract for an LM. ``instruction_vars`` are the ``{{var}}`` it reads."""

    name: str
    instructions: str
    inputs: tuple[Field, ...]
    outputs: tuple[Field, ...]
    instruction_vars: tuple[str, ...] = ()

    def input(self, name: str) -> Field | None:
        return next((f for f in self.inputs if f.name == name), None)

    def output(self, name: str) -> Field | None:
        return next((f for f in self.outputs if f.name == name), None)

    @property
    def fingerprint(self) -> str:
        from dspex.ir.fingerprint import signature_fingerprint

        return signature_fingerprint(self)

    def to_dspy(self) -> type[dspy.Signature]:
        """A real ``dspy.Signature`` class with the same fields, order, types and instructions."""
        from dspex.interop.dspy_signature import to_dspy

        return to_dspy(self)


@dataclass(frozen=True, slots=True)
class LMDecl:
    """``lm NAME = PROVIDER(args)``; ``members`` are the lms a ``fallback``/``round_robin`` combines."""

    name: str
    provider: str
    args: tuple[tuple[str, Any], ...] = ()
    members: tuple[str, ...] = ()

    def arg(self, name: str, default: Any = None) -> Any:
        return dict(self.args).get(name, default)


@dataclass(frozen=True, slots=True)
class Range:
    """A closed numeric domain ``[lo .. hi]``."""

    lo: float
    hi: float

    def __contains__(self, value: object) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.lo <= value <= self.hi


@dataclass(frozen=True, slots=True)
class VarDecl:
    """A tunable value; ``domain`` is a ``Range``, a tuple of allowed values, or None."""

    name: str
    type: Type
    default: Any
    domain: Range | tuple[Any, ...] | None = None
    desc: str | None = None


@dataclass(frozen=True, slots=True)
class ToolDecl:
    """A typed Python callable, named ``module:function``; never imported by the compiler."""

    name: str
    params: tuple[Field, ...]
    returns: Type
    target: str


@dataclass(frozen=True, slots=True, eq=False)
class Pipeline:
    """A pipeline and everything its graph names, so that it runs on its own."""

    name: str
    inputs: tuple[Field, ...]
    outputs: tuple[Field, ...]
    graph: Graph
    signatures: Mapping[str, Signature] = field(default_factory=dict)
    tools: Mapping[str, ToolDecl] = field(default_factory=dict)
    pipelines: Mapping[str, "Pipeline"] = field(default_factory=dict)
    vars: Mapping[str, VarDecl] = field(default_factory=dict)
    lms: Mapping[str, LMDecl] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return self.graph.fingerprint

    def __call__(self, **inputs: Any) -> dict[str, Any]:
        """Run on the default runtime (configured from ``dspex.toml`` and the environment)."""
        from dspex.runtime.runtime import default_runtime

        return default_runtime().run(self, **inputs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pipeline) and (self.name, self.fingerprint) == (other.name, other.fingerprint)

    def __hash__(self) -> int:
        return hash((self.name, self.fingerprint))


@dataclass(frozen=True, slots=True, eq=False)
class Program:
    """Everything one compilation declared, by name."""

    types: Mapping[str, Type] = field(default_factory=dict)
    signatures: Mapping[str, Signature] = field(default_factory=dict)
    lms: Mapping[str, LMDecl] = field(default_factory=dict)
    vars: Mapping[str, VarDecl] = field(default_factory=dict)
    tools: Mapping[str, ToolDecl] = field(default_factory=dict)
    pipelines: Mapping[str, Pipeline] = field(default_factory=dict)
    source_sha256: str = ""

    def save(self, path: str | Path) -> None:
        """Write the ``.dspexc`` artifact (SPEC §5), atomically."""
        from dspex.ir.artifact import save

        save(self, path)

    @property
    def fingerprint(self) -> str:
        from dspex.ir.fingerprint import program_fingerprint

        return program_fingerprint(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Program) and self.fingerprint == other.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)
