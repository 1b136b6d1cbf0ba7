"""A fork server per pool: ``python -m dspex.workers.zygote --parent PID --preload dspy ...``.

A fresh interpreter costs a worker a third of a second of CPU before it serves anything, and a second more on
its first dspy step (``import dspy``). A pool that loses workers every half second cannot pay that per
replacement. So each pool starts one template process (the zygote) that imports the worker code and the pool's
``--preload`` modules once (``module``, or ``module:function`` to call after the import, for what a module loads
lazily), then answers every spawn request with ``os.fork()``: the child is a worker with all of that already
imported (copy-on-write), ready in milliseconds.

Forking is only safe from a single-threaded process (a thread's lock held at the fork stays held forever in the
child), so the zygote checks after its imports that it has exactly one thread, Python or native, and refuses to
serve otherwise. It never runs a request itself.

The pool talks to it over its stdin and stdout, one msgpack map per message (data, never pickle):

- zygote to pool, once: ``{"ready": pid}``, or ``{"error": text}`` (then it exits; the pool starts workers as
  fresh interpreters instead);
- pool to zygote: ``{"spawn": token, "argv": [...]}`` (the worker's arguments; the child adds ``--parent``,
  the zygote's pid), answered by ``{"spawned": token, "pid": pid}`` or ``{"spawned": token, "error": text}``;
  ``{"signal": pid, "signum": n}``, which the zygote delivers only to a child it has not reaped, so that a
  recycled pid is never hit;
- zygote to pool, whenever a child ends: ``{"exit": pid, "status": code}``, the code as ``subprocess`` reports it
  (the exit status, or minus the signal number).

Lifetimes: the zygote dies with the pool's process (``PR_SET_PDEATHSIG`` and a parent-pid check, as a worker
does) and leaves when the pool closes its stdin; its children, whose parent it is, die with it the same way.

``Zygote`` is the pool's end: it starts the process, sends spawn and signal requests, and reads the replies on a
thread, which feeds each child's ``Forked`` handle (the part of ``subprocess.Popen`` the pool uses).
"""
from __future__ import annotations

import argparse
import importlib
import itertools
import os
import select
import signal
import subprocess
import sys
import threading
import traceback
from concurrent.futures import Future
from typing import Any, Callable, NoReturn, Sequence

import msgpack

from dspex.errors import WorkerError
from dspex.workers import worker

__all__ = ["Zygote", "Forked", "main"]

_PARENT_CHECK_S = 0.5  # how often an idle zygote checks that its parent is still there


# -- the pool's end -----------------------------------------------------------------------------------------------

class Forked:
    """A worker forked by a zygote, seen from the pool: ``pid``, ``returncode``, ``poll``, ``wait`` and
    ``send_signal`` as on ``subprocess.Popen``. The pool is not the worker's parent, so the exit status comes
    from the zygote's report, and signals go through the zygote."""

    def __init__(self, pid: int, zygote: "Zygote"):
        self.pid = pid
        self.returncode: int | None = None
        self._zygote = zygote
        self._exited = threading.Event()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            self._zygote.signal(self.pid, signum)

    def _exit(self, code: int) -> None:
        self.returncode = code
        self._exited.set()

    def __repr__(self) -> str:
        return f"<Forked pid={self.pid} returncode={self.returncode}>"


