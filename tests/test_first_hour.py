"""The first hour without surprises (issue 15): scripts, the CLI as capable as Python, clean errors.

The slow tests here start real processes as a user would: the README's Python example pasted into a
script, ``tilegraph run`` with a model module in the current folder, a failing model whose error
must reach the console once, without distributed's tracebacks.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

import tilegraph
from tilegraph.cli import as_flags, main
from tilegraph.errors import ClusterError, DestinationError, ModelOutputError, PlanError

ROOT = Path(__file__).resolve().parents[1]
TILEGRAPH = str(Path(sys.executable).with_name("tilegraph"))


def _env() -> dict:
    """The environment of a user's console: distributed's own logging settings, no test overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _readme_script() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    return next(b for b in blocks if 'if __name__ == "__main__":' in b)


def _user_folder(tmp_path: Path) -> Path:
    """A folder as a user has it: an image, a model package with a factory and its weights file."""
    import torch
    from safetensors.torch import save_file

    img = np.random.default_rng(0).integers(0, 255, (150, 170, 3), dtype=np.uint8)
    zarr.create_array(store=str(tmp_path / "slide.zarr"), shape=img.shape, chunks=(64, 64, 3), dtype="uint8")[
        :
    ] = img
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(
        textwrap.dedent(
            """
            import torch

            class Gain(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.gain = torch.nn.Parameter(torch.ones(1))

                def forward(self, x):
                    return x * self.gain

            def build():
                return Gain()
            """
        )
    )
    save_file({"gain": torch.full((1,), 0.5)}, str(tmp_path / "model.safetensors"))
    return tmp_path


