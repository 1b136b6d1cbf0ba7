"""Canonical formatting of ``.dspex`` source (``dspexc fmt``, SPEC §7).

The formatter prints the syntax tree, so the layout is canonical whatever the input looked like and
parsing the output gives back the same tree. Comments are not in the tree: they are found between the
source tokens and re-attached to the output line covering the token they precede (own-line comments) or
follow (end-of-line comments). Every output line records the source token it starts at, which is all the
attachment needs. Blank lines the author left between fields or statements are kept (at most one).
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

from lark import Lark, Token

from dspex.errors import CompileError
from dspex.lang import ast
from dspex.lang.diagnostics import Reporter
from dspex.lang.parse import decode_string, grammar_text, parse

__all__ = ["format_source", "check_formatted"]

_INDENT = "  "
_COMMENT = re.compile(r"#[^\n]*")
# Expression forms, loosest first: parentheses are printed only where the tree needs them.
_OR, _AND, _NOT, _CMP, _POSTFIX = 1, 2, 3, 4, 5


def format_source(source: str, file: str = "<string>") -> str:
    """The canonical text of ``source``; raises ``CompileError`` when it has syntax errors."""
    rep = Reporter(file, source)
    module = parse(source, file, rep).module
    if rep.has_errors:
        raise CompileError(rep.diagnostics)
    printer = _Printer(source, list(_lexing_parser().parse_interactive(source).iter_parse()))
    for decl in module.decls:
        printer.decl(decl)
    return printer.render()


def check_formatted(source: str, file: str = "<string>") -> bool:
    """Whether ``source`` is already canonical (``dspexc fmt --check``)."""
    return format_source(source, file) == source


@lru_cache(maxsize=1)
def _lexing_parser() -> Lark:
    """A plain parser on the same grammar: its contextual lexer yields exactly the tokens ``parse`` saw."""
    return Lark(grammar_text(), parser="lalr")


@lru_cache(maxsize=1)
def _keyword_start() -> re.Pattern[str]:
    """Names that lex as keywords where a binding's value starts: module names, ``call`` and ``map``."""
    module = _lexing_parser().get_terminal("MODULE").pattern.value
    return re.compile(rf"{module}|(?:call|map)(?![A-Za-z0-9_])")


# -- comments and lines ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Comment:
    text: str
    start: int  # offset in the source
    before: int  # index of the first token after it (the token count at the end of the file)
    own_line: bool  # nothing but blanks before it on its line


def _comments(source: str, spans: list[tuple[int, int]]) -> list[_Comment]:
    """Every ``#`` comment: the gaps between tokens (``spans``) hold only whitespace and comments."""
    out = []
    for i in range(len(spans) + 1):
        lo = spans[i - 1][1] if i else 0
        hi = spans[i][0] if i < len(spans) else len(source)
        for m in _COMMENT.finditer(source, lo, hi):
            line_start = source.rfind("\n", 0, m.start()) + 1
            own = not source[line_start:m.start()].strip()
            out.append(_Comment(m.group().rstrip(), m.start(), i, own))
    return out


@dataclass(slots=True)
class _Line:
    """One output line (several when it holds a multi-line string) and what surrounds it."""

    text: str
    depth: int
    start: int  # index of the source token the line starts at
    opens: bool = False  # ends with "{"
    closing: bool = False  # starts with "}": comments just before it sit inside the block
    decl: int = 0  # on a declaration's first line: 1 one-line declaration, 2 block declaration
    align: str = ""  # neighbouring lines of one kind align their " = "; ``text`` is what follows it
    head: str = ""  # what comes before " = " on aligned lines
    comments: list[tuple[str, bool]] = field(default_factory=list)  # own-line comments before, blank before each
    blank: bool = False  # a blank line before the line itself
    trailing: str = ""


