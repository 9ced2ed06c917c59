"""Model adapters: torch module, import path with weights, numpy callable; transport and precision."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import tilegraph
from tilegraph.errors import ModelLoadError

torch = pytest.importorskip("torch")
import countingmodels  # noqa: E402


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    with Client(cluster) as c:
        yield c
    cluster.close()


def _img(seed=0):
    return np.random.default_rng(seed).integers(0, 255, (96, 128, 3), dtype=np.uint8)


def test_import_tilegraph_is_light():
    code = (
        "import sys, tilegraph, tilegraph.plan, tilegraph.source, tilegraph.testing; "
        "print(sorted(m for m in ('torch', 'distributed', 'dask') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_instance_travels_once_per_worker(tmp_path, client):
    # in eval mode: the runner copies a module in training mode (to leave it as given), which would count
    model = countingmodels.CountingIdentity().eval()
    res = tilegraph.run(
        _img(), tmp_path / "o.zarr", model=model, tile=32, overlap=8, batch_size=1, client=client
    )
    assert res.plan.n_windows >= 20
    counts = client.run(countingmodels.counts)
    used = [c["unpickled"] for c in counts.values()]
    assert max(used) == 1, counts  # once per worker, not once per task
    np.testing.assert_array_equal(np.asarray(res.output[:]), _img())


def test_import_path_with_weights_loaded_once_per_worker(tmp_path, client):
    from safetensors.torch import save_file

    st = tmp_path / "w.safetensors"
    save_file({"gain": torch.tensor([0.5])}, str(st))
    pt = tmp_path / "w.pt"
    torch.save({"gain": torch.tensor([0.25])}, str(pt))
    img = _img(1)
    for i, (weights, gain) in enumerate(((st, 0.5), (pt, 0.25))):
        res = tilegraph.run(
            img,
            tmp_path / f"o{i}.zarr",
            model="countingmodels:make_scale",
            weights=str(weights),
            tile=32,
            overlap=8,
            batch_size=1,
            client=client,
        )
        expect = np.rint(img.astype(np.float32) / 255 * gain * 255).astype(np.uint8)
        assert np.abs(np.asarray(res.output[:]).astype(int) - expect).max() <= 1
        meta = res.output.attrs["tilegraph"]["model"]
        assert meta["target"] == "countingmodels:make_scale" and len(meta["weights_sha256"]) == 64
    built = [c["built"] for c in client.run(countingmodels.counts).values()]
    assert max(built) <= 2  # one build per worker per model (two different weights)
    assert countingmodels.COUNTS["built"] == 0  # never built on the client


def test_bad_import_path_and_weights(tmp_path):
    with pytest.raises(ModelLoadError, match="package.module:factory"):
        tilegraph.run(_img(), tmp_path / "a.zarr", model="nocolon", tile=32, overlap=8, client="inprocess")
    with pytest.raises(ModelLoadError, match="cannot import"):
        tilegraph.run(
            _img(), tmp_path / "b.zarr", model="no_such_mod:f", tile=32, overlap=8, client="inprocess"
        )
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="bad.safetensors"):
        tilegraph.run(
            _img(),
            tmp_path / "c.zarr",
            model="countingmodels:make_scale",
            weights=str(bad),
            tile=32,
            overlap=8,
            client="inprocess",
        )


def test_numpy_callable(tmp_path):
    res = tilegraph.run(
        _img(), tmp_path / "o.zarr", model=countingmodels.numpy_half, tile=32, overlap=8, client="inprocess"
    )
    expect = np.rint(_img().astype(np.float32) / 255 * 0.5 * 255)
    assert np.abs(np.asarray(res.output[:]).astype(int) - expect).max() <= 1


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_recorded(tmp_path, precision):
    from tilegraph.testing.models import LocalConv

    img = _img()
    model = LocalConv(channels=3, layers=1)
    try:
        res = tilegraph.run(
            img,
            tmp_path / "o.zarr",
            model=model,
            tile=32,
            overlap=8,
            client="inprocess",
            precision=precision,
            channels_last=True,
        )
    except Exception as exc:  # fp16 conv may be unsupported on some CPU builds
        pytest.skip(f"{precision} autocast unsupported on this CPU: {exc}")
    meta = res.output.attrs["tilegraph"]["model"]
    assert meta["precision"] == precision and meta["channels_last"] is True
    ref = tilegraph.run(img, tmp_path / "r.zarr", model=model, tile=32, overlap=8, client="inprocess")
    diff = np.abs(np.asarray(res.output[:]).astype(int) - np.asarray(ref.output[:]).astype(int))
    assert diff.max() <= 4  # reduced precision, same image
    assert (
        not model.convs[0].weight.is_contiguous(memory_format=torch.channels_last) or model.training is False
    )
