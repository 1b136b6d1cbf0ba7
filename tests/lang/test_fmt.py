"""``dspexc fmt``: canonical layout, comments kept, idempotent, and the program unchanged (SPEC §7)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dspex

from dspex.errors import CompileError
from dspex.lang.fmt import check_formatted, format_source
from tests.lang.gen_programs import comment_texts, programs, tree

EXAMPLES = Path(__file__).parents[2] / "examples"
SOURCES = sorted(EXAMPLES.glob("*.dspex")) + sorted((EXAMPLES / "diagnostics").glob("*.dspex"))


def fmt(source: str) -> str:
    return format_source(textwrap.dedent(source).lstrip("\n"))


def assert_round_trip(source: str) -> str:
    """Formatting keeps the tree and the comments, and formatting again changes nothing."""
    shape, errors = tree(source)
    out = format_source(source)
    assert tree(out) == (shape, errors)
    assert comment_texts(out) == comment_texts(source)
    assert format_source(out) == out
    return out


@pytest.mark.parametrize("name", ["reviews.dspex", "support.dspex"])
def test_examples_are_canonical(name: str) -> None:
    source = (EXAMPLES / name).read_text()
    assert format_source(source) == source
    assert check_formatted(source)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_examples_round_trip(path: Path) -> None:
    source = path.read_text()
    if tree(source)[1]:
        with pytest.raises(CompileError):
            format_source(source)
    else:
        assert_round_trip(source)


def test_syntax_error_raises_with_diagnostics() -> None:
    with pytest.raises(CompileError) as info:
        format_source('signature Guess = "clue -> word"\npipeline play(clue: str) (word: str) {}\n', "x.dspex")
    assert [d.code for d in info.value.diagnostics] == ["E001"]
    assert info.value.diagnostics[0].line == 2


def test_messy_one_line_program_is_normalised() -> None:
    source = ('lm default=local("smollm2") lm fast=openai(model="m",temperature=0.5) type S=enum("a","b") '
              'signature C{"""Classify."""in review:str"the text" out label:S out c:float where 0<=value<=1}'
              'pipeline digest(reviews:list[str])->(labels:list[S]){classified=map r in reviews:predict '
              'C(review=r)with(temperature=0.2,retries=3) labels=classified.label}')
    assert assert_round_trip(source) == textwrap.dedent('''\
        lm default = local("smollm2")
        lm fast    = openai(model = "m", temperature = 0.5)
        type S = enum("a", "b")

        signature C {
          """Classify."""
          in  review: str "the text"
          out label: S
          out c: float where 0 <= value <= 1
        }

        pipeline digest(reviews: list[str]) -> (labels: list[S]) {
          classified = map r in reviews: predict C(review = r) with (temperature = 0.2, retries = 3)
          labels     = classified.label
        }
        ''')


def test_comments_stay_where_they_were() -> None:
    source = '''\
        # header

        lm default = local("smollm2")   # the model
        # before the signature
        signature S {
          # before a field
          in q: str  # trailing field
          out a: str
          # closing the block
        }
        pipeline p(q: str) -> a: str {
          # first statement
          r = predict S(q = q)  # the step
          if r.a == "x" {  # branch
            a = r.a
          } else {
            # nothing else
            a = "y"
          }
        }
        # end of file
        '''
    assert assert_round_trip(textwrap.dedent(source)) == textwrap.dedent('''\
        # header

        lm default = local("smollm2")  # the model

        # before the signature
        signature S {
          # before a field
          in  q: str  # trailing field
          out a: str
          # closing the block
        }

        pipeline p(q: str) -> a: str {
          # first statement
          r = predict S(q = q)  # the step
          if r.a == "x" {  # branch
            a = r.a
          } else {
            # nothing else
            a = "y"
          }
        }
        # end of file
        ''')


def test_comments_inside_a_line_move_above_it() -> None:
    out = fmt('''
        pipeline p(q: str) -> (a: str) {
          a = call search(  # the tool
            # which query
            query = q)  # done
        }
        ''')
    assert out == textwrap.dedent('''\
        pipeline p(q: str) -> (a: str) {
          # the tool
          # which query
          a = call search(query = q)  # done
        }
        ''')
    assert format_source(out) == out


def test_comment_characters_inside_strings_are_not_comments() -> None:
    out = fmt('signature S = "a # b -> c"  # real\n')
    assert out == 'signature S = "a # b -> c"  # real\n'


def test_blank_lines_kept_inside_blocks_and_collapsed() -> None:
    out = fmt('''
        pipeline p(q: str) -> (a: str, b: str) {

          a = q



          b = q

        }
        lm x = local("m")

        lm y = local("m")
        ''')
    assert out == textwrap.dedent('''\
        pipeline p(q: str) -> (a: str, b: str) {
          a = q

          b = q
        }

        lm x = local("m")

        lm y = local("m")
        ''')


def test_expressions_get_minimal_parentheses() -> None:
    out = fmt('''
        pipeline p(a: bool, b: bool, c: bool) -> (x: bool, y: bool, z: bool, w: bool, v: bool) {
          x = ((a)) or ((b and c))
          y = (a or b) and c
          z = (a or b) or c
          w = not (a == b) and (not c)
          v = (len([a, (b)])).n
        }
        ''')
    assert out.splitlines()[1:6] == [
        "  x = a or b and c",
        "  y = (a or b) and c",
        "  z = (a or b) or c",
        "  w = not a == b and not c",
        "  v = len([a, b]).n",
    ]
    assert_round_trip(out)


def test_parentheses_kept_where_a_keyword_would_read_differently() -> None:
    out = fmt('''
        type R {
          a: int where (value in x) or not (value in y)
          b: str
        }
        pipeline p(predict: str) -> (x: str, y: str, z: str) {
          x = (predict)
          y = (call).name
          z = (map) == 1
        }
        ''')
    assert "  a: int where (value in x) or not (value in y)" in out
    assert "  x = (predict)\n  y = (call.name)\n  z = (map == 1)\n" in out
    assert_round_trip(out)


def test_else_block_holding_one_if_prints_as_else_if() -> None:
    out = fmt('''
        pipeline p(c: bool) -> (a: int) {
          if c { a = 1 } else { if not c { a = 2 } else { a = 3 } }
        }
        ''')
    assert out == textwrap.dedent('''\
        pipeline p(c: bool) -> (a: int) {
          if c {
            a = 1
          } else if not c {
            a = 2
          } else {
            a = 3
          }
        }
        ''')


def test_docstrings_are_reindented() -> None:
    out = fmt('''
        signature S {
                """Answer briefly.
                   Mention {{style}}.

                Be kind.
                """
          in q: str """the
                  question"""
          out a: str
        }
        ''')
    assert out == textwrap.dedent('''\
        signature S {
          """Answer briefly.
             Mention {{style}}.

          Be kind.
          """
          in  q: str """the
          question"""
          out a: str
        }
        ''')
    assert_round_trip(out)


def test_literals_keep_their_spelling() -> None:
    out = fmt('''
        var t: float = 1e-3 in [-0.5 .. 2.50] "caf\\u00e9 \\"q\\""
        var d: str = "x" in ["x", "y\\ty"]
        ''')
    assert out == 'var t: float = 1e-3 in [-0.5 .. 2.50] "caf\\u00e9 \\"q\\""\nvar d: str = "x" in ["x", "y\\ty"]\n'


def test_types_tools_imports_and_outputs() -> None:
    out = fmt('''
        import   "common.dspex"
        from "common.dspex" import A,B as C
        type  T = dict[str,list[Literal["a","b"]?]]
        type E=enum()
        tool search(query:str,k:int=3 "how many")->list[str]=python("pkg.mod:search")
        pipeline one(q:str)->answer:str{answer=cot QA(question=q).answer}
        pipeline two(q:str)->(answer:str){answer=call one(q)}
        ''')
    assert out == textwrap.dedent('''\
        import "common.dspex"
        from "common.dspex" import A, B as C
        type T = dict[str, list[Literal["a", "b"]?]]
        type E = enum()
        tool search(query: str, k: int = 3 "how many") -> list[str] = python("pkg.mod:search")

        pipeline one(q: str) -> answer: str {
          answer = cot QA(question = q).answer
        }

        pipeline two(q: str) -> (answer: str) {
          answer = call one(q)
        }
        ''')


def test_crlf_and_empty_sources() -> None:
    assert format_source("lm a = local(\"m\")\r\n\r\n\r\nlm b = local(\"m\")  # x\r\n") == (
        'lm a = local("m")\n\nlm b = local("m")  # x\n')
    assert format_source("") == ""
    assert format_source("  \n\n") == ""
    assert format_source("# only\n\n\n# comments") == "# only\n\n# comments\n"


def test_check_formatted() -> None:
    assert check_formatted('lm a = local("m")\n')
    assert not check_formatted('lm a=local("m")\n')


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(programs())
def test_random_programs_round_trip(source: str) -> None:
    assert tree(source)[1] == []  # the generator only writes programs that parse
    assert_round_trip(source)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000))
def test_formatting_keeps_every_fingerprint(seed: int) -> None:
    from benchmarks.programs import generate_program

    source, _ = generate_program(12, 4, seed=seed)
    formatted = format_source(source)
    before, after = dspex.compile_source(source), dspex.compile_source(formatted)
    assert after.fingerprint == before.fingerprint
    assert {n: p.fingerprint for n, p in after.pipelines.items()} == {
        n: p.fingerprint for n, p in before.pipelines.items()}
    assert format_source(formatted) == formatted
