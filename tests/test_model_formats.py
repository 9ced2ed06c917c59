"""Models given as files (ONNX, TorchScript, spandrel checkpoints) and models sent as bytes.

Every model is built in the test, small, with random weights; each format is checked against the same
network run directly in torch.
"""

from __future__ import annotations

import io
import os
import pickle
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

from tilegraph.errors import ModelLoadError, ModelOutputError
from tilegraph.infer import formats
from tilegraph.infer.formats import (
    ModulePayload,
    OnnxModel,
    constraints,
    declarations,
    detect_format,
    from_payload,
    load_counts,
    load_model_file,
    needs_payload,
    to_payload,
)

cloudpickle = pytest.importorskip("cloudpickle")


def _needs(package: str) -> None:
    """Skip without ``package``; never imports it (spandrel must be imported through tilegraph's helper,
    which makes a mismatched torchvision importable first)."""
    import importlib.util

    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} not installed")


# ----------------------------------------------------------------------------- small networks


class _ConvNet(nn.Module):
    """Two 3x3 convolutions; ``scale`` and ``halo`` declared as attributes."""

    def __init__(self, cin: int = 3, cout: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.a = nn.Conv2d(cin, 8, 3, padding=1)
        self.b = nn.Conv2d(8, cout, 3, padding=1)
        self.scale = 1
        self.halo = 2

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class _Upscale2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x):
        return self.shuffle(self.conv(x))


class _TwoInputs(nn.Module):
    def forward(self, x, y):
        return x + y


def _export_onnx(module, path, *, size=(16, 16), dynamic=True, inputs=None):
    args = inputs if inputs is not None else (torch.rand(1, 3, *size),)
    names = [f"in{i}" for i in range(len(args))]
    axes = {n: {0: "n", 2: "h", 3: "w"} for n in names} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), dynamo=False, input_names=names, dynamic_axes=axes)
    return str(path)


@pytest.fixture(autouse=True)
def _fresh_cache():
    formats.clear_model_cache()
    yield
    formats.clear_model_cache()


# ----------------------------------------------------------------------------- detection


def test_detect_format_by_suffix_and_content(tmp_path):
    pytest.importorskip("onnx")
    net = _ConvNet()
    onnx_path = _export_onnx(net, tmp_path / "m.onnx")
    torch.jit.save(torch.jit.script(net), tmp_path / "scripted.pt")
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    assert detect_format(onnx_path) == "onnx"
    assert detect_format(tmp_path / "scripted.pt") == "torchscript"
    assert detect_format(tmp_path / "weights.pt") == "checkpoint"


def test_unknown_suffix_lists_supported_ones(tmp_path):
    path = tmp_path / "model.h5"
    path.write_bytes(b"\x89HDF")
    with pytest.raises(ModelLoadError, match=r"\.onnx.*\.safetensors") as info:
        load_model_file(path)
    assert info.value.path == str(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="not found") as info:
        load_model_file(tmp_path / "absent.onnx")
    assert str(info.value.path).endswith("absent.onnx")


# ----------------------------------------------------------------------------- ONNX


def test_onnx_matches_torch_on_any_size(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    net = _ConvNet().eval()
    model = load_model_file(_export_onnx(net, tmp_path / "m.onnx"))
    assert isinstance(model, OnnxModel)
    assert model.providers == ["CPUExecutionProvider"]  # no GPU here
    x = np.random.default_rng(0).random((3, 3, 23, 37), dtype=np.float32)  # not the export size
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    y = model(x)
    assert y.dtype == np.float32 and y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5)
    decl = declarations(model)
    assert decl == {"scale": None, "in_channels": 3, "out_channels": 3, "stride": None, "halo": None}


def test_onnx_fixed_size_and_batch_one(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    net = _Upscale2().eval()
    model = load_model_file(_export_onnx(net, tmp_path / "up.onnx", size=(8, 12), dynamic=False))
    assert declarations(model)["scale"] == "2"  # from the fixed input and output shapes
    assert constraints(model)["fixed_size"] == (8, 12)
    assert "accepts only 8 x 12" in constraints(model)["note"]
    x = np.random.default_rng(1).random((3, 3, 8, 12), dtype=np.float32)  # batch 3, graph batch 1
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(x), ref, rtol=0, atol=1e-5)


