"""The built-in sinks: Zarr v3, and TIFF/PNG/JPEG exports, on the :class:`~tilegraph.sink.abc.Sink` contract."""

from __future__ import annotations

import os
import threading
from typing import Any, ClassVar

import numpy as np

from tilegraph._cast import c_contiguous, to_output_dtype
from tilegraph.errors import DestinationError, SinkError
from tilegraph.metadata import SourceMetadata
from tilegraph.metadata.attrs import metadata_to_attrs
from tilegraph.sink.abc import Box, ChunkWriter, FinishTask, OutputLayout, Sink
from tilegraph.sink.safety import check_replaceable
from tilegraph.sink.zarr_sink import create_output, mark_complete, write_every_chunk

__all__ = ["ZarrWriter", "ZarrSink", "ExportSink", "TiffSink", "RasterSink", "scratch_writer"]


class ZarrWriter(ChunkWriter):
    """Writes boxes of a Zarr v3 array (each box is whole chunks, or the array's edge).

    The array is opened once per process and writer (the run's context reaches a worker once and
    its tasks share it), not once per box.
    """

    def __init__(self, path: str, layout: OutputLayout) -> None:
        self.path = path
        self.layout = layout
        self._arrays: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"path": self.path, "layout": self.layout}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["layout"])  # type: ignore[misc]

    def _open(self, mode: str = "r+") -> Any:
        import zarr

        with self._lock:
            arr = self._arrays.get(mode)
            if arr is None:
                arr = zarr.open_array(self.path, mode=mode)
                if mode != "r":
                    arr = write_every_chunk(arr)
                self._arrays[mode] = arr
            return arr

    def write(self, box: Box, block: np.ndarray, *, integer_scaled: bool = True) -> int:
        out, clipped = to_output_dtype(block, self.layout.dtype, integer_scaled=integer_scaled)
        y0, y1, x0, x1 = box
        target = self._open()
        try:
            # the codec is handed C-ordered data: a strided block would be copied slowly inside it
            if self.layout.layout == "YX":
                target[y0:y1, x0:x1] = np.ascontiguousarray(out[:, :, 0])
            elif self.layout.layout == "CYX":
                target[:, y0:y1, x0:x1] = c_contiguous(np.moveaxis(out, -1, 0))
            else:
                target[y0:y1, x0:x1, :] = c_contiguous(out)
        except OSError as exc:
            raise SinkError(f"cannot write output box {box}: {exc.strerror or exc}", path=self.path) from exc
        return clipped

    def read(self, box: Box) -> np.ndarray:
        y0, y1, x0, x1 = box
        arr = self._open("r")
        if self.layout.layout == "YX":
            return np.asarray(arr[y0:y1, x0:x1])[..., None]
        if self.layout.layout == "CYX":
            return np.moveaxis(np.asarray(arr[:, y0:y1, x0:x1]), 0, -1)
        return np.asarray(arr[y0:y1, x0:x1, :])


class ZarrSink(Sink):
    """A Zarr v3 array at the destination, with provenance attributes and a completion marker."""

    name: ClassVar[str] = "zarr"
    suffixes: ClassVar[tuple[str, ...]] = (".zarr",)

    def check(self, *, source_path: str | None, overwrite: bool) -> None:
        """Refuse the source (or a folder holding it, or inside it) and anything ``overwrite`` may not replace.

        ``overwrite=True`` replaces only a previous tilegraph output or an empty folder
        (:func:`tilegraph.sink.safety.check_replaceable`); nothing is deleted here.
        """
        check_replaceable(self.destination, source_path=source_path, overwrite=overwrite)

    def _target(self, scratch: str) -> str:
        return self.staging or self.destination

    def reopen(
        self, out: OutputLayout, *, attrs: dict, metadata: SourceMetadata, scratch: str
    ) -> ChunkWriter | None:
        """The interrupted run's output if it is a tilegraph Zarr of the same geometry (attributes renewed)."""
        import zarr

        path = self._target(scratch)
        try:
            arr = zarr.open_array(path, mode="r+")
        except Exception:  # missing or unreadable: create it again
            return None
        recorded = arr.attrs.get("tilegraph")
        if not isinstance(recorded, dict) or tuple(arr.shape) != out.full_dims(*out.shape):
            return None
        if str(arr.dtype) != str(np.dtype(out.dtype)):
            return None
        arr.attrs["tilegraph"] = {**attrs, "complete": False, "layout": out.layout}
        return ZarrWriter(path, out)

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
        path = self._target(scratch)
        create_output(
            path,
            shape=out.shape,
            channels=out.channels,
            dtype=out.dtype,
            chunks=out.chunks,
            shards=out.shards,
            layout=out.layout,
            attrs=attrs,
            extra_attrs=metadata_to_attrs(metadata),
            source_path=source_path,
            overwrite=overwrite or path != self.destination,
        )
        return ZarrWriter(path, out)

    def finish(self, writer: ChunkWriter, final: dict) -> FinishTask | None:
        mark_complete(writer.path, final)
        return None

    def open_result(self, path: str) -> Any:
        import zarr

        return zarr.open_array(path, mode="r")


