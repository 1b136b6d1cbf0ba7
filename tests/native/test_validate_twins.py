"""The validator's twins agree: for generated types, constraints and values, the compiled twin gives what the
Python twin gives, the same coerced values (same types too) or the same error (message, path, rule, value).

Values are drawn both from each type's valid values and from a pool of awkward ones: strings that look like
numbers, booleans, nulls or JSON, bools where numbers are expected, NaN and infinities, big ints, subclasses of
the builtin types, and shapes of the wrong kind.
"""
from __future__ import annotations

import enum
import functools
import json
import math
from collections import OrderedDict
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from dspex.engines.base import ValidationError
from dspex.ir import expr as ir
from dspex.ir.program import Field
from dspex.ir.types import (ANY, BOOL, FLOAT, INT, NONE, STR, DictOf, EnumOf, ListOf, OptionalOf, Record, RecordField,
                            Type)
from tests.native.twins import both_twins

V = ir.Value()
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Colour(enum.IntEnum):
    RED = 1


class Text(str):
    pass


class Real(float):
    pass


class Items(list):  # type: ignore[type-arg]
    pass


@pytest.fixture(scope="module")
def twins() -> tuple[ModuleType, ModuleType]:
    return both_twins("validate")


# --- what a run gives, in a form that compares types and NaNs too ---------------------------------------------

def canon(x: Any) -> Any:
    """``x`` as nested tuples naming each type, so that 1 != 1.0 != True and nan == nan."""
    if isinstance(x, dict):
        return (type(x).__name__, tuple((canon(k), canon(v)) for k, v in x.items()))
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, tuple(canon(i) for i in x))
    return (type(x).__name__, repr(x))


def outcome(impl: ModuleType, fields: tuple[Field, ...], values: Any) -> Any:
    try:
        validator = impl.compile_validator(fields)
    except Exception as e:  # noqa: BLE001 - compile errors must agree too
        return ("compile", type(e).__name__, str(e))
    assert validator.fields == fields
    try:
        return ("ok", canon(validator.validate(values)))
    except ValidationError as e:
        return ("invalid", str(e), e.path, e.rule, canon(e.value), e.code)
    except Exception as e:  # noqa: BLE001 - e.g. a constraint comparing a str with an int
        return ("raised", type(e).__name__, str(e))


def agree(twins: tuple[ModuleType, ModuleType], fields: tuple[Field, ...], values: Any) -> Any:
    c, py = twins
    expected = outcome(py, fields, values)
    assert outcome(c, fields, values) == expected
    if currently_in_test_context():
        event(expected[0])
    return expected


# --- types, constraints and values --------------------------------------------------------------------------------

ENUMS = [EnumOf(("positive", "negative", "neutral")), EnumOf(("A", "a.", " b", "None")), EnumOf(("x",))]
SCALARS: list[Type] = [STR, INT, FLOAT, BOOL, ANY, NONE, *ENUMS]


def _types() -> st.SearchStrategy[Type]:
    def wrap(inner: st.SearchStrategy[Type]) -> st.SearchStrategy[Type]:
        fields = st.lists(st.tuples(inner, st.booleans()), min_size=1, max_size=3)
        records = fields.map(lambda fs: Record("R", tuple(
            RecordField(f"f{i}", t, constraint=ir.Compare((">=",), (ir.Call("len", (V,)), ir.Lit(1))) if c and t == STR
                        else None) for i, (t, c) in enumerate(fs))))
        keys = st.sampled_from([STR, INT, ENUMS[0], ANY])
        return st.one_of(inner.map(ListOf), st.builds(DictOf, keys, inner), inner.map(OptionalOf), records)

    return st.recursive(st.sampled_from(SCALARS), wrap, max_leaves=6)


TYPES = _types()
"""Scalars, enums, any, none, and lists, dicts, optionals and records of these, nested."""
NAMES = st.sampled_from(["f0", "f1", "answer", "a", "", "é", "ключ", "名前", "𝔁"])


