"""Worker-pool speed: a no-op request's round trip and the no-op requests per second a pool serves.

Ours is ``WorkerPool.call("ping")``: the request is a msgpack frame written into the worker's shared-memory
ring, the worker runs the ``ping`` operation and writes its response frame back (with its resident memory),
and the calling thread reads it. ``dspex.native.IMPLEMENTATION["wire"]`` says whether the ring is the compiled
twin (``c``) or the Python twin (``py``); every benchmark of ours names it in its variant.

- ``worker-round-trip``: one no-op request at a time to a pool of one worker, 2,000 per round, against
  ``ProcessPoolExecutor(1).submit(noop).result()`` (pickle over pipes, a management thread in the parent).
  Target: at most 0.1 of the executor's time per request.
- ``worker-round-trip-ray``: the same request of ours, against a Ray actor method (``ray.get(actor.noop.remote())``)
  and a Ray task (``ray.get(noop.remote())``) on a local Ray instance (two competitors: each gets its ratio).
  Ray's round trips take milliseconds, so these run 300 per round; these run last, with Ray started for them
  only, and ours is measured again while Ray's processes are up.
- ``worker-throughput``: no-op requests per second with 2 workers driven by 2 caller threads (4,000 per round),
  against ``ProcessPoolExecutor(2)`` driven the same way by ``submit().result()``. Each prints ``N requests/s =
  M per core``; ours is checked against Snakepit's claim of 8,000 no-op requests/s per core.

Pools, executors and Ray start once per module and are closed at its end. Run with
``python -m pytest benchmarks/test_workers.py -q --no-cov``; ``DSPEX_BENCH_WORKERS_ROUNDS`` sets the rounds
(default 10; the Ray benchmarks run half as many).
"""
from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

from dspex.native import IMPLEMENTATION
from dspex.workers.pool import WorkerPool

__all__ = ["REQUESTS", "RAY_REQUESTS", "THROUGHPUT_REQUESTS", "SNAKEPIT_PER_CORE", "CORES", "noop"]

REQUESTS = 2000  # per round, round-trip group
RAY_REQUESTS = 300  # per round, Ray group (a Ray call takes milliseconds)
THROUGHPUT_REQUESTS = 4000  # per round, throughput group, split over the 2 caller threads
ROUNDS = int(os.environ.get("DSPEX_BENCH_WORKERS_ROUNDS", "10"))
SNAKEPIT_PER_CORE = 8000  # Snakepit's claim: no-op requests/s per core
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
WIRE = f"{IMPLEMENTATION['wire']} ring"


def noop() -> None:
    """The executor's no-op (its workers import this module by name)."""
    return None