class ExportSink(ZarrSink):
    """A file written in one final task from a Zarr in the run's scratch space."""

    @property
    def exports(self) -> bool:
        return True

    def _target(self, scratch: str) -> str:
        return f"{scratch}/output.zarr"

    def _export_kwargs(self) -> dict:
        o = self.options
        return {
            "compression": o.compression,
            "tile": tuple(o.tile),
            "bigtiff": o.bigtiff,
            "quality": o.quality,
        }

    def validate(self, out: OutputLayout, metadata: SourceMetadata) -> None:
        from tilegraph.sink.tiff_sink import validate_export

        validate_export(
            self.destination,
            shape=(*out.shape, out.channels),
            dtype=out.dtype,
            metadata=metadata,
            **self._export_kwargs(),
        )

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
        self._metadata = metadata
        self._attrs = attrs
        return super().create(
            out, attrs=attrs, metadata=metadata, scratch=scratch, source_path=source_path, overwrite=overwrite
        )

    def reopen(
        self, out: OutputLayout, *, attrs: dict, metadata: SourceMetadata, scratch: str
    ) -> ChunkWriter | None:
        self._metadata = metadata
        self._attrs = attrs
        return super().reopen(out, attrs=attrs, metadata=metadata, scratch=scratch)

    def finish(self, writer: ChunkWriter, final: dict) -> FinishTask | None:
        super().finish(writer, final)
        provenance = {**self._attrs, **final}  # version, model, plan, timings, clipped, ...
        return FinishTask(
            _export, (writer.path, self.destination, self._metadata, provenance, self._export_kwargs())
        )

    def open_result(self, path: str) -> Any:
        return path


def _export(
    zarr_path: str, destination: str, metadata: SourceMetadata, provenance: dict, kwargs: dict
) -> str:
    """Task: write ``destination`` from the finished Zarr at ``zarr_path``."""
    from tilegraph.sink.tiff_sink import export

    return export(zarr_path, os.fspath(destination), metadata=metadata, provenance=provenance, **kwargs)


class TiffSink(ExportSink):
    """Tiled TIFF or BigTIFF (``.btf``), written tile by tile."""

    name: ClassVar[str] = "tiff"
    suffixes: ClassVar[tuple[str, ...]] = (".tif", ".tiff", ".btf")


class RasterSink(ExportSink):
    """PNG (8 or 16 bit) or JPEG (8 bit).

    A PNG holds 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA) channels: a 2- or 4-channel output is
    written only when its last channel is alpha (the source's alpha passed around the model, or
    ``alpha=True`` said so); any other channel count is refused rather than written as something else.
    """

    name: ClassVar[str] = "raster"
    suffixes: ClassVar[tuple[str, ...]] = (".png", ".jpg", ".jpeg")

    def validate(self, out: OutputLayout, metadata: SourceMetadata) -> None:
        c, alpha = out.channels, self.options.alpha
        if self.destination.lower().endswith(".png") and c not in (1, 3):
            said = alpha if alpha is not None else out.alpha
            if c > 4 or not said:
                meaning = {2: "gray + alpha", 4: "RGBA"}.get(c)
                what = f"it would become {meaning}" if meaning else "a PNG holds 1 to 4 channels"
                raise DestinationError(
                    f"the output has {c} channels and a PNG cannot hold them as data: {what}",
                    path=self.destination,
                    hint=(
                        "write .tif or .zarr to keep every channel"
                        + (
                            "; if the last channel is alpha, say so with export_options={'alpha': True} "
                            "(--alpha)"
                            if meaning
                            else ""
                        )
                    ),
                )
        super().validate(out, metadata)


def scratch_writer(path: str, layout: OutputLayout) -> ZarrWriter:
    """A new, uncompressed Zarr array in scratch space for intermediate results (blends before passes)."""
    create_output(
        path,
        shape=layout.shape,
        channels=layout.channels,
        dtype=layout.dtype,
        chunks=layout.chunks,
        shards=layout.shards,
        layout=layout.layout,
        attrs={"scratch": True},
        overwrite=True,
        compressors=None,
    )
    return ZarrWriter(path, layout)
