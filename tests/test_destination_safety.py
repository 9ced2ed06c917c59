"""Destination safety (issue 10, points 1 and 3): nothing tilegraph did not create is ever deleted.

Every refusal test snapshots the files it protects (names and bytes) and checks them afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import zarr

from tilegraph.errors import DestinationError, SinkError
from tilegraph.sink.publish import (
    adopt_staging,
    find_staging,
    is_complete,
    publish,
    staging_path,
    uses_rename,
)
from tilegraph.sink.safety import (
    SCRATCH_MARKER,
    adopt_scratch,
    check_replaceable,
    is_scratch,
    is_tilegraph_output,
    make_scratch,
    overlap_with_source,
    remove_previous_output,
    remove_scratch,
    sidecar_path,
)
from tilegraph.sink.zarr_sink import create_output, mark_complete


def snapshot(root) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (folders as ``<dir>``)."""
    out = {}
    for base, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(base, d), root)] = "<dir>"
        for f in files:
            p = os.path.join(base, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def tilegraph_zarr(path, *, complete=True, value=7) -> str:
    """A small previous tilegraph output (created by the Zarr sink, as a run does)."""
    arr = create_output(
        str(path),
        shape=(40, 30),
        channels=3,
        dtype="uint8",
        chunks=(16, 16),
        layout="YXC",
        attrs={"version": "test", "model": {"name": "m"}},
    )
    arr[:] = value
    if complete:
        mark_complete(str(path), {})
    return str(path)


def user_folder(path) -> str:
    os.makedirs(os.path.join(path, "sub"), exist_ok=True)
    for name, data in (("notes.txt", b"my notes"), ("sub/photo.raw", os.urandom(512))):
        with open(os.path.join(path, name), "wb") as f:
            f.write(data)
    return str(path)


# --------------------------------------------------------------------------------------------------
# the source is never a destination


def test_overwrite_onto_the_folder_holding_the_source_is_refused(tmp_path):
    folder = tmp_path / "shoot"
    folder.mkdir()
    src = folder / "slide.zarr"
    z = zarr.create_array(str(src), shape=(32, 32), chunks=(16, 16), dtype="uint8")
    z[:] = 9
    before = snapshot(folder)
    with pytest.raises(DestinationError) as info:
        check_replaceable(str(folder), source_path=str(src), overwrite=True)
    assert "contains the source" in str(info.value)
    assert info.value.path == str(folder)
    with pytest.raises(DestinationError):
        remove_previous_output(str(folder), source_path=str(src))
    assert snapshot(folder) == before
    assert int(np.asarray(zarr.open_array(str(src), mode="r")[:]).sum()) == 9 * 32 * 32


def test_destination_equal_to_or_inside_the_source_is_refused(tmp_path):
    src = tilegraph_zarr(tmp_path / "src.zarr")  # even a tilegraph output, once it is the source
    before = snapshot(src)
    with pytest.raises(DestinationError, match="is the source itself"):
        check_replaceable(src, source_path=src, overwrite=True)
    with pytest.raises(DestinationError, match="inside the source"):
        check_replaceable(os.path.join(src, "out.zarr"), source_path=src, overwrite=True)
    assert snapshot(src) == before


def test_symlinks_and_hard_links_to_the_source_are_resolved(tmp_path):
    src_dir = tmp_path / "data"
    src_dir.mkdir()
    src = src_dir / "img.tif"
    src.write_bytes(b"II*\x00" + bytes(100))
    link_dir = tmp_path / "alias"
    link_dir.symlink_to(src_dir)
    assert overlap_with_source(str(link_dir), str(src)) == "contains"
    with pytest.raises(DestinationError):
        check_replaceable(str(link_dir / "img.tif"), source_path=str(src), overwrite=True)
    hard = tmp_path / "hard.tif"
    os.link(src, hard)
    assert overlap_with_source(str(hard), str(src)) == "is"
    with pytest.raises(DestinationError, match="source itself"):
        check_replaceable(str(hard), source_path=str(src), overwrite=True)
    assert src.read_bytes() == b"II*\x00" + bytes(100)


def test_urls_are_compared_as_strings():
    assert overlap_with_source("s3://b/x.zarr/", "s3://b/x.zarr") == "is"
    assert overlap_with_source("s3://b/x.zarr/out", "s3://b/x.zarr") == "inside"
    assert overlap_with_source("s3://b", "s3://b/x.zarr") == "contains"
    assert overlap_with_source("s3://b/x.zarr2", "s3://b/x.zarr") is None
    assert overlap_with_source("/tmp/x.zarr", "s3://b/x.zarr") is None
    with pytest.raises(DestinationError):
        check_replaceable(
            "memory://bucket/a.zarr/out.zarr", source_path="memory://bucket/a.zarr", overwrite=True
        )


# --------------------------------------------------------------------------------------------------
# what overwrite=True may replace


def test_overwrite_onto_unrelated_files_is_refused_and_nothing_deleted(tmp_path):
    dest = user_folder(tmp_path / "stuff")
    before = snapshot(dest)
    with pytest.raises(DestinationError) as info:
        check_replaceable(dest, source_path=str(tmp_path / "src.tif"), overwrite=True)
    msg = str(info.value)
    assert "Zarr" in msg and "notes.txt" in msg and "choose a new path" in msg
    with pytest.raises(DestinationError):
        remove_previous_output(dest, source_path=None)
    assert snapshot(dest) == before


def test_plain_zarr_and_tampered_tilegraph_outputs_are_refused(tmp_path):
    plain = tmp_path / "plain.zarr"
    zarr.create_array(str(plain), shape=(8, 8), chunks=(4, 4), dtype="uint8")[:] = 1
    before = snapshot(plain)
    with pytest.raises(DestinationError, match="no tilegraph attributes"):
        remove_previous_output(str(plain), source_path=None)
    assert snapshot(plain) == before

    tampered = tilegraph_zarr(tmp_path / "old.zarr")
    with open(os.path.join(tampered, "thesis.docx"), "wb") as f:
        f.write(b"important")
    before = snapshot(tampered)
    with pytest.raises(DestinationError, match="thesis.docx"):
        remove_previous_output(tampered, source_path=None)
    assert snapshot(tampered) == before


def test_previous_tilegraph_output_and_empty_folder_are_replaceable(tmp_path):
    old = tilegraph_zarr(tmp_path / "old.zarr")
    with open(os.path.join(old, "zarr.0123456789abcdef0123456789abcdef.partial"), "wb") as f:
        f.write(b"orphan of a killed atomic write")
    assert is_tilegraph_output(old)
    with pytest.raises(DestinationError, match="overwrite=True"):
        check_replaceable(old, source_path=None, overwrite=False)
    state = check_replaceable(old, source_path=None, overwrite=True)
    assert (state.kind, state.complete) == ("tilegraph-zarr", True)
    incomplete = tilegraph_zarr(tmp_path / "half.zarr", complete=False)
    assert check_replaceable(incomplete, source_path=None, overwrite=True).complete is False
    remove_previous_output(old, source_path=None)
    assert not os.path.exists(old)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_replaceable(str(empty), source_path=None, overwrite=True).kind == "empty-folder"
    remove_previous_output(str(empty), source_path=None)
    assert not empty.exists()
    assert check_replaceable(str(tmp_path / "new.zarr"), source_path=None, overwrite=False).kind == "absent"


def test_image_files_are_recognised_by_provenance(tmp_path):
    import tifffile

    from tilegraph.sink.tiff_sink import export

    img = (np.arange(32 * 32 * 3) % 251).astype("uint8").reshape(32, 32, 3)
    ours = {}
    for suffix in (".tif", ".png", ".jpg"):
        ours[suffix] = export(img, str(tmp_path / f"ours{suffix}"), provenance={"model": "m"})
        assert check_replaceable(ours[suffix], source_path=None, overwrite=True).kind == "tilegraph-file"
    theirs = tmp_path / "theirs.tif"
    tifffile.imwrite(theirs, img)
    text = tmp_path / "theirs.png"
    text.write_bytes(b"not an image at all")
    for path in (theirs, text):
        data = path.read_bytes()
        with pytest.raises(DestinationError, match="without tilegraph's provenance"):
            remove_previous_output(str(path), source_path=None)
        assert path.read_bytes() == data
    remove_previous_output(ours[".png"], source_path=None)
    assert not os.path.exists(ours[".png"])


def test_a_symlink_destination_is_refused(tmp_path):
    target = tilegraph_zarr(tmp_path / "real.zarr")
    link = tmp_path / "link.zarr"
    link.symlink_to(target)
    before = snapshot(target)
    with pytest.raises(DestinationError, match="symbolic link"):
        remove_previous_output(str(link), source_path=None)
    assert link.is_symlink() and snapshot(target) == before


# --------------------------------------------------------------------------------------------------
# scratch space


def test_scratch_is_a_fresh_subfolder_and_user_files_survive(tmp_path):
    scratch = user_folder(tmp_path / "scratch")
    before = snapshot(scratch)
    a = make_scratch(scratch, run_id="run-a", destination="/x/out.zarr")
    b = make_scratch(scratch, run_id="run-a", destination="/x/out.zarr")
    assert a != b and os.path.dirname(a) == scratch and is_scratch(a) and is_scratch(b)
    with open(os.path.join(a, "tiles.bin"), "wb") as f:  # what a run writes there
        f.write(os.urandom(100))
    os.makedirs(os.path.join(a, "tiles.zarr", "c", "0"))
    remove_scratch(a)
    remove_scratch(b)
    assert not os.path.exists(a) and not os.path.exists(b)
    assert snapshot(scratch) == before  # success or failure: the user's files are all there


def test_remove_scratch_refuses_what_tilegraph_did_not_make(tmp_path):
    scratch = user_folder(tmp_path / "scratch")
    before = snapshot(scratch)
    with pytest.raises(DestinationError, match="did not create"):
        remove_scratch(scratch)
    fake = os.path.join(scratch, "tilegraph-looks-like-ours")  # right name, no marker
    os.mkdir(fake)
    with pytest.raises(DestinationError):
        remove_scratch(fake)
    os.rmdir(fake)
    assert snapshot(scratch) == before


def test_interrupted_scratch_removal_can_be_finished(tmp_path):
    s = make_scratch(str(tmp_path / "new-parent"), run_id="r1")  # parent created on demand
    assert os.path.isdir(s)
    os.makedirs(os.path.join(s, "tiles.zarr"))
    remove_scratch(s)
    assert not os.path.exists(s) and os.path.isdir(tmp_path / "new-parent")
    # a marker-only folder (removal killed after the contents went) is still recognised and removable
    s2 = make_scratch(str(tmp_path), run_id="r2")
    assert os.listdir(s2) == [SCRATCH_MARKER]
    remove_scratch(s2)
    assert not os.path.exists(s2)


def test_scratch_inside_the_source_is_refused_and_adoption_checks_the_destination(tmp_path):
    src = tilegraph_zarr(tmp_path / "src.zarr")
    with pytest.raises(DestinationError, match="inside the source"):
        make_scratch(src, source_path=src)
    s = make_scratch(str(tmp_path), run_id="old", destination="/d/out.zarr")
    with pytest.raises(DestinationError, match="another destination"):
        adopt_scratch(s, run_id="new", destination="/d/other.zarr")
    assert adopt_scratch(s, run_id="new", destination="/d/out.zarr") == s
    from tilegraph.sink.safety import read_scratch_marker

    marker = read_scratch_marker(s)
    assert marker is not None and marker["run_id"] == "new"


# --------------------------------------------------------------------------------------------------
# publication


def test_staged_output_is_invisible_until_published(tmp_path):
    import dask.array as da

    dest = str(tmp_path / "out.zarr")
    assert uses_rename(dest) and not uses_rename("s3://b/out.zarr")
    assert staging_path("s3://b/out.zarr", run_id="r") == "s3://b/out.zarr"
    stage = staging_path(dest, run_id="r1")
    assert os.path.dirname(stage) == sidecar_path(dest)
    tilegraph_zarr(stage, complete=False, value=5)
    # mid-run: plain readers find nothing at the destination
    with pytest.raises(Exception):  # noqa: B017 (zarr/dask raise various "not found" errors)
        zarr.open_array(dest, mode="r")
    with pytest.raises(Exception):  # noqa: B017
        da.from_zarr(dest)
    with pytest.raises(SinkError, match="completion marker"):
        publish(stage, dest)
    mark_complete(stage, {})
    assert is_complete(stage) and find_staging(dest) == [stage]
    assert publish(stage, dest) == os.path.abspath(dest)
    assert not os.path.exists(stage)
    assert is_complete(dest)
    with open(os.path.join(dest, "zarr.json")) as f:
        assert json.load(f)["attributes"]["tilegraph"]["complete"] is True
    assert int(da.from_zarr(dest).sum().compute()) == 5 * 40 * 30 * 3


def test_publish_replaces_only_a_previous_output_and_keeps_its_result_otherwise(tmp_path):
    dest = str(tmp_path / "out.zarr")
    tilegraph_zarr(dest, value=1)
    stage = staging_path(dest, run_id="r2")
    tilegraph_zarr(stage, value=2)
    with pytest.raises(DestinationError):  # overwrite not given
        publish(stage, dest)
    publish(stage, dest, overwrite=True)
    assert int(np.asarray(zarr.open_array(dest, mode="r")[0, 0, 0])) == 2
    assert [n for n in os.listdir(sidecar_path(dest)) if n.startswith("replaced-")] == []

    # the user put their own files at the destination during the run: refused, output kept in staging
    other = str(tmp_path / "other.zarr")
    stage = staging_path(other, run_id="r3")
    tilegraph_zarr(stage, value=3)
    user_folder(other)
    before = snapshot(other)
    with pytest.raises(DestinationError, match="kept at"):
        publish(stage, other, overwrite=True)
    assert snapshot(other) == before and is_complete(stage)


def test_adopt_staging_renames_the_previous_runs_output(tmp_path):
    dest = str(tmp_path / "out.zarr")
    old = staging_path(dest, run_id="old")
    tilegraph_zarr(old, complete=False)
    new = adopt_staging(old, dest, run_id="new")
    assert new == staging_path(dest, run_id="new") and os.path.isdir(new) and not os.path.exists(old)
    with pytest.raises(DestinationError):
        adopt_staging(str(tmp_path), dest, run_id="x")


def test_object_store_outputs_follow_the_same_rules():
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"memory://safety-{os.getpid()}-{os.urandom(4).hex()}"
    meta = {"zarr_format": 3, "node_type": "array", "attributes": {"tilegraph": {"complete": True}}}
    fs.pipe(f"{root}/old.zarr/zarr.json", json.dumps(meta).encode())
    fs.pipe(f"{root}/old.zarr/c/0/0", b"chunk")
    fs.pipe(f"{root}/theirs/data.csv", b"1,2,3")
    assert check_replaceable(f"{root}/old.zarr", source_path=None, overwrite=True).kind == "tilegraph-zarr"
    with pytest.raises(DestinationError, match="data.csv"):
        remove_previous_output(f"{root}/theirs", source_path=None)
    assert fs.cat_file(f"{root}/theirs/data.csv") == b"1,2,3"
    remove_previous_output(f"{root}/old.zarr", source_path=None)
    assert not fs.exists(f"{root}/old.zarr/zarr.json")
