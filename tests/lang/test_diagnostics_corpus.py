"""Where diagnostics point (SPEC §4): every corpus program reports exactly what its ``# expect:`` lines say,
and a handful of diagnostics render exactly, caret and help included (golden tests compare whole texts).

The corpora are the repository's ``examples/diagnostics`` and, in its ``spec/`` folder, the SPEC's own
examples. A diagnostic found in an imported file belongs to that file, so each file is held only to the
diagnostics located in it.
"""
from __future__ import annotations

import re
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from dspex.lang.compile import check_file, check_source
from dspex.lang.diagnostics import Diagnostic

REPO = Path(__file__).parents[2]
CORPORA = (REPO / "examples" / "diagnostics", REPO / "examples" / "diagnostics" / "spec")
FILES = sorted((p for corpus in CORPORA for p in corpus.glob("*.dspex")), key=lambda p: (p.parent.name, p.name))
SPEC_CODES = {"E001", "E002", "E101", "E102", "E103", "E104", "E105", "E201", "E202", "E203", "E204", "E205",
              "E206", "E207", "E208", "E209", "E301", "E302", "E401", "W301"}
_EXPECT = re.compile(r"#\s*expect:\s*(?:(clean)|([EW]\d{3})\s*@\s*(\d+))\s*$")


def expectations(path: Path) -> Counter[tuple[str, int]]:
    """The ``# expect:`` lines heading ``path`` as a multiset of (code, line); empty for ``clean``."""
    found: Counter[tuple[str, int]] = Counter()
    clean = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        m = _EXPECT.fullmatch(line.strip())
        if m is None:
            continue
        if m.group(1):
            clean = True
        else:
            found[(m.group(2), int(m.group(3)))] += 1
    assert clean != bool(found), f"{path.name}: needs `# expect: clean` or `# expect: CODE @ LINE` lines, not both"
    return found


