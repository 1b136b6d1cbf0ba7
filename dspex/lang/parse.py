"""Phase 1: source text -> syntax tree (``ast.Module``) plus syntax diagnostics (E001, E002).

The grammar is an LALR(1) Lark grammar shipped as package data, loaded once. An inline transformer
builds the tree during the parse (no intermediate parse tree: this is the compiler's hot path).
A syntax error never stops the run: the source is re-parsed declaration by declaration, so every
declaration without errors still reaches the checker and every broken one is reported.
"""
from __future__ import annotations

import gc
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lark import Lark, Token, Transformer, Tree, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.lexer import PatternStr

from dspex.lang import ast
from dspex.lang.ast import Span
from dspex.lang.diagnostics import Reporter
from dspex.lang.lalr_driver import FAILED, LalrDriver

__all__ = ["parse", "ParseResult", "DURATION_UNITS", "cleandoc", "decode_string", "grammar_text", "gc_paused"]

_state = threading.local()
_DECL_START = re.compile(r"^(import|from|type|signature|lm|var|tool|pipeline)\b", re.M)
_TERMINAL_WORDS = {
    "NAME": "a name", "STRING": "a string", "NUMBER": "a number", "DURATION": "a duration",
    "BAD_NUMBER": "a number", "MODULE": "a module (predict, chain_of_thought, ...)",
    "$END": "end of file",
}
_MAX_EXPECTED = 6


def _span(tok: Token) -> Span:
    return Span(tok.line, tok.column, tok.end_line, tok.end_column)  # type: ignore[arg-type]


def _name(tok: Token) -> ast.Name:
    return ast.Name(str(tok), _span(tok))


def _error(code: str, span: Span, message: str, help: str | None = None) -> None:
    _state.errors.append((code, span, message, help))


_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}


def decode_string(raw: str, span: Span | None = None) -> str | None:
    """The value of a string token (escapes decoded, triple-quoted text cleaned like ``inspect.cleandoc``).

    Reports E002 and returns None on an invalid escape when called during a parse (``span`` given).
    """
    triple = raw.startswith('"""')
    body = raw[3:-3] if triple else raw[1:-1]
    if "\\" not in body:  # the common case: nothing to decode
        return cleandoc(body) if triple else body
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1] if i + 1 < len(body) else ""
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt == "u" and re.fullmatch(r"[0-9A-Fa-f]{4}", body[i + 2:i + 6]):
            out.append(chr(int(body[i + 2:i + 6], 16)))
            i += 6
        else:
            if span is not None:
                shown = "\\" + (nxt if nxt != "u" else body[i + 1:i + 6])
                _error("E002", span, f"invalid escape '{shown}' in string",
                       "escapes are \\\" \\\\ \\n \\t and \\uXXXX")
            return None
    text = "".join(out)
    return cleandoc(text) if triple else text


def cleandoc(text: str) -> str:
    """``inspect.cleandoc`` made exact and version-independent: dedent, drop trailing spaces, blank edges.

    (Python's own differs between versions on whitespace-only lines; a docstring's value must not.)
    """
    lines = [line.rstrip() for line in text.expandtabs().split("\n")]
    indents = [len(line) - len(line.lstrip()) for line in lines[1:] if line]
    margin = min(indents, default=0)
    lines = [lines[0].lstrip()] + [line[margin:] for line in lines[1:]]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def _number(tok: Token) -> ast.Lit:
    raw = str(tok)
    span = _span(tok)
    if re.fullmatch(r"-?\d+", raw):
        value: Any = int(raw)
        if not -(2**63) <= value < 2**64:
            _error("E002", span, f"integer literal {raw} is out of range")
            return ast.Lit(None, "error", span, raw)
        return ast.Lit(value, "int", span, raw)
    value = float(raw)
    if value in (float("inf"), float("-inf")):
        _error("E002", span, f"number literal {raw} is out of range")
        return ast.Lit(None, "error", span, raw)
    return ast.Lit(value, "float", span, raw)


DURATION_UNITS = {"ms": 1, "s": 1000, "m": 60000}


def _duration(tok: Token) -> ast.Lit:
    from dspex.ir.expr import Duration

    raw = str(tok)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", raw)
    assert m is not None
    return ast.Lit(Duration(round(float(m.group(1)) * DURATION_UNITS[m.group(2)])), "duration", _span(tok), raw)


