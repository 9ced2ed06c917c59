"""Progress of a run, apart from execution: a bar on a terminal, an ipywidgets bar in Jupyter, or nothing.

The executors report ``(label, done, total)`` per kind of task; the main bar counts windows (the
model tasks' windows) and shows the throughput in megapixels per second and an ETA; other labels
(``blend``, ``strips``...) are shown beside it.

With ``watch_stalls``, a background check says when no window has finished for several times the
median time between finished windows (a model stuck on one window, a lost worker): without
``window_timeout=`` nothing else would tell.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, TextIO

__all__ = ["Progress", "end_line", "in_notebook", "tally"]

#: Streams whose last write was a bar without its line end (a message printed next starts a new line).
_OPEN_LINES: set[int] = set()


def end_line(stream: TextIO | None = None) -> None:
    """End a bar left mid-line on ``stream`` (default ``sys.stderr``), so that a message starts on its own line."""
    stream = stream or sys.stderr
    if id(stream) in _OPEN_LINES:
        _OPEN_LINES.discard(id(stream))
        stream.write("\n")
        stream.flush()


class Progress:
    """Progress display (see the module notes).

    Parameters
    ----------
    enabled
        Show anything at all.
    stream
        Where the terminal bar goes (default ``sys.stderr``).
    megapixels_per_window
        Source megapixels one window stands for (the image's area over the windows), for MP/s.
    watch_stalls
        Check every second whether windows stopped finishing (see the module notes).
    stall_factor, min_stall
        A stall is ``max(stall_factor x median seconds per window, min_stall)`` without a window.
    """

    def __init__(
        self,
        enabled: bool = True,
        stream: TextIO | None = None,
        *,
        megapixels_per_window: float = 0.0,
        watch_stalls: bool = False,
        stall_factor: float = 5.0,
        min_stall: float = 10.0,
    ):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.megapixels_per_window = megapixels_per_window
        self.watch_stalls = watch_stalls
        self.stall_factor = float(stall_factor)
        self.min_stall = float(min_stall)
        self._per_window: list[float] = []  # seconds per window between successive window updates
        self._last_windows: tuple[float, int] | None = None  # (time, windows done) of the last increase
        self._warned_at: float | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._counts: dict[str, tuple[int, int]] = {}
        self._t0 = time.perf_counter()
        self._last = 0.0
        self._widget: Any = None
        self._label_widget: Any = None
        self._done_labels: set[str] = set()
        if enabled and in_notebook():
            try:
                import ipywidgets
                from IPython.display import display

                self._widget = ipywidgets.IntProgress(min=0, max=1, description="windows")
                self._label_widget = ipywidgets.Label(value="")
                display(ipywidgets.HBox([self._widget, self._label_widget]))
            except ImportError:
                self._widget = None

    def text(self) -> str:
        """The status line: windows done, MP/s, ETA, then the other labels."""
        now = time.perf_counter() - self._t0
        parts = []
        if "windows" in self._counts:
            done, total = self._counts["windows"]
            part = f"windows {done}/{total}"
            if self.megapixels_per_window and done:
                rate = done * self.megapixels_per_window / max(now, 1e-9)
                eta = (total - done) * now / done
                part += f" {rate:.2f} MP/s ETA {eta:.0f}s"
            parts.append(part)
        for label, (done, total) in self._counts.items():
            if label != "windows":
                parts.append(f"{label} {done}/{total}")
        return " | ".join(parts) + f" ({now:.1f}s)"

    def update(self, label: str, done: int, total: int) -> None:
        """Record ``done`` of ``total`` for ``label`` and redraw (at most twice a second on a terminal)."""
        if not self.enabled:
            return
        if label == "windows":
            self._windows_progress(done, total)
        self._counts[label] = (done, total)
        if self._widget is not None:
            main = self._counts.get("windows", (done, total))
            self._widget.max, self._widget.value = max(main[1], 1), main[0]
            self._label_widget.value = self.text()
            return
        now = time.perf_counter()
        finished = all(d >= t for d, t in self._counts.values())
        if not finished and now - self._last < 0.5:
            return
        self._last = now
        done_w, total_w = self._counts.get("windows", (done, total))
        width = 24
        filled = int(width * done_w / max(total_w, 1))
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.text()}  ")
        _OPEN_LINES.add(id(self.stream))
        if finished and label not in self._done_labels:
            self._done_labels.add(label)
            self.stream.write("\n")
            _OPEN_LINES.discard(id(self.stream))
        self.stream.flush()

    # ----------------------------------------------------------------- stalls
    def note(self, text: str) -> None:
        """Print one line of information (below the bar)."""
        if self.enabled:
            self.stream.write(f"\ntilegraph: {text}\n")
            self.stream.flush()

    def _windows_progress(self, done: int, total: int) -> None:
        now = time.perf_counter()
        last = self._last_windows
        if last is None or done > last[1]:
            if last is not None:
                self._per_window.append((now - last[0]) / (done - last[1]))
                del self._per_window[:-64]
            self._last_windows = (now, done)
            self._warned_at = None
        if self.watch_stalls and self._watcher is None and done < total:
            self._watcher = threading.Thread(target=self._watch, name="tilegraph-stalls", daemon=True)
            self._watcher.start()
        if done >= total:
            self._stop.set()

    def check_stall(self, now: float | None = None) -> str | None:
        """The stall message if no window finished for too long (once per stall), else ``None``."""
        if self._last_windows is None or len(self._per_window) < 2 or self._warned_at is not None:
            return None
        now = time.perf_counter() if now is None else now
        median = statistics.median(self._per_window)
        idle = now - self._last_windows[0]
        limit = max(self.stall_factor * median, self.min_stall)
        if idle < limit:
            return None
        self._warned_at = now
        return (
            f"no window has finished for {idle:.0f} s ({idle / max(median, 1e-9):.0f}x the median "
            f"{median:.1f} s per window): a model may be stuck on a window or a worker lost; "
            "window_timeout= stops such a run with an error naming the window"
        )

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            message = self.check_stall()
            if message is not None:
                self.note(message)

    def close(self) -> None:
        """Stop the stall check."""
        self._stop.set()


def in_notebook() -> bool:
    """Whether this process runs inside a Jupyter kernel."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython() if hasattr(ipython, "get_ipython") else None
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def tally(
    handles: Sequence, label: str | Sequence[str], units: Sequence[int] | None
) -> dict[str, tuple[int, int]]:
    """``{label: (0, total units)}`` of a wait's handles."""
    labels = [label] * len(handles) if isinstance(label, str) else list(label)
    out: dict[str, tuple[int, int]] = {}
    for lab, u in zip(labels, units or [1] * len(handles), strict=True):
        out[lab] = (0, out.get(lab, (0, 0))[1] + int(u))
    return out
