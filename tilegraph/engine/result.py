"""What a run returns: :class:`RunResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tilegraph.plan.plan import Plan

__all__ = ["RunResult"]


@dataclass
class RunResult:
    """The output, the plan, timings and counts (all small).

    Attributes
    ----------
    output
        The output Zarr array (read-only) or, for TIFF/PNG/JPEG destinations, the file path.
    path : str
        Where the output lives.
    plan : Plan
    timings : dict
        Seconds per step and ``megapixels_per_s`` of source image.
    clipped : int
        Output values clipped when converting to the output dtype (only values the output keeps).
    model : dict
        Model name and the devices it ran on.
    report : dict or None
        The QA report (``qa=True``).
    extra : dict
        ``autotile`` choice, ``oom_splits``, ``model_tasks`` (how many model tasks ran), the output kind's report (``labels``, ``detections``),
        ``mask`` (windows run and skipped, the grid chosen).
    table : numpy.ndarray or None
        The rows of a kind whose output is a table (see :attr:`detections`).
    """

    output: Any
    path: str
    plan: Plan
    timings: dict
    clipped: int
    model: dict
    report: dict | None = None
    extra: dict = field(default_factory=dict)
    table: Any = None

    @property
    def detections(self) -> Any:
        """The merged boxes of a ``task="detections"`` run: a structured array with fields ``x0, y0, x1,
        y1, score, label`` (image pixels, ``x1``/``y1`` exclusive; ``.to_pandas()`` with pandas), always
        an array, empty when nothing was found; ``None`` for other kinds."""
        return self.table

    @property
    def n_windows(self) -> int:
        """Number of windows the model ran on."""
        return self.plan.n_windows

    def summary(self) -> dict:
        """Small dict of the headline numbers."""
        return {
            "output": self.path,
            "windows": self.plan.n_windows,
            "seconds": round(self.timings.get("total_s", float("nan")), 3),
            "megapixels_per_s": round(self.timings.get("megapixels_per_s", float("nan")), 3),
            "clipped": self.clipped,
        }

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:left'>{k}</th><td>{v}</td></tr>" for k, v in self.summary().items()
        )
        extra = ""
        if self.report and self.report.get("summary_html"):
            extra = self.report["summary_html"]
        return f"<table>{rows}</table>{extra}"
