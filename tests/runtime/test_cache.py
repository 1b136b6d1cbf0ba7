"""The step cache: the LRU, the SQLite file (persistence, modes, damage), in-flight sharing (its keys are tested
with their twins in ``tests/native/test_cachekey.py``)."""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from dspex.runtime.cache import CACHE_FILE, MISSING, StepCache
from dspex.runtime.config import CacheConfig, Config, load_config


def k(n: int) -> bytes:
    return n.to_bytes(32, "big")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / CACHE_FILE


# -- memory tier --------------------------------------------------------------------------------------------------

def test_get_put_and_missing() -> None:
    cache = StepCache(None)
    assert cache.get(k(1)) is MISSING
    cache.put(k(1), {"label": "positive", "confidence": 0.9})
    cache.put(k(2), None)
    assert cache.get(k(1)) == {"label": "positive", "confidence": 0.9}
    assert cache.get(k(2)) is None  # None is a value, not a miss
    assert (cache.stats.hits, cache.stats.misses, cache.stats.disk) == (2, 1, False)


def test_each_get_is_a_fresh_copy() -> None:
    cache = StepCache(None)
    cache.put(k(1), {"labels": ["a"]})
    cache.get(k(1))["labels"].append("b")
    assert cache.get(k(1)) == {"labels": ["a"]}


def test_lru_eviction() -> None:
    cache = StepCache(None, memory_entries=2)
    cache.put(k(1), 1)
    cache.put(k(2), 2)
    assert cache.get(k(1)) == 1  # 1 is now the most recent
    cache.put(k(3), 3)
    assert cache.get(k(2)) is MISSING
    assert (cache.get(k(1)), cache.get(k(3)), cache.stats.memory_size) == (1, 3, 2)


def test_unpackable_values_raise_and_store_nothing() -> None:
    cache = StepCache(None)
    with pytest.raises(TypeError):
        cache.put(k(1), {"v": object()})
    assert cache.get(k(1)) is MISSING


# -- disk tier ----------------------------------------------------------------------------------------------------

def test_entries_persist_across_instances(db_path: Path) -> None:
    with StepCache(db_path) as first:
        first.put(k(1), {"label": "negative"})
    with StepCache(db_path) as second:
        assert second.get(k(1)) == {"label": "negative"}
        assert second.stats.memory_size == 1  # promoted


def test_flush_makes_entries_visible_to_another_instance(db_path: Path) -> None:
    with StepCache(db_path) as writer, StepCache(db_path) as reader:
        writer.put(k(1), [1, 2])
        writer.flush()
        assert reader.get(k(1)) == [1, 2]


def test_disk_only_cache(db_path: Path) -> None:
    with StepCache(db_path, memory_entries=0) as cache:
        cache.put(k(1), "v")
        assert cache.get(k(1)) == "v"  # from the writer's queue or the file
        cache.flush()
        assert cache.get(k(1)) == "v" and cache.stats.memory_size == 0


def test_file_is_private(db_path: Path) -> None:
    with StepCache(db_path) as cache:
        cache.put(k(1), 1)
        cache.flush()
        for part in db_path.parent.iterdir():
            assert stat.S_IMODE(part.stat().st_mode) == 0o600, part


def test_from_config_uses_a_private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPEX_HOME", str(tmp_path / "home"))
    with StepCache.from_config(load_config({}, cwd=tmp_path)) as cache:
        assert cache.path == tmp_path / "home" / CACHE_FILE
        assert stat.S_IMODE((tmp_path / "home").stat().st_mode) == 0o700
        assert stat.S_IMODE(cache.path.stat().st_mode) == 0o600


def test_from_config_without_disk(tmp_path: Path) -> None:
    with StepCache.from_config(Config(home=tmp_path / "home", cache=CacheConfig(5, False))) as cache:
        assert cache.path is None and cache.memory_entries == 5
    assert not (tmp_path / "home").exists()


def test_clear_forgets_memory_and_disk(db_path: Path) -> None:
    with StepCache(db_path) as cache:
        cache.put(k(1), 1)
        cache.flush()
        cache.put(k(2), 2)
        cache.clear()
        assert cache.get(k(1)) is MISSING and cache.get(k(2)) is MISSING
    with StepCache(db_path) as again:
        assert again.get(k(1)) is MISSING and again.get(k(2)) is MISSING


