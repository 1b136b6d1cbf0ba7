"""DSPex: a compiled language and runtime for LLM programs.

The public API is re-exported here lazily, so ``import dspex`` stays cheap and loading an artifact
never imports the compiler (or Lark).
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "compile_source": "dspex.lang.compile", "compile_file": "dspex.lang.compile",
    "check_source": "dspex.lang.compile", "check_file": "dspex.lang.compile",
    "load": "dspex.ir.artifact",
    "Diagnostic": "dspex.lang.diagnostics",
    "DSPexError": "dspex.errors", "CompileError": "dspex.errors", "ArtifactError": "dspex.errors",
    "TraceError": "dspex.errors", "StepError": "dspex.errors", "ToolLoadError": "dspex.errors",
    "FrameError": "dspex.errors", "WorkerError": "dspex.errors", "WorkerCrashedError": "dspex.errors",
    "WorkerTaskError": "dspex.errors", "CircuitOpenError": "dspex.runtime.resilience",
    "Runtime": "dspex.runtime.runtime", "Session": "dspex.runtime.sessions",
    "Program": "dspex.ir.program", "Signature": "dspex.ir.program", "Field": "dspex.ir.program",
    "Pipeline": "dspex.ir.program", "Graph": "dspex.ir.graph", "Node": "dspex.ir.graph",
    "signature": "dspex.lang.decorators", "pipeline": "dspex.lang.decorators", "var": "dspex.lang.decorators",
    "In": "dspex.lang.decorators", "Out": "dspex.lang.decorators",
    "predict": "dspex.lang.decorators", "chain_of_thought": "dspex.lang.decorators", "cot": "dspex.lang.decorators",
    "best_of": "dspex.lang.decorators", "react": "dspex.lang.decorators",
    "program_of_thought": "dspex.lang.decorators", "multi_chain_comparison": "dspex.lang.decorators",
    "refine": "dspex.lang.decorators", "map": "dspex.lang.decorators", "cond": "dspex.lang.decorators",
    "call": "dspex.lang.decorators", "tool": "dspex.lang.decorators",
}

__all__ = ["__version__", "lm", *_EXPORTS]


_SUBPACKAGES = {"lm"}


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return import_module(f"dspex.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dspex' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from dspex.errors import (ArtifactError, CompileError, DSPexError, FrameError, StepError, ToolLoadError,
                              TraceError, WorkerCrashedError, WorkerError, WorkerTaskError)
    from dspex.runtime.resilience import CircuitOpenError
    from dspex.runtime.runtime import Runtime
    from dspex.runtime.sessions import Session
    from dspex.ir.artifact import load
    from dspex.ir.graph import Graph, Node
    from dspex.ir.program import Field, Pipeline, Program, Signature
    from dspex.lang.compile import check_file, check_source, compile_file, compile_source
    from dspex.lang.diagnostics import Diagnostic
