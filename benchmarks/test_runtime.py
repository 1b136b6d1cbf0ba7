"""Runtime speed, each group side by side with dspy in the same run (issue 3, "Speed").

Every group runs ``classify_one`` / ``Classify`` of ``examples/reviews.dspex`` (one ``predict`` of a review into
a label and a confidence) on both sides, with equal LMs:

- ``predict-overhead``: framework cost per ``predict`` against an LM that answers at once (a fixed reply, built
  once, on both sides). Ours is measured as a user pays it: the synchronous ``Runtime.call`` (which hands the
  step to the runtime's event-loop thread and waits), and, as a variant, ``await Runtime.acall`` repeated in the
  caller's own event loop (an async application; the loop is reused across rounds, the time is per call). DSPy:
  ``dspy.Predict(sig)(...)`` with a ``dspy.LM`` whose custom engine answers at once, its cache off.
- ``cache-hit``: what a repeated call with the same inputs costs once its answer is cached. Ours: the whole
  ``Runtime.run(classify_one, review=...)`` (bind inputs, run the graph, key the step, memory-tier hit, project
  the outputs; the SQLite tier sits behind it in a temporary ``DSPEX_HOME``), and the same ``await Runtime.arun``
  in the caller's loop. DSPy: ``dspy.Predict`` with its cache on and the same input (it still formats the prompt
  and parses the reply around the hit). Both check that the LM was called once only.
- ``http-predict``: one ``predict`` over HTTP to the OpenAI-compatible stub (``tests/servers/openai_stub.py``)
  answering at once, run in its own process so that server and client do not share a GIL. Ours: ``Runtime.call``
  on ``OpenAILM`` (and ``acall`` in the caller's loop); DSPy: ``dspy.Predict`` on ``dspy.LM("openai/x",
  api_base=...)`` with its default engine (lm15 here, dspy's fastest), cache and retries off. Baseline: a bare
  keep-alive HTTP round trip of a same-sized body with ``http.client``: no client can beat it.
- ``throughput``: 2,000 distinct rows against the stub answering in 50 ms, 64 at a time: ``Runtime.batch`` (cache
  off) vs ``dspy.Parallel(num_threads=64)`` over ``dspy.Predict``; rounds=1. Baseline: a bare asyncio HTTP/1.1
  client on 64 keep-alive connections, which shows what the stub itself can serve on this machine.
- ``smollm2``: the classification over ``examples/reviews_single.jsonl`` on the embedded SmolLM2 (``LocalLM``, in
  process), through ``Runtime`` with only the native engine vs only the dspy engine, one row at a time (the model
  runs one call at a time anyway); seconds per row, the share of rows whose outputs validate and the accuracy
  against ``examples/reviews_gold.jsonl``. The dspy engine takes ~10 s a row on two cores, so it runs the first
  ``DSPEX_BENCH_SMOLLM2_ROWS`` rows (default 6; ``all`` for every row); the native engine runs every row and also
  reports its figures on that same prefix.

Run with ``python -m pytest benchmarks -q --no-cov``; ``DSPEX_BENCH_RUNTIME_ROUNDS`` sets the rounds of the
micro-benchmarks (default 30). Targets (dspex / dspy, time per call): predict-overhead <= 0.1 (goal 0.05),
cache-hit <= 0.1, http-predict <= 0.5, throughput <= 1/1.5 (1.5x dspy's calls/s) and >= 0.9 of 64 / 0.05 s.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # dspy and litellm: no fetch of the model map

import pytest

import dspex
from dspex.errors import StepError
from dspex.ir.program import Pipeline, Program, Signature
from dspex.lm.base import LM, LMRequest, LMResponse, Message
from dspex.runtime.config import Config
from tests.servers.openai_stub import stop_child

__all__ = ["CHAT_ANSWER", "CONCURRENCY", "EXAMPLES", "EXPECTED", "IDEAL_CALLS_PER_S", "JSON_ANSWER", "REVIEW", "ROOT",
           "ROUNDS", "SLOW_LATENCY_S", "THROUGHPUT_CALLS", "InstantLM", "RowOutcome", "StubProcess", "classify_rows",
           "describe_rows", "instant_dspy_lm", "raw_http_calls"]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
ROUNDS = int(os.environ.get("DSPEX_BENCH_RUNTIME_ROUNDS", "30"))
THROUGHPUT_CALLS, CONCURRENCY, SLOW_LATENCY_S = 2000, 64, 0.05
IDEAL_CALLS_PER_S = CONCURRENCY / SLOW_LATENCY_S
ASYNC_CALLS = 200  # calls per round of the in-loop variants
_ROWS = os.environ.get("DSPEX_BENCH_SMOLLM2_ROWS", "6")
SMOLLM2_DSPY_ROWS = None if _ROWS == "all" else int(_ROWS)

# The same answer on both sides: JSON for ours (asked for with a JSON schema), dspy's ChatAdapter format for dspy.
JSON_ANSWER = '{"label": "positive", "confidence": 0.9}'
CHAT_ANSWER = "[[ ## label ## ]]\npositive\n\n[[ ## confidence ## ]]\n0.9\n\n[[ ## completed ## ]]"
EXPECTED = {"label": "positive", "confidence": 0.9}
REVIEW = "Battery lasts two days, love it."


# -- the LMs that answer at once ---------------------------------------------------------------------------------

class InstantLM(LM):
    """Our side's instant LM: one fixed, valid reply built once; counts its calls."""

    supports_json_schema = True

    def __init__(self, text: str = JSON_ANSWER):
        self.identity = "instant"
        self.response = LMResponse(text, 10, 5, 0.0, "instant")
        self.calls = 0

    async def acomplete(self, request: LMRequest) -> LMResponse:
        self.calls += 1
        return self.response


