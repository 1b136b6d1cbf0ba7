"""Resilience around LM calls: backoff, Retry-After, the circuit breaker (in one process and shared by two), rate
limits with AIMD, hedging and timeouts, with fake LMs and a fake clock; then a real ``OpenAILM`` against the
OpenAI stub server with injected faults."""
from __future__ import annotations

import asyncio
import pickle
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

import pytest

from dspex.lm.base import LM, LMError, LMRequest, LMResponse
from dspex.lm.combinators import FallbackLM
from dspex.lm.openai import OpenAILM
from dspex.lm.scripted import ScriptedLM
from dspex.lm.spec import build_lm
from dspex.runtime.config import ConfigError
from dspex.runtime.resilience import (CircuitBreaker, CircuitOpenError, RateLimiter, ResiliencePolicy, ResilientLM,
                                      policy_from_mapping, wrap_from_spec)
from tests.lm.chat import ask
from tests.servers.openai_stub import Fault, OpenAIStub, RecordedRequest

ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    """Wall time that moves only when slept on."""

    def __init__(self, now: float = 1000.0):
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class Flaky(LM):
    """Plays one step of ``script`` per call, then answers "ok": an exception is raised, ``(seconds, step)``
    plays ``step`` after that long, a list is streamed (its exceptions raised where they stand), text is answered."""

    def __init__(self, *script: Any, identity: str = "flaky"):
        self.script = list(script)
        self.identity = identity
        self.calls = 0
        self.cancelled = 0

    def _next(self) -> Any:
        self.calls += 1
        return self.script.pop(0) if self.script else "ok"

    async def acomplete(self, request: LMRequest) -> LMResponse:
        step = self._next()
        if isinstance(step, tuple):
            try:
                await asyncio.sleep(step[0])
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            step = step[1]
        if isinstance(step, BaseException):
            raise step
        return LMResponse(step, 3, 2)

    async def astream(self, request: LMRequest) -> AsyncIterator[str]:
        step = self._next()
        for item in step if isinstance(step, list) else [step]:
            if isinstance(item, BaseException):
                raise item
            yield item


def failed(status: int = 500, retry_after: float | None = None) -> LMError:
    return LMError(f"HTTP {status}", retryable=True, status=status, retry_after=retry_after)


def resilient(inner: LM, clock: FakeClock, events: list[tuple[str, dict[str, Any]]] | None = None,
              **policy: Any) -> ResilientLM:
    return ResilientLM(inner, ResiliencePolicy(**policy), clock=clock, sleep=clock.sleep, rng=random.Random(7),
                       on_event=None if events is None else (lambda kind, data: events.append((kind, data))))


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


# -- retries -----------------------------------------------------------------------------------------------
def test_backoff_is_full_jitter_within_the_exponential_bound() -> None:
    clock, events = FakeClock(), []
    lm = resilient(Flaky(*[failed()] * 5), clock, events, retries=5, backoff_s=0.5, max_backoff_s=4,
                   breaker_failures=0)
    assert run(lm.acomplete(ask())).text == "ok"
    rng = random.Random(7)
    caps = [0.5, 1.0, 2.0, 4.0, 4.0]
    assert clock.sleeps == [rng.uniform(0, cap) for cap in caps]
    assert all(0 <= d <= cap for d, cap in zip(clock.sleeps, caps))
    assert [(kind, data["attempt"], data["delay_s"]) for kind, data in events] == \
        [("retry", i + 1, d) for i, d in enumerate(clock.sleeps)]
    assert events[0][1]["lm"] == "flaky" and events[0][1]["error"] == "HTTP 500"


