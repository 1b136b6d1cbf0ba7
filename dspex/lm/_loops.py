"""Event-loop plumbing shared by the HTTP adapters.

A pooled async HTTP client belongs to the event loop it was made on, so an adapter keeps one client per
running loop (``PerLoop``). Synchronous callers get a private loop in a daemon thread (``LoopThread``)
instead of ``asyncio.run`` per call, which would open a new pool, and new connections, every time and leave
the old pool's sockets to the garbage collector.
"""
from __future__ import annotations

import asyncio
import atexit
import threading
from typing import Any, Awaitable, Callable, Coroutine, Generic, TypeVar

__all__ = ["PerLoop", "LoopThread"]

T = TypeVar("T")


class PerLoop(Generic[T]):
    """One ``factory()`` object per running event loop; objects of closed loops are dropped."""

    def __init__(self, factory: Callable[[], T]):
        self._factory = factory
        self._items: dict[asyncio.AbstractEventLoop, T] = {}
        self._lock = threading.Lock()

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        item = self._items.get(loop)
        if item is None:
            with self._lock:
                for dead in [lp for lp in self._items if lp.is_closed()]:
                    del self._items[dead]
                item = self._items[loop] = self._factory()
        return item

    def pop(self) -> T | None:
        """Forget (and return) the running loop's object, for the caller to close."""
        with self._lock:
            return self._items.pop(asyncio.get_running_loop(), None)


class LoopThread:
    """A private event loop in a daemon thread, started on first use, for synchronous calls. ``cleanup()``
    closes what lives on it, run by ``close``, or at exit if nobody closed it: a client collected unclosed
    there would complain (aiohttp logs "Unclosed client session")."""

    def __init__(self, name: str, cleanup: Callable[[], Awaitable[Any]]):
        self._name = name
        self._cleanup = cleanup
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name=self._name, daemon=True)
                self._thread.start()
                atexit.register(self.close)
            loop = self._loop
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def close(self) -> None:
        """Run ``cleanup()`` on the loop, then stop the thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        atexit.unregister(self.close)

        async def finish() -> None:
            await self._cleanup()

        asyncio.run_coroutine_threadsafe(finish(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
