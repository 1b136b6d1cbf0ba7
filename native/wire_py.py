"""Wire frames between processes (the Python twin): msgpack payloads behind a fixed 12-byte header.

Header, little-endian: magic ``b"DX"``, version byte, flags byte (0), payload length (u32), CRC-32 of the
payload (u32). The magic and version reject a foreign or newer peer, the length bounds a read before any
byte of payload is trusted, and the checksum catches a torn or overwritten frame. Payloads are msgpack,
never pickle: a frame can carry data, never code.

``Ring`` moves frames through shared memory: one producer and one consumer (a thread or a process each),
lock-free. The segment (``multiprocessing.shared_memory``) is laid out as follows, identically in both twins, so
that a ring created by one twin can be attached by the other. Header fields are native-endian (both peers run on
one machine); the frames in the data area keep their own little-endian header.

======  =====  ==================================================================================
offset  type   field
======  =====  ==================================================================================
0       u32    layout magic ``0x47525844`` (``b"DXRG"`` little-endian), written last by the creator
4       u32    layout version (1)
8       u64    capacity: data bytes
16      u32    closed flag (1 once either side called ``mark_closed`` or ``close``)
64      u64    write position: bytes ever written (producer's cache line)
72      u32    data sequence: bumped by the producer to wake a sleeping consumer (futex word)
76      u32    consumer-sleeps flag
128     u64    read position: bytes ever read (consumer's cache line)
136     u32    room sequence: bumped by the consumer to wake a sleeping producer (futex word)
140     u32    producer-sleeps flag
192     bytes  ``capacity`` data bytes: frames back to back at ``position % capacity``, wrapping around the end
======  =====  ==================================================================================

The producer copies a whole frame in (in two parts where it crosses the end) and only then publishes the new
write position; the consumer copies a frame out, publishes the new read position, then checks the frame (header,
checksum, msgpack) exactly as ``unpack_frame`` does. A frame whose header is sound but whose payload is not
(``corrupt``) is consumed; after a ``short``, ``foreign`` or ``oversized`` header the ring has lost the frame
boundaries, nothing is consumed, and every later ``get`` raises the same error.

A waiter first polls for up to ``SPIN_SECONDS``, yielding the CPU between polls (on an oversubscribed machine the
peer may be waiting for this very CPU: pure spinning measured ten times slower there), then sleeps on a Linux futex
on its sequence word (the shared, non-private ``FUTEX_WAIT``/``FUTEX_WAKE``, called through ``ctypes``, which
releases the GIL) after raising its sleeps flag; the other side issues ``FUTEX_WAKE`` only when that flag is up.
This twin has no memory fences, so each sleep lasts at most ``_SLICE_SECONDS`` before it checks again: a wake-up
lost to store/load reordering costs that much latency, never a message. Its plain loads and stores rely on
x86-64's store order; the compiled twin uses acquire/release atomics. Off Linux (or on an architecture whose futex
number is not known here) this twin polls with a sleep that backs off from 50 us to 1 ms instead.

Closing: ``mark_closed`` raises the closed flag and wakes both sides; after it, ``put`` raises BrokenPipeError
and ``get`` raises EOFError once the ring is empty (frames already in it are still delivered). ``close`` marks the
ring closed, unmaps it, and, on the creating side only (in the creating process, not in a forked copy), unlinks
it; a handle garbage-collected while open is closed the same way, except that a forked copy only unmaps.

The creator's segment is registered with ``multiprocessing``'s resource tracker (so that it is unlinked if the
creator dies) and unregistered by that unlink; ``attach`` maps the segment without registering it at all
(``shm_open`` + ``mmap``; CPython issue 82300: a registration by the attaching process would unlink the segment
when it exits, and an unregistration would drop the creator's own entry when both share one tracker, as spawned
children do).
"""
from __future__ import annotations

