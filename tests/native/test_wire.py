"""Wire frames and the shared-memory ring (issue 4): every test runs on the compiled twin and the Python twin.

Frames: round trips, the header layout, and each FrameError reason with its exact message (every truncation
of a frame, every bit flip of a payload, foreign magic and version, oversized on both sides, checksum-valid
payloads that are not one msgpack value). Ring: order, wrap-around, blocking with timeouts, wake-ups across
threads, the closed flag, corruption in the data area, attach from a real child process, and nothing left in
/dev/shm afterwards.
"""
from __future__ import annotations

import mmap
import os
import secrets
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import msgpack
import pytest

from dspex.errors import DSPexError, FrameError
from tests.native.twins import twin_fixture

impl = twin_fixture("wire")

ROOT = Path(__file__).resolve().parents[2]
SHM = Path("/dev/shm")
RING_HEADER = 192
WAIT = 10.0  # the bound on every wait that should end at once
needs_shm = pytest.mark.skipif(not SHM.is_dir(), reason="needs /dev/shm (Linux)")

SAMPLES: list[Any] = [
    None, True, False, 0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 1.5, -0.0, "", "héllo ✓ 𝄞", b"", b"\x00\xff" * 3,
    [], {}, [1, [2, [3, [4]]]], {"a": {"b": [1, b"x", None]}, "c": 2.25}, {1: "int key", b"k": "bytes key"},
    "x" * 100_000, b"\x01" * (1 << 20), list(range(10_000)), {"text": "y" * 180, "id": 7},
]


def frame_of(payload: bytes, *, magic: bytes = b"DX", version: int = 1, flags: int = 0,
             size: int | None = None, crc: int | None = None) -> bytes:
    size = len(payload) if size is None else size
    crc = zlib.crc32(payload) if crc is None else crc
    return struct.pack("<2sBBII", magic, version, flags, size, crc) + payload


def expect(impl: ModuleType, buf: Any, reason: str, message: str, **kw: Any) -> None:
    with pytest.raises(FrameError) as info:
        impl.unpack_frame(buf, **kw)
    assert (info.value.reason, str(info.value)) == (reason, message)


# -- frames -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("obj", SAMPLES, ids=range(len(SAMPLES)))
def test_a_frame_round_trips(impl: ModuleType, obj: Any) -> None:
    frame = impl.pack_frame(obj)
    assert impl.unpack_frame(frame) == (obj, len(frame))
    assert impl.unpack_frame(bytearray(frame))[0] == obj
    assert impl.unpack_frame(memoryview(frame))[0] == obj


def test_the_header_is_magic_version_flags_length_and_crc(impl: ModuleType) -> None:
    obj = {"id": 1, "text": "é" * 40}
    payload = msgpack.packb(obj, use_bin_type=True)
    frame = impl.pack_frame(obj)
    assert frame == frame_of(payload)
    assert frame[:4] == b"DX\x01\x00" and impl.FRAME_HEADER_SIZE == 12 and impl.FRAME_VERSION == 1
    assert struct.unpack_from("<II", frame, 4) == (len(payload), zlib.crc32(payload))


def test_frames_are_read_at_an_offset_in_a_buffer_of_several(impl: ModuleType) -> None:
    objs = [{"n": n, "pad": "p" * n} for n in range(0, 300, 37)]
    buf = b"".join(impl.pack_frame(o) for o in objs) + b"\x00\x01"
    offset, got = 0, []
    for _ in objs:
        obj, offset = impl.unpack_frame(buf, offset)
        got.append(obj)
    assert got == objs and offset == len(buf) - 2
    expect(impl, buf, "short", "short frame: 2 bytes, the header needs 12", offset=offset)
    expect(impl, memoryview(buf), "short", "short frame: 0 bytes, the header needs 12", offset=len(buf))


@pytest.mark.parametrize("offset", [-1, 5])
def test_an_offset_outside_the_buffer_is_a_value_error(impl: ModuleType, offset: int) -> None:
    with pytest.raises(ValueError, match=f"^offset {offset} is outside the buffer of 4 bytes$"):
        impl.unpack_frame(b"abcd", offset)


