"""Hypothesis strategies for random ``.dspex`` programs that parse, and the tree comparison fmt tests use.

Programs are built as token lists and joined with random layout (spaces, newlines, blank lines and
comments), so one strategy exercises both the printer and the comment attachment.
"""
from __future__ import annotations

import dataclasses
import json
from functools import lru_cache
from typing import Any

from hypothesis import strategies as st
from lark import Lark

from dspex.lang.diagnostics import Reporter
from dspex.lang.parse import grammar_text, parse

__all__ = ["programs", "comment_texts", "shape", "tree"]

Tokens = list[str]
_NAMES = st.sampled_from(["a", "b", "x", "item", "review", "label", "Sent", "k2", "_p", "value", "confidence"])
# Module names are names outside step position (SPEC §2): fields, parameters, arguments may use them.
_FIELD_NAMES = st.one_of(_NAMES, st.sampled_from(["predict", "cot", "refine", "react"]))
# After `.` and after a declaration keyword only a name can follow: even keywords read as names there.
_ANY_NAMES = st.one_of(_FIELD_NAMES, st.sampled_from(["in", "out", "map", "where", "not", "true", "if", "call"]))
_STRINGS = st.one_of(
    st.sampled_from([
        '"x"', '""', '"a # not a comment"', '"say \\"hi\\""', '"caf\\u00e9"', '"tab\\there\\n"', '"back\\\\slash"',
        '"""doc"""', '"""multi\n   line\n   """', '"""\n    Indented\n      more\n\n    end\n    """',
        '"""Answer {{style}}.\n  second "quoted" line"""',
    ]),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=8).map(
        lambda s: json.dumps(s, ensure_ascii=False)),
)
_NUMBERS = st.sampled_from(["0", "42", "-3", "0.5", "1e-3", "2.5E+10", "-0.0", "7"])
_DURATIONS = st.sampled_from(["500ms", "30s", "2m", "1.5s"])
_LITERALS = st.one_of(_STRINGS, _NUMBERS, _DURATIONS, st.sampled_from(["true", "false", "none"]))
_MODULES = st.sampled_from(["predict", "cot", "chain_of_thought", "best_of", "react", "refine", "call"])
_SEPARATORS = st.sampled_from([" "] * 8 + [
    "\n", "\n\n", "\t", "\r\n", "  # note\n", '\n# own "line" # two\n', "\n\n\n  # after blank\n\n"])
_OPS = st.sampled_from(["==", "!=", "<", "<=", ">", ">="])
_OR, _AND, _NOT, _CMP, _POSTFIX = 1, 2, 3, 4, 5

Expr = tuple[Tokens, int, bool]  # tokens, precedence level, whether a bare `in` comparison is at its top


def _wrap(e: Expr, need: int, pred: bool) -> Tokens:
    tokens, level, has_in = e
    if level < need or (pred and has_in):
        return ["(", *tokens, ")"]
    return tokens