class _Printer:
    """Prints declarations into ``_Line``s, then attaches comments, blank lines and alignment."""

    def __init__(self, source: str, tokens: list[Token]):
        self.source = source
        self.tokens = tokens
        self.spans = [(t.start_pos or 0, t.end_pos or 0) for t in tokens]  # offsets, always set by the lexer
        self.at = {(t.line, t.column): i for i, t in enumerate(tokens)}
        self.match: dict[int, int] = {}
        stack = []
        for i, t in enumerate(tokens):
            if t.type == "LBRACE":
                stack.append(i)
            elif t.type == "RBRACE":
                self.match[stack.pop()] = i
        self.lines: list[_Line] = []

    def _tok(self, span: ast.Span) -> int:
        return self.at[(span.line, span.col)]

    def _next(self, i: int, kind: str) -> int:
        while self.tokens[i].type != kind:
            i += 1
        return i

    def _add(self, text: str, depth: int, start: int, **flags: Any) -> None:
        self.lines.append(_Line(text, depth, start, **flags))

    # -- declarations -------------------------------------------------------------------------------
    def decl(self, d: ast.Decl) -> None:
        if isinstance(d, ast.Import):
            path = _string(d.path, "")
            text = f"import {path}"
            if d.names is not None:
                text = f"from {path} import " + ", ".join(n.text + (f" as {a.text}" if a else "") for n, a in d.names)
            self._add(text, 0, self._tok(d.path.span) - 1, decl=1)
            return
        start, name = self._tok(d.name.span) - 1, d.name.text
        if isinstance(d, ast.TypeDecl):
            if d.type is not None:
                self._add(_type(d.type, ""), 0, start, decl=1, align="type", head=f"type {name}")
            else:
                self._block(f"type {name}", start, lambda: self._fields(d.fields or ()))
        elif isinstance(d, ast.SignatureDecl):
            if d.string is not None:
                self._add(_string(d.string, ""), 0, start, decl=1, align="signature", head=f"signature {name}")
            else:
                self._block(f"signature {name}", start, lambda: self._signature_body(d))
        elif isinstance(d, ast.LMDecl):
            self._add(f"{d.provider.text}({_args(d.args, '')})", 0, start, decl=1, align="lm", head=f"lm {name}")
        elif isinstance(d, ast.VarDecl):
            text = f"var {name}: {_type(d.type, '')} = {_expr(d.default, '')}"
            if isinstance(d.domain, ast.RangeDomain):
                text += f" in [{_lit(d.domain.lo, '')} .. {_lit(d.domain.hi, '')}]"
            elif d.domain is not None:
                text += f" in {_expr(d.domain, '')}"
            if d.desc is not None:
                text += " " + _string(d.desc, "")
            self._add(text, 0, start, decl=1)
        elif isinstance(d, ast.ToolDecl):
            params = ", ".join(_field(p, "") for p in d.params)
            self._add(f"tool {name}({params}) -> {_type(d.returns, '')} = {d.impl.text}({_string(d.target, '')})",
                      0, start, decl=1)
        else:
            outputs = ", ".join(_field(o, "") for o in d.outputs)
            header = f"pipeline {name}({', '.join(_field(p, '') for p in d.inputs)}) -> "
            header += f"({outputs})" if d.parenthesized_outputs else outputs
            self._block(header, start, lambda: self._stmts(d.body, 1))

    def _block(self, header: str, start: int, body: Callable[[], None]) -> None:
        brace = self._next(start, "LBRACE")
        self._add(header + " {", 0, start, opens=True, decl=2)
        body()
        self._add("}", 0, self.match[brace], closing=True)

    def _signature_body(self, d: ast.SignatureDecl) -> None:
        if d.doc is not None:
            self._add(_string(d.doc, _INDENT), 1, self._tok(d.doc.span))
        self._fields(d.fields)

    def _fields(self, fields: tuple[ast.FieldDecl, ...]) -> None:
        for f in fields:
            self._add(_field(f, _INDENT), 1, self._tok(f.name.span) - (1 if f.role else 0))

    # -- statements ---------------------------------------------------------------------------------
    def _stmts(self, body: tuple[ast.Stmt, ...], depth: int) -> None:
        ind = _INDENT * depth
        for s in body:
            if isinstance(s, ast.If):
                self._if(s, depth, self._if_token(s), "")
            elif isinstance(s.value, ast.Step):
                self._add(_step(s.value, ind), depth, self._tok(s.name.span), align="bind", head=s.name.text)
            elif isinstance(s.value, ast.MapStep):
                m = s.value
                text = f"map {m.item.text} in {_expr(m.over, ind)}: {_step(m.step, ind)}"
                self._add(text, depth, self._tok(s.name.span), align="bind", head=s.name.text)
            else:
                text = _expr(s.value, ind)
                if _keyword_start().match(text):  # `x = (predict)`: without parentheses a step would start
                    text = f"({text})"
                self._add(text, depth, self._tok(s.name.span), align="bind", head=s.name.text)

    def _if_token(self, s: ast.If) -> int:
        """The ``if`` keyword: only ``(`` and ``not`` stand between it and the condition's first token."""
        i = self._tok(s.cond.span) - 1
        while self.tokens[i].type in ("LPAR", "NOT"):
            i -= 1
        return i

    def _if(self, s: ast.If, depth: int, start: int, prefix: str) -> None:
        brace = self._next(self._if_token(s), "LBRACE")
        self._add(f"{prefix}if {_expr(s.cond, _INDENT * depth)} {{", depth, start, opens=True, closing=bool(prefix))
        self._stmts(s.then, depth + 1)
        close = self.match[brace]
        if s.orelse is None:
            self._add("}", depth, close, closing=True)
        elif len(s.orelse) == 1 and isinstance(s.orelse[0], ast.If):  # `else { if ... }` reads as `else if`
            self._if(s.orelse[0], depth, close, "} else ")
        else:
            self._add("} else {", depth, close, opens=True, closing=True)
            self._stmts(s.orelse, depth + 1)
            self._add("}", depth, self.match[close + 2], closing=True)

    # -- layout -------------------------------------------------------------------------------------
    def render(self) -> str:
        tail = self._attach(_comments(self.source, self.spans))
        self._structure()
        self._align()
        out: list[str] = []

        def put(text: str, depth: int, blank: bool) -> None:
            if blank and out:
                out.append("")
            out.append(_INDENT * depth + text)

        for line in self.lines:
            for text, blank in line.comments:
                put(text, line.depth + line.closing, blank)
            put(line.text + (f"  {line.trailing}" if line.trailing else ""), line.depth, line.blank)
        for text, blank in tail:
            put(text, 0, blank)
        return "\n".join(out) + "\n" if out else ""

    def _attach(self, comments: list[_Comment]) -> list[tuple[str, bool]]:
        """Give each comment to a line; returns the comments after the last token."""
        spans = sorted(self.spans + [(c.start, c.start + len(c.text)) for c in comments])
        blank_at = {s: self.source.count("\n", end, s) >= 2 for (_, end), (s, _) in zip(spans, spans[1:])}
        starts = [line.start for line in self.lines]
        tail: list[tuple[str, bool]] = []
        inside: dict[int, list[str]] = {}  # comments within a line's tokens, moved above it
        for c in comments:
            if c.own_line and c.before == len(self.tokens):
                tail.append((c.text, blank_at.get(c.start, False)))
                continue
            i = bisect.bisect_right(starts, c.before if c.own_line else c.before - 1) - 1
            line = self.lines[i]
            end = starts[i + 1] if i + 1 < len(starts) else len(self.tokens)
            if not c.own_line and c.before == end:
                line.trailing = c.text
            elif c.before == line.start:
                line.comments.append((c.text, blank_at.get(c.start, False)))
            else:
                inside.setdefault(i, []).append(c.text)
        for i, line in enumerate(self.lines):
            line.blank = blank_at.get(self.spans[line.start][0], False)
            if i in inside:
                line.comments += [(text, line.blank and not k) for k, text in enumerate(inside[i])]
                line.blank = False
        return tail

    def _structure(self) -> None:
        """Blank lines between block declarations, never after ``{`` or before ``}``."""
        previous_block: bool | None = None
        for i, line in enumerate(self.lines):
            if line.closing:
                line.blank = False
            if line.decl:
                block = line.decl == 2
                if previous_block is not None and (previous_block or block):
                    _set_first_blank(line, True)
                previous_block = block
            if i and self.lines[i - 1].opens:
                _set_first_blank(line, False)

    def _align(self) -> None:
        """Neighbouring lines of one kind, not parted by a blank line, align their ``=``."""
        run: list[_Line] = []
        for line in [*self.lines, _Line("", 0, 0)]:
            parted = line.blank or any(blank for _, blank in line.comments)
            if run and line.align == run[-1].align and line.depth == run[-1].depth and not parted:
                run.append(line)
                continue
            width = max((len(r.head) for r in run), default=0)
            for r in run:
                r.text = f"{r.head.ljust(width)} = {r.text}"
            run = [line] if line.align else []