def _cover(first: Any, last: Any) -> Span:
    return first.span.to(last.span)


def _args(items: list[Any]) -> tuple[Any, ...]:
    return tuple(i for i in items if i is not None)


class _Build(Transformer):  # type: ignore[type-arg]
    """Inline transformer: one callback per grammar rule, building ``ast`` nodes with spans."""

    # -- literals ---------------------------------------------------------------------------------
    def string(self, c: list[Token]) -> ast.Lit:
        span = _span(c[0])
        value = decode_string(str(c[0]), span)
        return ast.Lit(value, "str" if value is not None else "error", span, str(c[0]))

    def number(self, c: list[Token]) -> ast.Lit:
        return _number(c[0])

    def duration(self, c: list[Token]) -> ast.Lit:
        return _duration(c[0])

    def bad_number(self, c: list[Token]) -> ast.Lit:
        span = _span(c[0])
        raw = str(c[0])
        unit = re.sub(r"^-?[\d.eE+-]*?(?=[A-Za-z_])", "", raw)
        _error("E002", span, f"invalid number or duration '{raw}'",
               f"durations are written like 500ms, 30s or 2m, not with '{unit}'")
        return ast.Lit(None, "error", span, raw)

    def true(self, c: list[Token]) -> ast.Lit:
        return ast.Lit(True, "bool", _span(c[0]), "true")

    def false(self, c: list[Token]) -> ast.Lit:
        return ast.Lit(False, "bool", _span(c[0]), "false")

    def none(self, c: list[Token]) -> ast.Lit:
        return ast.Lit(None, "none", _span(c[0]), "none")

    def literal(self, c: list[Any]) -> Any:
        return c[0]

    # -- expressions ------------------------------------------------------------------------------
    def name_ref(self, c: list[Token]) -> ast.NameRef:
        n = _name(c[0])
        return ast.NameRef(n, n.span)

    def attr(self, c: list[Any]) -> ast.AttrExpr:
        n = _name(c[1])
        return ast.AttrExpr(c[0], n, c[0].span.to(n.span))

    def call_expr(self, c: list[Any]) -> ast.CallExpr:
        fn = _name(c[0])
        args = _args(c[1:])
        return ast.CallExpr(fn, args, fn.span.to(args[-1].span) if args else fn.span)

    def list_lit(self, c: list[Any]) -> ast.ListLit:
        return ast.ListLit(_args(c[1:-1]), _span(c[0]).to(_span(c[-1])))

    def compare(self, c: list[Any]) -> ast.CompareExpr:
        operands = tuple(c[0::2])
        ops = tuple(str(op.children[0]) for op in c[1::2])
        return ast.CompareExpr(ops, operands, _cover(operands[0], operands[-1]))

    def or_expr(self, c: list[Any]) -> ast.BoolExpr:
        return ast.BoolExpr("or", tuple(c), _cover(c[0], c[-1]))

    def and_expr(self, c: list[Any]) -> ast.BoolExpr:
        return ast.BoolExpr("and", tuple(c), _cover(c[0], c[-1]))

    def not_expr(self, c: list[Any]) -> ast.NotExpr:
        return ast.NotExpr(c[0], c[0].span)

    # -- types ------------------------------------------------------------------------------------
    def type_name(self, c: list[Token]) -> ast.TypeName:
        n = _name(c[0])
        return ast.TypeName(n, (), n.span)

    def generic_type(self, c: list[Any]) -> ast.TypeName | ast.TypeEnum:
        n = _name(c[0])
        args = tuple(c[1:])
        if n.text == "Literal":
            values = tuple(self.string([a]) if isinstance(a, Token) else a for a in args)
            return ast.TypeEnum(values, n.span.to(values[-1].span), "Literal")
        args = tuple(self.string([a]) if isinstance(a, Token) else a for a in args)
        return ast.TypeName(n, args, n.span.to(args[-1].span), True)

    def enum_type(self, c: list[Any]) -> ast.TypeEnum:
        values = tuple(self.string([t]) for t in c[1:-1] if t is not None)
        return ast.TypeEnum(values, _span(c[0]).to(_span(c[-1])), "enum")

    def optional_type(self, c: list[Any]) -> ast.TypeOptional:
        return ast.TypeOptional(c[0], c[0].span)

    # -- declarations -----------------------------------------------------------------------------
    def import_decl(self, c: list[Token]) -> ast.Import:
        path = self.string(c)
        return ast.Import(path, None, path.span)

    def import_name(self, c: list[Any]) -> tuple[ast.Name, ast.Name | None]:
        return _name(c[0]), (_name(c[1]) if len(c) > 1 else None)

    def from_import(self, c: list[Any]) -> ast.Import:
        path = self.string([c[0]])
        return ast.Import(path, tuple(c[1:]), path.span)

    def type_alias(self, c: list[Any]) -> ast.TypeDecl:
        n = _name(c[0])
        return ast.TypeDecl(n, c[1], None, n.span)

    def record_decl(self, c: list[Any]) -> ast.TypeDecl:
        n = _name(c[0])
        return ast.TypeDecl(n, None, tuple(c[1:]), n.span)

    def field_default(self, c: list[Any]) -> tuple[str, Any]:
        return "default", c[0]

    def field_desc(self, c: list[Token]) -> tuple[str, Any]:
        return "desc", self.string(c)

    def field_where(self, c: list[Any]) -> tuple[str, Any]:
        return "where", c[0]

    def _field(self, role: str | None, name_tok: Token, typ: Any, tail: list[Any]) -> ast.FieldDecl:
        n = _name(name_tok)
        parts = dict(tail)
        return ast.FieldDecl(role, n, typ, parts.get("default"), parts.get("desc"), parts.get("where"), n.span)

    def record_field(self, c: list[Any]) -> ast.FieldDecl:
        return self._field(None, c[0], c[1], c[2:])

    def sig_field(self, c: list[Any]) -> ast.FieldDecl:
        return self._field(str(c[0]), c[1], c[2], c[3:])

    def doc(self, c: list[Token]) -> ast.Lit:
        return self.string(c)

    def signature_block(self, c: list[Any]) -> ast.SignatureDecl:
        n = _name(c[0])
        rest = c[1:]
        doc = rest.pop(0) if rest and isinstance(rest[0], ast.Lit) else None
        return ast.SignatureDecl(n, doc, tuple(rest), None, n.span)

    def signature_string(self, c: list[Token]) -> ast.SignatureDecl:
        n = _name(c[0])
        return ast.SignatureDecl(n, None, (), self.string([c[1]]), n.span)

    def named_arg(self, c: list[Any]) -> ast.Arg:
        n = _name(c[0])
        return ast.Arg(n, c[1], n.span.to(c[1].span))

    def positional_arg(self, c: list[Any]) -> ast.Arg:
        return ast.Arg(None, c[0], c[0].span)

    def lm_decl(self, c: list[Any]) -> ast.LMDecl:
        n = _name(c[0])
        return ast.LMDecl(n, _name(c[1]), _args(c[2:]), n.span)

    def range_domain(self, c: list[Any]) -> ast.RangeDomain:
        return ast.RangeDomain(c[0], c[1], _cover(c[0], c[1]))

    def list_domain(self, c: list[Any]) -> ast.ListLit:
        return c[0]  # type: ignore[no-any-return]

    def var_decl(self, c: list[Any]) -> ast.VarDecl:
        n = _name(c[0])
        domain = next((x for x in c[3:] if isinstance(x, (ast.RangeDomain, ast.ListLit))), None)
        desc = next((x[1] for x in c[3:] if isinstance(x, tuple)), None)
        return ast.VarDecl(n, c[1], c[2], domain, desc, n.span)

    def param(self, c: list[Any]) -> ast.FieldDecl:
        return self._field(None, c[0], c[1], c[2:])

    def out_param(self, c: list[Any]) -> ast.FieldDecl:
        return self._field(None, c[0], c[1], [])

    def tool_decl(self, c: list[Any]) -> ast.TypeDecl | ast.ToolDecl:
        n = _name(c[0])
        params = tuple(p for p in c[1:-3] if p is not None)
        return ast.ToolDecl(n, params, c[-3], _name(c[-2]), self.string([c[-1]]), n.span)

    def paren_outputs(self, c: list[Any]) -> tuple[bool, tuple[ast.FieldDecl, ...]]:
        return True, _args(c)

    def single_output(self, c: list[Any]) -> tuple[bool, tuple[ast.FieldDecl, ...]]:
        return False, (c[0],)

    def pipeline_decl(self, c: list[Any]) -> ast.PipelineDecl:
        n = _name(c[0])
        idx = next(i for i, x in enumerate(c) if isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], bool))
        paren, outputs = c[idx]
        inputs = tuple(p for p in c[1:idx] if p is not None)
        return ast.PipelineDecl(n, inputs, outputs, tuple(c[idx + 1:]), n.span, paren)

    # -- statements -------------------------------------------------------------------------------
    def select(self, c: list[Token]) -> tuple[str, ast.Name]:
        return "select", _name(c[0])

    def with_opts(self, c: list[Any]) -> tuple[str, tuple[ast.Arg, ...]]:
        return "with", _args(c)

    def step(self, c: list[Any]) -> ast.Step:
        module, target = _name(c[0]), _name(c[1])
        args = _args(c[2:])
        return ast.Step(module, target, args, None, (), module.span.to(args[-1].span if args else target.span))

    def step_stmt(self, c: list[Any]) -> ast.Step:
        step: ast.Step = c[0]
        extras = dict(c[1:])
        select = extras.get("select")
        options = extras.get("with", ())
        end = select.span if select else step.span
        return ast.Step(step.module, step.target, step.args, select, options, step.span.to(end))

    def map_stmt(self, c: list[Any]) -> ast.MapStep:
        item = _name(c[0])
        return ast.MapStep(item, c[1], c[2], item.span.to(c[2].span))

    def bind(self, c: list[Any]) -> ast.Bind:
        n = _name(c[0])
        return ast.Bind(n, c[1], n.span)

    def if_stmt(self, c: list[Any]) -> ast.If:
        cond = c[0]
        body = list(c[1:])
        orelse = None
        if body and isinstance(body[-1], tuple) and body[-1] and body[-1][0] == "else":
            orelse = body.pop()[1]
        return ast.If(cond, tuple(body), orelse, cond.span)

    def else_block(self, c: list[Any]) -> tuple[str, tuple[Any, ...]]:
        return "else", tuple(c)

    def else_if(self, c: list[Any]) -> tuple[str, tuple[Any, ...]]:
        return "else", (c[0],)

    def start(self, c: list[Any]) -> list[Any]:
        return c


