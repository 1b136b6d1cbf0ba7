"""Diagnostics: what the compiler says about a source, in SPEC §4's format, and the did-you-mean helper."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Iterable

from dspex.lang.ast import Span

__all__ = ["Diagnostic", "Reporter", "did_you_mean", "render_all"]


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One error or warning, located by 1-based line and column (``end_col`` one past the span)."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int
    severity: str  # "error" | "warning"
    code: str
    message: str
    help: str | None = None
    source_line: str | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "col": self.col, "end_line": self.end_line,
                "end_col": self.end_col, "severity": self.severity, "code": self.code, "message": self.message}

    def render(self) -> str:
        """``file:line:col: severity[CODE]: message``, the source line with a caret under the span, and help."""
        out = [f"{self.file}:{self.line}:{self.col}: {self.severity}[{self.code}]: {self.message}"]
        if self.source_line is not None:
            gutter = " " * (len(str(self.line)) + 4)
            text = self.source_line.rstrip("\r\n").expandtabs(1)
            width = (self.end_col - self.col) if self.end_line == self.line else len(text) - self.col + 1
            out.append(f"   {self.line} | {text}")
            out.append(f"{gutter}| " + " " * (self.col - 1) + "^" * max(1, width))
        if self.help:
            out.append(f"   help: {self.help}")
        return "\n".join(out)


def render_all(diagnostics: Iterable[Diagnostic]) -> str:
    return "\n".join(d.render() for d in diagnostics)


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """``did you mean 'x'?`` for the closest candidate, or None when nothing is close."""
    pool = sorted(set(candidates))
    match = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
    if not match:
        lowered = {c.lower(): c for c in pool}
        if name.lower() in lowered:
            match = [lowered[name.lower()]]
    return f"did you mean '{match[0]}'?" if match else None


class Reporter:
    """Collects the diagnostics of one file, attaching the source line each one points at."""

    def __init__(self, file: str, source: str):
        self.file = file
        self.lines = source.splitlines()
        self.diagnostics: list[Diagnostic] = []

    def error(self, code: str, span: Span, message: str, help: str | None = None) -> None:
        self._add("error", code, span, message, help)

    def warning(self, code: str, span: Span, message: str, help: str | None = None) -> None:
        self._add("warning", code, span, message, help)

    def _add(self, severity: str, code: str, span: Span, message: str, help: str | None) -> None:
        line = self.lines[span.line - 1] if 0 < span.line <= len(self.lines) else None
        self.diagnostics.append(Diagnostic(self.file, span.line, span.col, span.end_line, span.end_col, severity,
                                           code, message, help, line))

    @property
    def has_errors(self) -> bool:
        return any(d.severity == "error" for d in self.diagnostics)
