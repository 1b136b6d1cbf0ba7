"""A real OpenAI-compatible llama.cpp server (``python -m llama_cpp.server``) on SmolLM2, for integration tests.

It runs as a separate process on 127.0.0.1 and a free port; leaving the ``with`` block stops it (terminate,
then kill), so no test leaves a server behind.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

from dspex.lm.local import smollm2_path

__all__ = ["LlamaServer", "free_port", "smollm2_path"]


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """``with LlamaServer() as base_url:`` gives ``http://127.0.0.1:PORT/v1`` once the model answers."""

    def __init__(self, model: Path | None = None, *, n_ctx: int = 2048, startup_timeout: float = 120.0):
        self.model = model or smollm2_path()
        self.n_ctx = n_ctx
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.startup_s = 0.0  # seconds from spawn until /v1/models answered
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # not a pipe: a full pipe would stall the server

    def __enter__(self) -> str:
        started = time.perf_counter()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model), "--host", "127.0.0.1",
             "--port", str(self.port), "--n_ctx", str(self.n_ctx)],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(started)
        except BaseException:
            self._stop()
            raise
        self.startup_s = time.perf_counter() - started
        return self.base_url

    def _wait_ready(self, started: float) -> None:
        assert self._proc is not None
        with httpx.Client(timeout=2.0) as client:
            while time.perf_counter() - started < self.startup_timeout:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"llama_cpp.server exited with {self._proc.returncode}:\n{self.output()}")
                try:
                    if client.get(f"{self.base_url}/models").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise TimeoutError(f"llama_cpp.server not ready after {self.startup_timeout} s:\n{self.output()}")

    def output(self) -> str:
        """What the server printed so far (its last 4,000 characters), for failure messages."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def _stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop()
