"""A runtime's worker pools, by name (``general``, ``neural``, ``optimizer``), each started on first use.

Sizes and limits come from the ``[pools]`` configuration (``workers=N`` overrides the general pool's size);
``[runtime] backend`` picks local processes or Ray actors, which run the same worker code. Sessions get a
worker slot of the general pool each, spread over the slots, and keep it for their lifetime.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from dspex.runtime.config import Config
from dspex.workers.pool import WorkerEvent, WorkerPool
from dspex.workers.remote import Pool

__all__ = ["Pools"]


class Pools:
    """The pools of one runtime; ``get(name)`` starts a pool the first time it is asked for."""

    def __init__(self, config: Config, general_size: int | None = None,
                 on_event: Callable[[WorkerEvent], None] | None = None, **pool_options: Any):
        self.config = config
        self.general_size = general_size
        self.on_event = on_event
        self.pool_options = pool_options
        self._pools: dict[str, Pool] = {}
        self._slots: dict[str, int] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Pool:
        with self._lock:
            pool = self._pools.get(name)
            if pool is None:
                pool = self._pools[name] = self._start(name)
            return pool

    def _start(self, name: str) -> Pool:
        spec = self.config.pools[name]
        size = self.general_size if name == "general" and self.general_size else spec.size
        if self.config.runtime.backend == "ray":
            from dspex.workers.ray_pool import RayPool

            return RayPool(name, size, memory_mb=spec.memory_mb, gpu=spec.gpu, address=self.config.runtime.address,
                           max_requests=spec.max_requests, on_event=self.on_event)
        return WorkerPool(name, size, memory_mb=spec.memory_mb, max_requests=spec.max_requests,
                          on_event=self.on_event, **self.pool_options)

    def slot_for(self, session: str) -> int:
        """The general-pool slot ``session`` runs on: assigned round-robin on first use, then fixed."""
        pool = self.get("general")
        with self._lock:
            slot = self._slots.get(session)
            if slot is None:
                slot = self._slots[session] = len(self._slots) % pool.size
            return slot

    @property
    def started(self) -> dict[str, Pool]:
        with self._lock:
            return dict(self._pools)

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()
