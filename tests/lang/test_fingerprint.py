"""Fingerprints are structural: layout, comments, order and alias names don't change them; meaning does."""
from __future__ import annotations

from pathlib import Path

import pytest

import dspex

REVIEWS = (Path(__file__).parents[2] / "examples/reviews.dspex").read_text()

BASE = '''
type Mood = enum("positive", "negative")
var temperature: float = 0.2 in [0.0 .. 1.0]
signature Classify {
  """Classify the review."""
  in  review: str "the text"
  out label: Mood
  out confidence: float where 0 <= value <= 1
}
signature Summarize = "texts: list[str], labels: list[str] -> summary"
pipeline digest(reviews: list[str]) -> (labels: list[Mood], summary: str) {
  classified = map r in reviews: predict Classify(review = r) with (temperature = temperature, retries = 3)
  labels = classified.label
  summary = chain_of_thought Summarize(texts = reviews, labels = labels).summary
}
'''


def fp(source: str, pipeline: str = "digest") -> str:
    return dspex.compile_source(source).pipelines[pipeline].graph.fingerprint


SAME = {
    "whitespace": BASE.replace("\n  ", "\n      ").replace(" = ", "="),
    "comments": "# a comment\n" + BASE.replace("pipeline digest", "# the pipeline\npipeline digest"),
    "declaration order": BASE.replace('type Mood = enum("positive", "negative")\n', "") + 'type Mood = enum("positive", "negative")\n',
    "alias name": BASE.replace("Mood", "Feeling"),
    "intermediate names": BASE.replace("classified", "c1"),
    "inlined binding": BASE.replace("  labels = classified.label\n", "  labels = classified.label\n").replace(
        "labels = labels)", "labels = classified.label)"),
    "statement order": BASE.replace(
        "  labels = classified.label\n  summary = chain_of_thought Summarize(texts = reviews, labels = labels).summary\n",
        "  summary = chain_of_thought Summarize(texts = reviews, labels = labels).summary\n  labels = classified.label\n"),
    "argument order": BASE.replace("texts = reviews, labels = labels", "labels = labels, texts = reviews"),
    "option order": BASE.replace("temperature = temperature, retries = 3", "retries = 3, temperature = temperature"),
    "cot alias": BASE.replace("chain_of_thought Summarize", "cot Summarize"),
    "signature name": BASE.replace("Summarize", "Digest"),
}

DIFFERENT = {
    "instructions": BASE.replace("Classify the review.", "Classify the review!"),
    "field name": BASE.replace("review: str", "text: str").replace("review = r", "text = r"),
    "field type": BASE.replace("confidence: float", "confidence: int").replace("0 <= value <= 1", "value >= 0"),
    "description": BASE.replace('"the text"', '"the review"'),
    "constraint": BASE.replace("0 <= value <= 1", "0 <= value <= 2"),
    "module": BASE.replace("chain_of_thought Summarize", "predict Summarize"),
    "option value": BASE.replace("retries = 3", "retries = 4"),
    "option added": BASE.replace("retries = 3", "retries = 3, cache = false"),
    "var reference": BASE.replace("temperature = temperature,", "temperature = 0.2,"),
    "wiring": BASE.replace("texts = reviews, labels = labels", "texts = labels, labels = labels"),
    "enum values": BASE.replace('enum("positive", "negative")', 'enum("positive", "negative", "neutral")'),
    "output name": BASE.replace("summary: str)", "digest: str)").replace("  summary = ", "  digest = "),
    "input type": BASE.replace(
        "pipeline digest(reviews: list[str])", "pipeline digest(reviews: list[str], extra: int = 1)"),
}


@pytest.mark.parametrize("name", sorted(SAME))
def test_equivalent_programs_share_a_fingerprint(name: str) -> None:
    assert fp(SAME[name]) == fp(BASE)


@pytest.mark.parametrize("name", sorted(DIFFERENT))
def test_meaningful_edits_change_the_fingerprint(name: str) -> None:
    assert fp(DIFFERENT[name]) != fp(BASE)


def test_fingerprint_is_stable_across_compilations() -> None:
    assert fp(BASE) == fp(BASE)
    assert len(fp(BASE)) == 64


def test_node_fingerprints_reflect_their_inputs() -> None:
    a = dspex.compile_source(BASE).pipelines["digest"].graph
    b = dspex.compile_source(DIFFERENT["option value"]).pipelines["digest"].graph
    nodes_a = {n.kind: n.fingerprint for n in a if n.kind in ("map", "step")}
    nodes_b = {n.kind: n.fingerprint for n in b if n.kind in ("map", "step")}
    assert nodes_a["map"] != nodes_b["map"]          # the edited step
    assert nodes_a["step"] != nodes_b["step"]        # reads it, so its fingerprint moves too


def test_signature_fingerprint_ignores_name_but_not_fields() -> None:
    one = dspex.compile_source('signature A = "q -> a"').signatures["A"]
    two = dspex.compile_source('signature B = "q -> a"').signatures["B"]
    three = dspex.compile_source('signature A = "q -> a: int"').signatures["A"]
    assert one.fingerprint == two.fingerprint != three.fingerprint


def test_shared_example_compiles_with_fingerprints() -> None:
    prog = dspex.compile_source(REVIEWS, "reviews.dspex")
    assert set(prog.pipelines) == {"digest", "classify_one"}
    assert all(n.fingerprint for p in prog.pipelines.values() for n in p.graph)
