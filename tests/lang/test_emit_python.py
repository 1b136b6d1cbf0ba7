"""``emit_python``: the typed module imports cleanly, has the right keys, and passes ``mypy --strict``."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import typing
from pathlib import Path
from types import ModuleType

import pytest

from dspex.ir.graph import Graph, Node
from dspex.ir.program import Field, Pipeline, Program, Signature
from dspex.ir.types import ANY, INT, NONE, STR, DictOf, EnumOf, ListOf, OptionalOf, Record, RecordField
from dspex.lang.emit_python import emit_python
from tests.ir.programs import CITATION, SENTIMENT, reviews


def awkward() -> Program:
    """Names and texts that are not Python-safe as they stand."""
    item_a = Record("Item", (RecordField("from", STR, "a keyword\nacross lines"), RecordField("__private", INT)))
    item_b = Record("Item", (RecordField("size", INT, 'has """ and \\ and \x00'),))
    shadow = Record("str", (RecordField("inner", item_b), RecordField("any", ANY), RecordField("nothing", NONE)))
    quoted = EnumOf(("it's", 'say "hi"', "back\\slash", "new\nline"))
    sig = Signature("class", 'Instructions with """ quotes """ and a \\ backslash.\n\tTabbed.',
                    (Field("def", quoted), Field("x", DictOf(STR, ListOf(OptionalOf(SENTIMENT))), None, {}, True)),
                    (Field("out", ListOf(item_a)), Field("s", shadow)))
    digest_sig = Signature("Digest", "", (Field("a", EnumOf(())),), (Field("b", STR),))
    graph = Graph((Node("q", "input", STR),), "fp")
    return Program(
        types={"Sentiment": SENTIMENT, "Citation": CITATION, "Cite": CITATION, "Mood": SENTIMENT,
               "Count": INT, "ﬁle": Record("ﬁle", (RecordField("name", STR),)), "Literal": EnumOf(("a",))},
        signatures={"class": sig, "Digest": digest_sig},
        pipelines={"answer_question": Pipeline("answer_question", (Field("q", STR), Field("n", INT, None, 3, True)),
                                               (Field("a", OptionalOf(CITATION)),), graph),
                   "digest": Pipeline("digest", (), (Field("x", INT),), graph)},
        source_sha256="0123abcd" * 8,
    )


def write(tmp_path: Path, name: str, program: Program) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(emit_python(program), encoding="utf-8")
    return path


def imported(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mypy(tmp_path: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--cache-dir", str(tmp_path / ".mypy"),
         *map(str, files)], cwd=tmp_path, capture_output=True, text=True)


def test_reviews_module_shape(tmp_path: Path) -> None:
    source = emit_python(reviews())
    assert source == emit_python(reviews())
    assert "from __future__" not in source
    module = imported(write(tmp_path, "reviews_types", reviews()))
    assert module.__doc__ is not None and "ab" * 32 in module.__doc__ and "Generated" in module.__doc__
    assert module.__all__ == ["Sentiment", "Citation", "Labels", "ClassifyInputs", "ClassifyOutputs",
                              "SummarizeInputs", "SummarizeOutputs", "TriageInputs", "TriageOutputs",
                              "DigestInputs", "DigestOutputs"]
    assert typing.get_args(module.Sentiment) == ("positive", "negative", "neutral")
    assert module.ClassifyInputs.__required_keys__ == {"review"}
    assert module.ClassifyInputs.__optional_keys__ == {"language"}
    assert module.TriageInputs.__optional_keys__ == {"urgent"}
    assert module.ClassifyOutputs.__required_keys__ == {"label", "confidence", "citations"}
    assert list(module.Citation.__annotations__) == ["source", "quote", "page"]
    citations = typing.get_type_hints(module.ClassifyOutputs)["citations"]
    assert typing.get_origin(citations) is list and typing.get_args(citations) == (module.Citation,)
    assert "Classify the sentiment" in (module.ClassifyInputs.__doc__ or "")


def test_awkward_names_become_distinct_identifiers(tmp_path: Path) -> None:
    module = imported(write(tmp_path, "awkward_types", awkward()))
    names = module.__all__
    assert len(names) == len(set(names)) and all(n.isidentifier() for n in names)
    assert {"Item", "Item_2", "str_2", "classInputs", "classOutputs", "AnswerQuestionInputs", "DigestInputs",
            "DigestInputs_2", "Literal_2", "Cite", "Mood", "file"} <= set(names)
    assert module.Cite is module.Citation and module.Mood is module.Sentiment
    item = module.Item_2 if "from" in module.Item_2.__annotations__ else module.Item
    assert set(item.__annotations__) == {"from", "__private"}  # keys no class body can hold
    assert module.classInputs.__optional_keys__ == {"x"}
    assert typing.get_args(typing.get_type_hints(module.classInputs)["def"]) == (
        "it's", 'say "hi"', "back\\slash", "new\nline")
    assert typing.get_type_hints(module.DigestInputs)["a"] is str  # an enum with no values
    assert module.AnswerQuestionInputs.__optional_keys__ == {"n"}
    assert module.DigestInputs_2.__required_keys__ == set()


def test_mypy_strict_accepts_modules_and_their_use(tmp_path: Path) -> None:
    good = [write(tmp_path, "reviews_types", reviews()), write(tmp_path, "awkward_types", awkward()),
            write(tmp_path, "empty_types", Program())]
    use = tmp_path / "use.py"
    use.write_text(
        "from reviews_types import ClassifyInputs, ClassifyOutputs, Citation, DigestOutputs\n"
        "from awkward_types import classInputs\n\n"
        "inputs: ClassifyInputs = {'review': 'great'}\n"
        "cite: Citation = {'source': 's', 'quote': 'q', 'page': None}\n"
        "outputs: ClassifyOutputs = {'label': 'positive', 'confidence': 0.5, 'citations': [cite]}\n"
        "digest: DigestOutputs = {'labels': ['neutral'], 'summary': ''}\n"
        "odd: classInputs = {'def': \"it's\"}\n", encoding="utf-8")
    result = mypy(tmp_path, *good, use)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_rejects_misuse(tmp_path: Path) -> None:
    write(tmp_path, "reviews_types", reviews())
    misuse = tmp_path / "misuse.py"
    misuse.write_text(
        "from reviews_types import ClassifyInputs, ClassifyOutputs\n\n"
        "inputs: ClassifyInputs = {'language': 'en'}\n"
        "outputs: ClassifyOutputs = {'label': 'great', 'confidence': 1.0, 'citations': []}\n", encoding="utf-8")
    result = mypy(tmp_path, misuse)
    assert result.returncode == 1
    assert 'Missing key "review"' in result.stdout
    assert "'great'" in result.stdout


@pytest.mark.parametrize("program", [Program(), reviews(), awkward()], ids=["empty", "reviews", "awkward"])
def test_source_compiles(program: Program) -> None:
    compile(emit_python(program), "<generated>", "exec")
