"""Folders and globs: many images on one cluster, one model load per worker, failures skipped (issue 15)."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import tifffile
import zarr

import tilegraph
from tilegraph.batch import expand_sources, is_batch, output_for
from tilegraph.cli import main

COUNTING = """
import os

def build(log):
    with open(log, "a") as f:  # one line per model built, with the process that built it
        f.write(f"{os.getpid()}\\n")
    return lambda batch: batch * 0.5
"""


def _photos(folder, n=20, corrupt=7, shape=(80, 100, 3)):
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = {}
    for i in range(n):
        path = folder / f"p{i:02d}.tif"
        if i == corrupt:
            path.write_bytes(b"II*\x00" + bytes(60))  # a TIFF header and nothing readable
            continue
        images[path.name] = rng.integers(0, 255, shape, dtype=np.uint8)
        tifffile.imwrite(path, images[path.name])
    return images


@pytest.mark.slow
def test_folder_of_twenty_tiffs_one_cluster_one_load_per_worker(tmp_path, monkeypatch):
    images = _photos(tmp_path / "photos")
    (tmp_path / "counting.py").write_text(COUNTING)
    monkeypatch.chdir(tmp_path)  # the model module lives in the current folder, as a user's would
    log = str(tmp_path / "builds.txt")
    lines = io.StringIO()
    from tilegraph.batch import run_many
    from tilegraph.options import RunOptions

    batch = run_many(
        "photos",
        "out",
        model="counting:build",
        options=RunOptions.from_kwargs(tile=64, overlap=16, factory_kwargs={"log": log}),
        stream=lines,
    )
    assert len(batch.items) == 20 and len(batch.failed) == 1
    bad = batch.failed[0]
    assert bad.label.endswith("p07.tif") and "p07.tif" in str(bad.error)
    assert isinstance(bad.error, tilegraph.errors.SourceError)
    for item in batch.items:
        if item.ok:
            out = tifffile.imread(item.destination).astype(int)
            want = np.rint(images[os.path.basename(item.destination)] * 0.5)
            assert np.abs(out - want).max() <= 1
    with open(log) as f:
        pids = f.read().split()
    assert len(pids) == len(set(pids)) >= 1  # each worker built the model once, for all 19 images
    assert len(lines.getvalue().splitlines()) == 20  # one line as each image finished
    table = batch.table()
    assert "19 of 20 images written, 1 failed" in table and "FAILED" in table


def test_glob_on_the_command_line_exit_status_counts_failures(tmp_path, monkeypatch, capsys):
    _photos(tmp_path / "photos", n=4, corrupt=2, shape=(40, 50, 3))
    monkeypatch.chdir(tmp_path)
    args = ["run", "photos/*.tif", "out", "--model", "tilegraph.testing.models:numpy_identity"]
    code = main([*args, "--tile", "32", "--overlap", "8", "--inprocess", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1  # one image failed
    assert "3 of 4 images written, 1 failed" in captured.out
    assert "p02.tif" in captured.err
    assert sorted(os.listdir(tmp_path / "out")) == ["p00.tif", "p01.tif", "p03.tif"]


def test_a_list_in_python_with_a_destination_template(tmp_path):
    a = np.full((40, 50, 3), 10, np.uint8)
    b = np.full((30, 60, 3), 20, np.uint8)
    batch = tilegraph.run(
        [a, b], str(tmp_path / "{stem}.zarr"), model=lambda x: x, client="inprocess", tile=32, overlap=8
    )
    assert [i.destination for i in batch.items] == [
        str(tmp_path / "image-0000.zarr"),
        str(tmp_path / "image-0001.zarr"),
    ]
    assert int(np.asarray(zarr.open_array(batch.items[1].destination, mode="r")[:]).max()) == 20
    assert batch.failed == []


def test_batch_sources_and_names(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    (tmp_path / "y.tif").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("")
    assert is_batch([1]) and is_batch(str(tmp_path)) and is_batch(str(tmp_path / "*.tif"))
    assert not is_batch(str(tmp_path / "y.tif")) and not is_batch("s3://bucket/*.tif")
    assert [os.path.basename(p) for p in expand_sources(str(tmp_path))] == ["x.png", "y.tif"]
    assert output_for("a/b/photo.tif", 0, "out") == os.path.join("out", "photo.tif")
    assert output_for("a/photo.bmp", 0, "out") == os.path.join("out", "photo.zarr")
    assert output_for("a/slide.ome.zarr", 3, "out/{stem}-{index}.ome.zarr") == "out/slide-3.ome.zarr"
    with pytest.raises(tilegraph.errors.InputError, match="no image matches"):
        expand_sources(str(tmp_path / "*.jpg"))
