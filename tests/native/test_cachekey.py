"""Cache keys: the canonical msgpack encoding of a step call and its XXH3-128 key, on each twin (``impl``).

The key bytes are part of the on-disk cache format: the golden below changes only with ``KEY_VERSION``.
"""
from __future__ import annotations

import enum
import math
from collections import OrderedDict, namedtuple
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import Any

import msgpack
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.native.twins import twin_fixture

impl = twin_fixture("cachekey")

FP = "f" * 64
LM = "openai:gpt-4o-mini@http://127.0.0.1:8000/v1"
GOLDEN = "12f0aebb86777fd2d57be3a70f793838"  # cache_key(FP, {"review": "great"}, LM, {"temperature": 0.2}, {})


def key(impl: ModuleType, inputs: Any = None, lm: str = LM, options: Any = None, var_values: Any = None,
        fp: str = FP) -> bytes:
    return impl.cache_key(fp, {"review": "great"} if inputs is None else inputs, lm,  # type: ignore[no-any-return]
                          {"temperature": 0.2} if options is None else options,
                          {} if var_values is None else var_values)


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


class Tone(str, enum.Enum):
    FORMAL = "formal"


class Level(enum.IntEnum):
    HIGH = 3


class Shape(enum.Enum):
    POINT = (1, 2)
    BIG = 2**70


class Text(str):
    pass


class Count(int):
    pass


class Score(float):
    pass


class Blob(bytes):
    pass


class Row(dict):  # type: ignore[type-arg]
    pass


class Items(list):  # type: ignore[type-arg]
    pass


Pair = namedtuple("Pair", "a b")


class ReadOnly(Mapping):  # type: ignore[type-arg]
    def __init__(self, data: dict[Any, Any]) -> None:
        self.data = data

    def __getitem__(self, k: Any) -> Any:
        return self.data[k]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


# -- the key ------------------------------------------------------------------------------------------------------

def test_constants(impl: ModuleType) -> None:
    assert (impl.KEY_VERSION, impl.KEY_SIZE) == (2, 16)
    assert impl.__all__ == ["KEY_VERSION", "KEY_SIZE", "canonical", "key_material", "cache_key"]


def test_key_is_16_bytes_stable_and_golden(impl: ModuleType) -> None:
    assert key(impl) == key(impl) and len(key(impl)) == impl.KEY_SIZE == 16
    # Golden: the encoding is part of the on-disk format; change it only with KEY_VERSION.
    assert key(impl).hex() == GOLDEN


def test_golden_key_matches_the_documented_encoding(impl: ModuleType) -> None:
    material = pack([2, FP, {"review": "great"}, LM, {"temperature": 0.2}, {}])
    assert impl.key_material(FP, {"review": "great"}, LM, {"temperature": 0.2}, {}) == material
    assert key(impl) == xxhash.xxh3_128_digest(material) == bytes.fromhex(GOLDEN)


def test_the_key_hashes_exactly_its_arguments(impl: ModuleType) -> None:
    # Nothing else (no environment, no credentials) goes in: keeping secrets out is the caller's job,
    # by passing an lm identity rather than the client.
    material = impl.key_material(FP, {"b": 1, "a": [1, (2, 3)]}, LM, {"t": 0.5}, {"k": 3})
    assert material == pack([2, FP, {"a": [1, [2, 3]], "b": 1}, LM, {"t": 0.5}, {"k": 3}])
    assert msgpack.unpackb(material) == [impl.KEY_VERSION, FP, {"a": [1, [2, 3]], "b": 1}, LM, {"t": 0.5}, {"k": 3}]
    assert list(msgpack.unpackb(material)[2]) == ["a", "b"]  # keys sorted
    assert impl.cache_key(FP, {"b": 1, "a": [1, (2, 3)]}, LM, {"t": 0.5}, {"k": 3}) == xxhash.xxh3_128_digest(material)


def test_arguments_by_keyword(impl: ModuleType) -> None:
    assert impl.cache_key(node_fingerprint=FP, inputs={"review": "great"}, lm_identity=LM,
                          options={"temperature": 0.2}, var_values={}).hex() == GOLDEN


