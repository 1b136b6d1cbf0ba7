"""The execution graph of a pipeline: nodes wired by expressions, in dependency order.

A graph is flat. Nodes inside an ``if`` carry a ``guard`` (the branch node and the side they run on);
a name bound on both sides becomes a ``merge`` node that takes the value of the side that ran. A
``map`` node holds the one step it runs per element. Node ids are the names bound in source (made
unique with the branch they live in), so errors and ``dspexc graph`` speak the user's words; the
fingerprints ignore ids and look only at structure.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dspex.ir.expr import Expr, Lit
from dspex.ir.types import Type

__all__ = ["Node", "Graph", "NODE_KINDS"]

NODE_KINDS = ("input", "step", "map", "project", "expr", "branch", "merge", "output")


@dataclass(frozen=True, slots=True)
class Node:
    """One node of a graph. Which fields are set depends on ``kind``:

    - ``input``: ``id`` is the pipeline input's name.
    - ``step``: ``module`` (``predict``... or ``call``), ``target`` (signature, tool or pipeline name) and
      ``target_kind``; ``args`` the step's inputs, ``options`` its ``with (...)``; ``select`` a projected field.
    - ``map``: as a step, plus ``over`` (the list) and ``item`` (the element's source name; ``Item`` reads it).
    - ``expr``: ``args == (("value", e),)``; ``project`` the same when ``e`` reads a field (``c.label``).
      ``output``: the same, ``id`` is the output's name.
    - ``branch``: ``args == (("cond", e),)``.   ``merge``: ``branch`` and ``args == (("then", e), ("else", e))``.
    """

    id: str
    kind: str
    type: Type
    module: str | None = None
    target: str | None = None
    target_kind: str | None = None
    args: tuple[tuple[str, Expr], ...] = ()
    options: tuple[tuple[str, Expr], ...] = ()
    select: str | None = None
    over: Expr | None = None
    item: str | None = None
    branch: str | None = None
    guard: tuple[tuple[str, bool], ...] = ()
    deps: tuple[str, ...] = ()
    vars: tuple[str, ...] = ()
    fingerprint: str = ""
    file: str = field(default="", compare=False)
    line: int = field(default=0, compare=False)
    col: int = field(default=0, compare=False)

    @property
    def engine(self) -> str:
        """The engine the step asked for (``auto`` unless ``engine = "..."`` was given as a literal)."""
        for name, value in self.options:
            if name == "engine" and isinstance(value, Lit):
                return str(value.value)
        return "auto" if self.kind in ("step", "map") and self.module != "call" else ""

    def option(self, name: str) -> Expr | None:
        for key, value in self.options:
            if key == name:
                return value
        return None

    def arg(self, name: str) -> Expr | None:
        for key, value in self.args:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class Graph:
    """The nodes of one pipeline in dependency order, with the structural fingerprint of the whole."""

    nodes: tuple[Node, ...]
    fingerprint: str
    _index: dict[str, Node] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index.update((n.id, n) for n in self.nodes)

    def node(self, node_id: str) -> Node:
        return self._index[node_id]

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._index

    def __iter__(self) -> Any:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def inputs(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.kind == "input")

    @property
    def outputs(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.kind == "output")

    def dependents(self, node_id: str) -> set[str]:
        """Every node that reads ``node_id``, directly or not (what a changed value invalidates)."""
        out: set[str] = set()
        frontier = [node_id]
        while frontier:
            current = frontier.pop()
            for n in self.nodes:
                if n.id not in out and (current in n.deps or any(g == current for g, _ in n.guard)):
                    out.add(n.id)
                    frontier.append(n.id)
        return out

    def var_dependents(self, var: str) -> set[str]:
        """The nodes a change of ``var`` invalidates: those reading it, and their descendants."""
        direct = {n.id for n in self.nodes if var in n.vars}
        return direct.union(*(self.dependents(d) for d in direct)) if direct else set()