def test_without_jitter_the_backoff_doubles_up_to_its_cap() -> None:
    clock = FakeClock()
    lm = resilient(Flaky(*[failed()] * 5), clock, retries=5, backoff_s=0.5, max_backoff_s=4, jitter=False,
                   breaker_failures=0)
    run(lm.acomplete(ask()))
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_retries_run_out_with_the_last_error() -> None:
    clock, inner = FakeClock(), Flaky(failed(500), failed(502), failed(503))
    lm = resilient(inner, clock, retries=2, breaker_failures=0)
    with pytest.raises(LMError, match="HTTP 503"):
        run(lm.acomplete(ask()))
    assert inner.calls == 3 and len(clock.sleeps) == 2


def test_retry_after_is_honoured_and_capped() -> None:
    clock = FakeClock()
    lm = resilient(Flaky(failed(429, retry_after=3.0), failed(429, retry_after=100.0)), clock,
                   backoff_s=0.1, max_backoff_s=10)
    assert run(lm.acomplete(ask())).text == "ok"
    assert clock.sleeps == [3.0, 10.0]


def test_a_non_retryable_error_is_raised_at_once() -> None:
    clock, inner = FakeClock(), Flaky(LMError("HTTP 400: bad request", status=400))
    lm = resilient(inner, clock)
    with pytest.raises(LMError, match="bad request"):
        run(lm.acomplete(ask()))
    assert inner.calls == 1 and clock.sleeps == [] and lm.breaker.state == "closed"


def test_other_exceptions_pass_through_unretried() -> None:
    clock, inner = FakeClock(), Flaky(RuntimeError("bug"))
    with pytest.raises(RuntimeError, match="bug"):
        run(resilient(inner, clock).acomplete(ask()))
    assert inner.calls == 1


def test_the_policy_timeout_bounds_each_attempt_and_is_retried() -> None:
    clock, events, inner = FakeClock(), [], Flaky((10.0, "late"))
    lm = resilient(inner, clock, events, timeout_s=0.05)
    started = time.monotonic()
    assert run(lm.acomplete(ask())).text == "ok"
    assert time.monotonic() - started < 5 and inner.cancelled == 1
    assert events[0][1]["error"] == "flaky: no answer within 0.05 s"


def test_the_synchronous_path_retries_too() -> None:
    clock, inner = FakeClock(), Flaky(failed(), failed())
    lm = resilient(inner, clock)
    try:
        assert lm.complete(ask()).text == "ok"
    finally:
        run(lm.aclose())
    assert inner.calls == 3 and len(clock.sleeps) == 2


# -- streams -----------------------------------------------------------------------------------------------
def test_a_stream_is_retried_before_its_first_token() -> None:
    clock = FakeClock()
    lm = resilient(Flaky([failed()], ["a ", "b"]), clock)

    async def tokens() -> list[str]:
        return [t async for t in lm.astream(ask())]

    assert run(tokens()) == ["a ", "b"] and len(clock.sleeps) == 1


def test_a_stream_passes_the_breaker_and_the_limiter() -> None:
    clock = FakeClock()
    lm = resilient(Flaky(["a"], ["b"]), clock, rpm=60, tpm=6000)

    async def tokens() -> list[str]:
        return [t async for t in lm.astream(ask())] + [t async for t in lm.astream(ask())]

    assert run(tokens()) == ["a", "b"] and clock.sleeps == [1.0]


def test_a_stream_cut_after_its_first_token_is_not_retried() -> None:
    clock, inner = FakeClock(), Flaky(["a ", failed()])
    lm = resilient(inner, clock)
    seen: list[str] = []

    async def tokens() -> None:
        async for t in lm.astream(ask()):
            seen.append(t)

    with pytest.raises(LMError, match="HTTP 500"):
        run(tokens())
    assert seen == ["a "] and inner.calls == 1 and clock.sleeps == []


