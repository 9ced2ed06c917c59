"""Typed options of a run, built and validated once at the edge.

:func:`tilegraph.run`'s keywords, the command line (``tilegraph run``, whose flags are generated
from these fields) and a configuration file (TOML or YAML) all become one frozen
:class:`RunOptions`; every stage receives typed values from it, and the output's metadata records
:meth:`RunOptions.to_dict`.

Each sub-option groups what one stage needs: :class:`SourceOptions`, :class:`ModelOptions`,
:class:`TilingOptions`, :class:`BlendOptions`, :class:`ReconcileOptions`, :class:`OutputOptions`,
:class:`ExportOptions`, :class:`QualityOptions`, :class:`ExecutionOptions`. A plain dict is still
accepted wherever a sub-option is (``reconcile_options={"reference": "thumbnail"}``) and converted,
with an error naming any unknown key.

A field's ``metadata`` holds its keyword in :func:`tilegraph.run` (``flat``), its help text and
whether the command line offers it; :func:`flat_fields` lists them, and a test keeps
:func:`tilegraph.run`, the CLI and this module in step.

This module imports nothing heavy.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, Literal, TypeVar, get_args

from tilegraph.errors import InputError

__all__ = [
    "RunOptions",
    "SourceOptions",
    "ModelOptions",
    "TilingOptions",
    "BlendOptions",
    "ReconcileOptions",
    "OutputOptions",
    "ExportOptions",
    "QualityOptions",
    "ExecutionOptions",
    "LabelOptions",
    "DetectionOptions",
    "ProbabilityOptions",
    "DiffMergeOptions",
    "MaskOptions",
    "FlatField",
    "flat_fields",
    "load_config",
    "GROUP_KEYWORDS",
    "Precision",
    "PadMode",
    "Layout",
    "ReconcileMode",
    "ReconcileReference",
    "AnchorFit",
    "NormSync",
    "Device",
    "BoxMerge",
    "OverlapMetric",
    "CoarseMode",
    "GridMode",
    "CodecPipeline",
    "DetailMode",
    "LowFreqMode",
    "LowFreqSplit",
    "RefineMode",
]

Precision = Literal["fp32", "fp16", "bf16"]
PadMode = Literal["reflect", "symmetric", "edge", "constant"]
Layout = Literal["YX", "YXC", "CYX"]
ReconcileMode = Literal["offset", "gain-offset"]
ReconcileReference = Literal["auto", "input", "thumbnail"]
AnchorFit = Literal["regression", "moments"]
NormSync = Literal["exact", "thumbnail"]
Device = Literal["auto", "cpu", "cuda"]
BoxMerge = Literal["nms", "greedy_nmm", "nmm"]
OverlapMetric = Literal["ios", "iou"]
CoarseMode = Literal["keyword", "channel"]
GridMode = Literal["regular", "mask-aware"]
CodecPipeline = Literal["auto", "zarrs", "zarr-python"]
DetailMode = Literal["none", "preserve"]
LowFreqMode = Literal["thumbnail"]
LowFreqSplit = Literal["gaussian", "wavelet"]
RefineMode = Literal["seams"]

S = TypeVar("S")


def _opt(
    default: Any,
    help: str,
    *,
    flat: str | None = None,
    cli: bool = True,
    run: bool = True,
    factory: Any = None,
) -> Any:
    """A dataclass field with its flat name (``flat``), help text, and whether ``run()`` and the CLI take it.

    Fields with ``run=False`` reach :func:`tilegraph.run` through their group's keyword
    (``source_options=``, ``reconcile_options=``, ``export_options=``, ``quality_options=``).
    """
    meta = {"help": help, "flat": flat, "cli": cli, "run": run}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _choice(value: Any, allowed: tuple, name: str, *, none: bool = False) -> None:
    if none and value is None:
        return
    if value not in allowed:
        options = ", ".join(repr(a) for a in allowed) + (" or None" if none else "")
        raise InputError(f"{name} must be one of {options}, got {value!r}")


def _int(value: Any, name: str, *, minimum: int | None = None, none: bool = False) -> None:
    if none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise InputError(f"{name} must be at least {minimum}, got {value!r}")


def _frozen_mapping(value: Mapping | None, name: str) -> Mapping | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InputError(f"{name} must be a dict, got {type(value).__name__}")
    return MappingProxyType(dict(value))


@dataclass(frozen=True)
class SourceOptions:
    """How the source is opened (reader options)."""

    level: int = _opt(0, "pyramid level of a TIFF/OME-Zarr source (0 = full resolution)", run=False)
    series: int = _opt(0, "TIFF series", run=False)
    layout: Layout | None = _opt(None, "axis order of the stored data when it cannot be inferred", run=False)
    allow_nonfinite: bool = _opt(
        False, "accept NaN/Inf in float TIFF sources (they are refused per window later)", run=False
    )
    max_pixels: int | None = _opt(
        None, "refuse headers claiming more pixels (default TILEGRAPH_MAX_PIXELS)", run=False
    )
    storage_options: Mapping | None = _opt(None, "fsspec options for URLs", cli=False, run=False)

    def __post_init__(self) -> None:
        _int(self.level, "source level", minimum=0)
        _int(self.series, "source series", minimum=0)
        _choice(self.layout, get_args(Layout), "layout", none=True)
        _int(self.max_pixels, "max_pixels", minimum=1, none=True)
        object.__setattr__(self, "storage_options", _frozen_mapping(self.storage_options, "storage_options"))

    def reader_kwargs(self) -> dict:
        """Keyword arguments for :func:`tilegraph.source.open_source`: only what differs from the defaults."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value != f.default:
                out[f.name] = dict(value) if isinstance(value, Mapping) else value
        return out