def test_threads_share_one_cache(db_path: Path) -> None:
    errors: list[BaseException] = []
    with StepCache(db_path, memory_entries=50) as cache:
        def work(base: int) -> None:
            try:
                for i in range(base, base + 200):
                    cache.put(k(i), {"i": i})
                    assert cache.get(k(i)) == {"i": i}
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
        threads = [threading.Thread(target=work, args=(n * 1000,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    with StepCache(db_path, memory_entries=0) as reopened:
        assert all(reopened.get(k(n * 1000 + i)) == {"i": n * 1000 + i} for n in range(4) for i in range(200))


def test_an_unusable_location_degrades_to_memory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with StepCache(tmp_path / "missing-dir" / CACHE_FILE) as cache:
        cache.put(k(1), 1)
        assert cache.get(k(1)) == 1 and cache.stats.disk is False
    assert "caching in memory only" in caplog.text


# -- damage -------------------------------------------------------------------------------------------------------

def corrupt_files(db_path: Path) -> list[Path]:
    return sorted(p for p in db_path.parent.glob(f"{CACHE_FILE}.corrupt-*") if not p.name.endswith(("-wal", "-shm")))


def test_a_garbage_file_is_moved_aside_and_rebuilt(db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db_path.write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.WARNING, logger="dspex.cache"), StepCache(db_path) as cache:
        assert cache.recovered
        cache.put(k(1), "ok")
    [aside] = corrupt_files(db_path)
    assert aside.read_bytes() == b"this is not a database" * 100
    assert len([r for r in caplog.records if r.name == "dspex.cache"]) == 1
    assert "was damaged" in caplog.text and str(aside) in caplog.text
    with StepCache(db_path) as again:
        assert again.get(k(1)) == "ok" and not again.recovered


def test_a_truncated_database_is_moved_aside_and_rebuilt(db_path: Path) -> None:
    with StepCache(db_path) as cache:
        for i in range(2000):
            cache.put(k(i), {"text": "x" * 200})
    data = db_path.read_bytes()
    db_path.write_bytes(data[: len(data) // 2])
    with StepCache(db_path, memory_entries=0) as cache:
        for i in range(2000):  # wherever SQLite notices, it is noticed once and survived
            cache.get(k(i))
        assert cache.recovered and len(corrupt_files(db_path)) == 1
        cache.put(k(1), "fresh")
        cache.flush()
        assert cache.get(k(1)) == "fresh"
    with StepCache(db_path) as again:
        assert again.get(k(1)) == "fresh"


@pytest.mark.parametrize("bad", [b"\xc1", b"\x92\x01", "text", 7])
def test_an_undecodable_row_is_a_miss_and_is_deleted(db_path: Path, bad: Any,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    StepCache(db_path).close()
    with sqlite3.connect(db_path) as raw:
        raw.execute("INSERT INTO steps VALUES (?, ?, 0)", (k(1), bad))
    raw.close()
    with StepCache(db_path) as cache:
        assert cache.get(k(1)) is MISSING and not cache.recovered
        cache.put(k(2), 2)
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("SELECT key FROM steps").fetchall() == [(k(2),)]
    raw.close()
    assert "undecodable" in caplog.text


# -- in-flight sharing --------------------------------------------------------------------------------------------

def test_identical_concurrent_calls_compute_once() -> None:
    cache = StepCache(None)
    gate = asyncio.Event()
    calls = 0

    async def compute() -> dict[str, str]:
        nonlocal calls
        calls += 1
        await gate.wait()
        return {"label": "positive"}

    async def main() -> list[tuple[Any, bool]]:
        tasks = [asyncio.create_task(cache.get_or_compute(k(1), compute)) for _ in range(3)]
        await asyncio.sleep(0)
        gate.set()
        return await asyncio.gather(*tasks)

    results = asyncio.run(main())
    assert calls == 1
    assert results == [({"label": "positive"}, False), ({"label": "positive"}, True), ({"label": "positive"}, True)]
    assert (cache.stats.misses, cache.stats.shared) == (1, 2)
    assert asyncio.run(cache.get_or_compute(k(1), compute)) == ({"label": "positive"}, True)
    assert calls == 1


def test_errors_reach_every_waiter_and_are_not_cached() -> None:
    cache = StepCache(None)
    gate = asyncio.Event()
    calls = 0

    async def failing() -> str:
        nonlocal calls
        calls += 1
        await gate.wait()
        raise ValueError("lm down")

    async def main() -> list[Any]:
        tasks = [asyncio.create_task(cache.get_or_compute(k(1), failing)) for _ in range(2)]
        await asyncio.sleep(0)
        gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    assert calls == 1 and all(isinstance(r, ValueError) for r in results)
    assert cache.get(k(1)) is MISSING

    async def ok() -> str:
        return "fine"
    assert asyncio.run(cache.get_or_compute(k(1), ok)) == ("fine", False)


def test_a_cancelled_computation_hands_over_to_a_waiter() -> None:
    cache = StepCache(None)
    started = asyncio.Event()

    async def forever() -> str:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def quick() -> str:
        return "done"

    async def main() -> tuple[Any, bool]:
        leader = asyncio.create_task(cache.get_or_compute(k(1), forever))
        await started.wait()
        follower = asyncio.create_task(cache.get_or_compute(k(1), quick))
        await asyncio.sleep(0)
        leader.cancel()
        return await follower

    assert asyncio.run(main()) == ("done", False)


def test_a_hit_through_get_or_compute_does_not_compute(db_path: Path) -> None:
    with StepCache(db_path) as cache:
        cache.put(k(1), {"v": 1})

    async def never() -> Any:
        raise AssertionError("computed")

    with StepCache(db_path) as cache:
        assert asyncio.run(cache.get_or_compute(k(1), never)) == ({"v": 1}, True)


# -- degraded paths ---------------------------------------------------------------------------------------------

def test_damage_noticed_while_running_is_survived(db_path: Path) -> None:
    with StepCache(db_path) as cache:
        for i in range(2000):
            cache.put(k(i), {"text": "x" * 200})
    with StepCache(db_path, memory_entries=0) as cache:
        cache.put(k(5000), "before")  # the writer thread is connected to the old file now
        cache.flush()
        with db_path.open("r+b") as f:  # damage every page but the first, under the open connections
            f.seek(4096)
            f.write(b"\xff" * (db_path.stat().st_size - 4096))
        for i in range(2000):
            if cache.recovered:
                break
            cache.get(k(i))
        assert cache.recovered and len(corrupt_files(db_path)) == 1
        cache.put(k(6000), "after")
    with StepCache(db_path) as again:
        assert again.get(k(6000)) == "after"


def test_a_busy_file_is_skipped_not_waited_for(db_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    import dspex.runtime.cache as cache_module
    monkeypatch.setattr(cache_module, "_WRITE_BUSY_S", 0.01)
    with caplog.at_level(logging.DEBUG, logger="dspex.cache"), StepCache(db_path) as cache:
        other = sqlite3.connect(db_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        cache.put(k(1), "dropped from disk")
        cache.flush()
        assert cache.get(k(1)) == "dropped from disk" and not cache.recovered and cache.stats.disk
        other.execute("ROLLBACK")
        other.close()
        cache.put(k(2), "kept")
    assert "busy" in caplog.text
    with StepCache(db_path) as again:
        assert (again.get(k(1)), again.get(k(2))) == (MISSING, "kept")


def test_a_file_that_cannot_be_rebuilt_leaves_memory(db_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    import dspex.runtime.cache as cache_module

    def refuse(path: Path) -> Path:
        raise PermissionError("read-only directory")
    monkeypatch.setattr(cache_module, "_move_aside", refuse)
    db_path.write_bytes(b"garbage" * 100)
    with StepCache(db_path) as cache:
        cache.put(k(1), 1)
        assert cache.get(k(1)) == 1 and not cache.recovered and not cache.stats.disk
    assert "could not be rebuilt" in caplog.text


def test_files_moved_aside_never_overwrite_each_other(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dspex.runtime.cache as cache_module
    monkeypatch.setattr(cache_module.time, "strftime", lambda fmt: "20250101T000000")
    for n in range(3):
        db_path.write_bytes(b"garbage %d" % n * 100)
        StepCache(db_path).close()
    assert [p.name for p in corrupt_files(db_path)] == [
        f"{CACHE_FILE}.corrupt-20250101T000000", f"{CACHE_FILE}.corrupt-20250101T000000-1",
        f"{CACHE_FILE}.corrupt-20250101T000000-2"]


def test_a_writer_that_dies_does_not_hang_flush(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dspex.runtime.cache as cache_module
    died: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))
    with StepCache(db_path) as cache:
        real_connect = cache_module._connect

        def broken(path: Path, busy_timeout: float) -> sqlite3.Connection:
            raise RuntimeError("unforeseen")
        monkeypatch.setattr(cache_module, "_connect", broken)
        cache.put(k(1), 1)
        cache.flush()
        assert [str(e) for e in died] == ["unforeseen"]
        monkeypatch.setattr(cache_module, "_connect", real_connect)
        cache.put(k(2), 2)
    with StepCache(db_path) as again:
        assert again.get(k(2)) == 2


def test_a_cancelled_waiter_leaves_the_computation_running() -> None:
    cache = StepCache(None)
    gate = asyncio.Event()

    async def compute() -> str:
        await gate.wait()
        return "v"

    async def main() -> tuple[Any, bool]:
        leader = asyncio.create_task(cache.get_or_compute(k(1), compute))
        await asyncio.sleep(0)
        waiter = asyncio.create_task(cache.get_or_compute(k(1), compute))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        gate.set()
        return await leader

    assert asyncio.run(main()) == ("v", False)