@pytest.mark.parametrize("changed", [
    {"fp": "e" * 64}, {"inputs": {"review": "grate"}}, {"inputs": {"text": "great"}},
    {"lm": "openai:gpt-4o@http://127.0.0.1:8000/v1"}, {"options": {"temperature": 0.3}},
    {"options": {"temperature": 0.2, "max_tokens": 5}}, {"var_values": {"k": 3}},
    {"inputs": {}}, {"options": {}}, {"var_values": {"k": None}},
])
def test_every_component_changes_the_key(impl: ModuleType, changed: dict[str, Any]) -> None:
    assert key(impl, **changed) != key(impl)


def test_components_do_not_run_into_each_other(impl: ModuleType) -> None:
    # The same characters split differently between fingerprint and lm are a different key.
    assert impl.cache_key("ab", {}, "c", {}, {}) != impl.cache_key("a", {}, "bc", {}, {})
    assert impl.cache_key(FP, {"k": 1}, LM, {}, {}) != impl.cache_key(FP, {}, LM, {"k": 1}, {})
    assert impl.cache_key(FP, {}, LM, {"k": 1}, {}) != impl.cache_key(FP, {}, LM, {}, {"k": 1})


def test_a_fingerprint_or_identity_that_is_not_a_str_is_packed_as_msgpack_packs_it(impl: ModuleType) -> None:
    assert impl.key_material(None, {}, Text("lm"), {}, {}) == pack([2, None, {}, "lm", {}, {}])
    assert impl.key_material(Text("fp"), {}, 7, {}, {}) == pack([2, "fp", {}, 7, {}, {}])


# -- canonical form -------------------------------------------------------------------------------------------------

def test_dict_order_does_not_change_the_key(impl: ModuleType) -> None:
    a = {"x": 1, "y": {"p": [1, 2], "q": None}, "z": "s"}
    b = {"z": "s", "y": {"q": None, "p": [1, 2]}, "x": 1}
    assert key(impl, inputs=a, options=a, var_values=a) == key(impl, inputs=b, options=b, var_values=b)
    assert impl.canonical(a) == impl.canonical(b) == pack({"x": 1, "y": {"p": [1, 2], "q": None}, "z": "s"})


def test_numbers_strings_and_bools_are_distinguished(impl: ModuleType) -> None:
    values: tuple[Any, ...] = (1, 1.0, "1", b"1", True, None, [1], (1,), {"1": 1}, 0, False, "", b"", [], {}, "True", 1.5)
    keys = {key(impl, inputs={"v": v}) for v in values}
    assert len(keys) == len(values) - 1  # [1] and (1,) are one value
    assert len({impl.canonical(v) for v in values}) == len(values) - 1


def test_nested_containers(impl: ModuleType) -> None:
    value = {"b": [1, (2, "x"), {"z": [], "y": ()}], "a": ({"k": ({},)},), "c": [[[-1.5]]]}
    assert impl.canonical(value) == pack({"a": [{"k": [{}]}], "b": [1, [2, "x"], {"y": [], "z": []}],
                                          "c": [[[-1.5]]]})
    assert impl.canonical((1, (2, (3,)))) == impl.canonical([1, [2, [3]]]) == bytes.fromhex("920192029103")


def test_tuples_hash_as_lists(impl: ModuleType) -> None:
    assert key(impl, inputs={"v": (1, 2)}) == key(impl, inputs={"v": [1, 2]})


def test_str_keys_sort_by_code_point(impl: ModuleType) -> None:
    # Code-point order, not the order of the packed bytes ("b" packs shorter than "aa").
    assert impl.canonical({"b": 1, "aa": 2, "c": 3}) == bytes.fromhex("83a2616102a16201a16303")
    names = ["é", "e", "z", "😀", "ā", "Z", "", "ab", "a", "\x00", "\uffff", "\U0010ffff", "日本"]
    shuffled = dict.fromkeys(reversed(names), 0)
    assert impl.canonical(shuffled) == pack(dict.fromkeys(sorted(names), 0))
    many = {f"k{i:03d}": i for i in range(40, 0, -1)}  # past the small-map path
    assert impl.canonical(many) == pack(dict(sorted(many.items())))


