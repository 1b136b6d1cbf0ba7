"""The checker and lowering: semantics beyond the one-file-per-code corpus."""
from __future__ import annotations

from pathlib import Path

import pytest

import dspex
from dspex.ir import expr as ir
from dspex.ir.types import FLOAT, INT, STR, EnumOf, ListOf, OptionalOf, Record


def codes(source: str) -> list[tuple[str, int]]:
    return [(d.code, d.line) for d in dspex.check_source(source, "t.dspex")]


def test_every_error_of_a_file_in_one_run() -> None:
    src = '''signature A = "q -> a"
pipeline p(q: str) -> (a: str) {
  x = predict Nope(q = q)
  a = predict A(qq = q).a
}
signature B {
  in q: str
  out a: str where matches(value, "[")
}
signature C = "q ->"
'''
    assert codes(src) == [("W301", 3), ("E101", 3), ("E202", 4), ("E204", 8), ("E203", 10)]


def test_syntax_errors_do_not_hide_other_declarations() -> None:
    src = '''signature A = "q -> a"
pipeline broken(q: str) (a: str) {
  a = predict A(q = q).a
}
pipeline ok(q: str) -> (a: str) {
  a = predict A(qq = q).a
}
var k: int = 5h
'''
    assert codes(src) == [("E001", 2), ("E202", 6), ("E002", 8)]


def test_no_cascade_from_a_broken_declaration() -> None:
    src = 'signature A { in q: str out }\npipeline p(q: str) -> (a: str) {\n  a = predict A(q = q).a\n}\n'
    assert [c for c, _ in codes(src)] == ["E001"]


def test_signature_fields_and_records() -> None:
    prog = dspex.compile_file(Path(__file__).parents[2] / "examples/qa.dspex")
    answer = prog.signatures["Answer"]
    assert [f.name for f in answer.inputs] == ["question", "context"]
    assert answer.inputs[1].has_default and answer.inputs[1].default == []
    assert answer.inputs[1].desc == "retrieved passages"
    citations = answer.output("citations")
    assert isinstance(citations.type, ListOf) and isinstance(citations.type.item, Record)
    assert citations.type.item.field("page").type == OptionalOf(INT)
    assert answer.output("score").type == FLOAT  # an alias resolves to its structure
    assert answer.instruction_vars == ("style",)
    assert answer.instructions == "Answer with a short factual phrase. {{style}}"
    assert isinstance(answer.output("answer").constraint, ir.Compare)


def test_imports_and_aliases(tmp_path: Path) -> None:
    (tmp_path / "lib.dspex").write_text('type Mood = enum("up", "down")\nsignature S = "t -> m: str"\n')
    (tmp_path / "main.dspex").write_text(
        'from "lib.dspex" import Mood as Feeling, S\n'
        'signature T {\n in t: str\n out f: Feeling\n}\n'
        'pipeline p(t: str) -> (f: Feeling) {\n  f = predict T(t = t).f\n}\n')
    prog = dspex.compile_file(tmp_path / "main.dspex")
    assert prog.types["Feeling"] == EnumOf(("up", "down"))
    assert "S" in prog.signatures
    (tmp_path / "bad.dspex").write_text('from "lib.dspex" import Mod\nimport "missing.dspex"\n')
    diags = dspex.check_file(tmp_path / "bad.dspex")
    assert [(d.code, d.line) for d in diags] == [("E101", 1), ("E105", 2)]
    assert diags[0].help == "did you mean 'Mood'?"


def test_import_cycle(tmp_path: Path) -> None:
    (tmp_path / "a.dspex").write_text('import "b.dspex"\nsignature A = "x -> y"\n')
    (tmp_path / "b.dspex").write_text('import "a.dspex"\nsignature B = "x -> y"\n')
    diags = dspex.check_file(tmp_path / "a.dspex")
    assert any(d.code == "E105" and "cycle" in d.message for d in diags)


def test_branch_lowering_and_var_edges() -> None:
    prog = dspex.compile_file(Path(__file__).parents[2] / "examples/support.dspex")
    graph = prog.pipelines["support"].graph
    assert [n.kind for n in graph].count("merge") == 1
    merge = graph.node("reply")
    assert merge.branch == "if@1" and set(merge.deps) == {"if@1", "if@1.then.reply", "if@1.else.reply"}
    assert graph.node("if@1.then.reply").guard == (("if@1", True),)
    assert graph.var_dependents("tone") == {"if@1.then.reply", "if@1.else.reply", "reply", "out:reply"}
    assert graph.node("t").engine == "auto" and graph.node("t").option("lm") == ir.Lit("safe")
    pipe = prog.pipelines["support"]
    assert set(pipe.lms) == {"safe", "fast", "default"} and set(pipe.tools) == {"search_docs"}


def test_nodes_come_in_dependency_order() -> None:
    src = '''signature S = "x -> y"
pipeline p(x: str) -> (z: str) {
  z = predict S(x = y).y
  y = predict S(x = x).y
}'''
    graph = dspex.compile_source(src).pipelines["p"].graph
    seen: set[str] = set()
    for n in graph:
        assert set(n.deps) <= seen
        seen.add(n.id)


