"""The modules a step can run (SPEC §3.9) and the options steps take: one table the checker,
the engines and the decorators all read."""
from __future__ import annotations

from dataclasses import dataclass

from dspex.ir.types import BOOL, FLOAT, INT, STR, DictOf, EnumOf, Type

__all__ = ["ModuleSpec", "MODULES", "ALIASES", "OPTION_TYPES", "COMMON_OPTIONS", "CALL_OPTIONS", "ENGINES",
           "canonical_module", "DURATION", "LM_REF", "TOOL_REFS"]

ENGINES = ("auto", "native", "dspy")

# Option types that are not value types: a duration literal, an lm name, a list of tool names.
DURATION, LM_REF, TOOL_REFS = "duration", "lm", "tools"

OPTION_TYPES: dict[str, Type | str] = {
    "lm": LM_REF,
    "temperature": FLOAT,
    "max_tokens": INT,
    "retries": INT,
    "timeout": DURATION,
    "cache": BOOL,
    "engine": EnumOf(ENGINES),
    "demos": INT,
    "tools": TOOL_REFS,
    "max_iters": INT,
    "n": INT,
    "threshold": FLOAT,
    "on_error": EnumOf(("fail", "skip", "none")),
    "stream": BOOL,
}
COMMON_OPTIONS = frozenset(
    {"lm", "temperature", "max_tokens", "retries", "timeout", "cache", "engine", "demos", "on_error", "stream"})
CALL_OPTIONS = frozenset({"retries", "timeout", "cache", "on_error"})


@dataclass(frozen=True, slots=True)
class ModuleSpec:
    name: str
    extra_outputs: tuple[tuple[str, Type], ...]
    native: bool
    dspy_class: str
    options: frozenset[str]


def _spec(name: str, extra: tuple[tuple[str, Type], ...], native: bool, dspy_class: str,
          more: tuple[str, ...] = ()) -> ModuleSpec:
    return ModuleSpec(name, extra, native, dspy_class, COMMON_OPTIONS | frozenset(more))


MODULES: dict[str, ModuleSpec] = {s.name: s for s in (
    _spec("predict", (), True, "Predict"),
    _spec("chain_of_thought", (("reasoning", STR),), True, "ChainOfThought"),
    _spec("best_of", (), True, "BestOfN", ("n",)),
    _spec("react", (("trajectory", DictOf(STR, STR)),), False, "ReAct", ("tools", "max_iters")),
    _spec("program_of_thought", (), False, "ProgramOfThought", ("max_iters",)),
    _spec("multi_chain_comparison", (), False, "MultiChainComparison", ("n",)),
    _spec("refine", (), False, "Refine", ("n", "threshold")),
)}
ALIASES = {"cot": "chain_of_thought"}


def canonical_module(name: str) -> str:
    """The module's canonical name (``cot`` is ``chain_of_thought``)."""
    return ALIASES.get(name, name)