@dataclass(frozen=True)
class ModelOptions:
    """How the model is built and run, and what overrides its declarations."""

    weights: str | None = _opt(
        None, "weights file (safetensors or torch checkpoint) for a model given by import path"
    )
    factory_kwargs: Mapping | None = _opt(None, "keyword arguments of the model factory", cli=False)
    scale: str | None = _opt(
        None, "output pixels per input pixel: 2, 4 or 1/8 (default: declared, then probed)"
    )
    in_channels: int | None = _opt(None, "channels the model takes (default: declared, else the image's)")
    out_channels: int | None = _opt(None, "channels the model returns (checked on a probe)")
    stride: int | None = _opt(
        None, "total stride of the model (windows are multiples of it)", flat="model_stride"
    )
    halo: int | None = _opt(None, "pixels of context each side needs (default: declared)")
    precision: Precision = _opt("fp32", "autocast precision")
    channels_last: bool = _opt(False, "torch channels_last memory format")
    compile: bool = _opt(False, "torch.compile the model on each worker")
    device: Device = _opt("auto", "'auto' (the worker's GPU if any), 'cpu' or 'cuda'")
    norm_sync: NormSync | None = _opt(
        None,
        "GroupNorm/InstanceNorm statistics over the whole image: exact (one pass over the windows per layer) "
        "or thumbnail (recorded by the run's thumbnail inference)",
    )

    def __post_init__(self) -> None:
        if self.norm_sync in ("none", "None"):
            object.__setattr__(self, "norm_sync", None)
        _choice(self.norm_sync, get_args(NormSync), "norm_sync", none=True)
        _choice(self.precision, get_args(Precision), "precision")
        _choice(self.device, get_args(Device), "device")
        for name in ("in_channels", "out_channels", "stride"):
            _int(getattr(self, name), name, minimum=1, none=True)
        _int(self.halo, "halo", minimum=0, none=True)
        if self.scale is not None:
            object.__setattr__(self, "scale", str(self.scale))
        if self.weights is not None:
            object.__setattr__(self, "weights", os.fspath(self.weights))
        object.__setattr__(self, "factory_kwargs", _frozen_mapping(self.factory_kwargs, "factory_kwargs"))


@dataclass(frozen=True)
class TilingOptions:
    """The window grid (validated against the image by :func:`tilegraph.plan.make_plan`)."""

    tile: Any = _opt(512, "model window in source pixels, a pair, or 'auto' (largest that fits the device)")
    overlap: Any = _opt(64, "pixels neighbouring windows share, or a fraction of tile")
    pad_mode: PadMode = _opt("reflect", "padding at the image's far edges")
    batch_size: int = _opt(4, "windows per forward pass")
    batches_per_task: int = _opt(1, "forward passes per model task")

    def __post_init__(self) -> None:
        _choice(self.pad_mode, get_args(PadMode), "pad_mode")
        _int(self.batch_size, "batch_size", minimum=1)
        _int(self.batches_per_task, "batches_per_task", minimum=1)
        if isinstance(self.tile, list):
            object.__setattr__(self, "tile", tuple(self.tile))
        if isinstance(self.overlap, list):
            object.__setattr__(self, "overlap", tuple(self.overlap))
        if self.tile != "auto" and not isinstance(self.tile, int | tuple):
            raise InputError(f"tile must be an int, a pair of ints or 'auto', got {self.tile!r}")


