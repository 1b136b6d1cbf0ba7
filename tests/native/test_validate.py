"""The validator: coercion of LM values to field types, ``where`` constraints, and its exact messages.

Every test runs on each twin through the ``impl`` fixture (only the Python twin exists so far).
"""
from __future__ import annotations

import json
import math
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dspex.engines.base import ValidationError
from dspex.ir import expr as ir
from dspex.ir.program import Field
from dspex.ir.types import (ANY, BOOL, FLOAT, INT, NONE, STR, DictOf, EnumOf, ListOf, OptionalOf, Record, RecordField,
                            Type)
from dspex.native import validate_py

SENTIMENT = EnumOf(("positive", "negative", "neutral"))
CITATION = Record("Citation", (
    RecordField("source", STR),
    RecordField("page", OptionalOf(INT), constraint=ir.Compare((">=",), (ir.Value(), ir.Lit(1)))),
))
V = ir.Value()


def length(e: ir.Expr = V) -> ir.Call:
    return ir.Call("len", (e,))


@pytest.fixture(params=[validate_py], ids=["py"], scope="session")
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return request.param  # type: ignore[no-any-return]


def check(impl: ModuleType, t: Type, value: Any, constraint: ir.Expr | None = None) -> Any:
    return impl.compile_validator((Field("x", t, constraint=constraint),)).validate({"x": value})["x"]


def error(impl: ModuleType, t: Type, value: Any, constraint: ir.Expr | None = None) -> str:
    with pytest.raises(ValidationError) as info:
        check(impl, t, value, constraint)
    return str(info.value)


@pytest.mark.parametrize("t,value,expected", [
    (INT, "42", 42), (INT, " -7\n", -7), (INT, 42.0, 42), (INT, "1e3", 1000), (INT, "+5", 5),
    (INT, "12345678901234567890.0", 12345678901234567890),
    (FLOAT, 3, 3.0), (FLOAT, "3.5", 3.5), (FLOAT, " -0.25 ", -0.25),
    (BOOL, "true", True), (BOOL, "False", False), (BOOL, " yes ", True), (BOOL, "NO", False), (BOOL, '"true"', True),
    (STR, 42, "42"), (STR, 2.5, "2.5"), (STR, "", ""),
    (SENTIMENT, "negative", "negative"), (SENTIMENT, "Positive", "positive"), (SENTIMENT, ' "NEUTRAL" ', "neutral"),
    (SENTIMENT, "`negative`", "negative"), (SENTIMENT, "Neutral.", "neutral"),
    (OptionalOf(INT), None, None), (OptionalOf(INT), "none", None), (OptionalOf(STR), " NULL ", None),
    (OptionalOf(INT), "3", 3),
    (ListOf(INT), ["1", 2.0], [1, 2]), (ListOf(STR), ' ["a", "b"] ', ["a", "b"]), (ListOf(INT), [], []),
    (DictOf(STR, FLOAT), {"a": "1.5", "b": 2}, {"a": 1.5, "b": 2.0}), (DictOf(STR, INT), '{"a": "1"}', {"a": 1}),
    (CITATION, {"source": "s", "page": "3", "extra": 1}, {"source": "s", "page": 3}),
    (CITATION, '{"source": "s"}', {"source": "s", "page": None}),
    (ListOf(CITATION), [{"page": None, "source": "s"}], [{"source": "s", "page": None}]),
    (ANY, {"k": [1]}, {"k": [1]}), (NONE, None, None), (NONE, "null", None),
])
def test_coerces(impl: ModuleType, t: Type, value: Any, expected: Any) -> None:
    got = check(impl, t, value)
    assert got == expected and type(got) is type(expected)


def test_float_field_gives_a_float(impl: ModuleType) -> None:
    assert type(check(impl, FLOAT, 1)) is float


