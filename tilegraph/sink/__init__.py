"""Sinks: the :class:`Sink` contract, its registry, Zarr v3 and OME-Zarr output, TIFF/PNG/JPEG exports.

:func:`sink_for` picks the sink by the destination's suffix; a destination without a suffix, or
ending in ``.zarr``, is a Zarr v3 array. Another suffix that no sink claims is refused, with the
list of supported ones (nothing is written under a name that promises another format).
"""

from __future__ import annotations

import os

from tilegraph.errors import DestinationError
from tilegraph.options import ExportOptions
from tilegraph.registry import Registry
from tilegraph.sink.abc import ChunkWriter, FinishTask, OutputLayout, Sink
from tilegraph.sink.zarr_sink import create_output, mark_complete, output_layout, remove_path, same_location

__all__ = [
    "SINKS",
    "ChunkWriter",
    "FinishTask",
    "OutputLayout",
    "Sink",
    "create_output",
    "mark_complete",
    "output_layout",
    "register_sink",
    "remove_path",
    "same_location",
    "sink_for",
]


#: Sinks by name (built-in, registered, and from the ``tilegraph.sinks`` entry points).
SINKS: Registry[type[Sink]] = Registry(
    "sink",
    "tilegraph.sinks",
    {
        "zarr": "tilegraph.sink.builtin:ZarrSink",
        "tiff": "tilegraph.sink.builtin:TiffSink",
        "raster": "tilegraph.sink.builtin:RasterSink",
        "table": "tilegraph.sink.table_sink:TableSink",
        "ome-zarr": "tilegraph.sink.omezarr:OmeZarrSink",
    },
    base=Sink,
)

#: Register a :class:`Sink` subclass (its :attr:`~Sink.suffixes` select it); returns ``cls``.
register_sink = SINKS.add


def _suffix(destination: str) -> str:
    name = destination.rstrip("/").rsplit("/", 1)[-1]
    return os.path.splitext(name)[1].lower()


def sink_for(destination: str, options: ExportOptions | None = None) -> Sink:
    """The sink that writes ``destination``, chosen by its suffix (longest match first).

    Raises
    ------
    tilegraph.errors.DestinationError
        A suffix no sink writes; the message lists the supported ones.
    """
    dest = os.fspath(destination).removeprefix("file://")
    lower = dest.rstrip("/").lower()
    classes = [SINKS.get(name) for name in SINKS.names()]
    matches = [(len(s), cls) for cls in classes for s in cls.suffixes if lower.endswith(s)]
    if matches:
        return max(matches, key=lambda m: m[0])[1](dest, options)
    if not _suffix(dest):
        return SINKS.get("zarr")(dest, options)
    supported = sorted({s for cls in classes for s in cls.suffixes})
    raise DestinationError(
        f"no sink writes {_suffix(dest)!r} files",
        path=dest,
        hint=f"use one of {', '.join(supported)} (or a folder name without a suffix for Zarr)",
    )
