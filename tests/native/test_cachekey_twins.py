"""The cache-key twins agree: for generated nested values the compiled twin gives the Python twin's canonical
bytes and keys, or the same error (type and message), and reordering any dict changes neither.

Values mix every kind the encoding knows (None, bools, ints across and beyond 64 bits, floats with NaN and
signed zeros, text beyond the BMP, bytes, lists, tuples, dicts keyed by text or by mixed hashable keys, enum
members and subclasses of the base types) with a few it refuses (sets, objects, lone surrogates). Canonical
bytes are compared as bytes, so NaN (which is not equal to itself) is checked too.
"""
from __future__ import annotations

import enum
import math
from collections import OrderedDict
from random import Random
from types import ModuleType
from typing import Any, Self

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.native.twins import both_twins

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FP = "f" * 64
LM = "openai:gpt-4o-mini@http://127.0.0.1:8000/v1"


class Tone(str, enum.Enum):
    FORMAL = "formal"


class Level(enum.IntEnum):
    HIGH = 3


class Text(str):
    pass


class Count(int):
    pass


class Score(float):
    pass


@pytest.fixture(scope="module")
def twins() -> tuple[ModuleType, ModuleType]:
    return both_twins("cachekey")


def outcome(f: Any, *args: Any) -> tuple[str, Any]:
    try:
        return ("ok", f(*args))
    except (TypeError, ValueError, RecursionError) as e:  # UnicodeEncodeError is a ValueError
        return (type(e).__name__, str(e))


# -- strategies ---------------------------------------------------------------------------------------------------

BOUNDS = [0, 127, 128, 255, 256, 2**16 - 1, 2**16, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -1, -32,
          -33, -128, -129, -(2**15), -(2**15) - 1, -(2**31), -(2**31) - 1, -(2**63), -(2**63) - 1]
ints = st.integers() | st.integers(min_value=-(2**80), max_value=2**80) | st.sampled_from(BOUNDS)
floats = st.floats() | st.sampled_from([0.0, -0.0, math.nan, -math.nan, math.inf, -math.inf])
utf8 = st.characters(codec="utf-8")  # no lone surrogates: values that encode
texts = st.text(max_size=8) | st.text(st.characters(min_codepoint=0x80), max_size=4) | st.text(utf8, max_size=300)
utf8_texts = st.text(utf8, max_size=8) | st.text(utf8, max_size=300)
scalars = (st.none() | st.booleans() | ints | floats | texts | st.binary(max_size=40)
           | st.sampled_from([Tone.FORMAL, Level.HIGH]) | ints.map(Count) | floats.map(Score) | texts.map(Text))
hashable_keys = st.recursive(
    st.none() | st.booleans() | ints | st.floats(allow_nan=False) | st.text(utf8, max_size=4) | st.binary(max_size=4),
    lambda inner: st.tuples(inner) | st.tuples(inner, inner), max_leaves=4)


