"""A worker process: ``python -m dspex.workers.worker --req NAME --resp NAME --status NAME --parent PID``.

It attaches the two rings its pool created (requests in, responses out) and its status block, says
``{"ready": pid}``, then serves requests one at a time until the request ring is closed. It never outlives
its parent: on Linux the kernel kills it when the parent dies (``PR_SET_PDEATHSIG``), and everywhere a
heartbeat thread that finds a new parent pid exits the process. A ``MemoryError`` ends it with
``EXIT_OUT_OF_MEMORY`` so the pool can name the cause. A pool usually forks its workers from its zygote
(``dspex.workers.zygote``), which runs ``main`` in the child; this command line is the fallback.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import threading
from typing import Any

from dspex.native import Ring
from dspex.workers.handlers import WorkerState
from dspex.workers.protocol import EXIT_OUT_OF_MEMORY, Status, encode_error, rss_mb

__all__ = ["main", "serve", "die_with_parent"]

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when ``parent`` dies (Linux), and exit now if it is already gone."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the heartbeat thread still checks
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _heartbeat(status: Status, parent: int, interval: float, served: list[int], stop: threading.Event) -> None:
    pid = os.getpid()
    while not stop.wait(interval):
        if os.getppid() != parent:
            os._exit(1)
        status.beat(pid, served[0])


def serve(requests: Ring, responses: Ring, state: WorkerState, served: list[int]) -> None:
    """Answer requests until the request ring is closed (EOFError)."""
    while True:
        try:
            request = requests.get()
        except EOFError:
            return
        try:
            message: dict[str, Any] = {"id": request["id"], "ok": True,
                                       "result": state.handle(request["op"], request.get("args") or {})}
        except MemoryError:
            os._exit(EXIT_OUT_OF_MEMORY)
        except Exception as e:  # noqa: BLE001 - every failure goes back to the caller as data
            message = {"id": request["id"], "ok": False, "error": encode_error(e)}
        served[0] += 1
        message["rss_mb"] = rss_mb()
        try:
            responses.put(message)
        except Exception as e:  # noqa: BLE001 - a result msgpack cannot carry (a lock) or too big for the ring is
            # the caller's error, not the end of this worker; a closed ring raises BrokenPipeError again here,
            # and that does end it
            responses.put({"id": request["id"], "ok": False, "error": encode_error(e), "rss_mb": message["rss_mb"]})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dspex.workers.worker")
    parser.add_argument("--req", required=True)
    parser.add_argument("--resp", required=True)
    parser.add_argument("--status", required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--heartbeat", type=float, default=0.2)
    args = parser.parse_args(argv)
    die_with_parent(args.parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which shuts workers down in order
    requests, responses, status = Ring.attach(args.req), Ring.attach(args.resp), Status.attach(args.status)
    served, stop = [0], threading.Event()
    status.beat(os.getpid(), 0)
    beating = threading.Thread(target=_heartbeat, args=(status, args.parent, args.heartbeat, served, stop),
                               name="dspex-heartbeat", daemon=True)
    beating.start()
    state = WorkerState()
    responses.put({"ready": os.getpid()})
    try:
        serve(requests, responses, state, served)
    finally:
        stop.set()
        beating.join()
        state.close()
        requests.close()
        responses.close()
        status.close()


if __name__ == "__main__":
    main()