import ctypes
import mmap
import os
import platform
import secrets
import struct
import sys
import time
import zlib
from multiprocessing import shared_memory
from types import TracebackType
from typing import Any, Self

import msgpack

from dspex.errors import FrameError

__all__ = ["FRAME_HEADER_SIZE", "FRAME_MAGIC", "FRAME_VERSION", "MAX_FRAME_SIZE", "Ring", "pack_frame", "unpack_frame"]

FRAME_MAGIC = b"DX"
FRAME_VERSION = 1
FRAME_HEADER_SIZE = 12
MAX_FRAME_SIZE = 64 * 1024 * 1024  # payload bytes a reader accepts unless told otherwise
_HEADER = struct.Struct("<2sBBII")

RING_LAYOUT_MAGIC = 0x47525844
RING_LAYOUT_VERSION = 1
RING_HEADER_SIZE = 192
RING_MIN_CAPACITY = 16
SPIN_SECONDS = 50e-6  # how long a waiter polls before it sleeps
_SLICE_SECONDS = 0.01  # the longest single sleep of this twin (see the module docstring)

# Indices into the header viewed as u64 ("Q") and as u32 ("I").
_Q_CAPACITY, _Q_WRITE, _Q_READ = 8 // 8, 64 // 8, 128 // 8
_I_MAGIC, _I_VERSION, _I_CLOSED = 0, 4 // 4, 16 // 4
_I_DATA_SEQ, _I_READER_SLEEPS = 72 // 4, 76 // 4
_I_ROOM_SEQ, _I_WRITER_SLEEPS = 136 // 4, 140 // 4


def pack_frame(obj: Any, max_size: int = MAX_FRAME_SIZE) -> bytes:
    """``obj`` as one frame; raises FrameError("oversized") when its payload exceeds ``max_size``."""
    payload = msgpack.packb(obj, use_bin_type=True)
    if len(payload) > max_size:
        raise FrameError(f"oversized frame: {len(payload)} payload bytes, the limit is {max_size}", "oversized")
    return _HEADER.pack(FRAME_MAGIC, FRAME_VERSION, 0, len(payload), zlib.crc32(payload)) + payload


def _check_header(magic: bytes, version: int, size: int, have: int, max_size: int) -> None:
    """The header checks of a frame, in order; ``have`` is the bytes present from its first byte on."""
    if magic != FRAME_MAGIC:
        raise FrameError(f"foreign frame: magic {bytes(magic)!r}, expected {FRAME_MAGIC!r}", "foreign")
    if version != FRAME_VERSION:
        raise FrameError(f"foreign frame: version {version}, this side reads version {FRAME_VERSION}", "foreign")
    if size > max_size:
        raise FrameError(f"oversized frame: {size} payload bytes, the limit is {max_size}", "oversized")
    if have < FRAME_HEADER_SIZE + size:
        raise FrameError(f"short frame: header declares {size} payload bytes, {have - FRAME_HEADER_SIZE} present",
                         "short")


def _short_header(have: int) -> FrameError:
    return FrameError(f"short frame: {have} bytes, the header needs {FRAME_HEADER_SIZE}", "short")


def _check_payload(payload: bytes | memoryview, crc: int) -> Any:
    actual = zlib.crc32(payload)
    if actual != crc:
        raise FrameError(f"corrupt frame: checksum {actual:08x} does not match {crc:08x}", "corrupt")
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as e:  # TypeError: an unhashable map key
        raise FrameError(f"corrupt frame: payload is not one msgpack value ({type(e).__name__})", "corrupt") from None


