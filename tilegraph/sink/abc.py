"""The :class:`Sink` contract: one entry point that writes a run's output by destination.

A sink is chosen by the destination's suffix (:func:`tilegraph.sink.sink_for`): ``.zarr`` (or no
suffix) writes Zarr v3 directly; ``.tif``/``.png``/``.jpg`` write a Zarr in the run's scratch space
and export it in one final task. Sinks register like blend modes (``tilegraph.sinks`` entry points,
:func:`tilegraph.sink.register_sink`).

The engine calls, in order:

1. :meth:`Sink.check` before any work (the destination is not the source, may be replaced...);
2. :meth:`Sink.validate` once the output's geometry is known (a 16-bit JPEG is refused then, not
   after hours of inference);
3. :meth:`Sink.create`, which returns a picklable :class:`ChunkWriter` that tasks use to write
   each output box once;
4. :meth:`Sink.finish` after every box is written, which marks the output complete and returns an
   optional :class:`FinishTask` (an export) that the engine runs as one task;
5. :meth:`Sink.open_result` for what :attr:`tilegraph.RunResult.output` holds.

Before :meth:`Sink.create` the engine may set :attr:`Sink.staging`: the temporary name beside the
destination where the output is written, to be renamed into place once complete (file systems), so
that no reader ever sees a partial output. A resumed run asks :meth:`Sink.reopen` for the output
an interrupted run created, instead of creating it again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from tilegraph.metadata import SourceMetadata
from tilegraph.options import ExportOptions

__all__ = ["OutputLayout", "ChunkWriter", "Sink", "FinishTask"]

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class OutputLayout:
    """What an output holds: extent, channels, dtype, axis order, chunks and shards.

    Attributes
    ----------
    shape : tuple of int
        ``(rows, cols)`` in output pixels.
    channels : int
    dtype : str
    layout : {"YX", "YXC", "CYX"}
    chunks : tuple of int
        Chunk extent ``(rows, cols)``.
    shards : tuple of int or None
        Shard extent, a multiple of ``chunks``; each shard is then written by one task.
    alpha : bool
        The last channel is the source's alpha, passed around the model.
    """

    shape: tuple[int, int]
    channels: int
    dtype: str
    layout: str
    chunks: tuple[int, int]
    shards: tuple[int, int] | None = None
    alpha: bool = False

    def full_dims(self, rows: int, cols: int) -> tuple[int, ...]:
        """Array dimensions of a ``rows`` x ``cols`` region in this layout."""
        if self.layout == "YX":
            return (rows, cols)
        if self.layout == "CYX":
            return (self.channels, rows, cols)
        return (rows, cols, self.channels)


class ChunkWriter(ABC):
    """Writes boxes of one output array; small and picklable (sent to every task).

    :meth:`write` converts once to the output dtype (rounding and clipping happen here and
    nowhere else) and returns how many values were clipped.
    """

    path: str
    layout: OutputLayout

    @abstractmethod
    def write(self, box: Box, block: np.ndarray, *, integer_scaled: bool = True) -> int:
        """Write ``block`` ``(rows, cols, C)`` at ``box``; returns the number of clipped values.

        ``block`` is float in the model's units (integers as ``[0, 1]`` when ``integer_scaled``) or
        already in the output dtype.
        """

    @abstractmethod
    def read(self, box: Box) -> np.ndarray:
        """The written values at ``box`` as ``(rows, cols, C)`` in the output dtype."""


@dataclass(frozen=True)
class FinishTask:
    """A final step a sink needs (an export), run by the engine as one task.

    ``fn(*args)`` returns the path of the finished output.
    """

    fn: Callable[..., str]
    args: tuple
    label: str = "export"

    def __call__(self) -> str:
        return self.fn(*self.args)


class Sink(ABC):
    """Writes one destination (see the module notes).

    Parameters
    ----------
    destination
        Path or URL.
    options
        Export options (TIFF compression, JPEG quality...); Zarr sinks ignore them.
    """

    name: ClassVar[str] = ""
    #: Destination suffixes this sink writes (lower case, with the dot).
    suffixes: ClassVar[tuple[str, ...]] = ()
    #: The sink writes tables (:meth:`write_table`: rows such as detections), not arrays.
    holds_tables: ClassVar[bool] = False
    #: Where the output is written before it is published (set by the engine), ``None``: in place.
    staging: str | None = None

    def __init__(self, destination: str, options: ExportOptions | None = None) -> None:
        self.destination = destination
        self.options = options if options is not None else ExportOptions()

    @abstractmethod
    def check(self, *, source_path: str | None, overwrite: bool) -> None:
        """Refuse, before any work, a destination that is the source or exists without ``overwrite``."""

    def validate(self, out: OutputLayout, metadata: SourceMetadata) -> None:
        """Refuse an output this sink cannot hold (format limits), before any inference."""
        return None

    @abstractmethod
    def create(
        self,
        out: OutputLayout,
        *,
        attrs: dict,
        metadata: SourceMetadata,
        scratch: str,
        source_path: str | None,
        overwrite: bool,
    ) -> ChunkWriter:
        """Create the (empty, incomplete) output and return its writer."""

    def derived(self, writer: ChunkWriter) -> tuple[tuple[str, ChunkWriter], ...]:
        """Arrays computed from the output once it is written (pyramid levels), each from the previous one.

        Each entry is ``(pass name, target writer)``: the engine runs that registered
        :class:`~tilegraph.passes.abc.Pass` chunk-wise from the previous array (the output first) into
        the target, before :meth:`finish`. Default: none.
        """
        return ()

    def reopen(
        self, out: OutputLayout, *, attrs: dict, metadata: SourceMetadata, scratch: str
    ) -> ChunkWriter | None:
        """The writer of the output an interrupted run created (``resume=True``), or ``None`` if unusable.

        The default cannot reopen anything: the engine then creates the output again and rewrites
        every box.
        """
        return None

    @abstractmethod
    def finish(self, writer: ChunkWriter, final: dict) -> FinishTask | None:
        """Mark the output complete with the ``final`` attributes; an export step if one follows."""

    @abstractmethod
    def open_result(self, path: str) -> Any:
        """What the run returns as its output (a read-only array or the file's path)."""

    def write_table(self, table: np.ndarray, *, attrs: dict, overwrite: bool) -> str | None:
        """Write a structured array as the destination (sinks with :attr:`holds_tables`); its path."""
        from tilegraph.errors import DestinationError

        raise DestinationError(
            "this destination holds an image, the run's output is a table",
            path=self.destination,
            hint="use a .csv or .parquet destination, or None (rows in the run's result only)",
        )

    @property
    def exports(self) -> bool:
        """Whether the destination is written by a final export (the chunks go to scratch space)."""
        return False
