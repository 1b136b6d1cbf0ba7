"""The ``dspexc`` command (SPEC §7): ``check``, ``build``, ``graph``, ``fmt``, ``run`` and ``version``.

Exit codes are the contract: 0 ok, 1 the input has errors (or an artifact is unsound), 2 usage errors
(click's own, a missing input file, an unknown pipeline name). Bad input never shows a traceback: a
``CompileError`` prints its diagnostics, any other DSPex or OS error one ``error: ...`` line. Diagnostics of
``check`` go to stdout (they are its result); elsewhere stdout carries only the result and diagnostics go
to stderr. Colour is used only on a terminal, so scripts and tests read plain text. The compiler (and
Lark) is imported only by the commands that compile, so ``graph`` on a ``.dspexc`` artifact never loads it.
"""
from __future__ import annotations

import difflib
import enum
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, Optional, TextIO

import typer

from dspex import __version__
from dspex.errors import CompileError, DSPexError
from dspex.lang.diagnostics import Diagnostic, did_you_mean

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

    from dspex.ir.program import Program

__all__ = ["app", "main"]

app = typer.Typer(name="dspexc", help="The DSPex compiler: check, build, inspect and format .dspex programs.",
                  add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None)

_ARTIFACT_SUFFIX = ".dspexc"


class CheckFormat(str, enum.Enum):
    text = "text"
    json = "json"


class GraphFormat(str, enum.Enum):
    json = "json"
    dot = "dot"
    mermaid = "mermaid"


class Emit(str, enum.Enum):
    python = "python"


InputFiles = Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, readable=True, show_default=False,
                                                  metavar="FILE", help="The .dspex source files.")]


# -- output -----------------------------------------------------------------------------------------
def _echo_diagnostics(diagnostics: Iterable[Diagnostic], err: bool) -> None:
    """Each rendered diagnostic, a blank line between them; coloured when the stream is a terminal."""
    stream = sys.stderr if err else sys.stdout
    for i, d in enumerate(diagnostics):
        if i:
            typer.echo("", err=err)
        if stream.isatty():
            _console(stream).print(_styled(d))
        else:
            typer.echo(d.render(), err=err)


def _console(stream: TextIO) -> Console:
    from rich.console import Console

    return Console(file=stream, highlight=False, soft_wrap=True)


def _styled(d: Diagnostic) -> Text:
    """``d.render()`` with the severity, the caret and the help coloured."""
    from rich.text import Text

    colour = "red" if d.severity == "error" else "yellow"
    text = Text()
    for i, line in enumerate(d.render().split("\n")):
        if i:
            text.append("\n")
        if i == 0:
            head = f"{d.severity}[{d.code}]"
            before, _, after = line.partition(head)
            text.append(before, "bold")
            text.append(head, f"bold {colour}")
            text.append(after, "bold")
        elif i == 2 and d.source_line is not None:
            gutter, _, carets = line.partition("| ")
            text.append(gutter + "| ", "blue")
            text.append(carets, f"bold {colour}")
        elif line.startswith("   help: "):
            text.append(line, "cyan")
        else:
            text.append(line)
    return text


def _summary(diagnostics: list[Diagnostic]) -> str:
    errors = sum(d.severity == "error" for d in diagnostics)
    warnings = len(diagnostics) - errors
    return f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"


def _fail(message: str, code: int = 1) -> NoReturn:
    """Print ``error: message`` to stderr and exit with ``code`` (1: bad input, 2: usage)."""
    if sys.stderr.isatty():
        from rich.text import Text

        _console(sys.stderr).print(Text.assemble(("error:", "bold red"), " " + message))  # not markup: may hold [..]
    else:
        typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def _reporting() -> Iterator[None]:
    """Turn every DSPex and OS error into diagnostics or one ``error:`` line and exit 1; never a traceback."""
    try:
        yield
    except CompileError as exc:
        _echo_diagnostics(exc.diagnostics, err=True)
        typer.echo(_summary(exc.diagnostics), err=True)
        raise typer.Exit(1) from None
    except DSPexError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))


