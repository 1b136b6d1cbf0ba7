"""Resilience around every LM call: per-attempt timeouts, retries with backoff, a circuit breaker, rate limits
and hedged requests, configured per lm by a ``ResiliencePolicy`` and applied by ``ResilientLM``.

Adapters only turn failures into ``LMError`` (``retryable``, ``status``, ``retry_after``) and combinators only
route, so one layer here serves every adapter, and an open circuit is an ``LMError`` a ``fallback`` moves past.

A runtime's worker processes call the same endpoints as the parent. A breaker or a rate limit kept per process
would let N workers send N times the allowed rate, and keep hammering an endpoint another worker already found
down; so with ``shared_dir`` a breaker's and a limiter's few numbers live in a small file mapped with ``mmap``
and changed under ``fcntl.flock``: every process mapping it sees one breaker and one pair of buckets. Their
clock is wall time by default (``time.time``): every process agrees on it, and so does a file left from before
a reboot, which ``time.monotonic`` would not. Time is injectable (a ``clock``/``sleep`` pair) so backoff,
breaker and limiter are tested without waiting; timeouts and hedging wait on the event loop's own clock.

The retry loop is a few lines rather than ``tenacity``: it must retry a stream only before its first token,
take its wait from the error (Retry-After) and re-check the breaker and the limiter on every attempt, while
tenacity's attempt manager swallows ``BaseException`` (the ``CancelledError`` of a cancelled hedge, the
``GeneratorExit`` of a closed stream) into its retry state; and tenacity is no dependency of dspex.
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import math
import mmap
import os
import random
import struct
import threading
import time
from collections.abc import AsyncGenerator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, Mapping

from dspex.lang.diagnostics import did_you_mean
from dspex.lm._loops import LoopThread
from dspex.lm.base import LM, LMError, LMRequest, LMResponse
from dspex.runtime.config import ConfigError

__all__ = ["ResiliencePolicy", "policy_from_mapping", "CircuitBreaker", "CircuitOpenError", "RateLimiter",
           "ResilientLM", "wrap_from_spec", "Clock", "Sleep", "OnEvent"]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
OnEvent = Callable[[str, dict[str, Any]], None]

_OPTIONAL = frozenset({"timeout_s", "rpm", "tpm", "hedge_after_s"})  # None: off (the request's own timeout)
_INTEGERS = frozenset({"retries", "breaker_failures"})
_POSITIVE = frozenset({"timeout_s", "breaker_reset_s", "rpm", "tpm", "hedge_after_s"})
_EPSILON_S = 1e-6  # a wait this short is float noise, not a wait


@dataclass(frozen=True, slots=True)
class ResiliencePolicy:
    """How calls to one lm are guarded. ``timeout_s`` bounds each attempt (None: the request's own timeout);
    a retryable failure is retried ``retries`` times after a wait drawn uniformly from
    ``[0, min(max_backoff_s, backoff_s * 2**attempt)]`` (exactly that bound without ``jitter``), and at least the
    server's Retry-After (itself capped by ``max_backoff_s``). ``breaker_failures`` consecutive retryable
    failures open the circuit (0: never) for ``breaker_reset_s``, then one probe decides. ``rpm``/``tpm`` cap
    requests and tokens per minute (None: unlimited). ``hedge_after_s``: with no answer by then, one duplicate
    request is sent and the first answer wins. ``wait_for_probe``: while the circuit is open, a call waits for
    the probe (up to ``2 * breaker_reset_s``) rather than failing at once; the runtime applies it to every lm
    that is not a ``fallback`` member (a fallback must move on at once)."""

    timeout_s: float | None = None
    retries: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    jitter: bool = True
    breaker_failures: int = 5
    breaker_reset_s: float = 30.0
    rpm: float | None = None
    tpm: float | None = None
    hedge_after_s: float | None = None
    wait_for_probe: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            problem = _problem(f.name, getattr(self, f.name))
            if problem:
                raise ValueError(f"{f.name}: {problem}")

    def to_mapping(self) -> dict[str, Any]:
        """Every field as plain data; ``policy_from_mapping`` reads it back (a worker spec carries it)."""
        return asdict(self)


_KEYS = tuple(f.name for f in fields(ResiliencePolicy))


def _problem(key: str, value: Any) -> str | None:
    """What is wrong with ``value`` for the policy field ``key``, or None."""
    if value is None:
        return None if key in _OPTIONAL else "must be set"
    if key in ("jitter", "wait_for_probe"):
        return None if isinstance(value, bool) else f"expected a boolean, got {type(value).__name__} {value!r}"
    kinds = int if key in _INTEGERS else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        wanted = "an integer" if key in _INTEGERS else "a number"
        return f"expected {wanted}, got {type(value).__name__} {value!r}"
    if not math.isfinite(value):
        return f"must be finite, got {value!r}"
    if key in _POSITIVE and value <= 0:
        return f"must be greater than 0, got {value!r}"
    if value < 0:
        return f"must be at least 0, got {value!r}"
    return None


def policy_from_mapping(data: Mapping[str, Any], base: ResiliencePolicy | None = None, *,
                        source: str = "resilience policy", path: str = "") -> ResiliencePolicy:
    """``base`` (default: the defaults) with the keys of ``data`` (a TOML table, a step's options) replaced.
    Raises ``ConfigError`` naming ``source`` and the key (prefixed with ``path``) for an unknown key or a bad
    value."""
    def where(key: str) -> str:
        return f"{path}.{key}" if path else key

    if not isinstance(data, Mapping):
        raise ConfigError(source, path, f"expected a table, got {type(data).__name__}")
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _KEYS:
            hint = did_you_mean(str(key), _KEYS)
            raise ConfigError(source, where(str(key)), "unknown key" + (f" ({hint})" if hint else "")
                              + f"; expected one of {', '.join(_KEYS)}")
        problem = _problem(key, value)
        if problem:
            raise ConfigError(source, where(key), problem)
        changes[key] = float(value) if type(value) is int and key not in _INTEGERS else value
    return replace(base or ResiliencePolicy(), **changes)


class _Cells:
    """A few floats under a lock: in this process, or with ``path`` in a small file mapped with ``mmap`` and
    changed under ``fcntl.flock``, so that every process mapping it sees one copy. ``hold()`` yields them as a
    list to change; the changes are kept when its block ends without an exception."""

    def __init__(self, path: Path | None, initial: tuple[float, ...]):
        self._path = path
        self._format = struct.Struct(f"<{len(initial)}d")
        self._initial = initial
        self._values = list(initial)
        self._lock = threading.Lock()
        self._fd = -1
        self._map: mmap.mmap | None = None
        self._pid = 0  # the file is opened (and mapped) on first use, in each process that uses it

    def _open(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_size != self._format.size:  # new (or from another layout): start afresh
                    os.ftruncate(fd, self._format.size)
                    os.pwrite(fd, self._format.pack(*self._initial), 0)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            self._map = mmap.mmap(fd, self._format.size)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._pid = fd, os.getpid()

    @contextlib.contextmanager
    def hold(self) -> Iterator[list[float]]:
        with self._lock:
            if self._path is None:
                values = list(self._values)
                yield values
                self._values = values
                return
            if self._map is None or self._pid != os.getpid():  # closed, or forked: a child needs its own lock
                self.close()
                self._open(self._path)
            assert self._map is not None
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                values = list(self._format.unpack_from(self._map))
                yield values
                self._format.pack_into(self._map, 0, *values)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def peek(self, index: int) -> float:
        """One value, read without the lock: the healthy path's check (is the breaker closed with no failures?)
        costs no system call. A value being changed at that instant is read before or after the change (each is
        one aligned 8-byte word), which only moves the reaction by one call."""
        if self._path is None:
            return self._values[index]
        if self._map is None or self._pid != os.getpid():
            with self.hold() as values:
                return values[index]
        return float(self._format.unpack_from(self._map)[index])

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            os.close(self._fd)
            self._map, self._fd = None, -1


def _state_file(shared_dir: str | Path | None, kind: str, name: str) -> Path | None:
    if shared_dir is None:
        return None
    return Path(shared_dir) / f"{kind}-{hashlib.sha256(name.encode()).hexdigest()[:16]}.state"


class CircuitOpenError(LMError):
    """The lm's circuit is open: calls fail at once, without reaching it, until ``probe_in_s`` has passed."""

    code = "LM_CIRCUIT_OPEN"

    def __init__(self, lm: str, failures: int, probe_in_s: float):
        self.lm, self.failures, self.probe_in_s = lm, failures, probe_in_s
        super().__init__(f"{lm}: circuit open after {failures} consecutive failures; "
                         f"the next probe goes in {probe_in_s:.1f} s", retryable=False)

    def __reduce__(self) -> tuple[Any, ...]:  # Ray and worker pipes pickle errors
        return type(self), (self.lm, self.failures, self.probe_in_s)


_CLOSED, _OPEN, _HALF_OPEN = 0.0, 1.0, 2.0
_STATES = {_CLOSED: "closed", _OPEN: "open", _HALF_OPEN: "half_open"}


class CircuitBreaker:
    """Closed: calls pass, and ``failures`` consecutive failures open it (0: never). Open: ``check`` raises
    ``CircuitOpenError`` until ``reset_s`` has passed, then lets one call through as the probe (half-open);
    the probe's success closes it, its failure opens it again. A probe that never reports (its process died)
    is given up after ``reset_s``. With ``shared_dir``, every process of the runtime sees one breaker."""

    def __init__(self, name: str, failures: int = 5, reset_s: float = 30.0, shared_dir: str | Path | None = None,
                 *, clock: Clock = time.time, on_event: OnEvent | None = None):
        self.name, self.failures, self.reset_s = name, failures, reset_s
        self._clock, self._on_event = clock, on_event
        # state, consecutive failures, opened at, probe in flight until
        self._cells = _Cells(_state_file(shared_dir, "breaker", name), (_CLOSED, 0.0, 0.0, -math.inf))

    @property
    def state(self) -> str:
        with self._cells.hold() as cells:
            return _STATES[cells[0]]

    def check(self) -> bool:
        """Raise ``CircuitOpenError`` if no call may go now; True when this call is the half-open probe."""
        if self._cells.peek(0) == _CLOSED:
            return False
        with self._cells.hold() as cells:
            state, failures, opened_at, probe_until = cells
            if state == _CLOSED:
                return False
            now = self._clock()
            ready_at = opened_at + self.reset_s if state == _OPEN else probe_until
            if now >= ready_at:
                cells[0], cells[3] = _HALF_OPEN, now + self.reset_s
        if now < ready_at:
            raise CircuitOpenError(self.name, int(failures), ready_at - now)
        if state == _OPEN:
            self._emit("half_open", failures)
        return True

    def record_success(self) -> None:
        if self._cells.peek(0) == _CLOSED and self._cells.peek(1) == 0.0:
            return  # nothing to reset: the healthy path takes no lock
        with self._cells.hold() as cells:
            state = cells[0]
            cells[:] = [_CLOSED, 0.0, 0.0, -math.inf]
        if state != _CLOSED:
            self._emit("closed", 0)

    def record_failure(self) -> None:
        with self._cells.hold() as cells:
            state = cells[0]
            cells[1] += 1
            failures = cells[1]
            opens = state == _HALF_OPEN or (state == _CLOSED and 0 < self.failures <= failures)
            if opens:
                cells[0], cells[2], cells[3] = _OPEN, self._clock(), -math.inf
        if opens:
            self._emit("open", failures)

    def trip(self) -> None:
        """Open now, whatever the count (an anomaly detector saw the endpoint fail): the next call after
        ``reset_s`` probes it. An open breaker is left as it is: the detector's errors then are mostly the calls
        it failed fast, and re-opening would put its probe off again and again."""
        with self._cells.hold() as cells:
            state, failures = cells[0], cells[1]
            if state != _OPEN:
                cells[0], cells[2], cells[3] = _OPEN, self._clock(), -math.inf
        if state != _OPEN:
            self._emit("open", failures)

    def release_probe(self) -> None:
        """The probe ended without an answer either way (cancelled, or an error that says nothing of the
        endpoint's health): the next call probes instead."""
        with self._cells.hold() as cells:
            if cells[0] == _HALF_OPEN:
                cells[3] = -math.inf

    def close(self) -> None:
        self._cells.close()

    def _emit(self, state: str, failures: float) -> None:
        if self._on_event is not None:
            self._on_event("breaker", {"lm": self.name, "state": state, "failures": int(failures)})


_DECREASE = 0.5  # a 429 halves the rate ...
_MIN_FACTOR = 1 / 64
_RECOVERY_S = 60.0  # ... which then grows back by the full rate over this long
_DECREASE_GAP_S = 1.0  # 429s closer together than this are one congestion signal (requests already in flight)


class RateLimiter:
    """Token buckets for requests (``rpm``) and tokens (``tpm``) per minute, None being unlimited; each holds
    one second's worth, so a per-minute limit is spread evenly rather than spent in a burst. A call takes one
    request and its estimated tokens (a bucket may go into debt for one large call, which later calls wait
    off); ``settle`` corrects the estimate with the measured count. A 429 halves the effective rate (down to
    1/64) and empties the buckets; the rate then recovers additively over a minute (AIMD). With ``shared_dir``,
    every process of the runtime draws on the same buckets."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None, shared_dir: str | Path | None = None,
                 *, name: str = "lm", clock: Clock = time.time, sleep: Sleep = asyncio.sleep,
                 on_event: OnEvent | None = None):
        self.name, self.rpm, self.tpm = name, rpm, tpm
        self._clock, self._sleep, self._on_event = clock, sleep, on_event
        self._request_cap = max(1.0, rpm / 60) if rpm else 0.0
        self._token_cap = max(1.0, tpm / 60) if tpm else 0.0
        # requests, tokens, refilled at, rate factor, last decrease at
        self._cells = _Cells(_state_file(shared_dir, "limiter", name),
                             (self._request_cap, self._token_cap, clock(), 1.0, -math.inf))

    @property
    def factor(self) -> float:
        """The share of the configured rates in force now (1: full; less after a 429)."""
        with self._cells.hold() as cells:
            self._refill(cells)
            return cells[3]

    async def acquire(self, tokens: float = 0.0) -> float:
        """Wait until a call with ``tokens`` estimated tokens may go, and take its share; returns the wait."""
        waited = 0.0
        while (delay := self._reserve(tokens)) > 0:
            if self._on_event is not None:
                self._on_event("rate_limited", {"lm": self.name, "delay_s": delay})
            await self._sleep(delay)
            waited += delay
        return waited

    def try_acquire(self, tokens: float = 0.0) -> bool:
        """Take a call's share if it may go now, without waiting."""
        return self._reserve(tokens) <= 0

    def settle(self, estimated: float, actual: float) -> None:
        """A call estimated at ``estimated`` tokens used ``actual``: charge (or refund) the difference."""
        if self.tpm:
            with self._cells.hold() as cells:
                cells[1] = min(self._token_cap, cells[1] + estimated - actual)

    def slow_down(self) -> None:
        """The server said 429: halve the rate (once per burst of 429s) and empty the buckets."""
        with self._cells.hold() as cells:
            now = self._refill(cells)
            if now - cells[4] >= _DECREASE_GAP_S:
                cells[3] = max(_MIN_FACTOR, cells[3] * _DECREASE)
                cells[4] = now
                cells[0], cells[1] = min(cells[0], 0.0), min(cells[1], 0.0)

    def close(self) -> None:
        self._cells.close()

    def _reserve(self, tokens: float) -> float:
        """0 after taking a call's share, else how long to wait before asking again."""
        with self._cells.hold() as cells:
            self._refill(cells)
            delay = 0.0
            if self.rpm:
                delay = max(delay, (1 - cells[0]) / (self.rpm / 60 * cells[3]))
            if self.tpm:
                delay = max(delay, -cells[1] / (self.tpm / 60 * cells[3]))
            if delay <= _EPSILON_S:
                cells[0] -= 1
                cells[1] -= tokens
                return 0.0
        return delay

    def _refill(self, cells: list[float]) -> float:
        now = self._clock()
        elapsed = max(0.0, now - cells[2])
        factor = cells[3]
        if self.rpm:
            cells[0] = min(self._request_cap, cells[0] + elapsed * self.rpm / 60 * factor)
        if self.tpm:
            cells[1] = min(self._token_cap, cells[1] + elapsed * self.tpm / 60 * factor)
        cells[2], cells[3] = now, min(1.0, factor + elapsed / _RECOVERY_S)
        return now


def _estimate_tokens(request: LMRequest) -> int:
    return max(1, sum(len(m.content) for m in request.messages) // 4)


async def _nothing() -> None:
    """The private loop of ``complete`` holds no clients: it only awaits the inner LM's own sync path."""


Call = Callable[[LMRequest], Awaitable[LMResponse]]


class ResilientLM(LM):
    """``inner`` guarded by ``policy``: each attempt passes the breaker (an open one fails at once with
    ``CircuitOpenError``), then the rate limiter, then runs under the timeout (hedged if configured); a retryable
    ``LMError`` (timeouts included) is retried after a backoff, any other error is raised at once. Streams are
    retried only before their first token. ``name`` keys the breaker and limiter (default: the inner identity,
    so every wrapper of one endpoint shares them through ``shared_dir``). ``on_event(kind, data)`` hears
    ``retry``, ``breaker``, ``rate_limited`` and ``hedge``."""

    def __init__(self, inner: LM, policy: ResiliencePolicy | None = None, *, name: str | None = None,
                 shared_dir: str | Path | None = None, on_event: OnEvent | None = None, clock: Clock = time.time,
                 sleep: Sleep = asyncio.sleep, rng: random.Random | None = None, wait_when_open: bool = False):
        self.inner = inner
        self.wait_when_open = wait_when_open
        self.policy = policy = policy or ResiliencePolicy()
        self.name = name or inner.identity
        self.shared_dir = None if shared_dir is None else str(shared_dir)
        self.identity = inner.identity
        self.on_event = on_event
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.breaker = CircuitBreaker(self.name, policy.breaker_failures, policy.breaker_reset_s, shared_dir,
                                      clock=clock, on_event=self._emit)
        self.limiter = (RateLimiter(policy.rpm, policy.tpm, shared_dir, name=self.name, clock=clock, sleep=sleep,
                                    on_event=self._emit) if policy.rpm or policy.tpm else None)
        self._sync = LoopThread(f"dspex-resilient-{self.identity}", _nothing)

    @property  # an adapter may learn only later that it cannot follow a schema
    def supports_json_schema(self) -> bool:  # type: ignore[override]
        return self.inner.supports_json_schema

    def worker_spec(self) -> dict[str, Any] | None:
        """The inner LM's spec plus ``resilience``: what ``wrap_from_spec`` needs to rebuild this wrapper."""
        spec = self.inner.worker_spec()
        if spec is None:
            return None
        return {**spec, "resilience": {"policy": self.policy.to_mapping(), "name": self.name,
                                       "shared_dir": self.shared_dir}}

    async def acomplete(self, request: LMRequest) -> LMResponse:
        return await self._run(request, self.inner.acomplete)

    def complete(self, request: LMRequest) -> LMResponse:
        """The same guards on a private loop around the inner LM's own synchronous path (an HTTP adapter keeps
        its pooled loop); a timed-out or losing hedged call runs on in its thread until its own timeout."""
        def call(req: LMRequest) -> Awaitable[LMResponse]:
            return asyncio.to_thread(self.inner.complete, req)

        return self._sync.run(self._run(request, call))

    async def astream(self, request: LMRequest) -> AsyncIterator[str]:
        request = self._prepared(request)
        attempt = 0
        while True:
            started = False
            try:
                async with contextlib.aclosing(self._stream_once(request)) as tokens:
                    async for token in tokens:
                        started = True
                        yield token
                return
            except LMError as e:
                if started:
                    raise
                await self._pause(e, attempt)
                attempt += 1

    async def aclose(self) -> None:
        await self.inner.aclose()
        await asyncio.to_thread(self._sync.close)
        self.breaker.close()
        if self.limiter is not None:
            self.limiter.close()

    # -- one call -----------------------------------------------------------------------------------
    def _prepared(self, request: LMRequest) -> LMRequest:
        """The request the inner LM gets: the policy's timeout, when it has one, replaces the request's."""
        timeout = self.policy.timeout_s
        return request if timeout is None or timeout == request.timeout else replace(request, timeout=timeout)

    async def _run(self, request: LMRequest, call: Call) -> LMResponse:
        request = self._prepared(request)
        attempt, waited = 0, 0.0
        while True:
            try:
                return await self._attempt(request, call)
            except CircuitOpenError as e:
                waited = await self._await_probe(e, waited)
            except LMError as e:
                await self._pause(e, attempt)
                attempt += 1

    async def _await_probe(self, error: CircuitOpenError, waited: float) -> float:
        """An open circuit fails the call at once (a ``fallback`` then moves on), or with ``wait_when_open`` (the
        runtime's choice for an lm that is nobody's fallback member) waits, in steps of ``backoff_s``, for the probe to close it, up to ``2 * breaker_reset_s`` in all: an
        outage shorter than that costs time, not rows. Returns the time waited so far."""
        budget = 2 * self.policy.breaker_reset_s - waited
        if not self.wait_when_open or budget <= 0:
            raise error
        delay = min(max(error.probe_in_s, 0.01), max(self.policy.backoff_s, 0.01), budget)
        if waited == 0.0:
            self._emit("retry", {"lm": self.name, "attempt": 0, "delay_s": delay, "error": str(error),
                                 "reason": "circuit open: waiting for the probe"})
        await self._sleep(delay)
        return waited + delay

    async def _pause(self, error: LMError, attempt: int) -> None:
        """Wait before retry ``attempt + 1``, or raise ``error`` when it is not to be retried."""
        policy = self.policy
        if not error.retryable or attempt >= policy.retries:
            raise error
        cap = min(policy.max_backoff_s, policy.backoff_s * 2.0 ** min(attempt, 64))
        delay = self._rng.uniform(0, cap) if policy.jitter else cap
        if error.retry_after is not None:
            delay = max(delay, min(error.retry_after, policy.max_backoff_s))
        self._emit("retry", {"lm": self.name, "attempt": attempt + 1, "delay_s": delay, "error": str(error)})
        await self._sleep(delay)

    async def _attempt(self, request: LMRequest, call: Call) -> LMResponse:
        probe = self.breaker.check()
        estimate = _estimate_tokens(request) if self.limiter is not None else 0
        try:
            if self.limiter is not None:
                await self.limiter.acquire(estimate)
            if request.timeout is None and self.policy.hedge_after_s is None:
                response = await call(request)  # nothing to bound or hedge: the plain call
            else:
                async with self._deadline(request.timeout):
                    response = await self._hedged(request, call, estimate)
        except LMError as e:
            self._failed(e, probe)
            raise
        except BaseException:
            if probe:
                self.breaker.release_probe()
            raise
        self.breaker.record_success()
        if self.limiter is not None and response.prompt_tokens + response.completion_tokens:
            self.limiter.settle(estimate, response.prompt_tokens + response.completion_tokens)
        return response

    async def _stream_once(self, request: LMRequest) -> AsyncGenerator[str, None]:
        """One attempt at a stream: the timeout bounds the wait for the first token only."""
        probe = self.breaker.check()
        estimate = _estimate_tokens(request)
        stream = self.inner.astream(request)
        produced = 0
        try:
            if self.limiter is not None:
                await self.limiter.acquire(estimate)
            async with self._deadline(request.timeout):
                token = await anext(stream, None)
            while token is not None:
                produced += len(token)
                yield token
                token = await anext(stream, None)
        except LMError as e:
            self._failed(e, probe)
            raise
        except BaseException:
            if probe:
                self.breaker.release_probe()
            raise
        finally:
            if isinstance(stream, AsyncGenerator):
                await stream.aclose()
        self.breaker.record_success()
        if self.limiter is not None:
            self.limiter.settle(estimate, estimate + produced // 4)

    def _failed(self, error: LMError, probe: bool) -> None:
        """A retryable failure counts against the breaker; any other error says nothing of the endpoint."""
        if error.retryable:
            self.breaker.record_failure()
        elif probe:
            self.breaker.release_probe()
        if error.status == 429 and self.limiter is not None:
            self.limiter.slow_down()

    @contextlib.asynccontextmanager
    async def _deadline(self, seconds: float | None) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(seconds):
                yield
        except TimeoutError:
            within = f" within {seconds:g} s" if seconds is not None else ""
            raise LMError(f"{self.name}: no answer{within}", retryable=True) from None

    async def _hedged(self, request: LMRequest, call: Call, estimate: int) -> LMResponse:
        """``call(request)``; with hedging, a duplicate goes after ``hedge_after_s`` (if the rate limiter has
        room now) and the first answer wins, the other call being cancelled. Both failing raises the first
        error."""
        if self.policy.hedge_after_s is None:
            return await call(request)
        tasks: list[asyncio.Future[LMResponse]] = [asyncio.ensure_future(call(request))]
        try:
            done, _ = await asyncio.wait(tasks, timeout=self.policy.hedge_after_s)
            if not done and (self.limiter is None or self.limiter.try_acquire(estimate)):
                self._emit("hedge", {"lm": self.name})
                tasks.append(asyncio.ensure_future(call(request)))
            pending: set[asyncio.Future[LMResponse]] = set(tasks)
            error: BaseException | None = None
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.exception() is None:
                        return task.result()
                    error = error or task.exception()
            assert error is not None
            raise error
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(kind, data)


def wrap_from_spec(lm: LM, spec: Mapping[str, Any], *, on_event: OnEvent | None = None) -> LM:
    """``lm`` (built from ``spec``'s provider and args) wrapped as the ``ResilientLM`` whose ``worker_spec`` gave
    ``spec``, sharing its breaker and limiter through the same ``shared_dir``; ``lm`` itself if ``spec`` has no
    ``resilience``."""
    options = spec.get("resilience")
    if options is None:
        return lm
    return ResilientLM(lm, policy_from_mapping(options["policy"], source="worker spec", path="resilience.policy"),
                       name=options["name"], shared_dir=options["shared_dir"], on_event=on_event)