def unpack_frame(buf: bytes | bytearray | memoryview, offset: int = 0,
                 max_size: int = MAX_FRAME_SIZE) -> tuple[Any, int]:
    """The object of the frame at ``buf[offset:]`` and the offset just past it.

    Raises FrameError with ``reason`` "short" (not all of the frame is there), "oversized" (it declares more
    than ``max_size`` payload bytes), "foreign" (not a DSPex frame, or another version) or "corrupt"
    (checksum mismatch, or a payload that is not one msgpack value); ValueError for an offset outside ``buf``.
    """
    if type(buf) is not bytes:
        buf = memoryview(buf).cast("B")
    if offset < 0 or offset > len(buf):
        raise ValueError(f"offset {offset} is outside the buffer of {len(buf)} bytes")
    have = len(buf) - offset
    if have < FRAME_HEADER_SIZE:
        raise _short_header(have)
    magic, version, _flags, size, crc = _HEADER.unpack_from(buf, offset)
    _check_header(magic, version, size, have, max_size)
    start = offset + FRAME_HEADER_SIZE
    end = start + size
    return _check_payload(memoryview(buf)[start:end], crc), end


# -- the ring -------------------------------------------------------------------------------------------------------

def _futex_syscall() -> Any:
    """libc's ``syscall`` set up for ``futex`` with its number, or None off Linux / on an unknown architecture."""
    number = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}.get(platform.machine().lower())
    if not sys.platform.startswith("linux") or number is None:
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_long
    fn.argtypes = [ctypes.c_long, ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p,
                   ctypes.c_long]
    return number, fn


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_FUTEX = _futex_syscall()
_yield = getattr(os, "sched_yield", lambda: None)  # the peer may be waiting for this very CPU
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1
_WAKE_ALL = 0x7FFFFFFF


def _futex_wait(address: int, expected: int, seconds: float) -> None:
    """Sleep while the u32 at ``address`` holds ``expected``, at most ``seconds`` (or poll off Linux)."""
    if _FUTEX is None:
        time.sleep(seconds)
        return
    number, fn = _FUTEX
    seconds = max(seconds, 0.0)
    ts = _Timespec(int(seconds), int((seconds - int(seconds)) * 1e9))
    fn(number, address, _FUTEX_WAIT, expected, ctypes.byref(ts), None, 0)  # EAGAIN, ETIMEDOUT, EINTR: re-check


def _futex_wake(address: int) -> None:
    if _FUTEX is not None:
        number, fn = _FUTEX
        fn(number, address, _FUTEX_WAKE, _WAKE_ALL, None, None, 0)


class _Segment:
    """A named shared-memory segment: created (tracked, unlinked by ``close(unlink=True)``) or attached (untracked)."""

    def __init__(self, name: str, size: int, create: bool):
        self._shm: shared_memory.SharedMemory | None = None
        self._mmap: mmap.mmap | None = None
        if create:
            self._shm = shared_memory.SharedMemory(name=name, create=True, size=size)
            self.buf: memoryview = self._shm.buf  # type: ignore[assignment]  # typeshed: None once closed
            return
        try:
            import _posixshmem
        except ImportError:  # Windows: no resource tracker to avoid
            self._shm = shared_memory.SharedMemory(name=name)
            self.buf = self._shm.buf  # type: ignore[assignment]
            return
        fd = _posixshmem.shm_open("/" + name, os.O_RDWR, mode=0o600)
        try:
            self._mmap = mmap.mmap(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        self.buf = memoryview(self._mmap)

    def close(self, unlink: bool) -> None:
        if self._shm is not None:
            self._shm.close()
            if unlink:
                self._shm.unlink()
        elif self._mmap is not None:
            self.buf.release()
            self._mmap.close()


def attach_segment(name: str) -> _Segment:
    """The segment ``name`` another process created, mapped as ``Ring.attach`` maps a ring: untracked, so that
    neither this process's exit nor its resource tracker unlinks it (``buf``; ``close(unlink=False)``). For other
    shared blocks than rings (a worker's heartbeat): not part of the twins' API, so not in ``__all__``."""
    return _Segment(name, 0, create=False)


def _base_address(buf: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))  # the temporary view is released on return


