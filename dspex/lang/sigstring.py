"""DSPy's string-signature syntax (``"question, context: list[str] -> answer: int"``), parsed into field
declarations.

It accepts what ``dspy.Signature(text)`` accepts, read the way DSPy reads it (split on the one ``->``, then
each side as Python parameters with annotations). It is scanned by hand rather than with Python's ``ast``
so that every name and type node gets an exact span, and so that no input can make it raise.
"""
from __future__ import annotations

import ast
import keyword
import re
import typing
import unicodedata
import warnings
from dataclasses import dataclass
from typing import Callable, Union

from dspex.lang.ast import FieldDecl, Lit, Name, Span, TypeEnum, TypeExpr, TypeName, TypeOptional
from dspex.lang.diagnostics import Reporter

__all__ = ["parse_signature_string"]

SpanOf = Callable[[int, int], Span]

_ARROW = "->"
_WS = " \t\n\r\f"
_QUOTES = "'\""
_MAX_DEPTH = 64  # Python itself refuses much deeper nesting; the limit keeps recursion bounded
_DEFAULT_HELP = "the string form has no defaults (DSPy drops them); write a block signature: in k: int = 3"
_ASCII_WORD = re.compile(r"[A-Za-z0-9_]+")  # exactly the ASCII characters ("_" + c).isidentifier() accepts
_LONE_NONE = "'None' is not a field type on its own: write 'T | None' or 'Optional[T]'"


def parse_signature_string(text: str, span_of: SpanOf, rep: Reporter) -> list[FieldDecl] | None:
    """The fields of a DSPy string signature, inputs (role ``in``) then outputs (role ``out``).

    ``span_of(start, end)`` maps character offsets in ``text`` (end exclusive) to source spans. Every
    problem is reported to ``rep``; the result is None when there was any.
    """
    parser = _Parser(text, span_of, rep)
    arrows = _find_all(text, _ARROW)
    if not arrows:
        parser.error("E001", 0, len(text), "expected '->' in a signature string",
                     "separate inputs from outputs with '->', as in \"question -> answer\"")
        return None
    if len(arrows) > 1:
        parser.error("E001", arrows[1], arrows[1] + 2, "expected only one '->' in a signature string")
        return None
    arrow = arrows[0]
    inputs = parser.side(0, arrow, "in")
    outputs = parser.side(arrow + 2, len(text), "out")
    for fields, side in ((inputs, "inputs"), (outputs, "outputs")):
        if fields == []:
            parser.error("E203", arrow, arrow + 2, f"signature has no {side}")
    seen: set[str] = set()
    for f in (inputs or []) + (outputs or []):
        if f.name.text in seen:
            parser.failed = True
            rep.error("E102", f.name.span, f"field '{f.name.text}' is declared twice")
        seen.add(f.name.text)
    return None if parser.failed else (inputs or []) + (outputs or [])


def _find_all(text: str, sub: str) -> list[int]:
    """Offsets of the non-overlapping occurrences of ``sub``, as ``str.split`` sees them."""
    found, i = [], text.find(sub)
    while i >= 0:
        found.append(i)
        i = text.find(sub, i + len(sub))
    return found


class _Fail(Exception):
    """A syntax error that abandons the rest of one side of the arrow."""

    def __init__(self, code: str, start: int, end: int, message: str, help: str | None = None):
        super().__init__(message)
        self.code, self.start, self.end, self.message, self.help = code, start, end, message, help


@dataclass(frozen=True, slots=True)
class _NoneLit:
    """A bare ``None``: meaningful only as a union member, where it makes the other member optional."""

    start: int
    end: int


_Member = Union[TypeExpr, _NoneLit]