def _set_first_blank(line: _Line, blank: bool) -> None:
    if line.comments:
        line.comments[0] = (line.comments[0][0], blank)
    else:
        line.blank = blank


# -- fragments ---------------------------------------------------------------------------------------
def _string(lit: ast.Lit, ind: str) -> str:
    """The string as written; a multi-line ``\"\"\"`` string is re-indented to ``ind`` when that keeps its value."""
    lines = lit.raw[3:-3].split("\n")
    if len(lines) == 1:
        return lit.raw
    rest = [line.expandtabs() for line in lines[1:]]
    margin = min((len(line) - len(line.lstrip()) for line in rest if line.strip()), default=0)
    moved = [ind + line[margin:] if line[margin:] else "" for line in rest]
    if not rest[-1].strip():  # closing quotes on a line of their own stand at the indentation
        moved[-1] = ind
    candidate = '"""' + "\n".join([lines[0], *moved]) + '"""'
    return candidate if decode_string(candidate) == lit.value else lit.raw


def _lit(lit: ast.Lit, ind: str) -> str:
    return _string(lit, ind) if lit.kind == "str" else lit.raw


def _type(t: ast.TypeExpr | ast.Lit, ind: str) -> str:
    if isinstance(t, ast.Lit):
        return _string(t, ind)
    if isinstance(t, ast.TypeOptional):
        return _type(t.inner, ind) + "?"
    if isinstance(t, ast.TypeEnum):
        values = ", ".join(_type(v, ind) for v in t.values)
        return f"enum({values})" if t.spelling == "enum" else f"{t.spelling}[{values}]"
    if not t.bracketed:
        return t.name.text
    return f"{t.name.text}[{', '.join(_type(a, ind) for a in t.args)}]"