# -- circuit breaker ---------------------------------------------------------------------------------------
def test_breaker_goes_closed_open_half_open_closed_and_reopens() -> None:
    clock, events = FakeClock(), []
    breaker = CircuitBreaker("m", failures=3, reset_s=10, clock=clock,
                             on_event=lambda kind, data: events.append((kind, data)))
    for _ in range(2):
        assert breaker.check() is False
        breaker.record_failure()
    breaker.record_success()  # consecutive failures only
    for _ in range(3):
        breaker.check()
        breaker.record_failure()
    assert breaker.state == "open"
    clock.now += 4
    with pytest.raises(CircuitOpenError, match=r"m: circuit open after 3 consecutive failures; "
                                               r"the next probe goes in 6\.0 s") as caught:
        breaker.check()
    assert not caught.value.retryable and caught.value.lm == "m" and caught.value.probe_in_s == 6.0
    assert str(pickle.loads(pickle.dumps(caught.value))) == str(caught.value)
    clock.now += 6
    assert breaker.check() is True and breaker.state == "half_open"  # the probe
    with pytest.raises(CircuitOpenError):
        breaker.check()  # one probe at a time
    breaker.record_failure()
    assert breaker.state == "open"
    clock.now += 10
    assert breaker.check() is True
    breaker.release_probe()  # the probe was cancelled: the next call probes
    assert breaker.check() is True
    breaker.record_success()
    assert breaker.state == "closed" and breaker.check() is False
    assert [(data["state"], data["failures"]) for _, data in events] == \
        [("open", 3), ("half_open", 3), ("open", 4), ("half_open", 4), ("closed", 0)]
    assert {kind for kind, _ in events} == {"breaker"} and events[0][1]["lm"] == "m"


def test_a_probe_that_never_reports_is_given_up_after_the_reset_time() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("m", failures=1, reset_s=10, clock=clock)
    breaker.record_failure()
    clock.now += 10
    assert breaker.check() is True
    clock.now += 10
    assert breaker.check() is True


def test_an_open_breaker_fails_fast_without_calling_or_retrying() -> None:
    clock, events, inner = FakeClock(), [], Flaky(*[failed()] * 10)
    lm = resilient(inner, clock, events, retries=5, breaker_failures=3, breaker_reset_s=60)
    with pytest.raises(CircuitOpenError):
        run(lm.acomplete(ask()))  # three failures open it; the fourth attempt is refused
    assert inner.calls == 3 and len(clock.sleeps) == 3
    with pytest.raises(CircuitOpenError):
        run(lm.acomplete(ask()))
    assert inner.calls == 3 and len(clock.sleeps) == 3
    assert ("breaker", {"lm": "flaky", "state": "open", "failures": 3}) in events


def test_an_lm_that_waits_when_open_loses_no_call_to_a_short_outage() -> None:
    clock, events = FakeClock(), []
    inner = Flaky(*[failed()] * 3)  # three failures open the circuit, then the endpoint is healthy again
    lm = ResilientLM(inner, ResiliencePolicy(retries=5, backoff_s=0.5, breaker_failures=3, breaker_reset_s=10),
                     clock=clock, sleep=clock.sleep, rng=random.Random(7), wait_when_open=True,
                     on_event=lambda kind, data: events.append((kind, data)))
    assert run(lm.acomplete(ask())).text == "ok"  # waited for the probe instead of failing
    assert inner.calls == 4 and lm.breaker.state == "closed"
    assert sum(s for s in clock.sleeps) >= 10 - 1e-9  # it could not call before the probe was due
    assert any(kind == "retry" and "circuit open" in str(data.get("reason")) for kind, data in events)


def test_waiting_for_the_probe_is_bounded() -> None:
    clock = FakeClock()
    inner = Flaky(*[failed()] * 100)  # down for good
    lm = ResilientLM(inner, ResiliencePolicy(retries=2, breaker_failures=2, breaker_reset_s=4), clock=clock,
                     sleep=clock.sleep, rng=random.Random(7), wait_when_open=True)
    with pytest.raises(LMError):
        run(lm.acomplete(ask()))
    assert sum(clock.sleeps) < 2 * 4 + 30 + 1  # twice the reset time, plus the ordinary backoffs


