"""Telemetry: what happened during runs (timings, tokens, errors, retries, cache hits, worker exits), never what
was said.

The runtime, the executor, the worker pools and the resilience layer each describe what they see as a
``TelemetryEvent``: names, timings, counts and a scrubbed one-line error, never a step's inputs or outputs,
which may hold personal data. A ``Telemetry`` hub fans every event out to its sinks: an in-memory ring the
adaptive scheduler reads, an append-only JSONL file under ``$DSPEX_HOME`` that ``dspexc stats`` summarizes,
OpenTelemetry spans and Prometheus metrics. Telemetry must never slow or break a run: ``emit`` only hands the
event to each sink (the file is written from a background thread, in batches), a failing sink is logged once
to ``dspex.telemetry`` and skipped, and the optional exporters are used only when their libraries import.
"""
from __future__ import annotations

import atexit
import collections
import itertools
import json
import logging
import os
import queue
import re
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, TypeVar

from dspex.runtime.config import Config, ensure_home

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider
    from prometheus_client import CollectorRegistry

__all__ = ["TelemetryEvent", "Telemetry", "Sink", "RingSink", "JsonlSink", "OtelSink", "PrometheusSink", "KINDS",
           "SINKS", "TELEMETRY_FILE", "ROTATED_FILE", "scrub", "error_text", "new_run_id", "from_node_event",
           "from_worker_event", "RUN_CONTEXT"]

log = logging.getLogger("dspex.telemetry")

KINDS: Final = frozenset({"run_start", "run_end", "node_start", "node_end", "node_error", "retry", "cache_hit",
                          "validation_failure", "worker_exit", "breaker", "adaptation", "anomaly", "rate_limited", "hedge"})
SINKS: Final = ("ring", "jsonl", "otel", "prometheus")
TELEMETRY_FILE = "telemetry.jsonl"
ROTATED_FILE = "telemetry.1.jsonl"
MAX_ERROR_CHARS = 300
Scalar = str | int | float | bool | None
_SCALARS = (str, int, float, bool, type(None))
S = TypeVar("S")


# -- scrubbing ----------------------------------------------------------------------------------------------------

_QUOTED_OR_BARE = r"""(?:(")[^"]*"|(')[^']*'|[^\s,;&}\]"']+)"""  # a quoted value keeps its quotes


def _masked(match: re.Match[str]) -> str:
    quote = match.group(2) or match.group(3) or ""
    return f"{match.group(1)}{quote}***{quote}"


_PATTERNS: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    # Authorization headers first, so ``Authorization: Bearer x`` loses the whole credential.
    (re.compile(r"""(?i)(\bauthorization["']?\s*[:=]\s*)(?:(")[^"]*"|(')[^']*'|[^\s,;}"']+(?:[ \t]+[^\s,;}"']+)?)"""),
     _masked),
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=\-]{8,}"), r"\1 ***"),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}"), "sk-***"),
    (re.compile(r"""(?i)(["']?\b(?:api[_-]?key|access[_-]?token|refresh[_-]?token|auth[_-]?token|client[_-]?secret"""
                r"""|secret[_-]?key|password|passwd)["']?\s*[:=]\s*)""" + _QUOTED_OR_BARE), _masked),
    (re.compile(r"(?i)([?&](?:key|token|sig|signature)=)[^&\s#\"']+"), r"\1***"),
)
_SECRET_SUFFIXES = ("_KEY", "_TOKEN", "_SECRET", "_PASSWORD")
_MIN_SECRET_CHARS = 8  # shorter values ("1", "true") would blank out ordinary words; no real key is this short
_SHORTEST_SECRET_TEXT = 8  # no pattern above matches a shorter text: skip the work
_env_names: tuple[int, tuple[str, ...]] = (-1, ())


def _secret_env_values() -> list[str]:
    """The values of environment variables named like secrets (``*_KEY``, ``*_TOKEN``, ``*_SECRET``, ...).

    The names are rescanned only when the environment's size changes (a scan costs ~50 µs); values are read
    fresh each time, so a key set after start-up is still scrubbed."""
    global _env_names
    size, names = _env_names
    if size != len(os.environ):
        names = tuple(k for k in os.environ if k.upper().endswith(_SECRET_SUFFIXES))
        _env_names = (len(os.environ), names)
    values = (os.environ.get(name, "") for name in names)
    return sorted((v for v in values if len(v) >= _MIN_SECRET_CHARS), key=len, reverse=True)


