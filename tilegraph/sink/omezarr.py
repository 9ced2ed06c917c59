"""OME-Zarr (NGFF 0.5, Zarr v3) output with a multiscale pyramid: the :class:`OmeZarrSink`.

``run(..., "out.ome.zarr")`` writes a Zarr v3 group holding the ``ome`` attributes of NGFF 0.5
(``multiscales``: axes ``c``/``y``/``x`` or ``y``/``x``, one dataset per level with its scale) and
the arrays ``0`` (full resolution, written by the run like any Zarr output), ``1``, ``2``... Each
lower level is a 2x down-sample of the previous one, built after the output is written by the
``downsample2x`` pass (:mod:`tilegraph.passes.pyramid`), one task per chunk, out of core: the sink
asks for it through :meth:`~tilegraph.sink.abc.Sink.derived`.

NGFF puts channels before the spatial axes, so multi-channel outputs are stored ``CYX`` whatever
the source's axis order. The run's provenance goes in the group's attributes (``tilegraph``) and in
level 0's, with the completion marker written last on every level; ``result.output`` is level 0.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, ClassVar

from tilegraph.errors import SinkError
from tilegraph.metadata import SourceMetadata
from tilegraph.metadata.attrs import metadata_to_attrs
from tilegraph.sink.abc import ChunkWriter, FinishTask, OutputLayout
from tilegraph.sink.builtin import ZarrSink, ZarrWriter
from tilegraph.sink.zarr_sink import create_output, mark_complete, remove_path

__all__ = ["OmeZarrSink", "pyramid_shapes", "NGFF_VERSION"]

NGFF_VERSION = "0.5"


def pyramid_shapes(
    shape: tuple[int, int], chunks: tuple[int, int], levels: int | None
) -> list[tuple[int, int]]:
    """Extent of each level: ``levels`` of them, or (default) halving until the image fits one chunk."""
    out = [tuple(int(v) for v in shape)]
    while (len(out) < levels) if levels else (out[-1][0] > chunks[0] or out[-1][1] > chunks[1]):
        h, w = out[-1]
        if h == 1 and w == 1:
            break
        out.append(((h + 1) // 2, (w + 1) // 2))
    return out  # type: ignore[return-value]


def _axes(layout: str) -> list[dict]:
    spatial = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    return ([{"name": "c", "type": "channel"}] if layout == "CYX" else []) + spatial


class OmeZarrSink(ZarrSink):
    """An NGFF 0.5 image with a pyramid (see the module notes)."""

    name: ClassVar[str] = "ome-zarr"
    suffixes: ClassVar[tuple[str, ...]] = (".ome.zarr",)

    def __init__(self, destination: str, options: Any = None) -> None:
        super().__init__(destination.rstrip("/"), options)
        self._levels: list[ChunkWriter] = []

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
        import zarr

        layout = replace(out, layout="YX" if out.layout == "YX" else "CYX")
        shapes = pyramid_shapes(layout.shape, layout.chunks, self.options.levels)
        self.check(source_path=source_path, overwrite=overwrite)
        if overwrite:
            remove_path(self.destination)
        axes = _axes(layout.layout)
        datasets = []
        for k in range(len(shapes)):
            factor = float(2**k)
            scale = ([1.0] if layout.layout == "CYX" else []) + [factor, factor]
            datasets.append(
                {"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": scale}]}
            )
        ome = {
            "version": NGFF_VERSION,
            "multiscales": [{"name": os.path.basename(self.destination), "axes": axes, "datasets": datasets}],
        }
        try:
            attributes: dict[str, Any] = {"ome": ome, "tilegraph": {**attrs, "complete": False}}
            zarr.open_group(self.destination, mode="w", zarr_format=3).attrs.update(attributes)
        except OSError as exc:
            raise SinkError(
                f"cannot create the output: {exc.strerror or exc}", path=self.destination
            ) from exc
        names = tuple(a["name"] for a in axes)
        self._levels = []
        for k, shape in enumerate(shapes):
            level = replace(layout, shape=shape, shards=layout.shards if k == 0 else None)
            path = f"{self.destination}/{k}"
            create_output(
                path,
                shape=level.shape,
                channels=level.channels,
                dtype=level.dtype,
                chunks=level.chunks,
                shards=level.shards,
                layout=level.layout,
                attrs=attrs if k == 0 else {"level": k, "of": self.destination},
                extra_attrs=metadata_to_attrs(metadata) if k == 0 else None,
                source_path=source_path,
                dimension_names=names,
            )
            self._levels.append(ZarrWriter(path, level))
        return self._levels[0]

    def derived(self, writer: ChunkWriter) -> tuple[tuple[str, ChunkWriter], ...]:
        return tuple(("downsample2x", w) for w in self._levels[1:])

    def finish(self, writer: ChunkWriter, final: dict) -> FinishTask | None:
        import zarr

        for level in reversed(self._levels or [writer]):
            mark_complete(level.path, final if level.path == writer.path else {})
        group = zarr.open_group(self.destination, mode="r+")
        recorded = group.attrs.get("tilegraph", {})
        group.attrs["tilegraph"] = {
            **(recorded if isinstance(recorded, dict) else {}),
            **final,
            "complete": True,
        }
        return None
