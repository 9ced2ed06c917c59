"""A bounded, per-process cache of decoded source chunks (LRU by bytes).

Windows overlap, and with source chunks larger than a window (a 1024 chunk, 256 windows) a plain
region read decodes every chunk it touches for every window: 48 MB of float32 RGB decoded for a
0.8 MB window. Reads that go through this cache decode each chunk once per process while it stays
cached, and concurrent readers of one chunk wait for a single decode.

Entries are keyed by a caller's token (one per run), so a file changed between two runs in one
long-lived worker is never served from an old run's entries. The budget is
``TILEGRAPH_SOURCE_CACHE_MB`` (default 128) per process.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import numpy as np

__all__ = ["ChunkCache", "chunk_cache"]


class ChunkCache:
    """LRU of arrays with a byte budget; :meth:`get` decodes a missing entry once."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = int(budget_bytes)
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._loading: dict[Hashable, threading.Event] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, load: Callable[[], np.ndarray]) -> np.ndarray:
        """The entry for ``key``, loaded with ``load()`` on a miss (read-only array)."""
        while True:
            with self._lock:
                value = self._items.get(key)
                if value is not None:
                    self._items.move_to_end(key)
                    self.hits += 1
                    return value
                event = self._loading.get(key)
                if event is None:
                    event = self._loading[key] = threading.Event()
                    self.misses += 1
                    break
            event.wait()  # another thread decodes it; then look again
        try:
            value = np.asarray(load())
            value.flags.writeable = False
            with self._lock:
                if value.nbytes <= self.budget:
                    self._items[key] = value
                    self._bytes += value.nbytes
                    while self._bytes > self.budget:
                        _, old = self._items.popitem(last=False)
                        self._bytes -= old.nbytes
            return value
        finally:
            with self._lock:
                self._loading.pop(key, None)
            event.set()

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._items.clear()
            self._bytes = 0


_CACHE: ChunkCache | None = None
_CACHE_LOCK = threading.Lock()


def chunk_cache() -> ChunkCache:
    """This process's cache (created on first use with the configured budget)."""
    global _CACHE
    with _CACHE_LOCK:
        if _CACHE is None:
            mb = float(os.environ.get("TILEGRAPH_SOURCE_CACHE_MB", "128"))
            _CACHE = ChunkCache(int(mb * 2**20))
        return _CACHE
