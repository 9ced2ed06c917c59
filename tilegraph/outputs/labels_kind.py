"""The ``labels`` output kind: instance labels made globally unique and merged across seams.

The model returns integer instance labels per window, ``(N, 1, H, W)`` with 0 for background. The
stitching (:mod:`tilegraph.outputs.labels`) runs on the contract's two halves:

* **model tasks** (:meth:`LabelsKind.consume`): each window's labels are renumbered ``1..k`` and kept
  in the per-window store (``uint32``); a :class:`~tilegraph.outputs.labels.WindowLabels` summary of
  a few bytes per label travels back;
* **a pair step**: one task per pair of neighbouring windows (8-neighbourhood), run once both are
  stored, matches their pieces on the shared strip (a small table of pieces that share pixels);
* **the client** joins matching pieces with a union-find over every window's provisional labels
  (connected components of a sparse graph, so an object larger than a window ends as one label) and
  numbers the objects ``1..M``;
* **a chunk step**: one task per output chunk copies each covering window's kept part (the ``crop``
  rule) through that window's lookup table (only the tables of the windows covering the chunk travel
  to it) and writes the chunk once, ``int32`` (``int64`` when the windows could hold more labels
  than ``int32`` counts).

The report (objects, objects cut by the image border, pairs whose overlaps disagree, pieces facing
only background) goes into the output's attributes and ``result.extra["labels"]``.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from concurrent.futures import Executor
from typing import Any, ClassVar

import numpy as np

from tilegraph.errors import InputError, SinkError
from tilegraph.options import LabelOptions
from tilegraph.outputs.abc import Assembly, KindResult, OutputKind, Step, WindowContext
from tilegraph.outputs.image import TileStoreReader, chunk_boxes
from tilegraph.outputs.labels import (
    assemble_chunk,
    match_windows,
    neighbour_pairs,
    prepare_window,
    resolve_labels,
)
from tilegraph.plan.plan import Plan

__all__ = ["LabelsKind", "match_pair", "label_chunk", "labels_dtype"]

_INT32_MAX = int(np.iinfo(np.int32).max)


def labels_dtype(plan: Plan, requested: str | None = None) -> str:
    """``int32``, or ``int64`` when the windows could hold more labels than ``int32`` counts.

    A window holds at most one label per output pixel, so ``n_windows x window pixels`` bounds the
    provisional labels (and the objects). A requested dtype is kept.
    """
    if requested is not None:
        return requested
    oy, ox = plan.out_window_shape
    return "int64" if plan.n_windows * oy * ox > _INT32_MAX else "int32"


class LabelsKind(OutputKind):
    """Instance labels stitched across windows (see the module notes)."""

    name: ClassVar[str] = "labels"
    model_output: ClassVar[str] = "labels"
    passthrough: ClassVar[bool] = False
    needs_all_results: ClassVar[bool] = True  # every window's label count before the union-find

    def __init__(self, options: LabelOptions | None = None, *, requested: str | None = None) -> None:
        self.options = options if options is not None else LabelOptions()
        self.requested = requested

    def configure(self, options: Any) -> OutputKind:
        return LabelsKind(options.labels, requested=options.output.dtype)

    def output_dtype(self, requested: str | None, source_dtype: str) -> str:
        if requested is not None and requested not in ("int32", "int64"):
            raise InputError(
                f"labels are written as int32 or int64, not {requested}",
                hint="leave output_dtype unset (int32, or int64 when the count could exceed it)",
            )
        return requested or "int32"

    def store_dtype(self, out_dtype: str) -> str | None:
        return "uint32"  # each window's labels renumbered 1..k

    def output_layout(self, plan: Plan, source_layout: str) -> tuple[int, str, str]:
        return 1, labels_dtype(plan, self.requested), "YX"

    def consume(
        self, ctx: WindowContext, indices: Sequence[int], raw: np.ndarray, y: np.ndarray, pool: Executor
    ) -> Any:
        plan, tiles = ctx.plan, ctx.tile_store
        assert tiles is not None
        array = None if tiles.direct else tiles.open()

        def one(k: int):
            local, info = prepare_window(y[k], plan=plan, index=int(indices[k]))
            try:
                tiles.write(int(indices[k]), local[None], array=array)
            except OSError as exc:
                raise SinkError(
                    f"cannot write the tile store: {exc.strerror or exc}", path=tiles.path
                ) from exc
            return info

        return list(pool.map(one, range(len(indices))))

    def assemble(self, job: Assembly) -> Generator[Step, list, KindResult]:
        plan, opts = job.plan, self.options
        ran = None if job.windows is None else set(int(i) for i in job.windows)
        pairs = [p for p in neighbour_pairs(plan) if ran is None or (p[0] in ran and p[1] in ran)]
        matches = yield Step("match", match_pair, pairs, shared=job.context, after=[list(p) for p in pairs])
        t0 = time.perf_counter()
        infos = [info for task in job.results for batch in task for info in batch]
        res = resolve_labels(
            infos,
            matches,
            metric=opts.metric,
            threshold=float(opts.threshold),
            report_iou=float(opts.report_iou),
            min_pixels=int(opts.min_pixels),
            n_windows=plan.n_windows,
        )
        dtype = str(job.context.writer.layout.dtype)
        if res.n_objects > np.iinfo(dtype).max:
            raise InputError(f"{res.n_objects} objects do not fit the output dtype {dtype}", hint="use int64")
        resolve_s = time.perf_counter() - t0
        chunks = chunk_boxes(plan)
        args = []
        for _, box in chunks:
            windows = plan.windows_for_box(*box, crop=True)
            if ran is not None:
                windows = [w for w in windows if w in ran]
            args.append((box, res.luts(windows)))
        results = yield Step("labels", label_chunk, args, shared=job.context)
        report = res.report()
        report["resolve_s"] = round(resolve_s, 4)
        report["pairs"] = len(pairs)
        return KindResult(
            seconds=float(sum(results)) + resolve_s,
            extra={"labels": report},
            attributes={"labels": report},
        )


def match_pair(ctx: Any, a: int, b: int) -> np.ndarray:
    """Task: the matching pieces of two neighbouring windows on their shared strip."""
    reader = TileStoreReader(ctx.plan, ctx.tile_store)
    full = slice(None)
    return match_windows(reader.raw(a, full, full)[0], reader.raw(b, full, full)[0], plan=ctx.plan, a=a, b=b)


def label_chunk(ctx: Any, box: tuple[int, int, int, int], luts: dict) -> float:
    """Task: the final labels of one output chunk, written once; returns its seconds."""
    t0 = time.perf_counter()
    plan = ctx.plan
    reader = TileStoreReader(plan, ctx.tile_store)
    # only the rows and columns of each window that the box keeps are read
    block = assemble_chunk(
        box,
        plan=plan,
        read_region=lambda i, rows, cols: reader.raw(i, rows, cols)[0],
        luts=luts,
        dtype=ctx.writer.layout.dtype,
        windows=list(luts),
    )
    ctx.writer.write(box, block[..., None], integer_scaled=False)
    return time.perf_counter() - t0
