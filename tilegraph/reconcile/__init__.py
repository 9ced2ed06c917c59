"""Reconcile: colour consistency across windows (APT): overlap statistics, one global solve.

* :mod:`tilegraph.reconcile.stats`: small per-window and per-pair sufficient statistics;
* :mod:`tilegraph.reconcile.solve`: :func:`solve_global` (robust sparse least squares, anchored) and the
  sequential APT baseline :func:`solve_sequential`;
* :mod:`tilegraph.reconcile.apply`: :class:`Corrections` applied per window before blending, or as a
  smooth field between window centres;
* :mod:`tilegraph.reconcile.reference`: one window's part of the thumbnail reference (``reference="auto"``
  is chosen by :func:`tilegraph.quality.reference.choose_reference`, a measurement).

Windows that agree in their overlaps are never corrected; :data:`RECOMMENDED` holds the solve options
measured best against whole-image inference.
"""

from tilegraph.reconcile.apply import Corrections, FieldCorrections
from tilegraph.reconcile.reference import reference_region, thumbnail_sigma
from tilegraph.reconcile.solve import RECOMMENDED, solve_global, solve_sequential
from tilegraph.reconcile.stats import PairStats, TileStats, WindowStats, pairs_from_windows, window_stats

__all__ = [
    "Corrections",
    "FieldCorrections",
    "PairStats",
    "RECOMMENDED",
    "reference_region",
    "thumbnail_sigma",
    "TileStats",
    "WindowStats",
    "pairs_from_windows",
    "solve_global",
    "solve_sequential",
    "window_stats",
]
