"""The exceptions DSPex raises: one base with a stable ``code``, one subclass per failure a user handles."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from dspex.lang.diagnostics import Diagnostic

__all__ = ["DSPexError", "CompileError", "ArtifactError", "TraceError"]


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
