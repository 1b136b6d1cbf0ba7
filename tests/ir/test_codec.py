"""The IR codec: exact round trips (by hand and by Hypothesis), and malformed data failing as CodecError only."""
from __future__ import annotations

import copy
import math
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dspex.ir.codec import (CodecError, decode_expr, decode_program, decode_type, decode_value, encode_expr,
                            encode_program, encode_type, encode_value)
from dspex.ir.expr import (Attr, BoolOp, Call, Compare, Duration, Expr, Item, ListExpr, Lit, Not, Ref, Value,
                           VarRef)
from dspex.ir.graph import Graph, Node
from dspex.ir.program import Field, Pipeline, Program, Signature
from dspex.ir.types import (ANY, BOOL, FLOAT, INT, NONE, STR, DictOf, EnumOf, ListOf, OptionalOf, Record,
                            RecordField, Type)
from tests.ir.programs import assert_same_program, reviews


def wire(data: Any) -> Any:
    """What the artifact does to encoded data: through msgpack bytes and back."""
    return msgpack.unpackb(msgpack.packb(data, use_bin_type=True), raw=False, strict_map_key=True)


def plain(data: Any) -> bool:
    if isinstance(data, dict):
        return all(isinstance(k, str) and plain(v) for k, v in data.items())
    if isinstance(data, list):
        return all(plain(v) for v in data)
    return data is None or isinstance(data, (str, int, float, bool))


# -- the hand-built program -----------------------------------------------------------------------------

def test_program_round_trip_is_exact() -> None:
    program = reviews()
    encoded = encode_program(program)
    assert plain(encoded)
    assert_same_program(program, decode_program(encoded))
    assert_same_program(program, decode_program(wire(encoded)))


def test_objects_are_tagged() -> None:
    encoded = encode_program(reviews())
    assert encoded["k"] == "program"
    assert encoded["types"]["Citation"]["k"] == "record"
    assert encoded["pipelines"]["digest"]["graph"]["nodes"][1]["k"] == "node"


def test_callees_are_stored_by_name_and_relinked_in_any_order() -> None:
    encoded = encode_program(reviews())
    assert list(encoded["pipelines"]) == ["triage", "digest"]  # the caller comes first
    triage = encoded["pipelines"]["triage"]
    assert triage["pipelines"] == {"digest": {"k": "ref", "name": "digest"}}
    assert triage["tools"] == {"search": {"k": "ref", "name": "search"}}
    decoded = decode_program(wire(encoded))
    assert decoded.pipelines["triage"].pipelines["digest"] is decoded.pipelines["digest"]
    assert decoded.pipelines["digest"].signatures["Classify"] is decoded.signatures["Classify"]


def test_positions_record_names_and_number_kinds_survive() -> None:
    decoded = decode_program(wire(encode_program(reviews())))
    node = decoded.pipelines["digest"].graph.node("classified")
    assert (node.file, node.line, node.col) == ("reviews.dspex", 22, 3)
    citations = decoded.signatures["Classify"].output("citations")
    assert citations is not None and isinstance(citations.type, ListOf)
    assert isinstance(citations.type.item, Record) and citations.type.item.name == "Citation"
    k, temperature = decoded.vars["k"], decoded.vars["temperature"]
    assert type(k.default) is int and type(temperature.default) is float
    assert k.domain is not None and not isinstance(k.domain, tuple) and type(k.domain.lo) is int
    assert decoded.vars["style"].domain == ("formal", "casual")
    assert decoded.lms["fast"].arg("timeout") == Duration(30000)
    tags = decoded.signatures["Summarize"].input("tags")
    assert tags is not None and tags.default == [] and tags.has_default


def test_declarations_a_pipeline_does_not_share_travel_inline() -> None:
    program = reviews()
    private_sig = Signature("Classify", "A different contract.", (Field("x", STR),), (Field("y", INT),))
    helper = Pipeline("helper", (), (Field("n", INT),),
                      Graph((Node("n", "output", INT, args=(("value", Lit(1)),)),), "fp-helper"))
    caller = Pipeline("caller", (), (Field("n", INT),),
                      Graph((Node("h", "step", INT, module="call", target="helper", target_kind="pipeline"),), "fp-c"),
                      signatures={"Classify": private_sig}, pipelines={"helper": helper})
    program = Program(types=program.types, signatures=program.signatures, lms=program.lms, vars=program.vars,
                      tools=program.tools, pipelines={"caller": caller}, source_sha256=program.source_sha256)
    encoded = encode_program(program)
    assert encoded["pipelines"]["caller"]["signatures"]["Classify"]["k"] == "signature"
    assert encoded["pipelines"]["caller"]["pipelines"]["helper"]["k"] == "pipeline"
    assert_same_program(program, decode_program(wire(encoded)))


