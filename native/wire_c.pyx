# cython: language_level=3
"""Wire frames between processes (the compiled twin of ``wire_py``: same API, same messages, same ring layout).

Frames: a 12-byte little-endian header (magic ``b"DX"``, version 1, flags 0, payload length u32, CRC-32 of the
payload u32) written in C, a msgpack payload (``msgpack.Packer``, one per thread), a table-driven CRC-32 equal to
``zlib.crc32``. ``Ring``: the shared-memory ring documented in ``wire_py`` (header of three cache lines, then the
data bytes), with acquire/release ``__atomic`` loads and stores of the positions, a bounded spin (polling with
``sched_yield``) and then a futex sleep (``FUTEX_WAIT``/``FUTEX_WAKE`` on the shared sequence words, without the
GIL) in slices of 0.1 s between which pending signals are handled. Off Linux the sleep is a short ``nanosleep``
poll.
"""
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_WRITABLE
from cpython.exc cimport PyErr_CheckSignals

import os
import secrets
import threading
import time

import msgpack

from dspex.errors import FrameError
from .wire_py import _Segment

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #include <errno.h>
    #include <time.h>
    #include <limits.h>
    #include <sched.h>
    #if defined(__linux__)
    #include <linux/futex.h>
    #include <sys/syscall.h>
    #include <unistd.h>
    #endif

    #define DX_OFF_MAGIC 0
    #define DX_OFF_VERSION 4
    #define DX_OFF_CAPACITY 8
    #define DX_OFF_CLOSED 16
    #define DX_OFF_WRITE 64
    #define DX_OFF_DATA_SEQ 72
    #define DX_OFF_READER_SLEEPS 76
    #define DX_OFF_READ 128
    #define DX_OFF_ROOM_SEQ 136
    #define DX_OFF_WRITER_SLEEPS 140
    #define DX_RING_HEADER 192

    #define DX_U32(hdr, off) ((uint32_t *)((char *)(hdr) + (off)))
    #define DX_U64(hdr, off) ((uint64_t *)((char *)(hdr) + (off)))

    static uint32_t dx_crc_table[8][256];

    static void dx_crc_init(void) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
            dx_crc_table[0][i] = c;
        }
        for (int t = 1; t < 8; t++)
            for (uint32_t i = 0; i < 256; i++)
                dx_crc_table[t][i] = (dx_crc_table[t - 1][i] >> 8) ^ dx_crc_table[0][dx_crc_table[t - 1][i] & 0xff];
    }

    /* CRC-32 (IEEE 802.3, reflected), equal to zlib.crc32(data): slicing by 8. */
    static uint32_t dx_crc32(const unsigned char *p, size_t n) {
        uint32_t c = 0xFFFFFFFFu;
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        while (n >= 8) {
            uint32_t a, b;
            memcpy(&a, p, 4);
            memcpy(&b, p + 4, 4);
            a ^= c;
            c = dx_crc_table[7][a & 0xff] ^ dx_crc_table[6][(a >> 8) & 0xff]
              ^ dx_crc_table[5][(a >> 16) & 0xff] ^ dx_crc_table[4][a >> 24]
              ^ dx_crc_table[3][b & 0xff] ^ dx_crc_table[2][(b >> 8) & 0xff]
              ^ dx_crc_table[1][(b >> 16) & 0xff] ^ dx_crc_table[0][b >> 24];
            p += 8;
            n -= 8;
        }
    #endif
        while (n--) c = dx_crc_table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
        return c ^ 0xFFFFFFFFu;
    }

    static inline uint32_t dx_le32(const unsigned char *p) {
        return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
    }

    static inline void dx_put_le32(unsigned char *p, uint32_t v) {
        p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8);
        p[2] = (unsigned char)(v >> 16); p[3] = (unsigned char)(v >> 24);
    }

    static inline void dx_frame_header(unsigned char *h, uint32_t size, uint32_t crc) {
        h[0] = 'D'; h[1] = 'X'; h[2] = 1; h[3] = 0;
        dx_put_le32(h + 4, size);
        dx_put_le32(h + 8, crc);
    }

    static inline uint64_t dx_load64(char *hdr, int off) {
        return __atomic_load_n(DX_U64(hdr, off), __ATOMIC_ACQUIRE);
    }
    static inline void dx_store64(char *hdr, int off, uint64_t v) {
        __atomic_store_n(DX_U64(hdr, off), v, __ATOMIC_RELEASE);
    }
    static inline uint32_t dx_load32(char *hdr, int off) {
        return __atomic_load_n(DX_U32(hdr, off), __ATOMIC_ACQUIRE);
    }
    static inline void dx_store32(char *hdr, int off, uint32_t v) {
        __atomic_store_n(DX_U32(hdr, off), v, __ATOMIC_RELEASE);
    }

    static inline double dx_now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    }

    /* Sleep while *addr == expected, at most `seconds`; 0 or an errno (EAGAIN, ETIMEDOUT, EINTR). */
    static int dx_futex_wait(uint32_t *addr, uint32_t expected, double seconds) {
        if (seconds < 0) seconds = 0;
    #if defined(__linux__)
        struct timespec ts;
        ts.tv_sec = (time_t)seconds;
        ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
        if (ts.tv_nsec >= 1000000000L) ts.tv_nsec = 999999999L;
        long rc = syscall(SYS_futex, addr, FUTEX_WAIT, expected, &ts, NULL, 0);
        return rc == 0 ? 0 : errno;
    #else
        struct timespec ts;
        if (seconds > 200e-6) seconds = 200e-6;
        ts.tv_sec = 0;
        ts.tv_nsec = (long)(seconds * 1e9);
        (void)addr; (void)expected;
        return nanosleep(&ts, NULL) == 0 ? 0 : errno;
    #endif
    }

    static void dx_futex_wake(uint32_t *addr) {
    #if defined(__linux__)
        syscall(SYS_futex, addr, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
    #else
        (void)addr;
    #endif
    }

    /* 1: `need` bytes of data (room: of free space) are there; 0: closed (data: and empty); 2: not yet. */
    static inline int dx_ready(char *hdr, uint64_t cap, uint64_t need, int room) {
        uint64_t r = dx_load64(hdr, DX_OFF_READ);
        uint64_t w = dx_load64(hdr, DX_OFF_WRITE);
        if (room) {
            if (dx_load32(hdr, DX_OFF_CLOSED)) return 0;
            return cap - (w - r) >= need ? 1 : 2;
        }
        if (w - r >= need) return 1;
        if (dx_load32(hdr, DX_OFF_CLOSED)) {
            w = dx_load64(hdr, DX_OFF_WRITE);
            return w - r >= need ? 1 : 0;
        }
        return 2;
    }

    /* Spin until spin_end, then sleep on the futex until deadline: dx_ready's 1 or 0, or -1 when the deadline
       passed or a signal arrived (the caller checks which). Runs without the GIL. */
    static int dx_wait(char *hdr, uint64_t cap, uint64_t need, int room, double deadline, double spin_end) {
        uint32_t *seq = DX_U32(hdr, room ? DX_OFF_ROOM_SEQ : DX_OFF_DATA_SEQ);
        uint32_t *flag = DX_U32(hdr, room ? DX_OFF_WRITER_SLEEPS : DX_OFF_READER_SLEEPS);
        for (;;) {
            int state = dx_ready(hdr, cap, need, room);
            if (state != 2) return state;
            double now = dx_now();
            if (now < spin_end) {
                /* Yield rather than pause: on an oversubscribed machine the peer may be waiting for this very
                   CPU (pure spinning measured 10x slower there); on an idle one sched_yield returns at once. */
                sched_yield();
                continue;
            }
            if (now >= deadline) return -1;
            uint32_t s = __atomic_load_n(seq, __ATOMIC_ACQUIRE);
            __atomic_store_n(flag, 1, __ATOMIC_SEQ_CST);
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
            state = dx_ready(hdr, cap, need, room);
            if (state != 2) {
                __atomic_store_n(flag, 0, __ATOMIC_RELAXED);
                return state;
            }
            int err = dx_futex_wait(seq, s, deadline - now);
            __atomic_store_n(flag, 0, __ATOMIC_RELAXED);
            if (err == EINTR) return -1;
        }
    }

    /* After publishing a position: wake the other side if it sleeps (room: the producer; else the consumer). */
    static inline void dx_notify(char *hdr, int room) {
        uint32_t *seq = DX_U32(hdr, room ? DX_OFF_ROOM_SEQ : DX_OFF_DATA_SEQ);
        uint32_t *flag = DX_U32(hdr, room ? DX_OFF_WRITER_SLEEPS : DX_OFF_READER_SLEEPS);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (__atomic_load_n(flag, __ATOMIC_RELAXED) && __atomic_exchange_n(flag, 0, __ATOMIC_ACQ_REL)) {
            __atomic_add_fetch(seq, 1, __ATOMIC_SEQ_CST);
            dx_futex_wake(seq);
        }
    }

    static void dx_mark_closed(char *hdr) {
        __atomic_store_n(DX_U32(hdr, DX_OFF_CLOSED), 1, __ATOMIC_SEQ_CST);
        __atomic_add_fetch(DX_U32(hdr, DX_OFF_DATA_SEQ), 1, __ATOMIC_SEQ_CST);
        __atomic_add_fetch(DX_U32(hdr, DX_OFF_ROOM_SEQ), 1, __ATOMIC_SEQ_CST);
        dx_futex_wake(DX_U32(hdr, DX_OFF_DATA_SEQ));
        dx_futex_wake(DX_U32(hdr, DX_OFF_ROOM_SEQ));
    }

    static inline void dx_copy_in(unsigned char *data, uint64_t cap, uint64_t pos, const unsigned char *src,
                                  uint64_t n) {
        uint64_t at = pos % cap, first = cap - at;
        if (n <= first) {
            memcpy(data + at, src, n);
        } else {
            memcpy(data + at, src, first);
            memcpy(data, src + first, n - first);
        }
    }

    static inline void dx_copy_out(unsigned char *dst, const unsigned char *data, uint64_t cap, uint64_t pos,
                                   uint64_t n) {
        uint64_t at = pos % cap, first = cap - at;
        if (n <= first) {
            memcpy(dst, data + at, n);
        } else {
            memcpy(dst, data + at, first);
            memcpy(dst + first, data, n - first);
        }
    }
    """
    int DX_OFF_MAGIC, DX_OFF_VERSION, DX_OFF_CAPACITY, DX_OFF_CLOSED, DX_OFF_WRITE, DX_OFF_READ
    int DX_OFF_DATA_SEQ, DX_OFF_ROOM_SEQ, DX_RING_HEADER
    void dx_crc_init()
    uint32_t dx_crc32(const unsigned char *p, size_t n) nogil
    uint32_t dx_le32(const unsigned char *p) nogil
    void dx_frame_header(unsigned char *h, uint32_t size, uint32_t crc) nogil
    uint64_t dx_load64(char *hdr, int off) nogil
    void dx_store64(char *hdr, int off, uint64_t v) nogil
    uint32_t dx_load32(char *hdr, int off) nogil
    void dx_store32(char *hdr, int off, uint32_t v) nogil
    double dx_now() nogil
    int dx_ready(char *hdr, uint64_t cap, uint64_t need, int room) nogil
    int dx_wait(char *hdr, uint64_t cap, uint64_t need, int room, double deadline, double spin_end) nogil
    void dx_notify(char *hdr, int room) nogil
    void dx_mark_closed(char *hdr) nogil
    void dx_copy_in(unsigned char *data, uint64_t cap, uint64_t pos, const unsigned char *src, uint64_t n) nogil
    void dx_copy_out(unsigned char *dst, const unsigned char *data, uint64_t cap, uint64_t pos, uint64_t n) nogil

dx_crc_init()

__all__ = ["FRAME_HEADER_SIZE", "FRAME_MAGIC", "FRAME_VERSION", "MAX_FRAME_SIZE", "Ring", "pack_frame", "unpack_frame"]

FRAME_MAGIC = b"DX"
FRAME_VERSION = 1
FRAME_HEADER_SIZE = 12
MAX_FRAME_SIZE = 64 * 1024 * 1024
RING_LAYOUT_MAGIC = 0x47525844
RING_LAYOUT_VERSION = 1
RING_HEADER_SIZE = 192
RING_MIN_CAPACITY = 16
SPIN_SECONDS = 50e-6

cdef enum:
    _HDR = 12  # FRAME_HEADER_SIZE
    _NOGIL_CRC = 65536  # payloads from this size on are checksummed without the GIL
cdef double _SLICE_SECONDS = 0.1  # the longest sleep between two checks for signals
cdef double _SPIN = SPIN_SECONDS

cdef object _unpackb = msgpack.unpackb
cdef object _UnpackException = msgpack.UnpackException
cdef object _tls = threading.local()


cdef object _packer():
    try:
        return _tls.packer
    except AttributeError:
        packer = _tls.packer = msgpack.Packer(use_bin_type=True)
        return packer


cdef inline uint32_t _crc(const unsigned char *p, size_t n) noexcept:
    cdef uint32_t c
    if n >= _NOGIL_CRC:
        with nogil:
            c = dx_crc32(p, n)
        return c
    return dx_crc32(p, n)


cdef bytes _pack_payload(obj):
    payload = (<object>_packer()).pack(obj)
    if len(payload) > 1 << 20:
        _tls.packer = msgpack.Packer(use_bin_type=True)  # do not keep a grown buffer alive in this thread
    return payload


# -- frames --------------------------------------------------------------------------------------------------------

cdef inline _short_header(have):
    return FrameError(f"short frame: {have} bytes, the header needs {FRAME_HEADER_SIZE}", "short")


cdef int _check_header(const unsigned char *h, long long have, long long max_size, uint32_t *size_out,
                       uint32_t *crc_out) except -1:
    """The header checks of a frame, in ``wire_py``'s order; ``have``: the bytes present from its first byte on."""
    cdef uint32_t size
    if h[0] != 0x44 or h[1] != 0x58:
        magic = PyBytes_FromStringAndSize(<const char *>h, 2)
        raise FrameError(f"foreign frame: magic {magic!r}, expected {FRAME_MAGIC!r}", "foreign")
    if h[2] != 1:
        raise FrameError(f"foreign frame: version {<int>h[2]}, this side reads version {FRAME_VERSION}", "foreign")
    size = dx_le32(h + 4)
    if <long long>size > max_size:
        raise FrameError(f"oversized frame: {size} payload bytes, the limit is {max_size}", "oversized")
    if have < _HDR + <long long>size:
        raise FrameError(f"short frame: header declares {size} payload bytes, {have - _HDR} present",
                         "short")
    size_out[0] = size
    crc_out[0] = dx_le32(h + 8)
    return 0


cdef object _decode(payload, uint32_t actual, uint32_t crc):
    if actual != crc:
        raise FrameError(f"corrupt frame: checksum {actual:08x} does not match {crc:08x}", "corrupt")
    try:
        return _unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, TypeError, _UnpackException) as e:  # TypeError: an unhashable map key
        raise FrameError(f"corrupt frame: payload is not one msgpack value ({type(e).__name__})", "corrupt") from None


