"""Wire frames between processes (the Python twin): msgpack payloads behind a fixed 12-byte header.

Header, little-endian: magic ``b"DX"``, version byte, flags byte (0), payload length (u32), CRC-32 of the
payload (u32). The magic and version reject a foreign or newer peer, the length bounds a read before any
byte of payload is trusted, and the checksum catches a torn or overwritten frame. Payloads are msgpack,
never pickle: a frame can carry data, never code. ``Ring`` moves frames through shared memory.
"""
from __future__ import annotations

import struct
import zlib
from typing import Any

import msgpack

from dspex.errors import FrameError

__all__ = ["FRAME_MAGIC", "FRAME_VERSION", "FRAME_HEADER_SIZE", "MAX_FRAME_SIZE", "pack_frame", "unpack_frame",
           "Ring"]

FRAME_MAGIC = b"DX"
FRAME_VERSION = 1
FRAME_HEADER_SIZE = 12
MAX_FRAME_SIZE = 64 * 1024 * 1024  # payload bytes a reader accepts unless told otherwise
_HEADER = struct.Struct("<2sBBII")


def pack_frame(obj: Any, max_size: int = MAX_FRAME_SIZE) -> bytes:
    """``obj`` as one frame; raises FrameError("oversized") when its payload exceeds ``max_size``."""
    payload = msgpack.packb(obj, use_bin_type=True)
    if len(payload) > max_size:
        raise FrameError(f"oversized frame: {len(payload)} payload bytes, the limit is {max_size}", "oversized")
    return _HEADER.pack(FRAME_MAGIC, FRAME_VERSION, 0, len(payload), zlib.crc32(payload)) + payload


def unpack_frame(buf: bytes | bytearray | memoryview, offset: int = 0,
                 max_size: int = MAX_FRAME_SIZE) -> tuple[Any, int]:
    """The object of the frame at ``buf[offset:]`` and the offset just past it.

    Raises FrameError with ``reason`` "short" (not all of the frame is there), "oversized" (it declares more
    than ``max_size`` payload bytes), "foreign" (not a DSPex frame, or another version) or "corrupt"
    (checksum mismatch, or a payload that is not one msgpack value).
    """
    have = len(buf) - offset
    if have < FRAME_HEADER_SIZE:
        raise FrameError(f"short frame: {have} bytes, the header needs {FRAME_HEADER_SIZE}", "short")
    magic, version, _flags, size, crc = _HEADER.unpack_from(buf, offset)
    if magic != FRAME_MAGIC:
        raise FrameError(f"foreign frame: magic {bytes(magic)!r}, expected {FRAME_MAGIC!r}", "foreign")
    if version != FRAME_VERSION:
        raise FrameError(f"foreign frame: version {version}, this side reads version {FRAME_VERSION}", "foreign")
    if size > max_size:
        raise FrameError(f"oversized frame: {size} payload bytes, the limit is {max_size}", "oversized")
    start = offset + FRAME_HEADER_SIZE
    end = start + size
    if len(buf) < end:
        raise FrameError(f"short frame: header declares {size} payload bytes, {len(buf) - start} present", "short")
    payload = memoryview(buf)[start:end]
    actual = zlib.crc32(payload)
    if actual != crc:
        raise FrameError(f"corrupt frame: checksum {actual:08x} does not match {crc:08x}", "corrupt")
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as e:
        raise FrameError(f"corrupt frame: payload is not one msgpack value ({type(e).__name__})", "corrupt") from None
    return obj, end


class Ring:
    """Placeholder: the shared-memory ring lands with the wire twins (issue 4)."""