def test_cycles_are_reported() -> None:
    src = '''signature S = "x -> y"
pipeline p(x: str) -> (z: str) {
  z = predict S(x = w).y
  w = predict S(x = z).y
}'''
    assert ("E302", 3) in codes(src) or ("E302", 4) in codes(src)


def test_options_engines_and_modules() -> None:
    src = '''signature S = "x -> y"
pipeline p(x: str) -> (a: str, b: str, c: str) {
  a = react S(x = x).y with (engine = "native")
  b = best_of S(x = x).y with (n = 3, engine = "nativ")
  c = cot S(x = x).reasoning with (timeout = 30s, retries = 1.5)
}'''
    assert codes(src) == [("E209", 3), ("E201", 4), ("E201", 5)]


def test_lm_checks() -> None:
    src = '''lm a = openai(model = "m", api_key = "x")
lm b = openai(model = "m", base_url = "http://127.0.0.1:1/v1", token_env = "T")
lm c = opneai(model = "m")
lm d = openai(model = "sk-abcdefghijklmnop1234")
lm e = fallback(a, nope)
lm f = openai(base_url = "http://x")
lm g = local("smollm2")
'''
    assert codes(src) == [("E401", 1), ("E202", 2), ("E101", 3), ("E401", 4), ("E101", 5), ("E207", 6)]
    prog = dspex.compile_source('lm g = local("smollm2", n_ctx = 2048)\nlm h = round_robin(g, g)\n')
    assert prog.lms["g"].arg("model") == "smollm2" and prog.lms["g"].arg("n_ctx") == 2048
    assert prog.lms["h"].members == ("g", "g")


def test_var_domains() -> None:
    prog = dspex.compile_source('var t: float = 1 in [0 .. 2]\nvar s: str = "a" in ["a", "b"]\n')
    assert prog.vars["t"].default == 1.0 and isinstance(prog.vars["t"].default, float)
    assert prog.vars["s"].domain == ("a", "b")
    assert codes('var s: str = "c" in ["a", "b"]\nvar k: int = 1 in [5 .. 1]\nvar j: int = "x"\n') == [
        ("E206", 1), ("E201", 2), ("E201", 3)]


def test_expressions_types() -> None:
    src = '''type U = enum("low", "high")
signature S = "x -> u: Literal['low', 'high'], n: int, tags: list[str]"
pipeline p(x: str) -> (a: bool, b: bool, c: int) {
  s = predict S(x = x)
  a = s.u == "hihg"
  b = "x" in s.tags and not (s.n > 3)
  c = len(s.tags)
}'''
    assert codes(src) == [("E201", 5)]
    ok = src.replace('"hihg"', '"high"')
    graph = dspex.compile_source(ok).pipelines["p"].graph
    assert graph.node("c").type == INT and graph.node("b").kind == "expr"


def test_diagnostic_render_and_json() -> None:
    d = dspex.check_source('var k: int = 12 in [1 .. 10]\n', "k.dspex")[0]
    assert d.render() == ("k.dspex:1:14: error[E206]: default 12 of var 'k' is outside its domain [1 .. 10]\n"
                          "   1 | var k: int = 12 in [1 .. 10]\n"
                          "     |              ^^")
    assert d.to_json() == {"file": "k.dspex", "line": 1, "col": 14, "end_line": 1, "end_col": 16,
                           "severity": "error", "code": "E206",
                           "message": "default 12 of var 'k' is outside its domain [1 .. 10]"}


def test_compile_error_carries_diagnostics() -> None:
    with pytest.raises(dspex.CompileError) as info:
        dspex.compile_source('signature S = "x"', "s.dspex")
    assert info.value.diagnostics[0].code == "E001"
    assert "s.dspex:1:" in str(info.value)


@pytest.mark.parametrize("source", ["", "\n\n", "# only a comment", "pipeline", '"', "signature S {", "}}}",
                                    "type X = X", "type A = B\ntype B = A", "\x00", "signature S = \"\\q\""])
def test_odd_sources_never_raise(source: str) -> None:
    diags = dspex.check_source(source)
    assert all(d.code[0] in "EW" for d in diags)


def test_string_signature_types() -> None:
    sig = dspex.compile_source('signature S = "q, ctx: list[str] -> a: Optional[int], l: Literal[\'x\', \'y\']"'
                               ).signatures["S"]
    assert [f.type for f in sig.inputs] == [STR, ListOf(STR)]
    assert [f.type for f in sig.outputs] == [OptionalOf(INT), EnumOf(("x", "y"))]


def test_enum_members_as_string_literals() -> None:
    src = '''type Tone = enum("formal", "casual")
var tone: Tone = "formal" in ["formal", "casual"]
signature S {
  in x: str
  in tone: Tone = "casual"
  in tones: list[Tone] = ["formal"]
  out y: str
}
pipeline p(x: str) -> (y: str, z: str) {
  y = predict S(x = x, tone = "formal", tones = ["casual", "formal"]).y
  z = predict S(x = x, tone = "formel").y
}'''
    diags = dspex.check_source(src)
    assert [(d.code, d.line) for d in diags] == [("E201", 11)]
    assert diags[0].help == "did you mean 'formal'?"
    assert codes('type T = enum("a")\nvar t: T = "b"\n') == [("E201", 2)]
