"""The :class:`Plan`: a pure, serialisable description of a tiled run.

No dask, torch or I/O here; ``tilegraph plan`` prints it without touching a GPU.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from functools import cached_property
from typing import Any

import numpy as np

from tilegraph.errors import PlanError
from tilegraph.plan.grid import AxisGrid, make_axis
from tilegraph.plan.normalize import (
    PAD_MODES,
    coerce_blend,
    coerce_overlap,
    coerce_pair,
    coerce_scale,
    lcm,
)

__all__ = ["Plan", "make_plan", "Window"]

LAYOUTS = ("YX", "YXC", "CYX")
SUPPORTED_DTYPES = ("uint8", "uint16", "float16", "float32")


@dataclass(frozen=True)
class Window:
    """One model window: grid position, flat index and source box (image coordinates; may reach into
    the padding before 0 or past the far edges)."""

    row: int
    col: int
    index: int
    y0: int
    y1: int
    x0: int
    x1: int


@dataclass(frozen=True)
class Plan:
    """Geometry and resource estimates of one tiled run.

    Build it with :func:`make_plan`; every field is plain data so the plan round-trips through JSON.
    """

    shape: tuple[int, int]
    channels: int
    dtype: str
    layout: str
    tile: tuple[int, int]
    overlap: tuple[int, int]
    scale: str
    model_stride: int = 1
    out_channels: int | None = None
    out_dtype: str | None = None
    out_chunks: tuple[int, int] = (1024, 1024)
    blend: str = "cosine"
    pad_mode: str = "reflect"
    batch_size: int = 4
    batches_per_task: int = 1
    halo: int | None = None
    reconcile: str | None = None
    store_dtype: str | None = None
    origin: tuple[int, int] = (0, 0)
    extra: dict = field(default_factory=dict)

    # ----------------------------------------------------------------- derived geometry
    @cached_property
    def scale_fraction(self) -> Fraction:
        """Scale as a fraction (``Fraction(4)``, ``Fraction(1, 8)``)."""
        return Fraction(self.scale)

    @cached_property
    def y(self) -> AxisGrid:
        """Row axis grid."""
        return make_axis(
            self.shape[0], self.tile[0], self.overlap[0], self.scale_fraction, self.align, self.origin[0]
        )

    @cached_property
    def x(self) -> AxisGrid:
        """Column axis grid."""
        return make_axis(
            self.shape[1], self.tile[1], self.overlap[1], self.scale_fraction, self.align, self.origin[1]
        )

    @property
    def align(self) -> int:
        """Alignment of window starts and sizes: lcm of model stride and down-scale factor."""
        return lcm(self.model_stride, self.scale_fraction.denominator)

    @property
    def grid(self) -> tuple[int, int]:
        """Number of windows per axis ``(rows, cols)``."""
        return self.y.count, self.x.count

    @property
    def n_windows(self) -> int:
        """Total number of windows."""
        return self.y.count * self.x.count

    @property
    def window_shape(self) -> tuple[int, int]:
        """Effective window extent in source pixels."""
        return self.y.tile, self.x.tile

    @property
    def out_window_shape(self) -> tuple[int, int]:
        """Window extent in output pixels."""
        return self.y.out_tile, self.x.out_tile

    @property
    def padded_shape(self) -> tuple[int, int]:
        """Source extent the windows span, padding included."""
        return self.y.padded, self.x.padded

    @property
    def pad_widths(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """Source pixels padded ``((before, after) rows, (before, after) cols)`` around the image."""
        return self.y.pad, self.x.pad

    @property
    def out_shape(self) -> tuple[int, int]:
        """Output image extent ``(rows, cols)``."""
        return self.y.out_size, self.x.out_size

    @property
    def chunk_grid(self) -> tuple[int, int]:
        """Number of output chunks per axis."""
        return (
            -(-self.out_shape[0] // self.out_chunks[0]),
            -(-self.out_shape[1] // self.out_chunks[1]),
        )

    def window(self, index: int) -> Window:
        """Window by flat (raster) index."""
        row, col = divmod(int(index), self.x.count)
        y0, x0 = self.y.start(row), self.x.start(col)
        return Window(row, col, int(index), y0, y0 + self.y.tile, x0, x0 + self.x.tile)

    def windows(self):
        """Iterate over all windows in raster order."""
        for i in range(self.n_windows):
            yield self.window(i)

    def batches(self) -> list[list[int]]:
        """Window indices grouped into batches in raster order."""
        n, b = self.n_windows, self.batch_size
        return [list(range(i, min(n, i + b))) for i in range(0, n, b)]

    def tasks(self) -> list[list[int]]:
        """Window indices grouped per model task (``batches_per_task`` batches each), raster order.

        A task reads its next batch while the current one runs on the model, so larger groups keep
        the device busier; smaller groups spread better over many workers.
        """
        n, k = self.n_windows, self.batch_size * self.batches_per_task
        return [list(range(i, min(n, i + k))) for i in range(0, n, k)]

    def chunk_extent(self, chunks) -> tuple[int, int]:
        """An output chunk extent: ``chunks`` as given, or for ``"auto"`` the stride at the output scale
        (``crop``: each window's kept region is one chunk) or 1024 (the other modes)."""
        if chunks == "auto":
            if self.blend == "crop":
                return int(self.y.stride * self.scale_fraction), int(self.x.stride * self.scale_fraction)
            return 1024, 1024
        return coerce_pair(chunks, "out_chunks")

    def chunk_box(self, cy: int, cx: int) -> tuple[int, int, int, int]:
        """Output box ``(y0, y1, x0, x1)`` of chunk ``(cy, cx)``."""
        y0, x0 = cy * self.out_chunks[0], cx * self.out_chunks[1]
        return (
            y0,
            min(self.out_shape[0], y0 + self.out_chunks[0]),
            x0,
            min(self.out_shape[1], x0 + self.out_chunks[1]),
        )

    def windows_for_box(self, y0: int, y1: int, x0: int, x1: int, *, crop: bool | None = None) -> list[int]:
        """Flat indices of the windows that contribute to an output box, in fixed raster order.

        With ``crop`` (default: the plan's blend is ``"crop"``) only windows whose kept interval
        meets the box count; otherwise every window whose footprint does.
        """
        crop = self.blend == "crop" if crop is None else crop
        rows = self.y.covering(y0, y1, crop=crop)
        cols = self.x.covering(x0, x1, crop=crop)
        return [r * self.x.count + c for r in rows for c in cols]

    # ----------------------------------------------------------------- estimates
    @property
    def cost_factor(self) -> float:
        """Nominal overlap cost ``(T/S)^2`` of the requested tiling."""
        ty, tx = self.tile
        sy, sx = ty - self.overlap[0], tx - self.overlap[1]
        return (ty / sy) * (tx / sx)

    @property
    def window_work(self) -> float:
        """Pixels the model actually processes divided by image pixels (includes edge padding)."""
        return self.n_windows * self.y.tile * self.x.tile / (self.shape[0] * self.shape[1])

    @property
    def tile_store_dtype(self) -> str:
        """dtype of the per-window store: ``store_dtype`` as the blend mode asked, else the default rule.

        ``crop`` never mixes windows, so rounding each window to an integer output dtype when it is
        produced gives the very values the final write would: the store then holds the output dtype.
        Weighted blends keep float32, or float16 for 8-bit outputs (exact for 1/255 steps).
        """
        if self.store_dtype is not None:
            return self.store_dtype
        if self.blend == "crop" and self.out_dtype in ("uint8", "uint16") and self.reconcile is None:
            return self.out_dtype
        return "float16" if self.out_dtype == "uint8" else "float32"

    def estimates(self) -> dict:
        """Peak memory per task and tile-store disk use, in bytes."""
        c_in, c_out = self.channels, self.out_channels or self.channels
        ty, tx = self.window_shape
        oy, ox = self.out_window_shape
        itemsize = np.dtype(self.dtype).itemsize
        infer_task = self.batch_size * (
            c_in * ty * tx * (itemsize + 4 + 4)  # raw read, float32 batch, device copy
            + c_out * oy * ox * (4 + 4)  # model output, host copy
        )
        cy, cx = self.out_chunks
        k = len(self.windows_for_box(*self.chunk_box(0, 0)))
        blend_task = (
            c_out * cy * cx * (4 * 3 + np.dtype(self.out_dtype or self.dtype).itemsize)
            + k * c_out * oy * ox * 4
        )
        store = self.n_windows * c_out * oy * ox * np.dtype(self.tile_store_dtype).itemsize
        return {
            "infer_task_bytes": int(infer_task),
            "blend_task_bytes": int(blend_task),
            "tile_store_bytes": int(store),
        }

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict:
        """Plain-data form (JSON-able)."""
        d = asdict(self)
        d["shape"], d["tile"], d["overlap"], d["out_chunks"], d["origin"] = (
            list(self.shape),
            list(self.tile),
            list(self.overlap),
            list(self.out_chunks),
            list(self.origin),
        )
        return d

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        for k in ("shape", "tile", "overlap", "out_chunks", "origin"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    def summary(self) -> dict:
        """Human-facing numbers for ``tilegraph plan`` and the run result."""
        est = self.estimates()
        return {
            "image": f"{self.shape[0]} x {self.shape[1]} x {self.channels} {self.dtype} ({self.layout})",
            "output": f"{self.out_shape[0]} x {self.out_shape[1]} x {self.out_channels or '?'} "
            f"{self.out_dtype or self.dtype} (scale {self.scale})",
            "tile": f"{self.window_shape[0]} x {self.window_shape[1]} (requested {self.tile[0]} x {self.tile[1]})",
            "overlap": f"{self.overlap[0]} x {self.overlap[1]}",
            "stride": f"{self.y.stride} x {self.x.stride}",
            "windows": f"{self.grid[0]} x {self.grid[1]} = {self.n_windows}",
            "batches": f"{len(self.batches())} of up to {self.batch_size}, {len(self.tasks())} model tasks",
            "blend": self.blend + (f", reconcile {self.reconcile}" if self.reconcile else ""),
            "padding": f"rows {self.y.pad[0]} + {self.y.pad[1]}, cols {self.x.pad[0]} + {self.x.pad[1]} ({self.pad_mode})",
            "cost factor (T/S)^2": f"{self.cost_factor:.3f}",
            "window work / image": f"{self.window_work:.3f}",
            "output chunks": f"{self.out_chunks[0]} x {self.out_chunks[1]}, grid {self.chunk_grid[0]} x {self.chunk_grid[1]}",
            "peak memory per infer task": _human(est["infer_task_bytes"]) + " (+ model activations)",
            "peak memory per blend task": _human(est["blend_task_bytes"]),
            "tile store on disk": _human(est["tile_store_bytes"]) + f" ({self.tile_store_dtype})",
        }

    def __str__(self) -> str:
        rows = self.summary()
        width = max(len(k) for k in rows)
        return "\n".join(f"{k.rjust(width)}  {v}" for k, v in rows.items())


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def make_plan(
    shape,
    *,
    tile=512,
    overlap=64,
    channels: int = 3,
    dtype: str = "uint8",
    layout: str = "YXC",
    scale=1,
    model_stride: int = 1,
    out_channels: int | None = None,
    out_dtype: str | None = None,
    out_chunks=1024,
    blend: str = "cosine",
    pad_mode: str = "reflect",
    batch_size: int = 4,
    batches_per_task: int = 1,
    halo: int | None = None,
    reconcile: str | None = None,
    store_dtype: str | None = None,
    origin: tuple[int, int] | int | str = "auto",
) -> Plan:
    """Validate user geometry once and build a :class:`Plan`.

    Parameters
    ----------
    shape
        Image extent ``(rows, cols)`` in source pixels.
    tile
        Model window in source pixels, int or pair.
    overlap
        Pixels shared by neighbouring windows (int or pair), or a fraction of ``tile`` in ``[0, 1)``.
    scale
        Output pixels per source pixel: 1, 2, 4 (up) or ``"1/8"`` (down).
    model_stride
        Total stride of the model; window starts and sizes are multiples of it.
    out_chunks
        Output Zarr chunk extent, independent of the window grid.
    origin
        Source start of the first window per axis (0 or negative, a multiple of the alignment).
        ``"auto"``: minus half the overlap (rounded to the alignment) for ``crop``, so that its cuts
        fall on multiples of the stride; 0 for the other modes.

    Raises
    ------
    PlanError
        Zero-sized image, tile not larger than overlap, unaligned stride, unknown modes.
    """
    try:
        h, w = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise PlanError(f"shape must be (rows, cols), got {shape!r}") from None
    if h <= 0 or w <= 0:
        raise PlanError(f"image has zero size {h} x {w}", hint="check the source; nothing to tile")
    if layout not in LAYOUTS:
        raise PlanError(f"layout {layout!r} not supported; use one of {LAYOUTS}")
    if str(np.dtype(dtype)) not in SUPPORTED_DTYPES:
        raise PlanError(f"dtype {dtype} not supported; use one of {SUPPORTED_DTYPES}")
    if model_stride <= 0 or int(model_stride) != model_stride:
        raise PlanError(f"model_stride must be a positive int, got {model_stride!r}")
    if batch_size <= 0 or batches_per_task <= 0:
        raise PlanError(
            f"batch_size and batches_per_task must be positive, got {batch_size!r}, {batches_per_task!r}"
        )
    if pad_mode not in PAD_MODES:
        raise PlanError(f"pad_mode {pad_mode!r} not supported; use one of {PAD_MODES}")
    frac = coerce_scale(scale)
    align = lcm(int(model_stride), frac.denominator)
    ty, tx = coerce_pair(tile, "tile")
    oy, ox = coerce_overlap(overlap, (ty, tx), align)
    for name, t, o in (("rows", ty, oy), ("cols", tx, ox)):
        if o >= t:
            raise PlanError(
                f"tile ({t}) must be larger than overlap ({o}) along {name}",
                hint="raise tile or lower overlap; overlap is usually 1/8 to 1/4 of tile",
            )
        if t % align:
            raise PlanError(
                f"tile {t} along {name} is not a multiple of {align} (model stride {model_stride}, scale {frac})",
                hint=f"use tile {t - t % align or align}",
            )
        if (t - o) % align:
            good = t - max(align, ((t - o) // align) * align)
            raise PlanError(
                f"stride tile - overlap = {t - o} along {name} is not a multiple of {align} "
                f"(model stride {model_stride}, scale {frac}); windows must start at aligned offsets",
                hint=f"use overlap {good}",
            )
    oc: Any = out_chunks if out_chunks == "auto" else coerce_pair(out_chunks, "out_chunks")
    mode = coerce_blend(blend)
    if origin == "auto":
        org = tuple(-((o // 2) // align * align) if mode == "crop" else 0 for o in (oy, ox))
    else:
        org = (int(origin), int(origin)) if isinstance(origin, int) else tuple(int(v) for v in origin)
        for name, v, t, o in (("rows", org[0], ty, oy), ("cols", org[1], tx, ox)):
            if v > 0 or v <= -(t - o) or v % align:
                raise PlanError(
                    f"grid origin {v} along {name} must be 0 or negative, above minus the stride ({t - o}) "
                    f"and a multiple of {align}"
                )
    plan = Plan(
        shape=(h, w),
        channels=int(channels),
        dtype=str(np.dtype(dtype)),
        layout=layout,
        tile=(ty, tx),
        overlap=(oy, ox),
        scale=str(frac),
        model_stride=int(model_stride),
        out_channels=None if out_channels is None else int(out_channels),
        out_dtype=None if out_dtype is None else str(np.dtype(out_dtype)),
        out_chunks=oc,
        blend=mode,
        pad_mode=pad_mode,
        batch_size=int(batch_size),
        batches_per_task=int(batches_per_task),
        halo=halo,
        reconcile=_check_reconcile(reconcile),
        store_dtype=None if store_dtype is None else str(np.dtype(store_dtype)),
        origin=(int(org[0]), int(org[1])),
    )
    if oc == "auto":  # known once the grid is: the stride at the output scale for crop
        plan = replace(plan, out_chunks=plan.chunk_extent("auto"))
    return plan


def _check_reconcile(value: str | None) -> str | None:
    if value not in (None, "offset", "gain-offset"):
        raise PlanError(f"reconcile must be None, 'offset' or 'gain-offset', got {value!r}")
    return value
