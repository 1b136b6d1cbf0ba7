"""The runtime under injected faults, end to end: a compiled ``.dspex`` pipeline on the native engine, its lms
behind the runtime's resilience policy, against real OpenAI-compatible HTTP servers on 127.0.0.1
(``tests/servers/openai_stub.py``) that fail at set rates, fail outright, die mid-run or answer 429.

Every test is bounded (small backoffs, short timeouts, loopback only) and reads what happened from the
runtime's telemetry ring and from the servers' own request logs.
"""
from __future__ import annotations

import itertools
import statistics
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

import dspex
from dspex.errors import StepError
from dspex.ir.program import Pipeline
from dspex.lm.base import LMError
from dspex.runtime.resilience import CircuitBreaker, CircuitOpenError, RateLimiter
from dspex.runtime.telemetry import TelemetryEvent
from tests.servers.openai_stub import Fault, FaultRates, OpenAIStub, RecordedRequest, shout

SHOUT = '''signature Shout = "text -> shout"
{lms}
pipeline loud(text: str) -> (shout: str) {{
  shout = predict Shout(text = text).shout with (engine = "native")
}}'''
FAULT_KINDS = ("server_error", "rate_limited", "hang", "truncate", "disconnect")


@pytest.fixture(autouse=True)
def _no_env_lm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DSPEX_LM", raising=False)  # it would replace the program's lms


def pipeline(**lms: str) -> Pipeline:
    """``loud`` with these lm declarations (name -> right-hand side)."""
    decls = "\n".join(f"lm {name} = {spec}" for name, spec in lms.items())
    return dspex.compile_source(SHOUT.format(lms=decls)).pipelines["loud"]


def openai(stub: OpenAIStub) -> str:
    return f'openai("m", base_url="{stub.base_url}")'


def runtime(resilience: Mapping[str, Any]) -> dspex.Runtime:
    """Faults are the subject here, not routing: every step is pinned to the native engine, so each row's
    requests are the fault's retries and nothing else (an exploration of the dspy engine would add some)."""
    return dspex.Runtime(cache=False, config={"resilience": dict(resilience), "telemetry": {"sinks": ["ring"]},
                                              "scheduler": {"pins": {"*": "native/@default"}}})


def events(rt: dspex.Runtime, kind: str) -> list[TelemetryEvent]:
    ring = rt.telemetry.ring
    assert ring is not None
    return ring.events(kind)


def number(event: TelemetryEvent, name: str) -> float:
    value = event.attrs[name]
    assert isinstance(value, (int, float)), (name, value)
    return float(value)


def rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"id": i, "text": f"row {i}"} for i in range(start, start + n)]


def answered_texts(requests: list[RecordedRequest]) -> Counter[str]:
    """How many right answers each row's text got from a server."""
    return Counter(r.body["messages"][1]["content"] for r in requests if r.outcome == "ok")


def row_times(rt: dspex.Runtime) -> Iterator[tuple[float, float]]:
    """(started at, duration) of every run, from its run_start and run_end events."""
    starts = {e.run_id: e.at for e in events(rt, "run_start")}
    for end in events(rt, "run_end"):
        yield starts[end.run_id], end.duration_s


