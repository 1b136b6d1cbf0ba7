"""JSON schema to pydantic model: the subset DSPex emits for signature outputs."""
from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from dspex.lm.schema_model import model_from_schema

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["label", "confidence", "tags", "count", "json", "inner", "point", "note", "scores"],
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1, "description": "how sure"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}},
        "count": {"type": ["integer", "null"]},
        "json": {"type": "boolean"},  # shadows a BaseModel attribute: fields go by alias
        "inner": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
        "point": {"$ref": "#/$defs/Point"},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "scores": {"type": "object", "additionalProperties": {"type": "integer"}},
        "extra": {"type": "string", "pattern": "^x"},
    },
    "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}},
}
GOOD: dict[str, Any] = {"label": "positive", "confidence": 0.5, "tags": ["a"], "count": None, "json": True,
                        "inner": {"a": 1}, "point": {"x": 1.5}, "note": None, "scores": {"k": 2}}


def test_valid_objects_round_trip_by_their_schema_names() -> None:
    model = model_from_schema(SCHEMA)
    assert model.model_validate(GOOD).model_dump(by_alias=True) == {**GOOD, "extra": None}


@pytest.mark.parametrize(("change", "where"), [
    ({"label": "great"}, "label"), ({"confidence": 2}, "confidence"), ({"tags": ["toolong"]}, "tags.0"),
    ({"inner": {}}, "inner.a"), ({"point": {"x": "far"}}, "point.x"), ({"scores": {"k": "many"}}, "scores.k"),
    ({"extra": "y"}, "extra"), ({"count": "lots"}, "count"),
])
def test_violations_are_rejected_at_their_path(change: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError) as caught:
        model_from_schema(SCHEMA).model_validate({**GOOD, **change})
    assert where in str(caught.value)


def test_missing_required_fields_are_rejected_and_optional_ones_default_to_none() -> None:
    model = model_from_schema({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
                               "required": ["a"]})
    assert model.model_validate({"a": "x"}).model_dump(by_alias=True) == {"a": "x", "b": None}
    with pytest.raises(ValidationError):
        model.model_validate({"b": 1})
