"""The wire twins agree: for generated values the compiled twin packs the Python twin's bytes and each reads the
other's frames; truncated, corrupted and arbitrary buffers give the same outcome (the same value, or a FrameError
with the same reason and message) in both; a ring created by one twin is attached by the other and carries
messages both ways, within one process and across two.
"""
from __future__ import annotations

import re
import struct
import zlib
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dspex.errors import FrameError
from tests.native.test_wire import echo_through_child
from tests.native.twins import both_twins

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RING_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

leaves = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
          | st.text(max_size=40) | st.binary(max_size=40))
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=6)
    | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5) | st.binary(max_size=4), inner, max_size=6),
    max_leaves=25,
)


@pytest.fixture(scope="module")
def twins() -> tuple[ModuleType, ModuleType]:
    return both_twins("wire")


def outcome(f: Any, *args: Any, **kw: Any) -> tuple[str, Any]:
    try:
        return ("ok", f(*args, **kw))
    except FrameError as e:
        return ("FrameError", (e.reason, str(e)))
    except ValueError as e:
        return (type(e).__name__, str(e))


@SETTINGS
@given(values)
def test_both_twins_pack_the_same_bytes_and_read_each_others_frames(twins: tuple[ModuleType, ModuleType],
                                                                    value: Any) -> None:
    c, py = twins
    frame = c.pack_frame(value)
    assert py.pack_frame(value) == frame
    assert py.unpack_frame(frame) == (value, len(frame))
    assert c.unpack_frame(frame) == (value, len(frame))


@SETTINGS
@given(values, st.data())
def test_a_truncated_frame_fails_alike(twins: tuple[ModuleType, ModuleType], value: Any, data: st.DataObject) -> None:
    c, py = twins
    frame = c.pack_frame(value)
    cut = data.draw(st.integers(0, len(frame) - 1))
    expected = outcome(py.unpack_frame, frame[:cut])
    assert expected[0] == "FrameError" and expected[1][0] == "short"
    assert outcome(c.unpack_frame, frame[:cut]) == expected


@SETTINGS
@given(values, st.data())
def test_a_corrupted_frame_fails_alike(twins: tuple[ModuleType, ModuleType], value: Any, data: st.DataObject) -> None:
    c, py = twins
    broken = bytearray(c.pack_frame(value))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(broken) - 1))
        broken[at] ^= data.draw(st.integers(1, 255))
    max_size = data.draw(st.sampled_from([py.MAX_FRAME_SIZE, len(broken), 4, 0]))
    expected = outcome(py.unpack_frame, bytes(broken), max_size=max_size)
    assert outcome(c.unpack_frame, bytes(broken), max_size=max_size) == expected
    assert outcome(c.unpack_frame, bytearray(broken), max_size=max_size) == expected


@SETTINGS
@given(st.binary(max_size=64), st.binary(max_size=40), st.data())
def test_arbitrary_bytes_fail_or_decode_alike(twins: tuple[ModuleType, ModuleType], head: bytes, payload: bytes,
                                              data: st.DataObject) -> None:
    c, py = twins
    forged = struct.pack("<2sBBII", b"DX", 1, 0, len(payload), zlib.crc32(payload)) + payload  # a checksum-valid
    for buf in (head, forged, head + forged):
        offset = data.draw(st.integers(-1, len(buf) + 1))
        assert outcome(c.unpack_frame, buf, offset) == outcome(py.unpack_frame, buf, offset)


@SETTINGS
@given(values, st.integers(0, 200))
def test_oversized_packing_fails_alike(twins: tuple[ModuleType, ModuleType], value: Any, limit: int) -> None:
    c, py = twins
    assert outcome(c.pack_frame, value, limit) == outcome(py.pack_frame, value, limit)


@RING_SETTINGS
@given(st.lists(values, min_size=1, max_size=30), st.sampled_from([64, 200, 4096]))
def test_a_ring_made_by_one_twin_carries_messages_both_ways_with_the_other(twins: tuple[ModuleType, ModuleType],
                                                                          messages: list[Any], capacity: int) -> None:
    c, py = twins
    for maker, user in ((c, py), (py, c)):
        ring = maker.Ring.create(capacity)
        try:
            peer = user.Ring.attach(ring.name)
            try:
                assert peer.capacity == capacity
                for i, message in enumerate(messages):
                    writer, reader = (ring, peer) if i % 2 else (peer, ring)
                    try:
                        writer.put(message, timeout=0)
                    except FrameError as e:  # a message that cannot fit this ring: refused alike by both
                        assert e.reason == "oversized"
                        with pytest.raises(FrameError, match="^" + re.escape(str(e)) + "$"):
                            reader.put(message, timeout=0)
                        continue
                    assert reader.get(timeout=10) == message
                    writer.put_frame(c.pack_frame(message), timeout=0)
                    assert reader.get_frame(timeout=10) == py.pack_frame(message)
            finally:
                peer.close()
        finally:
            ring.close()


@pytest.mark.parametrize(("parent", "child"), [("c", "py"), ("py", "c")])
def test_a_child_on_the_other_twin_echoes_every_message(twins: tuple[ModuleType, ModuleType], parent: str,
                                                        child: str) -> None:
    c, py = twins
    messages = [{"n": n, "blob": bytes([n % 256]) * (n % 700)} for n in range(400)]
    assert echo_through_child(c if parent == "c" else py, child, messages, capacity=2048) == messages
