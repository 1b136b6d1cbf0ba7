"""The compiler driver: source -> parse -> check -> lower -> ``Program``, with imports across files.

``Compilation`` runs the phases lazily (each a cached property), so ``check`` stops after the
diagnostics and ``compile`` goes on to the IR. Imported files are compiled first, once each, and an
import cycle or an unreadable file is E105 at the import.
"""
from __future__ import annotations

import hashlib
from dataclasses import replace
from functools import cached_property
from pathlib import Path

from dspex.errors import CompileError
from dspex.ir.program import Program
from dspex.lang import ast
from dspex.lang.check import Declarations, Imported
from dspex.lang.diagnostics import Diagnostic, Reporter, did_you_mean
from dspex.lang.parse import ParseResult, gc_paused, parse

__all__ = ["Compilation", "compile_source", "compile_file", "check_source", "check_file"]

_KIND_TABLES = {"type": "types", "signature": "signatures", "lm": "lms", "var": "vars", "tool": "tools",
                "pipeline": "pipelines"}


class Compilation:
    """One file's compilation. ``importing`` holds the files above it in the import chain (cycle check)."""

    def __init__(self, source: str, filename: str = "<string>", importing: tuple[str, ...] = (),
                 cache: dict[str, "Compilation"] | None = None):
        self.source = source
        self.filename = filename
        self.importing = importing
        self.cache = cache if cache is not None else {}
        self.rep = Reporter(filename, source)

    @cached_property
    def parsed(self) -> ParseResult:
        return parse(self.source, self.filename, self.rep)

    @cached_property
    def declarations(self) -> Declarations:
        imported = self._imports(self.parsed.module)
        return Declarations(self.parsed.module, self.rep, imported, self.parsed.broken_names)

    @cached_property
    def program(self) -> Program:
        """The lowered program (check ``has_errors`` first: a program with errors is incomplete)."""
        with gc_paused():  # one pause over every phase: see gc_paused
            program = self.declarations.lower()
        sha = hashlib.sha256(self.source.encode("utf-8")).hexdigest()
        return replace(program, source_sha256=sha)

    @property
    def diagnostics(self) -> list[Diagnostic]:
        self.program  # noqa: B018 - runs every phase, which fills the reporter
        return sorted(self.rep.diagnostics, key=lambda d: (d.file != self.filename, d.line, d.col))

    @property
    def has_errors(self) -> bool:
        return any(d.severity == "error" for d in self.diagnostics)

    def _imports(self, module: ast.Module) -> dict[str, Imported]:
        out: dict[str, Imported] = {}
        for imp in module.decls:
            if not isinstance(imp, ast.Import) or imp.path.value is None:
                continue
            child = self._compile_import(imp)
            if child is None:
                continue
            program = child.program
            available = {name: (kind, obj) for kind, table in _KIND_TABLES.items()
                         for name, obj in getattr(program, table).items()}
            if imp.names is None:
                pairs = [(name, name, imp.path.span) for name in available]
            else:
                pairs = [(n.text, (alias or n).text, n.span) for n, alias in imp.names]
            for name, local, span in pairs:
                if name not in available:
                    self.rep.error("E101", span, f"'{imp.path.value}' declares no '{name}'",
                                   did_you_mean(name, available))
                elif local in out and out[local][1] is not available[name][1]:
                    self.rep.error("E102", span, f"'{local}' is imported twice")
                else:
                    out[local] = available[name]
        return out

    def _compile_import(self, imp: ast.Import) -> "Compilation | None":
        base = Path(self.filename).parent if self.filename != "<string>" else Path.cwd()
        try:
            path = (base / str(imp.path.value)).resolve()
        except (OSError, ValueError) as exc:  # an embedded NUL, a path too long for the OS
            self.rep.error("E105", imp.path.span, f"cannot read import '{imp.path.value}': {exc}")
            return None
        key = str(path)
        chain = self.importing + (str(Path(self.filename).resolve()),)
        if key in chain:
            cycle = " -> ".join(Path(p).name for p in chain[chain.index(key):] + (key,))
            self.rep.error("E105", imp.path.span, f"import cycle: {cycle}")
            return None
        if key not in self.cache:
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                self.rep.error("E105", imp.path.span, f"cannot read import '{imp.path.value}': "
                               f"{getattr(exc, 'strerror', None) or exc}")
                return None
            self.cache[key] = Compilation(text, str(path), chain, self.cache)
        child = self.cache[key]
        if child.has_errors:
            self.rep.error("E105", imp.path.span, f"imported file '{imp.path.value}' has errors")
            self.rep.diagnostics.extend(d for d in child.diagnostics if d not in self.rep.diagnostics)
        return child


def check_source(text: str, filename: str = "<string>") -> list[Diagnostic]:
    """Every diagnostic of ``text``; never raises on bad source."""
    return Compilation(text, filename).diagnostics


def check_file(path: str | Path) -> list[Diagnostic]:
    return Compilation(_read(path), str(path)).diagnostics


def compile_source(text: str, filename: str = "<string>") -> Program:
    """The compiled ``Program``; raises ``CompileError`` (with every diagnostic) when the source has errors."""
    return _finish(Compilation(text, filename))


def compile_file(path: str | Path) -> Program:
    return _finish(Compilation(_read(path), str(path)))


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CompileError([Diagnostic(str(path), 1, 1, 1, 1, "error", "E105", f"cannot read {path}: {exc}")]) from exc


def _finish(c: Compilation) -> Program:
    if c.has_errors:
        raise CompileError(c.diagnostics)
    return c.program