_parser: Lark | None = None
_driver: LalrDriver | None = None
_lock = threading.Lock()


def _get_parser() -> Lark:
    global _parser, _driver
    with _lock:
        if _parser is None:
            _parser = Lark.open_from_package("dspex.grammar", "dspex.lark", parser="lalr",
                                             transformer=_Build(), maybe_placeholders=True)
            _driver = LalrDriver.build(_parser)
    return _parser


def grammar_text() -> str:
    """The grammar's source (for tools and the fuzzer)."""
    from importlib.resources import files

    return files("dspex.grammar").joinpath("dspex.lark").read_text(encoding="utf-8")


class ParseResult:
    """What parsing one file produced: the tree and the names of declarations lost to syntax errors."""

    def __init__(self, module: ast.Module, broken_names: set[str]):
        self.module = module
        self.broken_names = broken_names


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: building a syntax tree allocates hundreds of thousands of objects
    that all live on, and the collections they would trigger (each scanning every live object) cost about a
    third of a large parse. Nests, and leaves the collector as it found it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse(source: str, file: str, rep: Reporter) -> ParseResult:
    """Parse ``source``; every syntax error goes to ``rep`` and parsing goes on with the next declaration."""
    with gc_paused():
        return _parse(source, file, rep)


def _parse(source: str, file: str, rep: Reporter) -> ParseResult:
    parser = _get_parser()
    decls, ok = _parse_chunk(parser, source, rep)
    if ok:
        return ParseResult(ast.Module(tuple(decls), file), set())
    # Error recovery: parse each top-level declaration on its own, keeping line numbers.
    decls = []
    broken: set[str] = set()
    starts = [m.start() for m in _DECL_START.finditer(source)] or [0]
    if starts[0] != 0:
        starts.insert(0, 0)
    rep.diagnostics = [d for d in rep.diagnostics if d.code not in ("E001", "E002")]
    for begin, end in zip(starts, starts[1:] + [len(source)]):
        chunk = "\n" * source.count("\n", 0, begin) + source[begin:end]
        got, chunk_ok = _parse_chunk(parser, chunk, rep)
        decls.extend(got)
        if not chunk_ok:
            m = re.match(r"\s*\w+\s+(\w+)", source[begin:end])
            if m:
                broken.add(m.group(1))
    return ParseResult(ast.Module(tuple(decls), file), broken)