class Zygote:
    """A running zygote: ``spawn`` forks a worker, ``close`` ends the zygote. ``on_exit`` is called (on the reader
    thread) after each child's exit is recorded, so that the pool notices an idle worker's death at once."""

    def __init__(self, proc: subprocess.Popen[bytes], name: str, on_exit: Callable[[], None]):
        self._proc = proc
        self._on_exit = on_exit
        self._tokens = itertools.count(1)
        self._lock = threading.Lock()  # guards the writes to stdin and the two tables below
        self._pending: dict[int, Future[Forked]] = {}
        self._children: dict[int, Forked] = {}
        self._hello: Future[int] = Future()
        self._reader = threading.Thread(target=self._read, name=f"dspex-{name}-zygote", daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, name: str, preload: Sequence[str], env: dict[str, str], timeout: float,
              on_exit: Callable[[], None]) -> "Zygote":
        """A zygote that has imported ``preload`` and said ready; WorkerError when it could not (an import failed,
        a module left a thread running, it died or did not answer within ``timeout`` seconds)."""
        try:
            proc = subprocess.Popen([sys.executable, "-m", "dspex.workers.zygote", "--parent", str(os.getpid()),
                                     "--preload", *preload], env=env, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, bufsize=0, close_fds=True)
        except OSError as e:
            raise WorkerError(f"cannot start a zygote: {e}") from e
        zygote = cls(proc, name, on_exit)
        try:
            zygote._hello.result(timeout)
        except TimeoutError:
            zygote.close(0.0)
            raise WorkerError(f"the zygote did not start within {timeout:g} s") from None
        except BaseException:
            zygote.close(0.0)
            raise
        return zygote

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._reader.is_alive()

    def spawn(self, argv: list[str], timeout: float) -> Forked:
        """Fork a worker running ``dspex.workers.worker`` with ``argv`` (``--parent`` is added: the zygote);
        WorkerError when the zygote cannot."""
        reply: Future[Forked] = Future()
        with self._lock:
            token = next(self._tokens)
            self._pending[token] = reply
        try:
            self._send({"spawn": token, "argv": argv})
            return reply.result(timeout)
        except TimeoutError:
            raise WorkerError(f"the zygote did not fork a worker within {timeout:g} s") from None
        finally:
            with self._lock:
                self._pending.pop(token, None)

    def signal(self, pid: int, signum: int) -> None:
        try:
            self._send({"signal": pid, "signum": int(signum)})
        except WorkerError:  # the zygote is gone, and its children with it
            pass

    def close(self, timeout: float) -> None:
        """End the zygote (it leaves when its stdin closes; killed after ``timeout``) and wait for its reader."""
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.close()
        except OSError:  # pragma: no cover - already broken
            pass
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join()

    def _send(self, message: dict[str, Any]) -> None:
        data = msgpack.packb(message, use_bin_type=True)
        assert self._proc.stdin is not None
        with self._lock:
            try:
                _write_all(self._proc.stdin.fileno(), data)
            except (OSError, ValueError) as e:  # ValueError: its stdin was closed by ``close``
                raise WorkerError(f"the zygote has exited ({e})") from None

    def _read(self) -> None:
        assert self._proc.stdout is not None
        unpacker = msgpack.Unpacker(raw=False)
        try:
            while data := self._proc.stdout.read(1 << 16):
                unpacker.feed(data)
                for message in unpacker:
                    self._dispatch(message)
        finally:
            self._proc.stdout.close()
            self._lost()

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "exit" in message:
            with self._lock:
                gone = self._children.pop(message["exit"], None)
            if gone is not None:
                gone._exit(message["status"])
                self._on_exit()
        elif "spawned" in message:
            with self._lock:
                reply = self._pending.get(message["spawned"])
                child = None
                if "pid" in message:
                    child = self._children[message["pid"]] = Forked(message["pid"], self)
            if reply is None:  # its requester gave up waiting: the worker is not wanted
                if child is not None:
                    child.send_signal(signal.SIGKILL)
            elif child is not None:
                reply.set_result(child)
            else:
                reply.set_exception(WorkerError(f"the zygote cannot fork: {message['error']}"))
        elif "ready" in message:
            self._hello.set_result(message["ready"])
        elif "error" in message:
            self._hello.set_exception(WorkerError(f"the zygote did not start: {message['error']}"))

    def _lost(self) -> None:
        """The zygote is gone: its children were killed with it (their parent-death signal is SIGKILL)."""
        with self._lock:
            children, self._children = list(self._children.values()), {}
            pending, self._pending = list(self._pending.values()), {}
        for child in children:
            child._exit(-signal.SIGKILL)
        for reply in pending:
            if not reply.done():
                reply.set_exception(WorkerError("the zygote has exited"))
        if not self._hello.done():
            self._hello.set_exception(WorkerError(f"the zygote exited before it was ready (exit code "
                                                  f"{self._proc.wait()})"))
        if children:
            self._on_exit()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# -- the zygote process -------------------------------------------------------------------------------------------