def test_onnx_on_cuda_without_the_gpu_build_says_what_to_install(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu installed")
    with pytest.raises(ModelLoadError, match="no CUDA provider") as info:
        load_model_file(_export_onnx(_ConvNet(), tmp_path / "m.onnx"), device="cuda")
    assert "onnxruntime-gpu" in str(info.value.hint)


def test_onnx_with_two_inputs_is_refused(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = _export_onnx(
        _TwoInputs(), tmp_path / "two.onnx", inputs=(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4))
    )
    with pytest.raises(ModelLoadError, match="2 inputs") as info:
        load_model_file(path)
    assert str(info.value.path).endswith("two.onnx")


def test_onnx_pickles_as_path_and_loads_once(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = _export_onnx(_ConvNet(), tmp_path / "m.onnx")
    model = load_model_file(path)
    blob = cloudpickle.dumps(model)
    assert len(blob) < 1000  # the path, not the session or the weights
    again = pickle.loads(blob)
    assert again is model  # same process: the cached session
    assert load_counts() == {"onnx": 1}


def test_onnx_payload_carries_the_bytes(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    net = _ConvNet().eval()
    path = _export_onnx(net, tmp_path / "m.onnx")
    payload = to_payload(load_model_file(path))
    assert isinstance(payload, ModulePayload) and payload.kind == "onnx"
    os.remove(path)  # a worker that cannot see the file
    formats.clear_model_cache()
    model = from_payload(pickle.loads(cloudpickle.dumps(payload)))
    x = np.random.default_rng(2).random((1, 3, 10, 10), dtype=np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(model(x), net(torch.from_numpy(x)).numpy(), atol=1e-5, rtol=0)
    assert from_payload(payload) is model  # rebuilt once per process
    assert pickle.loads(cloudpickle.dumps(model)) is model  # a rebuilt model pickles as its bytes


# ----------------------------------------------------------------------------- TorchScript


def test_torchscript_file_keeps_declarations(tmp_path):
    net = _ConvNet().eval()
    path = tmp_path / "net.pth"
    torch.jit.save(torch.jit.script(net), path)
    model = load_model_file(path)
    assert isinstance(model, torch.jit.ScriptModule) and not model.training
    assert declarations(model) == {
        "scale": "1",
        "in_channels": None,
        "out_channels": None,
        "stride": None,
        "halo": 2,
    }
    x = torch.rand(2, 3, 11, 13)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x), rtol=0, atol=0)
    assert load_model_file(path) is model and load_counts() == {"torchscript": 1}


# ----------------------------------------------------------------------------- spandrel checkpoints


def _spandrel_nets():
    _needs("spandrel")
    from tilegraph.infer._compat import import_spandrel

    import_spandrel()
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN
    from spandrel.architectures.SPAN import SPAN

    torch.manual_seed(0)
    return {
        "ESRGAN": ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=2),
        "Compact": Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2),
        "SPAN": SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=2),
    }


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_spandrel_detects_small_architectures(tmp_path, suffix):
    from safetensors.torch import save_file

    for arch, net in _spandrel_nets().items():
        path = tmp_path / f"{arch}{suffix}"
        state = {k: v.contiguous() for k, v in net.state_dict().items()}
        save_file(state, path) if suffix == ".safetensors" else torch.save({"params_ema": state}, path)
        model = load_model_file(path)
        assert model.architecture == arch
        assert declarations(model) == {
            "scale": "2",
            "in_channels": 3,
            "out_channels": 3,
            "stride": 1,
            "halo": None,
        }
        assert constraints(model)["tiling"] == "SUPPORTED"
        x = torch.rand(2, 3, 12, 10)
        with torch.no_grad():
            torch.testing.assert_close(model(x), net.eval()(x).clamp(0, 1), rtol=0, atol=0)


def test_spandrel_model_moves_like_a_module(tmp_path):
    import copy

    net = _spandrel_nets()["Compact"]
    torch.save(net.state_dict(), tmp_path / "c.pth")
    model = load_model_file(tmp_path / "c.pth")
    double = copy.deepcopy(model).double()  # what the receptive-field probe does
    x = torch.rand(1, 3, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        assert double(x).dtype == torch.float64
    assert next(model.parameters()).dtype == torch.float32  # the original is untouched


def test_unknown_state_dict_is_refused(tmp_path):
    _needs("spandrel")
    torch.save({"encoder.w": torch.zeros(3, 3)}, tmp_path / "mystery.pth")
    with pytest.raises(ModelLoadError, match="no architecture known to spandrel") as info:
        load_model_file(tmp_path / "mystery.pth")
    assert str(info.value.path).endswith("mystery.pth") and "factory" in str(info.value.hint)


def test_pickled_module_is_refused_without_running_it(tmp_path):
    path = tmp_path / "whole.pth"
    torch.save(_ConvNet(), path)  # a whole module: unpickling would import and run code
    with pytest.raises(ModelLoadError, match="weights_only=True") as info:
        load_model_file(path)
    assert info.value.path == str(path)
    assert "state_dict" in str(info.value.hint)


def test_checkpoint_that_is_not_a_dict_is_refused(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(ModelLoadError, match="not a state dict"):
        load_model_file(path)


# ----------------------------------------------------------------------------- transport


def _graph_module():
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 3, 3, padding=1)).eval()
    torch.manual_seed(3)
    for p in net.parameters():
        nn.init.normal_(p, std=0.3)
    return torch.fx.symbolic_trace(net)


