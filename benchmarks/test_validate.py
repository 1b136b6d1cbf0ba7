"""Validation speed (issue "compiled hot path"): one record-shaped set of outputs, already correct, validated by
the compiled twin of ``dspex.native.validate``, its Python twin, pydantic and msgspec.

The fields: ``answer: str``, ``confidence: float where 0 <= value <= 1``, ``tags: list[str] where len(value) <= 5``
and ``label: enum("a", "b", "c")``. Every side gets the same dict (decoded from JSON, as an LM's outputs are)
and checks the same rules: pydantic a TypedDict with ``Annotated[float, Field(ge=0, le=1)]``,
``Annotated[list[str], Field(max_length=5)]`` and a ``Literal``; msgspec the equivalent ``Struct`` with ``Meta``
bounds, its fastest target (``msgspec.convert`` to a TypedDict costs several times more).

- ``validate-record``: the C twin (target <= 0.7 of pydantic) and the Python twin (for reference, no target)
  against ``pydantic.TypeAdapter(TD).validate_python``.
- ``validate-record-msgspec``: the C twin again against ``msgspec.convert(d, Struct)``, the goal (no target);
  a group of its own, since every dspex benchmark of a group is compared with every competitor of it.

A round validates the dict ``ITEMS`` times through ``map`` (no Python loop around the calls, on every side), so
the per-item figures are the cost of one call. Outside the timed part each side is checked to return the input's
values and to reject an out-of-range confidence and a sixth tag. Run with ``python -m pytest
benchmarks/test_validate.py -q --no-cov``; ``DSPEX_BENCH_VALIDATE_ROUNDS`` sets the rounds (default 100).
"""
from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable
from itertools import repeat
from types import ModuleType
from typing import Annotated, Any, Literal

import msgspec
import pydantic
import pytest
from typing_extensions import TypedDict

from dspex.engines.base import ValidationError
from dspex.ir import expr as ir
from dspex.ir.program import Field
from dspex.ir.types import FLOAT, STR, EnumOf, ListOf
from dspex.native import twin

__all__ = ["FIELDS", "ITEMS", "RECORD", "ROUNDS"]

ITEMS = 1000
ROUNDS = int(os.environ.get("DSPEX_BENCH_VALIDATE_ROUNDS", "100"))
TARGET = 0.7

V = ir.Value()
FIELDS = (
    Field("answer", STR),
    Field("confidence", FLOAT, constraint=ir.Compare(("<=", "<="), (ir.Lit(0), V, ir.Lit(1)))),
    Field("tags", ListOf(STR), constraint=ir.Compare(("<=",), (ir.Call("len", (V,)), ir.Lit(5)))),
    Field("label", EnumOf(("a", "b", "c"))),
)
# Decoded from JSON, as an LM's outputs are: its keys are equal to the field names but not the same objects.
RECORD = json.loads('{"answer": "Paris is the capital of France.", "confidence": 0.9, "tags": ["geography", "europe"],'
                    ' "label": "b"}')
INVALID = [{**RECORD, "confidence": 1.5}, {**RECORD, "tags": ["t"] * 6}]


class PydanticRecord(TypedDict):
    answer: str
    confidence: Annotated[float, pydantic.Field(ge=0, le=1)]
    tags: Annotated[list[str], pydantic.Field(max_length=5)]
    label: Literal["a", "b", "c"]


class MsgspecRecord(msgspec.Struct):
    answer: str
    confidence: Annotated[float, msgspec.Meta(ge=0, le=1)]
    tags: Annotated[list[str], msgspec.Meta(max_length=5)]
    label: Literal["a", "b", "c"]


def _batch(fn: Callable[..., Any], *extra: Any) -> Callable[[], object]:
    """A round: ``fn(RECORD, *extra)`` ``ITEMS`` times, driven by ``map`` so that no Python loop is timed."""
    if extra:
        (arg,) = extra
        return lambda: deque(map(fn, repeat(RECORD, ITEMS), repeat(arg, ITEMS)), maxlen=0)
    return lambda: deque(map(fn, repeat(RECORD, ITEMS)), maxlen=0)


def _run(benchmark: Any, fn: Callable[..., Any], *extra: Any) -> None:
    benchmark.pedantic(_batch(fn, *extra), rounds=ROUNDS, iterations=1, warmup_rounds=2)


def _ours(kind: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    impl: ModuleType = twin("validate", kind)  # ImportError (a failure) when the compiled twin was not built
    validate: Callable[[dict[str, Any]], dict[str, Any]] = impl.compile_validator(FIELDS).validate
    assert validate(RECORD) == RECORD
    for bad in INVALID:
        with pytest.raises(ValidationError):
            validate(bad)
    return validate


def _pydantic() -> Callable[[dict[str, Any]], Any]:
    validate: Callable[[dict[str, Any]], Any] = pydantic.TypeAdapter(PydanticRecord).validate_python
    assert validate(RECORD) == RECORD
    for bad in INVALID:
        with pytest.raises(pydantic.ValidationError):
            validate(bad)
    return validate


def _msgspec() -> Callable[[dict[str, Any], type], Any]:
    convert: Callable[[dict[str, Any], type], Any] = msgspec.convert
    assert msgspec.structs.asdict(convert(RECORD, MsgspecRecord)) == RECORD
    for bad in INVALID:
        with pytest.raises(msgspec.ValidationError):
            convert(bad, MsgspecRecord)
    return convert


# -- validate-record ----------------------------------------------------------------------------------------------

@pytest.mark.benchmark(group="validate-record")
def test_dspex_validate_c(benchmark: Any) -> None:
    validate = _ours("c")
    benchmark.extra_info.update(side="dspex", items=ITEMS, unit="validation", target=TARGET,
                                competitor="pydantic.TypeAdapter", variant="compiled twin (validate_c)")
    _run(benchmark, validate)


@pytest.mark.benchmark(group="validate-record")
def test_dspex_validate_py(benchmark: Any) -> None:
    validate = _ours("py")
    benchmark.extra_info.update(side="dspex", items=ITEMS, unit="validation", variant="python twin")
    _run(benchmark, validate)


@pytest.mark.benchmark(group="validate-record")
def test_pydantic_validate(benchmark: Any) -> None:
    validate = _pydantic()
    benchmark.extra_info.update(side="competitor", competitor=f"pydantic {pydantic.VERSION} TypeAdapter",
                                items=ITEMS, unit="validation", variant="TypeAdapter(TypedDict).validate_python")
    _run(benchmark, validate)


# -- validate-record-msgspec -----------------------------------------------------------------------------------

@pytest.mark.benchmark(group="validate-record-msgspec")
def test_dspex_validate_c_vs_msgspec(benchmark: Any) -> None:
    validate = _ours("c")
    benchmark.extra_info.update(side="dspex", items=ITEMS, unit="validation", competitor="msgspec.convert",
                                variant="goal")
    _run(benchmark, validate)


@pytest.mark.benchmark(group="validate-record-msgspec")
def test_msgspec_convert(benchmark: Any) -> None:
    convert = _msgspec()
    benchmark.extra_info.update(side="competitor", competitor=f"msgspec {msgspec.__version__} convert",
                                items=ITEMS, unit="validation", variant="msgspec.convert(d, Struct)")
    _run(benchmark, convert, MsgspecRecord)
