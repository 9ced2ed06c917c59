"""Models in every common format, end to end on the embedded cluster (issue 15).

ONNX (exported here with ``torch.onnx.export``), TorchScript, a spandrel checkpoint (a small
architecture spandrel detects, random weights) and a ``torch.fx.GraphModule`` each run through
:func:`tilegraph.run` on one embedded cluster and equal the same model run on the whole image; each
file is loaded once per worker (counted on the workers). The OME-Zarr pyramid runs on the same
cluster (its levels are a distributed pass).
"""

from __future__ import annotations

import importlib.util
import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import tilegraph
from tilegraph.infer import formats
from tilegraph.testing.reference import whole_image_inference

pytestmark = pytest.mark.slow


def _needs(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} not installed")


class _Local(nn.Module):
    """Two 3x3 convolutions (receptive-field radius 2) declaring its halo and, when scripted, its scale."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 3, 3, padding=1)
        self.scale = 1
        self.halo = 2

    def forward(self, x):
        return self.b(torch.tanh(self.a(x))) * 0.1 + x


@pytest.fixture(scope="module")
def client():
    from distributed import Client

    from tilegraph.cluster.local import embedded_cluster

    cluster = embedded_cluster(n_workers=1, threads_per_worker=3)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).random((150, 170, 3), dtype=np.float32)


def _script(module: nn.Module, path: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # torch.jit.script is deprecated but still how TorchScript files are made
        torch.jit.save(torch.jit.script(module.eval()), path)
    return path


def _loads(client) -> dict:
    return client.run(formats.load_counts)


def _tiled_equals_whole(client, image, model, tmp_path, *, name, whole_model=None, tol=1e-5):
    result = tilegraph.run(
        image,
        str(tmp_path / f"{name}.zarr"),
        model=model,
        client=client,
        tile=64,
        overlap=16,
        blend="crop",
        batch_size=2,
        progress=False,
    )
    got = np.asarray(result.output[:])
    want = whole_image_inference(image, whole_model if whole_model is not None else model, result.plan)
    assert got.shape == want.shape
    err = float(np.abs(got - want).max())
    assert err <= tol, f"{name}: tiled differs from whole by {err}"
    return result


def test_onnx_file_runs_end_to_end_once_per_worker(client, image, tmp_path):
    _needs("onnxruntime")
    _needs("onnx")
    path = str(tmp_path / "local.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Local().eval(),
            (torch.rand(1, 3, 32, 32),),
            path,
            dynamo=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}},
        )
    before = sum(c.get("onnx", 0) for c in _loads(client).values())
    whole = formats.load_model_file(path, device="cpu", cache=False)
    _tiled_equals_whole(client, image, path, tmp_path, name="onnx", whole_model=whole)
    after = _loads(client)
    assert sum(c.get("onnx", 0) for c in after.values()) - before == len(after)  # once per worker


def test_torchscript_file_declares_what_was_scripted(client, image, tmp_path):
    path = str(tmp_path / "local.pt")
    _script(_Local(), path)
    result = _tiled_equals_whole(client, image, path, tmp_path, name="ts", whole_model=torch.jit.load(path))
    with open(tmp_path / "ts.zarr" / "zarr.json") as f:
        declared = json.load(f)["attributes"]["tilegraph"]["model"]["declared"]
    assert declared.get("halo") == 2 and declared.get("scale") == "1"  # read from the TorchScript file
    assert result.plan.halo == 2
    assert sum(c.get("torchscript", 0) for c in _loads(client).values()) == len(_loads(client))


def test_spandrel_checkpoint_detected_and_run(client, image, tmp_path):
    _needs("spandrel")
    from tilegraph.infer._compat import import_spandrel

    import_spandrel()
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(3)
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)
    path = str(tmp_path / "compact.safetensors")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    model = formats.load_model_file(path, cache=False)
    assert model.scale == 2 and model.architecture == "Compact"
    small = np.ascontiguousarray(image[:90, :100])
    result = _tiled_equals_whole(client, small, path, tmp_path, name="spandrel", whole_model=model, tol=1e-4)
    assert result.output.shape == (180, 200, 3)
    assert sum(c.get("checkpoint", 0) for c in _loads(client).values()) == len(_loads(client))


def test_graph_module_travels_as_bytes(client, image, tmp_path):
    gm = torch.fx.symbolic_trace(_Local(seed=5).eval())
    assert formats.needs_payload(gm)
    _tiled_equals_whole(client, image, gm, tmp_path, name="fx", whole_model=gm)
    assert all(c.get("payload:torch.save", 0) == 1 for c in _loads(client).values())


def test_factory_may_return_a_model_file(client, image, tmp_path, monkeypatch):
    """A model given by import path may build any supported kind: here the factory returns a file path."""
    path = str(tmp_path / "from_factory.pt")
    _script(_Local(seed=7), path)
    module = tmp_path / "filefactory.py"
    module.write_text(f"def build():\n    return {path!r}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    client.run(_prepend_path, str(tmp_path))
    _tiled_equals_whole(
        client, image, "filefactory:build", tmp_path, name="factory", whole_model=torch.jit.load(path)
    )


def _prepend_path(folder: str) -> None:
    import sys

    if folder not in sys.path:
        sys.path.insert(0, folder)


def test_ome_zarr_pyramid_opens_with_ome_zarr_py(client, tmp_path):
    """Four levels, NGFF 0.5 on Zarr v3, level 1 the 2x down-sample of level 0, provenance recorded."""
    _needs("ome_zarr")
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    img = np.random.default_rng(1).integers(0, 65535, (203, 250, 3), dtype=np.uint16)
    dest = str(tmp_path / "out.ome.zarr")
    result = tilegraph.run(
        img,
        dest,
        model="tilegraph.testing.models:make_local_conv",
        client=client,
        tile=96,
        overlap=16,
        out_chunks=64,
        export_options={"levels": 4},
        progress=False,
    )
    nodes = list(Reader(parse_url(dest))())
    levels = [np.asarray(d) for d in nodes[0].data]
    assert [lv.shape for lv in levels] == [(3, 203, 250), (3, 102, 125), (3, 51, 63), (3, 26, 32)]
    assert [a["name"] for a in nodes[0].metadata["axes"]] == ["c", "y", "x"]
    np.testing.assert_array_equal(np.moveaxis(np.asarray(result.output[:]), 0, -1).shape, img.shape)
    np.testing.assert_array_equal(np.asarray(result.output[:]), levels[0])  # result.output is level 0
    for k in range(1, 4):  # each level: mean of 2 x 2 of the previous (edges: what exists), rounded half up
        prev = levels[k - 1].astype(np.float64)
        c, h, w = prev.shape
        padded = np.zeros((c, h + h % 2, w + w % 2))
        count = np.zeros((h + h % 2, w + w % 2))
        padded[:, :h, :w], count[:h, :w] = prev, 1
        sums = padded.reshape(c, (h + 1) // 2, 2, (w + 1) // 2, 2).sum(axis=(2, 4))
        n = count.reshape((h + 1) // 2, 2, (w + 1) // 2, 2).sum(axis=(1, 3))
        np.testing.assert_array_equal(levels[k], np.floor(sums / n + 0.5).astype(np.uint16))
    group = zarr.open_group(dest, mode="r")
    ome = group.attrs["ome"]
    assert ome["version"] == "0.5" and len(ome["multiscales"][0]["datasets"]) == 4
    assert ome["multiscales"][0]["datasets"][1]["coordinateTransformations"][0]["scale"] == [1.0, 2.0, 2.0]
    meta = group.attrs["tilegraph"]
    assert meta["complete"] is True and meta["model"]["name"] == "tilegraph.testing.models:make_local_conv"
    assert zarr.open_array(f"{dest}/0", mode="r").metadata.zarr_format == 3
    assert tilegraph.open_source(dest).shape == img.shape[:2]  # tilegraph reads its own OME-Zarr back


def test_ome_zarr_opens_in_napari_reader_where_installed(tmp_path):
    _needs("napari_ome_zarr")
    from napari_ome_zarr import napari_get_reader

    dest = str(tmp_path / "small.ome.zarr")
    img = np.random.default_rng(2).integers(0, 255, (80, 90), dtype=np.uint8)
    tilegraph.run(img, dest, model=lambda b: b, client="inprocess", tile=64, overlap=16, progress=False)
    layers = napari_get_reader(dest)(dest)
    assert layers and np.asarray(layers[0][0][0]).shape[-2:] == (80, 90)


def test_pyramid_levels_default_until_one_chunk():
    from tilegraph.sink.omezarr import pyramid_shapes

    assert pyramid_shapes((1000, 600), (256, 256), None) == [(1000, 600), (500, 300), (250, 150)]
    assert pyramid_shapes((100, 100), (256, 256), None) == [(100, 100)]
    assert len(pyramid_shapes((100, 100), (256, 256), 4)) == 4