def scrub(text: str) -> str:
    """``text`` with credentials replaced by ``***``: API-key shapes (``sk-...``), ``Bearer`` tokens,
    ``Authorization`` headers, ``api_key=...`` / ``"api_key": "..."`` (and password, token, secret
    assignments), key-like URL parameters, and the values of environment variables whose names end with
    ``_KEY``, ``_TOKEN``, ``_SECRET`` or ``_PASSWORD``."""
    if len(text) < _SHORTEST_SECRET_TEXT:
        return text
    for value in _secret_env_values():
        if value in text:
            text = text.replace(value, "***")
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def error_text(exc: BaseException) -> str:
    """``"Type: message"`` for an event's ``error``: scrubbed, one line, at most ``MAX_ERROR_CHARS``, without the
    step inputs a ``StepError`` lists or the answer a ``ValidationError`` quotes (events never hold what was said)."""
    return _short_error(_described(exc))


def _described(exc: BaseException) -> str:
    from dspex.engines.base import ValidationError
    from dspex.errors import StepError

    name = type(exc).__name__
    if isinstance(exc, StepError):
        return f"{name}: step '{exc.node}' failed: {_described(exc.cause)}"
    if isinstance(exc, ValidationError):
        return f"{name}: {exc.path}: {exc.rule}"
    return f"{name}: {exc}"


def _short_error(text: str) -> str:
    text = scrub(text)  # before cutting: a key cut in half no longer matches a pattern
    text = " ".join(text.split()) if "\n" in text or "\r" in text else text
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 1] + "…"


# -- events -------------------------------------------------------------------------------------------------------

RUN_CONTEXT: ContextVar[tuple[str, str, str, int]] = ContextVar("dspex_run_context", default=("", "", "", 0))
"""``(run_id, pipeline, node, call)`` of the run and step the current task works for (empty outside them): the
runtime sets the run, the executor the step, so that events emitted from inside a step (retries, breakers,
validation failures, adaptations) join their run and node in ``dspexc stats`` and on OpenTelemetry spans."""


