"""The ``detections`` output kind (SAHI): boxes of every window merged into one set, on the client.

For this kind the model returns, per batch, a list with one ``(k, 6)`` array per window (``x0, y0,
x1, y1, score, label`` in window pixels). Each model task turns its windows' boxes into candidates
(:func:`~tilegraph.outputs.detections.window_candidates`: image pixels, clipped, flagged when an
inner window edge cuts them), a few dozen bytes a box that travel back with the task's report.
The client merges every window's candidates (:func:`~tilegraph.outputs.detections.merge_detections`:
cut boxes dropped where a neighbour holds the whole object, then NMS or NMM with IoU or IoS on a
spatial grid), optionally with the model's boxes on the run's thumbnail (SAHI's full-image pass, for
objects larger than a window). Nothing is blended and no array is written: the result is
``result.detections`` (a structured array) and, for a ``.csv`` or ``.parquet`` destination, a table.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from concurrent.futures import Executor
from typing import Any, ClassVar

import numpy as np

from tilegraph.options import DetectionOptions
from tilegraph.outputs.abc import Assembly, KindResult, OutputKind, Step, WindowContext
from tilegraph.outputs.detections import CANDIDATE_DTYPE, merge_detections, window_candidates

__all__ = ["DetectionsKind"]


class DetectionsKind(OutputKind):
    """Boxes merged across windows (see the module notes)."""

    name: ClassVar[str] = "detections"
    model_output: ClassVar[str] = "boxes"
    passthrough: ClassVar[bool] = False
    writes_array: ClassVar[bool] = False
    uses_tile_store: ClassVar[bool] = False
    needs_all_results: ClassVar[bool] = True

    def __init__(self, options: DetectionOptions | None = None) -> None:
        self.options = options if options is not None else DetectionOptions()

    def configure(self, options: Any) -> OutputKind:
        return DetectionsKind(options.detections)

    def consume(
        self, ctx: WindowContext, indices: Sequence[int], raw: np.ndarray, y: np.ndarray, pool: Executor
    ) -> Any:
        margin = float(self.options.edge_margin)
        parts = [
            window_candidates(y[k], plan=ctx.plan, index=int(i), edge_margin=margin)
            for k, i in enumerate(indices)
        ]
        return np.concatenate(parts) if parts else np.zeros(0, CANDIDATE_DTYPE)

    def assemble(self, job: Assembly) -> Generator[Step, list, KindResult]:
        t0 = time.perf_counter()
        parts: list[np.ndarray] = [np.asarray(c) for task in job.results for c in task]
        candidates = int(sum(p.size for p in parts))
        cut = int(sum(int(np.count_nonzero(p["cut"])) for p in parts))
        full = 0
        if self.options.full_image:
            if job.thumbnail is None:
                raise RuntimeError("the engine gave no thumbnail for the full-image pass")
            boxes, factor = job.thumbnail()
            whole = np.array(boxes, np.float64).reshape(-1, 6)
            whole[:, :4] *= factor  # thumbnail pixels to image pixels (boxes at scale 1)
            full = int(whole.shape[0])
            parts.append(whole)  # whole-image boxes: never cut
        t1 = time.perf_counter()
        det = merge_detections(parts, **self.options.merge_kwargs())
        merge_s = time.perf_counter() - t1
        report = {
            "boxes": int(det.size),
            "candidates": candidates,
            "cut_candidates": cut,
            "full_image_boxes": full,
            "merge": self.options.merge,
            "metric": self.options.metric,
            "threshold": float(self.options.threshold),
            "merge_s": round(merge_s, 4),
        }
        return KindResult(
            seconds=time.perf_counter() - t0,
            data=det,
            table=det,
            extra={"detections": report},
            attributes={"detections": report},
        )
        yield  # no steps: the merge runs on the client