@dataclass
class _Count:
    calls: int = 0


def instant_dspy_lm(text: str = CHAT_ANSWER, *, cache: bool) -> tuple[Any, _Count]:
    """DSPy's side: a ``dspy.LM`` whose custom engine returns one fixed ``lm15.Response`` built once (the engine
    interface dspy 3.4 recommends for custom backends), and the counter of its calls."""
    import dspy
    from dspy import lm15

    response = lm15.Response(id=None, model="instant", message=lm15.Message.assistant(text), finish_reason="stop",
                             usage=lm15.Usage(input_tokens=10, output_tokens=5))
    count = _Count()

    class Engine:
        def complete(self, request: Any) -> Any:
            count.calls += 1
            return response

        def stream(self, request: Any) -> Any:
            return lm15.response_to_events(self.complete(request))

        def close(self) -> None:
            pass

    class AsyncEngine:
        async def complete(self, request: Any) -> Any:
            count.calls += 1
            return response

        async def aclose(self) -> None:
            pass

    lm = dspy.LM("instant/instant", engine=Engine(), async_engine=AsyncEngine(), cache=cache, num_retries=0)
    return lm, count


# -- the HTTP stub, in its own process ---------------------------------------------------------------------------

_STUB_MAIN = """
import json, sys
from tests.servers.openai_stub import OpenAIStub
latency, json_answer, chat_answer = float(sys.argv[1]), sys.argv[2], sys.argv[3]

def answer(body):
    chat = not body.get("response_format") and any("[[ ## " in str(m.get("content"))
                                                    for m in body.get("messages") or ())
    return chat_answer if chat else json_answer

with OpenAIStub(answer=answer, latency=latency) as stub:
    print(stub.port, flush=True)
    sys.stdin.read()  # until the parent closes our stdin
"""


class StubProcess:
    """``tests/servers/openai_stub.py`` serving in a child process: JSON answers for requests with a
    ``response_format`` (ours), ChatAdapter answers for prompts in dspy's format."""

    def __init__(self, latency: float = 0.0):
        self.latency = latency
        self.port = 0
        self._proc: subprocess.Popen[str] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> Self:
        self._proc = subprocess.Popen([sys.executable, "-c", _STUB_MAIN, str(self.latency), JSON_ANSWER, CHAT_ANSWER],
                                      cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.strip().isdigit():
            self.__exit__()
            raise RuntimeError(f"the stub process did not start (it printed {line!r})")
        self.port = int(line)
        return self

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        stop_child(proc)


def _request_bytes(body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(data), data))


