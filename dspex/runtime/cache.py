"""The step cache: an in-memory LRU in front of a SQLite file, keyed by what determines a step's answer.

The key (``cache_key``, from ``dspex.native``) hashes a canonical msgpack encoding of the node's fingerprint, its inputs,
the lm's identity (the caller passes a name and endpoint, never a key), its options and the var values it
reads; so equal calls share an entry whatever the dict order, and ``1``, ``1.0``, ``"1"`` and ``True`` do not.
Values are msgpack (never pickle: a cache file must not be able to run code). Identical calls in flight at
once share one computation. The disk tier never fails a run: a damaged file is moved aside and rebuilt, a
busy one is skipped, an unusable one leaves the cache in memory only; each is logged to ``dspex.cache``.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, TypeVar

import msgpack

from dspex.native import KEY_VERSION, cache_key, key_material
from dspex.runtime.config import Config, ensure_home

__all__ = ["StepCache", "CacheStats", "MISSING", "cache_key", "key_material", "CACHE_FILE", "KEY_VERSION"]

log = logging.getLogger("dspex.cache")

CACHE_FILE = "cache.sqlite"
_READ_BUSY_S = 0.05  # reads run on the event loop: when another process holds the file, a miss beats a stall
_WRITE_BUSY_S = 5.0  # the writer thread can afford to wait its turn
_LINGER_S = 0.5  # the writer thread waits this long for more work before it exits
_BUSY = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED
_DAMAGED = (1, 11, 26)  # SQLITE_ERROR (not our schema), SQLITE_CORRUPT, SQLITE_NOTADB

T = TypeVar("T")


class _Missing(Enum):
    MISSING = "MISSING"


MISSING: Final = _Missing.MISSING
"""What ``StepCache.get`` returns for an absent key (``None`` is a valid cached value)."""


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


@dataclass(frozen=True, slots=True)
class CacheStats:
    """``shared`` counts calls that awaited an identical computation already in flight instead of running it."""

    hits: int
    misses: int
    shared: int
    memory_size: int
    disk: bool


class StepCache:
    """Memory LRU of ``memory_entries`` packed values in front of the SQLite file at ``path`` (None: memory only).

    Writes reach the file from a background thread, in batches: a commit, and now and then a WAL checkpoint,
    takes milliseconds that the event loop must not wait for; ``flush`` waits for them. Safe to share between
    threads; ``get_or_compute`` dedupes within one event loop. ``recovered`` is True once a damaged file has
    been moved aside and rebuilt."""

    def __init__(self, path: Path | None, memory_entries: int = 10000) -> None:
        self.path = path
        self.memory_entries = memory_entries
        self.recovered = False
        self._memory: OrderedDict[bytes, bytes] = OrderedDict()
        self._inflight: dict[bytes, asyncio.Future[bytes]] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # entries queued for the writer, or a batch written
        self._pending: dict[bytes, bytes] = {}  # stored, waiting for the writer
        self._writing: dict[bytes, bytes] = {}  # in the writer's open transaction
        self._writer: threading.Thread | None = None
        self._generation = 0  # bumped when the file is rebuilt, so the writer reconnects
        self._hits = self._misses = self._shared = 0
        self._db: sqlite3.Connection | None = None  # for reads; the writer thread has its own connection
        if path is not None:
            with self._lock:
                try:
                    self._db = _connect(path, _READ_BUSY_S)
                except (sqlite3.Error, OSError) as exc:
                    self._disk_failed(exc)

    @classmethod
    def from_config(cls, config: Config) -> StepCache:
        """The cache ``config`` describes: ``cache.sqlite`` under DSPEX_HOME unless ``[cache] disk = false``."""
        path = ensure_home(config) / CACHE_FILE if config.cache.disk else None
        return cls(path, config.cache.memory_entries)

    # -- public API -------------------------------------------------------------------------------------------

    def get(self, key: bytes, count_miss: bool = True) -> Any:
        """The cached value, or ``MISSING``. Each call decodes a fresh copy, so callers may mutate it.
        ``count_miss`` False: a look that is not a miss of its own (the executor looks under each route first)."""
        with self._lock:
            value = self._lookup(key)
            if value is MISSING:
                self._misses += count_miss
            else:
                self._hits += 1
            return value

    def put(self, key: bytes, value: Any) -> None:
        """Store ``value`` (msgpack-able: step outputs) in memory, and queue it for the disk.

        Raises TypeError, storing nothing, when ``value`` cannot be packed."""
        self._store(key, value)

    async def get_or_compute(self, key: bytes, compute: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """``(value, hit)``: the cached value, or the result of ``compute()``, stored. Concurrent calls with one
        key share a single ``compute``; its error reaches every one of them and nothing is stored."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                cached = self._lookup(key)
                if cached is not MISSING:
                    self._hits += 1
                    return cached, True
            pending = self._inflight.get(key)
            if pending is None or pending.get_loop() is not loop:
                break
            try:
                packed = await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if pending.cancelled() and not (task and task.cancelling()):
                    continue  # the computing call was cancelled, not this one: compute it here instead
                raise
            with self._lock:
                self._shared += 1
            return _unpack(packed), True
        with self._lock:
            self._misses += 1
        future: asyncio.Future[bytes] = loop.create_future()
        self._inflight[key] = future
        try:
            value = await compute()
            packed = self._store(key, value)
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # mark it retrieved: with no waiters asyncio would log it as lost
            raise
        except BaseException:
            future.cancel()
            raise
        else:
            future.set_result(packed)
            return value, False
        finally:
            if self._inflight.get(key) is future:
                del self._inflight[key]

    def flush(self) -> None:
        """Wait until every stored entry is committed to the file."""
        with self._lock:
            self._changed.wait_for(lambda: not self._pending and not self._writing)

    def clear(self) -> None:
        """Forget every entry, in memory and on disk."""
        with self._lock:
            self._memory.clear()
            self._pending.clear()
            self._changed.wait_for(lambda: not self._writing)  # a batch committed later would bring entries back
            self._execute("DELETE FROM steps")

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, self._shared, len(self._memory), self._db is not None)

    def close(self) -> None:
        """Flush, then close the file; the cache goes on in memory only."""
        self.flush()
        with self._lock:
            self._close_db()
            self._changed.notify_all()  # an idle writer sees the file closed and exits now
            writer = self._writer
        if writer is not None:
            writer.join()

    def __enter__(self) -> StepCache:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        self.close()
        return False

    # -- tiers (callers hold the lock) ------------------------------------------------------------------------

    def _lookup(self, key: bytes) -> Any:
        packed = self._memory.get(key)
        if packed is not None:
            self._memory.move_to_end(key)
            return _unpack(packed)
        packed = self._pending.get(key) or self._writing.get(key)
        if packed is not None:
            self._remember(key, packed)
            return _unpack(packed)
        rows = self._execute("SELECT value FROM steps WHERE key = ?", (key,))
        if not rows:
            return MISSING
        try:
            value = _unpack(rows[0][0])
        except (ValueError, TypeError) as exc:  # msgpack's errors are ValueErrors; a non-blob value, TypeError
            log.warning("cache: dropping an undecodable entry in %s (%s)", self.path, exc)
            self._execute("DELETE FROM steps WHERE key = ?", (key,))
            return MISSING
        self._remember(key, rows[0][0])
        return value

    def _store(self, key: bytes, value: Any) -> bytes:
        packed = _pack(value)
        with self._lock:
            self._remember(key, packed)
            if self._db is not None:
                self._pending[key] = packed
                if self._writer is None:
                    self._writer = threading.Thread(target=self._write_behind, name="dspex-cache-writer")
                    self._writer.start()
                else:
                    self._changed.notify_all()
        return packed

    def _remember(self, key: bytes, packed: bytes) -> None:
        if self.memory_entries <= 0:
            return
        self._memory[key] = packed
        self._memory.move_to_end(key)
        while len(self._memory) > self.memory_entries:
            self._memory.popitem(last=False)

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Run one statement on the read connection; on a SQLite failure, handle it and answer as if empty."""
        if self._db is None:
            return []
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            self._disk_failed(exc)
            return []

    def _disk_failed(self, exc: Exception) -> None:
        """Degrade, never raise: skip when busy, rebuild a damaged file, else go on in memory only."""
        path = self.path
        assert path is not None
        code = getattr(exc, "sqlite_errorcode", -1) & 0xFF
        if code in _BUSY:
            log.debug("cache: %s is busy, skipping (%s)", path, exc)
            return
        self._close_db()
        self._generation += 1
        if code not in _DAMAGED:
            log.warning("cache: cannot use %s (%s); caching in memory only", path, exc)
            return
        try:
            aside = _move_aside(path)
            self._db = _connect(path, _READ_BUSY_S)
        except (sqlite3.Error, OSError) as again:
            log.warning("cache: %s is damaged (%s) and could not be rebuilt (%s); caching in memory only",
                        path, exc, again)
            return
        self.recovered = True
        log.warning("cache: %s was damaged (%s); moved it to %s and started a new one", path, exc, aside)

    def _close_db(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- the writer thread ------------------------------------------------------------------------------------

    def _write_behind(self) -> None:
        """Commit queued entries, a batch per transaction, until none arrive for ``_LINGER_S`` or the file closes."""
        path = self.path
        assert path is not None
        db: sqlite3.Connection | None = None
        generation = -1
        try:
            while True:
                with self._lock:
                    if not self._pending and self._db is not None:
                        self._changed.wait(_LINGER_S)
                    if not self._pending or self._db is None:
                        self._pending.clear()
                        self._writer = None
                        self._changed.notify_all()
                        return
                    self._writing, self._pending = self._pending, {}
                    if generation != self._generation:  # the file was rebuilt: reconnect
                        if db is not None:
                            db.close()
                        db, generation = None, self._generation
                    rows = [(k, v, time.time()) for k, v in self._writing.items()]
                try:
                    if db is None:
                        db = _connect(path, _WRITE_BUSY_S)
                    db.execute("BEGIN IMMEDIATE")
                    db.executemany("INSERT OR REPLACE INTO steps (key, value, created_at) VALUES (?, ?, ?)", rows)
                    db.execute("COMMIT")
                except (sqlite3.Error, OSError) as exc:
                    if db is not None:
                        db.close()  # rolls back
                        db = None
                    with self._lock:
                        if generation == self._generation:  # else a reader has handled it already
                            self._disk_failed(exc)
                finally:
                    with self._lock:
                        self._writing = {}
                        self._changed.notify_all()
        finally:
            if db is not None:
                db.close()
            with self._lock:
                if self._writer is threading.current_thread():  # it died of something unforeseen
                    self._writer = None
                    self._pending.clear()
                    self._changed.notify_all()


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # private from the start: it holds prompts and answers
    db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")  # readers never block the writer; -wal/-shm inherit the 0600 mode
        db.execute("PRAGMA synchronous=NORMAL")  # no fsync per commit; a crash may lose the last entries only
        db.execute("CREATE TABLE IF NOT EXISTS steps (key BLOB PRIMARY KEY, value BLOB NOT NULL, "
                   "created_at REAL NOT NULL) WITHOUT ROWID")
    except BaseException:
        db.close()
        raise
    return db


def _move_aside(path: Path) -> Path:
    """Rename the damaged file (with its -wal and -shm, which belong to it) to ``<name>.corrupt-<timestamp>``."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    serial = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{serial}")
        serial += 1
    for suffix in ("", "-wal", "-shm"):
        part = Path(f"{path}{suffix}")
        if part.exists():
            os.replace(part, f"{aside}{suffix}")
    return aside