def test_a_probe_ending_in_a_non_retryable_error_leaves_the_next_call_to_probe() -> None:
    clock = FakeClock()
    inner = Flaky(failed(), LMError("HTTP 400: bad request", status=400), "probe ok")
    lm = resilient(inner, clock, retries=0, breaker_failures=1, breaker_reset_s=5)
    with pytest.raises(LMError, match="HTTP 500"):
        run(lm.acomplete(ask()))
    clock.now += 5
    with pytest.raises(LMError, match="bad request"):
        run(lm.acomplete(ask()))
    assert lm.breaker.state == "half_open"
    assert run(lm.acomplete(ask())).text == "probe ok" and lm.breaker.state == "closed"


def test_a_fallback_moves_past_a_member_whose_circuit_is_open() -> None:
    clock = FakeClock()
    first = Flaky(*[failed()] * 10, identity="first")
    second = ScriptedLM(["backup"], identity="second")
    lm = FallbackLM([resilient(first, clock, retries=0, breaker_failures=2),
                     resilient(second, clock, retries=0)])
    assert [run(lm.acomplete(ask())).text for _ in range(4)] == ["backup"] * 4
    assert first.calls == 2 and len(second.requests) == 4
    clock.now += 30  # the first's circuit half-opens: its probe fails and it opens again
    assert run(lm.acomplete(ask())).text == "backup" and first.calls == 3


