"""Output kinds beyond blended pixel maps (issue 14): pure algorithms, ready for the output-kind contract.

* :mod:`tilegraph.outputs.labels`: instance labels made globally unique and merged across seams
  (overlap matching, union-find over small tables, per-chunk relabel);
* :mod:`tilegraph.outputs.detections`: per-window boxes to image coordinates, cut boxes dropped,
  NMS / NMM with IoU or IoS on a spatial grid, structured-array output with CSV / Parquet writers;
* :mod:`tilegraph.outputs.diffmerge`: change mask in CIELAB, bit-identical unchanged pixels and a
  gradient-domain band, chunk by chunk with a halo;
* :mod:`tilegraph.outputs.maskgrid`: grid offsets that cut the fewest masked objects, and the windows
  touching the mask.
"""

from __future__ import annotations

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
