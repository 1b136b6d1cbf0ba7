"""DSPex signatures as real ``dspy.Signature`` classes, and back.

The ``dspy`` engine runs a step through the class ``to_dspy`` builds, so it must carry the same fields,
order, types, descriptions and instructions; ``from_dspy`` brings a DSPy user's classes into DSPex.
DSPy is imported only when one of them is called: the rest of DSPex works without it.
"""
from __future__ import annotations

import types
import typing
from typing import TYPE_CHECKING, Any

from dspex.ir.program import Field, Signature
from dspex.ir.types import DictOf, ListOf, OptionalOf, Record, RecordField, Type, from_python, to_python

if TYPE_CHECKING:
    import dspy
    import pydantic

__all__ = ["to_dspy", "from_dspy"]

# Record models by the record's full description (name included), so a record maps to one class.
_MODELS: dict[str, type[pydantic.BaseModel]] = {}


def to_dspy(sig: Signature) -> type[dspy.Signature]:
    """A ``dspy.Signature`` subclass named ``sig.name``: inputs then outputs, records as pydantic models.

    Empty instructions let DSPy write its default ones; ``{{var}}`` placeholders are passed through as written.
    ValueError when DSPy cannot hold it (a field or record field named ``_x``, or one shadowing DSPy's).
    """
    dspy = _import_dspy()
    fields: dict[str, tuple[Any, Any]] = {}
    try:
        for f in sig.inputs:
            fields[f.name] = (_annotation(f.type), dspy.InputField(**_field_args(f)))
        for f in sig.outputs:
            fields[f.name] = (_annotation(f.type), dspy.OutputField(**_field_args(f)))
        return dspy.make_signature(fields, sig.instructions or None, signature_name=sig.name)
    except (TypeError, RuntimeError) as e:  # pydantic and DSPy refuse some names DSPex allows ('_x', 'fields')
        raise ValueError(f"signature '{sig.name}' cannot be a dspy.Signature: {e}") from e


def from_dspy(cls: type[dspy.Signature]) -> Signature:
    """The DSPex signature of a ``dspy.Signature`` class; ValueError names a field DSPex cannot type."""
    inputs = tuple(_field(cls, name, info) for name, info in cls.input_fields.items())
    outputs = tuple(_field(cls, name, info) for name, info in cls.output_fields.items())
    instructions = cls.instructions
    if instructions == _default_instructions(cls):
        instructions = ""
    return Signature(cls.__name__, instructions, inputs, outputs)


def _import_dspy() -> types.ModuleType:
    try:
        import dspy
    except ImportError as e:
        raise ImportError("DSPy is not installed; the dspy interop needs it: pip install dspy") from e
    return dspy


def _field_args(f: Field) -> dict[str, Any]:
    args: dict[str, Any] = {}
    if f.desc:
        args["desc"] = f.desc
    if f.has_default:
        args["default"] = f.default
    return args


def _annotation(t: Type) -> Any:
    return to_python(t, {r.name: _record_model(r) for r in _records(t)})


def _records(t: Type) -> typing.Iterator[Record]:
    """The outermost records inside ``t`` (their own nested records are built with them)."""
    if isinstance(t, Record):
        yield t
    elif isinstance(t, ListOf):
        yield from _records(t.item)
    elif isinstance(t, DictOf):
        yield from _records(t.key)
        yield from _records(t.value)
    elif isinstance(t, OptionalOf):
        yield from _records(t.inner)


def _record_model(rec: Record) -> type[pydantic.BaseModel]:
    key = repr(rec)  # records compare without their name, and constraints may be unhashable
    model = _MODELS.get(key)
    if model is None:
        import pydantic

        fields: dict[str, Any] = {
            f.name: (_annotation(f.type), pydantic.Field(description=f.desc)) for f in rec.fields
        }
        model = _MODELS[key] = pydantic.create_model(rec.name, **fields)
    return model


def _default_instructions(cls: type[dspy.Signature]) -> str:
    """The instructions DSPy writes when it is given none (``dspy.signatures.signature._default_instructions``)."""
    inputs = ", ".join(f"`{name}`" for name in cls.input_fields)
    outputs = ", ".join(f"`{name}`" for name in cls.output_fields)
    return f"Given the fields {inputs}, produce the fields {outputs}."


def _field(cls: type[dspy.Signature], name: str, info: pydantic.fields.FieldInfo) -> Field:
    t = _type_of(info.annotation)
    if t is None:
        raise ValueError(f"field '{name}' of {cls.__name__}: DSPex has no type for {info.annotation!r}")
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    desc = extra.get("desc")
    if not isinstance(desc, str) or desc == f"${{{name}}}":  # "${name}" is DSPy's "no description"
        desc = None
    has_default = not info.is_required()
    return Field(name, t, desc, info.get_default(call_default_factory=True) if has_default else None, has_default)


def _type_of(annotation: Any) -> Type | None:
    """``types.from_python``, extended to pydantic models (as records) wherever they are nested."""
    import pydantic

    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        fields = []
        for name, info in annotation.model_fields.items():
            t = _type_of(info.annotation)
            if t is None:
                return None
            fields.append(RecordField(name, t, info.description))
        return Record(annotation.__name__, tuple(fields))
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin not in (list, dict, typing.Union, types.UnionType):
        return from_python(annotation)
    parts: list[Type] = []
    for arg in args:
        if arg is not type(None):
            part = _type_of(arg)
            if part is None:
                return None
            parts.append(part)
    if origin is list and len(args) == len(parts) == 1:
        return ListOf(parts[0])
    if origin is dict and len(args) == len(parts) == 2:
        return DictOf(parts[0], parts[1])
    if origin not in (list, dict) and len(args) == 2 and len(parts) == 1:
        return OptionalOf(parts[0])
    return None