def own(path: Path, diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    return [d for d in diagnostics if Path(d.file).resolve() == path.resolve()]


def test_the_corpora_are_there() -> None:
    assert len([p for p in FILES if p.parent == CORPORA[0]]) >= len(SPEC_CODES)


@pytest.mark.parametrize("path", FILES, ids=lambda p: ("spec/" if p.parent == CORPORA[1] else "") + p.name)
def test_reports_exactly_what_the_file_expects(path: Path) -> None:
    got = own(path, check_file(path))
    assert Counter((d.code, d.line) for d in got) == expectations(path), "\n".join(d.render() for d in got)


def test_every_code_of_the_spec_is_shown() -> None:
    shown = {code for path in FILES for code, _ in expectations(path)}
    assert shown == SPEC_CODES
    assert any(not expectations(path) for path in FILES), "no clean program in the corpus"


def test_corpus_files_are_named_after_what_they_show() -> None:
    for path in FILES:
        if path.parent != CORPORA[0]:
            continue
        prefix = path.name.split("_")[0]
        codes = {code.lower() for code, _ in expectations(path)}
        assert prefix == "clean" and not codes or prefix in codes, path.name


# -- golden texts -----------------------------------------------------------------------------------
SPEC_REVIEWS = '''\
# reviews.dspex
lm default = local("smollm2")

type Sentiment = enum("positive", "negative", "neutral")

signature Classify {
  """Classify the sentiment of a product review."""
  in  review: str "the review text"
  out label: Sentiment
  out confidence: float "how sure, from 0 to 1" where 0 <= value <= 1
}

pipeline digest(reviews: list[str]) -> (labels: list[Sentiment]) {
  classified = map r in reviews: predict Classify(reveiw = r)
  labels     = classified.label
}
'''


def rendered(source: str, filename: str = "x.dspex") -> str:
    return "\n".join(d.render() for d in check_source(textwrap.dedent(source), filename))


def test_the_spec_example_renders_exactly() -> None:
    assert rendered(SPEC_REVIEWS, "reviews.dspex") == (
        "reviews.dspex:14:51: error[E202]: signature 'Classify' has no input 'reveiw'\n"
        "   14 |   classified = map r in reviews: predict Classify(reveiw = r)\n"
        "      |                                                   ^^^^^^\n"
        "   help: did you mean 'review'?"
    )


@pytest.mark.parametrize("name, text", [
    ("misspelled_option.dspex",
     "{file}:4:48: error[E202]: unknown option 'temprature'\n"
     "   4 |   word = predict Guess(clue = clue).word with (temprature = 0.3)\n"
     "     |                                                ^^^^^^^^^^\n"
     "   help: did you mean 'temperature'?"),
    ("duplicate_type.dspex",
     "{file}:4:6: error[E102]: 'Color' is declared twice\n"
     "   4 | type Color = enum(\"blue\")\n"
     "     |      ^^^^^\n"
     "   help: the first declaration is on line 2"),
    ("unbound_output.dspex",
     "{file}:3:41: error[E301]: output 'why' is never bound\n"
     "   3 | pipeline play(clue: str) -> (word: str, why: str) {{\n"
     "     |                                         ^^^\n"
     "   help: bind it in the body: why = ..."),
    ("missing_arrow.dspex",
     "{file}:3:26: error[E001]: expected '->', found '('\n"
     "   3 | pipeline play(clue: str) (word: str) {{\n"
     "     |                          ^"),
    ("var_out_of_range.dspex",
     "{file}:2:14: error[E206]: default 12 of var 'k' is outside its domain [1 .. 10]\n"
     "   2 | var k: int = 12 in [1 .. 10]\n"
     "     |              ^^"),
])
def test_shared_examples_render_exactly(name: str, text: str) -> None:
    path = CORPORA[1] / name
    assert "\n".join(d.render() for d in check_file(str(path))) == text.format(file=path)


def test_branch_binding_and_warning_render_exactly() -> None:
    source = '''\
        signature Check = "text -> ok: bool"
        pipeline clean(text: str) -> (result: str) {
          c = predict Check(text = text)
          if c.ok {
            fixed = "yes"
          }
          spare  = c.ok
          result = fixed
        }
        '''
    assert rendered(source) == (
        "x.dspex:7:3: warning[W301]: 'spare' is bound but never used\n"
        "   7 |   spare  = c.ok\n"
        "     |   ^^^^^\n"
        "x.dspex:8:12: error[E101]: 'fixed' is bound only in some branches of the `if` on line 4\n"
        "   8 |   result = fixed\n"
        "     |            ^^^^^\n"
        "   help: bind it in every branch, or bind it before the `if`"
    )


def test_columns_count_characters_not_bytes() -> None:
    source = 'signature T = "a -> b"\npipeline p(x: str) -> (y: str) {\n  y = predict T(a = "déjà", c = x).b\n}\n'
    assert rendered(source) == (
        "x.dspex:3:29: error[E202]: signature 'T' has no input 'c'\n"
        '   3 |   y = predict T(a = "déjà", c = x).b\n'
        "     |                             ^"
    )


def test_a_line_number_widens_the_gutter() -> None:
    source = "\n" * 99 + 'var k: int = 0 in [1 .. 10]\n'
    assert rendered(source) == (
        "x.dspex:100:14: error[E206]: default 0 of var 'k' is outside its domain [1 .. 10]\n"
        "   100 | var k: int = 0 in [1 .. 10]\n"
        "       |              ^"
    )


def test_a_misspelled_module_is_named_with_a_suggestion() -> None:
    [d] = check_source('signature Guess = "clue -> word"\n'
                       "pipeline play(clue: str) -> (word: str) {\n"
                       "  word = predcit Guess(clue = clue).word\n"
                       "}\n", "x.dspex")
    assert (d.code, d.line, d.col, d.end_col) == ("E001", 3, 10, 17)
    assert d.message == "'predcit' is not a module"
    assert d.help == "did you mean 'predict'?"


def test_a_malformed_option_literal_is_reported_once() -> None:
    source = ('signature Guess = "clue -> word"\n'
              "pipeline play(clue: str) -> (word: str) {\n"
              "  word = predict Guess(clue = clue).word with (timeout = 5h, temperature = 1e999)\n"
              "}\n")
    assert [(d.code, d.col) for d in check_source(source)] == [("E002", 58), ("E002", 76)]