def test_a_500_row_batch_completes_through_every_fault_kind() -> None:
    """5% each of 500s, 429s, hangs, truncated bodies and dropped connections: every row completes exactly
    once with its right output, and every fault the server served shows as one ``retry`` event."""
    rates = FaultRates(**{kind: 0.05 for kind in FAULT_KINDS}, retry_after="0.01")
    # The timeout ends the hangs; 1 s leaves a loaded machine's slow answers (and the stub's) room not to look like
    # hangs, which would come in runs and open the circuit.
    policy = {"timeout_s": 1.0, "retries": 8, "backoff_s": 0.002, "max_backoff_s": 0.02, "breaker_failures": 10}
    with OpenAIStub(shout, rates=rates, seed=11) as stub, runtime(policy) as rt:
        started = time.perf_counter()
        results = list(rt.batch(pipeline(default=openai(stub)), rows(500), concurrency=16))
        elapsed = time.perf_counter() - started
        retries = events(rt, "retry")
        breakers = events(rt, "breaker")
    assert [r.id for r in results] == list(range(500))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    assert [r.outputs for r in results] == [{"shout": f"ROW {i}"} for i in range(500)]
    # Every row was answered right at least once. A second right answer only ever follows a timeout: under
    # load an answer can arrive after the client gave up on it (its result is still taken once).
    answered = answered_texts(stub.requests)
    assert set(answered) == {f'text: "row {i}"' for i in range(500)}
    timeouts = [e for e in retries if "no answer within" in e.error or "timed out after" in e.error]
    assert sum(answered.values()) - 500 <= len(timeouts)
    served = {kind: stub.counts[kind] for kind in FAULT_KINDS}
    assert all(count >= 10 for count in served.values()), served  # each kind near its 5% of ~670 requests
    assert sum(served.values()) <= len(retries) == len(stub.requests) - 500
    assert all(number(e, "attempt") <= 8 for e in retries)
    errors = " | ".join(e.error for e in retries)
    # A hang ends at the policy's timeout: the guard's or the adapter's (the same 1 s), whichever fires first.
    for signs in (["HTTP 500"], ["HTTP 429"], ["no answer within 1 s", "timed out after 1 s"],
                  ["malformed response"], ["Disconnected"]):
        assert any(sign in errors for sign in signs), signs
    assert all(number(e, "delay_s") >= 0.01 for e in retries if "HTTP 429" in e.error)  # Retry-After honoured
    assert breakers == []  # scattered faults never open the circuit
    assert elapsed < 30


def test_the_breaker_opens_fails_fast_and_recovers_through_a_probe() -> None:
    policy = {"retries": 2, "backoff_s": 0.001, "max_backoff_s": 0.002, "breaker_failures": 3,
              "breaker_reset_s": 1.5, "wait_for_probe": False}  # fail fast while open, to see it
    with OpenAIStub(shout, rates=FaultRates(server_error=1.0)) as stub, runtime(policy) as rt:
        pipe = pipeline(default=openai(stub))
        with pytest.raises(StepError) as failed:  # three attempts, three 500s: the circuit opens
            rt.run(pipe, text="down")
        assert isinstance(failed.value.cause, LMError) and failed.value.cause.status == 500
        assert len(stub.requests) == 3 and [e.attrs["state"] for e in events(rt, "breaker")] == ["open"]

        began = time.perf_counter()
        for _ in range(20):  # open: every call fails at once, and none reaches the server
            with pytest.raises(StepError) as failed:
                rt.run(pipe, text="still down")
            assert isinstance(failed.value.cause, CircuitOpenError)
        assert time.perf_counter() - began < 1.0 and len(stub.requests) == 3  # at once: no wait, no request

        time.sleep(1.55)  # the probe goes to a server that is still down: open again, and its retry fails fast
        with pytest.raises(StepError) as failed:
            rt.run(pipe, text="probe")
        assert isinstance(failed.value.cause, CircuitOpenError) and len(stub.requests) == 4

        stub.set_rates()  # the server heals; the next probe closes the circuit
        time.sleep(1.55)
        assert rt.run(pipe, text="back") == {"shout": "BACK"}
        assert [rt.run(pipe, text=f"ok {i}")["shout"] for i in range(3)] == ["OK 0", "OK 1", "OK 2"]
        states = [e.attrs["state"] for e in events(rt, "breaker")]
        assert states == ["open", "half_open", "open", "half_open", "closed"]
        assert len(stub.requests) == 8 and [r.outcome for r in stub.requests[-4:]] == ["ok"] * 4


def test_tripping_an_open_breaker_does_not_put_its_probe_off() -> None:
    """While a breaker is open, the anomaly detector's error rate is fed by the calls it fails fast; the
    detector's ``trip`` then must not restart the open period, or the probe would keep being put off."""
    now = [0.0]
    seen: list[str] = []
    breaker = CircuitBreaker("x", failures=2, reset_s=1.0, clock=lambda: now[0],
                             on_event=lambda kind, data: seen.append(data["state"]))
    breaker.record_failure()
    breaker.record_failure()  # open at t = 0
    now[0] = 0.9
    breaker.trip()
    now[0] = 1.0
    assert breaker.check() is True  # the probe goes reset_s after the opening, not after the trip
    breaker.trip()  # a trip while the probe is out opens it again
    assert seen == ["open", "half_open", "open"]
    breaker.close()