def nested(leaves: st.SearchStrategy[Any], str_keys: st.SearchStrategy[str],
           keys: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(leaves, lambda inner: (
        st.lists(inner, max_size=4) | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(str_keys, inner, max_size=4)
        | st.dictionaries(keys, inner, max_size=4)), max_leaves=20)


values = nested(scalars, st.text(max_size=4), hashable_keys | st.text(max_size=4))
refused = st.sampled_from([{1}, frozenset(), object(), bytearray(b"x"), "\ud800", "a\udfffb"])
values_or_refused = nested(scalars | refused, st.text(max_size=4), hashable_keys | st.text(max_size=4))
# Order independence holds for values that encode, with keys that stay distinct once canonical: no NaN keys, no
# enum or subclass keys.
orderable = nested(st.none() | st.booleans() | ints | floats | utf8_texts | st.binary(max_size=8),
                   st.text(utf8, max_size=4), hashable_keys)


def shuffled(value: Any, rnd: Random) -> Any:
    """``value`` with every dict rebuilt in a random order (same keys, same values)."""
    if isinstance(value, dict):
        items = [(k, shuffled(v, rnd)) for k, v in value.items()]
        rnd.shuffle(items)
        return dict(items)
    if isinstance(value, list):
        return [shuffled(v, rnd) for v in value]
    if isinstance(value, tuple):
        return tuple(shuffled(v, rnd) for v in value)
    return value


# -- properties ---------------------------------------------------------------------------------------------------

@SETTINGS
@given(value=values)
def test_canonical_bytes_and_keys_agree(twins: tuple[ModuleType, ModuleType], value: Any) -> None:
    c, py = twins
    assert outcome(c.canonical, value) == outcome(py.canonical, value)
    args = (FP, {"v": value}, LM, {"temperature": 0.7}, {"x": value})
    assert outcome(c.key_material, *args) == outcome(py.key_material, *args)
    assert outcome(c.cache_key, *args) == outcome(py.cache_key, *args)


@SETTINGS
@given(value=values_or_refused)
def test_errors_agree(twins: tuple[ModuleType, ModuleType], value: Any) -> None:
    c, py = twins
    assert outcome(c.canonical, value) == outcome(py.canonical, value)
    assert outcome(c.cache_key, FP, {"v": value}, LM, {}, {}) == outcome(py.cache_key, FP, {"v": value}, LM, {}, {})


@SETTINGS
@given(inputs=st.dictionaries(st.text(utf8, max_size=6), orderable, max_size=6), options=orderable,
       rnd=st.randoms(use_true_random=False))
def test_dict_order_changes_neither_twin(twins: tuple[ModuleType, ModuleType], inputs: dict[str, Any], options: Any,
                                         rnd: Random) -> None:
    c, py = twins
    again, options_again = shuffled(inputs, rnd), shuffled(options, rnd)
    expected = py.cache_key(FP, inputs, LM, options, {})
    assert c.cache_key(FP, again, LM, options_again, {}) == py.cache_key(FP, again, LM, options_again, {}) == expected
    assert c.canonical(again) == py.canonical(inputs) == c.canonical(inputs)


# -- cases a generator rarely makes -------------------------------------------------------------------------------

class Shrinking(float):
    """A float whose conversion empties the list it sits in: user code that changes a value mid-encoding."""

    def __new__(cls, value: float, victim: list[Any]) -> Self:
        self = super().__new__(cls, value)
        self.victim = victim  # type: ignore[attr-defined]
        return self

    def __float__(self) -> float:
        del self.victim[1:]  # type: ignore[attr-defined]
        return 0.5


@pytest.mark.parametrize("make", [
    lambda: {Tone.FORMAL: 1, "formal": 2},  # one key once canonical: the twin keeps the later in packed order
    lambda: {"formal": 2, Tone.FORMAL: 1},
    lambda: {Level.HIGH: "a", 3.0: "b"},
    lambda: {math.nan: 1, float("nan"): 2},
    lambda: {(2**70,): 1, 2**70: 2, (1, b"1180591620717411303424"): 3},
    lambda: {Text("b"): 1, "aa": 2, 1: 3},
    lambda: OrderedDict([(2, "b"), (1, "a")]),
    lambda: {i: str(i) for i in range(40)},
    lambda: {str(i): {i: [i, (i,)]} for i in range(30)},
])
def test_awkward_maps_agree(twins: tuple[ModuleType, ModuleType], make: Any) -> None:
    c, py = twins
    assert outcome(c.canonical, make()) == outcome(py.canonical, make())
    assert outcome(c.cache_key, FP, make(), LM, {}, {}) == outcome(py.cache_key, FP, make(), LM, {}, {})


def test_a_list_changed_while_encoded_agrees(twins: tuple[ModuleType, ModuleType]) -> None:
    c, py = twins
    results = []
    for twin in (c, py):
        victim: list[Any] = [1]
        victim.append(Shrinking(0.25, victim))
        victim.extend(range(20))
        results.append(outcome(twin.canonical, victim))
    assert results[0] == results[1] == ("ok", py.canonical([1, 0.5]))
