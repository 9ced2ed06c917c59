"""Publication: an output looks complete only when it is (issue 10, point 3).

File systems (local, NFS, Lustre)
    The Zarr output is written under a temporary name in the destination's sidecar folder,
    ``<destination>.tilegraph/staging-<run>`` (same file system, so a rename is atomic), gets its
    completion marker there, and :func:`publish` renames it to the destination at the very end. Plain
    ``zarr.open`` and ``dask.array.from_zarr`` on the destination therefore find nothing (a missing
    path) or the whole, marked output; never a partial array with missing chunks read as zeros.
    A previous tilegraph output at the destination (``overwrite=True``) stays readable until then: it is
    renamed aside, the new output renamed in, and the old one deleted; between the two renames the
    destination is briefly absent, never partial. Anything else found at the destination at that moment
    is refused and the finished output is left in the staging folder, with its path in the error.

Object stores (``s3://``, ``gs://``, ... any fsspec URL)
    Renames are copies there, neither atomic nor cheap, so the output is written in place
    (:func:`staging_path` returns the destination itself) and the **completion marker**
    ``attributes["tilegraph"]["complete"] = True`` stays the rule: tilegraph's own readers refuse an
    output without it, and other readers must check it. A plain Zarr reader can open a half-written
    output on an object store and see missing chunks as the fill value.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid

from tilegraph.errors import DestinationError, SinkError
from tilegraph.sink.safety import (
    _zarr_node_problem,
    check_replaceable,
    join,
    local_path,
    read_json,
    sidecar_path,
)

__all__ = [
    "uses_rename",
    "staging_path",
    "find_staging",
    "adopt_staging",
    "publish",
    "is_complete",
    "STAGING_PREFIX",
    "REPLACED_PREFIX",
]

#: Name prefix of staging folders inside a destination's sidecar.
STAGING_PREFIX = "staging-"
#: Name prefix of a previous output moved aside during :func:`publish`.
REPLACED_PREFIX = "replaced-"


def uses_rename(destination: str | os.PathLike) -> bool:
    """True when ``destination`` is on a file system (staged and renamed); False for other URLs."""
    return local_path(destination) is not None


def staging_path(destination: str | os.PathLike, *, run_id: str | None = None) -> str:
    """Where a run writes its Zarr output before :func:`publish`.

    ``<destination>.tilegraph/staging-<run_id>`` on a file system (the sidecar folder is created);
    the destination itself for an object-store URL (see the module notes).
    """
    dest = os.fspath(destination)
    if not uses_rename(dest):
        return dest
    side = sidecar_path(dest)
    os.makedirs(side, exist_ok=True)
    return os.path.join(side, STAGING_PREFIX + (run_id or "current"))


def find_staging(destination: str | os.PathLike) -> list[str]:
    """Staging folders present in ``destination``'s sidecar (newest first)."""
    dest = os.fspath(destination)
    if not uses_rename(dest):
        return []
    side = sidecar_path(dest)
    try:
        names = [n for n in os.listdir(side) if n.startswith(STAGING_PREFIX)]
    except FileNotFoundError:
        return []
    paths = [os.path.join(side, n) for n in names if os.path.isdir(os.path.join(side, n))]
    return sorted(paths, key=lambda p: os.stat(p).st_mtime, reverse=True)


def adopt_staging(previous: str, destination: str | os.PathLike, *, run_id: str) -> str:
    """Rename a previous run's staging folder to this run's name (on resume); returns the new path.

    A run that was judged dead but was only frozen keeps writing to its own, now missing, path,
    never into this run's output.

    Raises
    ------
    DestinationError
        ``previous`` is not a staging folder of ``destination``.
    """
    dest = os.fspath(destination)
    new = staging_path(dest, run_id=run_id)
    if not uses_rename(dest) or previous == new:
        return new
    prev = os.path.abspath(previous)
    if os.path.dirname(prev) != sidecar_path(dest) or not os.path.basename(prev).startswith(STAGING_PREFIX):
        raise DestinationError(
            "not a staging folder of this destination",
            path=previous,
            hint="resume cannot reuse it; start over",
        )
    os.rename(prev, new)
    return new


def is_complete(path: str | os.PathLike) -> bool:
    """True when the Zarr at ``path`` carries tilegraph's completion marker."""
    meta = read_json(join(os.fspath(path), "zarr.json"))
    tg = ((meta or {}).get("attributes") or {}).get("tilegraph")
    return isinstance(tg, dict) and tg.get("complete") is True


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def publish(
    staging: str | os.PathLike,
    destination: str | os.PathLike,
    *,
    source_path: str | os.PathLike | list | None = None,
    overwrite: bool = False,
    require_complete: bool = True,
) -> str:
    """Move a finished staging output to ``destination`` in one rename (see the module notes).

    Call it after the completion marker is written into the staging output, by the claim holder
    (:func:`tilegraph.sink.claim.assert_holder` first).

    Parameters
    ----------
    staging
        The staging folder (:func:`staging_path`).
    destination
        The final path.
    source_path
        The source, which is never replaced (checked again here).
    overwrite
        Replace a previous tilegraph output or an empty folder found at ``destination``.
    require_complete
        Refuse a staging output without the completion marker.

    Returns
    -------
    str
        The destination path.

    Raises
    ------
    DestinationError
        Something that is not a previous tilegraph output appeared at the destination (or anything,
        without ``overwrite``): the finished output stays in ``staging``, named in the error.
    SinkError
        The staging output is missing, not tilegraph's, incomplete, or a rename failed.
    """
    dest = os.fspath(destination)
    stage = os.fspath(staging)
    if not uses_rename(dest):
        if stage.rstrip("/") != dest.rstrip("/"):
            raise SinkError("object-store outputs are written in place, not staged", path=dest)
        return dest
    dest = os.path.abspath(dest)
    stage = os.path.abspath(stage)
    problem, tg = _zarr_node_problem(stage)
    if problem is not None:
        raise SinkError(f"the staging output cannot be published: {problem}", path=stage)
    if require_complete and not (isinstance(tg, dict) and tg.get("complete") is True):
        raise SinkError(
            "the staging output has no completion marker",
            path=stage,
            hint="write the completion marker first",
        )
    try:
        state = check_replaceable(dest, source_path=source_path, overwrite=overwrite)
    except DestinationError as exc:
        raise DestinationError(
            f"{exc.message}; the finished output was kept at {stage}",
            path=dest,
            hint=f"move {stage} where you want it (it is a complete Zarr array)",
        ) from exc
    parent = os.path.dirname(dest)
    aside = None
    if state.exists:
        aside = os.path.join(sidecar_path(dest), f"{REPLACED_PREFIX}{uuid.uuid4().hex[:12]}")
        os.rename(dest, aside)
    try:
        os.rename(stage, dest)
    except OSError as exc:
        if aside is not None:
            with contextlib.suppress(OSError):
                os.rename(aside, dest)
        if isinstance(exc, FileExistsError | IsADirectoryError | NotADirectoryError) or exc.errno in (
            errno.ENOTEMPTY,
            errno.EEXIST,
        ):
            raise DestinationError(
                f"something appeared at the destination while publishing; the finished output was kept at {stage}",
                path=dest,
                hint=f"move {stage} where you want it (it is a complete Zarr array)",
            ) from exc
        raise SinkError(f"cannot publish the output: {exc.strerror or exc}", path=dest) from exc
    _fsync_dir(parent)
    if aside is not None:
        if state.kind == "tilegraph-file" or not os.path.isdir(aside):
            os.unlink(aside)
        else:
            shutil.rmtree(aside)
    return dest