# -- inputs and outputs -----------------------------------------------------------------------------
def _read_source(path: Path) -> str:
    """The file's text; an unreadable one is an E105 diagnostic, like an unreadable import."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CompileError([Diagnostic(str(path), 1, 1, 1, 1, "error", "E105",
                                       f"cannot read {path}: {reason}")]) from None


def _diagnose(path: Path) -> list[Diagnostic]:
    from dspex.lang.compile import check_source

    try:
        return check_source(_read_source(path), str(path))
    except CompileError as exc:
        return exc.diagnostics


def _program(path: Path) -> Program:
    """The program of a ``.dspexc`` artifact or of a source file (its warnings go to stderr)."""
    if path.suffix == _ARTIFACT_SUFFIX:
        from dspex.ir.artifact import load

        return load(path)
    from dspex.lang.compile import Compilation

    compilation = Compilation(_read_source(path), str(path))
    if compilation.has_errors:
        raise CompileError(compilation.diagnostics)
    _echo_diagnostics(compilation.diagnostics, err=True)
    return compilation.program


def _write_text(path: Path, text: str) -> None:
    """Replace ``path`` atomically (keeping its mode), so a failure never leaves a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        if path.exists():
            shutil.copymode(path, tmp)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _diff(path: Path, old: str, new: str) -> str:
    """A unified diff from ``old`` to ``new``, marking a last line without a newline as ``diff`` does."""
    def lines(text: str) -> list[str]:
        out = text.splitlines(keepends=True)
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n\\ No newline at end of file\n"
        return out

    return "".join(difflib.unified_diff(lines(old), lines(new), f"{path}", f"{path} (formatted)"))


def _same_file(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


# -- commands ---------------------------------------------------------------------------------------
def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"dspexc {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_show_version,
                                                help="Print the version and exit.")] = False) -> None:
    """The DSPex compiler: check, build, inspect and format .dspex programs."""


@app.command()
def check(files: InputFiles,
          output_format: Annotated[CheckFormat, typer.Option("--format", "-f",
                                                             help="text or json.")] = CheckFormat.text,
          ) -> None:
    """Report every diagnostic of FILE(s); exit 1 when any is an error."""
    # An imported file also named on the command line would report its diagnostics twice: keep one.
    diagnostics = list(dict.fromkeys(d for path in files for d in _diagnose(path)))
    if output_format is CheckFormat.json:
        typer.echo(json.dumps([d.to_json() for d in diagnostics], indent=2, ensure_ascii=False))
    else:
        _echo_diagnostics(diagnostics, err=False)
        typer.echo(_summary(diagnostics), err=True)
    raise typer.Exit(1 if any(d.severity == "error" for d in diagnostics) else 0)


@app.command()
def build(file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, show_default=False,
                                               metavar="FILE",
                                               help="A .dspex source (or a .dspexc artifact to convert).")],
          output: Annotated[Optional[Path], typer.Option("--output", "-o", dir_okay=False, show_default=False,
                                                         help="Where to write (default: FILE.dspexc, "
                                                              "or FILE.py with --emit python).")] = None,
          emit: Annotated[Optional[Emit], typer.Option("--emit", show_default=False,
                                                       help="python: write a typed Python module instead.")] = None,
          ) -> None:
    """Compile FILE to a .dspexc artifact, or to a typed Python module with --emit python."""
    target = output or file.with_suffix(".py" if emit is Emit.python else _ARTIFACT_SUFFIX)
    if _same_file(target, file):
        _fail(f"refusing to overwrite the input {file}; name another output with -o", 2)
    with _reporting():
        program = _program(file)
        if emit is Emit.python:
            from dspex.lang.emit_python import emit_python

            _write_text(target, emit_python(program))
        else:
            program.save(target)
    typer.echo(f"wrote {target}")


@app.command()
def graph(file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, show_default=False,
                                               metavar="FILE",
                                               help="A .dspex source or a .dspexc artifact.")],
          pipeline: Annotated[Optional[str], typer.Option("--pipeline", "-p", show_default=False,
                                                          help="Only this pipeline (default: all).")] = None,
          output_format: Annotated[GraphFormat, typer.Option("--format", "-f",
                                                             help="json, dot or mermaid.")] = GraphFormat.json,
          ) -> None:
    """Print the execution graph of FILE's pipelines (one JSON object, or a list when there are several)."""
    from dspex.ir.export import graph_dot, graph_json, graph_mermaid

    with _reporting():
        program = _program(file)
    pipelines = program.pipelines
    if pipeline is not None and pipeline not in pipelines:
        hint = did_you_mean(pipeline, pipelines)
        _fail(f"{file} has no pipeline '{pipeline}'" + (f"; {hint}" if hint else ""), 2)
    chosen = [pipelines[pipeline]] if pipeline is not None else list(pipelines.values())
    if not chosen:
        _fail(f"{file} declares no pipeline")
    if output_format is GraphFormat.json:
        data = [graph_json(p) for p in chosen]
        typer.echo(json.dumps(data[0] if len(data) == 1 else data, indent=2, ensure_ascii=False))
    else:
        render = graph_dot if output_format is GraphFormat.dot else graph_mermaid
        typer.echo("\n".join(render(p) for p in chosen), nl=False)


