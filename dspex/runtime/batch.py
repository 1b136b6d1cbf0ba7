"""Batches: many rows through one pipeline, concurrently, with results in input order and a checkpoint
file that makes a killed batch resumable.

Each finished row is appended to the checkpoint and flushed at once, so a ``kill -9`` loses at most the
rows still in flight; ``resume`` keeps every complete line already there (a torn last line is dropped)
and runs only the missing rows. When the batch ends the checkpoint is rewritten in input order,
atomically. No row is lost and none is written twice.
"""
from __future__ import annotations

import asyncio
import json
import os
import queue
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

from dspex.errors import StepError

if TYPE_CHECKING:
    from dspex.ir.program import Pipeline
    from dspex.runtime.runtime import Runtime

__all__ = ["RowResult", "run_batch", "row_id", "read_checkpoint", "read_rows"]


@dataclass(frozen=True)
class RowResult:
    id: Any
    outputs: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "outputs": self.outputs} if self.error is None else {"id": self.id, "error": self.error}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "RowResult":
        return cls(data["id"], data.get("outputs"), data.get("error"))


def read_rows(lines: Iterable[str]) -> list[dict[str, Any]]:
    """JSONL rows of pipeline inputs; blank lines are skipped, ids default to the 1-based line number."""
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"input line {number} is not JSON: {exc.msg}") from None
        if not isinstance(row, dict):
            raise ValueError(f"input line {number} is not a JSON object of pipeline inputs")
        rows.append(row if "id" in row else {"id": number, **row})
    return rows


def row_id(row: Mapping[str, Any], line: int) -> Any:
    """A row's ``id`` field, else its 1-based line number (SPEC §7)."""
    return row["id"] if "id" in row else line


def error_of(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, StepError):
        return {"type": type(exc.cause).__name__, "message": str(exc.cause), "node": exc.node}
    return {"type": type(exc).__name__, "message": str(exc), "node": None}


def read_checkpoint(path: Path) -> dict[Any, RowResult]:
    """The complete result lines of a checkpoint, by id; a torn or malformed line (a killed writer) is dropped."""
    done: dict[Any, RowResult] = {}
    if not path.exists():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and "id" in data and ("outputs" in data or "error" in data):
            done[_key(data["id"])] = RowResult.from_json(data)
    return done


def _key(rid: Any) -> Any:
    return json.dumps(rid, sort_keys=True)


def _write_atomic(path: Path, results: Iterable[RowResult]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in results:
                f.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_batch(rt: "Runtime", pipeline: "Pipeline", rows: Iterable[Mapping[str, Any]], concurrency: int,
              progress: bool, checkpoint: str | Path | None, resume: bool) -> Iterator[RowResult]:
    rows = list(rows)
    ids = [row_id(r, i + 1) for i, r in enumerate(rows)]
    keys = [_key(i) for i in ids]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate row ids: every row needs its own 'id' (or none, to use line numbers)")
    path = Path(checkpoint) if checkpoint is not None else None
    done: dict[Any, RowResult] = {}
    if path is not None:
        done = {k: v for k, v in read_checkpoint(path).items() if k in set(keys)} if resume else {}
        _write_atomic(path, done.values())  # drops a torn last line before we append
    todo = [i for i, k in enumerate(keys) if k not in done]
    finished: queue.Queue[tuple[int, RowResult] | None] = queue.Queue()

    async def main() -> None:
        limit = asyncio.Semaphore(concurrency)
        sink = path.open("a", encoding="utf-8") if path is not None else None

        async def one(index: int) -> None:
            row = {k: v for k, v in rows[index].items() if k != "id"}
            async with limit:
                try:
                    result = RowResult(ids[index], await rt.arun(pipeline, **row))
                except Exception as exc:  # noqa: BLE001 - a failed row is a result, not the end of the batch
                    result = RowResult(ids[index], error=error_of(exc))
            if sink is not None:
                sink.write(json.dumps(result.to_json(), ensure_ascii=False) + "\n")
                sink.flush()
            finished.put((index, result))

        try:
            await asyncio.gather(*(one(i) for i in todo))
        finally:
            if sink is not None:
                sink.close()
            finished.put(None)

    future = asyncio.run_coroutine_threadsafe(main(), rt.loop)
    results: dict[int, RowResult] = {i: done[k] for i, k in enumerate(keys) if k in done}
    bar = _Progress(len(rows), len(results)) if progress else None
    next_index = 0
    try:
        while True:
            while next_index in results:
                yield results[next_index]
                next_index += 1
            item = finished.get()
            if item is None:
                break
            results[item[0]] = item[1]
            if bar is not None:
                bar.advance(item[1].ok)
        future.result()
        while next_index in results:
            yield results[next_index]
            next_index += 1
    finally:
        if bar is not None:
            bar.close()
        if not future.done():
            future.cancel()
    if path is not None:
        _write_atomic(path, (results[i] for i in range(len(rows))))


class _Progress:
    """A rich progress bar on stderr: rows done, rows failed, rate and ETA."""

    def __init__(self, total: int, already: int):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                                   TimeRemainingColumn)
        from rich.text import Text

        class Rate(ProgressColumn):
            def render(self, task: Task) -> Text:
                return Text(f"{task.speed:.1f} rows/s" if task.speed else "- rows/s")

        self.failed = 0
        self.progress = Progress(TextColumn("[bold]rows"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[failed]} failed"), Rate(), TimeRemainingColumn(),
                                 console=Console(stderr=True))
        self.task = self.progress.add_task("rows", total=total, completed=already, failed=0)
        self.progress.start()

    def advance(self, ok: bool) -> None:
        self.failed += not ok
        self.progress.update(self.task, advance=1, failed=self.failed)

    def close(self) -> None:
        self.progress.stop()