def test_a_frame_error_is_a_dspex_error(impl: ModuleType) -> None:
    with pytest.raises(DSPexError) as info:
        impl.unpack_frame(b"")
    assert isinstance(info.value, FrameError) and info.value.code == "FRAME"


def test_an_empty_buffer_is_short(impl: ModuleType) -> None:
    expect(impl, b"", "short", "short frame: 0 bytes, the header needs 12")


def test_every_truncation_of_a_frame_is_short(impl: ModuleType) -> None:
    frame = impl.pack_frame({"k": "v" * 40, "n": [1, 2, 3]})
    size = len(frame) - 12
    for cut in range(len(frame)):
        if cut < 12:
            message = f"short frame: {cut} bytes, the header needs 12"
        else:
            message = f"short frame: header declares {size} payload bytes, {cut - 12} present"
        expect(impl, frame[:cut], "short", message)


def test_an_oversized_payload_is_refused_when_packing(impl: ModuleType) -> None:
    n = len(msgpack.packb("x" * 100))
    with pytest.raises(FrameError) as info:
        impl.pack_frame("x" * 100, max_size=50)
    assert (info.value.reason, str(info.value)) == ("oversized", f"oversized frame: {n} payload bytes, the limit is 50")
    assert impl.unpack_frame(impl.pack_frame("x" * 100, max_size=n))[0] == "x" * 100


def test_an_oversized_frame_is_refused_when_reading(impl: ModuleType) -> None:
    frame = impl.pack_frame("x" * 100)
    n = len(frame) - 12
    expect(impl, frame, "oversized", f"oversized frame: {n} payload bytes, the limit is 10", max_size=10)
    assert impl.unpack_frame(frame, max_size=n)[0] == "x" * 100
    # the declared length is checked before any payload is awaited: a huge claim is oversized, not short
    expect(impl, frame_of(b"", size=2**32 - 1), "oversized",
           f"oversized frame: {2**32 - 1} payload bytes, the limit is {impl.MAX_FRAME_SIZE}")


def test_a_foreign_magic_is_refused(impl: ModuleType) -> None:
    expect(impl, frame_of(b"\x01", magic=b"XY"), "foreign", "foreign frame: magic b'XY', expected b'DX'")
    expect(impl, b"GET / HTTP/1.1\r\n", "foreign", "foreign frame: magic b'GE', expected b'DX'")


def test_another_version_is_refused(impl: ModuleType) -> None:
    expect(impl, frame_of(b"\x01", version=2), "foreign", "foreign frame: version 2, this side reads version 1")


def test_a_checksum_mismatch_is_corrupt(impl: ModuleType) -> None:
    payload = msgpack.packb([1, 2, 3])
    good = zlib.crc32(payload)
    expect(impl, frame_of(payload, crc=good ^ 1), "corrupt",
           f"corrupt frame: checksum {good:08x} does not match {good ^ 1:08x}")


def test_every_bit_flip_of_a_payload_is_corrupt(impl: ModuleType) -> None:
    frame = impl.pack_frame({"text": "abc" * 20, "n": 12345})
    for byte in range(12, len(frame)):
        for bit in range(8):
            broken = bytearray(frame)
            broken[byte] ^= 1 << bit
            with pytest.raises(FrameError) as info:
                impl.unpack_frame(bytes(broken))
            assert info.value.reason == "corrupt", (byte, bit)


def test_every_bit_flip_of_a_header_is_caught_except_in_the_flags(impl: ModuleType) -> None:
    obj = {"text": "abc" * 20}
    frame = impl.pack_frame(obj)
    for byte in (0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11):
        for bit in range(8):
            broken = bytearray(frame)
            broken[byte] ^= 1 << bit
            with pytest.raises(FrameError) as info:
                impl.unpack_frame(bytes(broken))
            expected = {0: "foreign", 1: "foreign", 2: "foreign"}.get(byte)
            if expected:
                assert info.value.reason == expected
            else:
                assert info.value.reason in ("short", "oversized", "corrupt"), (byte, bit)
    flagged = bytearray(frame)
    flagged[3] = 0x80  # no flags are defined yet: a reader ignores them
    assert impl.unpack_frame(bytes(flagged))[0] == obj