@dataclass(slots=True)  # not frozen: a frozen dataclass pays a setattr call per field, on the hot path
class TelemetryEvent:
    """One thing that happened. ``kind`` is one of ``KINDS``; ``at`` is epoch seconds; ``lm`` an lm's identity
    (a name and endpoint, never a key); ``error`` a short ``"Type: message"``, scrubbed on construction;
    ``attrs`` a few scalars by kind: ``call`` (pairs a node's start and end under ``map``), ``attempt``,
    ``delay_s``, ``state`` (breaker: closed, half_open, open), ``pool``/``cause`` (worker exits), ``route``,
    ``reason``. Events carry no inputs or outputs. Treat an event as frozen once emitted."""

    kind: str
    run_id: str = ""
    pipeline: str = ""
    node: str = ""
    engine: str = ""
    lm: str = ""
    duration_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str = ""
    attrs: Mapping[str, Scalar] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown telemetry event kind {self.kind!r}; expected one of {', '.join(sorted(KINDS))}")
        if self.error:
            self.error = _short_error(self.error)
        if self.attrs:
            for value in self.attrs.values():
                if isinstance(value, str) and len(value) >= _SHORTEST_SECRET_TEXT:  # cause, reason: free text
                    self.attrs = {k: _clean_attr(v) for k, v in self.attrs.items()}
                    break

    def to_dict(self) -> dict[str, Any]:
        """A JSON- and msgpack-safe dict; empty fields are left out (``from_dict`` restores them)."""
        data: dict[str, Any] = {"kind": self.kind, "at": self.at}
        for name in _OPTIONAL:
            value = getattr(self, name)
            if value:
                data[name] = value
        if self.attrs:
            data["attrs"] = {str(k): v if isinstance(v, _SCALARS) else str(v) for k, v in self.attrs.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TelemetryEvent:
        """The event ``to_dict`` described; unknown keys are ignored. Raises ValueError or TypeError on a
        malformed dict (not a mapping, an unknown kind, a field of the wrong type)."""
        if not isinstance(data, Mapping):
            raise TypeError(f"a telemetry event is a JSON object, not {type(data).__name__}")
        attrs = data.get("attrs") or {}
        if not isinstance(attrs, Mapping):
            raise TypeError("attrs must be an object")
        kind = data.get("kind")
        if not isinstance(kind, str):
            raise TypeError("kind must be a string")
        return cls(kind, _text(data, "run_id"), _text(data, "pipeline"), _text(data, "node"), _text(data, "engine"),
                   _text(data, "lm"), _number(data, "duration_s", float), _number(data, "prompt_tokens", int),
                   _number(data, "completion_tokens", int), _text(data, "error"),
                   {str(k): v if isinstance(v, _SCALARS) else str(v) for k, v in attrs.items()},
                   _number(data, "at", float))


_OPTIONAL = ("run_id", "pipeline", "node", "engine", "lm", "duration_s", "prompt_tokens", "completion_tokens", "error")


def _clean_attr(value: Scalar) -> Scalar:
    return scrub(value) if isinstance(value, str) else value


def _text(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name, "")
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string")
    return value


def _number(data: Mapping[str, Any], name: str, kind: type[int | float]) -> Any:
    value = data.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number")
    return kind(value)


_RUN_IDS = itertools.count(1)
_RUN_PREFIX = os.urandom(4).hex()  # per import; with the pid, unique across processes (a fork shares the prefix)


def new_run_id() -> str:
    """A fresh run id, unique across processes, without a system call per run: ``prefix-pid-counter``."""
    return f"{_RUN_PREFIX}-{os.getpid():x}-{next(_RUN_IDS):x}"


def from_node_event(event: Any, run_id: str = "", call: int | None = None) -> list[TelemetryEvent]:
    """The telemetry of an executor ``NodeEvent`` (start, end, error, cache_hit; skip has none).

    A cache hit becomes ``cache_hit`` then ``node_end``, so every call is a start and an end (or error).
    ``call`` numbers one call of the node (under ``map`` one node runs many times at once)."""
    attrs: dict[str, Scalar] = {} if call is None else {"call": call}
    kind = {"start": "node_start", "end": "node_end", "cache_hit": "node_end", "error": "node_error"}.get(event.kind)
    if kind is None:
        return []
    end = TelemetryEvent(kind, run_id, event.pipeline, event.node, event.engine, event.lm, event.duration_s,
                         event.prompt_tokens, event.completion_tokens, event.error, attrs, event.at)
    if event.kind != "cache_hit":
        return [end]
    return [TelemetryEvent("cache_hit", run_id, event.pipeline, event.node, event.engine, event.lm, attrs=attrs,
                           at=event.at), end]


def from_worker_event(event: Any) -> TelemetryEvent | None:
    """The telemetry of a worker pool's ``WorkerEvent``: an exit or a recycle is a ``worker_exit`` (a start, none)."""
    if event.kind not in ("exit", "recycle"):
        return None
    cause = (event.cause or "unknown") if event.kind == "exit" else f"recycled: {event.cause or 'unknown'}"
    attrs: dict[str, Scalar] = {"pool": event.pool, "slot": event.slot, "pid": event.pid, "cause": cause}
    if event.exitcode is not None:
        attrs["exitcode"] = event.exitcode
    return TelemetryEvent("worker_exit", attrs=attrs, at=event.at)


# -- the hub ------------------------------------------------------------------------------------------------------

class Sink(Protocol):
    """Where events go. ``write`` must be quick (hand slow work to a thread) and may raise: the hub catches it."""

    def write(self, event: TelemetryEvent) -> None: ...

    def close(self) -> None: ...


class Telemetry:
    """Fans each event out to ``sinks``. A sink that raises is logged once (to ``dspex.telemetry``) and keeps
    getting events; a run never sees the error. Thread-safe as its sinks are (the ones here are)."""

    def __init__(self, sinks: Iterable[Sink] = ()) -> None:
        self.sinks: tuple[Sink, ...] = tuple(sinks)
        self.failures = 0
        self._logged: set[int] = set()

    @classmethod
    def from_config(cls, config: Config, sinks: Iterable[str] = SINKS) -> Telemetry:
        """The sinks named in ``sinks`` that can run here: ``ring``; ``jsonl`` (``$DSPEX_HOME/telemetry.jsonl``);
        ``otel`` and ``prometheus`` only when their libraries import (spans go to the global tracer provider,
        a no-op until the application configures one; metrics to the default registry)."""
        chosen: list[Sink] = []
        for name in sinks:
            if name not in SINKS:
                raise ValueError(f"unknown telemetry sink {name!r}; expected one of {', '.join(SINKS)}")
            try:  # ensure_home's ConfigError or OSError propagates, as the cache's does
                if name == "ring":
                    chosen.append(RingSink())
                elif name == "jsonl":
                    chosen.append(JsonlSink(ensure_home(config) / TELEMETRY_FILE))
                elif name == "otel":
                    chosen.append(OtelSink())
                else:
                    chosen.append(PrometheusSink())
            except ImportError:
                log.debug("telemetry: no %s sink (its library is not installed)", name)
            except ValueError as exc:  # e.g. the default registry already holds other metrics of these names
                log.warning("telemetry: no %s sink: %s", name, exc)
        return cls(chosen)

    def emit(self, event: TelemetryEvent) -> None:
        for sink in self.sinks:
            try:
                sink.write(event)
            except Exception as exc:  # noqa: BLE001 - telemetry must never break a run
                self._failed(sink, exc)

    def _failed(self, sink: Sink, exc: Exception) -> None:
        self.failures += 1
        if id(sink) in self._logged:
            log.debug("telemetry: %s failed again: %s", type(sink).__name__, exc)
            return
        self._logged.add(id(sink))
        log.warning("telemetry: %s failed (%s: %s); its events may be lost (logged once)",
                    type(sink).__name__, type(exc).__name__, exc)

    def sink(self, kind: type[S]) -> S | None:
        """The first sink of type ``kind``, or None."""
        return next((s for s in self.sinks if isinstance(s, kind)), None)

    @property
    def ring(self) -> RingSink | None:
        """The in-memory ring (what the scheduler reads), if there is one."""
        return self.sink(RingSink)

    def close(self) -> None:
        """Close every sink: the file's pending lines are written, open spans ended."""
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001
                self._failed(sink, exc)

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        self.close()
        return False


# -- sinks --------------------------------------------------------------------------------------------------------

class RingSink:
    """The last ``maxlen`` events, in memory: what the adaptive scheduler reads."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self._events: collections.deque[TelemetryEvent] = collections.deque(maxlen=maxlen)

    def write(self, event: TelemetryEvent) -> None:
        self._events.append(event)

    def events(self, kind: str | Collection[str] | None = None, node: str | None = None, since: float | None = None,
               pipeline: str | None = None) -> list[TelemetryEvent]:
        """The kept events, oldest first, of ``kind`` (a kind or several), at ``node`` of ``pipeline``, from
        ``since`` (epoch seconds) on."""
        kinds = {kind} if isinstance(kind, str) else None if kind is None else set(kind)
        return [e for e in self._events.copy()  # copied in one step: other threads may be appending
                if (kinds is None or e.kind in kinds) and (node is None or e.node == node)
                and (since is None or e.at >= since) and (pipeline is None or e.pipeline == pipeline)]

    def __len__(self) -> int:
        return len(self._events)

    def clear(self) -> None:
        self._events.clear()

    def close(self) -> None:
        """Nothing to release; the events stay readable."""


_STOP: Final = object()
_BATCH_EVENTS = 2000
_BATCH_BYTES = 1 << 20
_LINGER_S = 0.02


_UNWRITTEN = frozenset({"run_start", "node_start"})


class JsonlSink:
    """Appends each event as one JSON line to ``path`` (created 0600), from a background thread.

    ``write`` only queues the event; the thread encodes a batch and appends it with a single ``write`` of whole
    lines to a file opened ``O_APPEND``, so several processes can share the file without tearing lines. Past
    ``max_bytes`` the file is renamed to ``telemetry.1.jsonl`` (replacing the previous one) and a new one
    started; writers in other processes notice the rename and reopen. With more than ``max_pending`` events
    queued (a stalled disk) new ones are dropped and counted in ``dropped``. Disk errors are logged once and
    the batch dropped: the run goes on. Start events are not written: every end event carries its duration,
    so the file loses nothing ``dspexc stats`` needs and writes (and encodes, the main cost) half as much."""

    def __init__(self, path: str | Path, max_bytes: int = 64 << 20, max_pending: int = 100_000) -> None:
        self.path = Path(path)
        self.rotated = self.path.with_name(_rotated_name(self.path))
        self.max_bytes = max_bytes
        self.max_pending = max_pending
        self.written = self.dropped = 0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._fd: int | None = None
        self._failed = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="dspex-telemetry-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # a daemon thread dies at exit: write what is queued first

    def write(self, event: TelemetryEvent) -> None:
        if event.kind in _UNWRITTEN:
            return
        if self._closed or self._queue.qsize() >= self.max_pending:
            self.dropped += 1
            return
        self._queue.put(event)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event queued so far is written (or dropped); False on timeout."""
        if self._closed or not self._thread.is_alive():
            return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self) -> None:
        """Write what is queued, stop the thread and close the file. Later events are dropped."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self._queue.put(_STOP)
        if self._thread is not threading.current_thread():
            self._thread.join()

    # -- the writer thread ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode
        stop = False
        try:
            while not stop:
                item = self._queue.get()
                if item is not _STOP and not isinstance(item, threading.Event) and self._queue.qsize() < 64:
                    time.sleep(_LINGER_S)  # let a batch gather: one wake-up and one write for many events
                lines: list[str] = []
                size = 0
                done: list[threading.Event] = []
                while True:
                    if item is _STOP:
                        stop = True
                    elif isinstance(item, threading.Event):
                        done.append(item)
                    else:
                        try:
                            line = encode(item.to_dict()) + "\n"
                        except Exception as exc:  # noqa: BLE001 - not an event, or unencodable: skip it
                            self._log_once(f"cannot encode {item!r}: {exc}")
                        else:
                            lines.append(line)
                            size += len(line)
                    if stop or len(lines) >= _BATCH_EVENTS or size >= _BATCH_BYTES:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                if lines:
                    self._append("".join(lines).encode("utf-8"), len(lines))
                for event in done:
                    event.set()
        finally:
            self._close_fd()
            while True:  # release anyone still waiting in flush()
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, threading.Event):
                    item.set()

    def _append(self, data: bytes, count: int) -> None:
        try:
            fd = self._open()
            view = memoryview(data)
            while view:  # one write for a regular file; the loop only guards against a short write
                view = view[os.write(fd, view):]
        except OSError as exc:
            self.dropped += count
            self._log_once(f"cannot write {self.path}: {exc}; dropping telemetry events")
            self._close_fd()
            return
        self.written += count
        try:
            if os.fstat(fd).st_size > self.max_bytes:
                self._rotate(fd)
        except OSError as exc:
            self._log_once(f"cannot rotate {self.path}: {exc}")
            self._close_fd()

    def _open(self) -> int:
        """The file descriptor for ``path``, reopened when another process has rotated (renamed) the file."""
        if self._fd is not None:
            try:
                same = os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return self._fd
            self._close_fd()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # private: names, errors
        return self._fd

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _rotate(self, fd: int) -> None:
        """Rename the full file aside, once, even when several processes see it full at the same moment."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no other writers to coordinate with, we hope
            fcntl = None  # type: ignore[assignment]
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)  # released when the descriptor closes
            current = os.stat(self.path)
            if current.st_ino == os.fstat(fd).st_ino and current.st_size > self.max_bytes:
                os.replace(self.path, self.rotated)
        except FileNotFoundError:
            pass
        finally:
            self._close_fd()  # the next batch opens (or creates) whatever ``path`` is now

    def _log_once(self, message: str) -> None:
        if not self._failed:
            self._failed = True
            log.warning("telemetry: %s (logged once)", message)
        else:
            log.debug("telemetry: %s", message)