def test_empty_program() -> None:
    assert_same_program(Program(), decode_program(wire(encode_program(Program()))))


# -- generated types, expressions and values --------------------------------------------------------------

names = st.text(min_size=1, max_size=8)
scalars = (st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.floats(allow_nan=False)
           | st.text(max_size=10) | st.integers(0, 1 << 40).map(Duration))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.lists(inner, max_size=3).map(tuple),
                      max_leaves=10)
paths = st.lists(names, max_size=3).map(tuple)
leaf_exprs = (values.map(Lit) | st.just(Value()) | st.builds(Ref, names, paths) | st.builds(Item, paths)
              | st.builds(VarRef, names))


def _compound(inner: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
    some = st.lists(inner, min_size=1, max_size=3).map(tuple)
    operators = st.sampled_from(["==", "!=", "<", "<=", ">", ">=", "in"])
    compare = st.lists(inner, min_size=2, max_size=4).flatmap(
        lambda operands: st.lists(operators, min_size=len(operands) - 1, max_size=len(operands) - 1).map(
            lambda ops: Compare(tuple(ops), tuple(operands))))
    return (some.map(ListExpr) | st.builds(Attr, inner, names) | compare
            | st.builds(BoolOp, st.sampled_from(["and", "or"]), some) | inner.map(Not)
            | st.builds(Call, st.sampled_from(["len", "matches"]), some))


exprs = st.recursive(leaf_exprs, _compound, max_leaves=12)


def _compound_type(inner: st.SearchStrategy[Type]) -> st.SearchStrategy[Type]:
    field = st.builds(RecordField, names, inner, st.none() | st.text(max_size=10), st.none() | exprs)
    return (inner.map(ListOf) | st.builds(DictOf, inner, inner) | inner.map(OptionalOf)
            | st.builds(Record, names, st.lists(field, max_size=3).map(tuple)))


types = st.recursive(st.sampled_from([STR, INT, FLOAT, BOOL, ANY, NONE])
                     | st.lists(names, max_size=4).map(lambda v: EnumOf(tuple(v))), _compound_type, max_leaves=8)


@given(values)
def test_values_round_trip(v: Any) -> None:
    back = decode_value(wire(encode_value(v)))
    assert back == v and repr(back) == repr(v)


@given(types)
def test_types_round_trip(t: Type) -> None:
    back = decode_type(wire(encode_type(t)))
    assert back == t and repr(back) == repr(t)  # repr shows record names, which == ignores


@given(exprs)
def test_exprs_round_trip(e: Expr) -> None:
    back = decode_expr(wire(encode_expr(e)))
    assert back == e and repr(back) == repr(e)


def test_nan_and_negative_zero_survive() -> None:
    assert math.isnan(decode_value(wire(encode_value(math.nan))))
    assert math.copysign(1, decode_value(wire(encode_value(-0.0)))) == -1


@pytest.mark.parametrize("bad", [1 << 64, -(1 << 63) - 1, object(), {"a": 1}, {1, 2}, b"bytes", 1j])
def test_unencodable_values_raise_codec_error(bad: Any) -> None:
    with pytest.raises(CodecError):
        encode_value(bad)


def test_unencodable_ir_raises_codec_error() -> None:
    with pytest.raises(CodecError):
        encode_type(object())  # type: ignore[arg-type]
    with pytest.raises(CodecError):
        encode_expr(object())  # type: ignore[arg-type]
    with pytest.raises(CodecError):
        encode_type(Record("R", (RecordField("x", INT, None, "not an expr"),)))


# -- malformed data -------------------------------------------------------------------------------------------

def _mutated(path: tuple[Any, ...], value: Any) -> Any:
    data = encode_program(reviews())
    target = data
    for step in path[:-1]:
        target = target[step]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


_DELETE = object()
_NODE = ("pipelines", "digest", "graph", "nodes", 1)
_MALFORMED = {
    "root not a map": ((), None),
    "wrong root tag": (("k",), "pipeline"),
    "missing table": (("lms",), _DELETE),
    "unknown key": (("extra",), 1),
    "table not a map": (("types",), []),
    "unknown type tag": (("types", "Sentiment", "k"), "set"),
    "unknown primitive": (("signatures", "Classify", "inputs", 0, "type", "name"), "complex"),
    "enum value not a string": (("types", "Sentiment", "values", 0), 3),
    "field name not a string": (("signatures", "Classify", "inputs", 0, "name"), 7),
    "has_default not a bool": (("signatures", "Classify", "inputs", 1, "has_default"), 1),
    "line is a bool": (_NODE + ("line",), True),
    "line is a float": (_NODE + ("line",), 1.5),
    "unknown node kind": (_NODE + ("kind",), "loop"),
    "arg not a pair": (_NODE + ("args", 0), ["review"]),
    "args not a list": (_NODE + ("args",), {"review": 1}),
    "unknown expr tag": (_NODE + ("over", "k"), "lambda"),
    "expr missing key": (_NODE + ("over", "node"), _DELETE),
    "tag not a string": (_NODE + ("over", "k"), 5),
    "duration ms not int": (("lms", "fast", "args", 3, 1, "ms"), "30s"),
    "unknown literal tag": (("lms", "fast", "args", 3, 1, "k"), "set"),
    "unknown domain tag": (("vars", "k", "domain", "k"), "interval"),
    "ref to unknown signature": (("pipelines", "digest", "signatures", "Classify", "name"), "Nope"),
    "ref to unknown pipeline": (("pipelines", "triage", "pipelines", "digest", "name"), "nope"),
    "guard side not a bool": (("pipelines", "digest", "graph", "nodes", 4, "guard", 0, 1), "then"),
    "source sha not a string": (("source_sha256",), None),
}


@pytest.mark.parametrize("path,value", list(_MALFORMED.values()), ids=list(_MALFORMED))
def test_malformed_data_raises_codec_error(path: tuple[Any, ...], value: Any) -> None:
    data = None if not path else _mutated(path, value)
    with pytest.raises(CodecError, match=r"^\$"):
        decode_program(data)


def test_errors_name_the_path() -> None:
    with pytest.raises(CodecError, match=r"\$\.pipelines\.digest\.graph\.nodes\[1\]\.kind: expected a node kind"):
        decode_program(_mutated(_NODE + ("kind",), "loop"))


def test_call_cycles_are_rejected() -> None:
    data = encode_program(reviews())
    data["pipelines"]["digest"]["pipelines"] = {"triage": {"k": "ref", "name": "triage"}}
    with pytest.raises(CodecError, match="cycle"):
        decode_program(data)


def test_deep_nesting_is_a_codec_error() -> None:
    deep: Any = {"k": "value"}
    for _ in range(50_000):
        deep = {"k": "not", "arg": deep}
    with pytest.raises(CodecError):
        decode_expr(deep)
    data = encode_program(reviews())
    data["pipelines"]["digest"]["graph"]["nodes"][1]["over"] = deep
    with pytest.raises(CodecError, match="nested too deeply"):
        decode_program(data)


junk = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
                    | st.sampled_from(["k", "ref", "lit", "node", "record", "prim", "tuple", "duration"]),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                        st.sampled_from(["k", "name", "items", "value", "ms", "path"]), inner, max_size=3),
                    max_leaves=8)


def _slots(data: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in the encoded tree a value could be swapped."""
    out = [path]
    if isinstance(data, dict):
        for key, value in data.items():
            out += _slots(value, path + (key,))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out += _slots(value, path + (i,))
    return out


_ENCODED = encode_program(reviews())
_SLOTS = _slots(_ENCODED)[1:]


@settings(max_examples=300)
@given(st.sampled_from(_SLOTS), junk)
def test_swapped_parts_decode_or_raise_codec_error(path: tuple[Any, ...], value: Any) -> None:
    data = copy.deepcopy(_ENCODED)
    target = data
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    try:
        decode_program(data)
    except CodecError:
        pass
