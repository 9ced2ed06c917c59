"""Free space: a run refuses to start when the file systems it writes lack what the plan estimates.

The tile store is counted exactly (uncompressed), the staged source by its pixels, the output
uncompressed (an upper bound: ``check_space=False`` lets a run whose output compresses well go), float32
intermediates when passes follow the blend; a resumed run counts only what is left.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from tilegraph.errors import InsufficientSpaceError
from tilegraph.plan.plan import Plan
from tilegraph.sink.safety import local_path

__all__ = ["SpaceNeed", "check_free_space", "space_needs"]


@dataclass(frozen=True)
class SpaceNeed:
    """Bytes one run still has to write on one file system."""

    path: str
    parts: tuple[tuple[str, int], ...]

    @property
    def nbytes(self) -> int:
        return int(sum(n for _, n in self.parts))


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def space_needs(
    *,
    plan: Plan,
    layout,
    tile_store: bool,
    staged_source: int,
    exports: bool,
    passes: int,
    scratch_parent: str,
    destination: str,
    fraction: tuple[float, float] = (1.0, 1.0),
) -> list[tuple[str, str, int]]:
    """``(what, where, bytes)`` a run writes, from the plan's disk estimate.

    The tile store (exact: uncompressed), the staged source, the output counted uncompressed (beside
    the destination, or in scratch then exported), and float32 intermediates when passes follow the
    blend. ``fraction`` scales what is left to do on resume: ``(windows, chunks)``.
    """
    import numpy as np

    fw, fc = fraction
    out: list[tuple[str, str, int]] = []
    if tile_store:
        out.append(("tile store", scratch_parent, int(plan.estimates()["tile_store_bytes"] * fw)))
    if staged_source:
        out.append(("staged source", scratch_parent, int(staged_source)))
    if layout is not None:
        cells = int(np.prod(layout.full_dims(*layout.shape)))
        size = cells * np.dtype(layout.dtype).itemsize
        if exports:
            out.append(("output (Zarr before export)", scratch_parent, int(size * fc)))
            out.append(("exported file", destination, int(size)))
        else:
            out.append(("output", destination, int(size * fc)))
        if passes:
            out.append(("blend and pass intermediates", scratch_parent, int(cells * 4 * passes)))
    return out


def check_free_space(needs: list[tuple[str, str, int]], *, margin: float = 1.05) -> list[SpaceNeed]:
    """Refuse a run when the file systems it writes lack the space it needs.

    Parameters
    ----------
    needs
        ``(what, path, bytes)`` per thing the run will write (tile store, output, staged source...);
        URLs are skipped (their space is not known here).
    margin
        Factor on the sum (metadata, partially written chunks).

    Returns
    -------
    list of SpaceNeed
        One per file system (by device), what was checked.

    Raises
    ------
    InsufficientSpaceError
        Saying how much is needed on which file system, and how much is free.
    """
    by_dev: dict[int, tuple[str, list[tuple[str, int]]]] = {}
    for what, path, nbytes in needs:
        local = local_path(path)
        if local is None or nbytes <= 0:
            continue
        where = _existing(local)
        dev = os.stat(where).st_dev
        by_dev.setdefault(dev, (where, []))[1].append((what, int(nbytes)))
    out = []
    for where, parts in by_dev.values():
        need = SpaceNeed(where, tuple(parts))
        free = shutil.disk_usage(where).free
        if need.nbytes * margin > free:
            listed = ", ".join(f"{what} {_gib(n)}" for what, n in parts)
            raise InsufficientSpaceError(
                f"the run needs about {_gib(need.nbytes * margin)} on this file system ({listed}, plus 5 %) "
                f"but only {_gib(free)} is free",
                path=where,
                hint="free space, give scratch= another disk, or pass check_space=False if the output "
                "compresses well (the output is counted uncompressed)",
            )
        out.append(need)
    return out
