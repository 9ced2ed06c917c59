"""Watching forward passes (worker side): the watchdog, and markers of the passes under way.

A forward pass that holds the model longer than ``window_timeout`` stops the run (:func:`guarded`).
Each forward pass also leaves a small marker file naming its windows while it runs
(:func:`in_forward`); a worker process that dies in the pass leaves its marker behind, so when
distributed gives up on a task after several worker deaths (it blames every task *assigned* to a
dying worker, innocent ones too), :func:`killers` names the windows that were in the model at the
deaths.

With ``window_timeout=`` each forward pass runs on a helper thread while the model task's own thread
watches the time the pass has *held* the model (time spent waiting for the other model task's turn
does not count). Past the limit the task gives up with
:class:`~tilegraph.errors.WindowTimeoutError` naming the pass's windows; the runner is marked stuck
and dropped from the process's cache, so other tasks waiting for it give up too and later runs build
a fresh model. A Python thread cannot be killed: the stuck pass keeps its thread until it returns (or
the worker process ends, as an embedded cluster's do when the run stops).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from tilegraph.errors import RESUME_HINT, WindowTimeoutError
from tilegraph.infer.runner import BatchRunner, evict

__all__ = ["guarded", "in_forward", "killers"]


@contextlib.contextmanager
def in_forward(folder: str | None, windows: Sequence[int]) -> Iterator[None]:
    """A marker naming ``windows`` in ``folder`` while the block runs (none if ``folder`` is ``None``)."""
    if folder is None:
        yield
        return
    path = os.path.join(folder, f"{os.getpid()}-{uuid.uuid4().hex[:12]}.json")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(path, "w") as f:
            json.dump([int(i) for i in windows], f)
    except OSError:  # markers only help to name a killer: never fail a pass for one
        path = ""
    try:
        yield
    finally:
        if path:
            with contextlib.suppress(OSError):
                os.unlink(path)


def killers(folder: str | None) -> list[int]:
    """Windows in the model at most often when worker processes died (left-over markers), or ``[]``.

    Only windows whose passes were cut short more than once are named (a single marker may be a
    pass still under way elsewhere).
    """
    if not folder or not os.path.isdir(folder):
        return []
    seen: Counter = Counter()
    for name in os.listdir(folder):
        try:
            with open(os.path.join(folder, name)) as f:
                seen[frozenset(int(i) for i in json.load(f))] += 1
        except (OSError, ValueError, TypeError):
            continue
    if not seen:
        return []
    top = max(seen.values())
    if top < 2:
        return []
    return sorted({i for group, n in seen.items() if n == top for i in group})


def guarded(
    fn: Callable[[], Any],
    *,
    timeout: float,
    runner: BatchRunner,
    windows: list[tuple[int, int]],
    poll: float = 0.1,
) -> Any:
    """``fn()`` on a helper thread; :class:`WindowTimeoutError` if it holds ``runner`` over ``timeout`` s.

    Parameters
    ----------
    fn
        The forward pass (it takes the runner's turn itself).
    timeout
        Seconds the pass may hold the model.
    runner
        The process's runner of the model (its :attr:`~BatchRunner.holding_since` is watched).
    windows
        ``(row, col)`` of the pass's windows, for the error.
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the task's thread
            box["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=target, name="tilegraph-forward", daemon=True)
    thread.start()
    while not done.wait(poll):
        since = runner.holding_since if runner.holder == thread.ident else None
        if since is not None and time.monotonic() - since > timeout:
            held = time.monotonic() - since
            shown = ", ".join(f"({r}, {c})" for r, c in windows[:8])
            runner.stuck = f"window {windows[0]} (forward pass of {held:.0f} s)"
            evict(runner)
            raise WindowTimeoutError(
                f"a forward pass on windows {shown} held the model for {held:.0f} s, more than "
                f"window_timeout={timeout:g} s; the run stopped",
                window=windows[0],
                hint=f"check the model on this window (or raise window_timeout), then {RESUME_HINT}",
            )
    if "error" in box:
        raise box["error"]
    return box["value"]
