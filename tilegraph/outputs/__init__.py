"""Output kinds (``run(..., task=...)``): the :class:`OutputKind` contract, its registry and the built-in kinds.

Built in: ``image`` (blended pixels, :mod:`tilegraph.outputs.image`), ``labels`` (instance labels
stitched across windows, :mod:`tilegraph.outputs.labels_kind`), ``probabilities`` (per-class
probabilities blended, optional argmax and coarse-to-fine, :mod:`tilegraph.outputs.probabilities`)
and ``detections`` (boxes merged across windows, :mod:`tilegraph.outputs.detections_kind`).

The pure algorithms behind them are importable from here too (loaded on first use, so that
``import tilegraph`` stays light):

* :mod:`tilegraph.outputs.labels`: instance labels made globally unique and merged across seams
  (overlap matching, union-find over small tables, per-chunk relabel);
* :mod:`tilegraph.outputs.detections`: per-window boxes to image coordinates, cut boxes dropped,
  NMS / NMM with IoU or IoS on a spatial grid, structured-array output with CSV / Parquet writers;
* :mod:`tilegraph.outputs.diffmerge`: change mask in CIELAB, bit-identical unchanged pixels and a
  gradient-domain band, chunk by chunk with a halo (the ``diff_merge=True`` pass);
* :mod:`tilegraph.outputs.maskgrid`: grid offsets that cut the fewest masked objects, and the windows
  touching the mask (``mask=``, ``grid="mask-aware"``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tilegraph.outputs.abc import Assembly, KindResult, OutputKind, Step, WindowContext
from tilegraph.registry import Registry

if TYPE_CHECKING:
    from tilegraph.outputs.detections import (
        CANDIDATE_DTYPE,
        DETECTION_DTYPE,
        Detections,
        as_detections,
        merge_detections,
        window_candidates,
        write_detections,
    )
    from tilegraph.outputs.diffmerge import DiffMergeOptions, diff_merge, halo_box, merge_chunk
    from tilegraph.outputs.labels import (
        MATCH_DTYPE,
        LabelResolution,
        WindowLabels,
        assemble_chunk,
        match_windows,
        neighbour_pairs,
        prepare_window,
        resolve_labels,
    )
    from tilegraph.outputs.maskgrid import MaskGrid, choose_grid, shifted_plan, windows_touching

__all__ = [
    "KINDS",
    "Assembly",
    "KindResult",
    "OutputKind",
    "Step",
    "WindowContext",
    "get_kind",
    "register_kind",
    # algorithms (lazy)
    "CANDIDATE_DTYPE",
    "DETECTION_DTYPE",
    "Detections",
    "as_detections",
    "merge_detections",
    "window_candidates",
    "write_detections",
    "DiffMergeOptions",
    "diff_merge",
    "halo_box",
    "merge_chunk",
    "MATCH_DTYPE",
    "LabelResolution",
    "WindowLabels",
    "assemble_chunk",
    "match_windows",
    "neighbour_pairs",
    "prepare_window",
    "resolve_labels",
    "MaskGrid",
    "choose_grid",
    "shifted_plan",
    "windows_touching",
]

_LAZY = {
    **dict.fromkeys(
        (
            "CANDIDATE_DTYPE",
            "DETECTION_DTYPE",
            "Detections",
            "as_detections",
            "merge_detections",
            "window_candidates",
            "write_detections",
        ),
        "detections",
    ),
    **dict.fromkeys(("DiffMergeOptions", "diff_merge", "halo_box", "merge_chunk"), "diffmerge"),
    **dict.fromkeys(
        (
            "MATCH_DTYPE",
            "LabelResolution",
            "WindowLabels",
            "assemble_chunk",
            "match_windows",
            "neighbour_pairs",
            "prepare_window",
            "resolve_labels",
        ),
        "labels",
    ),
    **dict.fromkeys(("MaskGrid", "choose_grid", "shifted_plan", "windows_touching"), "maskgrid"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tilegraph.outputs' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tilegraph.outputs.{module}"), name)


#: Output kinds by name (built-in, registered, and from the ``tilegraph.outputs`` entry points).
KINDS: Registry[type[OutputKind]] = Registry(
    "output kind",
    "tilegraph.outputs",
    {
        "image": "tilegraph.outputs.image:ImageKind",
        "labels": "tilegraph.outputs.labels_kind:LabelsKind",
        "probabilities": "tilegraph.outputs.probabilities:ProbabilitiesKind",
        "detections": "tilegraph.outputs.detections_kind:DetectionsKind",
    },
    base=OutputKind,
)

#: Register an :class:`OutputKind` subclass under ``name`` (default ``cls.name``); returns ``cls``.
register_kind = KINDS.add


def get_kind(name: str) -> OutputKind:
    """A new instance of the output kind registered as ``name``."""
    return KINDS.get(name)()