def test_non_string_map_keys_are_ordered_canonically(impl: ModuleType) -> None:
    assert key(impl, inputs={"m": {1: "a", "b": 2, (1, "x"): 3}}) == \
        key(impl, inputs={"m": {(1, "x"): 3, "b": 2, 1: "a"}})
    assert key(impl, inputs={"m": {1: "a"}}) != key(impl, inputs={"m": {"1": "a"}})
    # Ordered by each key's packed bytes: 1 (01), 2 (02), -1 (ff); (1,) (91 01) before (1, "x") (92 ...).
    assert impl.canonical({-1: "c", 2: "b", 1: "a"}) == bytes.fromhex("8301a16102a162ffa163")
    assert impl.canonical({(1, "x"): 2, (1,): 1}) == bytes.fromhex("829101019201a17802")
    # One key that is not an exact str puts the whole map in packed-bytes order: "b" (a1 62) before "aa" (a2 ...).
    assert impl.canonical({"aa": 2, Text("b"): 1}) == bytes.fromhex("82a16201a2616102")
    mixed = {None: 0, True: 1, 2.5: 2, b"k": 3, "s": 4, 2**70: 5, (): 6}
    assert impl.canonical(mixed) == impl.canonical(dict(reversed(mixed.items())))


def test_enum_members_hash_as_their_values(impl: ModuleType) -> None:
    assert key(impl, var_values={"tone": Tone.FORMAL}) == key(impl, var_values={"tone": "formal"})
    assert impl.canonical(Level.HIGH) == impl.canonical(3) == b"\x03"
    assert impl.canonical(Shape.POINT) == impl.canonical([1, 2])
    assert impl.canonical(Shape.BIG) == impl.canonical(2**70)
    assert impl.canonical({Level.HIGH: "x", 1: "y"}) == impl.canonical({3: "x", 1: "y"})


def test_subclasses_hash_as_their_base(impl: ModuleType) -> None:
    assert key(impl, inputs={"v": Score(0.5)}) == key(impl, inputs={"v": 0.5})
    assert impl.canonical(Text("hi")) == impl.canonical("hi")
    assert impl.canonical(Count(5)) == impl.canonical(5)
    assert impl.canonical(Count(2**70)) == impl.canonical(2**70)
    assert impl.canonical(Blob(b"q")) == impl.canonical(b"q")
    assert impl.canonical(Row(b=1, a=2)) == impl.canonical({"a": 2, "b": 1})
    assert impl.canonical(OrderedDict([("b", 1), ("a", 2)])) == impl.canonical({"a": 2, "b": 1})
    assert impl.canonical(ReadOnly({"z": [1], 2: "x"})) == impl.canonical({2: "x", "z": [1]})
    assert impl.canonical(Items([1, "x"])) == impl.canonical(Pair(1, "x")) == impl.canonical([1, "x"])
    assert impl.canonical(ReadOnly({})) == impl.canonical(Row()) == b"\x80"


@pytest.mark.parametrize("value", [
    0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1,
    -1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**63),
])
def test_ints_take_msgpacks_smallest_form(impl: ModuleType, value: int) -> None:
    assert impl.canonical(value) == pack(value)


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 2**70, -(2**200), 10**100])
def test_ints_beyond_64_bits_are_ext_1_decimal_text(impl: ModuleType, value: int) -> None:
    assert impl.canonical(value) == pack(msgpack.ExtType(1, str(value).encode()))
    assert msgpack.unpackb(impl.canonical(value)) == msgpack.ExtType(1, str(value).encode())


def test_int_bounds(impl: ModuleType) -> None:
    assert impl.canonical(2**64 - 1) == b"\xcf" + b"\xff" * 8
    assert impl.canonical(2**64)[:3] == b"\xc7\x14\x01"  # ext 8: 20 digits, type 1
    assert impl.canonical(-(2**63)) == b"\xd3\x80" + b"\x00" * 7
    assert impl.canonical(-(2**63) - 1)[:3] == b"\xc7\x14\x01"
    assert key(impl, inputs={"v": 2**70}) != key(impl, inputs={"v": 2**70 + 1})


@pytest.mark.parametrize("value", [0.0, -0.0, 1.5, -2.25e300, 5e-324, math.inf, -math.inf, math.nan, -math.nan])
def test_floats_are_float_64(impl: ModuleType, value: float) -> None:
    assert impl.canonical(value) == pack(value) and impl.canonical(value)[0] == 0xcb


