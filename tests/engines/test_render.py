"""Prompt rendering: the system message (instructions, fields, answer format), the inputs, the JSON schema
of the answer and the re-ask after a validation failure."""
from __future__ import annotations

from dspex.engines.base import ValidationError
from dspex.engines.render import (answer_format, json_schema, output_fields, reask_messages, render_messages,
                                  render_system, render_user)
from dspex.ir import expr as ir
from dspex.ir.program import Field, Signature
from dspex.ir.types import (ANY, BOOL, FLOAT, INT, STR, DictOf, EnumOf, ListOf, OptionalOf, Record, RecordField)
from dspex.lm.base import Message

CITATION = Record("Citation", (RecordField("source", STR, "where it comes from"), RecordField("page", OptionalOf(INT))))
CLASSIFY = Signature(
    "Classify", "Classify the sentiment of a {{kind}} review. Tone: {{tone}}.",
    (Field("review", STR, "the review text"), Field("lang", STR, default="en", has_default=True)),
    (Field("label", EnumOf(("positive", "negative"))),
     Field("confidence", FLOAT, "how sure", constraint=ir.Compare(("<=", "<="), (ir.Lit(0), ir.Value(), ir.Lit(1))))),
    ("kind", "tone"))


def test_system_message_lists_instructions_fields_and_format() -> None:
    text = render_system(CLASSIFY, "predict", {"kind": "product", "tone": ["dry", 1]})
    assert text == (
        "Classify the sentiment of a product review. Tone: [\"dry\", 1].\n"
        "\n"
        "Your input fields are:\n"
        "- `review` (str): the review text\n"
        "- `lang` (str)\n"
        "\n"
        "Your output fields are:\n"
        "- `label` (enum(\"positive\", \"negative\"))\n"
        "- `confidence` (float): how sure (must satisfy: 0 <= value <= 1)\n"
        "\n"
        "Reply with a JSON object with keys `label`, `confidence`, and nothing else.")


def test_unknown_vars_stay_as_written() -> None:
    assert render_system(CLASSIFY, "predict", {}).startswith("Classify the sentiment of a {{kind}} review.")


def test_cot_asks_for_reasoning_first() -> None:
    assert [f.name for f in output_fields(CLASSIFY, "chain_of_thought")] == ["reasoning", "label", "confidence"]
    text = render_system(CLASSIFY, "chain_of_thought", {})
    assert "- `reasoning` (str): think step by step before answering\n- `label`" in text
    assert text.endswith("keys `reasoning`, `label`, `confidence`, and nothing else.")
    assert [f.name for f in output_fields(CLASSIFY, "best_of")] == ["label", "confidence"]


def test_missing_instructions_get_a_default_and_records_are_spelled_out() -> None:
    sig = Signature("Cite", "", (Field("q", STR),), (Field("cites", ListOf(CITATION)),))
    text = render_system(sig, "predict", {})
    assert text.startswith("Given the fields `q`, produce the fields `cites`.\n")
    assert "- `cites` (list[{source: str, page: int?}])" in text


def test_user_message_holds_json_inputs_with_defaults() -> None:
    assert render_user(CLASSIFY, {"review": 'says "ok"\nthen ünïcode'}) == (
        'review: "says \\"ok\\"\\nthen ünïcode"\nlang: "en"')
    sig = Signature("S", "", (Field("xs", ListOf(INT)), Field("d", DictOf(STR, ANY))), (Field("y", STR),))
    assert render_user(sig, {"xs": [1, 2], "d": {"a": None, "b": object}}) == (
        "xs: [1, 2]\nd: {\"a\": null, \"b\": \"<class 'object'>\"}")


def test_render_messages_is_system_then_user() -> None:
    messages = render_messages(CLASSIFY, "predict", {"review": "r"}, {"kind": "k", "tone": "t"})
    assert [m.role for m in messages] == ["system", "user"]
    assert messages[1].content == 'review: "r"\nlang: "en"'


def test_json_schema_covers_every_type() -> None:
    sig = Signature("All", "", (Field("q", STR),), (
        Field("s", STR, "text"), Field("i", INT), Field("f", FLOAT), Field("b", BOOL),
        Field("e", EnumOf(("a", "b"))), Field("l", ListOf(OptionalOf(INT))), Field("d", DictOf(STR, BOOL)),
        Field("c", CITATION), Field("any", ANY)))
    assert json_schema(sig, "chain_of_thought") == {
        "title": "All", "type": "object", "additionalProperties": False,
        "required": ["reasoning", "s", "i", "f", "b", "e", "l", "d", "c", "any"],
        "properties": {
            "reasoning": {"type": "string", "description": "think step by step before answering"},
            "s": {"type": "string", "description": "text"},
            "i": {"type": "integer"},
            "f": {"type": "number"},
            "b": {"type": "boolean"},
            "e": {"type": "string", "enum": ["a", "b"]},
            "l": {"type": "array", "items": {"anyOf": [{"type": "integer"}, {"type": "null"}]}},
            "d": {"type": "object", "additionalProperties": {"type": "boolean"}},
            "c": {"title": "Citation", "type": "object", "additionalProperties": False, "required": ["source", "page"],
                  "properties": {"source": {"type": "string", "description": "where it comes from"},
                                 "page": {"anyOf": [{"type": "integer"}, {"type": "null"}]}}},
            "any": {},
        }}
    assert list(json_schema(CLASSIFY, "predict")["properties"]) == ["label", "confidence"]


def test_reask_feeds_back_the_answer_and_the_error() -> None:
    first = render_messages(CLASSIFY, "predict", {"review": "r"}, {})
    error = ValidationError("confidence", 1.7, "expected a value <= 1")
    fields = output_fields(CLASSIFY, "predict")
    messages = reask_messages(first, '{"label": "positive", "confidence": 1.7}', error, fields)
    assert messages[:2] == first
    assert messages[2] == Message("assistant", '{"label": "positive", "confidence": 1.7}')
    assert messages[3] == Message("user", "That answer is not valid: confidence: expected a value <= 1, got 1.7. "
                                          f"Fix it. {answer_format(fields)}")