@pytest.mark.parametrize("t,value,message", [
    (INT, "4.2", "x: expected an integer, got '4.2'"),
    (INT, 4.5, "x: expected an integer, got 4.5"),
    (INT, True, "x: expected an integer, got True"),
    (INT, "four", "x: expected an integer, got 'four'"),
    (INT, "inf", "x: expected an integer, got 'inf'"),
    (INT, None, "x: expected an integer, got None"),
    (FLOAT, "abc", "x: expected a number, got 'abc'"),
    (FLOAT, False, "x: expected a number, got False"),
    (FLOAT, math.nan, "x: expected a number, got nan"),
    (FLOAT, "inf", "x: expected a number, got 'inf'"),
    (BOOL, "maybe", "x: expected a boolean (true or false), got 'maybe'"),
    (BOOL, 1, "x: expected a boolean (true or false), got 1"),
    (STR, None, "x: expected a string, got None"),
    (STR, True, "x: expected a string, got True"),
    (STR, ["a"], "x: expected a string, got ['a']"),
    (SENTIMENT, "great", "x: expected one of `positive`, `negative`, `neutral`, got 'great'"),
    (SENTIMENT, 1, "x: expected one of `positive`, `negative`, `neutral`, got 1"),
    (ListOf(INT), 3, "x: expected a list, got 3"),
    (ListOf(STR), "a", "x: expected a list, got 'a'"),
    (ListOf(STR), "[not json", "x: expected a list, got '[not json'"),
    (ListOf(INT), [1, "x"], "x[1]: expected an integer, got 'x'"),
    (ListOf(ListOf(INT)), [[1], [2, None]], "x[1][1]: expected an integer, got None"),
    (DictOf(STR, INT), [1], "x: expected an object, got [1]"),
    (DictOf(STR, INT), {"a": 1, "b c": "z"}, 'x["b c"]: expected an integer, got \'z\''),
    (CITATION, "s", "x: expected an object (Citation), got 's'"),
    (CITATION, {"page": 2}, "x.source: missing, got {'page': 2}"),
    (ListOf(CITATION), [{"source": "a"}, {"source": "b", "page": 0}], "x[1].page: expected a value >= 1, got 0"),
    (OptionalOf(INT), "nothing", "x: expected an integer, got 'nothing'"),
    (NONE, 0, "x: expected none, got 0"),
])
def test_rejects_with_exact_messages(impl: ModuleType, t: Type, value: Any, message: str) -> None:
    assert error(impl, t, value) == message


def test_error_carries_path_value_and_rule(impl: ModuleType) -> None:
    with pytest.raises(ValidationError) as info:
        check(impl, ListOf(CITATION), [{"source": "a", "page": "0"}])
    assert (info.value.path, info.value.value, info.value.rule) == ("x[0].page", 0, "expected a value >= 1")
    assert info.value.code == "VALIDATION"


def test_missing_required_output_optional_and_default(impl: ModuleType) -> None:
    v = impl.compile_validator((Field("a", INT), Field("b", OptionalOf(INT)),
                                Field("c", STR, default="d", has_default=True)))
    assert v.validate({"a": 1, "zzz": 2}) == {"a": 1, "b": None, "c": "d"}
    with pytest.raises(ValidationError, match=r"^a: missing, got \{'b': 2\}$"):
        v.validate({"b": 2})


def test_result_follows_field_order_and_drops_unknown_keys(impl: ModuleType) -> None:
    v = impl.compile_validator((Field("a", INT), Field("b", STR)))
    assert list(v.validate({"zzz": 0, "b": "x", "a": 1})) == ["a", "b"]


def test_first_failing_field_in_field_order_wins(impl: ModuleType) -> None:
    v = impl.compile_validator((Field("label", SENTIMENT), Field("n", INT)))
    with pytest.raises(ValidationError) as info:
        v.validate({"n": "bad", "label": "great"})
    assert info.value.path == "label"


@pytest.mark.parametrize("t,value,constraint,message", [
    (FLOAT, 1.7, ir.Compare(("<=", "<="), (ir.Lit(0), V, ir.Lit(1))), "x: expected a value <= 1, got 1.7"),
    (FLOAT, "-0.5", ir.Compare(("<=", "<="), (ir.Lit(0), V, ir.Lit(1))), "x: expected a value >= 0, got -0.5"),
    (INT, 3, ir.Compare(("<",), (ir.Lit(5), V)), "x: expected a value > 5, got 3"),
    (STR, "", ir.Compare(("!=",), (V, ir.Lit(""))), 'x: expected a value != "", got \'\''),
    (ListOf(STR), ["a"] * 4, ir.Compare(("<=",), (length(), ir.Lit(3))),
     "x: expected len(value) <= 3, got ['a', 'a', 'a', 'a']"),
    (STR, "ab", ir.Compare((">=",), (length(), ir.Lit(3))), "x: expected len(value) >= 3, got 'ab'"),
    (DictOf(STR, INT), {}, ir.Compare((">",), (length(), ir.Lit(0))), "x: expected len(value) > 0, got {}"),
    (STR, "ABc", ir.Call("matches", (V, ir.Lit("[A-Z]+"))), 'x: expected matches(value, "[A-Z]+"), got \'ABc\''),
    (INT, 5, ir.BoolOp("and", (ir.Compare((">",), (V, ir.Lit(0))), ir.Compare(("<",), (V, ir.Lit(5))))),
     "x: expected a value < 5, got 5"),
    (INT, 5, ir.BoolOp("or", (ir.Compare(("<",), (V, ir.Lit(0))), ir.Compare((">",), (V, ir.Lit(9))))),
     "x: expected value < 0 or value > 9, got 5"),
    (STR, "x", ir.Not(ir.Compare(("==",), (V, ir.Lit("x")))), 'x: expected not value == "x", got \'x\''),
])
def test_constraint_messages(impl: ModuleType, t: Type, value: Any, constraint: ir.Expr, message: str) -> None:
    assert error(impl, t, value, constraint) == message