@dataclass(frozen=True)
class BlendOptions:
    """How windows are merged into the output (the mode is a registered :class:`~tilegraph.blend.Blender`)."""

    mode: str = _opt(
        "cosine",
        "blend mode: crop, linear, cosine, gaussian, multiband, seam, poisson or a registered one",
        flat="blend",
    )
    detail: DetailMode = _opt(
        "none",
        "where windows are averaged (linear, cosine, gaussian, multiband's fine levels): none, or preserve "
        "(high frequencies mixed with variance-preserving weights: texture keeps its contrast)",
    )
    lowfreq: LowFreqMode | None = _opt(
        None,
        "thumbnail: after blending, low frequencies from the run's one thumbnail inference where windows "
        "disagree (a pass; windows that agree are left as they are)",
    )
    lowfreq_split: LowFreqSplit = _opt("gaussian", "how lowfreq splits low from high frequencies")
    refine: RefineMode | None = _opt(
        None,
        "seams: after blending, rerun the model on windows centred on the seams and blend them into "
        "bands along the seams (a pass; about three times the model work)",
    )

    def __post_init__(self) -> None:
        if not isinstance(self.mode, str):
            raise InputError(f"blend must be the name of a blend mode, got {self.mode!r}")
        _choice(self.detail, get_args(DetailMode), "detail")
        _choice(self.lowfreq, get_args(LowFreqMode), "lowfreq", none=True)
        _choice(self.lowfreq_split, get_args(LowFreqSplit), "lowfreq_split")
        _choice(self.refine, get_args(RefineMode), "refine", none=True)


@dataclass(frozen=True)
class ReconcileOptions:
    """Colour reconciliation across windows (off unless ``mode`` is given)."""

    mode: ReconcileMode | None = _opt(None, "colour reconciliation: offset or gain-offset", flat="reconcile")
    reference: ReconcileReference | None = _opt(
        "auto",
        "what the colours are anchored to: auto (input or thumbnail, chosen by measuring the model on the "
        "run's thumbnail), input, thumbnail (the model run on a thumbnail) or none",
        run=False,
    )
    strength: float = _opt(1.0, "fraction of the solved correction applied (0..1)", run=False)
    field: bool = _opt(False, "interpolate corrections smoothly between window centres", run=False)
    sigma: float = _opt(2.0, "low-pass sigma (output pixels) of the statistics", run=False)
    # the solve's settings measured best against whole-image inference (tilegraph.reconcile.RECOMMENDED)
    anchor_fit: AnchorFit = _opt(
        "regression",
        "how a window meets its anchor: regression (pixelwise least squares) or moments (mean and spread)",
        run=False,
    )
    anchor: float = _opt(3.0, "weight of each window's anchor, in typical overlap pairs", run=False)

    def __post_init__(self) -> None:
        _choice(self.mode, get_args(ReconcileMode), "reconcile", none=True)
        _choice(self.anchor_fit, get_args(AnchorFit), "reconcile anchor_fit")
        if not float(self.anchor) > 0:
            raise InputError(f"reconcile anchor must be positive, got {self.anchor!r}")
        ref = None if self.reference in ("none", "None") else self.reference
        object.__setattr__(self, "reference", ref)
        _choice(self.reference, get_args(ReconcileReference), "reconcile reference", none=True)
        if not 0.0 <= float(self.strength) <= 1.0:
            raise InputError(f"reconcile strength must be in [0, 1], got {self.strength!r}")
        if float(self.sigma) <= 0:
            raise InputError(f"reconcile sigma must be positive, got {self.sigma!r}")