@pytest.mark.parametrize("size", [0, 1, 31, 32, 255, 256, 65535, 65536])
def test_str_and_bytes_lengths(impl: ModuleType, size: int) -> None:
    assert impl.canonical("x" * size) == pack("x" * size)
    assert impl.canonical("é" * size) == pack("é" * size)
    assert impl.canonical(b"x" * size) == pack(b"x" * size)


@pytest.mark.parametrize("size", [0, 15, 16, 65535, 65536])
def test_array_and_map_sizes(impl: ModuleType, size: int) -> None:
    assert impl.canonical(list(range(size))) == pack(list(range(size)))
    assert impl.canonical(tuple(range(size))) == pack(list(range(size)))
    keys = [f"{i:06d}" for i in range(size)]
    assert impl.canonical(dict.fromkeys(reversed(keys), 1)) == pack(dict.fromkeys(keys, 1))


def test_empty_containers(impl: ModuleType) -> None:
    empties: tuple[Any, ...] = ({}, [], (), "", b"")
    assert [impl.canonical(v) for v in empties] == [b"\x80", b"\x90", b"\x90", b"\xa0", b"\xc4\x00"]
    assert len({key(impl, inputs={"v": v}) for v in (*empties, None)}) == 5
    assert impl.canonical({"v": {}}) != impl.canonical({"v": []})


def test_unicode(impl: ModuleType) -> None:
    for text in ("é", "日本語", "😀", "a😀b" * 50, "\x00", "\U0010ffff"):
        assert impl.canonical(text) == pack(text)
        assert impl.canonical({text: text}) == pack({text: text})
    assert key(impl, inputs={"v": "😀"}) != key(impl, inputs={"v": "😁"})


def test_a_lone_surrogate_is_msgpacks_unicode_error(impl: ModuleType) -> None:
    with pytest.raises(UnicodeEncodeError, match="surrogates not allowed"):
        impl.canonical("a\ud800b")
    with pytest.raises(UnicodeEncodeError):
        key(impl, inputs={"\udc00": 1})
    with pytest.raises(UnicodeEncodeError):
        key(impl, fp="\ud800")
    # Canonicalising comes before packing: a type error anywhere wins over a surrogate met earlier.
    with pytest.raises(TypeError, match="cannot encode a value of type set"):
        impl.canonical({"a": "\ud800", "b": {1}})
    with pytest.raises(TypeError, match="cannot encode a value of type set"):
        key(impl, fp="\ud800", inputs={"b": {1}})


@pytest.mark.parametrize("value, name", [
    ({1, 2}, "set"), (frozenset(), "frozenset"), (object(), "object"), (bytearray(b"x"), "bytearray"),
    (1j, "complex"), ([1, [2, {3}]], "set"), ({"a": {"b": object()}}, "object"), ({frozenset(): 1}, "frozenset"),
    ({(1, object()): 1}, "object"),
])
def test_unencodable_values_are_a_type_error(impl: ModuleType, value: Any, name: str) -> None:
    with pytest.raises(TypeError) as raised:
        impl.canonical(value)
    assert str(raised.value) == f"cache key: cannot encode a value of type {name}"
    with pytest.raises(TypeError, match=f"^cache key: cannot encode a value of type {name}$"):
        key(impl, inputs={"v": value})


def test_deep_nesting_is_a_recursion_error(impl: ModuleType) -> None:
    deep: Any = 0
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(RecursionError):
        impl.canonical(deep)
    shallow: Any = 0
    for _ in range(100):
        shallow = {"a": [shallow]}
    assert impl.canonical(shallow) == pack(shallow)


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=12)


@settings(max_examples=100, deadline=None)
@given(inputs=st.dictionaries(st.text(max_size=4), json_like, max_size=5), rnd=st.randoms(use_true_random=False))
def test_key_ignores_insertion_order_property(impl: ModuleType, inputs: dict[str, Any], rnd: Any) -> None:
    def shuffled(value: Any) -> Any:
        if isinstance(value, dict):
            items = list(value.items())
            rnd.shuffle(items)
            return {k: shuffled(v) for k, v in items}
        return [shuffled(v) for v in value] if isinstance(value, list) else value
    assert key(impl, inputs=inputs) == key(impl, inputs=shuffled(inputs))
