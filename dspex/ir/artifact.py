"""The ``.dspexc`` artifact (SPEC §5): a msgpack header map, then the msgpack-encoded program IR.

The header says what the file is and checks the payload (its size and sha256), so every kind of damage is
told apart before the payload is decoded: ``ArtifactError.reason`` is ``not-an-artifact``, ``newer-version``,
``truncated`` or ``corrupted``. Loading imports only msgpack and the IR (never Lark, never user code), and
decodes through ``dspex.ir.codec``'s fixed tables: no pickle, no msgpack ext hooks.
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import IO, Any, TypeGuard

import msgpack

from dspex import __version__
from dspex.errors import ArtifactError
from dspex.ir.codec import decode_program, encode_program
from dspex.ir.program import Program

__all__ = ["FORMAT", "VERSION", "dumps", "loads", "save", "load"]

FORMAT, VERSION = "dspexc", 1
_HEADER_LIMIT = 64 * 1024  # a real header is a few hundred bytes; more means this is something else
# A header cut short still starts like ours: a map whose first entry is "format": "dspexc".
_MAGIC: bytes = msgpack.packb("format") + msgpack.packb(FORMAT)


def dumps(program: Program) -> bytes:
    """The artifact's bytes: the header, then the payload it describes."""
    payload: bytes = msgpack.packb(encode_program(program), use_bin_type=True)
    header: bytes = msgpack.packb({
        "format": FORMAT, "version": VERSION, "source_sha256": program.source_sha256,
        "payload_sha256": hashlib.sha256(payload).hexdigest(), "compiler": __version__, "payload_size": len(payload),
    }, use_bin_type=True)
    return header + payload


def save(program: Program, path: str | os.PathLike[str]) -> None:
    """Write the artifact atomically: readers see the old file or the whole new one, never a torn write."""
    path = Path(path)
    data = dumps(program)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); platforms that cannot open a directory skip it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path: str | os.PathLike[str]) -> Program:
    """Read an artifact; raises ``ArtifactError`` naming the file and the reason when it is not a sound one."""
    with open(path, "rb") as f:
        return _read(f, os.fspath(path))


def loads(data: bytes) -> Program:
    """``load`` for bytes in memory."""
    return _read(io.BytesIO(data), "<bytes>")


def _read(f: IO[bytes], name: str) -> Program:
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    header, offset = _read_header(f, name)
    payload_size = _check_header(header, name)
    have = size - offset
    if have < payload_size:
        raise ArtifactError(f"{name}: truncated artifact: the program has {have} of its {payload_size} bytes",
                            "truncated")
    if have > payload_size:
        raise ArtifactError(f"{name}: corrupted artifact: {have - payload_size} unexpected bytes after the program",
                            "corrupted")
    f.seek(offset)
    payload = f.read(payload_size)
    if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
        raise ArtifactError(f"{name}: corrupted artifact: the program's sha256 does not match the header",
                            "corrupted")
    try:
        program = decode_program(msgpack.unpackb(payload, raw=False, strict_map_key=True))
    except (ValueError, msgpack.UnpackException) as e:  # CodecError is a ValueError
        raise ArtifactError(f"{name}: corrupted artifact: the program cannot be decoded: {e}", "corrupted") from e
    if program.source_sha256 != header["source_sha256"]:
        raise ArtifactError(f"{name}: corrupted artifact: the header's source_sha256 is not the program's",
                            "corrupted")
    return program


def _read_header(f: IO[bytes], name: str) -> tuple[Any, int]:
    """The first msgpack object and where the payload starts.

    A header that fails to parse but starts like ours (a map whose first entry is ``"format": "dspexc"``)
    is a damaged artifact, not a foreign file.
    """
    unpacker = msgpack.Unpacker(f, raw=False, strict_map_key=True, max_buffer_size=_HEADER_LIMIT)
    try:
        return unpacker.unpack(), unpacker.tell()
    except (ValueError, msgpack.UnpackException) as e:
        f.seek(0)
        head = f.read(1 + len(_MAGIC))
        ours = len(head) > 0 and 0x81 <= head[0] <= 0x8F and _MAGIC.startswith(head[1:])
        if ours and isinstance(e, msgpack.OutOfData):
            raise ArtifactError(f"{name}: truncated artifact: the file ends inside its header", "truncated") from None
        if ours and len(head) > len(_MAGIC):
            raise ArtifactError(f"{name}: corrupted artifact: unreadable header ({e})", "corrupted") from None
        raise _not_artifact(name, "empty file" if not head else f"no msgpack header ({e})") from None


def _not_artifact(name: str, why: str) -> ArtifactError:
    return ArtifactError(f"{name}: not a DSPex artifact (.dspexc): {why}", "not-an-artifact")


def _is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_header(header: Any, name: str) -> int:
    """The payload size the header promises, once the header is known to be a sound version-1 header."""
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _not_artifact(name, f"no {FORMAT!r} header")
    version, size = header.get("version"), header.get("payload_size")
    if _is_int(version) and version > VERSION:  # checked first: a newer header may differ in everything else
        raise ArtifactError(f"{name}: artifact format version {version} is newer than this dspex {__version__} "
                            f"reads (version {VERSION}); rebuild it with this dspexc or upgrade dspex",
                            "newer-version")
    texts = ("payload_sha256", "source_sha256", "compiler")
    if not (_is_int(version) and version == VERSION and _is_int(size) and size >= 0
            and all(isinstance(header.get(key), str) for key in texts)):
        raise ArtifactError(f"{name}: corrupted artifact: malformed header", "corrupted")
    return size
