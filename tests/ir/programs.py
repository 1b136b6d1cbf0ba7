"""Realistic programs built by hand from the IR classes, so IR tests need no compiler front end.

``reviews()`` mirrors SPEC §1 and §3: an enum, a record with a constraint, block and string-form
signatures with defaults and ``where`` rules, an openai lm behind a fallback, a ranged var, a tool, and
two pipelines: ``digest`` (map, branch, merge, expr and output nodes) and ``triage``, which calls it.
"""
from __future__ import annotations

from dspex.ir.expr import (Attr, BoolOp, Call, Compare, Duration, Item, ListExpr, Lit, Not, Ref, Value,
                           VarRef)
from dspex.ir.graph import Graph, Node
from dspex.ir.program import Field, LMDecl, Pipeline, Program, Range, Signature, ToolDecl, VarDecl
from dspex.ir.types import BOOL, FLOAT, INT, STR, EnumOf, ListOf, OptionalOf, Record, RecordField

__all__ = ["SENTIMENT", "CITATION", "reviews", "assert_same_program"]

FILE = "reviews.dspex"
SENTIMENT = EnumOf(("positive", "negative", "neutral"))
CITATION = Record("Citation", (
    RecordField("source", STR, "where the fact comes from"),
    RecordField("quote", STR),
    RecordField("page", OptionalOf(INT), None, Compare((">=",), (Value(), Lit(1)))),
))
UNIT = Compare(("<=", "<="), (Lit(0), Value(), Lit(1)))

CLASSIFY = Signature(
    "Classify", "Classify the sentiment of a product review. Be {{style}}.",
    inputs=(Field("review", STR, "the review text"),
            Field("language", STR, "ISO code", "en", True, Call("matches", (Value(), Lit("[a-z]{2}"))))),
    outputs=(Field("label", SENTIMENT),
             Field("confidence", FLOAT, "how sure, from 0 to 1", constraint=UNIT),
             Field("citations", ListOf(CITATION), constraint=Compare(("<=",), (Call("len", (Value(),)), Lit(3))))),
    instruction_vars=("style",),
)
SUMMARIZE = Signature(
    "Summarize", "Given the fields `texts`, `labels`, produce the fields `summary`.",
    inputs=(Field("texts", ListOf(STR)), Field("labels", ListOf(STR)), Field("tags", ListOf(STR), None, [], True)),
    outputs=(Field("summary", STR, constraint=BoolOp("and", (
        Compare(("!=",), (Value(), Lit(""))), Not(Compare((">",), (Call("len", (Value(),)), Lit(2000))))))),),
)
FAST = LMDecl("fast", "openai", (("base_url", "http://127.0.0.1:8080/v1"), ("model", "smollm2"),
                                 ("api_key_env", "OPENAI_API_KEY"), ("timeout", Duration(30000)),
                                 ("temperature", 0.0), ("max_tokens", 256)))
LOCAL = LMDecl("local", "local", (("model", "smollm2"), ("n_ctx", 2048)))
DEFAULT = LMDecl("default", "fallback", (), ("fast", "local"))
TEMPERATURE = VarDecl("temperature", FLOAT, 0.2, Range(0.0, 1.0), "sampling temperature")
K = VarDecl("k", INT, 3, Range(1, 10))
STYLE = VarDecl("style", STR, "formal", ("formal", "casual"))
SEARCH = ToolDecl("search", (Field("query", STR), Field("k", INT, None, 3, True)), ListOf(STR),
                  "mypkg.retrieval:search")


CLASSIFY_RESULT = Record("Classify", tuple(RecordField(f.name, f.type, f.desc, f.constraint)
                                           for f in CLASSIFY.outputs))
DIGEST_RESULT = Record("digest", (RecordField("labels", ListOf(SENTIMENT)), RecordField("summary", STR)))


