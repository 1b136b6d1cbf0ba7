"""The ``.dspexc`` artifact: exact round trips, atomic saves, and every kind of damage told apart (SPEC §5)."""
from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dspex
from dspex.errors import ArtifactError
from dspex.ir.artifact import dumps, load, loads, save
from dspex.ir.codec import encode_program
from dspex.ir.program import Program, VarDecl
from dspex.ir.types import INT
from tests.ir.programs import assert_same_program, reviews

REASONS = {"not-an-artifact", "newer-version", "truncated", "corrupted"}


@pytest.fixture(scope="module")
def data() -> bytes:
    return dumps(reviews())


def split(data: bytes) -> tuple[dict[str, Any], int]:
    """The header and where the payload starts."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    return unpacker.unpack(), unpacker.tell()


def reason(data: bytes) -> str:
    with pytest.raises(ArtifactError) as caught:
        loads(data)
    assert caught.value.reason in REASONS
    return caught.value.reason


def file_reason(path: Path) -> str:
    with pytest.raises(ArtifactError) as caught:
        load(path)
    assert str(path) in str(caught.value)
    assert caught.value.reason in REASONS
    return caught.value.reason


def artifact(header: dict[str, Any], payload: bytes) -> bytes:
    packed: bytes = msgpack.packb(header)
    return packed + payload


def good_header(payload: bytes, **changes: Any) -> dict[str, Any]:
    header = {"format": "dspexc", "version": 1, "source_sha256": "", "compiler": dspex.__version__,
              "payload_sha256": hashlib.sha256(payload).hexdigest(), "payload_size": len(payload)}
    header.update(changes)
    return header


# -- round trips ------------------------------------------------------------------------------------------

def test_save_load_round_trip(tmp_path: Path) -> None:
    program = reviews()
    save(program, tmp_path / "reviews.dspexc")
    assert_same_program(program, load(tmp_path / "reviews.dspexc"))
    assert_same_program(program, load(str(tmp_path / "reviews.dspexc")))


def test_program_save_method_writes_the_artifact(tmp_path: Path) -> None:
    reviews().save(tmp_path / "p.dspexc")
    assert_same_program(reviews(), load(tmp_path / "p.dspexc"))


def test_header_then_payload(data: bytes) -> None:
    header, start = split(data)
    payload = data[start:]
    assert list(header) == ["format", "version", "source_sha256", "payload_sha256", "compiler", "payload_size"]
    assert header["format"] == "dspexc" and header["version"] == 1
    assert header["source_sha256"] == reviews().source_sha256
    assert header["compiler"] == dspex.__version__
    assert header["payload_size"] == len(payload)
    assert header["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert msgpack.unpackb(payload, raw=False) == encode_program(reviews())


def test_dumps_is_deterministic(data: bytes) -> None:
    assert dumps(reviews()) == data
    assert_same_program(reviews(), loads(data))


# -- atomic save ----------------------------------------------------------------------------------------------

def test_save_leaves_only_the_artifact(tmp_path: Path) -> None:
    target = tmp_path / "out.dspexc"
    save(reviews(), target)
    save(Program(source_sha256="cd" * 32), target)  # replacing an existing file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.dspexc"]
    assert load(target).source_sha256 == "cd" * 32
    assert target.stat().st_mode & 0o777 == 0o644


def test_failed_save_keeps_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "out.dspexc"
    save(reviews(), target)
    before = target.read_bytes()
    unencodable = Program(vars={"x": VarDecl("x", INT, object())})
    with pytest.raises(ValueError):
        save(unencodable, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.dspexc"]


def test_save_failing_mid_write_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk on fire"):
        save(reviews(), tmp_path / "out.dspexc")
    assert list(tmp_path.iterdir()) == []


# -- damage -----------------------------------------------------------------------------------------------------

def test_truncation_at_every_offset(data: bytes) -> None:
    assert reason(b"") == "not-an-artifact"
    for end in range(1, len(data)):
        assert reason(data[:end]) == "truncated", end


def test_truncated_files(tmp_path: Path, data: bytes) -> None:
    _, start = split(data)
    for end in sorted({1, 2, start - 1, start, start + 1, len(data) - 1, *range(3, len(data), 97)}):
        path = tmp_path / f"cut{end}.dspexc"
        path.write_bytes(data[:end])
        assert file_reason(path) == "truncated", end


def test_bit_flips_in_the_payload_are_corruption(data: bytes) -> None:
    _, start = split(data)
    for offset in range(start, len(data)):
        damaged = bytearray(data)
        damaged[offset] ^= 1 << (offset % 8)
        assert reason(bytes(damaged)) == "corrupted", offset


def test_bit_flips_in_the_header_are_artifact_errors(data: bytes) -> None:
    _, start = split(data)
    expected = encode_program(reviews())
    seen = set()
    for offset in range(start):
        for bit in range(8):
            damaged = bytearray(data)
            damaged[offset] ^= 1 << bit
            try:
                program = loads(bytes(damaged))
            except ArtifactError as e:
                seen.add(e.reason)
            else:  # only the compiler's version is unchecked metadata; the header ends with it and the size
                end = start - len(msgpack.packb("payload_size")) - len(msgpack.packb(len(data) - start))
                assert end - len(dspex.__version__) <= offset < end
                assert encode_program(program) == expected
    assert seen <= REASONS and "corrupted" in seen


def test_damaged_files(tmp_path: Path, data: bytes) -> None:
    _, start = split(data)
    path = tmp_path / "flip.dspexc"
    for offset in range(start, len(data), 61):
        damaged = bytearray(data)
        damaged[offset] ^= 0x40
        path.write_bytes(damaged)
        assert file_reason(path) == "corrupted", offset


def test_trailing_bytes_are_corruption(data: bytes) -> None:
    assert reason(data + b"\x00") == "corrupted"
    assert reason(data + data) == "corrupted"


_PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde"
_FOREIGN = {
    "empty": b"",
    "png": _PNG,
    "json": json.dumps({"format": "dspexc", "version": 1}).encode(),
    "text": b"pipeline digest(reviews: list[str]) -> summary: str {}\n",
    "gzip": b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03",
    "msgpack map without format": msgpack.packb({"version": 1, "payload_size": 0}),
    "msgpack map of another format": msgpack.packb({"format": "other", "version": 1}),
    "msgpack list": msgpack.packb(["dspexc", 1]),
    "msgpack int": msgpack.packb(7),
    "msgpack ext": msgpack.packb(msgpack.ExtType(5, b"boom")),
    "msgpack timestamp": msgpack.packb(msgpack.Timestamp(1, 0)),
    "map with a bytes format": msgpack.packb({"format": b"dspexc"}, use_bin_type=True),
    "map with int keys": msgpack.packb({1: "dspexc"}, strict_types=False),
    "invalid utf-8": b"\xa2\xff\xfe",
    "reserved byte": b"\xc1" * 20,
    "huge declared map": b"\xdf\xff\xff\xff\xff",
    "huge declared string": b"\xdb\xff\xff\xff\xff" + b"x" * 10,
}


@pytest.mark.parametrize("content", list(_FOREIGN.values()), ids=list(_FOREIGN))
def test_foreign_files_are_not_artifacts(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "foreign.dspexc"
    path.write_bytes(content)
    assert file_reason(path) == "not-an-artifact"


def test_random_files_are_not_artifacts(tmp_path: Path) -> None:
    rng = random.Random(1234)
    path = tmp_path / "random.dspexc"
    for size in (1, 2, 7, 100, 5000, 200_000):
        for _ in range(5):
            content = rng.randbytes(size)
            if 0x81 <= content[0] <= 0x8F:  # a map cut short could be our header: tested elsewhere
                content = b"\x00" + content
            path.write_bytes(content)
            assert file_reason(path) == "not-an-artifact"


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_any_bytes_load_or_raise_artifact_error(content: bytes) -> None:
    try:
        loads(content)
    except ArtifactError as e:
        assert e.reason in REASONS


def test_newer_version(tmp_path: Path) -> None:
    path = tmp_path / "future.dspexc"
    path.write_bytes(artifact({"format": "dspexc", "version": 2, "whatever": "changed"}, b"\x00\x01\x02"))
    with pytest.raises(ArtifactError) as caught:
        load(path)
    assert caught.value.reason == "newer-version"
    message = str(caught.value)
    assert str(path) in message and "version 2" in message and "version 1" in message


@pytest.mark.parametrize("changes", [
    {"version": 0}, {"version": "1"}, {"version": True}, {"version": None}, {"payload_size": "9"},
    {"payload_size": -1}, {"payload_size": None}, {"payload_sha256": None}, {"payload_sha256": "0" * 64},
    {"source_sha256": None}, {"source_sha256": "ef" * 32}, {"compiler": 1},
])
def test_malformed_headers_are_corruption(data: bytes, changes: dict[str, Any]) -> None:
    _, start = split(data)
    payload = data[start:]
    assert reason(artifact(good_header(payload, **changes), payload)) == "corrupted"


def test_header_without_version_is_corruption() -> None:
    assert reason(msgpack.packb({"format": "dspexc"})) == "corrupted"


@pytest.mark.parametrize("payload", [
    b"\xc1",                                              # not msgpack
    msgpack.packb({"k": "program"}),                       # msgpack, not a program
    msgpack.packb(encode_program(reviews())) + b"\x00",    # a program and trailing data
    msgpack.packb([1, 2, 3]),
    msgpack.packb(msgpack.ExtType(1, b"x")),
    b"\x91" * 5000 + b"\xc0",                              # nested beyond msgpack's stack
])
def test_sound_header_over_a_bad_payload_is_corruption(payload: bytes) -> None:
    assert reason(artifact(good_header(payload), payload)) == "corrupted"


def test_header_larger_than_any_real_one_is_not_an_artifact() -> None:
    assert reason(msgpack.packb({"padding": "x" * 100_000})) == "not-an-artifact"


def test_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "nope.dspexc")


def test_loading_never_imports_lark(tmp_path: Path) -> None:
    path = tmp_path / "p.dspexc"
    save(reviews(), path)
    code = ("import sys\nfrom dspex.ir.artifact import load\n"
            f"p = load({str(path)!r})\nassert sorted(p.pipelines) == ['digest', 'triage']\n"
            "assert 'lark' not in sys.modules, 'lark was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