def _repeat(fn: Callable[[], Any], n: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(n):
            fn()

    return run


def _two_threads(fn: Callable[[], Any], n: int) -> Callable[[], None]:
    """``n`` calls of ``fn``, half on each of two threads started for the round (they wait on a barrier, so
    both are running before the first call)."""
    barrier = threading.Barrier(2)

    def half() -> None:
        barrier.wait()
        for _ in range(n // 2):
            fn()

    def run() -> None:
        threads = [threading.Thread(target=half) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    return run


def _micro(benchmark: Any, fn: Callable[[], Any], rounds: int = ROUNDS) -> None:
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)


def _rate_summary(benchmark: Any, n: int, *, bar: bool) -> float:
    """``N requests/s = M per core`` from the median round (and the best round), with the Snakepit verdict on
    our side (on the median)."""
    stats = benchmark.stats.stats
    rate, best = n / float(stats.median), n / float(stats.min)
    per_core = rate / CORES
    line = (f"{rate:,.0f} requests/s = {per_core:,.0f} per core ({CORES} cores), median round; "
            f"best round {best:,.0f}/s = {best / CORES:,.0f} per core")
    if bar:
        line += (f"  (Snakepit's bar {SNAKEPIT_PER_CORE:,}/s per core: "
                 + ("beaten)" if per_core > SNAKEPIT_PER_CORE else "NOT beaten)"))
    benchmark.extra_info.update(requests_per_s=round(rate, 1), per_core=round(per_core, 1),
                                best_requests_per_s=round(best, 1),
                                summary=[*benchmark.extra_info.get("summary", []), line])
    return rate


# -- fixtures: started once, closed at the module's end ----------------------------------------------------------

def _executor(workers: int) -> ProcessPoolExecutor:
    # forkserver: no fork of this (threaded) process; the start-up is not timed either way.
    executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"))
    for future in [executor.submit(noop) for _ in range(workers * 4)]:
        future.result()  # every worker started and has imported this module
    return executor


@pytest.fixture(scope="module")
def pool1() -> Iterator[WorkerPool]:
    with WorkerPool("bench", 1) as pool:
        pool.call("ping")
        yield pool


@pytest.fixture(scope="module")
def pool2() -> Iterator[WorkerPool]:
    with WorkerPool("bench", 2) as pool:
        pool.call("ping")
        yield pool


@pytest.fixture(scope="module")
def ppe1() -> Iterator[ProcessPoolExecutor]:
    executor = _executor(1)
    yield executor
    executor.shutdown()


@pytest.fixture(scope="module")
def ppe2() -> Iterator[ProcessPoolExecutor]:
    executor = _executor(2)
    yield executor
    executor.shutdown()


@pytest.fixture(scope="module")
def ray_side() -> Iterator[tuple[Any, Any, Any]]:
    """``(ray, actor, task)``: a local Ray instance, one actor with a no-op method and a no-op task, defined
    here so that Ray ships them by value."""
    ray = pytest.importorskip("ray", reason="Ray cannot be installed on this platform")
    ray.init(num_cpus=CORES, include_dashboard=False, log_to_driver=False)
    try:
        class Noop:
            def noop(self) -> None:
                return None

        def task() -> None:
            return None

        actor = ray.remote(num_cpus=0)(Noop).remote()
        remote_task = ray.remote(num_cpus=0)(task)
        ray.get([actor.noop.remote(), remote_task.remote()])  # the actor and a task worker are up
        yield ray, actor, remote_task
    finally:
        ray.shutdown()


# -- worker-round-trip -------------------------------------------------------------------------------------------

@pytest.mark.benchmark(group="worker-round-trip")
def test_pool_round_trip(benchmark: Any, pool1: WorkerPool) -> None:
    benchmark.extra_info.update(side="dspex", items=REQUESTS, unit="request", target=0.1,
                                variant=f"WorkerPool(1).call('ping'), {WIRE}")
    _micro(benchmark, _repeat(lambda: pool1.call("ping"), REQUESTS))
    assert pool1.call("echo", {"value": 7}) == 7


@pytest.mark.benchmark(group="worker-round-trip")
def test_process_pool_round_trip(benchmark: Any, ppe1: ProcessPoolExecutor) -> None:
    benchmark.extra_info.update(side="competitor", competitor="ProcessPoolExecutor(1)", items=REQUESTS,
                                unit="request", variant="submit(noop).result(), forkserver")
    _micro(benchmark, _repeat(lambda: ppe1.submit(noop).result(), REQUESTS))


# -- worker-throughput -------------------------------------------------------------------------------------------

@pytest.mark.benchmark(group="worker-throughput")
def test_pool_throughput(benchmark: Any, pool2: WorkerPool) -> None:
    benchmark.extra_info.update(side="dspex", items=THROUGHPUT_REQUESTS, unit="request",
                                variant=f"WorkerPool(2).call('ping') from 2 threads, {WIRE}")
    _micro(benchmark, _two_threads(lambda: pool2.call("ping"), THROUGHPUT_REQUESTS))
    _rate_summary(benchmark, THROUGHPUT_REQUESTS, bar=True)
    assert {e.kind for e in pool2.events} == {"start"}  # no worker was lost or recycled on the way


@pytest.mark.benchmark(group="worker-throughput")
def test_process_pool_throughput(benchmark: Any, ppe2: ProcessPoolExecutor) -> None:
    benchmark.extra_info.update(side="competitor", competitor="ProcessPoolExecutor(2)", items=THROUGHPUT_REQUESTS,
                                unit="request", variant="submit(noop).result() from 2 threads, forkserver")
    _micro(benchmark, _two_threads(lambda: ppe2.submit(noop).result(), THROUGHPUT_REQUESTS))
    _rate_summary(benchmark, THROUGHPUT_REQUESTS, bar=False)


# -- worker-round-trip-ray (last: Ray's processes stay up until the module ends) ---------------------------------

@pytest.mark.benchmark(group="worker-round-trip-ray")
def test_pool_round_trip_beside_ray(benchmark: Any, pool1: WorkerPool, ray_side: tuple[Any, Any, Any]) -> None:
    benchmark.extra_info.update(side="dspex", items=REQUESTS, unit="request",
                                variant=f"WorkerPool(1).call('ping'), {WIRE}, Ray running")
    _micro(benchmark, _repeat(lambda: pool1.call("ping"), REQUESTS))


@pytest.mark.benchmark(group="worker-round-trip-ray")
def test_ray_actor_round_trip(benchmark: Any, ray_side: tuple[Any, Any, Any]) -> None:
    ray, actor, _ = ray_side
    benchmark.extra_info.update(side="competitor", competitor=f"ray {ray.__version__} actor", items=RAY_REQUESTS,
                                unit="request", variant="ray.get(actor.noop.remote())")
    _micro(benchmark, _repeat(lambda: ray.get(actor.noop.remote()), RAY_REQUESTS), rounds=max(1, ROUNDS // 2))


@pytest.mark.benchmark(group="worker-round-trip-ray")
def test_ray_task_round_trip(benchmark: Any, ray_side: tuple[Any, Any, Any]) -> None:
    ray, _, task = ray_side
    benchmark.extra_info.update(side="competitor", competitor=f"ray {ray.__version__} task", items=RAY_REQUESTS,
                                unit="request", variant="ray.get(noop.remote())")
    _micro(benchmark, _repeat(lambda: ray.get(task.remote()), RAY_REQUESTS), rounds=max(1, ROUNDS // 2))
