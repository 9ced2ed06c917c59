"""The command line: plan, info, run, demo."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import zarr

from tilegraph.cli import main


def _zarr(tmp_path, shape=(300, 400, 3)):
    img = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    path = str(tmp_path / "in.zarr")
    zarr.create_array(store=path, shape=img.shape, chunks=(128, 128, 3), dtype="uint8")[:] = img
    return path, img


def test_plan_prints_geometry_without_a_model(tmp_path, capsys):
    path, _ = _zarr(tmp_path)
    assert main(["plan", path, "--tile", "128", "--overlap", "32"]) == 0
    out = capsys.readouterr().out
    assert "3 x 4 = 12" in out  # windows
    assert "cost factor (T/S)^2" in out and "1.778" in out
    assert "tile store on disk" in out
    assert main(["plan", path, "--tile", "128", "--overlap", "0.25", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["plan"]["overlap"] == [32, 32]


def test_plan_with_model_measures_receptive_field(tmp_path, capsys):
    path, _ = _zarr(tmp_path, (100, 120, 3))
    assert (
        main(
            [
                "plan",
                path,
                "--tile",
                "64",
                "--overlap",
                "16",
                "--model",
                "tilegraph.testing.models:make_local_conv",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "receptive field radius  2 px" in out  # LocalConv(layers=2)
    assert "proposed overlap  4" in out


def test_plan_refuses_bad_geometry(tmp_path, capsys):
    path, _ = _zarr(tmp_path)
    assert main(["plan", path, "--tile", "64", "--overlap", "64"]) == 2
    assert "larger than overlap" in capsys.readouterr().err


def test_info_and_missing_file(tmp_path, capsys):
    path, _ = _zarr(tmp_path)
    assert main(["info", path]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == [300, 400] and info["dtype"] == "uint8"
    assert main(["info", str(tmp_path / "missing.tif")]) == 2
    assert "missing.tif" in capsys.readouterr().err


def test_run_inprocess(tmp_path, capsys):
    path, img = _zarr(tmp_path)
    out = str(tmp_path / "out.zarr")
    code = main(
        [
            "run",
            path,
            out,
            "--model",
            "tilegraph.testing.models:make_identity",
            "--tile",
            "128",
            "--overlap",
            "32",
            "--inprocess",
            "--blend",
            "linear",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["windows"] == 12 and summary["clipped"] == 0
    np.testing.assert_array_equal(zarr.open_array(out, mode="r")[:], img)


def test_demo_small_inprocess(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tilegraph.cli",
            "demo",
            "--output",
            str(out),
            "--height",
            "600",
            "--width",
            "800",
            "--tile",
            "256",
            "--overlap",
            "32",
            "--inprocess",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "windows (3 x 4)" in proc.stdout
    assert "MP/s" in proc.stdout and "worst step across a window seam" in proc.stdout
    restored = zarr.open_array(str(out / "restored.zarr"), mode="r")
    assert restored.shape == (600, 800, 3) and restored.dtype == np.uint16
    assert restored.attrs["tilegraph"]["complete"] is True


def test_qa_with_grid_shift(tmp_path, capsys):
    from tilegraph.testing import smooth_gradient

    img = smooth_gradient((400, 400), "uint16")
    src = str(tmp_path / "g.zarr")
    zarr.create_array(store=src, shape=img.shape, chunks=(128, 128, 3), dtype="uint16")[:] = img
    reports = {}
    for name, model in (
        ("exact", "tilegraph.testing.models:make_local_conv"),
        ("drift", "tilegraph.testing.models:make_drift_model"),
    ):
        out = str(tmp_path / f"{name}.zarr")
        assert (
            main(
                [
                    "run",
                    src,
                    out,
                    "--model",
                    model,
                    "--tile",
                    "64",
                    "--overlap",
                    "16",
                    "--blend",
                    "crop",
                    "--inprocess",
                ]
            )
            == 0
        )
        capsys.readouterr()
        assert main(["qa", out, "--grid-shift"]) == 2  # nothing recorded in the output is imported or run
        assert f"pass --model {model}" in capsys.readouterr().err
        assert main(["qa", out, "--grid-shift", "--model", model]) == 0
        reports[name] = json.loads(capsys.readouterr().out)
        assert reports[name]["report"].endswith("report.html")
    assert reports["exact"]["grid_shift_max_abs_dn"] < 0.01  # an exact model does not care where the grid is
    assert reports["drift"]["grid_shift_max_abs_dn"] > 1.0  # per-window drift moves with the grid
    assert reports["drift"]["gradient_ratio"] > 1.5 > reports["exact"]["gradient_ratio"]