cdef long long _limit(max_size) except? -1:
    """``max_size`` as a C integer that compares with a u32 size as the Python int would."""
    if max_size >= 0x100000000:
        return 0x100000000
    return max_size


def pack_frame(obj, max_size=MAX_FRAME_SIZE):
    """``obj`` as one frame; raises FrameError("oversized") when its payload exceeds ``max_size``."""
    cdef bytes payload = _pack_payload(obj)
    cdef Py_ssize_t n = len(payload)
    if n > max_size:
        raise FrameError(f"oversized frame: {n} payload bytes, the limit is {max_size}", "oversized")
    cdef const unsigned char *src = <const unsigned char *>PyBytes_AS_STRING(payload)
    out = PyBytes_FromStringAndSize(NULL, _HDR + n)
    cdef unsigned char *dst = <unsigned char *>PyBytes_AS_STRING(out)
    dx_frame_header(dst, <uint32_t>n, _crc(src, <size_t>n))
    memcpy(dst + _HDR, src, n)
    return out


def unpack_frame(buf, offset=0, max_size=MAX_FRAME_SIZE):
    """The object of the frame at ``buf[offset:]`` and the offset just past it.

    Raises FrameError with ``reason`` "short" (not all of the frame is there), "oversized" (it declares more
    than ``max_size`` payload bytes), "foreign" (not a DSPex frame, or another version) or "corrupt"
    (checksum mismatch, or a payload that is not one msgpack value); ValueError for an offset outside ``buf``.
    """
    cdef Py_buffer view
    cdef uint32_t size, crc, actual
    cdef long long have, mx = _limit(max_size)
    cdef Py_ssize_t start, off
    cdef const unsigned char *p
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        if offset < 0 or offset > view.len:
            raise ValueError(f"offset {offset} is outside the buffer of {view.len} bytes")
        off = offset
        have = view.len - off
        if have < _HDR:
            raise _short_header(have)
        p = <const unsigned char *>view.buf + off
        _check_header(p, have, mx, &size, &crc)
        start = off + _HDR
        actual = _crc(p + _HDR, size)
        if size <= 4096:
            payload = PyBytes_FromStringAndSize(<const char *>p + _HDR, size)
        else:
            payload = memoryview(buf).cast("B")[start:start + size]
        return _decode(payload, actual, crc), start + size
    finally:
        PyBuffer_Release(&view)