def _parse_chunk(parser: Lark, text: str, rep: Reporter) -> tuple[list[Any], bool]:
    _state.errors = []
    decls: list[Any] = _driver.parse(text) if _driver is not None else FAILED
    ok = decls is not FAILED
    if not ok:  # Lark itself, for the exact error (the fast loop only knows success)
        _state.errors = []
        try:
            decls = parser.parse(text)  # type: ignore[assignment]  # the transformer's `start` list
            ok = True
        except UnexpectedInput as exc:
            decls = []
            _report_syntax(exc, parser, text, rep)
    for code, span, message, help in _state.errors:
        rep.error(code, span, message, help)
    return decls, ok and not _state.errors


def _words(parser: Lark, expected: set[str]) -> list[str]:
    out = []
    for name in expected:
        if name in _TERMINAL_WORDS:
            out.append(_TERMINAL_WORDS[name])
            continue
        try:
            pattern = parser.get_terminal(name).pattern
        except KeyError:
            out.append(name.lower())
            continue
        out.append(f"'{pattern.value}'" if isinstance(pattern, PatternStr) else name.lower())
    return sorted(set(out), key=lambda w: (not w.startswith("'"), w))


def _expected_text(parser: Lark, expected: set[str]) -> str:
    words = _words(parser, expected)
    if len(words) > _MAX_EXPECTED:
        words = words[:_MAX_EXPECTED - 1] + ["..."]
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


