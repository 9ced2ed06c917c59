"""Tables (``.csv``, ``.parquet``): what a run writes when its output is rows, not pixels (detections).

:class:`TableSink` is chosen by suffix like every sink; it refuses an image output up front, and
writes the kind's structured array once, at the end (:meth:`TableSink.write_table`), through a
temporary name. A destination of ``None`` writes no file (the rows are in the run's result).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from tilegraph.errors import DestinationError, InputError
from tilegraph.metadata import SourceMetadata
from tilegraph.sink.abc import ChunkWriter, FinishTask, OutputLayout, Sink
from tilegraph.sink.zarr_sink import same_location

__all__ = ["TABLE_SUFFIXES", "TableSink", "write_table"]

TABLE_SUFFIXES = (".csv", ".parquet")


def write_table(
    path: str | os.PathLike,
    columns: Mapping[str, np.ndarray],
    *,
    attrs: Mapping | None = None,
    overwrite: bool = False,
    formats: Mapping[str, str] | None = None,
) -> str:
    """Write equal-length columns to ``.csv`` (a header, then one row each) or ``.parquet`` (pyarrow).

    ``attrs`` go into the Parquet schema's metadata (key ``tilegraph``, JSON); ``formats`` gives a
    ``printf`` format per CSV column (default ``%.17g`` for floats, ``%d`` for integers). The file is
    written under a temporary name and renamed.

    Raises
    ------
    DestinationError
        Unknown suffix, an existing file without ``overwrite``, or ``.parquet`` without pyarrow.
    """
    p = os.fspath(path)
    suffix = os.path.splitext(p)[1].lower()
    if suffix not in TABLE_SUFFIXES:
        raise DestinationError(
            f"cannot write a table as {suffix or 'a file without suffix'}",
            path=p,
            hint="use a .csv or .parquet destination",
        )
    if os.path.exists(p) and not overwrite:
        raise DestinationError(
            "destination exists", path=p, hint="pass overwrite=True or choose another path"
        )
    names = list(columns)
    arrays = [np.asarray(columns[n]) for n in names]
    tmp = p + ".partial"
    if suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise DestinationError(
                "writing .parquet needs pyarrow, which is not installed",
                path=p,
                hint="pip install pyarrow, or write a .csv destination",
            ) from None
        table = pa.table(dict(zip(names, arrays, strict=True)))
        if attrs:
            table = table.replace_schema_metadata({"tilegraph": json.dumps(dict(attrs), default=str)})
        pq.write_table(table, tmp)
        os.replace(tmp, p)
        return p
    fmt = dict(formats or {})
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(",".join(names) + "\n")
        n = arrays[0].shape[0] if arrays else 0
        if n:
            cols = np.empty((n, len(names)), object)
            for c, a in enumerate(arrays):
                cols[:, c] = a.tolist()
            spec = [
                fmt.get(name, "%d" if a.dtype.kind in "iub" else "%.17g")
                for name, a in zip(names, arrays, strict=True)
            ]
            np.savetxt(fh, cols, fmt=spec, delimiter=",")
    os.replace(tmp, p)
    return p


class TableSink(Sink):
    """A ``.csv`` or ``.parquet`` table (see the module notes); an empty destination writes nothing."""

    name: ClassVar[str] = "table"
    suffixes: ClassVar[tuple[str, ...]] = TABLE_SUFFIXES
    holds_tables: ClassVar[bool] = True

    def check(self, *, source_path: str | None, overwrite: bool) -> None:
        if not self.destination:
            return
        if same_location(self.destination, source_path):
            raise DestinationError(
                "destination is the source itself", path=self.destination, hint="write to a new path"
            )
        if os.path.exists(self.destination) and not overwrite:
            raise DestinationError(
                "destination exists", path=self.destination, hint="pass overwrite=True or choose a new path"
            )

    def _refuse(self) -> DestinationError:
        return DestinationError(
            "a .csv or .parquet destination holds a table (task='detections'), not an image",
            path=self.destination,
            hint="write images to .zarr, .tif, .png or .jpg",
        )

    def validate(self, out: OutputLayout, metadata: SourceMetadata) -> None:
        raise self._refuse()

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
        raise self._refuse()

    def finish(self, writer: ChunkWriter, final: dict) -> FinishTask | None:
        return None

    def open_result(self, path: str) -> Any:
        return path

    def write_table(self, table: np.ndarray, *, attrs: dict, overwrite: bool) -> str | None:
        if not self.destination:
            return None
        if table.dtype.names is None:
            raise InputError("a table is a structured array")
        columns = {n: np.asarray(table[n]) for n in table.dtype.names}
        formats = {n: "%.9g" for n in table.dtype.names if table.dtype[n] == np.float32}
        return write_table(self.destination, columns, attrs=attrs, overwrite=overwrite, formats=formats)