def _fresh(text: str) -> str:
    """A str equal to ``text`` but (beyond one character) not the same object, as JSON decoding gives."""
    return text.encode("utf-8").decode("utf-8")


NUMBER_LITS = st.one_of(st.integers(-3, 3), st.sampled_from([0.5, -1.5, 2**53, 2**53 + 1, -(2**60), 10**30, math.nan,
                                                             math.inf, True, None]))
LITS = st.one_of(NUMBER_LITS, st.sampled_from(["", "x", "positive", "a"]))
OPS = st.sampled_from(["==", "!=", "<", "<=", ">", ">="])
OPERANDS = st.one_of(st.sampled_from([V, ir.Call("len", (V,))]), LITS.map(ir.Lit))
CHAINS = st.integers(1, 3).flatmap(lambda n: st.tuples(st.lists(OPS, min_size=n, max_size=n),
                                                       st.lists(OPERANDS, min_size=n + 1, max_size=n + 1)))
BOUNDS = st.tuples(OPS, NUMBER_LITS, st.booleans()).map(
    lambda o: ir.Compare((o[0],), (ir.Lit(o[1]), V) if o[2] else (V, ir.Lit(o[1]))))
LENGTHS = st.tuples(OPS, st.integers(0, 4), st.booleans()).map(
    lambda o: ir.Compare((o[0],), (ir.Lit(o[1]), ir.Call("len", (V,))) if o[2]
                         else (ir.Call("len", (V,)), ir.Lit(o[1]))))
COMPARES = st.one_of(BOUNDS, LENGTHS, CHAINS.map(lambda c: ir.Compare(tuple(c[0]), tuple(c[1]))))
CONSTRAINTS = st.recursive(
    st.one_of(COMPARES, st.sampled_from([ir.Call("matches", (V, ir.Lit("[a-z]+"))),
                                         ir.Call("matches", (V, ir.Lit(r"\d*"))),
                                         V, ir.Lit(True), ir.Lit(0), ir.Call("len", (V,))])),
    lambda inner: st.one_of(st.lists(inner, min_size=2, max_size=3).map(lambda a: ir.BoolOp("and", tuple(a))),
                            st.lists(inner, min_size=2, max_size=3).map(lambda a: ir.BoolOp("or", tuple(a))),
                            inner.map(ir.Not)),
    max_leaves=4)
"""``where`` predicates: literal bounds on the value or its length, chains, matches(), and/or/not of these."""


@functools.cache
def valid(t: Type) -> st.SearchStrategy[Any]:
    if t == STR:
        return st.text(max_size=6)
    if t == INT:
        return st.integers()
    if t == FLOAT:
        return st.floats(allow_nan=False, allow_infinity=False)
    if t == BOOL:
        return st.booleans()
    if t == NONE:
        return st.none()
    if t == ANY:
        return st.one_of(st.none(), st.integers(), st.text(max_size=3), st.floats())
    if isinstance(t, EnumOf):
        return st.sampled_from(t.values)
    if isinstance(t, ListOf):
        return st.lists(values(t.item), max_size=3)
    if isinstance(t, DictOf):
        return st.dictionaries(valid(t.key).filter(_hashable) | KEYS, values(t.value), max_size=3)
    if isinstance(t, OptionalOf):
        return st.none() | values(t.inner)
    assert isinstance(t, Record)
    return st.fixed_dictionaries({f.name: values(f.type) for f in t.fields},
                                 optional={"extra": st.integers()})


def _hashable(x: Any) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