@pytest.mark.parametrize(("payload", "error"), [
    (b"\xc1", "FormatError"),  # a byte msgpack never uses
    (b"\x92\x01", "ValueError"),  # an array of 2 holding 1 value
    (b"\x01\x02", "ExtraData"),  # trailing bytes inside the payload
    (msgpack.packb({"a": 1}) + msgpack.packb(2), "ExtraData"),
    (b"\x81\x91\x01\x02", "TypeError"),  # a map keyed by a list: unhashable
    (b"\xa2\xff\xfe", "UnicodeDecodeError"),  # a str that is not UTF-8
    (b"", "ValueError"),
])
def test_a_checksum_valid_payload_that_is_not_one_msgpack_value_is_corrupt(impl: ModuleType, payload: bytes,
                                                                        error: str) -> None:
    expect(impl, frame_of(payload), "corrupt", f"corrupt frame: payload is not one msgpack value ({error})")


def test_values_msgpack_cannot_carry_are_refused_when_packing(impl: ModuleType) -> None:
    with pytest.raises(TypeError):
        impl.pack_frame({1, 2})
    with pytest.raises(TypeError):
        impl.pack_frame(object())


# -- the ring -----------------------------------------------------------------------------------------------------

@pytest.fixture
def rings(impl: ModuleType) -> Iterator[list[Any]]:
    """Rings a test creates (append them): closed afterwards, and none may be left in /dev/shm."""
    made: list[Any] = []
    yield made
    for ring in made:
        ring.close()
    if SHM.is_dir():
        assert not [r.name for r in made if (SHM / r.name).exists()]


def make(impl: ModuleType, rings: list[Any], capacity: int = 1 << 16, **kw: Any) -> Any:
    ring = impl.Ring.create(capacity, **kw)
    rings.append(ring)
    return ring


def test_a_ring_delivers_in_order(impl: ModuleType, rings: list[Any]) -> None:
    ring = make(impl, rings, 4096)
    assert ring.capacity == 4096 and not ring.closed and ring.name.startswith("dxr_")
    assert repr(ring) == f"<Ring {ring.name!r} capacity=4096 open>"
    for i in range(50):
        ring.put({"i": i, "s": "x" * i}, timeout=WAIT)
    assert [ring.get(timeout=WAIT) for _ in range(50)] == [{"i": i, "s": "x" * i} for i in range(50)]
    for obj in SAMPLES[:-4]:
        ring.put(obj, timeout=WAIT)
        assert ring.get(timeout=WAIT) == obj


def test_a_ring_carries_large_frames(impl: ModuleType, rings: list[Any]) -> None:
    ring = make(impl, rings, 3 << 20)
    for obj in SAMPLES[-4:]:
        ring.put(obj, timeout=WAIT)
        assert ring.get(timeout=WAIT) == obj


def test_frames_wrap_around_the_end_of_a_small_ring(impl: ModuleType, rings: list[Any]) -> None:
    ring = make(impl, rings, 100)
    sent = received = 0
    for round_ in range(600):
        for _ in range(1 + round_ % 3):  # up to 3 frames in flight, of 13 to ~45 bytes: ends are crossed often
            obj = [sent, "z" * (sent % 23)]
            try:
                ring.put(obj, timeout=0)
            except TimeoutError:
                break
            sent += 1
        while received < sent:
            assert ring.get(timeout=WAIT) == [received, "z" * (received % 23)]
            received += 1
    assert received == sent > 1000


def test_a_named_ring_is_exclusive(impl: ModuleType, rings: list[Any]) -> None:
    name = f"dxt_{os.getpid()}_{secrets.token_hex(4)}"
    ring = make(impl, rings, 64, name=name)
    assert ring.name == name
    with pytest.raises(FileExistsError):
        impl.Ring.create(64, name=name)


def test_a_ring_below_the_minimum_capacity_is_refused(impl: ModuleType) -> None:
    with pytest.raises(ValueError, match="^ring capacity must be at least 16 bytes, got 8$"):
        impl.Ring.create(8)