def test_the_breaker_is_shared_by_two_processes(tmp_path: Path) -> None:
    child = ("import sys\nfrom dspex.runtime.resilience import CircuitBreaker\n"
             "b = CircuitBreaker('shared-lm', failures=int(sys.argv[2]), reset_s=60, shared_dir=sys.argv[1])\n"
             "print('ready', flush=True)\nsys.stdin.readline()\n"
             "for _ in range(int(sys.argv[3])):\n    b.record_failure()\nprint(b.state)\n")
    parent = CircuitBreaker("shared-lm", failures=40000, reset_s=60, shared_dir=tmp_path)
    with subprocess.Popen([sys.executable, "-c", child, str(tmp_path), "40000", "20000"], cwd=ROOT, text=True,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.stdin.write("go\n")
        proc.stdin.flush()
        for _ in range(20000):  # at the same time as the child: no update may be lost
            parent.record_failure()
        assert proc.wait(30) == 0
    assert parent.state == "open"  # exactly 40000 failures, from two processes
    with pytest.raises(CircuitOpenError, match="shared-lm: circuit open after 40000"):
        parent.check()
    parent.record_success()
    out = subprocess.run([sys.executable, "-c", child, str(tmp_path), "3", "0"], cwd=ROOT, text=True,
                         input="go\n", capture_output=True, timeout=30, check=True).stdout
    assert out.split() == ["ready", "closed"]
    assert [p.name[:8] for p in tmp_path.iterdir()] == ["breaker-"]
    parent.close()


def test_the_rate_limiter_is_shared_by_two_processes(tmp_path: Path) -> None:
    child = ("import asyncio, sys\nfrom dspex.runtime.resilience import RateLimiter\n"
             "asyncio.run(RateLimiter(rpm=6, name='shared-lm', shared_dir=sys.argv[1]).acquire())\n")
    subprocess.run([sys.executable, "-c", child, str(tmp_path)], cwd=ROOT, timeout=30, check=True)
    limiter = RateLimiter(rpm=6, name="shared-lm", shared_dir=tmp_path)  # one request per 10 s, taken
    assert not limiter.try_acquire()
    limiter.close()


# -- rate limits -------------------------------------------------------------------------------------------
def test_requests_are_spaced_by_rpm_and_slowed_after_a_429() -> None:
    clock, events = FakeClock(), []
    limiter = RateLimiter(rpm=60, clock=clock, sleep=clock.sleep, name="m",
                          on_event=lambda kind, data: events.append((kind, data)))

    async def times(n: int) -> list[float]:
        out = []
        for _ in range(n):
            await limiter.acquire()
            out.append(clock.now)
        return out

    assert run(times(4)) == [1000.0, 1001.0, 1002.0, 1003.0]
    assert events == [("rate_limited", {"lm": "m", "delay_s": 1.0})] * 3
    limiter.slow_down()
    limiter.slow_down()  # the same burst of 429s: one decrease
    assert limiter.factor == 0.5
    start = clock.now
    later = run(times(3))
    gaps = [b - a for a, b in zip([start, *later], later)]
    assert gaps[0] == pytest.approx(2.0) and 1.0 < gaps[2] < gaps[1] < gaps[0]  # halved, then recovering
    clock.now += 120
    start = clock.now
    assert limiter.factor == 1.0 and run(times(3)) == pytest.approx([start, start + 1, start + 2])


def test_tokens_per_minute_charge_the_estimate_then_the_measured_count() -> None:
    clock = FakeClock()
    limiter = RateLimiter(tpm=600, clock=clock, sleep=clock.sleep)  # 10 tokens a second, 10 at most in hand
    assert run(limiter.acquire(30)) == 0.0  # in debt by 20 ...
    assert run(limiter.acquire(5)) == pytest.approx(2.0)  # ... which takes 2 s to pay off
    limiter.settle(5, 0)  # it used none: refunded
    assert limiter.try_acquire(5)
    assert not limiter.try_acquire(1)


def test_a_429_slows_the_resilient_lms_limiter_down() -> None:
    clock = FakeClock()
    lm = resilient(Flaky(failed(429)), clock, rpm=600)
    assert run(lm.acomplete(ask())).text == "ok"
    assert lm.limiter is not None and lm.limiter.factor < 0.51


# -- hedging -----------------------------------------------------------------------------------------------
def test_hedging_takes_the_faster_answer_and_cancels_the_other() -> None:
    clock, events, inner = FakeClock(), [], Flaky((5.0, "slow"), (0.01, "fast"))
    lm = resilient(inner, clock, events, hedge_after_s=0.05)
    started = time.monotonic()
    assert run(lm.acomplete(ask())).text == "fast"
    assert time.monotonic() - started < 2
    assert inner.calls == 2 and inner.cancelled == 1 and events == [("hedge", {"lm": "flaky"})]


def test_a_quick_answer_is_not_hedged_and_a_failed_copy_waits_for_the_other() -> None:
    clock, inner = FakeClock(), Flaky((0.0, "quick"))
    assert run(resilient(inner, clock, hedge_after_s=1.0).acomplete(ask())).text == "quick" and inner.calls == 1
    inner = Flaky((0.2, "slow"), LMError("copy failed"))
    assert run(resilient(inner, clock, hedge_after_s=0.02).acomplete(ask())).text == "slow"
    inner = Flaky((0.1, LMError("first failed")), LMError("copy failed"))
    with pytest.raises(LMError, match="copy failed"):  # the first error to arrive
        run(resilient(inner, clock, hedge_after_s=0.02).acomplete(ask()))


# -- worker specs and policies -----------------------------------------------------------------------------
def test_a_worker_rebuilds_the_same_wrapper_from_its_spec(tmp_path: Path) -> None:
    policy = ResiliencePolicy(timeout_s=5, retries=1, rpm=60, hedge_after_s=2)
    lm = ResilientLM(OpenAILM("m", "http://127.0.0.1:9/v1"), policy, shared_dir=tmp_path)
    spec = lm.worker_spec()
    assert spec is not None and spec["provider"] == "openai" and lm.identity == lm.inner.identity
    rebuilt = wrap_from_spec(build_lm(spec["provider"], spec["args"]), spec)
    assert isinstance(rebuilt, ResilientLM)
    assert (rebuilt.policy, rebuilt.name, rebuilt.shared_dir) == (policy, lm.name, str(tmp_path))
    plain = lm.inner.worker_spec()
    assert plain is not None and wrap_from_spec(lm.inner, plain) is lm.inner
    assert ResilientLM(ScriptedLM(["x"])).worker_spec() is None
    run(lm.aclose())
    run(rebuilt.aclose())


def test_policies_are_read_from_mappings() -> None:
    base = policy_from_mapping({"retries": 5, "rpm": 60})
    assert base == ResiliencePolicy(retries=5, rpm=60.0) and isinstance(base.rpm, float)
    assert policy_from_mapping({"timeout_s": 2}, base) == ResiliencePolicy(retries=5, rpm=60, timeout_s=2.0)
    assert policy_from_mapping(base.to_mapping()) == base


@pytest.mark.parametrize(("data", "message"), [
    ({"retry": 2}, "resilience.retry: unknown key (did you mean 'retries'?)"),
    ({"retries": 1.5}, "resilience.retries: expected an integer, got float 1.5"),
    ({"retries": True}, "resilience.retries: expected an integer, got bool True"),
    ({"backoff_s": "1s"}, "resilience.backoff_s: expected a number, got str '1s'"),
    ({"backoff_s": -1}, "resilience.backoff_s: must be at least 0, got -1"),
    ({"rpm": 0}, "resilience.rpm: must be greater than 0, got 0"),
    ({"timeout_s": float("inf")}, "resilience.timeout_s: must be finite"),
    ({"jitter": 1}, "resilience.jitter: expected a boolean, got int 1"),
    ({"retries": None}, "resilience.retries: must be set"),
    (["retries"], "resilience: expected a table, got list"),
])
def test_bad_policies_are_config_errors(data: Any, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape("dspex.toml: " + message)):
        policy_from_mapping(data, source="dspex.toml", path="resilience")


def test_a_bad_policy_cannot_be_built_directly() -> None:
    with pytest.raises(ValueError, match="breaker_reset_s: must be greater than 0"):
        ResiliencePolicy(breaker_reset_s=0)


# -- a real adapter against a real server ------------------------------------------------------------------
class Timed(list[RecordedRequest]):
    """The stub's request log, with when each request arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, request: RecordedRequest) -> None:
        self.times.append(time.monotonic())
        super().append(request)


@pytest.mark.parametrize(("faults", "policy"), [
    ((Fault(status=500), Fault(status=503)), {}),
    ((Fault(status=429, retry_after="1"),), {}),
    ((Fault(hang=True),), {"timeout_s": 0.3}),
    ((Fault(truncate=True),), {}),
    ((Fault(disconnect=True),), {}),
], ids=["5xx", "429-retry-after", "hang", "truncated", "dropped"])
def test_openai_faults_are_retried_to_success(faults: Sequence[Fault], policy: dict[str, Any]) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    with OpenAIStub() as stub:
        stub.requests = log = Timed()
        stub.inject(*faults)
        lm = ResilientLM(OpenAILM("m", stub.base_url, timeout=10), ResiliencePolicy(backoff_s=0.01, **policy),
                         on_event=lambda kind, data: events.append((kind, data)))

        async def call() -> str:
            try:
                return (await lm.acomplete(ask("fine"))).text
            finally:
                await lm.aclose()

        assert run(call()) == "fine"
    assert len(log) == len(faults) + 1 and [kind for kind, _ in events] == ["retry"] * len(faults)
    if faults[0].retry_after:
        assert events[0][1]["delay_s"] == 1.0 and log.times[1] - log.times[0] >= 0.95


def test_openai_sync_calls_are_retried_too() -> None:
    with OpenAIStub() as stub:
        stub.inject(Fault(status=502))
        lm = ResilientLM(OpenAILM("m", stub.base_url), ResiliencePolicy(backoff_s=0.01))
        try:
            assert lm.complete(ask("sync")).text == "sync"
        finally:
            run(lm.aclose())
        assert len(stub.requests) == 2