LOOKALIKES = st.sampled_from([
    "42", " -7\n", "+5", "4.0", "4.", "4.2", "1e3", "1_000", "١٢", "12345678901234567890", "12345678901234567890.00",
    "1e400", "nan", "inf", "-inf", "", " ", "true", "False", " yes ", "NO", '"true"', "'no'", "`yes`", "maybe",
    "none", "None", " NULL ", "\x1cnull\x1f", "nul", "nonee", "NONE.", "İnone", "positive", "Positive", " 'NEUTRAL' ",
    "neutral.", "A", "a", "a.", "b", " B ", "none", "x", "X.", "[1, 2]", ' ["a", "b"] ', "[not json", "[]", "{}",
    '{"a": "1"}', '{"source": "s", "page": "3"}', "{broken", '{"f0": 1}', '[{"f0": "x"}]', "[[1], [2]]", "Ω", "ǅ"])
WHITESPACE = st.text(alphabet=" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u2000", max_size=2)
NULLISH = st.builds(lambda a, word, b: a + word + b, WHITESPACE,
                    st.sampled_from(["none", "null", "NoNe", "NULL", "nul", "nonE.", "nulll", "n ull", "İ", "true",
                                     "No"]),
                    WHITESPACE)
"""Spellings of none (and near misses) padded with ASCII and Unicode whitespace."""
SCALAR_ODDITIES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2**53 - 2, max_value=2**53 + 2),
    st.sampled_from([10**30, -(10**30), 0, 1, -1, Colour.RED]),
    st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e300, 4.0, 2.5, Real(1.0), Real(0.5)]),
    LOOKALIKES, LOOKALIKES.map(Text), NULLISH, st.text(max_size=5))


KEYS = st.one_of(st.text(max_size=3), st.integers(-2, 2),
                 st.sampled_from(["f0", "f1", "a", "1", " 2 ", "positive", "x"]))
MESSY = st.recursive(SCALAR_ODDITIES, lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.lists(inner, max_size=2).map(Items), st.lists(inner, max_size=2).map(tuple),
        st.dictionaries(KEYS, inner, max_size=3),
        st.dictionaries(st.sampled_from(["f0", "f1", "f2"]), inner, max_size=3).map(OrderedDict),
        st.lists(inner, max_size=3).map(lambda x: json.dumps(x) if _json_ok(x) else x),
        st.dictionaries(st.text(max_size=3), inner, max_size=3).map(lambda x: f" {json.dumps(x)} " if _json_ok(x)
                                                                       else x)), max_leaves=5)
"""Anything at all, at any depth."""


def _json_ok(x: Any) -> bool:
    try:
        json.dumps(x)
    except (TypeError, ValueError):
        return False
    return True


@functools.cache
def values(t: Type) -> st.SearchStrategy[Any]:
    """Mostly valid values of ``t``, sometimes anything at all, at every depth."""
    return st.one_of(valid(t), valid(t), MESSY)


# --- properties ---------------------------------------------------------------------------------------------------

@SETTINGS
@given(st.data())
def test_twins_agree_on_generated_fields(twins: tuple[ModuleType, ModuleType], data: st.DataObject) -> None:
    ts = data.draw(st.lists(TYPES, min_size=1, max_size=3), label="types")
    names = data.draw(st.lists(NAMES, min_size=len(ts), max_size=len(ts), unique=True), label="names")
    fields = []
    for i, (name, t) in enumerate(zip(names, ts)):
        constraint = data.draw(st.none() | CONSTRAINTS, label=f"constraint {i}")
        default = data.draw(st.sampled_from([(False, None), (True, "d"), (True, None)]), label=f"default {i}")
        fields.append(Field(name, t, constraint=constraint, default=default[1], has_default=default[0]))
    drawn = data.draw(st.fixed_dictionaries({}, optional={f.name: values(f.type) for f in fields}), label="values")
    # the keys in field order or not, as the very name objects or as equal copies (as JSON decodes them), or
    # with an extra key: the in-order fast path of the compiled twin and its fallbacks
    keys = data.draw(st.permutations(list(drawn)), label="key order")
    spellings: list[Callable[[str], str]] = [str, _fresh, Text]
    spell = data.draw(st.sampled_from(spellings), label="key objects")
    values_ = {spell(k): drawn[k] for k in keys}
    if data.draw(st.booleans(), label="extra key"):
        values_["zzz"] = 1
    agree(twins, tuple(fields), values_)