def test_graph_module_travels_as_torch_save_bytes():
    gm = _graph_module()
    assert needs_payload(gm)
    payload = to_payload(gm)
    assert isinstance(payload, ModulePayload) and payload.kind == "torch.save"
    assert declarations(payload) == declarations(gm)
    rebuilt = from_payload(pickle.loads(cloudpickle.dumps(payload)))  # the Dask path
    assert isinstance(rebuilt, torch.fx.GraphModule) and rebuilt is not gm
    x = torch.rand(2, 3, 15, 17)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), gm(x), rtol=0, atol=0)
    assert from_payload(payload) is rebuilt


def test_script_module_cannot_be_pickled_but_travels_as_payload():
    scripted = torch.jit.script(_ConvNet().eval())
    with pytest.raises(Exception):  # noqa: B017 - the failure this exists for
        cloudpickle.dumps(scripted)
    payload = to_payload(scripted)
    assert payload.kind == "torchscript"
    rebuilt = from_payload(pickle.loads(cloudpickle.dumps(payload)))
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), scripted(x), rtol=0, atol=0)


def test_plain_module_is_sent_as_itself():
    net = _ConvNet()
    assert not needs_payload(net)
    assert to_payload(net) is net
    assert to_payload(net, force=True).kind == "torch.save"


def test_payload_naming_a_missing_class_says_what_to_install(monkeypatch):
    import sys
    import types

    mod = types.ModuleType("tg_vanishing_pkg")

    class Gone(nn.Module):
        def forward(self, x):
            return x

    Gone.__module__ = "tg_vanishing_pkg"
    Gone.__qualname__ = "Gone"
    setattr(mod, "Gone", Gone)  # noqa: B010
    monkeypatch.setitem(sys.modules, "tg_vanishing_pkg", mod)
    payload = to_payload(Gone(), force=True)
    assert payload.requires == ("tg_vanishing_pkg",)
    monkeypatch.delitem(sys.modules, "tg_vanishing_pkg")  # a worker without the package
    with pytest.raises(ModelLoadError, match="cannot be rebuilt") as info:
        from_payload(payload)
    assert "install tg_vanishing_pkg" in str(info.value.hint)


def test_onnx2torch_graph_module_round_trip(tmp_path):
    pytest.importorskip("onnx")
    try:
        gm = formats.onnx_to_torch(_export_onnx(_ConvNet().eval(), tmp_path / "m.onnx"))
    except ModelLoadError as exc:
        if "onnx2torch" in str(exc) and "needs" in str(exc):
            pytest.skip("onnx2torch not installed")
        raise
    net = _ConvNet().eval()
    rebuilt = from_payload(pickle.loads(cloudpickle.dumps(to_payload(gm))))
    x = torch.rand(2, 3, 14, 18)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), net(x), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- a real worker process


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


def _worker_functions():
    """Defined in a function so that cloudpickle ships them by value (workers cannot import tests/)."""

    def run_payload(payload, batch):
        import torch

        from tilegraph.infer.formats import from_payload

        module = from_payload(payload)
        with torch.no_grad():
            return module(torch.from_numpy(batch)).numpy()

    def run_onnx(model, batch):
        from tilegraph.infer.formats import load_counts

        return model(batch), load_counts()

    return run_payload, run_onnx


def test_graph_module_runs_on_a_worker_process(client):
    run_payload, _ = _worker_functions()
    gm = _graph_module()
    payload = to_payload(gm)
    x = np.random.default_rng(4).random((2, 3, 20, 24), dtype=np.float32)
    got = client.submit(run_payload, payload, x, pure=False).result()
    with torch.no_grad():
        np.testing.assert_array_equal(got, gm(torch.from_numpy(x)).numpy())


def test_onnx_model_loads_once_per_worker(client, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    _, run_onnx = _worker_functions()
    net = _ConvNet().eval()
    model = load_model_file(_export_onnx(net, tmp_path / "m.onnx"))
    x = np.random.default_rng(5).random((1, 3, 12, 12), dtype=np.float32)
    first, counts1 = client.submit(run_onnx, model, x, pure=False).result()
    second, counts2 = client.submit(run_onnx, model, x, pure=False).result()
    with torch.no_grad():
        np.testing.assert_allclose(first, net(torch.from_numpy(x)).numpy(), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(first, second)
    assert counts1["onnx"] == counts2["onnx"] == 1  # the second task found the worker's session


def test_bad_input_to_onnx_model_is_a_model_error(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = load_model_file(_export_onnx(_ConvNet(), tmp_path / "m.onnx"))
    with pytest.raises(ModelOutputError, match=r"\(N, C, H, W\)"):
        model(np.zeros((3, 8, 8), np.float32))


def test_payload_bytes_are_a_torch_save_archive():
    payload = to_payload(_graph_module())
    assert payload.data[:2] == b"PK"  # a torch.save zip, loadable with torch.load
    assert isinstance(torch.load(io.BytesIO(payload.data), weights_only=False), torch.fx.GraphModule)