def _exprs(pred: bool) -> st.SearchStrategy[Expr]:
    leaf = st.one_of(_LITERALS, _NAMES).map(lambda t: ([t], _POSTFIX, False))

    def extend(inner: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
        def attr(e: Expr, name: str) -> Expr:
            return [*_wrap(e, _POSTFIX, False), ".", name], _POSTFIX, False

        def compare(es: list[Expr], ops: list[str]) -> Expr:
            tokens = list(_wrap(es[0], _POSTFIX, False))
            for op, e in zip(ops, es[1:]):
                tokens += [op, *_wrap(e, _POSTFIX, False)]
            return tokens, _CMP, "in" in ops

        def boolean(op: str, es: list[Expr]) -> Expr:
            level = _OR if op == "or" else _AND
            tokens: Tokens = []
            for i, e in enumerate(es):
                tokens += ([op] if i else []) + _wrap(e, level + 1, pred)
            return tokens, level, False

        ops = st.one_of(_OPS, st.just("in"))
        return st.one_of(
            st.builds(attr, inner, _ANY_NAMES),
            st.builds(lambda e: (["(", *e[0], ")"], _POSTFIX, False), inner),
            st.builds(lambda f, es: ([f, "(", *_join([e[0] for e in es]), ")"], _POSTFIX, False),
                      st.sampled_from(["len", "matches"]), st.lists(inner, max_size=2)),
            st.builds(lambda es: (["[", *_join([e[0] for e in es]), "]"], _POSTFIX, False),
                      st.lists(inner, max_size=3)),
            st.integers(1, 2).flatmap(lambda n: st.builds(compare, st.lists(inner, min_size=n + 1, max_size=n + 1),
                                                          st.lists(ops, min_size=n, max_size=n))),
            st.builds(lambda e: (["not", *_wrap(e, _NOT, pred)], _NOT, False), inner),
            st.builds(boolean, st.sampled_from(["and", "or"]), st.lists(inner, min_size=2, max_size=3)),
        )

    return st.recursive(leaf, extend, max_leaves=6)


def _join(parts: list[Tokens], sep: str = ",") -> Tokens:
    out: Tokens = []
    for i, p in enumerate(parts):
        out += ([sep] if i else []) + p
    return out


_EXPR = _exprs(pred=False).map(lambda e: e[0])
_PRED = _exprs(pred=True).map(lambda e: _wrap(e, 0, True))


def _types() -> st.SearchStrategy[Tokens]:
    base = st.sampled_from(["str", "int", "float", "bool", "Sent"]).map(lambda t: [t])

    def extend(inner: st.SearchStrategy[Tokens]) -> st.SearchStrategy[Tokens]:
        strings = st.lists(_STRINGS.map(lambda s: [s]), max_size=3).map(_join)
        atom = st.one_of(
            inner.filter(lambda t: t[-1] != "?"),
            st.builds(lambda t: ["list", "[", *t, "]"], inner),
            st.builds(lambda t: ["dict", "[", "str", ",", *t, "]"], inner),
            st.builds(lambda t: ["Optional", "[", *t, "]"], inner),
            strings.map(lambda s: ["enum", "(", *s, ")"]),
            strings.filter(bool).map(lambda s: ["Literal", "[", *s, "]"]),
        )
        return st.one_of(atom, atom.map(lambda t: [*t, "?"]))

    return st.recursive(base, extend, max_leaves=3)


_TYPE = _types()
_LIST = st.lists(_LITERALS.map(lambda t: [t]), max_size=3).map(lambda ts: ["[", *_join(ts), "]"])
_DEFAULT = st.one_of(_LITERALS.map(lambda t: [t]), _LIST)


def _opt(s: st.SearchStrategy[Tokens]) -> st.SearchStrategy[Tokens]:
    return st.one_of(st.just([]), s)


def _field(role: st.SearchStrategy[Tokens], where: bool) -> st.SearchStrategy[Tokens]:
    parts = [role, _FIELD_NAMES.map(lambda n: [n, ":"]), _TYPE, _opt(_DEFAULT.map(lambda d: ["=", *d])),
             _opt(_STRINGS.map(lambda s: [s]))]
    if where:
        parts.append(_opt(_PRED.map(lambda p: ["where", *p])))
    return st.tuples(*parts).map(lambda ps: [t for p in ps for t in p])


_ARG = st.one_of(st.builds(lambda n, e: [n, "=", *e], _FIELD_NAMES, _EXPR), _EXPR)
_ARGS = st.lists(_ARG, max_size=3).map(_join)
_STEP = st.builds(
    lambda m, t, a, sel, opts: [m, t, "(", *a, ")", *sel, *opts],
    _MODULES, _NAMES, _ARGS, _opt(_ANY_NAMES.map(lambda n: [".", n])),
    _opt(_ARGS.map(lambda a: ["with", "(", *a, ")"])),
)


def _stmts(depth: int) -> st.SearchStrategy[Tokens]:
    bind = st.builds(lambda n, v: [n, "=", *v], _NAMES, st.one_of(
        _EXPR, _STEP, st.builds(lambda i, over, s: ["map", i, "in", *over, ":", *s], _NAMES, _EXPR, _STEP)))
    if depth == 0:
        return st.lists(bind, max_size=3).map(lambda ss: [t for s in ss for t in s])
    inner = _stmts(depth - 1)
    block = inner.map(lambda b: ["{", *b, "}"])
    if_stmt = st.builds(lambda c, then, orelse: ["if", *c, *then, *orelse], _EXPR, block,
                        _opt(st.one_of(block, _stmts_if(depth - 1)).map(lambda b: ["else", *b])))
    return st.lists(st.one_of(bind, if_stmt), max_size=4).map(lambda ss: [t for s in ss for t in s])


def _stmts_if(depth: int) -> st.SearchStrategy[Tokens]:
    """A nested ``if`` for ``else if``."""
    block = _stmts(depth).map(lambda b: ["{", *b, "}"])
    return st.builds(lambda c, then: ["if", *c, *then], _EXPR, block)


def _flat(parts: tuple[Any, ...]) -> Tokens:
    return [t for p in parts for t in (p if isinstance(p, list) else [p])]


def _decls() -> st.SearchStrategy[Tokens]:
    params = st.lists(_field(st.just([]), where=False), max_size=3).map(_join)
    outputs = st.lists(st.builds(lambda n, t: [n, ":", *t], _NAMES, _TYPE), min_size=1, max_size=3)
    return st.one_of(
        _STRINGS.map(lambda s: ["import", s]),
        st.lists(st.builds(lambda n, a: [n, *a], _NAMES, _opt(_NAMES.map(lambda n: ["as", n]))), min_size=1,
                 max_size=3).map(lambda ns: ["from", '"common.dspex"', "import", *_join(ns)]),
        st.tuples(st.just("type"), _ANY_NAMES, st.just("="), _TYPE).map(_flat),
        st.tuples(st.just("type"), _ANY_NAMES, st.just("{"),
                  st.lists(_field(st.just([]), where=True), max_size=3).map(lambda fs: [t for f in fs for t in f]),
                  st.just("}")).map(_flat),
        st.tuples(st.just("signature"), _ANY_NAMES, st.just("{"), _opt(_STRINGS.map(lambda s: [s])),
                  st.lists(_field(st.sampled_from([["in"], ["out"]]), where=True), max_size=4).map(
                      lambda fs: [t for f in fs for t in f]), st.just("}")).map(_flat),
        st.tuples(st.just("signature"), _ANY_NAMES, st.just("="),
                  st.sampled_from(['"question -> answer"', '"texts: list[str], k: int -> summary, why"'])).map(_flat),
        st.tuples(st.just("lm"), _ANY_NAMES, st.just("="), _NAMES, st.just("("), _ARGS, st.just(")")).map(_flat),
        st.tuples(st.just("var"), _ANY_NAMES, st.just(":"), _TYPE, st.just("="), _DEFAULT,
                  _opt(st.one_of(st.builds(lambda lo, hi: ["in", "[", lo, "..", hi, "]"], _LITERALS, _LITERALS),
                                 _LIST.map(lambda ls: ["in", *ls]))),
                  _opt(_STRINGS.map(lambda s: [s]))).map(_flat),
        st.tuples(st.just("tool"), _ANY_NAMES, st.just("("), params, st.just(")"), st.just("->"), _TYPE, st.just("="),
                  st.just("python"), st.just("("), _STRINGS, st.just(")")).map(_flat),
        st.tuples(st.just("pipeline"), _ANY_NAMES, st.just("("), params, st.just(")"), st.just("->"),
                  st.one_of(outputs.map(lambda os: ["(", *_join(os), ")"]), outputs.map(lambda os: os[0])),
                  st.just("{"), _stmts(2), st.just("}")).map(_flat),
    )


@st.composite
def programs(draw: st.DrawFn, max_decls: int = 5) -> str:
    """A random program that parses without errors, laid out messily, with comments between tokens."""
    tokens = [t for d in draw(st.lists(_decls(), max_size=max_decls)) for t in d]
    seps = draw(st.lists(_SEPARATORS, min_size=len(tokens), max_size=len(tokens)))
    return "".join(t + s for t, s in zip(tokens, seps))


_found: list[str] = []


@lru_cache(maxsize=1)
def _comment_lexer() -> Lark:
    return Lark(grammar_text(), parser="lalr", lexer_callbacks={"COMMENT": lambda t: _found.append(str(t).rstrip())})


def comment_texts(source: str) -> list[str]:
    """The comments of a source that parses, as Lark's own lexer finds them."""
    _found.clear()
    _comment_lexer().parse(source)
    return list(_found)


def shape(node: Any) -> Any:
    """A syntax tree without spans and raw literal text: what must survive formatting."""
    if isinstance(node, tuple):
        return tuple(shape(x) for x in node)
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return (type(node).__name__, *((f.name, shape(getattr(node, f.name))) for f in dataclasses.fields(node)
                                       if f.name not in ("span", "raw")))
    return node


def tree(source: str) -> tuple[Any, list[str]]:
    """The span-free tree of ``source`` and its error messages."""
    rep = Reporter("t.dspex", source)
    module = parse(source, "t.dspex", rep).module
    return shape(module), [d.message for d in rep.diagnostics if d.severity == "error"]
