"""A numpy model that counts its calls (numpy only: a worker unpickling it imports no torch).

:class:`CountingCallable` is the numpy twin of :class:`tilegraph.testing.chaos.CountingModel`: an
identity on ``(N, C, H, W)`` float32 batches that writes one call file per window it computes
(``<key>__<pid>__<random>.call``, read by :func:`tilegraph.testing.chaos.call_counts` and the
killers). Worker processes restarted after a kill start faster without torch, which keeps chaos
tests short on small machines.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
import uuid
from typing import Any

import numpy as np

__all__ = ["CountingCallable", "Gain", "window_key", "record_call", "CALL_SUFFIX"]

CALL_SUFFIX = ".call"


def window_key(tile: Any) -> str:
    """16 hex digits naming one window ``(C, H, W)`` by its content (same values, same key)."""
    if hasattr(tile, "detach"):  # a torch tensor
        tile = tile.detach().to("cpu").float().numpy()
    arr = np.ascontiguousarray(np.asarray(tile), dtype=np.float32)
    return hashlib.blake2b(arr.tobytes() + str(arr.shape).encode(), digest_size=8).hexdigest()


def record_call(folder: str, key: str) -> None:
    """Write one call file for window ``key`` computed by this process."""
    name = f"{key}__{os.getpid()}__{uuid.uuid4().hex[:8]}{CALL_SUFFIX}"
    with open(os.path.join(folder, name), "wb"):
        pass


class CountingCallable:
    """Identity (numpy) recording each window it computes in ``folder`` after ``seconds_per_window``.

    Parameters
    ----------
    folder
        Where call files go (created if missing), shared by every worker.
    seconds_per_window
        Simulated model time per window (sleep), so kills land mid-run.
    die_on
        The content key (:func:`window_key`) of a window on which the model SIGKILLs its own process
        (a model that crashes its worker every time), or ``None``.
    die_after
        Die on that window only once at least this many calls were recorded (every other window
        done, so that no innocent task shares the blame of the worker deaths).
    """

    halo = 0

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        seconds_per_window: float = 0.0,
        die_on: str | None = None,
        die_after: int = 0,
    ) -> None:
        self.folder = os.fspath(folder)
        self.seconds_per_window = float(seconds_per_window)
        self.die_on = die_on
        self.die_after = int(die_after)
        os.makedirs(self.folder, exist_ok=True)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(self.seconds_per_window * batch.shape[0])
        os.makedirs(self.folder, exist_ok=True)
        for i in range(batch.shape[0]):
            key = window_key(batch[i])
            if key == self.die_on:
                while len(os.listdir(self.folder)) < self.die_after:
                    time.sleep(0.01)
                os.kill(os.getpid(), signal.SIGKILL)
            record_call(self.folder, key)
        return np.array(batch, dtype=np.float32, copy=True)


class Gain:
    """``y = gain * x`` (numpy), with ``gain`` an attribute one may change in place between runs."""

    halo = 0

    def __init__(self, gain: float = 1.0) -> None:
        self.gain = np.float32(gain)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return (batch * self.gain).astype(np.float32)