def _report_syntax(exc: UnexpectedInput, parser: Lark, text: str, rep: Reporter) -> None:
    if isinstance(exc, UnexpectedCharacters):
        pos = exc.pos_in_stream or 0
        ch = text[pos] if pos < len(text) else ""
        span = Span(exc.line, exc.column, exc.line, exc.column + 1)
        if ch == '"':
            rep.error("E002", span, "unterminated string", 'close it with " on the same line, or use """ for text '
                      "over several lines")
        else:
            rep.error("E001", span, f"unexpected character {ch!r}")
        return
    if isinstance(exc, UnexpectedEOF):
        lines = text.rstrip().splitlines() or [""]
        line = len(lines)
        col = len(lines[-1]) + 1
        rep.error("E001", Span(line, col, line, col + 1), "unexpected end of file, expected "
                  + _expected_text(parser, set(exc.expected)))
        return
    assert isinstance(exc, UnexpectedToken)
    tok = exc.token
    if tok.type == "$END":
        lines = text.rstrip().splitlines() or [""]
        span = Span(len(lines), len(lines[-1]) + 1, len(lines), len(lines[-1]) + 2)
        rep.error("E001", span, "unexpected end of file, expected " + _expected_text(parser, set(exc.expected)))
        return
    misspelled = _misspelled_module(exc, tok)
    if misspelled is not None:
        name, hint = misspelled
        rep.error("E001", name.span, f"'{name.text}' is not a module", hint)
        return
    rep.error("E001", _span(tok), f"expected {_expected_text(parser, set(exc.expected))}, found '{tok}'")


def _misspelled_module(exc: UnexpectedToken, tok: Token) -> tuple[ast.Name, str | None] | None:
    """``x = predcit Classify(...)`` parses as ``x = predcit`` then a statement ``Classify`` that fails at
    ``(``: name the would-be module instead of the parenthesis."""
    from dspex.ir.modules import ALIASES, MODULES
    from dspex.lang.diagnostics import did_you_mean

    interactive = getattr(exc, "interactive_parser", None)
    if tok.type != "LPAR" or interactive is None:
        return None
    stack = interactive.parser_state.value_stack
    if len(stack) < 2 or not isinstance(stack[-1], Token) or stack[-1].type != "NAME":
        return None
    bind = stack[-2]
    if isinstance(bind, Tree) and bind.children:  # the statements so far, collected by a `_stmt*` rule
        bind = bind.children[-1]
    if not (isinstance(bind, ast.Bind) and isinstance(bind.value, ast.NameRef)):
        return None
    name = bind.value.name
    return name, did_you_mean(name.text, list(MODULES) + list(ALIASES) + ["call"])

