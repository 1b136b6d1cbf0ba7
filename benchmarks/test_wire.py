"""Wire speed (issue 4): a 200-byte message's round trip between two processes, the transport of the worker pool.

Every side runs the same exchange: the parent sends ``MESSAGE`` (a dict whose msgpack payload is 200 bytes), a
child process started once per module echoes it, and the parent receives the echo; a round does ``TRIPS`` round
trips one after the other, so times are per round trip.

- ``ring-round-trip``: ours, two ``dspex.native.Ring`` (parent -> child, child -> parent) on the compiled twin,
  against ``multiprocessing.Pipe`` (``Connection.send``/``recv``, pickle) echoed by a child; target <= 0.3. A
  variant runs both ends on the Python twin.
- ``ring-vs-process-pool``: the compiled ring again against ``ProcessPoolExecutor(1).submit(echo, msg).result()``
  (what a pool built on ``concurrent.futures`` pays per task); no target, for scale.

Children start with the ``spawn`` method, are told to stop (the ring's closed flag, the pipe's end) when the
module ends and are joined for a bounded time, then terminated. Run with
``python -m pytest benchmarks/test_wire.py -q --no-cov``; ``DSPEX_BENCH_WIRE_ROUNDS`` sets the rounds (default 20).
"""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import msgpack
import pytest

from dspex.native import twin

ROUNDS = int(os.environ.get("DSPEX_BENCH_WIRE_ROUNDS", "20"))
TRIPS = 2000  # round trips per round
POOL_TRIPS = 500  # ProcessPoolExecutor is ~20x slower: fewer per round, the same time per item
MESSAGE = {"id": 12345, "text": "x" * 186}
WAIT = 30.0  # bound on every wait: a child that died fails the benchmark instead of hanging it
SPAWN = multiprocessing.get_context("spawn")

assert len(msgpack.packb(MESSAGE)) == 200


# -- the children ---------------------------------------------------------------------------------------------------

def ring_echo(kind: str, inbox: str, outbox: str) -> None:
    """Echo every message from ring ``inbox`` to ring ``outbox`` until ``inbox`` is marked closed."""
    wire = twin("wire", kind)
    src, dst = wire.Ring.attach(inbox), wire.Ring.attach(outbox)
    try:
        while True:
            try:
                message = src.get(timeout=600)
            except EOFError:
                return
            dst.put(message, timeout=WAIT)
    finally:
        src.close()
        dst.close()


def pipe_echo(conn: Connection) -> None:
    """Echo every object received on ``conn`` until the other end closes."""
    try:
        while True:
            try:
                conn.send(conn.recv())
            except EOFError:
                return
    finally:
        conn.close()


def echo(message: Any) -> Any:
    return message


def stop(process: BaseProcess) -> None:
    """Join ``process`` for a bounded time, then terminate it, then kill it."""
    process.join(10)
    if process.is_alive():
        process.terminate()
        process.join(5)
    if process.is_alive():
        process.kill()
        process.join(5)


# -- fixtures -------------------------------------------------------------------------------------------------------

Exchange = Callable[[Any], Any]


def ring_exchange(kind: str) -> Iterator[Exchange]:
    try:
        wire = twin("wire", kind)
    except ImportError as e:  # the compiled twin was not built here
        pytest.skip(f"the {kind} wire twin is not available: {e}")
    inbox, outbox = wire.Ring.create(1 << 16), wire.Ring.create(1 << 16)
    child = SPAWN.Process(target=ring_echo, args=(kind, inbox.name, outbox.name), daemon=True)
    try:
        child.start()

        def exchange(message: Any) -> Any:
            inbox.put(message, timeout=WAIT)
            return outbox.get(timeout=WAIT)

        assert exchange(MESSAGE) == MESSAGE
        yield exchange
    finally:
        inbox.mark_closed()
        stop(child)
        inbox.close()
        outbox.close()


@pytest.fixture(scope="module")
def c_ring() -> Iterator[Exchange]:
    yield from ring_exchange("c")


@pytest.fixture(scope="module")
def py_ring() -> Iterator[Exchange]:
    yield from ring_exchange("py")


@pytest.fixture(scope="module")
def pipe() -> Iterator[Exchange]:
    here, there = SPAWN.Pipe()
    child = SPAWN.Process(target=pipe_echo, args=(there,), daemon=True)
    try:
        child.start()
        there.close()

        def exchange(message: Any) -> Any:
            here.send(message)
            if not here.poll(WAIT):
                raise TimeoutError(f"no echo within {WAIT} s")
            return here.recv()

        assert exchange(MESSAGE) == MESSAGE
        yield exchange
    finally:
        here.close()
        stop(child)


@pytest.fixture(scope="module")
def pool() -> Iterator[Exchange]:
    executor = ProcessPoolExecutor(1, mp_context=SPAWN)
    try:
        def exchange(message: Any) -> Any:
            return executor.submit(echo, message).result(timeout=WAIT)

        assert exchange(MESSAGE) == MESSAGE
        yield exchange
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def run(benchmark: Any, exchange: Exchange, trips: int) -> None:
    def round_() -> Any:
        reply = None
        for _ in range(trips):
            reply = exchange(MESSAGE)
        return reply

    assert benchmark.pedantic(round_, rounds=ROUNDS, iterations=1, warmup_rounds=1) == MESSAGE


# -- ring-round-trip ------------------------------------------------------------------------------------------------

def test_dspex_ring_round_trip(benchmark: Any, c_ring: Exchange) -> None:
    benchmark.group = "ring-round-trip"
    benchmark.extra_info.update(side="dspex", items=TRIPS, unit="round trip", target=0.3,
                                variant="Ring (compiled twin) both ends")
    run(benchmark, c_ring, TRIPS)


def test_dspex_ring_round_trip_python_twin(benchmark: Any, py_ring: Exchange) -> None:
    benchmark.group = "ring-round-trip"
    benchmark.extra_info.update(side="dspex", items=TRIPS, unit="round trip", variant="python twin")
    run(benchmark, py_ring, TRIPS)


def test_pipe_round_trip(benchmark: Any, pipe: Exchange) -> None:
    benchmark.group = "ring-round-trip"
    benchmark.extra_info.update(side="competitor", competitor="multiprocessing.Pipe + pickle", items=TRIPS,
                                unit="round trip")
    run(benchmark, pipe, TRIPS)


# -- ring-vs-process-pool -------------------------------------------------------------------------------------------

def test_dspex_ring_vs_process_pool(benchmark: Any, c_ring: Exchange) -> None:
    benchmark.group = "ring-vs-process-pool"
    benchmark.extra_info.update(side="dspex", items=TRIPS, unit="round trip", variant="Ring (compiled twin)")
    run(benchmark, c_ring, TRIPS)


def test_process_pool_round_trip(benchmark: Any, pool: Exchange) -> None:
    benchmark.group = "ring-vs-process-pool"
    benchmark.extra_info.update(side="competitor", competitor="ProcessPoolExecutor(1).submit(echo).result()",
                                items=POOL_TRIPS, unit="round trip")
    run(benchmark, pool, POOL_TRIPS)
