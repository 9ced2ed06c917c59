"""Zarr v3 output: creation with refusal rules, provenance attributes and the completion marker.

A run creates the array with ``attrs["tilegraph"]["complete"] = False`` and sets it to ``True``
last, after every chunk is written; tilegraph's readers refuse an output without the marker.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from tilegraph.errors import DestinationError, SinkError

__all__ = [
    "create_output",
    "mark_complete",
    "same_location",
    "remove_path",
    "output_layout",
    "write_every_chunk",
]


def _local(path: str) -> str | None:
    if "://" in path and not path.startswith("file://"):
        return None
    return os.path.realpath(path.removeprefix("file://"))


def same_location(a: str | None, b: str | None) -> bool:
    """True when two paths or URLs name the same place."""
    if a is None or b is None:
        return False
    la, lb = _local(str(a)), _local(str(b))
    if la is not None and lb is not None:
        return la == lb
    return str(a).rstrip("/") == str(b).rstrip("/")


def remove_path(path: str) -> None:
    """Delete a local directory/file or an fsspec URL tree, if present."""
    local = _local(path)
    if local is not None:
        if os.path.isdir(local):
            shutil.rmtree(local)
        elif os.path.exists(local):
            os.remove(local)
        return
    import fsspec

    fs, root = fsspec.core.url_to_fs(path)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def exists(path: str) -> bool:
    """Does anything exist at ``path``?"""
    local = _local(path)
    if local is not None:
        return os.path.exists(local)
    import fsspec

    fs, root = fsspec.core.url_to_fs(path)
    return fs.exists(root)


def output_layout(source_layout: str, channels: int) -> str:
    """Output axis order: the source's, unless a 2-D source gains channels."""
    if source_layout == "YX" and channels != 1:
        return "YXC"
    return source_layout


def create_output(
    path: str,
    *,
    shape: tuple[int, int],
    channels: int,
    dtype,
    chunks: tuple[int, int],
    layout: str,
    shards: tuple[int, int] | None = None,
    attrs: dict,
    extra_attrs: dict | None = None,
    source_path: str | None = None,
    overwrite: bool = False,
    compressors="auto",
    dimension_names: tuple[str, ...] | None = None,
):
    """Create the output array (refusing the source itself and, without ``overwrite``, anything existing).

    With ``overwrite``, only a previous tilegraph output or an empty folder is removed
    (:func:`tilegraph.sink.safety.remove_previous_output`); anything else is refused.

    Raises
    ------
    DestinationError
        The destination is, holds or lies inside the source; or exists and ``overwrite`` is False;
        or holds something tilegraph did not write.
    """
    import zarr

    from tilegraph.sink.safety import remove_previous_output

    if same_location(path, source_path):
        raise DestinationError(
            "destination is the source itself",
            path=path,
            hint="write to a new path; sources are never overwritten",
        )
    if exists(path):
        if not overwrite:
            raise DestinationError(
                "destination exists", path=path, hint="pass overwrite=True or choose a new path"
            )
        remove_previous_output(path, source_path=source_path)
    h, w = shape
    if shards is not None and (shards[0] % chunks[0] or shards[1] % chunks[1]):
        raise DestinationError(
            f"shards {shards} must be a multiple of chunks {chunks}",
            path=path,
            hint="pick shards = k * chunks",
        )

    def full_dims(cy, cx):
        if layout == "YX":
            return (cy, cx)
        if layout == "CYX":
            return (channels, cy, cx)
        return (cy, cx, channels)

    full, chunk = full_dims(h, w), full_dims(*chunks)
    shard = None if shards is None else full_dims(*shards)
    try:
        arr = zarr.create_array(
            store=path,
            shape=full,
            chunks=chunk if shard else tuple(min(c, s) for c, s in zip(chunk, full, strict=True)),
            shards=shard,
            dtype=np.dtype(dtype),
            fill_value=0,
            compressors=compressors,
            dimension_names=dimension_names,
            attributes={**(extra_attrs or {}), "tilegraph": {**attrs, "complete": False, "layout": layout}},
        )
    except OSError as exc:
        raise SinkError(f"cannot create the output: {exc.strerror or exc}", path=path) from exc
    return arr


def mark_complete(path: str, extra: dict) -> None:
    """Write the completion marker (last step of a run)."""
    import zarr

    arr = zarr.open_array(path, mode="r+")
    recorded = arr.attrs.get("tilegraph", {})
    meta = dict(recorded) if isinstance(recorded, dict) else {}
    meta.update(extra)
    meta["complete"] = True
    arr.attrs["tilegraph"] = meta


def write_every_chunk(array):
    """``array`` writing chunks equal to the fill value too.

    zarr skips such chunks by default, comparing every element first; writing them keeps "the chunk
    exists" meaning "it was written" and saves the comparison.
    """
    with_config = getattr(array, "with_config", None)
    return with_config({"write_empty_chunks": True}) if with_config is not None else array