@app.command()
def fmt(files: InputFiles,
        check: Annotated[bool, typer.Option("--check", help="Change nothing; print a diff and exit 1 if a file "
                                                             "is not formatted.")] = False,
        ) -> None:
    """Rewrite FILE(s) in canonical format (in place, atomically)."""
    from dspex.lang.fmt import format_source

    failed = False
    for path in files:
        try:
            with _reporting():
                source = _read_source(path)
                formatted = format_source(source, str(path))
                if formatted == source:
                    continue
                if check:
                    typer.echo(_diff(path, source, formatted), nl=False)
                    failed = True
                else:
                    _write_text(path, formatted)
                    typer.echo(f"formatted {path}")
        except typer.Exit:
            failed = True
    raise typer.Exit(1 if failed else 0)


@app.command()
def run(file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, show_default=False,
                                             metavar="FILE", help="A .dspex source or a .dspexc artifact.")],
        pipeline: Annotated[str, typer.Option("--pipeline", "-p", show_default=False,
                                              help="The pipeline to run.")],
        input_path: Annotated[Optional[str], typer.Option("--input", "-i", show_default=False,
                                                          help="JSONL rows of inputs; - or none: stdin.")] = None,
        output: Annotated[Optional[Path], typer.Option("--output", "-o", show_default=False,
                                                       help="JSONL results (default: stdout).")] = None,
        lm: Annotated[Optional[str], typer.Option("--lm", show_default=False,
                                                  help="LM spec for steps that name none, e.g. local:smollm2 or "
                                                       "openai:MODEL@BASE_URL.")] = None,
        workers: Annotated[Optional[int], typer.Option("--workers", min=1, show_default=False)] = None,
        concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Rows in flight.")] = 16,
        resume: Annotated[bool, typer.Option("--resume", help="Skip rows whose id is already in OUTPUT.")] = False,
        ) -> None:
    """Run PIPELINE of FILE over every input row; one result line per row, in input order."""
    from dspex.runtime.batch import read_rows
    from dspex.runtime.runtime import Runtime

    if resume and output is None:
        _fail("--resume needs --output: the results of the earlier run are read from there", 2)
    with _reporting():
        program = _program(file)
    if pipeline not in program.pipelines:
        hint = did_you_mean(pipeline, program.pipelines)
        _fail(f"{file} has no pipeline '{pipeline}'" + (f"; {hint}" if hint else ""), 2)
    try:
        stream = sys.stdin if input_path in (None, "-") else open(input_path, encoding="utf-8")
        with stream:
            rows = read_rows(stream)
    except (OSError, ValueError) as exc:
        _fail(str(exc), 2)
    sys.path.insert(0, str(file.resolve().parent))  # tools named `module:function` live beside the program
    failed = 0
    results_out, sys.stdout = sys.stdout, sys.stderr  # stray prints of libraries must not mix into the JSONL
    try:
        with _reporting(), Runtime(lm=lm, workers=workers) as rt:
            for result in rt.batch(program.pipelines[pipeline], rows, concurrency=concurrency,
                                   progress=sys.stderr.isatty(), checkpoint=output, resume=resume):
                failed += not result.ok
                if output is None:
                    results_out.write(json.dumps(result.to_json(), ensure_ascii=False) + "\n")
                    results_out.flush()
    finally:
        sys.stdout = results_out
    if output is not None:
        typer.echo(f"wrote {len(rows)} rows to {output} ({failed} failed)", err=True)
    raise typer.Exit(1 if failed else 0)


@app.command()
def stats(since: Annotated[Optional[str], typer.Option(
              "--since", show_default=False, help="Only events since then: 30m, 2h, 1d, 1w or an ISO-8601 time.")] = None,
          format: Annotated[CheckFormat, typer.Option("--format", help="Output format.")] = CheckFormat.text) -> None:
    """Per-pipeline and per-node latency percentiles, error, cache-hit and validation-failure rates and tokens
    from the telemetry under DSPEX_HOME, and the routes the adaptive scheduler has learnt."""
    from dspex.runtime.config import load_config
    from dspex.runtime.scheduler import learned_routes
    from dspex.runtime.stats import stats_command

    with _reporting():
        config = load_config()
        text, code = stats_command(config.home, since, format.value, learned_routes(config))
    typer.echo(text, err=code != 0)
    raise typer.Exit(code)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"dspexc {__version__}")


def main() -> None:
    """Entry point of the ``dspexc`` console script."""
    app(prog_name="dspexc")


if __name__ == "__main__":
    main()