# -- the ring ------------------------------------------------------------------------------------------------------

cdef class Ring:
    """A single-producer, single-consumer ring of frames in shared memory (layout in ``wire_py``'s docstring).

    ``Ring.create`` makes one (its owner; ``close`` also unlinks it); ``Ring.attach(name)`` opens it from another
    process. ``put``/``get`` move objects, ``put_frame``/``get_frame`` pre-packed frames; both block (with an
    optional ``timeout`` in seconds, then TimeoutError) while the ring is full or empty.
    """

    cdef object _segment
    cdef str _name
    cdef bint _owner
    cdef bint _open
    cdef bint _has_view
    cdef int _users
    cdef Py_buffer _view
    cdef char *_base
    cdef unsigned char *_data
    cdef uint64_t _cap
    cdef long long _max
    cdef object _pid
    cdef object __weakref__

    def __cinit__(self):
        self._has_view = False
        self._open = False
        self._users = 0

    def __init__(self, segment, str name, bint owner):
        cdef uint64_t capacity
        cdef Py_ssize_t size
        self._segment = segment
        self._name = name
        self._owner = owner
        self._pid = os.getpid()  # only the creating process unlinks (not a forked copy of the owner)
        try:
            PyObject_GetBuffer(segment.buf, &self._view, PyBUF_WRITABLE)
            self._has_view = True
            self._base = <char *>self._view.buf
            size = self._view.len
            if owner:
                capacity = <uint64_t>(size - RING_HEADER_SIZE)
                dx_store64(self._base, DX_OFF_CAPACITY, capacity)
                dx_store32(self._base, DX_OFF_VERSION, RING_LAYOUT_VERSION)
                dx_store32(self._base, DX_OFF_MAGIC, RING_LAYOUT_MAGIC)  # last: an attacher that sees it sees the rest
            else:
                if (size < RING_HEADER_SIZE + RING_MIN_CAPACITY
                        or dx_load32(self._base, DX_OFF_MAGIC) != RING_LAYOUT_MAGIC):
                    magic = dx_load32(self._base, DX_OFF_MAGIC) if size >= RING_HEADER_SIZE else 0
                    raise ValueError(f"{name!r} is not a DSPex ring (layout magic {magic:#010x})")
                if dx_load32(self._base, DX_OFF_VERSION) != RING_LAYOUT_VERSION:
                    raise ValueError(f"ring {name!r} has layout version {dx_load32(self._base, DX_OFF_VERSION)}, "
                                     f"this side reads version {RING_LAYOUT_VERSION}")
                capacity = dx_load64(self._base, DX_OFF_CAPACITY)
                if capacity < RING_MIN_CAPACITY or RING_HEADER_SIZE + capacity > <uint64_t>size:
                    raise ValueError(f"ring {name!r} declares {capacity} data bytes, the segment holds "
                                     f"{size - RING_HEADER_SIZE}")
        except BaseException:
            if self._has_view:
                PyBuffer_Release(&self._view)
                self._has_view = False
            segment.close(unlink=owner)
            raise
        self._cap = capacity
        self._max = min(MAX_FRAME_SIZE, <long long>capacity - FRAME_HEADER_SIZE)
        self._data = <unsigned char *>self._base + DX_RING_HEADER
        self._open = True

    # -- opening and closing ------------------------------------------------------------------------------------

    @classmethod
    def create(cls, capacity=1 << 20, name=None):
        """A new ring of ``capacity`` data bytes, named ``name`` (or a fresh ``dxr_<pid>_<hex>``)."""
        if capacity < RING_MIN_CAPACITY:
            raise ValueError(f"ring capacity must be at least {RING_MIN_CAPACITY} bytes, got {capacity}")
        if name is None:
            name = f"dxr_{os.getpid()}_{secrets.token_hex(6)}"
        return cls(_Segment(name, RING_HEADER_SIZE + capacity, create=True), name, True)

    @classmethod
    def attach(cls, name):
        """The ring ``name`` created by another process (or handle); FileNotFoundError when there is none."""
        return cls(_Segment(name, 0, create=False), name, False)

    @property
    def name(self):
        return self._name

    @property
    def capacity(self):
        return self._cap

    @property
    def closed(self):
        """True once either side marked the ring closed, or this handle was closed."""
        return not self._open or dx_load32(self._base, DX_OFF_CLOSED) != 0

    def mark_closed(self):
        """Raise the closed flag and wake both sides: ``put`` then raises BrokenPipeError, ``get`` on an empty ring
        EOFError."""
        self._check_open()
        dx_mark_closed(self._base)

    def close(self):
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
        self._has_view = False
        PyBuffer_Release(&self._view)
        self._base = NULL
        self._data = NULL
        self._segment.close(unlink=self._owner and os.getpid() == self._pid)

    def __dealloc__(self):
        if self._has_view:
            try:
                here = os.getpid() == self._pid  # a forked copy going away leaves the ring to its owners
            except Exception:
                here = False
            if self._open and here:
                dx_mark_closed(self._base)
            self._open = False
            self._has_view = False
            PyBuffer_Release(&self._view)
            try:
                self._segment.close(unlink=self._owner and here)
            except Exception:
                pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()

    def __repr__(self):
        state = "closed" if self.closed else "open"
        return f"<Ring {self._name!r} capacity={self._cap} {state}>"

    cdef int _check_open(self) except -1:
        if not self._open:
            raise ValueError("the ring handle is closed")
        return 0

    # -- waiting --------------------------------------------------------------------------------------------------

    cdef int _wait(self, uint64_t need, int room, timeout) except -1:
        """Wait until ``dx_ready``: 1 when ready, 0 when closed; TimeoutError after ``timeout`` seconds."""
        cdef int state = dx_ready(self._base, self._cap, need, room)
        if state != 2:
            return state
        cdef double now = dx_now(), deadline, spin_end, slice_end, t
        if timeout is None:
            deadline = now + 1e18
        else:
            t = timeout
            deadline = now + (t if t > 0 else 0.0)
        spin_end = min(now + _SPIN, deadline)
        self._users += 1
        try:
            while True:
                slice_end = min(dx_now() + _SLICE_SECONDS, deadline)
                with nogil:
                    state = dx_wait(self._base, self._cap, need, room, slice_end, spin_end)
                if state >= 0:
                    return state
                spin_end = 0.0
                if dx_now() >= deadline:
                    if room:
                        raise TimeoutError(f"no room for a {need}-byte frame within {timeout:g} s")
                    raise TimeoutError(f"no frame arrived within {timeout:g} s")
                PyErr_CheckSignals()
        finally:
            self._users -= 1

    # -- writing --------------------------------------------------------------------------------------------------

    def put(self, obj, timeout=None):
        """Write ``obj`` as one frame, waiting (up to ``timeout`` s) for room. FrameError("oversized") when it can
        never fit, BrokenPipeError once the ring is marked closed, TimeoutError."""
        cdef unsigned char head[12]
        self._check_open()
        cdef bytes payload = _pack_payload(obj)
        cdef Py_ssize_t n = len(payload)
        if n > self._max:
            raise FrameError(f"oversized frame: {n} payload bytes, the limit is {self._max}", "oversized")
        cdef const unsigned char *src = <const unsigned char *>PyBytes_AS_STRING(payload)
        dx_frame_header(head, <uint32_t>n, _crc(src, <size_t>n))
        self._write(head, _HDR, src, n, timeout)

    def put_frame(self, frame, timeout=None):
        """Write one pre-packed frame. Its header is checked (one whole frame of its declared size, within this
        ring's limit), its checksum is left to the reader."""
        cdef Py_buffer view
        cdef uint32_t size, crc
        cdef long long have
        self._check_open()
        PyObject_GetBuffer(frame, &view, PyBUF_SIMPLE)
        try:
            have = view.len
            if have < _HDR:
                raise _short_header(have)
            _check_header(<const unsigned char *>view.buf, have, self._max, &size, &crc)
            if have > _HDR + <long long>size:
                raise FrameError(f"corrupt frame: header declares {size} payload bytes, {have - _HDR} "
                                 f"present", "corrupt")
            self._write(<const unsigned char *>view.buf, view.len, NULL, 0, timeout)
        finally:
            PyBuffer_Release(&view)

    cdef int _write(self, const unsigned char *head, Py_ssize_t head_len, const unsigned char *body,
                    Py_ssize_t body_len, timeout) except -1:
        cdef uint64_t n = <uint64_t>(head_len + body_len), w
        if dx_load32(self._base, DX_OFF_CLOSED):
            raise BrokenPipeError("the ring is closed")
        if not self._wait(n, 1, timeout):
            raise BrokenPipeError("the ring is closed")
        w = dx_load64(self._base, DX_OFF_WRITE)
        dx_copy_in(self._data, self._cap, w, head, <uint64_t>head_len)
        if body_len:
            dx_copy_in(self._data, self._cap, w + <uint64_t>head_len, body, <uint64_t>body_len)
        dx_store64(self._base, DX_OFF_WRITE, w + n)
        dx_notify(self._base, 0)
        return 0

    # -- reading --------------------------------------------------------------------------------------------------

    def get(self, timeout=None):
        """The next object, waiting (up to ``timeout`` s) for one. FrameError as ``unpack_frame`` raises it,
        EOFError once the ring is marked closed and empty, TimeoutError."""
        cdef uint32_t crc, actual
        payload = self._take(timeout, False, &crc)
        actual = _crc(<const unsigned char *>PyBytes_AS_STRING(payload), <size_t>len(payload))
        return _decode(payload, actual, crc)

    def get_frame(self, timeout=None):
        """The next frame as bytes (header and checksum checked, payload not decoded)."""
        cdef uint32_t crc, actual
        frame = self._take(timeout, True, &crc)
        actual = _crc(<const unsigned char *>PyBytes_AS_STRING(frame) + _HDR,
                      <size_t>(len(frame) - _HDR))
        if actual != crc:
            raise FrameError(f"corrupt frame: checksum {actual:08x} does not match {crc:08x}", "corrupt")
        return frame

    cdef object _take(self, timeout, bint whole, uint32_t *crc_out):
        cdef unsigned char head[12]
        cdef uint64_t r, have
        cdef uint32_t size
        self._check_open()
        if not self._wait(1, 0, timeout):
            raise EOFError("the ring is closed and empty")
        r = dx_load64(self._base, DX_OFF_READ)
        have = dx_load64(self._base, DX_OFF_WRITE) - r
        if have < _HDR:
            raise _short_header(have)
        dx_copy_out(head, self._data, self._cap, r, _HDR)
        _check_header(head, <long long>have, self._max, &size, crc_out)
        if whole:
            out = PyBytes_FromStringAndSize(NULL, _HDR + size)
            dx_copy_out(<unsigned char *>PyBytes_AS_STRING(out), self._data, self._cap, r, _HDR + size)
        else:
            out = PyBytes_FromStringAndSize(NULL, size)
            dx_copy_out(<unsigned char *>PyBytes_AS_STRING(out), self._data, self._cap, r + _HDR, size)
        dx_store64(self._base, DX_OFF_READ, r + _HDR + size)
        dx_notify(self._base, 1)
        return out