async def raw_http_calls(port: int, body: dict[str, Any], calls: int, connections: int) -> int:
    """``calls`` POSTs over ``connections`` keep-alive connections with a bare asyncio HTTP/1.1 client (no pool,
    no parsing beyond Content-Length): the most a Python client could get out of the server. Returns the number
    of 200 answers."""
    request = _request_bytes(body)
    left = calls
    ok = 0

    async def worker() -> None:
        nonlocal left, ok
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while left > 0:
                left -= 1
                writer.write(request)
                head = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
                length = next(int(h.split(b":")[1]) for h in head if h.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                ok += head[0].split(b" ")[1] == b"200"
        finally:
            writer.close()
            await writer.wait_closed()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return ok


def _same_size_body(sig: Signature) -> dict[str, Any]:
    """A chat body as large as the one our engine sends for the benchmark's review (for the baselines)."""
    from dspex.engines.render import render_system, render_user

    return {"model": "x", "messages": [{"role": "system", "content": render_system(sig, "predict", {})},
                                       {"role": "user", "content": render_user(sig, {"review": REVIEW})}]}


# -- fixtures -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def program() -> Program:
    return dspex.compile_file(str(EXAMPLES / "reviews.dspex"))


@pytest.fixture(scope="module")
def sig(program: Program) -> Signature:
    return program.signatures["Classify"]


@pytest.fixture(scope="module")
def pipe(program: Program) -> Pipeline:
    return program.pipelines["classify_one"]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """A private DSPEX_HOME: the cache file of these runs is not the user's."""
    return Config(home=tmp_path_factory.mktemp("dspex-home"))


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The caller's own event loop for the in-loop variants, reused by every round."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


@pytest.fixture(scope="module")
def fast_stub() -> Iterator[StubProcess]:
    with StubProcess(0.0) as stub:
        yield stub


@pytest.fixture(scope="module")
def slow_stub() -> Iterator[StubProcess]:
    with StubProcess(SLOW_LATENCY_S) as stub:
        yield stub


def _dspy_label() -> str:
    import dspy

    return f"dspy {dspy.__version__}"


def _in_loop(loop: asyncio.AbstractEventLoop, calls: int,
             step: Callable[[], Coroutine[Any, Any, Any]]) -> Callable[[], Any]:
    """A round that awaits ``step()`` ``calls`` times in ``loop``; returns the last result."""

    async def many() -> Any:
        result = None
        for _ in range(calls):
            result = await step()
        return result

    return lambda: loop.run_until_complete(many())


def _micro(benchmark: Any, fn: Callable[[], Any], iterations: int) -> Any:
    return benchmark.pedantic(fn, rounds=ROUNDS, iterations=iterations, warmup_rounds=1)


# -- predict-overhead ---------------------------------------------------------------------------------------------

@pytest.mark.benchmark(group="predict-overhead")
def test_dspex_predict_overhead(benchmark: Any, sig: Signature, config: Config) -> None:
    lm = InstantLM()
    with dspex.Runtime(lm=lm, cache=False, config=config) as rt:
        benchmark.extra_info.update(side="dspex", items=1, unit="call", target=0.1,
                                    variant="sync Runtime.call, instant LM",
                                    summary=["goal: <= 0.05 of dspy (1/20)"])
        out = _micro(benchmark, lambda: rt.call(sig, review=REVIEW), iterations=100)
    assert out == EXPECTED and lm.calls > 100


@pytest.mark.benchmark(group="predict-overhead")
def test_dspex_predict_overhead_in_loop(benchmark: Any, sig: Signature, config: Config,
                                        loop: asyncio.AbstractEventLoop) -> None:
    lm = InstantLM()
    with dspex.Runtime(lm=lm, cache=False, config=config) as rt:
        benchmark.extra_info.update(side="dspex", items=ASYNC_CALLS, unit="call", target=0.1,
                                    variant="await Runtime.acall in the caller's loop, instant LM")
        out = _micro(benchmark, _in_loop(loop, ASYNC_CALLS, lambda: rt.acall(sig, review=REVIEW)), iterations=1)
    assert out == EXPECTED


@pytest.mark.benchmark(group="predict-overhead")
def test_dspy_predict_overhead(benchmark: Any, sig: Signature) -> None:
    import dspy

    lm, count = instant_dspy_lm(cache=False)
    predict = dspy.Predict(sig.to_dspy())
    benchmark.extra_info.update(side="competitor", competitor=f"{_dspy_label()} Predict", items=1, unit="call",
                                variant="dspy.Predict(sig)(...), instant custom-engine LM, cache off")
    with dspy.context(lm=lm):
        out = _micro(benchmark, lambda: predict(review=REVIEW), iterations=20)
    assert dict(out) == EXPECTED and count.calls > 20


# -- cache-hit ----------------------------------------------------------------------------------------------------

@pytest.mark.benchmark(group="cache-hit")
def test_dspex_cache_hit(benchmark: Any, pipe: Pipeline, config: Config) -> None:
    lm = InstantLM()
    with dspex.Runtime(lm=lm, cache=True, config=config) as rt:
        assert rt.run(pipe, review=REVIEW) == EXPECTED  # the miss that fills the cache, untimed
        benchmark.extra_info.update(side="dspex", items=1, unit="call", target=0.1,
                                    variant="sync Runtime.run(classify_one), same input, memory-tier hit")
        out = _micro(benchmark, lambda: rt.run(pipe, review=REVIEW), iterations=100)
        assert rt.cache is not None and rt.cache.stats.misses == 1
    assert out == EXPECTED and lm.calls == 1


@pytest.mark.benchmark(group="cache-hit")
def test_dspex_cache_hit_in_loop(benchmark: Any, pipe: Pipeline, config: Config,
                                 loop: asyncio.AbstractEventLoop) -> None:
    lm = InstantLM()
    with dspex.Runtime(lm=lm, cache=True, config=config) as rt:
        assert loop.run_until_complete(rt.arun(pipe, review=REVIEW)) == EXPECTED
        benchmark.extra_info.update(side="dspex", items=ASYNC_CALLS, unit="call", target=0.1,
                                    variant="await Runtime.arun(classify_one) in the caller's loop, same input")
        out = _micro(benchmark, _in_loop(loop, ASYNC_CALLS, lambda: rt.arun(pipe, review=REVIEW)), iterations=1)
    assert out == EXPECTED and lm.calls <= 1  # <= : the first test's SQLite entry may already answer it


@pytest.mark.benchmark(group="cache-hit")
def test_dspy_cache_hit(benchmark: Any, sig: Signature) -> None:
    import dspy

    lm, count = instant_dspy_lm(cache=True)
    predict = dspy.Predict(sig.to_dspy())
    benchmark.extra_info.update(side="competitor", competitor=f"{_dspy_label()} Predict (cache on)", items=1,
                                unit="call", variant="dspy.Predict, same input, dspy's cache on")
    with dspy.context(lm=lm):
        predict(review=REVIEW)
        calls = count.calls
        out = _micro(benchmark, lambda: predict(review=REVIEW), iterations=20)
    assert dict(out) == EXPECTED and count.calls == calls <= 1


# -- http-predict -------------------------------------------------------------------------------------------------

@pytest.mark.benchmark(group="http-predict")
def test_dspex_http_predict(benchmark: Any, sig: Signature, config: Config, fast_stub: StubProcess) -> None:
    from dspex.lm.openai import OpenAILM

    with dspex.Runtime(lm=OpenAILM("x", base_url=fast_stub.base_url), cache=False, config=config) as rt:
        benchmark.extra_info.update(side="dspex", items=1, unit="call", target=0.5,
                                    variant="sync Runtime.call, OpenAILM (aiohttp)")
        out = _micro(benchmark, lambda: rt.call(sig, review=REVIEW), iterations=10)
    assert out == EXPECTED


@pytest.mark.benchmark(group="http-predict")
def test_dspex_http_predict_in_loop(benchmark: Any, sig: Signature, config: Config, fast_stub: StubProcess,
                                    loop: asyncio.AbstractEventLoop) -> None:
    from dspex.lm.openai import OpenAILM

    calls = 20
    lm = OpenAILM("x", base_url=fast_stub.base_url)
    with dspex.Runtime(lm=lm, cache=False, config=config) as rt:
        benchmark.extra_info.update(side="dspex", items=calls, unit="call", target=0.5,
                                    variant="await Runtime.acall in the caller's loop, OpenAILM (aiohttp)")
        out = _micro(benchmark, _in_loop(loop, calls, lambda: rt.acall(sig, review=REVIEW)), iterations=1)
        loop.run_until_complete(lm.aclose())  # its client lives on `loop`, which the runtime does not own
    assert out == EXPECTED


@pytest.mark.benchmark(group="http-predict")
def test_dspy_http_predict(benchmark: Any, sig: Signature, fast_stub: StubProcess) -> None:
    import dspy

    lm = dspy.LM("openai/x", api_base=fast_stub.base_url, api_key="x", cache=False, num_retries=0)
    predict = dspy.Predict(sig.to_dspy())
    benchmark.extra_info.update(side="competitor", competitor=f"{_dspy_label()} Predict", items=1, unit="call",
                                variant="dspy.LM('openai/x', api_base=stub), default engine (lm15), cache off")
    with dspy.context(lm=lm):
        out = _micro(benchmark, lambda: predict(review=REVIEW), iterations=5)
    assert dict(out) == EXPECTED


@pytest.mark.benchmark(group="http-predict")
def test_http_round_trip_baseline(benchmark: Any, sig: Signature, fast_stub: StubProcess) -> None:
    body = json.dumps(_same_size_body(sig)).encode()
    conn = http.client.HTTPConnection("127.0.0.1", fast_stub.port)
    headers = {"Content-Type": "application/json"}

    def round_trip() -> int:
        conn.request("POST", "/v1/chat/completions", body, headers)
        response = conn.getresponse()
        response.read()
        return response.status

    benchmark.extra_info.update(side="baseline", items=1, unit="call",
                                variant="bare keep-alive round trip (http.client), same-sized body")
    try:
        assert _micro(benchmark, round_trip, iterations=20) == 200
    finally:
        conn.close()


# -- throughput ---------------------------------------------------------------------------------------------------

def _throughput_info(benchmark: Any, calls: int, seconds: float, *, side: str, **info: Any) -> float:
    rate = calls / seconds
    share = rate / IDEAL_CALLS_PER_S
    lines = [f"{rate:.0f} calls/s = {share:.2f} of the ideal {IDEAL_CALLS_PER_S:.0f}/s"
             + ("  (target >= 0.9: " + ("met)" if share >= 0.9 else "NOT met)") if side == "dspex" else "")]
    benchmark.extra_info.update(side=side, items=calls, unit="call", calls_per_s=round(rate, 1),
                                fraction_of_ideal=round(share, 3), summary=lines, **info)
    return rate


def _rows(n: int) -> list[dict[str, Any]]:
    return [{"id": i, "review": f"Review number {i}: battery lasts two days, love it."} for i in range(n)]


@pytest.mark.benchmark(group="throughput")
def test_dspex_throughput(benchmark: Any, pipe: Pipeline, config: Config, slow_stub: StubProcess) -> None:
    from dspex.lm.openai import OpenAILM

    lm = OpenAILM("x", base_url=slow_stub.base_url, max_connections=CONCURRENCY)
    with dspex.Runtime(lm=lm, cache=False, config=config, concurrency=CONCURRENCY) as rt:
        assert all(r.ok for r in rt.batch(pipe, _rows(CONCURRENCY), concurrency=CONCURRENCY))  # connections open
        rows = _rows(THROUGHPUT_CALLS)
        started = time.perf_counter()
        results = benchmark.pedantic(lambda: list(rt.batch(pipe, rows, concurrency=CONCURRENCY)), rounds=1,
                                     iterations=1)
        seconds = time.perf_counter() - started
    assert len(results) == THROUGHPUT_CALLS and all(r.ok and r.outputs == EXPECTED for r in results)
    _throughput_info(benchmark, THROUGHPUT_CALLS, seconds, side="dspex", target=round(1 / 1.5, 3),
                     variant=f"Runtime.batch, concurrency {CONCURRENCY}, OpenAILM (aiohttp), cache off")


@pytest.mark.benchmark(group="throughput")
def test_dspy_throughput(benchmark: Any, sig: Signature, slow_stub: StubProcess) -> None:
    import dspy

    lm = dspy.LM("openai/x", api_base=slow_stub.base_url, api_key="x", cache=False, num_retries=0)
    predict = dspy.Predict(sig.to_dspy())
    parallel = dspy.Parallel(num_threads=CONCURRENCY, disable_progress_bar=True)
    pairs = [(predict, dspy.Example(review=r["review"]).with_inputs("review")) for r in _rows(THROUGHPUT_CALLS)]
    with dspy.context(lm=lm):
        parallel(pairs[:CONCURRENCY])
        started = time.perf_counter()
        out = benchmark.pedantic(lambda: parallel(pairs), rounds=1, iterations=1)
        seconds = time.perf_counter() - started
    assert len(out) == THROUGHPUT_CALLS and all(p is not None and dict(p) == EXPECTED for p in out)
    _throughput_info(benchmark, THROUGHPUT_CALLS, seconds, side="competitor",
                     competitor=f"{_dspy_label()} Parallel(num_threads={CONCURRENCY})",
                     variant="dspy.Parallel over dspy.Predict, default engine (lm15), cache off")


@pytest.mark.benchmark(group="throughput")
def test_stub_throughput_baseline(benchmark: Any, sig: Signature, slow_stub: StubProcess) -> None:
    body = _same_size_body(sig)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(raw_http_calls(slow_stub.port, body, CONCURRENCY, CONCURRENCY))
        started = time.perf_counter()
        ok = benchmark.pedantic(lambda: loop.run_until_complete(
            raw_http_calls(slow_stub.port, body, THROUGHPUT_CALLS, CONCURRENCY)), rounds=1, iterations=1)
        seconds = time.perf_counter() - started
    finally:
        loop.close()
    assert ok == THROUGHPUT_CALLS
    _throughput_info(benchmark, THROUGHPUT_CALLS, seconds, side="baseline",
                     variant=f"bare asyncio HTTP/1.1 client, {CONCURRENCY} keep-alive connections: the stub's ceiling")


# -- smollm2 ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RowOutcome:
    id: str
    seconds: float
    outputs: dict[str, Any] | None  # None: the step failed (its outputs did not validate, or the LM failed)
    error: str = ""


def classify_rows(rt: dspex.Runtime, pipe: Pipeline, rows: list[dict[str, Any]]) -> list[RowOutcome]:
    """Each row through ``classify_one``, one at a time, timed."""
    outcomes = []
    for row in rows:
        started = time.perf_counter()
        try:
            outputs: dict[str, Any] | None = rt.run(pipe, review=row["review"])
            error = ""
        except StepError as exc:
            outputs, error = None, f"{type(exc.cause).__name__}: {str(exc.cause)[:120]}"
        outcomes.append(RowOutcome(row["id"], time.perf_counter() - started, outputs, error))
    return outcomes


def describe_rows(outcomes: list[RowOutcome], gold: dict[str, str]) -> tuple[dict[str, Any], str]:
    """The figures of a run (seconds per row, share valid, accuracy) and one line saying them."""
    n = len(outcomes)
    valid = sum(o.outputs is not None for o in outcomes)
    correct = sum(o.outputs is not None and o.outputs.get("label") == gold.get(o.id) for o in outcomes)
    per_row = sum(o.seconds for o in outcomes) / max(n, 1)
    figures = {"rows": n, "s_per_row": round(per_row, 3), "valid_share": round(valid / max(n, 1), 3),
               "accuracy": round(correct / max(n, 1), 3)}
    return figures, (f"{per_row:.2f} s/row over {n} rows; outputs valid: {valid}/{n} ({valid / max(n, 1):.0%}); "
                     f"accuracy vs gold: {correct}/{n} ({correct / max(n, 1):.0%})")


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def reviews() -> tuple[list[dict[str, Any]], dict[str, str]]:
    rows = _jsonl(EXAMPLES / "reviews_single.jsonl")
    gold = {g["id"]: g["label"] for g in _jsonl(EXAMPLES / "reviews_gold.jsonl")}
    return rows, gold


@pytest.fixture(scope="module")
def smollm2() -> LM:
    from dspex.lm.local import LocalLM

    lm = LocalLM()
    lm.complete(LMRequest((Message("user", "Say hi."),), max_tokens=4))  # load the weights, untimed
    return lm


def _smollm2_bench(benchmark: Any, rt: dspex.Runtime, pipe: Pipeline, rows: list[dict[str, Any]],
                   gold: dict[str, str]) -> tuple[list[RowOutcome], list[str]]:
    outcomes: list[RowOutcome] = benchmark.pedantic(lambda: classify_rows(rt, pipe, rows), rounds=1, iterations=1)
    figures, line = describe_rows(outcomes, gold)
    failures = sorted({o.error for o in outcomes if o.error})[:2]
    benchmark.extra_info.update(items=len(rows), unit="row", **figures)
    return outcomes, [line] + [f"e.g. {f}" for f in failures]


@pytest.mark.benchmark(group="smollm2")
def test_dspex_smollm2(benchmark: Any, pipe: Pipeline, config: Config, smollm2: LM,
                       reviews: tuple[list[dict[str, Any]], dict[str, str]]) -> None:
    from dspex.engines.native import NativeEngine

    rows, gold = reviews
    with dspex.Runtime(lm=smollm2, cache=False, config=config, engines={"native": NativeEngine()}) as rt:
        outcomes, lines = _smollm2_bench(benchmark, rt, pipe, rows, gold)
    prefix = outcomes[:SMOLLM2_DSPY_ROWS]
    if len(prefix) < len(outcomes):
        lines.append("on the dspy engine's rows: " + describe_rows(prefix, gold)[1])
    benchmark.extra_info.update(side="dspex", variant="native engine, LocalLM (SmolLM2-135M) in process",
                                summary=lines)


@pytest.mark.benchmark(group="smollm2")
def test_dspy_engine_smollm2(benchmark: Any, pipe: Pipeline, config: Config, smollm2: LM,
                             reviews: tuple[list[dict[str, Any]], dict[str, str]]) -> None:
    from dspex.engines.dspy_engine import DspyEngine
    from dspex.lm.scripted import ScriptedLM

    rows, gold = reviews
    engine = DspyEngine()
    with dspex.Runtime(lm=ScriptedLM([CHAT_ANSWER]), cache=False, config=config, engines={"dspy": engine}) as rt:
        assert rt.run(pipe, review=REVIEW) == EXPECTED  # imports dspy and builds the module, untimed
    with dspex.Runtime(lm=smollm2, cache=False, config=config, engines={"dspy": engine}) as rt:
        _, lines = _smollm2_bench(benchmark, rt, pipe, rows[:SMOLLM2_DSPY_ROWS], gold)
    benchmark.extra_info.update(side="competitor", competitor=f"dspy engine ({_dspy_label()} Predict)",
                                variant="dspy engine, the same LocalLM as a dspy custom engine", summary=lines)
