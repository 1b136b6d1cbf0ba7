"""The exceptions DSPex raises: one base with a stable ``code``, one subclass per failure a user handles."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from dspex.lang.diagnostics import Diagnostic

__all__ = ["DSPexError", "CompileError", "ArtifactError", "TraceError", "StepError", "ToolLoadError", "FrameError",
           "WorkerError", "WorkerCrashedError", "WorkerTaskError"]


class DSPexError(Exception):
    """Base of every DSPex error; ``code`` is stable across versions."""

    code = "DSPEX"


class CompileError(DSPexError):
    """The source has errors; ``diagnostics`` holds every one of them (and the warnings)."""

    code = "COMPILE"

    def __init__(self, diagnostics: Sequence["Diagnostic"]):
        self.diagnostics = list(diagnostics)
        errors = [d for d in self.diagnostics if d.severity == "error"]
        super().__init__("\n".join(d.render() for d in errors) or "compilation failed")


class ArtifactError(DSPexError):
    """A ``.dspexc`` file cannot be loaded: ``reason`` is truncated, corrupted, newer-version or not-an-artifact."""

    code = "ARTIFACT"

    def __init__(self, message: str, reason: str = "corrupted"):
        self.reason = reason
        super().__init__(message)


class TraceError(DSPexError):
    """A decorated pipeline did something tracing cannot follow (Python control flow on a traced value)."""

    code = "TRACE"


class StepError(DSPexError):
    """A step failed: names the node, its source line, the step's inputs and the cause (``__cause__`` too)."""

    code = "STEP"

    def __init__(self, node: str, line: int, inputs: dict[str, object], cause: BaseException,
                 file: str = ""):
        self.node, self.line, self.inputs, self.cause, self.file = node, line, inputs, cause, file
        where = f" ({file}:{line})" if file and line else (f" (line {line})" if line else "")
        shown = ", ".join(f"{k}={_short(v)}" for k, v in inputs.items())
        super().__init__(f"step '{node}'{where} failed: {type(cause).__name__}: {cause} [inputs: {shown}]")


class ToolLoadError(DSPexError):
    """A tool's ``python("module:function")`` could not be imported, or is not callable."""

    code = "TOOL_LOAD"


class FrameError(DSPexError):
    """A wire frame cannot be read: ``reason`` is short, oversized, corrupt or foreign (see ``dspex.native``)."""

    code = "FRAME"

    def __init__(self, message: str, reason: str):
        self.reason = reason
        super().__init__(message)


class WorkerError(DSPexError):
    """A worker pool could not serve a request (not started, closed, or no worker came up)."""

    code = "WORKER"


class WorkerCrashedError(WorkerError):
    """A request's worker died every time it ran it. ``cause`` is how the last one ended: ``segfault``,
    ``killed``, ``out of memory``, ``hung`` or ``error``; ``exitcode`` is the process's own."""

    code = "WORKER_CRASHED"

    def __init__(self, message: str, cause: str, exitcode: int | None = None):
        self.cause, self.exitcode = cause, exitcode
        super().__init__(message)


class WorkerTaskError(WorkerError):
    """A request raised inside its worker; ``type`` names the exception there."""

    code = "WORKER_TASK"

    def __init__(self, type_name: str, message: str):
        self.type = type_name
        super().__init__(f"{type_name}: {message}")


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