@SETTINGS
@given(st.data())
def test_twins_agree_on_one_value(twins: tuple[ModuleType, ModuleType], data: st.DataObject) -> None:
    t = data.draw(TYPES, label="type")
    agree(twins, (Field("x", t),), {"x": data.draw(values(t), label="value")})


@SETTINGS
@given(st.sampled_from([STR, INT, FLOAT, BOOL, OptionalOf(INT), OptionalOf(STR), NONE, *ENUMS]),
       st.one_of(SCALAR_ODDITIES, LOOKALIKES, st.text(max_size=8), st.text(alphabet=" \t\n\x1c\x1fNnOoEeUuLl",
                                                                           max_size=8)))
def test_twins_agree_on_scalars(twins: tuple[ModuleType, ModuleType], t: Type, value: Any) -> None:
    agree(twins, (Field("x", t),), {"x": value})


@SETTINGS
@given(st.sampled_from([OptionalOf(INT), OptionalOf(STR), OptionalOf(ENUMS[1]), NONE, BOOL]),
       st.one_of(NULLISH, NULLISH.map(Text)))
def test_twins_agree_on_nulls(twins: tuple[ModuleType, ModuleType], t: Type, value: Any) -> None:
    agree(twins, (Field("x", t),), {"x": value})


@SETTINGS
@given(st.sampled_from([INT, ENUMS[0], STR, BOOL, ANY]), st.sampled_from([INT, FLOAT, ENUMS[0], ListOf(INT), ANY]),
       st.data())
def test_twins_agree_on_dicts(twins: tuple[ModuleType, ModuleType], key: Type, value: Type,
                              data: st.DataObject) -> None:
    keys = st.one_of(valid(key).filter(_hashable), KEYS, st.sampled_from(["1", " 2.0 ", "Positive", True, 1.5]))
    items = st.dictionaries(keys, st.one_of(valid(value), SCALAR_ODDITIES), max_size=4)
    agree(twins, (Field("x", DictOf(key, value)),), {"x": data.draw(st.one_of(items, items.map(OrderedDict)))})


@SETTINGS
@given(st.sampled_from([INT, FLOAT, ANY, STR, ListOf(INT)]), st.data())
def test_twins_agree_on_constraints(twins: tuple[ModuleType, ModuleType], t: Type, data: st.DataObject) -> None:
    constraint = data.draw(CONSTRAINTS, label="constraint")
    value = data.draw(st.one_of(valid(t), NUMBER_LITS, st.text(max_size=4), st.lists(st.integers(), max_size=5)))
    agree(twins, (Field("x", t, constraint=constraint),), {"x": value})


@pytest.mark.parametrize("constraint", [
    ir.Compare(("in",), (V, ir.Lit([1]))), ir.VarRef("k"), ir.Call("len", ()), ir.Call("matches", (V,)),
    ir.Call("matches", (V, V)), ir.Call("upper", (V,)), ir.Compare(("<",), (ir.Lit(1), ir.Ref("n"))),
    ir.Call("matches", (V, ir.Lit("("))), ir.BoolOp("and", (ir.Compare((">",), (V, ir.Lit(0))), ir.Item())),
])
def test_twins_agree_on_bad_constraints(twins: tuple[ModuleType, ModuleType], constraint: ir.Expr) -> None:
    assert agree(twins, (Field("x", INT, constraint=constraint),), {"x": 1})[0] == "compile"


@pytest.mark.parametrize("values_", [[("x", 1)], None, "x", OrderedDict(x="1"), {}])
def test_twins_agree_on_what_is_not_a_dict(twins: tuple[ModuleType, ModuleType], values_: Any) -> None:
    agree(twins, (Field("x", INT),), values_)