@pytest.mark.slow
def test_readme_python_example_runs_as_a_pasted_script(tmp_path):
    """The README's example, as pasted (values made small), runs as ``python script.py``."""
    folder = _user_folder(tmp_path)
    script = _readme_script().replace("tile=1024, overlap=128", "tile=64, overlap=16")
    assert "tile=64, overlap=16" in script
    script += '    print("OUTPUT", result.output.shape, result.clipped)\n'
    (folder / "script.py").write_text(script)
    proc = subprocess.run(
        [sys.executable, "script.py"], cwd=folder, env=_env(), capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OUTPUT (150, 170, 3) 0" in proc.stdout
    out = np.asarray(zarr.open_array(str(folder / "restored.zarr"), mode="r")[:]).astype(int)
    src = np.asarray(zarr.open_array(str(folder / "slide.zarr"), mode="r")[:]).astype(int)
    assert np.abs(out - np.rint(src * 0.5)).max() <= 1  # the weights were loaded: gain 0.5


@pytest.mark.slow
def test_script_without_the_guard_gets_one_clear_error(tmp_path):
    """Without ``if __name__ == "__main__":`` the run is refused before any worker starts."""
    folder = _user_folder(tmp_path)
    body = _readme_script().replace("tile=1024, overlap=128", "tile=64, overlap=16")
    head, _, guarded = body.partition('if __name__ == "__main__":')
    guarded = guarded.split("\n", 1)[1]  # drop the comment after the guard
    (folder / "script.py").write_text(head + textwrap.dedent(guarded))
    proc = subprocess.run(
        [sys.executable, "script.py"], cwd=folder, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert "tilegraph.errors.ClusterError" in proc.stderr
    assert 'if __name__ == "__main__":' in proc.stderr
    assert "Nanny" not in proc.stderr and "bootstrapping" not in proc.stderr
    assert proc.stderr.count("Traceback") == 1


def test_guard_detection_reads_the_script(tmp_path, monkeypatch):
    from tilegraph.cluster import console

    assert console._guarded_lines('x = 1\nif __name__ == "__main__":\n    run()\n    more()\n') == [(3, 4)]
    assert console._guarded_lines("if '__main__' == __name__:\n    run()\n") == [(2, 2)]
    assert console._guarded_lines("if __name__ == 'x':\n    run()\n") == []
    console.check_main_guard()  # under pytest: the caller's entry point is guarded, nothing raised
    import multiprocessing

    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)
    with pytest.raises(ClusterError, match="while a worker process was importing your script"):
        console.check_main_guard()


@pytest.mark.slow
def test_cli_runs_a_numpy_factory_from_a_module_in_the_current_folder(tmp_path):
    img = np.random.default_rng(1).integers(0, 255, (120, 150, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "photo.tif", img)
    (tmp_path / "halfmodel.py").write_text("def build():\n    return lambda batch: batch * 0.5\n")
    proc = subprocess.run(
        [
            TILEGRAPH,
            "run",
            "photo.tif",
            "out.zarr",
            "--model",
            "halfmodel:build",
            "--tile",
            "64",
            "--overlap",
            "16",
        ],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = np.asarray(zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[:]).astype(int)
    assert np.abs(out - np.rint(img * 0.5)).max() <= 1
    assert "windows 9/9" in proc.stderr and "MP/s" in proc.stderr  # progress counts windows


@pytest.mark.slow
def test_failing_model_task_prints_one_message_and_no_distributed_traceback(tmp_path):
    img = np.random.default_rng(2).integers(0, 255, (120, 150, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "photo.tif", img)
    (tmp_path / "broken.py").write_text(
        "def build():\n"
        "    def model(batch):\n"
        "        if batch.shape[-1] > 64:\n"  # the 64 x 64 probe passes; windows of 96 fail
        "            raise RuntimeError('weights went missing')\n"
        "        return batch\n"
        "    return model\n"
    )
    proc = subprocess.run(
        [
            TILEGRAPH,
            "run",
            "photo.tif",
            "out.zarr",
            "--model",
            "broken:build",
            "--tile",
            "96",
            "--overlap",
            "16",
        ],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 2
    err = proc.stderr
    assert "Traceback" not in err and "distributed." not in err and "Compute Failed" not in err, err
    lines = [line for line in err.splitlines() if "tilegraph: error:" in line]
    assert len(lines) == 1, err
    assert "window (" in lines[0] and "broken:build" in lines[0] and "weights went missing" in lines[0]
    assert "photo.tif" not in lines[0]  # the model is at fault, not the image


def test_cli_takes_a_model_instance_by_import_path(tmp_path, monkeypatch):
    """``--model module:attr`` naming a module instance (not a factory) runs that instance."""
    (tmp_path / "instances.py").write_text(
        "import torch\n\nclass Half(torch.nn.Module):\n    def forward(self, x):\n        return x * 0.5\n\nnet = Half()\n"
    )
    img = np.full((40, 50, 3), 200, np.uint8)
    tifffile.imwrite(tmp_path / "p.tif", img)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["run", "p.tif", "o.zarr", "--model", "instances:net", "--tile", "32", "--overlap", "8"]
    assert main([*args, "--inprocess", "--no-progress"]) == 0
    assert int(np.asarray(zarr.open_array(str(tmp_path / "o.zarr"), mode="r")[:]).max()) == 100


def test_cli_messages_name_flags_not_keywords():
    assert as_flags("destination exists (pass overwrite=True or choose a new path)") == (
        "destination exists (pass --overwrite or choose a new path)"
    )
    assert as_flags("use blend='crop' or overlap=32") == "use --blend crop or --overlap 32"
    assert as_flags("loaded with weights_only=True") == "loaded with weights_only=True"  # not an option


def test_cli_takes_an_array_source_by_import_path(tmp_path, monkeypatch, capsys):
    (tmp_path / "arrays.py").write_text(
        "import numpy as np\n\ndef make():\n    return np.full((70, 90, 3), 100, dtype=np.uint8)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["run", "arrays:make", "out.zarr", "--model", "tilegraph.testing.models:numpy_identity"]
    assert main([*args, "--tile", "64", "--overlap", "16", "--inprocess", "--no-progress"]) == 0
    assert int(np.asarray(zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[:]).max()) == 100
    assert main([*args, "--inprocess", "--no-progress"]) == 2  # exists: the hint names the flag
    assert "--overwrite" in capsys.readouterr().err


# ----------------------------------------------------------------------------- refusals


def test_two_channel_png_is_refused_unless_alpha_says_so(tmp_path):
    img = np.random.default_rng(3).integers(0, 255, (60, 70, 3), dtype=np.uint8)

    def two(batch):
        return batch[:, :2]

    with pytest.raises(DestinationError, match="2 channels.*gray \\+ alpha") as info:
        tilegraph.run(img, str(tmp_path / "a.png"), model=two, client="inprocess", progress=False)
    assert "alpha" in str(info.value.hint)
    assert not (tmp_path / "a.png").exists()
    out = tilegraph.run(
        img,
        str(tmp_path / "b.png"),
        model=two,
        client="inprocess",
        progress=False,
        export_options={"alpha": True},
    )
    assert os.path.exists(out.path)
    tilegraph.run(
        img, str(tmp_path / "c.tif"), model=two, client="inprocess", progress=False
    )  # TIFF holds data
    rgba = np.concatenate(
        [img, np.full((60, 70, 1), 255, np.uint8)], axis=-1
    )  # alpha passed around the model
    tilegraph.run(rgba, str(tmp_path / "d.png"), model=lambda b: b, client="inprocess", progress=False)


def test_overlap_zero_with_a_weighted_blend_is_refused(tmp_path):
    img = np.zeros((100, 100, 3), np.uint8)
    with pytest.raises(PlanError, match="overlap 0 .*blend='cosine'") as info:
        tilegraph.run(
            img, str(tmp_path / "o.zarr"), model=lambda b: b, tile=64, overlap=0, client="inprocess"
        )
    assert "crop" in info.value.hint and "tilegraph plan" in info.value.hint
    tilegraph.run(
        img, str(tmp_path / "c.zarr"), model=lambda b: b, tile=64, overlap=0, blend="crop", client="inprocess"
    )


def test_unknown_suffix_refused_with_the_supported_list(tmp_path):
    with pytest.raises(DestinationError, match="'.bmp'") as info:
        tilegraph.run(
            np.zeros((32, 32), np.uint8), str(tmp_path / "x.bmp"), model=lambda b: b, client="inprocess"
        )
    assert ".ome.zarr" in info.value.hint and ".png" in info.value.hint
    assert not (tmp_path / "x.bmp").exists()


@pytest.fixture
def modules(tmp_path, monkeypatch):
    (tmp_path / "declaring.py").write_text(
        textwrap.dedent(
            """
            import torch

            class Stride32(torch.nn.Module):
                stride = 32
                def forward(self, x):
                    assert x.shape[-1] % 32 == 0 and x.shape[-2] % 32 == 0, "tensor size mismatch"
                    return x

            class SaysThree(torch.nn.Module):
                out_channels = 3
                def forward(self, x):
                    return x[:, :1]

            class Changes(torch.nn.Module):
                def forward(self, x):  # the probe's constant input keeps 3 channels; image windows get 1
                    return x if float(x.std()) == 0.0 else x[:, :1]

            def stride32():
                return Stride32()

            def says_three():
                return SaysThree()

            def changes():
                return Changes()
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_declarations_by_import_path_are_honoured(modules, tmp_path):
    img = np.random.default_rng(4).integers(0, 255, (200, 220, 3), dtype=np.uint8)
    with pytest.raises(PlanError, match="not a multiple of 32.*use tile 480"):
        tilegraph.run(img, str(tmp_path / "s.zarr"), model="declaring:stride32", tile=500, client="inprocess")
    with pytest.raises(ModelOutputError, match="declares out_channels=3 but returned 1") as info:
        tilegraph.run(img, str(tmp_path / "t.zarr"), model="declaring:says_three", client="inprocess")
    assert info.value.path is None  # the model is named, not the image


def test_wrong_channel_count_names_the_window(modules, tmp_path):
    img = np.random.default_rng(5).integers(0, 255, (100, 120, 3), dtype=np.uint8)
    with pytest.raises(ModelOutputError, match="declaring:changes returned 1 channels, expected 3") as info:
        tilegraph.run(
            img, str(tmp_path / "w.zarr"), model="declaring:changes", tile=64, overlap=16, client="inprocess"
        )
    assert info.value.window is not None and info.value.path is None


def test_model_error_crosses_processes_with_its_cause():
    import pickle

    try:
        try:
            raise ValueError("inner")
        except ValueError as inner:
            raise ModelOutputError("model m raised", window=(1, 2)) from inner
    except ModelOutputError as exc:
        back = pickle.loads(pickle.dumps(exc))
    assert back.window == (1, 2) and isinstance(back.__cause__, ValueError)


def test_remote_import_error_says_how_to_install_or_upload():
    from tilegraph.errors import ModelLoadError
    from tilegraph.infer.runner import _build_from_path
    from tilegraph.infer.spec import describe_model

    with pytest.raises(ModelLoadError) as info:
        _build_from_path(describe_model("nosuchmodule_xyz:build"))
    assert "client.upload_file" in info.value.hint and "install" in info.value.hint


def test_plan_with_an_onnx_model_file_proposes_and_explains(tmp_path, capsys):
    import importlib.util
    import time
    import warnings

    import torch

    for package in ("onnx", "onnxruntime"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} not installed")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(4, 3, 3, padding=1)
    )
    path = str(tmp_path / "net.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net.eval(),
            (torch.rand(1, 3, 32, 32),),
            path,
            dynamo=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}},
        )
    img = tmp_path / "photo.tif"
    tifffile.imwrite(img, np.zeros((200, 300, 3), np.uint8))
    t0 = time.perf_counter()
    assert (
        main(["plan", str(img), "--model", path, "--tile", "128", "--overlap", "16", "--probe-budget", "20"])
        == 0
    )
    assert time.perf_counter() - t0 < 60
    out = capsys.readouterr().out
    assert "receptive field radius  2 px" in out and "proposed halo  2" in out
    assert "explanation" in out
