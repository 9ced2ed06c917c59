"""Progress of a run, apart from execution: a bar on a terminal, an ipywidgets bar in Jupyter, or nothing.

The executors report ``(label, done, total)`` per kind of task; the main bar counts windows (the
model tasks' windows) and shows the throughput in megapixels per second and an ETA; other labels
(``blend``, ``strips``...) are shown beside it.
"""

from __future__ import annotations

import sys
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
    """

    def __init__(
        self, enabled: bool = True, stream: TextIO | None = None, *, megapixels_per_window: float = 0.0
    ):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.megapixels_per_window = megapixels_per_window
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
