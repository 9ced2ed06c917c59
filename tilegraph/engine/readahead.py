"""Read-ahead across model tasks: while a task's last batch is on the model, the next task's first batch
is read in this process (issue 13: the model never waits on a read).

The dispatcher deals each model worker a lane of tasks in order (:mod:`tilegraph.engine.dispatch`),
so a task knows which windows its worker runs next (``ahead``). It starts reading them on this
process's read-ahead thread; the next task takes the batch if it finds it, and reads it itself
otherwise (a task taken by another worker leaves its batch unused: at most :data:`LIMIT` batches are
held, the oldest dropped first). A read that failed raises in the task that takes it, as its own
read would.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

__all__ = ["LIMIT", "ReadAhead", "read_ahead"]

#: Batches held per process, read and not yet taken.
LIMIT = 2


class ReadAhead:
    """Batches read ahead on one background thread, by key (run token and windows)."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = int(limit)
        self._held: OrderedDict[Hashable, Future] = OrderedDict()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def start(self, key: Hashable, read: Callable[[], np.ndarray]) -> None:
        """Read ``read()`` in the background under ``key`` (nothing if it is held already)."""
        with self._lock:
            if key in self._held:
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tilegraph-readahead")
            self._held[key] = self._pool.submit(read)
            while len(self._held) > self.limit:
                _, old = self._held.popitem(last=False)
                old.cancel()

    def take(self, key: Hashable) -> Future | None:
        """The read held under ``key`` (removed), or ``None``."""
        with self._lock:
            return self._held.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)


_READ_AHEAD: ReadAhead | None = None
_LOCK = threading.Lock()


def read_ahead() -> ReadAhead:
    """This process's read-ahead (created on first use)."""
    global _READ_AHEAD
    with _LOCK:
        if _READ_AHEAD is None:
            _READ_AHEAD = ReadAhead()
        return _READ_AHEAD