def _level(e: ast.Expr) -> int:
    if isinstance(e, ast.BoolExpr):
        return _OR if e.op == "or" else _AND
    if isinstance(e, ast.NotExpr):
        return _NOT
    return _CMP if isinstance(e, ast.CompareExpr) else _POSTFIX


def _expr(e: ast.Expr, ind: str, need: int = 0, pred: bool = False) -> str:
    """``e`` with the parentheses its tree needs where an operand of level ``need`` stands.

    In a ``where`` predicate (``pred``) a comparison with ``in`` keeps its parentheses: bare, the ``in``
    would start the next field.
    """
    if _level(e) < need or (pred and isinstance(e, ast.CompareExpr) and "in" in e.ops):
        return f"({_expr(e, ind)})"
    if isinstance(e, ast.BoolExpr):
        return f" {e.op} ".join(_expr(a, ind, _level(e) + 1, pred) for a in e.args)
    if isinstance(e, ast.NotExpr):
        return "not " + _expr(e.arg, ind, _NOT, pred)
    if isinstance(e, ast.CompareExpr):
        parts = [_expr(e.operands[0], ind, _POSTFIX)]
        for op, operand in zip(e.ops, e.operands[1:]):
            parts += [op, _expr(operand, ind, _POSTFIX)]
        return " ".join(parts)
    if isinstance(e, ast.AttrExpr):
        return f"{_expr(e.base, ind, _POSTFIX)}.{e.name.text}"
    if isinstance(e, ast.CallExpr):
        return f"{e.fn.text}({', '.join(_expr(a, ind) for a in e.args)})"
    if isinstance(e, ast.ListLit):
        return f"[{', '.join(_expr(a, ind) for a in e.items)}]"
    if isinstance(e, ast.NameRef):
        return e.name.text
    return _lit(e, ind)


def _args(args: tuple[ast.Arg, ...], ind: str) -> str:
    return ", ".join(f"{a.name.text} = {_expr(a.value, ind)}" if a.name else _expr(a.value, ind) for a in args)


def _step(s: ast.Step, ind: str) -> str:
    text = f"{s.module.text} {s.target.text}({_args(s.args, ind)})"
    if s.select is not None:
        text += f".{s.select.text}"
    if s.options:
        text += f" with ({_args(s.options, ind)})"
    return text


def _field(f: ast.FieldDecl, ind: str) -> str:
    text = (f"{f.role:<3} " if f.role else "") + f.name.text
    if f.type is not None:
        text += f": {_type(f.type, ind)}"
    if f.default is not None:
        text += f" = {_expr(f.default, ind)}"
    if f.desc is not None:
        text += " " + _string(f.desc, ind)
    if f.where is not None:
        text += " where " + _expr(f.where, ind, pred=True)
    return text