def test_pre_packed_frames_pass_through(impl: ModuleType, rings: list[Any]) -> None:
    ring = make(impl, rings, 256)
    for obj in ({"a": 1}, "x" * 200, [None] * 3):
        frame = impl.pack_frame(obj)
        ring.put_frame(frame, timeout=WAIT)
        assert ring.get_frame(timeout=WAIT) == frame
        ring.put_frame(bytearray(frame), timeout=WAIT)
        assert ring.get(timeout=WAIT) == obj
        ring.put(obj, timeout=WAIT)
        assert ring.get_frame(timeout=WAIT) == frame


def test_put_frame_checks_the_header_before_writing(impl: ModuleType, rings: list[Any]) -> None:
    ring = make(impl, rings, 64)
    good = impl.pack_frame("abc")
    cases = [
        (good[:5], "short", "short frame: 5 bytes, the header needs 12"),
        (good[:-1], "short", "short frame: header declares 4 payload bytes, 3 present"),
        (good + b"\x00", "corrupt", "corrupt frame: header declares 4 payload bytes, 5 present"),
        (b"ZZ" + good[2:], "foreign", "foreign frame: magic b'ZZ', expected b'DX'"),
        (frame_of(b"a" * 60), "oversized", "oversized frame: 60 payload bytes, the limit is 52"),
    ]
    for frame, reason, message in cases:
        with pytest.raises(FrameError) as info:
            ring.put_frame(frame)
        assert (info.value.reason, str(info.value)) == (reason, message)
    with pytest.raises(TimeoutError):
        ring.get(timeout=0)  # nothing was written


def test_a_frame_that_can_never_fit_is_oversized(impl: ModuleType, rings: list[Any]) -> None:
    ring = make(impl, rings, 64)
    n = len(msgpack.packb("x" * 100))
    with pytest.raises(FrameError) as info:
        ring.put("x" * 100)
    assert (info.value.reason, str(info.value)) == ("oversized", f"oversized frame: {n} payload bytes, the limit is 52")
    ring.put("x" * 50, timeout=WAIT)  # 52 payload bytes: exactly the capacity
    assert ring.get(timeout=WAIT) == "x" * 50


def test_a_full_ring_blocks_put_until_its_timeout(impl: ModuleType, rings: list[Any]) -> None:
    ring = make(impl, rings, 64)
    ring.put("a" * 20, timeout=0)  # a 33-byte frame: a second one does not fit in 64 bytes until it is read
    with pytest.raises(TimeoutError, match="^no room for a 33-byte frame within 0 s$"):
        ring.put("b" * 20, timeout=0)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="^no room for a 33-byte frame within 0.05 s$"):
        ring.put("b" * 20, timeout=0.05)
    assert 0.05 <= time.monotonic() - start < WAIT
    assert ring.get(timeout=WAIT) == "a" * 20
    ring.put("b" * 20, timeout=0)
    ring.put("c" * 18, timeout=0)  # 31 bytes: 64 exactly
    assert [ring.get(timeout=WAIT), ring.get(timeout=WAIT)] == ["b" * 20, "c" * 18]


def test_an_empty_ring_blocks_get_until_its_timeout(impl: ModuleType, rings: list[Any]) -> None:
    ring = make(impl, rings, 64)
    with pytest.raises(TimeoutError, match="^no frame arrived within 0 s$"):
        ring.get(timeout=0)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="^no frame arrived within 0.05 s$"):
        ring.get_frame(timeout=0.05)
    assert 0.05 <= time.monotonic() - start < WAIT


def _later(delay: float, fn: Any, *args: Any) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        fn(*args)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_blocked_get_wakes_when_a_frame_arrives(impl: ModuleType, rings: list[Any]) -> None:
    ring = make(impl, rings, 256)
    for i in range(3):  # each wait outlasts the spin: the reader sleeps on the futex and is woken
        thread = _later(0.03, ring.put, {"n": i})
        start = time.monotonic()
        assert ring.get(timeout=WAIT) == {"n": i}
        assert time.monotonic() - start < WAIT / 2
        thread.join(WAIT)


def test_a_blocked_put_wakes_when_room_is_made(impl: ModuleType, rings: list[Any]) -> None:
    ring = make(impl, rings, 64)
    ring.put("a" * 40, timeout=WAIT)
    got: list[Any] = []
    thread = _later(0.03, lambda: got.append(ring.get(timeout=WAIT)))
    start = time.monotonic()
    ring.put("b" * 40, timeout=WAIT)
    assert time.monotonic() - start < WAIT / 2
    thread.join(WAIT)
    assert got == ["a" * 40] and ring.get(timeout=WAIT) == "b" * 40


