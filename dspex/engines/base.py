"""What an engine is given and what it returns: the contract between the executor and the
``native`` and ``dspy`` engines. The executor resolves everything (inputs, option values, var values,
the lm, the program's tools) before it hands a step over, so engines never read the graph.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

from dspex.errors import DSPexError
from dspex.ir.program import Signature, ToolDecl
from dspex.lm.base import LM

__all__ = ["StepCall", "StepResult", "Engine", "ValidationError", "DEFAULT_RETRIES"]

DEFAULT_RETRIES = 2


@dataclass(frozen=True)
class StepCall:
    """One step to run: ``module`` over ``signature`` with these input values."""

    signature: Signature
    module: str  # canonical: predict, chain_of_thought, best_of, react, ...
    inputs: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)  # temperature, max_tokens, retries, timeout (s), n, ...
    var_values: dict[str, Any] = field(default_factory=dict)  # for {{var}} in the instructions
    tools: dict[str, Callable[..., Any]] = field(default_factory=dict)  # react's tools, by name
    tool_decls: dict[str, ToolDecl] = field(default_factory=dict)  # the same tools' declarations (for workers)
    session: str | None = None  # the session the step runs in, if any (its worker keeps the session's modules)

    @property
    def retries(self) -> int:
        return int(self.options.get("retries", DEFAULT_RETRIES))


@dataclass
class StepResult:
    """The validated outputs (signature outputs plus the module's extras, e.g. ``reasoning``) and what it took."""

    outputs: dict[str, Any]
    lm_calls: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    engine: str = ""


class ValidationError(DSPexError):
    """An output did not fit its field: names the field path, the value and the rule it broke."""

    code = "VALIDATION"

    def __init__(self, path: str, value: Any, rule: str):
        self.path, self.value, self.rule = path, value, rule
        super().__init__(f"{path}: {rule}, got {value!r}")


class Engine(ABC):
    name: str

    @abstractmethod
    def supports(self, module: str) -> bool: ...

    @abstractmethod
    async def run(self, call: StepCall, lm: LM) -> StepResult:
        """Run the step; raises ``ValidationError`` after ``call.retries`` failed re-asks, ``LMError`` on LM failure."""
