"""A bounded, per-process cache of decoded source chunks (LRU by bytes).

Windows overlap, and with source chunks larger than a window (a 1024 chunk, 256 windows) a plain
region read decodes every chunk it touches for every window: 48 MB of float32 RGB decoded for a
0.8 MB window. Reads that go through this cache decode each chunk once per process while it stays
cached, and concurrent readers of one chunk wait for a single decode.

Entries are keyed by a caller's token (one per run), so a file changed between two runs in one
long-lived worker is never served from an old run's entries. The budget is
``TILEGRAPH_SOURCE_CACHE_MB`` (default 128) per process.

An LRU alone keeps what it decoded until the budget is full, however little of it is read again: the
workers of a large image held the whole budget (a 4096^2 image: a third of it) for the rest of the
run. So the model tasks, which know the order their worker reads the image in, say when they are
done (:meth:`ChunkCache.release`): for each chunk a task read, how many more tasks of its sweep read it
(:func:`tilegraph.engine.infer.chunk_releases`). Each release is one tick of this process; a chunk
expires :data:`SLACK` ticks after its last reader is due, and an entry no release names (read for a
task that then ran elsewhere, or by an earlier run) :data:`STALE` ticks after it was loaded. Tasks
finish a little out of order and some run on another worker than planned: the slack covers the
first, and counting ticks per process (not tasks per sweep) lets entries expire wherever they ended
up. The cache then holds what the sweep still needs, whatever the image size; the budget bounds the
rest (readers that never release, such as passes).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable

import numpy as np

__all__ = ["SLACK", "STALE", "ChunkCache", "chunk_cache"]

#: Ticks (model tasks done in this process) an entry is kept beyond its last planned reader.
SLACK = 3
#: Ticks an entry that no release names is kept after it was loaded.
STALE = 8


class ChunkCache:
    """LRU of arrays with a byte budget; :meth:`get` decodes a missing entry once, :meth:`release`
    expires entries by their readers' plan."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = int(budget_bytes)
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._loading: dict[Hashable, threading.Event] = {}
        self._tick = 0  # releases so far
        self._loaded: dict[Hashable, int] = {}  # entry -> tick it was loaded at
        self._expire: dict[Hashable, int] = {}  # key -> last tick it is kept for
        self.hits = 0
        self.misses = 0
        self.peak_bytes = 0  # the most held at once

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
                    self._loaded[key] = self._tick
                    self._bytes += value.nbytes
                    while self._bytes > self.budget:
                        self._drop(next(iter(self._items)))
                    self.peak_bytes = max(self.peak_bytes, self._bytes)
            return value
        finally:
            with self._lock:
                self._loading.pop(key, None)
            event.set()

    def release(self, uses: Iterable[tuple[Hashable, int]]) -> int:
        """A reader (a model task) is done; ``uses``: ``(key, left)`` for each entry it read, ``left`` the
        readers after it planned to read ``key``. Counts one tick, keeps each ``key`` for ``left`` +
        :data:`SLACK` more ticks (the longest wins), and drops the entries whose time is up, and those no
        release named within :data:`STALE` ticks of their loading. Returns the entries dropped."""
        with self._lock:
            self._tick += 1
            tick = self._tick
            for key, left in uses:
                self._expire[key] = max(self._expire.get(key, 0), tick + int(left) + SLACK)
            gone = [
                key
                for key in self._items
                if self._expire.get(key, self._loaded.get(key, tick) + STALE) < tick
            ]
            for key in gone:
                self._drop(key)
            for key in [k for k, until in self._expire.items() if until < tick]:
                del self._expire[key]
            return len(gone)

    def _drop(self, key: Hashable) -> None:
        """Remove an entry (lock held)."""
        value = self._items.pop(key)
        self._bytes -= value.nbytes
        self._loaded.pop(key, None)
        self._expire.pop(key, None)

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._items.clear()
            self._loaded.clear()
            self._expire.clear()
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
