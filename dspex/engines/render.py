"""Turn a step into chat messages and a JSON schema for its outputs, and a failed answer into a re-ask.

The system message carries what does not change between calls of one step (instructions, fields, the
answer format), so the engine renders it once per signature, module and var values; the user message
carries only the inputs.
"""
from __future__ import annotations

import json
import re
from typing import Any, Mapping

from dspex.engines.base import ValidationError
from dspex.ir.expr import render_expr
from dspex.ir.modules import MODULES
from dspex.ir.program import Field, Signature
from dspex.ir.types import (AnyType, DictOf, EnumOf, ListOf, NoneType, OptionalOf, Prim, Record, Type, render)
from dspex.lm.base import Message

__all__ = ["output_fields", "render_system", "render_user", "render_messages", "json_schema", "reask_messages",
           "answer_format"]

_VAR = re.compile(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}")
_EXTRA_DESCS = {"reasoning": "think step by step before answering"}
_dumps = json.JSONEncoder(ensure_ascii=False, default=str).encode  # one encoder: json.dumps(**kw) builds one a call
_JSON_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}


def output_fields(signature: Signature, module: str) -> tuple[Field, ...]:
    """The fields the LM must produce: the module's extras (``reasoning`` for cot) first, then the outputs."""
    extras = tuple(Field(name, t, _EXTRA_DESCS.get(name)) for name, t in MODULES[module].extra_outputs)
    return extras + signature.outputs


def answer_format(fields: tuple[Field, ...]) -> str:
    keys = ", ".join(f"`{f.name}`" for f in fields)
    return f"Reply with a JSON object with keys {keys}, and nothing else."


def render_system(signature: Signature, module: str, var_values: Mapping[str, Any]) -> str:
    """Instructions (with ``{{var}}`` filled in), the fields with types and descriptions, the answer format."""
    outputs = output_fields(signature, module)
    instructions = _VAR.sub(lambda m: _var_text(var_values, m), signature.instructions).strip()
    if not instructions:
        ins = ", ".join(f"`{f.name}`" for f in signature.inputs)
        outs = ", ".join(f"`{f.name}`" for f in signature.outputs)
        instructions = f"Given the fields {ins}, produce the fields {outs}."
    return "\n".join([
        instructions, "", "Your input fields are:", *map(_field_line, signature.inputs),
        "", "Your output fields are:", *map(_field_line, outputs), "", answer_format(outputs)])


def _var_text(var_values: Mapping[str, Any], m: re.Match[str]) -> str:
    if m.group(1) not in var_values:
        return m.group(0)
    value = var_values[m.group(1)]
    return value if isinstance(value, str) else _dumps(value)


def _field_line(f: Field) -> str:
    line = f"- `{f.name}` ({_type_text(f.type)})"
    if f.desc:
        line += f": {f.desc}"
    if f.constraint is not None:
        line += f" (must satisfy: {render_expr(f.constraint)})"
    return line


def _type_text(t: Type) -> str:
    return render(t, expand_records=True)


def render_user(signature: Signature, inputs: Mapping[str, Any]) -> str:
    """One ``name: <JSON value>`` line per input, in signature order (defaults fill the ones not given)."""
    return "\n".join([f"{f.name}: {_dumps(inputs[f.name] if f.name in inputs else f.default)}"
                      for f in signature.inputs])


def render_messages(signature: Signature, module: str, inputs: Mapping[str, Any],
                    var_values: Mapping[str, Any]) -> tuple[Message, ...]:
    return (Message("system", render_system(signature, module, var_values)),
            Message("user", render_user(signature, inputs)))


def reask_messages(messages: tuple[Message, ...], answer: str, error: ValidationError,
                   fields: tuple[Field, ...]) -> tuple[Message, ...]:
    """The original messages, the rejected answer, and a request to fix the error it had."""
    fix = f"That answer is not valid: {error}. Fix it. {answer_format(fields)}"
    return messages + (Message("assistant", answer), Message("user", fix))


def json_schema(signature: Signature, module: str) -> dict[str, Any]:
    """A JSON Schema for the answer object: every output required, no other keys (``reasoning`` first for cot)."""
    fields = output_fields(signature, module)
    return _object_schema(signature.name, [(f.name, f.type, f.desc) for f in fields])


def _object_schema(title: str, fields: list[tuple[str, Type, str | None]]) -> dict[str, Any]:
    properties = {}
    for name, t, desc in fields:
        schema = _schema(t)
        if desc:
            schema = {**schema, "description": desc}
        properties[name] = schema
    return {"title": title, "type": "object", "properties": properties, "required": [f[0] for f in fields],
            "additionalProperties": False}


def _schema(t: Type) -> dict[str, Any]:
    if isinstance(t, Prim):
        return {"type": _JSON_TYPES[t.name]}
    if isinstance(t, EnumOf):
        return {"type": "string", "enum": list(t.values)}
    if isinstance(t, ListOf):
        return {"type": "array", "items": _schema(t.item)}
    if isinstance(t, DictOf):
        return {"type": "object", "additionalProperties": _schema(t.value)}
    if isinstance(t, OptionalOf):
        return {"anyOf": [_schema(t.inner), {"type": "null"}]}
    if isinstance(t, Record):
        return _object_schema(t.name, [(f.name, f.type, f.desc) for f in t.fields])
    if isinstance(t, NoneType):
        return {"type": "null"}
    assert isinstance(t, AnyType), t
    return {}