def _threads() -> int:
    """Threads in this process: Python's, and on Linux every native one too."""
    try:
        native = len(os.listdir("/proc/self/task"))
    except OSError:
        native = 1
    return max(threading.active_count(), native)


def _reap(children: set[int], out: int) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # pragma: no cover - every child was reaped already
            children.clear()
            return
        if pid == 0:
            return
        children.discard(pid)
        _write_all(out, msgpack.packb({"exit": pid, "status": os.waitstatus_to_exitcode(status)}))


def _child(argv: list[str], fds: tuple[int, ...], zygote: int, handlers: dict[signal.Signals, Any]) -> NoReturn:
    """The forked worker: undo what is the zygote's (its pipe, its wake-up fd, its signal handlers), run the
    worker with the zygote as its parent, and never return into the zygote's loop. (``random`` needs no
    re-seeding here: CPython re-seeds it in every forked child.)"""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        for fd in fds:
            os.close(fd)
        worker.main([*argv, "--parent", str(zygote)])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    except BaseException:  # noqa: BLE001 - reported as a fresh interpreter would report it
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001, S110 - exiting regardless
                pass
        os._exit(code)


def _serve(inp: int, out: int, wake: tuple[int, int], parent: int, handlers: dict[signal.Signals, Any]) -> None:
    """Fork on request and report exits until the pool closes our stdin or goes away."""
    me = os.getpid()
    unpacker = msgpack.Unpacker(raw=False)
    children: set[int] = set()
    while True:
        readable, _, _ = select.select([inp, wake[0]], [], [], _PARENT_CHECK_S)
        if wake[0] in readable:  # a SIGCHLD arrived (the wake-up fd only says that some signal did)
            while True:
                try:
                    os.read(wake[0], 512)
                except BlockingIOError:
                    break
        _reap(children, out)
        if os.getppid() != parent:
            return
        if inp not in readable:
            continue
        data = os.read(inp, 1 << 16)
        if not data:
            return
        unpacker.feed(data)
        for message in unpacker:
            if "spawn" in message:
                try:
                    pid = os.fork()
                except OSError as e:
                    _write_all(out, msgpack.packb({"spawned": message["spawn"], "error": str(e)}))
                    continue
                if pid == 0:
                    _child(message["argv"], (inp, out, *wake), me, handlers)
                children.add(pid)
                _write_all(out, msgpack.packb({"spawned": message["spawn"], "pid": pid}))
            elif "signal" in message and message["signal"] in children:
                try:
                    os.kill(message["signal"], message["signum"])
                except ProcessLookupError:  # pragma: no cover - exited, not reaped yet: nothing to stop
                    pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dspex.workers.zygote")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--preload", nargs="*", default=[])
    args = parser.parse_args(argv)
    worker.die_with_parent(args.parent)
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGCHLD)}  # a child's own
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the pool's process, which closes the pool
    # The pipe to the pool moves off fds 0 and 1, so that a stray print (a preloaded module's, a worker's) goes
    # to stderr instead of into the protocol.
    inp, out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    try:
        for entry in args.preload:  # "module", or "module:function" to call once imported
            module, _, function = entry.partition(":")
            loaded = importlib.import_module(module)
            if function:
                getattr(loaded, function)()
        threads = _threads()
        if threads != 1:
            raise RuntimeError(f"{threads} threads are running after the imports of {args.preload}; a fork would "
                               f"copy their locks in whatever state they are")
    except Exception as e:  # noqa: BLE001 - told to the pool, which starts plain workers instead
        _write_all(out, msgpack.packb({"error": f"{type(e).__name__}: {e}"}))
        sys.exit(1)
    wake = os.pipe()
    for fd in wake:
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake[1], warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # a handler, so that the wake-up fd hears SIGCHLD
    _write_all(out, msgpack.packb({"ready": os.getpid()}))
    _serve(inp, out, wake, args.parent, handlers)


if __name__ == "__main__":
    main()