def test_mark_closed_drains_then_ends_the_stream(impl: ModuleType, rings: list[Any]) -> None:
    ring = make(impl, rings, 256)
    ring.put(1, timeout=WAIT)
    ring.put(2, timeout=WAIT)
    ring.mark_closed()
    assert ring.closed and repr(ring).endswith(" closed>")
    with pytest.raises(BrokenPipeError, match="^the ring is closed$"):
        ring.put(3)
    with pytest.raises(BrokenPipeError, match="^the ring is closed$"):
        ring.put_frame(impl.pack_frame(3))
    assert [ring.get(timeout=WAIT), ring.get(timeout=0)] == [1, 2]
    for _ in range(2):
        with pytest.raises(EOFError, match="^the ring is closed and empty$"):
            ring.get(timeout=WAIT)


def test_mark_closed_wakes_blocked_waiters(impl: ModuleType, rings: list[Any]) -> None:
    ring = make(impl, rings, 64)
    outcome: list[str] = []

    def wait_get() -> None:
        try:
            ring.get(timeout=WAIT)
        except EOFError:
            outcome.append("eof")

    thread = threading.Thread(target=wait_get, daemon=True)
    thread.start()
    time.sleep(0.05)
    start = time.monotonic()
    ring.mark_closed()
    thread.join(WAIT)
    assert outcome == ["eof"] and time.monotonic() - start < WAIT / 2

    full = make(impl, rings, 64)
    full.put("a" * 40, timeout=WAIT)

    def wait_put() -> None:
        try:
            full.put("b" * 40, timeout=WAIT)
        except BrokenPipeError:
            outcome.append("broken")

    thread = threading.Thread(target=wait_put, daemon=True)
    thread.start()
    time.sleep(0.05)
    full.mark_closed()
    thread.join(WAIT)
    assert outcome == ["eof", "broken"]


@needs_shm
def test_close_unlinks_the_segment_and_the_handle_refuses_use(impl: ModuleType) -> None:
    with impl.Ring.create(64) as ring:
        name = ring.name
        assert (SHM / name).exists()
    assert not (SHM / name).exists() and ring.closed
    ring.close()  # idempotent
    for call in (lambda: ring.put(1), lambda: ring.get(timeout=0), ring.mark_closed):
        with pytest.raises(ValueError, match="^the ring handle is closed$"):
            call()
    with pytest.raises(FileNotFoundError):
        impl.Ring.attach(name)


@needs_shm
def test_an_attached_handle_shares_the_ring_and_does_not_unlink_it(impl: ModuleType, rings: list[Any]) -> None:
    ring = make(impl, rings, 128)
    peer = impl.Ring.attach(ring.name)
    assert (peer.name, peer.capacity) == (ring.name, 128)
    ring.put({"to": "peer"}, timeout=WAIT)
    assert peer.get(timeout=WAIT) == {"to": "peer"}
    peer.put("back", timeout=WAIT)
    assert ring.get(timeout=WAIT) == "back"
    peer.close()  # marks the ring closed for both sides, leaves the segment to its creator
    assert (SHM / ring.name).exists() and ring.closed
    with pytest.raises(BrokenPipeError):
        ring.put(1)


def test_attaching_what_is_not_a_ring_is_refused(impl: ModuleType) -> None:
    with pytest.raises(FileNotFoundError):
        impl.Ring.attach(f"dxt_missing_{secrets.token_hex(4)}")
    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(create=True, size=4096)
    try:
        with pytest.raises(ValueError, match=rf"^'{shm.name}' is not a DSPex ring \(layout magic 0x00000000\)$"):
            impl.Ring.attach(shm.name)
    finally:
        shm.close()
        shm.unlink()