def test_the_fallback_takes_over_when_the_primary_dies_mid_batch() -> None:
    policy = {"timeout_s": 2, "retries": 2, "backoff_s": 0.2, "max_backoff_s": 0.4, "jitter": False,
              "breaker_failures": 3, "breaker_reset_s": 30}
    n, concurrency = 240, 8
    with OpenAIStub(shout, latency=0.01) as primary, OpenAIStub(shout, latency=0.01) as backup, \
            runtime(policy) as rt:
        pipe = pipeline(primary=openai(primary), backup=openai(backup), default="fallback(primary, backup)")
        results = []
        for result in rt.batch(pipe, rows(n), concurrency=concurrency):
            results.append(result)
            if len(results) == 60:
                primary.close()  # dies mid-run: in-flight requests are cut, new ones refused
        breakers = events(rt, "breaker")
        retries = events(rt, "retry")
        times = list(row_times(rt))
    assert [r.id for r in results] == list(range(n))
    assert [r.outputs for r in results] == [{"shout": f"ROW {i}"} for i in range(n)]
    by_primary, by_backup = answered_texts(primary.requests), answered_texts(backup.requests)
    assert sum(by_primary.values()) >= 60 and sum(by_backup.values()) >= n - 60 - concurrency
    assert n <= sum((by_primary + by_backup).values()) <= n + concurrency  # a cut answer may be re-asked
    # The primary's circuit opened once and stayed open; the backup's never did.
    assert [(e.lm, e.attrs["state"]) for e in breakers] == [(f"openai:m@{primary.base_url}", "open")]
    opened = breakers[0].at
    # After it opened, only the calls already in flight were retried; rows that started later went straight
    # to the backup, without the 0.2 + 0.4 s of backoff a retried primary would cost each of them.
    assert len([e for e in retries if e.at > opened and primary.base_url in e.lm]) <= concurrency
    later = [duration for start, duration in times if start > opened + 0.01]
    assert len(later) > n / 2 and max(later) < 0.2 + 0.4, max(later)  # less than one retried primary call
    assert statistics.median(later) < 0.1


def test_a_429_with_retry_after_is_honoured_and_halves_the_rate() -> None:
    rpm = 1200.0  # 20 requests a second, after a burst of one second's worth
    policy = {"rpm": rpm, "retries": 3, "backoff_s": 0.001, "max_backoff_s": 1.0, "breaker_failures": 0}
    with OpenAIStub(shout) as stub, runtime(policy) as rt:
        pipe = pipeline(default=openai(stub))
        limiter = RateLimiter(rpm, shared_dir=rt.config.home / "resilience", name=f"openai:m@{stub.base_url}")
        assert all(r.ok for r in rt.batch(pipe, rows(40), concurrency=8))
        assert limiter.factor == 1.0
        before = [r.at for r in stub.requests][20:]  # past the burst: the steady rate
        stub.inject(Fault(status=429, retry_after="0.3"))
        first = len(stub.requests)
        assert all(r.ok for r in rt.batch(pipe, rows(30, 40), concurrency=8))
        factor = limiter.factor
        limiter.close()
        retries = events(rt, "retry")
    after = stub.requests[first:]
    limited, retried = after[0], next(r for r in after[1:] if r.body == after[0].body)
    assert limited.outcome == "injected" and retried.outcome == "ok"
    assert retried.at - limited.at >= 0.29  # Retry-After honoured
    assert [(number(e, "delay_s"), "HTTP 429" in e.error) for e in retries] == [(0.3, True)]
    # AIMD: the 429 halved the rate (it then grows back by the full rate per minute).
    assert 0.5 < factor < 0.65, factor
    gap_before = statistics.median(b - a for a, b in itertools.pairwise(before))
    times = [r.at for r in after[1:]]
    gap_after = statistics.median(b - a for a, b in itertools.pairwise(times))
    assert gap_before == pytest.approx(60 / rpm, rel=0.3)
    assert gap_after > 1.6 * gap_before, (gap_before, gap_after)
    assert events(rt, "rate_limited")