@dataclass(frozen=True)
class OutputOptions:
    """The output array: chunks, dtype, and what may be replaced."""

    chunks: Any = _opt(
        "auto",
        "output chunk extent: 'auto' (the stride at the output scale for crop, so that model tasks write chunks "
        "directly; 1024 otherwise), an int or a pair",
        flat="out_chunks",
    )
    shards: Any = _opt(None, "output shard extent, a multiple of the chunks", flat="out_shards")
    dtype: str | None = _opt(
        None, "output dtype (default: the source's; float32 for latents)", flat="output_dtype"
    )
    overwrite: bool = _opt(
        False, "replace a previous tilegraph output or an empty folder (never the source, nothing else)"
    )
    keep_tile_store: bool = _opt(False, "keep the per-window store after success (debugging)")
    scratch: str | None = _opt(
        None, "folder in which a fresh scratch subfolder is made (default: beside the destination)"
    )
    resume: bool = _opt(
        False, "continue an interrupted run on this destination, recomputing only what is missing"
    )
    check_space: bool = _opt(True, "refuse a run when the disks lack the space the plan estimates")

    def __post_init__(self) -> None:
        for name in ("chunks", "shards"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if self.dtype is not None:
            import numpy as np

            try:
                object.__setattr__(self, "dtype", str(np.dtype(self.dtype)))
            except TypeError:
                raise InputError(f"output_dtype {self.dtype!r} is not a dtype") from None
        if self.scratch is not None:
            object.__setattr__(self, "scratch", os.fspath(self.scratch))


@dataclass(frozen=True)
class ExportOptions:
    """TIFF, PNG and JPEG writing (ignored for Zarr destinations)."""

    compression: str | None = _opt(None, "TIFF compression (default: the source's, else zlib)", run=False)
    tile: Any = _opt((512, 512), "TIFF tile extent", cli=False, run=False)
    bigtiff: bool | None = _opt(None, "force BigTIFF on or off (default: by size)", cli=False, run=False)
    quality: int = _opt(95, "JPEG quality", flat="jpeg_quality", run=False)
    alpha: bool | None = _opt(
        None,
        "PNG: the last channel of a 2- or 4-channel output is alpha (default: only when it is the source's "
        "alpha passed around the model; other 2- and 4-channel outputs are refused)",
        run=False,
    )
    levels: int | None = _opt(
        None,
        "OME-Zarr pyramid levels, full resolution included (default: halve until the image fits one chunk)",
        flat="pyramid_levels",
        run=False,
    )

    def __post_init__(self) -> None:
        if isinstance(self.tile, int):
            object.__setattr__(self, "tile", (self.tile, self.tile))
        elif isinstance(self.tile, list):
            object.__setattr__(self, "tile", tuple(self.tile))
        _int(self.quality, "JPEG quality", minimum=1)
        _int(self.levels, "pyramid_levels", minimum=1, none=True)


@dataclass(frozen=True)
class QualityOptions:
    """Seam metrics and the QA report."""

    enabled: bool = _opt(False, "measure seams and write report.json/report.html", flat="qa")
    report_dir: str | None = _opt(None, "report folder (default DESTINATION.qa)", flat="qa_dir", run=False)
    psnr_max_megapixels: float = _opt(
        64.0, "compare with whole-image inference up to this image size (megapixels)", run=False
    )


@dataclass(frozen=True)
class ExecutionOptions:
    """How the run shows itself; where it runs is ``client=``."""

    progress: bool | None = _opt(None, "show progress (default: on a terminal or in Jupyter)")
    codec_pipeline: CodecPipeline = _opt(
        "auto",
        "Zarr codec pipeline of the workers: 'auto' (the zarrs Rust pipeline where installed, "
        "pip install tilegraph[fast]), 'zarrs' or 'zarr-python'",
        run=False,
    )
    window_timeout: float | None = _opt(
        None, "seconds a forward pass may take before the run stops with an error naming its window"
    )
    allowed_failures: int | None = _opt(
        None, "worker deaths a task may cause before it is reported (default: the scheduler's, 3)"
    )

    def __post_init__(self) -> None:
        _choice(self.codec_pipeline, get_args(CodecPipeline), "codec_pipeline")
        if self.window_timeout is not None:
            if isinstance(self.window_timeout, bool) or not isinstance(self.window_timeout, int | float):
                raise InputError(f"window_timeout must be a number of seconds, got {self.window_timeout!r}")
            if not self.window_timeout > 0:
                raise InputError(f"window_timeout must be positive, got {self.window_timeout!r}")
            object.__setattr__(self, "window_timeout", float(self.window_timeout))
        _int(self.allowed_failures, "allowed_failures", minimum=0, none=True)


def _fraction(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < float(value) <= 1:
        raise InputError(f"{name} must be in (0, 1], got {value!r}")


@dataclass(frozen=True)
class LabelOptions:
    """How instance labels are stitched across windows (``task="labels"``)."""

    metric: OverlapMetric = _opt(
        "ios",
        "pieces of one object in two windows are joined by intersection over the smaller piece (ios) or IoU",
        flat="label_metric",
        run=False,
    )
    threshold: float = _opt(
        0.5, "pieces are joined when the metric reaches this", flat="label_threshold", run=False
    )
    report_iou: float = _opt(
        0.5,
        "overlap pairs whose foreground IoU is below this are reported",
        flat="label_report_iou",
        run=False,
    )
    min_pixels: int = _opt(
        1,
        "pieces smaller than this in an overlap are neither joined nor reported",
        flat="label_min_pixels",
        run=False,
    )

    def __post_init__(self) -> None:
        _choice(self.metric, get_args(OverlapMetric), "label metric")
        _fraction(self.threshold, "label threshold")
        _fraction(self.report_iou, "label report_iou")
        _int(self.min_pixels, "label min_pixels", minimum=1)


@dataclass(frozen=True)
class DetectionOptions:
    """How boxes are merged across windows (``task="detections"``, SAHI's options)."""

    merge: BoxMerge = _opt(
        "greedy_nmm",
        "duplicates: nms (suppress), greedy_nmm (SAHI's default: the kept box absorbs those it suppresses) or nmm",
        flat="detection_merge",
        run=False,
    )
    metric: OverlapMetric = _opt(
        "ios", "box overlap: ios (over the smaller box) or iou", flat="detection_metric", run=False
    )
    threshold: float = _opt(
        0.5, "boxes match when the metric reaches this", flat="detection_threshold", run=False
    )
    class_agnostic: bool = _opt(
        False, "match boxes of different labels too", flat="detection_class_agnostic", run=False
    )
    cut_cover: float = _opt(
        0.6,
        "a box cut by a window edge is dropped when a whole box covers this fraction of it",
        flat="detection_cut_cover",
        run=False,
    )
    edge_margin: float = _opt(
        1.0,
        "a box this close (pixels) to an inner window edge counts as cut",
        flat="detection_edge_margin",
        run=False,
    )
    full_image: bool = _opt(
        False,
        "also run the model once on the run's thumbnail (SAHI's standard prediction, for objects larger than a window)",
        flat="detection_full_image",
        run=False,
    )

    def __post_init__(self) -> None:
        _choice(self.merge, get_args(BoxMerge), "detection merge")
        _choice(self.metric, get_args(OverlapMetric), "detection metric")
        _fraction(self.threshold, "detection threshold")
        _fraction(self.cut_cover, "detection cut_cover")
        if (
            isinstance(self.edge_margin, bool)
            or not isinstance(self.edge_margin, int | float)
            or self.edge_margin < 0
        ):
            raise InputError(f"detection edge_margin must be a non-negative number, got {self.edge_margin!r}")

    def merge_kwargs(self) -> dict:
        """Keyword arguments of :func:`tilegraph.outputs.detections.merge_detections`."""
        return {
            "merge": self.merge,
            "metric": self.metric,
            "threshold": float(self.threshold),
            "class_agnostic": bool(self.class_agnostic),
            "cut_cover": float(self.cut_cover),
        }


@dataclass(frozen=True)
class ProbabilityOptions:
    """Per-class probabilities (``task="probabilities"``): argmax output and coarse-to-fine."""

    argmax: bool = _opt(
        False, "write the index of the largest blended probability (one channel) instead of the probabilities"
    )
    coarse: CoarseMode | None = _opt(
        None,
        "coarse-to-fine: the model's output on the run's thumbnail, up-sampled, is given to every window as a "
        "keyword the model declares (coarse_keyword, default 'coarse') or as extra input channels",
    )

    def __post_init__(self) -> None:
        if self.coarse in (False, "none", "None"):
            object.__setattr__(self, "coarse", None)
        _choice(self.coarse, get_args(CoarseMode), "coarse", none=True)


@dataclass(frozen=True)
class DiffMergeOptions:
    """Diff-merge (``diff_merge=True``): keep the original wherever the model did not change it.

    Pixels are image pixels. The change mask is CIEDE2000 above ``threshold``, opened by
    ``open_radius``, closed by ``close_radius`` and grown by ``grow``; the transition band is the
    mask's ``band`` pixels next to its edge.
    """

    enabled: bool = _opt(
        False,
        "keep the input bit for bit where the model changed nothing (CIELAB change mask), Poisson-blend the "
        "changed regions in",
        flat="diff_merge",
    )
    threshold: float = _opt(
        3.0, "CIEDE2000 above which a pixel counts as changed", flat="diff_merge_threshold", run=False
    )
    open_radius: int = _opt(1, "opening radius (removes changed specks)", flat="diff_merge_open", run=False)
    close_radius: int = _opt(2, "closing radius (fills small holes)", flat="diff_merge_close", run=False)
    grow: int = _opt(8, "dilation of the cleaned change mask (its halo)", flat="diff_merge_grow", run=False)
    band: int = _opt(16, "width of the transition band inside the mask", flat="diff_merge_band", run=False)
    solve_margin: int | None = _opt(
        None,
        "how far beyond a chunk the band is solved (default 4 x band)",
        flat="diff_merge_margin",
        run=False,
    )

    def __post_init__(self) -> None:
        if (
            isinstance(self.threshold, bool)
            or not isinstance(self.threshold, int | float)
            or not self.threshold > 0
        ):
            raise InputError(f"diff-merge threshold must be positive, got {self.threshold!r}")
        for name in ("open_radius", "close_radius", "grow"):
            _int(getattr(self, name), f"diff-merge {name}", minimum=0)
        _int(self.band, "diff-merge band", minimum=1)
        _int(self.solve_margin, "diff-merge solve_margin", minimum=0, none=True)

    @property
    def morphology_reach(self) -> int:
        """How far the cleaned, grown mask depends on the change map (pixels)."""
        return 2 * self.open_radius + 2 * self.close_radius + self.grow

    @property
    def margin(self) -> int:
        """Membrane solve margin beyond a chunk (pixels)."""
        return 4 * self.band if self.solve_margin is None else int(self.solve_margin)

    @property
    def halo(self) -> int:
        """Pixels a chunk task reads beyond its box on every side."""
        return self.margin + self.band + self.morphology_reach + 1


@dataclass(frozen=True)
class MaskOptions:
    """What matters in the image (``mask=``): windows without a masked pixel are skipped."""

    mask: Any = _opt(
        None,
        "a Zarr or image file or an array (non-zero = matters), or a callable taking a thumbnail of the image "
        "(h, w, C) in [0, 1] and returning a boolean (h, w) mask",
    )
    fill: Any = _opt(
        None,
        "what the output holds outside the mask: 'input' (the source; scale 1 and the same channels) or a value "
        "in output units (default: 'input' where allowed, else 0)",
        flat="mask_fill",
    )
    grid: GridMode = _opt(
        "regular",
        "'mask-aware' shifts the grid per axis so that its seams cut as few masked objects as possible",
    )

    def __post_init__(self) -> None:
        _choice(self.grid, get_args(GridMode), "grid")
        fill = self.fill
        if isinstance(fill, str) and fill != "input":
            try:
                fill = float(fill)
            except ValueError:
                raise InputError(f"mask_fill must be 'input' or a number, got {self.fill!r}") from None
            object.__setattr__(self, "fill", fill)
        if (
            fill is not None
            and fill != "input"
            and (isinstance(fill, bool) or not isinstance(fill, int | float))
        ):
            raise InputError(f"mask_fill must be 'input' or a number, got {self.fill!r}")
        if self.grid == "mask-aware" and self.mask is None:
            raise InputError(
                "grid='mask-aware' needs a mask", hint="pass mask= (a file, an array or a callable)"
            )
        if isinstance(self.mask, os.PathLike):
            object.__setattr__(self, "mask", os.fspath(self.mask))


_GROUPS = {
    "source": SourceOptions,
    "model": ModelOptions,
    "tiling": TilingOptions,
    "blend": BlendOptions,
    "reconcile": ReconcileOptions,
    "output": OutputOptions,
    "export": ExportOptions,
    "quality": QualityOptions,
    "execution": ExecutionOptions,
    "labels": LabelOptions,
    "detections": DetectionOptions,
    "probabilities": ProbabilityOptions,
    "diff_merge": DiffMergeOptions,
    "mask": MaskOptions,
}

#: Keywords of ``run()`` that take a whole sub-option (object or dict).
GROUP_KEYWORDS = {
    "execution_options": "execution",
    "source_options": "source",
    "reconcile_options": "reconcile",
    "export_options": "export",
    "quality_options": "quality",
    "label_options": "labels",
    "detection_options": "detections",
    "diff_merge_options": "diff_merge",
}


@dataclass(frozen=True)
class FlatField:
    """One option as ``run()`` and the CLI name it."""

    flat: str
    group: str | None
    name: str
    default: Any
    help: str
    cli: bool
    run: bool
    annotation: Any


@dataclass(frozen=True)
class RunOptions:
    """Every option of a run, validated (see the module notes).

    Build it with :meth:`from_kwargs` (``run()``'s keywords), :meth:`from_mapping` (a parsed
    configuration file) or directly.
    """

    source: SourceOptions = field(default_factory=SourceOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    tiling: TilingOptions = field(default_factory=TilingOptions)
    blend: BlendOptions = field(default_factory=BlendOptions)
    reconcile: ReconcileOptions = field(default_factory=ReconcileOptions)
    output: OutputOptions = field(default_factory=OutputOptions)
    export: ExportOptions = field(default_factory=ExportOptions)
    quality: QualityOptions = field(default_factory=QualityOptions)
    execution: ExecutionOptions = field(default_factory=ExecutionOptions)
    labels: LabelOptions = field(default_factory=LabelOptions)
    detections: DetectionOptions = field(default_factory=DetectionOptions)
    probabilities: ProbabilityOptions = field(default_factory=ProbabilityOptions)
    diff_merge: DiffMergeOptions = field(default_factory=DiffMergeOptions)
    mask: MaskOptions = field(default_factory=MaskOptions)
    thumbnail: int | None = _opt(
        None,
        "longest side of the one thumbnail inference of a run (default: the window, at least 256; at least "
        "1024 with norm_sync='thumbnail')",
    )
    task: str = _opt(
        "image", "what the run produces: image, labels, probabilities, detections or a registered output kind"
    )
    passes: tuple[str, ...] = _opt((), "registered passes to run after blending, in order")

    def __post_init__(self) -> None:
        for name, cls in _GROUPS.items():
            value = getattr(self, name)
            if not isinstance(value, cls):
                object.__setattr__(self, name, _coerce_group(cls, value, name))
        _int(self.thumbnail, "thumbnail", minimum=16, none=True)
        if isinstance(self.passes, str):
            object.__setattr__(self, "passes", (self.passes,))
        object.__setattr__(self, "passes", tuple(self.passes or ()))
        if not all(isinstance(p, str) and p for p in self.passes):
            raise InputError(f"passes must be names of registered passes, got {self.passes!r}")
        if not isinstance(self.task, str) or not self.task:
            raise InputError(f"task must be the name of an output kind, got {self.task!r}")

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_kwargs(cls, base: RunOptions | None = None, **kwargs: Any) -> RunOptions:
        """Options from ``run()``'s flat keywords, on top of ``base`` (default: all defaults).

        Whole sub-options may be given as ``source_options=``, ``reconcile_options=``,
        ``export_options=`` and ``quality_options=`` (objects or dicts); a flat keyword such as
        ``reconcile="offset"`` then still applies on top. ``qa`` may be a folder (the report's).

        Raises
        ------
        tilegraph.errors.InputError
            An unknown keyword or a bad value.
        """
        opts = base or cls()
        table = {f.flat: f for f in flat_fields()}
        groups: dict[str, dict] = {}
        top: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key in GROUP_KEYWORDS:
                if value is None:
                    continue
                group = GROUP_KEYWORDS[key]
                current = getattr(opts, group)
                if isinstance(value, type(current)):
                    opts = replace(opts, **{group: value})
                else:
                    merged = {**_fields_of(current), **_as_dict(value, key, type(current))}
                    opts = replace(opts, **{group: _coerce_group(type(current), merged, key)})
                continue
            if key == "qa" and isinstance(value, str | os.PathLike) and not isinstance(value, bool):
                groups.setdefault("quality", {}).update(enabled=True, report_dir=os.fspath(value))
                continue
            f = table.get(key)
            if f is None:
                raise InputError(f"unknown option {key!r}", hint=f"use one of {', '.join(sorted(table))}")
            if f.group is None:
                top[f.name] = value
            else:
                groups.setdefault(f.group, {})[f.name] = value
        for group, values in groups.items():
            current = getattr(opts, group)
            opts = replace(
                opts, **{group: _coerce_group(type(current), {**_fields_of(current), **values}, group)}
            )
        return replace(opts, **top) if top else opts

    @classmethod
    def from_mapping(cls, data: Mapping, *, origin: str = "configuration") -> RunOptions:
        """Options from a nested mapping (a parsed TOML/YAML file).

        Top-level keys are ``run()``'s keywords (``tile = 1024``); tables named after a group
        (``[reconcile]``, ``[model]``...) hold that group's fields.
        """
        flat: dict[str, Any] = {}
        nested: dict[str, Any] = {}
        for key, value in data.items():
            if key in _GROUPS and isinstance(value, Mapping):
                nested[key] = value
            else:
                flat[key] = value
        opts = cls()
        for group, values in nested.items():
            opts = replace(opts, **{group: _coerce_group(_GROUPS[group], values, f"{origin} [{group}]")})
        try:
            return cls.from_kwargs(opts, **flat)
        except InputError as exc:
            raise InputError(f"{origin}: {exc.message}", hint=exc.hint) from None

    # ----------------------------------------------------------------- views
    def to_dict(self) -> dict:
        """Plain data (JSON-able) for the output's metadata."""

        def plain(v: Any) -> Any:
            if isinstance(v, Mapping):
                return {str(k): plain(x) for k, x in v.items()}
            if isinstance(v, tuple | list):
                return [plain(x) for x in v]
            if v is None or isinstance(v, str | int | float | bool):
                return v
            shape = getattr(v, "shape", None)  # an array (a mask): described, not copied
            if shape is not None:
                return f"<array {tuple(shape)} {getattr(v, 'dtype', '')}>"
            return f"<{getattr(v, '__qualname__', type(v).__name__)}>"  # a callable

        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            is_group = dataclasses.is_dataclass(value) and not isinstance(value, type)
            out[f.name] = (
                plain(_fields_of(value)) if is_group else plain(value)
            )  # asdict cannot copy mappingproxy
        return out

    def flat(self) -> dict[str, Any]:
        """Every option under its ``run()`` keyword."""
        out = {}
        for f in flat_fields():
            holder = self if f.group is None else getattr(self, f.group)
            out[f.flat] = getattr(holder, f.name)
        return out


def _fields_of(obj: Any) -> dict:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _as_dict(value: Any, name: str, cls: type) -> dict:
    if isinstance(value, Mapping):
        return dict(value)
    raise InputError(f"{name} must be a {cls.__name__} or a dict, got {type(value).__name__}")


def _coerce_group(cls: type[S], value: Any, name: str) -> S:
    """A sub-option from an instance or a dict, naming any unknown key."""
    if isinstance(value, cls):
        return value
    data = _as_dict(value, name, cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    aliases = {f.metadata.get("flat"): f.name for f in fields(cls) if f.metadata.get("flat")}  # type: ignore[arg-type]
    clean = {}
    for key, v in data.items():
        key = aliases.get(key, key)
        if key not in known:
            raise InputError(f"unknown {name} option {key!r}", hint=f"use one of {', '.join(sorted(known))}")
        clean[key] = v
    return cls(**clean)


def flat_fields() -> Iterator[FlatField]:
    """Every option as a ``run()`` keyword: group, field, default, help, whether the CLI offers it."""
    for f in fields(RunOptions):
        if f.name in _GROUPS:
            for g in fields(_GROUPS[f.name]):
                default = g.default if g.default is not dataclasses.MISSING else None
                yield FlatField(
                    flat=g.metadata.get("flat") or _default_flat(f.name, g.name),
                    group=f.name,
                    name=g.name,
                    default=default,
                    help=g.metadata.get("help", ""),
                    cli=bool(g.metadata.get("cli", True)),
                    run=bool(g.metadata.get("run", True)),
                    annotation=g.type,
                )
        else:
            yield FlatField(
                flat=f.name,
                group=None,
                name=f.name,
                default=f.default,
                help=f.metadata.get("help", ""),
                cli=bool(f.metadata.get("cli", True)),
                run=bool(f.metadata.get("run", True)),
                annotation=f.type,
            )


def _default_flat(group: str, name: str) -> str:
    """``run()`` keyword of a field without an explicit one: its name, prefixed where ambiguous."""
    prefixed = {
        ("reconcile", "reference"),
        ("reconcile", "strength"),
        ("reconcile", "field"),
        ("reconcile", "sigma"),
        ("reconcile", "anchor_fit"),
        ("reconcile", "anchor"),
        ("export", "compression"),
        ("export", "tile"),
        ("export", "bigtiff"),
        ("quality", "psnr_max_megapixels"),
    }
    return f"{group}_{name}" if (group, name) in prefixed else name


def load_config(path: str | os.PathLike) -> RunOptions:
    """Options from a TOML (``.toml``) or YAML (``.yaml``/``.yml``, needs PyYAML) file.

    Raises
    ------
    tilegraph.errors.InputError
        Missing or unreadable file, unknown keys or bad values (the message names the file).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise InputError(f"cannot read the configuration file: {exc.strerror or exc}", path=path) from None
    lower = path.lower()
    try:
        if lower.endswith(".toml"):
            import tomllib

            data = tomllib.loads(raw.decode("utf-8"))
        elif lower.endswith((".yaml", ".yml")):
            try:
                import yaml
            except ImportError:
                raise InputError(
                    "YAML configuration needs PyYAML", path=path, hint="pip install pyyaml, or use TOML"
                ) from None
            data = yaml.safe_load(raw) or {}
        else:
            raise InputError("configuration files are .toml, .yaml or .yml", path=path)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot parse the configuration file: {exc}", path=path) from None
    if not isinstance(data, Mapping):
        raise InputError("the configuration file must hold a table of options", path=path)
    return RunOptions.from_mapping(data, origin=path)
