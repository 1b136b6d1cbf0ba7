"""The front end never crashes: grammar-generated and mutated sources only ever produce diagnostics.

Sources that happen to parse cleanly are also pushed through ``fmt`` (idempotent, same tree), so the
fuzzers double as formatter tests on inputs no hand-written strategy would think of.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark
from lark import Lark

import dspex
from dspex.lang.diagnostics import Diagnostic
from dspex.lang.fmt import format_source
from dspex.lang.parse import grammar_text
from tests.lang.gen_programs import programs, tree

EXAMPLES = Path(__file__).parents[2] / "examples"
SEEDS = [p.read_text() for p in sorted(EXAMPLES.glob("*.dspex")) + sorted((EXAMPLES / "diagnostics").glob("*.dspex"))]
FUZZ = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])

# Names that collide with keywords and module names, to stress the contextual lexer.
_NAMES = st.one_of(st.sampled_from(["a", "x", "Sent", "value", "len", "in", "out", "map", "predict", "call", "not",
                                    "true", "where", "enum", "Literal", "list", "dict", "str", "if"]),
                   st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,5}", fullmatch=True))
_REGEX_TERMINALS = {
    "NAME": _NAMES,
    "STRING": st.sampled_from(['"x"', '""', '"a # b"', '"bad \\q escape"', '"\\u12"', '"""doc\n  more\n  """',
                               '"caf\\u00e9"', '"-> :"']),
    "NUMBER": st.sampled_from(["0", "-3", "0.5", "1e-3", "99999999999999999999999", "1e999", "-1e999"]),
    "DURATION": st.sampled_from(["500ms", "30s", "2m", "1.5s"]),
    "BAD_NUMBER": st.sampled_from(["12kg", "3.5x", "1e5q"]),
    "MODULE": st.sampled_from(["predict", "cot", "chain_of_thought", "react", "refine"]),
    "WS": st.sampled_from([" ", "\n", "\t"]),
    "COMMENT": st.just("# c\n"),
}


@lru_cache(maxsize=1)
def grammar_sources() -> st.SearchStrategy[str]:
    """Sentences of the grammar, every token followed by a space so neighbours do not run together."""
    grammar = Lark(grammar_text(), parser="lalr")
    explicit = {t.name: st.just(t.pattern.value) for t in grammar.terminals if t.pattern.type == "str"}
    explicit.update(_REGEX_TERMINALS)
    return from_lark(grammar, start="start", explicit={k: v.map(lambda s: s + " ") for k, v in explicit.items()})


def front_end_survives(source: str) -> None:
    """``parse`` and ``check_source`` report, never raise; a clean parse formats to a fixed point."""
    shape, errors = tree(source)
    diagnostics = dspex.check_source(source, filename="fuzz.dspex")
    assert isinstance(diagnostics, list) and all(isinstance(d, Diagnostic) for d in diagnostics)
    if errors:
        assert any(d.severity == "error" for d in diagnostics)
        return
    out = format_source(source)
    assert tree(out) == (shape, [])
    assert format_source(out) == out


@FUZZ
@given(st.data())
def test_grammar_sentences_never_crash(data: st.DataObject) -> None:
    front_end_survives(data.draw(grammar_sources()))


_TOKEN = re.compile(r'\s+|\w+|"""[\s\S]*?"""|"(?:[^"\\\n]|\\.)*"|#[^\n]*|.', re.S)
_INSERTS = st.sampled_from([
    '"', '"""', "\\", "#", "{", "}", "(", ")", "[", "]", ",", ".", "..", "=", "==", "->", ":", "?", "\n", " ",
    "in ", "if ", "else ", "with ", "map ", "where ", "not ", "predict ", "call ", "type ", "signature ", "pipeline ",
    "lm ", "var ", "tool ", "import ", "1e999", "99999999999999999999", "3kg", "500ms", "\\u12", "\t", "\r", "\x00",
    "é", "😀", "-", "--3",
])


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A valid program with a few characters or tokens deleted, inserted, duplicated or swapped."""
    source: str = draw(st.one_of(st.sampled_from(SEEDS), programs(max_decls=3)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "insert", "swap", "drop_token", "dup_token", "swap_tokens"]))
        if kind in ("delete", "insert", "swap"):
            i = draw(st.integers(0, len(source)))
            if kind == "delete":
                source = source[:i] + source[i + draw(st.integers(1, 3)):]
            elif kind == "insert":
                source = source[:i] + draw(_INSERTS) + source[i:]
            elif i + 1 < len(source):
                source = source[:i] + source[i + 1] + source[i] + source[i + 2:]
            continue
        tokens = _TOKEN.findall(source)
        if not tokens:
            continue
        i, j = draw(st.integers(0, len(tokens) - 1)), draw(st.integers(0, len(tokens) - 1))
        if kind == "drop_token":
            del tokens[i]
        elif kind == "dup_token":
            tokens.insert(i, tokens[j])
        else:
            tokens[i], tokens[j] = tokens[j], tokens[i]
        source = "".join(tokens)
    return source


@FUZZ
@given(mutated())
def test_mutated_programs_never_crash(source: str) -> None:
    front_end_survives(source)
