"""Fault injection for chaos tests: counting and hanging models, and timed SIGKILLs.

Models (picklable, so they travel to distributed workers; identity output, ``halo = 0``):

* :class:`CountingModel` writes one small file per window it computes into a folder
  (``<key>__<pid>__<random>.call``) before returning; :func:`call_counts` gives calls per window (to
  count recomputation after a resume), :func:`total_calls` the progress counter the killers poll.
* :class:`HangModel` blocks on one chosen window (for the watchdog test) and passes every other
  window through.

A window is named by its *key*: a hash of its content (``key="content"``, any image), or its source
origin ``"<y0>_<x0>"`` decoded from the top-left pixel of a
:func:`tilegraph.testing.images.coordinate_image` (``key="origin"``; give the source dtype). Window
``i`` of a plan has the origin ``(plan.window(i).y0, plan.window(i).x0)``.

Killers:

* :func:`kill_worker_when` starts a thread that SIGKILLs a worker process when the counting model has
  computed a given number of windows (``thresholds(total, [0.2, 0.5])`` turns fractions into counts).
  Victims are the processes that wrote call files (the model runs there, so they hold results), never
  the calling process; a distributed ``Nanny`` then starts a fresh worker.
* :func:`kill_group_when` SIGKILLs a whole process group (a driver started with
  ``start_new_session=True``) at a count.
* :func:`run_when` runs any action at a count.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from tilegraph.testing.counting import CALL_SUFFIX as _SUFFIX
from tilegraph.testing.counting import CountingCallable, record_call, window_key
from tilegraph.testing.images import decode_coordinates
from tilegraph.testing.models import _Declared, _finish

__all__ = [
    "CountingModel",
    "CountingCallable",
    "HangModel",
    "window_key",
    "coordinate_origin",
    "call_counts",
    "calls_by_pid",
    "total_calls",
    "wait_for_calls",
    "thresholds",
    "Trigger",
    "run_when",
    "kill_worker_when",
    "kill_group_when",
    "sigkill",
]


# --------------------------------------------------------------------------------------------------
# naming windows


def coordinate_origin(tile: torch.Tensor | np.ndarray, *, source_dtype: Any) -> tuple[int, int]:
    """Source ``(row, col)`` of the top-left pixel of a window cut from a coordinate image.

    Parameters
    ----------
    tile
        One model input ``(C, H, W)`` with ``C >= 3``, as the model sees it (integer sources scaled
        to ``[0, 1]`` by the dtype's maximum).
    source_dtype
        The source image's dtype (``uint8``, ``uint16``, ``float16``, ``float32``).
    """
    t = (
        tile.detach().to("cpu").double().numpy()
        if isinstance(tile, torch.Tensor)
        else np.asarray(tile, float)
    )
    px = t[:3, 0, 0]
    dt = np.dtype(source_dtype)
    codes = np.rint(px * np.iinfo(dt).max).astype(dt) if dt.kind in "ui" else px.astype(dt)
    rows, cols = decode_coordinates(codes.reshape(1, 1, 3))
    return int(rows[0, 0]), int(cols[0, 0])


def _key(tile: torch.Tensor, how: str, source_dtype: Any) -> str:
    if how == "origin":
        y, x = coordinate_origin(tile, source_dtype=source_dtype)
        return f"{y}_{x}"
    return window_key(tile)


# --------------------------------------------------------------------------------------------------
# models


class CountingModel(_Declared):
    """Identity that records every window it computes as a file in ``folder``.

    Parameters
    ----------
    folder
        Where call files go (created if missing); shared by every worker (same machine or a shared
        file system).
    seconds_per_window
        Simulated device time per window (sleep), so kills land mid-run.
    key
        ``"content"`` or ``"origin"`` (see the module notes).
    source_dtype
        The source's dtype, needed for ``key="origin"``.
    """

    halo = 0

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        seconds_per_window: float = 0.0,
        key: str = "content",
        source_dtype: Any = "uint8",
    ) -> None:
        super().__init__(None, None)
        if key not in ("content", "origin"):
            raise ValueError("key must be 'content' or 'origin'")
        self.folder = os.fspath(folder)
        self.seconds_per_window = float(seconds_per_window)
        self.key = key
        self.source_dtype = str(np.dtype(source_dtype))
        os.makedirs(self.folder, exist_ok=True)
        _finish(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sleep, record one call file per batch element, return a copy of ``x``."""
        time.sleep(self.seconds_per_window * x.shape[0])
        os.makedirs(self.folder, exist_ok=True)
        for i in range(x.shape[0]):
            record_call(self.folder, _key(x[i], self.key, self.source_dtype))
        return x.clone()


class HangModel(_Declared):
    """Identity that blocks on one window (``seconds``, or until ``release_file`` exists).

    Parameters
    ----------
    hang_on
        The window's key: ``(y0, x0)`` with ``key="origin"`` (a coordinate image), or the content key
        (:func:`window_key`) with ``key="content"``.
    seconds
        How long to block (default one hour: "for ever" for a test).
    release_file
        Stop blocking as soon as this file exists.
    key, source_dtype
        As for :class:`CountingModel`.
    """

    halo = 0

    def __init__(
        self,
        hang_on: tuple[int, int] | str,
        *,
        seconds: float = 3600.0,
        release_file: str | None = None,
        key: str = "origin",
        source_dtype: Any = "uint8",
    ) -> None:
        super().__init__(None, None)
        self.hang_on = f"{hang_on[0]}_{hang_on[1]}" if isinstance(hang_on, tuple) else str(hang_on)
        self.seconds = float(seconds)
        self.release_file = release_file
        self.key = key
        self.source_dtype = str(np.dtype(source_dtype))
        _finish(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block if the chosen window is in the batch, then return a copy of ``x``."""
        if any(_key(x[i], self.key, self.source_dtype) == self.hang_on for i in range(x.shape[0])):
            end = time.monotonic() + self.seconds
            while time.monotonic() < end:
                if self.release_file is not None and os.path.exists(self.release_file):
                    break
                time.sleep(0.05)
        return x.clone()


# --------------------------------------------------------------------------------------------------
# reading the call files


def _calls(folder: str | os.PathLike) -> list[tuple[str, int]]:
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        if n.endswith(_SUFFIX):
            parts = n[: -len(_SUFFIX)].split("__")
            if len(parts) == 3 and parts[1].isdigit():
                out.append((parts[0], int(parts[1])))
    return out


def call_counts(folder: str | os.PathLike) -> dict[str, int]:
    """Calls per window key."""
    return dict(Counter(k for k, _ in _calls(folder)))


def calls_by_pid(folder: str | os.PathLike) -> dict[int, int]:
    """Calls per process id."""
    return dict(Counter(p for _, p in _calls(folder)))


def total_calls(folder: str | os.PathLike) -> int:
    """Windows computed so far, recomputations included."""
    return len(_calls(folder))


def wait_for_calls(
    folder: str | os.PathLike, n: int, *, timeout: float = 60.0, interval: float = 0.02
) -> int:
    """Block until at least ``n`` calls were recorded; returns the count (raises ``TimeoutError``)."""
    end = time.monotonic() + timeout
    while True:
        got = total_calls(folder)
        if got >= n:
            return got
        if time.monotonic() > end:
            raise TimeoutError(f"only {got} of {n} model calls after {timeout} s")
        time.sleep(interval)


def thresholds(total: int, fractions: Iterable[float]) -> list[int]:
    """Call counts at the given fractions of ``total`` windows (at least 1 each)."""
    return [max(1, math.ceil(total * float(f))) for f in fractions]


# --------------------------------------------------------------------------------------------------
# killing


def sigkill(pid: int) -> bool:
    """SIGKILL ``pid``; False if it was already gone."""
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Trigger(threading.Thread):
    """Background thread running ``action(count)`` when the call count reaches each threshold.

    Attributes
    ----------
    fired
        ``(threshold, count seen, action's return value)`` per action run.
    error
        An exception raised by an action, if any.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        at: Sequence[int],
        action: Callable[[int], Any],
        *,
        interval: float = 0.02,
        timeout: float = 600.0,
    ) -> None:
        super().__init__(name="tilegraph-chaos", daemon=True)
        self.folder = os.fspath(folder)
        self.at = sorted(int(a) for a in at)
        self.action = action
        self.interval = interval
        self.timeout = timeout
        self.fired: list[tuple[int, int, Any]] = []
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        end = time.monotonic() + self.timeout
        pending = list(self.at)
        while pending and not self._stop_event.is_set() and time.monotonic() < end:
            count = total_calls(self.folder)
            while pending and count >= pending[0]:
                threshold = pending.pop(0)
                try:
                    self.fired.append((threshold, count, self.action(count)))
                except BaseException as exc:  # reported to the test through .error
                    self.error = exc
                    return
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        """Stop polling (thresholds not reached stay unfired)."""
        self._stop_event.set()
        self.join(timeout=5)


def run_when(
    folder: str | os.PathLike, at: int | Sequence[int], action: Callable[[int], Any], **kwargs: Any
) -> Trigger:
    """Start a :class:`Trigger` running ``action(count)`` at each call count in ``at``."""
    trigger = Trigger(folder, [at] if isinstance(at, int) else list(at), action, **kwargs)
    trigger.start()
    return trigger


def kill_worker_when(
    folder: str | os.PathLike,
    at: int | Sequence[int],
    *,
    pids: Callable[[], Iterable[int]] | Iterable[int] | None = None,
    exclude: Iterable[int] = (),
    **kwargs: Any,
) -> Trigger:
    """SIGKILL one worker process each time the call count reaches a threshold in ``at``.

    Parameters
    ----------
    folder
        The :class:`CountingModel`'s folder.
    at
        Call counts (see :func:`thresholds`).
    pids
        Candidate victims (or a callable returning them, e.g.
        ``lambda: client.run(os.getpid).values()``). Default: the live processes that wrote call files.
        Among candidates, the one with the most recorded calls is killed.
    exclude
        Never kill these (the calling process is always excluded).

    Returns
    -------
    Trigger
        Its ``fired`` list holds ``(threshold, count, killed pid or None)``.
    """
    never = {os.getpid(), *exclude}

    def victim(count: int) -> int | None:
        per_pid = calls_by_pid(folder)
        if pids is None:
            candidates = set(per_pid)
        else:
            candidates = {int(p) for p in (pids() if callable(pids) else pids)}
        live = [p for p in candidates if p not in never and _alive(p)]
        if not live:
            return None
        pid = max(live, key=lambda p: (per_pid.get(p, 0), p))
        return pid if sigkill(pid) else None

    return run_when(folder, at, victim, **kwargs)


def kill_group_when(folder: str | os.PathLike, at: int, pgid: int, **kwargs: Any) -> Trigger:
    """SIGKILL process group ``pgid`` (e.g. a driver run with ``start_new_session=True``) at count ``at``."""
    if pgid == os.getpgid(0):
        raise ValueError("refusing to kill this test's own process group")

    def kill(count: int) -> int:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        return pgid

    return run_when(folder, at, kill, **kwargs)