def _poke(name: str, offset: int, xor: int) -> None:
    """Flip bits of one byte of the ring's segment behind its back."""
    with open(SHM / name, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        m[offset] ^= xor


@needs_shm
def test_a_corrupted_byte_in_the_data_area_is_a_frame_error(impl: ModuleType, rings: list[Any]) -> None:
    ring = make(impl, rings, 1024)
    ring.put({"a": "b" * 50}, timeout=WAIT)
    _poke(ring.name, RING_HEADER + 12 + 10, 0x20)  # a payload byte: corrupt, and the frame is consumed
    with pytest.raises(FrameError) as info:
        ring.get(timeout=WAIT)
    assert info.value.reason == "corrupt" and str(info.value).startswith("corrupt frame: checksum ")
    ring.put("next", timeout=WAIT)
    assert ring.get(timeout=WAIT) == "next"

    written = (12 + len(msgpack.packb({"a": "b" * 50}))) + (12 + len(msgpack.packb("next")))
    ring.put("fine", timeout=WAIT)
    _poke(ring.name, RING_HEADER + written, ord("D") ^ ord("Q"))  # the magic of the next frame: the boundaries are lost
    for _ in range(2):  # nothing is consumed: the ring keeps reporting it
        with pytest.raises(FrameError) as info:
            ring.get(timeout=WAIT)
        assert (info.value.reason, str(info.value)) == ("foreign", "foreign frame: magic b'QX', expected b'DX'")


# -- another process ------------------------------------------------------------------------------------------------

ECHO = """
import sys
from dspex.native import twin
kind, inbox, outbox, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
wire = twin("wire", kind)
src, dst = wire.Ring.attach(inbox), wire.Ring.attach(outbox)
try:
    echoed = 0
    while True:
        try:
            dst.put(src.get(timeout=30), timeout=30)
        except EOFError:
            break
        echoed += 1
    assert echoed == count, (echoed, count)
finally:
    src.close()
    dst.close()
"""


def echo_through_child(parent: ModuleType, child_kind: str, messages: list[Any], capacity: int = 4096) -> list[Any]:
    """Send ``messages`` to a child process (running the ``child_kind`` twin) that echoes them back; the replies."""
    inbox, outbox = parent.Ring.create(capacity), parent.Ring.create(capacity)
    proc = subprocess.Popen([sys.executable, "-c", ECHO, child_kind, inbox.name, outbox.name, str(len(messages))],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        replies: list[Any] = []
        sent = 0
        while len(replies) < len(messages):
            while sent < len(messages) and sent - len(replies) < 8:  # a few in flight both ways
                inbox.put(messages[sent], timeout=60)
                sent += 1
            replies.append(outbox.get(timeout=60))
        inbox.mark_closed()
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        assert err == b"", err.decode()  # no resource_tracker warning either
        with pytest.raises(EOFError):  # the child closed its handles on the way out
            outbox.get(timeout=WAIT)
        return replies
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=WAIT)
        inbox.close()
        outbox.close()
        if SHM.is_dir():
            assert not (SHM / inbox.name).exists() and not (SHM / outbox.name).exists()


def test_a_child_process_attaches_by_name_and_echoes_every_message_in_order(impl: ModuleType) -> None:
    kind = "c" if impl.__name__.endswith("_c") else "py"
    messages = [{"n": n, "text": "m" * (n % 300)} for n in range(500)]
    assert echo_through_child(impl, kind, messages) == messages


TRACKED = """
import multiprocessing as mp
import sys
from dspex.native import twin

def peer(kind, name):
    ring = twin("wire", kind).Ring.attach(name)
    ring.put("from the child", timeout=10)
    ring.close()

if __name__ == "__main__":
    kind = sys.argv[1]
    ring = twin("wire", kind).Ring.create(256)
    child = mp.get_context("spawn").Process(target=peer, args=(kind, ring.name))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert ring.get(timeout=10) == "from the child"
    ring.close()
"""


def test_neither_side_leaves_resource_tracker_warnings(impl: ModuleType, tmp_path: Path) -> None:
    """A spawned child shares its parent's resource tracker: attaching must neither register the segment (the
    child's exit would unlink it) nor unregister it (the creator's own unlink would then fail in the tracker)."""
    kind = "c" if impl.__name__.endswith("_c") else "py"
    script = tmp_path / "tracked.py"
    script.write_text(TRACKED)
    proc = subprocess.run([sys.executable, str(script), kind], cwd=ROOT, capture_output=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b"", proc.stderr.decode()