def _rotated_name(path: Path) -> str:
    return f"{path.stem}.1{path.suffix}"


_NO_OP_PROVIDERS = frozenset({"ProxyTracerProvider", "NoOpTracerProvider"})


class OtelSink:
    """OpenTelemetry spans: one per run (``dspex.run <pipeline>``) with a child per node call (``dspex.node
    <node>``) carrying engine, lm, tokens and an error status; retries, cache hits, validation failures and the
    like become span events on the node's span (else the run's). Starts and ends of one node pair by
    ``attrs["call"]`` when given, else first in, first out. Spans use the events' own times. Spans never
    ended (a run that died) are ended when more than ``max_open`` runs are open, or at ``close``. Without a
    ``tracer`` or ``provider``, spans go to the global provider, and nothing is done while that is still
    OpenTelemetry's default no-op (the application has not configured an SDK): a no-op span costs as much to
    make as a real one."""

    def __init__(self, tracer: Tracer | None = None, *, provider: TracerProvider | None = None,
                 max_open: int = 10_000) -> None:
        from opentelemetry import trace

        from dspex import __version__

        self._trace = trace
        self._global = tracer is None and provider is None
        self._live = not self._global
        self._tracer = tracer or trace.get_tracer("dspex", __version__, tracer_provider=provider)
        self._runs: dict[str, _OpenRun] = {}
        self._lock = threading.Lock()
        self.max_open = max_open

    def write(self, event: TelemetryEvent) -> None:
        kind = event.kind
        if self._global:
            if kind == "run_start":  # looked up once per run (it reads the environment each time)
                self._live = type(self._trace.get_tracer_provider()).__name__ not in _NO_OP_PROVIDERS
            if not self._live:
                return
        with self._lock:
            if kind == "run_start":
                self._start_run(event)
            elif kind == "run_end":
                self._end_run(event)
            elif kind == "node_start":
                self._start_node(event)
            elif kind in ("node_end", "node_error"):
                self._end_node(event)
            else:
                self._add_event(event)

    def _run(self, run_id: str) -> _OpenRun:
        run = self._runs.get(run_id)
        if run is None:
            run = self._runs[run_id] = _OpenRun(None)
            self._bound()
        return run

    def _bound(self) -> None:
        while len(self._runs) > self.max_open:
            self._finish(self._runs.pop(next(iter(self._runs))), time.time())

    def _start_run(self, event: TelemetryEvent) -> None:
        span = self._tracer.start_span(f"dspex.run {event.pipeline}", start_time=_ns(event.at),
                                       attributes={"dspex.pipeline": event.pipeline, "dspex.run_id": event.run_id})
        run = self._runs.get(event.run_id)
        if run is not None and run.span is None:
            run.span = span
        else:
            if run is not None:
                self._finish(run, event.at)
            self._runs[event.run_id] = _OpenRun(span)
            self._bound()

    def _end_run(self, event: TelemetryEvent) -> None:
        run = self._runs.pop(event.run_id, None)
        if run is None:
            return
        if run.span is not None:
            if event.duration_s:
                run.span.set_attribute("dspex.duration_s", event.duration_s)
            if event.error:
                self._set_error(run.span, event.error)
        self._finish(run, event.at)

    def _start_node(self, event: TelemetryEvent) -> None:
        run = self._run(event.run_id)
        context = self._trace.set_span_in_context(run.span) if run.span is not None else None
        span = self._tracer.start_span(f"dspex.node {event.node}", context=context, start_time=_ns(event.at),
                                       attributes=_node_attributes(event))
        call = event.attrs.get("call")
        if call is not None:
            run.calls[(event.node, call)] = span
        else:
            run.fifo.setdefault(event.node, collections.deque()).append(span)

    def _open_node(self, run: _OpenRun, event: TelemetryEvent, pop: bool) -> Span | None:
        call = event.attrs.get("call")
        if call is not None:
            return run.calls.pop((event.node, call), None) if pop else run.calls.get((event.node, call))
        spans = run.fifo.get(event.node)
        if not spans:
            return None
        if not pop:
            return spans[0]
        span = spans.popleft()
        if not spans:
            del run.fifo[event.node]
        return span

    def _end_node(self, event: TelemetryEvent) -> None:
        run = self._runs.get(event.run_id)
        span = self._open_node(run, event, pop=True) if run is not None else None
        if span is None:  # no start seen: a span from its duration
            parent = run.span if run is not None else None
            context = self._trace.set_span_in_context(parent) if parent is not None else None
            span = self._tracer.start_span(f"dspex.node {event.node}", context=context,
                                           start_time=_ns(event.at - event.duration_s),
                                           attributes=_node_attributes(event))
        span.set_attributes(_node_attributes(event))
        if event.kind == "node_error":
            self._set_error(span, event.error or "error")
        span.end(end_time=_ns(event.at))

    def _add_event(self, event: TelemetryEvent) -> None:
        run = self._runs.get(event.run_id)
        span = None
        if run is not None:
            span = (self._open_node(run, event, pop=False) if event.node else None) or run.span
        if span is None:
            return  # nothing open to hang it on (a worker exit between runs, say): the metrics still count it
        attributes: dict[str, Any] = {f"dspex.{k}": v for k, v in event.attrs.items() if v is not None}
        if event.node:
            attributes["dspex.node"] = event.node
        if event.lm:
            attributes["dspex.lm"] = event.lm
        if event.error:
            attributes["dspex.error"] = event.error
        span.add_event(f"dspex.{event.kind}", attributes, timestamp=_ns(event.at))

    def _set_error(self, span: Span, error: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("dspex.error", error)
        span.set_status(Status(StatusCode.ERROR, error))

    def _finish(self, run: _OpenRun, at: float) -> None:
        """End the run's span and any node span still open under it (marked unfinished)."""
        for span in [*run.calls.values(), *(s for spans in run.fifo.values() for s in spans)]:
            self._set_error(span, "unfinished: the run ended first")
            span.end(end_time=_ns(at))
        run.calls.clear()
        run.fifo.clear()
        if run.span is not None:
            run.span.end(end_time=_ns(at))

    def close(self) -> None:
        """End every span still open."""
        now = time.time()
        with self._lock:
            runs, self._runs = list(self._runs.values()), {}
            for run in runs:
                self._finish(run, now)


@dataclass(eq=False, slots=True)
class _OpenRun:
    span: Any  # Span | None: None for node events of a run whose start was not seen
    calls: dict[tuple[str, Any], Any] = field(default_factory=dict)
    fifo: dict[str, collections.deque[Any]] = field(default_factory=dict)


def _ns(at: float) -> int:
    return int(at * 1e9)


def _node_attributes(event: TelemetryEvent) -> dict[str, Any]:
    attributes: dict[str, Any] = {"dspex.pipeline": event.pipeline, "dspex.node": event.node}
    if event.run_id:
        attributes["dspex.run_id"] = event.run_id
    if event.engine:
        attributes["dspex.engine"] = event.engine
    if event.lm:
        attributes["dspex.lm"] = event.lm
    if event.duration_s:
        attributes["dspex.duration_s"] = event.duration_s
    if event.prompt_tokens or event.completion_tokens:
        attributes["gen_ai.usage.input_tokens"] = event.prompt_tokens
        attributes["gen_ai.usage.output_tokens"] = event.completion_tokens
    return attributes


_BREAKER_STATES: Final = {"closed": 0, "half_open": 1, "half-open": 1, "open": 2}
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class _Metrics:
    """The metric families, made once per registry (a registry refuses a second family of one name)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        node = ("pipeline", "node")
        self.duration = Histogram("dspex_node_duration_seconds", "Time per node call (cache hits included).",
                                  (*node, "engine", "lm"), registry=registry, buckets=_DURATION_BUCKETS)
        self.errors = Counter("dspex_node_errors", "Node calls that failed.", node, registry=registry)
        self.cache_hits = Counter("dspex_cache_hits", "Node calls answered from the step cache.", node,
                                  registry=registry)
        self.validation_failures = Counter("dspex_validation_failures",
                                           "LM answers that failed their signature's validation.", node,
                                           registry=registry)
        self.retries = Counter("dspex_retries", "LM calls retried.", ("lm",), registry=registry)
        self.tokens = Counter("dspex_tokens", "LM tokens, by kind (prompt or completion).", ("lm", "kind"),
                              registry=registry)
        self.worker_exits = Counter("dspex_worker_exits", "Worker processes that exited or were recycled.",
                                    ("pool", "cause"), registry=registry)
        self.breaker = Gauge("dspex_breaker_state", "Circuit breaker per lm: 0 closed, 1 half-open, 2 open.",
                             ("lm",), registry=registry)
        self.adaptations = Counter("dspex_adaptations", "Route changes made by the adaptive scheduler.", node,
                                   registry=registry)
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: prometheus_client checks and locks on every ``labels`` call."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child


_metrics: weakref.WeakKeyDictionary[Any, _Metrics] = weakref.WeakKeyDictionary()
_metrics_lock = threading.Lock()


class PrometheusSink:
    """Prometheus metrics in ``registry`` (default: the global one): node latency histograms, error, cache-hit,
    validation-failure, retry, token, worker-exit and adaptation counters, and each lm's breaker state.
    Sinks sharing a registry share its metrics. Exposing them (``start_http_server``) is the application's
    choice."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import REGISTRY

        self.registry = REGISTRY if registry is None else registry
        with _metrics_lock:
            metrics = _metrics.get(self.registry)
            if metrics is None:
                metrics = _metrics[self.registry] = _Metrics(self.registry)
        self._m = metrics
        self._handlers: dict[str, Callable[[TelemetryEvent], None]] = {
            "node_end": self._node_end, "node_error": self._node_error, "cache_hit": self._cache_hit,
            "validation_failure": self._validation_failure, "retry": self._retry,
            "worker_exit": self._worker_exit, "breaker": self._breaker, "adaptation": self._adaptation}

    def write(self, event: TelemetryEvent) -> None:
        handler = self._handlers.get(event.kind)
        if handler is not None:
            handler(event)

    def _node_end(self, event: TelemetryEvent) -> None:
        self._m.child(self._m.duration, event.pipeline, event.node, event.engine, event.lm).observe(event.duration_s)
        self._tokens(event)

    def _node_error(self, event: TelemetryEvent) -> None:
        self._m.child(self._m.errors, event.pipeline, event.node).inc()
        self._m.child(self._m.duration, event.pipeline, event.node, event.engine, event.lm).observe(event.duration_s)
        self._tokens(event)

    def _tokens(self, event: TelemetryEvent) -> None:
        if event.prompt_tokens:
            self._m.child(self._m.tokens, event.lm, "prompt").inc(event.prompt_tokens)
        if event.completion_tokens:
            self._m.child(self._m.tokens, event.lm, "completion").inc(event.completion_tokens)

    def _cache_hit(self, event: TelemetryEvent) -> None:
        self._m.child(self._m.cache_hits, event.pipeline, event.node).inc()

    def _validation_failure(self, event: TelemetryEvent) -> None:
        self._m.child(self._m.validation_failures, event.pipeline, event.node).inc()

    def _retry(self, event: TelemetryEvent) -> None:
        self._m.child(self._m.retries, event.lm).inc()

    def _worker_exit(self, event: TelemetryEvent) -> None:
        self._m.child(self._m.worker_exits, str(event.attrs.get("pool", "")), str(event.attrs.get("cause", ""))).inc()

    def _breaker(self, event: TelemetryEvent) -> None:
        state = _BREAKER_STATES.get(str(event.attrs.get("state", "")).lower())
        if state is not None:
            self._m.child(self._m.breaker, event.lm).set(state)

    def _adaptation(self, event: TelemetryEvent) -> None:
        self._m.child(self._m.adaptations, event.pipeline, event.node).inc()

    def close(self) -> None:
        """Nothing to release: the metrics stay in the registry for the scraper."""