class _Parser:
    """A cursor over ``text[pos:end]``, one side of the arrow at a time."""

    def __init__(self, text: str, span_of: SpanOf, rep: Reporter):
        self.text, self.span_of, self.rep = text, span_of, rep
        self.pos = self.end = self.tok_end = 0
        self.after = ""
        self.failed = False

    # -- reporting -----------------------------------------------------------------------------------
    def error(self, code: str, start: int, end: int, message: str, help: str | None = None) -> None:
        self.failed = True
        self.rep.error(code, self.span_of(start, end), message, help)

    def unexpected(self, what: str) -> _Fail:
        start, end, found = self.found()
        return _Fail("E001", start, end, f"expected {what}, found {found}", _DEFAULT_HELP if found == "'='" else None)

    def found(self) -> tuple[int, int, str]:
        """The token at the cursor, in words, with its offsets."""
        pos = self.pos
        if pos >= self.end:
            if self.end < len(self.text):
                return pos, pos + 2, "'->'"
            return pos, pos, "the end of the signature"
        ch = self.text[pos]
        if ch in _QUOTES:
            return pos, self.string_end(pos)[0], "a string"
        end = self.word_end(pos)
        if end > pos:
            return pos, end, repr(self.text[pos:end])
        return pos, pos + 1, repr(ch)

    # -- scanning ------------------------------------------------------------------------------------
    def skip_ws(self) -> None:
        while self.pos < self.end and self.text[self.pos] in _WS:
            self.pos += 1

    def peek(self, ch: str) -> bool:
        return self.pos < self.end and self.text[self.pos] == ch

    def take(self, ch: str) -> bool:
        if self.peek(ch):
            self.pos += 1
            self.tok_end = self.pos
            return True
        return False

    def word_end(self, pos: int) -> int:
        """End of the run of identifier characters (Python's, Unicode included) starting at ``pos``."""
        m = _ASCII_WORD.match(self.text, pos, self.end)  # the common case in one step; the loop goes on past it
        if m:
            pos = m.end()
        while pos < self.end and ("_" + self.text[pos]).isidentifier():
            pos += 1
        return pos

    def word(self) -> str:
        start = self.pos
        self.pos = self.tok_end = self.word_end(start)
        return self.text[start:self.pos]

    def string_end(self, start: int) -> tuple[int, bool]:
        """One past the closing quote of the string opened at ``start``, and whether it was closed at all."""
        quote, i = self.text[start], start + 1
        while i < self.end and self.text[i] not in "\r\n":
            if self.text[i] == "\\":
                i += 2
            elif self.text[i] == quote:
                return i + 1, True
            else:
                i += 1
        return min(i, self.end), False

    # -- grammar -------------------------------------------------------------------------------------
    def side(self, start: int, end: int, role: str) -> list[FieldDecl] | None:
        """``field ("," field)* [","]``, or nothing; None after a syntax error (already reported)."""
        self.pos, self.end = start, end
        self.after = "'->'" if role == "in" else "the end of the signature"
        fields: list[FieldDecl] = []
        try:
            self.skip_ws()
            while self.pos < self.end:
                fields.append(self.field(role))
                self.skip_ws()
                if self.pos < self.end and not self.take(","):
                    raise self.unexpected(f"',' or {self.after}")
                self.skip_ws()
        except _Fail as fail:
            self.error(fail.code, fail.start, fail.end, fail.message, fail.help)
            return None
        return fields

    def field(self, role: str) -> FieldDecl:
        start = self.pos
        text = self.word()
        if not text:
            raise self.unexpected("a field name")
        self.check_field_name(text, start)
        name = Name(text, self.span_of(start, self.pos))
        self.skip_ws()
        type_: TypeExpr | None = None
        if self.take(":"):
            self.skip_ws()
            type_ = self.known(self.union(0))
        elif self.pos < self.end and not self.peek(","):
            raise self.unexpected(f"':', ',' or {self.after}")
        return FieldDecl(role, name, type_, None, None, None, self.span_of(start, self.tok_end))

    def check_field_name(self, text: str, start: int) -> None:
        end = start + len(text)
        if not text.isidentifier():
            self.error("E001", start, end, f"'{text}' is not a valid field name",
                       "a field name starts with a letter or '_'")
        elif keyword.iskeyword(text):
            self.error("E001", start, end, f"'{text}' is a Python keyword and cannot be a field name")
        elif unicodedata.normalize("NFKC", text) != text:
            self.error("E001", start, end, f"'{text}' is not a normalized identifier",
                       f"Python reads it as '{unicodedata.normalize('NFKC', text)}'; write that")

    def known(self, member: _Member) -> TypeExpr:
        if isinstance(member, _NoneLit):
            raise _Fail("E201", member.start, member.end, _LONE_NONE)
        return member

    def union(self, depth: int) -> _Member:
        """``primary ("|" primary)*``: a type, ``T | None`` (optional), or a bare ``None``."""
        if depth > _MAX_DEPTH:
            raise _Fail("E001", self.pos, self.pos + 1, "type is nested too deeply")
        start = self.pos
        members = [self.primary(depth)]
        self.skip_ws()
        while self.take("|"):
            self.skip_ws()
            members.append(self.primary(depth))
            self.skip_ws()
        return self.combine(members, start, self.tok_end)

    def combine(self, members: list[_Member], start: int, end: int) -> _Member:
        """Members of ``A | B`` or ``Union[A, B]``: DSPex has optionals, not general unions."""
        types = [m for m in members if not isinstance(m, _NoneLit)]
        if len(types) > 1:
            raise _Fail("E201", start, end,
                        "union types are not supported: only 'T | None', 'Optional[T]' and 'Union[T, None]'")
        if not types:
            return members[0]
        if len(members) == 1:
            return types[0]
        return TypeOptional(types[0], self.span_of(start, end))

    def primary(self, depth: int) -> _Member:
        """A (dotted) type name, optionally subscripted: ``int``, ``typing.List[str]``, ``Literal['a']``."""
        start = self.pos
        parts = [self.word()]
        if not parts[0]:
            raise self.unexpected("a type")
        while self.peek(".") and self.word_end(self.pos + 1) > self.pos + 1:
            self.pos += 1
            parts.append(self.word())
        text, end = ".".join(parts), self.pos
        if not all(p.isidentifier() and (p == "None" or not keyword.iskeyword(p)) for p in parts):
            raise _Fail("E001", start, end, f"expected a type, found {text!r}")
        if text == "None":
            return _NoneLit(start, end)
        typing_name = len(parts) == 2 and parts[0] == "typing" and hasattr(typing, parts[1])
        name = Name(parts[1] if typing_name else text, self.span_of(start, end))
        self.skip_ws()
        if not self.take("["):
            return TypeName(name, (), self.span_of(start, end))
        self.skip_ws()
        if name.text == "Literal":
            values = self.literal_values()
            return TypeEnum(values, self.span_of(start, self.tok_end), "Literal")
        args = [self.union(depth + 1)]
        while not self.take("]"):
            if not self.take(","):
                raise self.unexpected("',' or ']'")
            self.skip_ws()
            if self.take("]"):  # a trailing comma, as Python allows
                break
            args.append(self.union(depth + 1))
        end = self.tok_end
        if name.text == "Union":
            return self.combine(args, start, end)
        if name.text == "Optional" and len(args) == 1:
            return TypeOptional(self.known(args[0]), self.span_of(start, end))
        return TypeName(name, tuple(self.known(a) for a in args), self.span_of(start, end), bracketed=True)

    def literal_values(self) -> tuple[Lit, ...]:
        """``'a', "b"]`` after ``Literal[``."""
        values = [self.string()]
        self.skip_ws()
        while not self.take("]"):
            if not self.take(","):
                raise self.unexpected("',' or ']'")
            self.skip_ws()
            if self.take("]"):
                break
            values.append(self.string())
            self.skip_ws()
        return tuple(values)

    def string(self) -> Lit:
        start = self.pos
        if not (self.pos < self.end and self.text[start] in _QUOTES):
            end = start
            while end < self.end and self.text[end] not in _WS + ",]|":
                end += 1
            if end > start:
                raise _Fail("E201", start, end, f"Literal values must be strings, found {self.text[start:end]!r}")
            raise self.unexpected("a string")
        end, closed = self.string_end(start)
        raw = self.text[start:end]
        if not closed:
            raise _Fail("E002", start, end, "unterminated string")
        if "\\" not in raw and raw.isprintable():  # nothing for Python's decoder to do (or refuse)
            value = raw[1:-1]
        else:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    value = ast.literal_eval(raw)
            except Exception:  # noqa: BLE001 - any failure of Python's own decoder means a bad literal
                raise _Fail("E002", start, end, f"invalid string literal {raw}") from None
        self.pos = self.tok_end = end
        return Lit(value, "str", self.span_of(start, end), raw)