def _digest() -> Pipeline:
    r, c = Item(), Ref("classified")
    nodes = (
        Node("reviews", "input", ListOf(STR), file=FILE, line=21, col=17),
        Node("classified", "map", ListOf(CLASSIFY_RESULT), module="predict", target="Classify",
             target_kind="signature", args=(("review", r),),
             options=(("temperature", VarRef("temperature")), ("timeout", Lit(Duration(500))),
                      ("engine", Lit("native")), ("retries", Lit(3))),
             over=Ref("reviews"), item="r", deps=("reviews",), vars=("temperature",), fingerprint="f-classified",
             file=FILE, line=22, col=3),
        Node("labels", "expr", ListOf(SENTIMENT), args=(("value", Attr(c, "label")),), deps=("classified",),
             fingerprint="f-labels", file=FILE, line=23, col=3),
        Node("many", "branch", BOOL, args=(("cond", Compare((">", "<="), (
            Call("len", (Ref("reviews"),)), Lit(1), VarRef("k")))),), deps=("reviews",), vars=("k",),
            fingerprint="f-many", file=FILE, line=24, col=3),
        Node("summary@then", "step", STR, module="chain_of_thought", target="Summarize", target_kind="signature",
             args=(("texts", Ref("reviews")), ("labels", Ref("labels")), ("tags", ListExpr((Lit("a"), Lit("b"))))),
             options=(("lm", Lit("fast")), ("cache", Lit(False))), select="summary", guard=(("many", True),),
             deps=("reviews", "labels"), fingerprint="f-summary-then", file=FILE, line=25, col=5),
        Node("summary@else", "expr", STR, args=(("value", Lit("one review")),), guard=(("many", False),),
             fingerprint="f-summary-else", file=FILE, line=27, col=5),
        Node("summary", "merge", STR, branch="many",
             args=(("then", Ref("summary@then")), ("else", Ref("summary@else"))),
             deps=("many", "summary@then", "summary@else"), fingerprint="f-summary", file=FILE, line=24, col=3),
        Node("labels", "output", ListOf(SENTIMENT), args=(("value", Ref("labels")),), deps=("labels",),
             fingerprint="f-out-labels", file=FILE, line=21, col=47),
        Node("summary", "output", STR, args=(("value", Ref("summary")),), deps=("summary",),
             fingerprint="f-out-summary", file=FILE, line=21, col=73),
    )
    return Pipeline("digest", (Field("reviews", ListOf(STR)),),
                    (Field("labels", ListOf(SENTIMENT)), Field("summary", STR)),
                    Graph(nodes, "fp-digest"),
                    signatures={"Classify": CLASSIFY, "Summarize": SUMMARIZE},
                    vars={"temperature": TEMPERATURE, "k": K, "style": STYLE},
                    lms={"fast": FAST, "default": DEFAULT, "local": LOCAL})


def _triage(digest: Pipeline) -> Pipeline:
    nodes = (
        Node("reviews", "input", ListOf(STR), file=FILE, line=40, col=17),
        Node("urgent", "input", BOOL, file=FILE, line=40, col=37),
        Node("found", "step", ListOf(STR), module="call", target="search", target_kind="tool",
             args=(("query", Lit("refund")), ("k", VarRef("k"))), deps=(), vars=("k",), fingerprint="f-found",
             file=FILE, line=41, col=3),
        Node("d", "step", DIGEST_RESULT, module="call", target="digest", target_kind="pipeline",
             args=(("reviews", Ref("reviews")),), options=(("on_error", Lit("none")),), deps=("reviews",),
             fingerprint="f-d", file=FILE, line=42, col=3),
        Node("summary", "output", STR, args=(("value", Ref("d", ("summary",))),), deps=("d",),
             fingerprint="f-out", file=FILE, line=40, col=60),
        Node("hits", "output", ListOf(STR), args=(("value", Ref("found")),), deps=("found",),
             fingerprint="f-out-hits", file=FILE, line=40, col=75),
    )
    return Pipeline("triage",
                    (Field("reviews", ListOf(STR)), Field("urgent", BOOL, "page someone?", False, True)),
                    (Field("summary", STR), Field("hits", ListOf(STR))),
                    Graph(nodes, "fp-triage"),
                    tools={"search": SEARCH}, pipelines={"digest": digest}, vars={"k": K})


def reviews() -> Program:
    """The program; ``triage`` is listed before the ``digest`` it calls, so decoding must link out of order."""
    digest = _digest()
    return Program(
        types={"Sentiment": SENTIMENT, "Citation": CITATION, "Labels": ListOf(SENTIMENT)},
        signatures={"Classify": CLASSIFY, "Summarize": SUMMARIZE},
        lms={"fast": FAST, "local": LOCAL, "default": DEFAULT},
        vars={"temperature": TEMPERATURE, "k": K, "style": STYLE},
        tools={"search": SEARCH},
        pipelines={"triage": _triage(digest), "digest": digest},
        source_sha256="ab" * 32,
    )


def assert_same_program(a: Program, b: Program) -> None:
    """Deep, exact equality: ``Program.__eq__`` compares fingerprints and ``Pipeline.__eq__`` names and graph
    fingerprints, while ``repr`` shows everything, down to record names, int-vs-float and node positions."""
    for attr in ("types", "signatures", "lms", "vars", "tools", "pipelines"):
        assert list(getattr(a, attr)) == list(getattr(b, attr)), attr
        for name, value in getattr(a, attr).items():
            assert repr(getattr(b, attr)[name]) == repr(value), f"{attr}.{name}"
            assert getattr(b, attr)[name] == value, f"{attr}.{name}"
    assert a.source_sha256 == b.source_sha256
    assert repr(a) == repr(b)
