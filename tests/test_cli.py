"""``dspexc`` (SPEC §7): what each command prints, what it writes, and its exit code (0 ok, 1 errors, 2 usage).

Most tests drive the Typer app in process; a few run ``python -m dspex.cli`` for real, to see the exit
codes and streams a shell sees.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dspex import __version__
from dspex.cli import app
from dspex.ir.artifact import dumps, load
from dspex.lang.compile import compile_file

REPO = Path(__file__).parents[1]
SHARED = REPO / "examples"  # the shared sample programs, copied into the repository
CORPUS = REPO / "examples" / "diagnostics"
SPEC_KEYS = {"file", "line", "col", "end_line", "end_col", "severity", "code", "message"}
NODE_KEYS = {"id", "kind", "module", "signature", "engine", "deps", "vars"}

MISSPELLED = '''\
signature Guess = "clue -> word"
pipeline play(clue: str) -> (word: str) {
  word = predict Guess(clue = clue).word with (temprature = 0.3)
}
'''
UNUSED = '''\
signature Guess = "clue -> word, why"
pipeline play(clue: str) -> (word: str) {
  g    = predict Guess(clue = clue)
  why  = g.why
  word = g.word
}
'''
MESSY = '''\
signature Guess="clue -> word"
pipeline play(clue:str)->(word:str){
    word=predict Guess(clue=clue).word   with(temperature=0.3)
}'''


def invoke(*args: str | Path) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], prog_name="dspexc")


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A scratch folder holding copies of the shared examples and a few small programs."""
    for name in ("reviews.dspex", "support.dspex"):
        shutil.copy(SHARED / name, tmp_path / name)
    (tmp_path / "misspelled.dspex").write_text(MISSPELLED)
    (tmp_path / "unused.dspex").write_text(UNUSED)
    (tmp_path / "messy.dspex").write_text(MESSY)
    return tmp_path


# -- version and usage ------------------------------------------------------------------------------
def test_version() -> None:
    for args in (["version"], ["--version"]):
        result = invoke(*args)
        assert (result.exit_code, result.stdout) == (0, f"dspexc {__version__}\n")


