"""A tight LALR(1) loop over a Lark parser's own tables, scanners and callbacks: the parse hot path.

Lark's generic driver spends most of a large compile in per-token bookkeeping (lexer states, token
objects, interactive-parser hooks). This loop runs the *same* contextual scanners, parse table and
tree callbacks in the same order, so whenever it returns it returns exactly what ``Lark.parse``
would. It handles only success: at the first token it cannot scan or shift it returns ``FAILED``, and
the caller re-runs Lark itself, which reports the error with all its context.

It reads Lark internals (``_parse_table``, the contextual lexer's per-state scanners), so it is built
defensively: ``LalrDriver.build`` returns None when this Lark does not look as expected, and the
compiler then simply uses ``Lark.parse``. ``tests/lang/test_lalr_driver.py`` holds the two to the same result.
"""
from __future__ import annotations

import re
from typing import Any, Callable

from lark import Lark, Token

__all__ = ["LalrDriver", "FAILED"]

FAILED: Any = object()

# state -> (scanner regexes in priority order, ignored terminal names, token callbacks, newline terminal names)
_Scan = tuple[tuple[Any, ...], frozenset[str], dict[str, Callable[[Token], Token]], frozenset[str]]
# Per state and terminal: (next state, None) for a shift, (None, (rule size, callback, goto symbol)) for a reduce.
_Action = tuple[Any, Any]


class LalrDriver:
    def __init__(self, table: dict[Any, dict[str, _Action]], start: Any, end: Any, scans: dict[Any, _Scan],
                 shift_callbacks: dict[str, Callable[[Token], Any]], skip: re.Pattern[str]):
        self.table, self.start, self.end, self.scans = table, start, end, scans
        self.shift_callbacks, self.skip = shift_callbacks, skip

    @classmethod
    def build(cls, lark: Lark, start: str = "start") -> "LalrDriver | None":
        """A driver for ``lark`` (an LALR parser with the contextual lexer), or None if its internals differ."""
        try:
            return cls._build(lark, start)
        except (AttributeError, KeyError, TypeError, ValueError, re.error):
            return None

    @classmethod
    def _build(cls, lark: Lark, start: str) -> "LalrDriver":
        from lark.parsers.lalr_analysis import Shift

        frontend = lark.parser
        lexer = frontend.lexer
        lalr = frontend.parser
        parse_table = lalr._parse_table
        callbacks = lalr.parser.callbacks
        table = {
            state: {str(sym): (arg, None) if action is Shift else
                    (None, (len(arg.expansion), callbacks[arg], str(arg.origin.name)))
                    for sym, (action, arg) in actions.items()}
            for state, actions in parse_table.states.items()}
        root = lexer.root_lexer
        ignored = [t for t in root.terminals if t.name in root.ignore_types]
        # Whitespace and comments are skipped in one regex call: sound because no other terminal of the
        # grammar can begin where an ignored one does (they start with a space or '#').
        skip = re.compile("(?:" + "|".join(f"(?:{t.pattern.to_regexp()})" for t in ignored) + ")*")
        scans: dict[Any, _Scan] = {}
        seen: dict[int, _Scan] = {}
        for state, state_lexer in lexer.lexers.items():
            scan = seen.get(id(state_lexer))
            if scan is None:
                scan = seen[id(state_lexer)] = (
                    tuple(state_lexer.scanner._mres), frozenset(state_lexer.ignore_types),
                    dict(state_lexer.callback), frozenset(state_lexer.newline_types))
            scans[state] = scan
        shift_callbacks = {str(k): v for k, v in callbacks.items() if isinstance(k, str)}
        return cls(table, parse_table.start_states[start], parse_table.end_states[start], scans, shift_callbacks,
                   skip)

    def parse(self, text: str) -> Any:
        """What ``Lark.parse(text)`` returns, or ``FAILED`` where Lark would raise (or anything unusual)."""
        scans, shift_callbacks = self.scans, self.shift_callbacks
        states = [self.start]
        values: list[Any] = []
        pos, line, line_start, n = 0, 1, 0, len(text)
        new_token = str.__new__
        skip = self.skip.match
        while True:
            end = skip(text, pos).end()  # type: ignore[union-attr]
            if end != pos:
                newlines = text.count("\n", pos, end)
                if newlines:
                    line += newlines
                    line_start = text.rindex("\n", pos, end) + 1
                pos = end
            if pos >= n:
                break
            regexes, ignore, token_callbacks, newline_types = scans[states[-1]]
            for regex in regexes:
                m = regex.match(text, pos)
                if m:
                    break
            else:
                return FAILED
            kind = m.lastgroup
            end = m.end()
            value = m.group(0)
            token_line, column = line, pos - line_start + 1
            if kind in newline_types:
                newlines = value.count("\n")
                if newlines:
                    line += newlines
                    line_start = pos + value.rindex("\n") + 1
            if kind in ignore and kind not in token_callbacks:
                pos = end
                continue
            token = new_token(Token, value)
            token.type, token.value, token.start_pos, token.line, token.column = kind, value, pos, token_line, column
            token.end_line, token.end_column, token.end_pos = line, end - line_start + 1, end
            pos = end
            callback = token_callbacks.get(kind)  # type: ignore[arg-type]
            if callback is not None:
                token = callback(token)
            if kind in ignore:
                continue
            if self._feed(token.type, token, states, values, shift_callbacks) is FAILED:
                return FAILED
        return self._finish(states, values)

    def _feed(self, kind: str, token: Token, states: list[Any], values: list[Any],
              shift_callbacks: dict[str, Callable[[Token], Any]]) -> Any:
        table = self.table
        while True:
            action = table[states[-1]].get(kind)
            if action is None:
                return FAILED
            shift, reduce = action
            if reduce is None:
                states.append(shift)
                callback = shift_callbacks.get(kind)
                values.append(token if callback is None else callback(token))
                return None
            size, rule_callback, goto = reduce  # _reduce, inlined: this is the innermost loop of a compile
            if size:
                children = values[-size:]
                del states[-size:]
                del values[-size:]
            else:
                children = []
            values.append(rule_callback(children))
            states.append(table[states[-1]][goto][0])

    def _reduce(self, reduce: tuple[int, Callable[[list[Any]], Any], str], states: list[Any],
                values: list[Any]) -> None:
        size, callback, goto = reduce
        if size:
            children = values[-size:]
            del states[-size:]
            del values[-size:]
        else:
            children = []
        values.append(callback(children))
        states.append(self.table[states[-1]][goto][0])

    def _finish(self, states: list[Any], values: list[Any]) -> Any:
        while True:
            action = self.table[states[-1]].get("$END")
            if action is None or action[1] is None:
                return FAILED
            self._reduce(action[1], states, values)
            if states[-1] == self.end:
                return values[-1]
