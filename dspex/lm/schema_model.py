"""A pydantic model from a JSON schema, for libraries (instructor) that take a model rather than a schema.

Covers the subset DSPex emits for signature outputs: objects with properties (nested objects too), string,
integer, number, boolean, arrays, string enums, ``const``, nullable types (``["string", "null"]`` or
``anyOf`` with ``null``), ``$ref`` into ``$defs``, and the numeric, length and pattern constraints. Fields
are addressed by alias, so any property name works (``json``, ``model_config``, ``_x``); dump with
``by_alias=True`` to get the schema's names back.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Mapping, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

__all__ = ["model_from_schema"]

_SCALARS: dict[str, Any] = {"string": str, "integer": int, "number": float, "boolean": bool, "null": type(None)}
_CONSTRAINTS = {"minimum": "ge", "maximum": "le", "exclusiveMinimum": "gt", "exclusiveMaximum": "lt",
                "minLength": "min_length", "maxLength": "max_length", "minItems": "min_length",
                "maxItems": "max_length", "pattern": "pattern"}
_CONFIG = ConfigDict(populate_by_name=True)


def model_from_schema(schema: Mapping[str, Any], name: str = "Output") -> type[BaseModel]:
    """The model whose instances are exactly the objects ``schema`` accepts (within the subset above)."""
    return _object(schema, name, schema.get("$defs") or schema.get("definitions") or {})


def _object(schema: Mapping[str, Any], name: str, defs: Mapping[str, Any]) -> type[BaseModel]:
    properties: Mapping[str, Any] = schema.get("properties") or {}
    required = set(schema.get("required") or ())
    fields: dict[str, Any] = {}
    for i, (key, sub) in enumerate(properties.items()):
        tp = _type(sub, f"{name}_{key}", defs)
        if key in required:
            fields[f"f{i}"] = (tp, Field(alias=key))
        else:
            fields[f"f{i}"] = (Union[tp, None], Field(None, alias=key))
    model: type[BaseModel] = create_model(name, __config__=_CONFIG, **fields)
    if schema.get("description"):
        model.__doc__ = schema["description"]
    return model


def _type(schema: Mapping[str, Any], name: str, defs: Mapping[str, Any]) -> Any:
    """The Python type for one schema node, constraints attached with ``Annotated``."""
    if "$ref" in schema:
        ref = str(schema["$ref"]).rsplit("/", 1)[-1]
        return _type(defs[ref], ref, defs)
    kinds = schema.get("type")
    if "enum" in schema or "const" in schema:
        values = tuple(schema["enum"]) if "enum" in schema else (schema["const"],)
        tp: Any = Literal[values]  # type: ignore[valid-type]
        nullable = kinds == "null" or (isinstance(kinds, list) and "null" in kinds)
        return Union[tp, None] if nullable and None not in values else tp
    if "anyOf" in schema or "oneOf" in schema:
        options = schema.get("anyOf") or schema.get("oneOf") or ()
        return Union[tuple(_type(o, f"{name}_{i}", defs) for i, o in enumerate(options))]
    if isinstance(kinds, list):
        return Union[tuple(_type({**schema, "type": k}, name, defs) if k != "null" else None for k in kinds)]
    if kinds == "object":
        if schema.get("properties"):
            tp = _object(schema, name, defs)
        else:
            extra = schema.get("additionalProperties")
            tp = dict[str, _type(extra, name, defs) if isinstance(extra, Mapping) else Any]  # type: ignore[misc]
    elif kinds == "array":
        items = schema.get("items")
        tp = list[_type(items, f"{name}_item", defs) if isinstance(items, Mapping) else Any]  # type: ignore[misc]
    else:
        tp = _SCALARS.get(str(kinds), Any)
    constraints = {arg: schema[key] for key, arg in _CONSTRAINTS.items() if key in schema}
    if schema.get("description"):
        constraints["description"] = schema["description"]
    return Annotated[tp, Field(**constraints)] if constraints else tp
