"""The watchdog (worker side): a forward pass that holds the model longer than ``window_timeout`` stops the run.

With ``window_timeout=`` each forward pass runs on a helper thread while the model task's own thread
watches the time the pass has *held* the model (time spent waiting for the other model task's turn
does not count). Past the limit the task gives up with
:class:`~tilegraph.errors.WindowTimeoutError` naming the pass's windows; the runner is marked stuck
and dropped from the process's cache, so other tasks waiting for it give up too and later runs build
a fresh model. A Python thread cannot be killed: the stuck pass keeps its thread until it returns (or
the worker process ends, as an embedded cluster's do when the run stops).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from tilegraph.errors import RESUME_HINT, WindowTimeoutError
from tilegraph.infer.runner import BatchRunner, evict

__all__ = ["guarded"]


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