class Ring:
    """A single-producer, single-consumer ring of frames in shared memory (layout in the module docstring).

    ``Ring.create`` makes one (its owner; ``close`` also unlinks it); ``Ring.attach(name)`` opens it from another
    process. ``put``/``get`` move objects, ``put_frame``/``get_frame`` pre-packed frames; both block (with an
    optional ``timeout`` in seconds, then TimeoutError) while the ring is full or empty.
    """

    def __init__(self, segment: _Segment, name: str, owner: bool):
        self._segment = segment
        self._name = name
        self._owner = owner
        self._open = True
        self._users = 0
        self._pid = os.getpid()  # only the creating process unlinks (not a forked copy of the owner)
        buf = segment.buf
        try:
            self._q = buf[:RING_HEADER_SIZE].cast("Q")
            self._i = buf[:RING_HEADER_SIZE].cast("I")
            if owner:
                capacity = len(buf) - RING_HEADER_SIZE
                self._q[_Q_CAPACITY] = capacity
                self._i[_I_VERSION] = RING_LAYOUT_VERSION
                self._i[_I_MAGIC] = RING_LAYOUT_MAGIC  # last: an attacher that sees it sees the rest
            else:
                if len(buf) < RING_HEADER_SIZE + RING_MIN_CAPACITY or self._i[_I_MAGIC] != RING_LAYOUT_MAGIC:
                    magic = self._i[_I_MAGIC] if len(buf) >= RING_HEADER_SIZE else 0
                    raise ValueError(f"{name!r} is not a DSPex ring (layout magic {magic:#010x})")
                if self._i[_I_VERSION] != RING_LAYOUT_VERSION:
                    raise ValueError(f"ring {name!r} has layout version {self._i[_I_VERSION]}, "
                                     f"this side reads version {RING_LAYOUT_VERSION}")
                capacity = self._q[_Q_CAPACITY]
                if capacity < RING_MIN_CAPACITY or RING_HEADER_SIZE + capacity > len(buf):
                    raise ValueError(f"ring {name!r} declares {capacity} data bytes, the segment holds "
                                     f"{len(buf) - RING_HEADER_SIZE}")
            self._capacity = capacity
            self._max = min(MAX_FRAME_SIZE, capacity - FRAME_HEADER_SIZE)
            self._data = buf[RING_HEADER_SIZE:RING_HEADER_SIZE + capacity]
            base = _base_address(buf)
        except BaseException:
            self._open = False
            self._release()
            segment.close(unlink=owner)
            raise
        self._data_seq_address = base + 4 * _I_DATA_SEQ
        self._room_seq_address = base + 4 * _I_ROOM_SEQ

    # -- opening and closing ------------------------------------------------------------------------------------

    @classmethod
    def create(cls, capacity: int = 1 << 20, name: str | None = None) -> Ring:
        """A new ring of ``capacity`` data bytes, named ``name`` (or a fresh ``dxr_<pid>_<hex>``)."""
        if capacity < RING_MIN_CAPACITY:
            raise ValueError(f"ring capacity must be at least {RING_MIN_CAPACITY} bytes, got {capacity}")
        if name is None:
            name = f"dxr_{os.getpid()}_{secrets.token_hex(6)}"
        return cls(_Segment(name, RING_HEADER_SIZE + capacity, create=True), name, owner=True)

    @classmethod
    def attach(cls, name: str) -> Ring:
        """The ring ``name`` created by another process (or handle); FileNotFoundError when there is none."""
        return cls(_Segment(name, 0, create=False), name, owner=False)

    @property
    def name(self) -> str:
        return self._name

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def closed(self) -> bool:
        """True once either side marked the ring closed, or this handle was closed."""
        return not self._open or bool(self._i[_I_CLOSED])

    def mark_closed(self) -> None:
        """Raise the closed flag and wake both sides: ``put`` then raises BrokenPipeError, ``get`` on an empty ring
        EOFError."""
        self._check_open()
        i = self._i
        i[_I_CLOSED] = 1
        i[_I_DATA_SEQ] = (i[_I_DATA_SEQ] + 1) & 0xFFFFFFFF
        i[_I_ROOM_SEQ] = (i[_I_ROOM_SEQ] + 1) & 0xFFFFFFFF
        _futex_wake(self._data_seq_address)
        _futex_wake(self._room_seq_address)

    def close(self) -> None:
        """Mark the ring closed, unmap it and, on the creating side, unlink it. Idempotent."""
        if not self._open:
            return
        self.mark_closed()
        deadline = time.monotonic() + 1.0
        while self._users and time.monotonic() < deadline:  # another thread of ours is waking up from a wait
            time.sleep(0.001)
        if self._users:
            raise RuntimeError(f"ring {self._name!r} is still in use by another thread")
        self._open = False
        self._release()
        self._segment.close(unlink=self._owner and os.getpid() == self._pid)

    def _release(self) -> None:
        for attr in ("_q", "_i", "_data"):
            view = self.__dict__.pop(attr, None)
            if view is not None:
                view.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if self._open and os.getpid() != self._pid:  # a forked copy going away: leave the ring to its owners
                self._open = False
                self._release()
                self._segment.close(unlink=False)
            self.close()
        except Exception:  # noqa: BLE001, S110 - a finalizer has no one to raise to
            pass

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Ring {self._name!r} capacity={self._capacity} {state}>"

    def _check_open(self) -> None:
        if not self._open:
            raise ValueError("the ring handle is closed")

    # -- waiting --------------------------------------------------------------------------------------------------

    def _ready(self, need: int, room: bool) -> int:
        """1: ``need`` bytes of data (or of room) are there; 0: closed (for data: and empty); 2: not yet."""
        q = self._q
        used = q[_Q_WRITE] - q[_Q_READ]
        if room:
            if self._i[_I_CLOSED]:
                return 0
            return 1 if self._capacity - used >= need else 2
        if used >= need:
            return 1
        if self._i[_I_CLOSED]:
            return 1 if q[_Q_WRITE] - q[_Q_READ] >= need else 0
        return 2

    def _wait(self, need: int, room: bool, timeout: float | None) -> bool:
        """Wait until ``_ready``; True when ready, False when closed; TimeoutError after ``timeout`` seconds."""
        state = self._ready(need, room)
        if state != 2:
            return state == 1
        now = time.monotonic()
        deadline = None if timeout is None else now + max(timeout, 0.0)
        spin_end = now + SPIN_SECONDS if deadline is None else min(now + SPIN_SECONDS, deadline)
        seq_index, flag_index = (_I_ROOM_SEQ, _I_WRITER_SLEEPS) if room else (_I_DATA_SEQ, _I_READER_SLEEPS)
        address = self._room_seq_address if room else self._data_seq_address
        i = self._i
        backoff = 50e-6
        self._users += 1
        try:
            while True:
                state = self._ready(need, room)
                if state != 2:
                    return state == 1
                now = time.monotonic()
                if now < spin_end:
                    _yield()
                    continue
                if deadline is not None and now >= deadline:
                    if room:
                        raise TimeoutError(f"no room for a {need}-byte frame within {timeout:g} s")
                    raise TimeoutError(f"no frame arrived within {timeout:g} s")
                seq = i[seq_index]
                i[flag_index] = 1
                state = self._ready(need, room)
                if state != 2:
                    i[flag_index] = 0
                    return state == 1
                nap = _SLICE_SECONDS if deadline is None else min(_SLICE_SECONDS, deadline - now)
                if _FUTEX is None:
                    nap = min(nap, backoff)
                    backoff = min(backoff * 2, 1e-3)
                _futex_wait(address, seq, nap)
                i[flag_index] = 0
        finally:
            self._users -= 1

    def _wake(self, seq_index: int, flag_index: int, address: int) -> None:
        i = self._i
        if i[flag_index]:
            i[flag_index] = 0
            i[seq_index] = (i[seq_index] + 1) & 0xFFFFFFFF
            _futex_wake(address)

    # -- writing --------------------------------------------------------------------------------------------------

    def put(self, obj: Any, timeout: float | None = None) -> None:
        """Write ``obj`` as one frame, waiting (up to ``timeout`` s) for room. FrameError("oversized") when it can
        never fit, BrokenPipeError once the ring is marked closed, TimeoutError."""
        self._check_open()
        self._write(memoryview(pack_frame(obj, self._max)), timeout)

    def put_frame(self, frame: bytes | bytearray | memoryview, timeout: float | None = None) -> None:
        """Write one pre-packed frame. Its header is checked (one whole frame of its declared size, within this
        ring's limit), its checksum is left to the reader."""
        self._check_open()
        view = memoryview(frame).cast("B")
        have = len(view)
        if have < FRAME_HEADER_SIZE:
            raise _short_header(have)
        magic, version, _flags, size, _crc = _HEADER.unpack_from(view, 0)
        _check_header(magic, version, size, have, self._max)
        if have > FRAME_HEADER_SIZE + size:
            raise FrameError(f"corrupt frame: header declares {size} payload bytes, {have - FRAME_HEADER_SIZE} "
                             f"present", "corrupt")
        self._write(view, timeout)

    def _write(self, frame: memoryview, timeout: float | None) -> None:
        n = len(frame)
        if self._i[_I_CLOSED]:
            raise BrokenPipeError("the ring is closed")
        if not self._wait(n, True, timeout):
            raise BrokenPipeError("the ring is closed")
        q, data, cap = self._q, self._data, self._capacity
        w = q[_Q_WRITE]
        at = w % cap
        first = min(n, cap - at)
        data[at:at + first] = frame[:first]
        if first < n:
            data[:n - first] = frame[first:]
        q[_Q_WRITE] = w + n
        self._wake(_I_DATA_SEQ, _I_READER_SLEEPS, self._data_seq_address)

    # -- reading --------------------------------------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> Any:
        """The next object, waiting (up to ``timeout`` s) for one. FrameError as ``unpack_frame`` raises it,
        EOFError once the ring is marked closed and empty, TimeoutError."""
        payload, crc = self._take(timeout, whole=False)
        return _check_payload(payload, crc)

    def get_frame(self, timeout: float | None = None) -> bytes:
        """The next frame as bytes (header and checksum checked, payload not decoded)."""
        frame, crc = self._take(timeout, whole=True)
        payload = memoryview(frame)[FRAME_HEADER_SIZE:]
        actual = zlib.crc32(payload)
        if actual != crc:
            raise FrameError(f"corrupt frame: checksum {actual:08x} does not match {crc:08x}", "corrupt")
        return frame

    def _copy_out(self, position: int, n: int) -> bytes:
        data, cap = self._data, self._capacity
        at = position % cap
        if at + n <= cap:
            return data[at:at + n].tobytes()
        return data[at:].tobytes() + data[:n - (cap - at)].tobytes()

    def _take(self, timeout: float | None, whole: bool) -> tuple[bytes, int]:
        self._check_open()
        if not self._wait(1, False, timeout):
            raise EOFError("the ring is closed and empty")
        q = self._q
        r = q[_Q_READ]
        have = q[_Q_WRITE] - r
        if have < FRAME_HEADER_SIZE:
            raise _short_header(have)
        magic, version, _flags, size, crc = _HEADER.unpack(self._copy_out(r, FRAME_HEADER_SIZE))
        _check_header(magic, version, size, have, self._max)
        if whole:
            out = self._copy_out(r, FRAME_HEADER_SIZE + size)
        else:
            out = self._copy_out(r + FRAME_HEADER_SIZE, size)
        q[_Q_READ] = r + FRAME_HEADER_SIZE + size
        self._wake(_I_ROOM_SEQ, _I_WRITER_SLEEPS, self._room_seq_address)
        return out, crc