@pytest.mark.parametrize("args", [
    [], ["frobnicate"], ["check"], ["check", "--bogus", "x.dspex"], ["check", "nowhere.dspex"],
    ["check", "--format", "xml", "{reviews}"], ["build"], ["build", "{dir}"], ["graph", "nowhere.dspexc"],
    ["graph", "{reviews}", "--format", "png"], ["fmt", "nowhere.dspex"], ["build", "{reviews}", "--emit", "java"],
])
def test_usage_errors_exit_2(work: Path, args: list[str]) -> None:
    result = invoke(*[a.format(reviews=work / "reviews.dspex", dir=work) for a in args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_a_missing_file_is_named(work: Path) -> None:
    result = invoke("check", work / "nowhere.dspex")
    assert result.exit_code == 2
    assert "nowhere.dspex" in result.stderr and "does not exist" in result.stderr


# -- check ------------------------------------------------------------------------------------------
def test_check_clean_files(work: Path) -> None:
    result = invoke("check", work / "reviews.dspex", work / "support.dspex")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "0 errors, 0 warnings\n")


def test_check_prints_every_diagnostic_then_a_summary(work: Path) -> None:
    path = work / "misspelled.dspex"
    result = invoke("check", path, work / "unused.dspex", work / "reviews.dspex")
    assert result.exit_code == 1
    assert result.stdout == (
        f"{path}:3:48: error[E202]: unknown option 'temprature'\n"
        "   3 |   word = predict Guess(clue = clue).word with (temprature = 0.3)\n"
        "     |                                                ^^^^^^^^^^\n"
        "   help: did you mean 'temperature'?\n"
        "\n"
        f"{work / 'unused.dspex'}:4:3: warning[W301]: 'why' is bound but never used\n"
        "   4 |   why  = g.why\n"
        "     |   ^^^\n"
    )
    assert result.stderr == "1 error, 1 warning\n"
    assert "\x1b[" not in result.output  # no colour off a terminal


def test_check_warnings_only_exits_0(work: Path) -> None:
    result = invoke("check", work / "unused.dspex")
    assert result.exit_code == 0
    assert "warning[W301]" in result.stdout and result.stderr == "0 errors, 1 warning\n"


def test_check_json_follows_the_spec(work: Path) -> None:
    files = [work / "misspelled.dspex", work / "unused.dspex", work / "reviews.dspex"]
    result = invoke("check", "--format", "json", *files)
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert isinstance(data, list) and len(data) == 2
    for item in data:
        assert set(item) == SPEC_KEYS
        assert all(isinstance(item[k], int) for k in ("line", "col", "end_line", "end_col"))
        assert all(isinstance(item[k], str) for k in ("file", "severity", "code", "message"))
    assert data[0] == {"file": str(files[0]), "line": 3, "col": 48, "end_line": 3, "end_col": 58,
                       "severity": "error", "code": "E202", "message": "unknown option 'temprature'"}
    assert (data[1]["code"], data[1]["severity"], data[1]["file"]) == ("W301", "warning", str(files[1]))


def test_check_json_of_clean_files_is_an_empty_list(work: Path) -> None:
    result = invoke("check", "--format", "json", work / "reviews.dspex")
    assert (result.exit_code, json.loads(result.stdout)) == (0, [])


def test_check_reports_an_unreadable_file_as_a_diagnostic(work: Path) -> None:
    path = work / "latin1.dspex"
    path.write_bytes(b'signature S = "caf\xe9 -> b"\n')
    result = invoke("check", "--format", "json", path)
    assert result.exit_code == 1
    [item] = json.loads(result.stdout)
    assert (item["code"], item["file"]) == ("E105", str(path))


def test_check_reports_an_imported_files_errors_once(work: Path) -> None:
    for name in ("e105_cycle_a.dspex", "e105_cycle_b.dspex"):
        shutil.copy(CORPUS / name, work / name)
    result = invoke("check", "--format", "json", work / "e105_cycle_a.dspex", work / "e105_cycle_b.dspex")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert len(data) == len({json.dumps(d, sort_keys=True) for d in data})
    assert {d["code"] for d in data} == {"E105"}


# -- build ------------------------------------------------------------------------------------------
def test_build_writes_an_artifact_that_loads_back(work: Path) -> None:
    source = work / "reviews.dspex"
    result = invoke("build", source)
    target = work / "reviews.dspexc"
    assert (result.exit_code, result.stdout) == (0, f"wrote {target}\n")
    program, compiled = load(target), compile_file(source)
    assert program == compiled
    assert {n: p.fingerprint for n, p in program.pipelines.items()} == \
           {n: p.fingerprint for n, p in compiled.pipelines.items()}


def test_build_to_a_named_output(work: Path) -> None:
    target = work / "out" / "support.bin"
    target.parent.mkdir()
    result = invoke("build", work / "support.dspex", "-o", target)
    assert result.exit_code == 0
    assert load(target) == compile_file(work / "support.dspex")


def test_build_with_errors_writes_nothing(work: Path) -> None:
    result = invoke("build", work / "misspelled.dspex")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "error[E202]" in result.stderr and result.stderr.endswith("1 error, 0 warnings\n")
    assert not (work / "misspelled.dspexc").exists()


def test_build_shows_warnings_and_succeeds(work: Path) -> None:
    result = invoke("build", work / "unused.dspex")
    assert result.exit_code == 0
    assert "warning[W301]" in result.stderr and (work / "unused.dspexc").exists()


def test_build_never_overwrites_its_input(work: Path) -> None:
    invoke("build", work / "reviews.dspex")
    before = (work / "reviews.dspexc").read_bytes()
    result = invoke("build", work / "reviews.dspexc")
    assert result.exit_code == 2 and "error:" in result.stderr
    assert (work / "reviews.dspexc").read_bytes() == before


def test_build_emit_python_writes_a_typed_module(work: Path) -> None:
    result = invoke("build", work / "reviews.dspex", "--emit", "python")
    target = work / "reviews.py"
    assert (result.exit_code, result.stdout) == (0, f"wrote {target}\n")
    spec = importlib.util.spec_from_file_location("reviews_types", target)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert set(module.ClassifyInputs.__annotations__) == {"review"}
    assert set(module.DigestOutputs.__annotations__) == {"labels", "summary"}


def test_build_emit_python_to_a_named_output(work: Path) -> None:
    target = work / "types_of_support.py"
    result = invoke("build", work / "support.dspex", "--emit", "python", "-o", target)
    assert result.exit_code == 0
    assert "class SupportInputs(TypedDict)" in target.read_text()
    assert not (work / "support.dspexc").exists()


# -- graph ------------------------------------------------------------------------------------------
DIGEST_NODES = [
    # id, kind, module, signature, engine, deps, vars
    ("reviews", "input", None, None, None, [], []),
    ("classified", "map", "predict", "Classify", "auto", ["reviews"], ["temperature"]),
    ("labels", "project", None, None, None, ["classified"], []),
    ("summary", "step", "chain_of_thought", "Summarize", "auto", ["reviews", "labels"], []),
    ("out:labels", "output", None, None, None, ["labels"], []),
    ("out:summary", "output", None, None, None, ["summary"], []),
]
SUPPORT_NODES = [
    ("message", "input", None, None, None, [], []),
    ("t", "step", "predict", "Triage", "auto", ["message"], []),
    ("urgency", "project", None, None, None, ["t"], []),
    ("docs", "step", "call", "search_docs", None, ["message"], []),
    ("if@1", "branch", None, None, None, ["urgency"], []),
    ("if@1.then.reply", "step", "chain_of_thought", "Answer", "auto", ["if@1", "message", "docs"], ["tone"]),
    ("if@1.else.reply", "step", "predict", "Answer", "auto", ["if@1", "message", "docs"], ["tone"]),
    ("reply", "merge", None, None, None, ["if@1", "if@1.then.reply", "if@1.else.reply"], []),
    ("out:urgency", "output", None, None, None, ["urgency"], []),
    ("out:reply", "output", None, None, None, ["reply"], []),
]


def spec_nodes(graph: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [tuple(n[k] for k in ("id", "kind", "module", "signature", "engine", "deps", "vars"))
            for n in graph["nodes"]]


@pytest.mark.parametrize("file, pipeline, nodes", [
    ("reviews.dspex", "digest", DIGEST_NODES), ("support.dspex", "support", SUPPORT_NODES)])
def test_graph_json_follows_the_spec(work: Path, file: str, pipeline: str, nodes: list[tuple[Any, ...]]) -> None:
    result = invoke("graph", work / file, "--pipeline", pipeline)
    assert result.exit_code == 0, result.output
    graph = json.loads(result.stdout)
    assert {"pipeline", "fingerprint", "nodes"} <= set(graph)
    assert (graph["pipeline"], graph["fingerprint"]) == (pipeline, compile_file(work / file).pipelines[pipeline]
                                                         .fingerprint)
    assert all(NODE_KEYS <= set(n) for n in graph["nodes"])
    assert spec_nodes(graph) == nodes


def test_graph_json_lists_every_pipeline_when_there_are_several(work: Path) -> None:
    result = invoke("graph", work / "reviews.dspex")
    assert [g["pipeline"] for g in json.loads(result.stdout)] == ["digest", "classify_one"]
    single = json.loads(invoke("graph", work / "support.dspex").stdout)
    assert isinstance(single, dict) and single["pipeline"] == "support"


def test_graph_of_an_artifact_equals_the_graph_of_its_source(work: Path) -> None:
    invoke("build", work / "support.dspex")
    for fmt in ("json", "dot", "mermaid"):
        from_source = invoke("graph", work / "support.dspex", "--format", fmt)
        from_artifact = invoke("graph", work / "support.dspexc", "--format", fmt)
        assert from_artifact.exit_code == 0, from_artifact.output
        assert from_artifact.stdout == from_source.stdout


def test_graph_unknown_pipeline_is_a_usage_error(work: Path) -> None:
    result = invoke("graph", work / "reviews.dspex", "--pipeline", "digset")
    assert result.exit_code == 2
    assert result.stderr == f"error: {work / 'reviews.dspex'} has no pipeline 'digset'; did you mean 'digest'?\n"


def test_graph_keeps_stdout_for_the_graph(work: Path) -> None:
    result = invoke("graph", work / "unused.dspex")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["pipeline"] == "play"
    assert "warning[W301]" in result.stderr


def test_graph_of_a_program_with_errors(work: Path) -> None:
    result = invoke("graph", work / "misspelled.dspex")
    assert (result.exit_code, result.stdout) == (1, "")
    assert "error[E202]" in result.stderr


@pytest.mark.parametrize("damage, reason", [
    (lambda data: data[:-10], "truncated"),
    (lambda data: data[:-1] + bytes([data[-1] ^ 0xFF]), "corrupted"),
    (lambda data: b"just some text\n", "not a DSPex artifact"),
])
def test_graph_of_a_damaged_artifact_is_an_error_not_a_crash(work: Path, damage: Any, reason: str) -> None:
    path = work / "bad.dspexc"
    path.write_bytes(damage(dumps(compile_file(work / "reviews.dspex"))))
    result = invoke("graph", path)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {path}: ") and reason in result.stderr
    assert "Traceback" not in result.output


_DOT_STRING = r'"(?:[^"\\]|\\.)*"'
_DOT_NODE = re.compile(rf"  ({_DOT_STRING}) \[(.*)\];")
_DOT_EDGE = re.compile(rf"  ({_DOT_STRING}) -> ({_DOT_STRING})(?: \[(.*)\])?;")


def check_dot(text: str) -> list[tuple[str, str, str]]:
    """Validate one ``digraph`` as Graphviz would read it; returns its edges as (from, to, attributes)."""
    assert re.fullmatch(rf"digraph {_DOT_STRING} \{{\n(.*\n)*\}}\n", text), text
    without_strings = re.sub(_DOT_STRING, '""', text)
    assert without_strings.count("{") == without_strings.count("}") == 1
    assert without_strings.count("[") == without_strings.count("]")
    declared: set[str] = set()
    edges = []
    for line in text.splitlines()[1:-1]:
        if line in ("  rankdir=TB;", '  node [fontname="Helvetica"];'):
            continue
        if m := _DOT_NODE.fullmatch(line):
            assert m.group(1) not in declared, f"{m.group(1)} declared twice"
            assert re.search(rf"\blabel={_DOT_STRING}", m.group(2)) and re.search(r"\bshape=\w+", m.group(2))
            declared.add(m.group(1))
        elif m := _DOT_EDGE.fullmatch(line):
            assert m.group(1) in declared and m.group(2) in declared, f"edge before its nodes: {line}"
            edges.append((json.loads(m.group(1)), json.loads(m.group(2)), m.group(3) or ""))
        else:
            pytest.fail(f"not a DOT statement: {line!r}")
    return edges


def test_graph_dot(work: Path) -> None:
    result = invoke("graph", work / "support.dspex", "--format", "dot")
    assert result.exit_code == 0
    text = result.stdout
    edges = check_dot(text)
    graph = compile_file(work / "support.dspex").pipelines["support"].graph
    assert len(edges) == sum(len(n.deps) + len(n.vars) for n in graph)
    assert ("if@1", "if@1.then.reply", 'label="then"') in edges
    assert ("if@1", "if@1.else.reply", 'label="else"') in edges
    assert ("var:tone", "if@1.then.reply", "style=dashed") in edges
    assert '"if@1" [shape=diamond' in text and '"out:reply" [shape=ellipse' in text
    assert 'label="t = predict Triage"' in text and 'label="if urgency == \\"high\\""' in text
    if shutil.which("dot"):
        run = subprocess.run(["dot", "-Tsvg"], input=text, capture_output=True, text=True, check=False)
        assert run.returncode == 0, run.stderr


def test_graph_dot_of_several_pipelines(work: Path) -> None:
    text = invoke("graph", work / "reviews.dspex", "--format", "dot").stdout
    blocks = text.split("\n\n")
    assert [b.split("\n", 1)[0] for b in blocks] == ['digraph "digest" {', 'digraph "classify_one" {']
    for block in blocks:
        check_dot(block if block.endswith("\n") else block + "\n")
    assert '"classified" [shape=box3d' in blocks[0]


_MERMAID_NODE = re.compile(r'  ([nv]\d+)(\(\[|\[\[|\[\\|\{\{|[\[({])"([^"]*)"(\]\)|\]\]|/\]|\}\}|[\])}])')
_MERMAID_EDGE = re.compile(r"  ([nv]\d+) (-->|-->\|then\||-->\|else\||-\.->) ([nv]\d+)")


def check_mermaid(text: str) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """Validate one flowchart; returns its node labels by id and its edges as (from label, arrow, to label)."""
    lines = text.splitlines()
    assert lines[0] == "flowchart TD"
    labels: dict[str, str] = {}
    edges = []
    for line in lines[1:]:
        if m := _MERMAID_NODE.fullmatch(line):
            assert m.group(1) not in labels
            labels[m.group(1)] = m.group(3)
        elif m := _MERMAID_EDGE.fullmatch(line):
            assert m.group(1) in labels and m.group(3) in labels, f"edge before its nodes: {line}"
            edges.append((labels[m.group(1)], m.group(2), labels[m.group(3)]))
        else:
            pytest.fail(f"not a mermaid statement: {line!r}")
    return labels, edges


def test_graph_mermaid(work: Path) -> None:
    result = invoke("graph", work / "support.dspex", "--format", "mermaid", "--pipeline", "support")
    assert result.exit_code == 0
    labels, edges = check_mermaid(result.stdout)
    graph = compile_file(work / "support.dspex").pipelines["support"].graph
    assert len(labels) == len(graph) + 1  # and the var `tone`
    assert len(edges) == sum(len(n.deps) + len(n.vars) for n in graph)
    assert "if urgency == #34;high#34;" in labels.values()
    assert ("if urgency == #34;high#34;", "-->|then|", "reply = chain_of_thought Answer.reply") in edges
    assert ("var tone", "-.->", "reply = predict Answer.reply") in edges


def test_graph_formats_are_well_formed_for_a_larger_program() -> None:
    path = CORPUS / "clean_program.dspex"
    pipelines = compile_file(path).pipelines
    dot = invoke("graph", path, "--format", "dot").stdout
    for block, pipeline in zip(dot.split("\n\n"), pipelines.values(), strict=True):
        edges = check_dot(block.rstrip("\n") + "\n")
        assert len(edges) == sum(len(n.deps) + len(n.vars) for n in pipeline.graph)
    mermaid = invoke("graph", path, "--format", "mermaid").stdout
    for block, pipeline in zip(mermaid.split("\n\n"), pipelines.values(), strict=True):
        _, edges = check_mermaid(block)
        assert len(edges) == sum(len(n.deps) + len(n.vars) for n in pipeline.graph)
    assert "no pipeline" in invoke("graph", CORPUS / "clean_common.dspex").stderr


# -- fmt --------------------------------------------------------------------------------------------
def test_fmt_check_on_a_canonical_file(work: Path) -> None:
    result = invoke("fmt", "--check", work / "reviews.dspex")
    assert (result.exit_code, result.stdout) == (0, "")
    assert (work / "reviews.dspex").read_text() == (SHARED / "reviews.dspex").read_text()


def test_fmt_check_on_a_messy_file_prints_a_diff(work: Path) -> None:
    from dspex.lang.fmt import format_source

    path = work / "messy.dspex"
    result = invoke("fmt", "--check", path)
    assert result.exit_code == 1
    assert result.stdout.startswith(f"--- {path}\n+++ {path} (formatted)\n@@ ")
    assert "-    word=predict Guess(clue=clue).word   with(temperature=0.3)\n" in result.stdout
    assert "\\ No newline at end of file\n" in result.stdout
    assert path.read_text() == MESSY
    added = [line[1:] for line in result.stdout.splitlines()[2:] if line.startswith("+")]
    assert "\n".join(added) + "\n" == format_source(MESSY)


def test_fmt_rewrites_in_place(work: Path) -> None:
    from dspex.lang.fmt import format_source

    path = work / "messy.dspex"
    path.chmod(0o640)
    result = invoke("fmt", path)
    assert (result.exit_code, result.stdout) == (0, f"formatted {path}\n")
    assert path.read_text() == format_source(MESSY)
    assert path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in work.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    assert invoke("fmt", "--check", path).exit_code == 0
    assert invoke("fmt", path).stdout == ""


def test_fmt_keeps_a_file_with_syntax_errors(work: Path) -> None:
    path = work / "broken.dspex"
    broken = 'signature Guess = "clue -> word"\npipeline play(clue: str) (word: str) {}\n'
    path.write_text(broken)
    for check in ([], ["--check"]):
        result = invoke("fmt", *check, path)
        assert result.exit_code == 1
        assert "error[E001]" in result.stderr and result.stdout == ""
        assert path.read_text() == broken


# -- the real command -------------------------------------------------------------------------------
def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dspex.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, check=False, timeout=120)


def test_subprocess_exit_codes_and_streams(work: Path) -> None:
    ok = run("check", "reviews.dspex", cwd=work)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "0 errors, 0 warnings\n")
    bad = run("check", "misspelled.dspex", cwd=work)
    assert bad.returncode == 1
    assert bad.stdout.startswith("misspelled.dspex:3:48: error[E202]: unknown option 'temprature'\n")
    for args in (["check", "nowhere.dspex"], ["frobnicate"], ["graph", "reviews.dspex", "-p", "nope"]):
        usage = run(*args, cwd=work)
        assert usage.returncode == 2, usage.stderr
        assert "Traceback" not in usage.stderr
    version = run("version", cwd=work)
    assert (version.returncode, version.stdout) == (0, f"dspexc {__version__}\n")


def test_subprocess_damaged_artifact(work: Path) -> None:
    (work / "bad.dspexc").write_bytes(b"\x81\xa6format\xa6dspexc")
    result = run("graph", "bad.dspexc", cwd=work)
    assert result.returncode == 1
    assert result.stderr.startswith("error: bad.dspexc: ") and "Traceback" not in result.stderr


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_colour_on_a_terminal_only_adds_styles(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    main, secondary = os.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "200"}
    env.pop("NO_COLOR", None)
    args = [sys.executable, "-m", "dspex.cli", "check", "misspelled.dspex", "unused.dspex"]
    with subprocess.Popen(args, cwd=work, stdout=secondary, stderr=secondary, env=env) as proc:
        os.close(secondary)
        chunks = []
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the other end closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(main)
    assert proc.returncode == 1
    shown = b"".join(chunks).decode().replace("\r\n", "\n")
    assert "\x1b[" in shown
    monkeypatch.chdir(work)
    plain = invoke("check", "misspelled.dspex", "unused.dspex")
    assert re.sub(r"\x1b\[[0-9;]*m", "", shown) == plain.stdout + plain.stderr