@pytest.mark.parametrize("t,value,constraint", [
    (FLOAT, "0.5", ir.Compare(("<=", "<="), (ir.Lit(0), V, ir.Lit(1)))),
    (FLOAT, 1, ir.Compare(("<=", "<="), (ir.Lit(0), V, ir.Lit(1)))),
    (ListOf(INT), [1, 2], ir.Compare(("<=",), (length(), ir.Lit(3)))),
    (STR, "ABC", ir.Call("matches", (V, ir.Lit("[A-Z]+")))),
    (INT, 20, ir.BoolOp("or", (ir.Compare(("<",), (V, ir.Lit(0))), ir.Compare((">",), (V, ir.Lit(9)))))),
    (STR, "y", ir.Not(ir.Compare(("==",), (V, ir.Lit("x"))))),
    (INT, 3, ir.BoolOp("and", (ir.Compare((">",), (V, ir.Lit(0))), ir.Compare(("<",), (V, ir.Lit(5)))))),
    (INT, 3, ir.Not(ir.BoolOp("and", (ir.Compare((">",), (V, ir.Lit(5))), ir.Compare(("<",), (V, ir.Lit(9))))))),
    (OptionalOf(INT), None, ir.Compare((">=",), (V, ir.Lit(1)))),
    (INT, 4, ir.Compare(("==",), (ir.Call("len", (ir.Lit("abcd"),)), V))),
])
def test_constraint_passes(impl: ModuleType, t: Type, value: Any, constraint: ir.Expr) -> None:
    check(impl, t, value, constraint)


def test_constraints_see_the_coerced_value(impl: ModuleType) -> None:
    bound = ir.Compare(("<=",), (length(), ir.Lit(2)))
    assert check(impl, ListOf(INT), "[1, 2]", bound) == [1, 2]  # len of the list, not of the string


def test_not_a_constraint_expression(impl: ModuleType) -> None:
    with pytest.raises(TypeError):
        impl.compile_validator((Field("x", INT, constraint=ir.VarRef("k")),))


# --- properties -----------------------------------------------------------------------------------------------

SCALARS: list[Type] = [STR, INT, FLOAT, BOOL, SENTIMENT]
NULL_LIKE = {"none", "null"}


def types() -> st.SearchStrategy[Type]:
    def wrap(inner: st.SearchStrategy[Type]) -> st.SearchStrategy[Type]:
        records = st.lists(inner, min_size=1, max_size=3).map(
            lambda ts: Record("R", tuple(RecordField(f"f{i}", t) for i, t in enumerate(ts))))
        return st.one_of(inner.map(ListOf), inner.map(lambda t: DictOf(STR, t)), inner.map(OptionalOf), records)

    return st.recursive(st.sampled_from(SCALARS), wrap, max_leaves=6)


def values(t: Type) -> st.SearchStrategy[Any]:
    if t == STR:
        return st.text(max_size=8)
    if t == INT:
        return st.integers()
    if t == FLOAT:
        return st.floats(allow_nan=False, allow_infinity=False)
    if t == BOOL:
        return st.booleans()
    if isinstance(t, EnumOf):
        return st.sampled_from(t.values)
    if isinstance(t, ListOf):
        return st.lists(values(t.item), max_size=3)
    if isinstance(t, DictOf):
        return st.dictionaries(st.text(max_size=4), values(t.value), max_size=3)
    if isinstance(t, OptionalOf):  # a null-like string in an optional means none: not a round trip
        return st.none() | values(t.inner).filter(lambda v: not (isinstance(v, str) and v.strip().lower() in NULL_LIKE))
    assert isinstance(t, Record)
    return st.fixed_dictionaries({f.name: values(f.type) for f in t.fields})


@given(st.data())
def test_valid_values_round_trip_unchanged(data: st.DataObject) -> None:
    t = data.draw(types())
    value = data.draw(values(t))
    assert validate_py.compile_validator((Field("x", t),)).validate({"x": value}) == {"x": value}


@given(st.integers(), st.sampled_from(["{}", " {} ", "{}\n", "{}.0"]))
def test_ints_as_strings_coerce(n: int, spelling: str) -> None:
    assert check(validate_py, INT, spelling.format(n)) == n


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_floats_as_strings_coerce(f: float) -> None:
    assert check(validate_py, FLOAT, repr(f)) == f
    assert check(validate_py, ListOf(FLOAT), json.dumps([f])) == [f]


@given(st.sampled_from(SENTIMENT.values), st.sampled_from([str.upper, str.title, lambda s: f' "{s}"\n']))
def test_enum_spellings_coerce_to_canonical(value: str, spell: Any) -> None:
    assert check(validate_py, SENTIMENT, spell(value)) == value
