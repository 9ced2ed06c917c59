"""Nothing lost, whatever fails (issue 10), in process: safe destinations, scratch, claims, staging, resume.

The cluster faults (worker and driver kills, the watchdog, TLS, a dead scheduler) are in
``tests/test_chaos.py``.
"""

from __future__ import annotations

import json
import os
import threading
import uuid

import numpy as np
import pytest
import zarr

import tilegraph
from tilegraph.errors import (
    DestinationClaimedError,
    DestinationError,
    InsufficientSpaceError,
    ModelOutputError,
    ResumeMismatchError,
)
from tilegraph.sink.manifest import Manifest
from tilegraph.testing import numpy_identity

JOB = dict(tile=32, overlap=8, batch_size=1, out_chunks=40, client="inprocess", progress=False)


def _image(seed: int = 0, shape=(100, 100, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


def _tree(path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes (to prove nothing was touched)."""
    out = {}
    for root, _dirs, files in os.walk(path):
        for n in files:
            p = os.path.join(root, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, path)] = f.read()
    return out


def _zarr_source(path, image) -> str:
    zarr.create_array(store=str(path), shape=image.shape, chunks=(32, 32, 3), dtype=image.dtype)[:] = image
    return str(path)


class Flaky:
    """A numpy identity that records each window it computes and fails at the ``fail_at``-th while ``flag`` exists.

    Its behaviour depends on files, not on its state, so the model is the same object (same content
    token) for the run that fails and the run that resumes it. The probe's constant input is not
    counted.
    """

    def __init__(self, folder: str, flag: str, fail_at: int) -> None:
        self.folder, self.flag, self.fail_at = folder, flag, fail_at

    def calls(self) -> int:
        return len(os.listdir(self.folder)) if os.path.isdir(self.folder) else 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if not np.all(batch == batch.flat[0]):  # not the probe
            os.makedirs(self.folder, exist_ok=True)
            for _ in range(batch.shape[0]):
                if os.path.exists(self.flag) and self.calls() >= self.fail_at:
                    raise RuntimeError("injected failure")
                open(os.path.join(self.folder, uuid.uuid4().hex), "wb").close()
        return np.array(batch, copy=True)


# --------------------------------------------------------------------------- never delete what is not ours


def test_overwrite_onto_the_folder_holding_the_source_is_refused(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    src = _zarr_source(folder / "in.zarr", _image())
    (folder / "notes.txt").write_text("mine")
    before = _tree(folder)
    for dest in (folder, tmp_path):  # the folder holding the source, and one above it
        with pytest.raises(DestinationError, match="contains the source"):
            tilegraph.run(src, dest, model=numpy_identity, overwrite=True, **JOB)
    with pytest.raises(DestinationError, match="inside the source"):
        tilegraph.run(src, folder / "in.zarr" / "out", model=numpy_identity, overwrite=True, **JOB)
    assert _tree(folder) == before
    assert not (tmp_path / "photos.tilegraph").exists() and not (folder / "in.zarr" / "out").exists()


def test_overwrite_onto_unrelated_files_is_refused_and_deletes_nothing(tmp_path):
    dest = tmp_path / "thesis"
    (dest / "chapters").mkdir(parents=True)
    (dest / "chapters" / "one.tex").write_text("\\chapter{One}")
    (dest / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "array", "attributes": {}}))
    before = _tree(dest)
    with pytest.raises(DestinationError, match="replaces only a previous tilegraph output") as info:
        tilegraph.run(_image(), dest, model=numpy_identity, overwrite=True, **JOB)
    assert "choose a new path" in str(info.value)
    assert _tree(dest) == before
    assert not (tmp_path / "thesis.tilegraph").exists()


def test_overwrite_replaces_a_previous_output_and_an_empty_folder(tmp_path):
    img = _image()
    empty = tmp_path / "empty"
    empty.mkdir()
    res = tilegraph.run(img, empty, model=numpy_identity, overwrite=True, **JOB)
    np.testing.assert_array_equal(res.output[:], img)
    res = tilegraph.run(img, empty, model=lambda b: 1 - b, overwrite=True, **JOB)
    np.testing.assert_array_equal(res.output[:], 255 - img)
    assert sorted(os.listdir(tmp_path)) == ["empty"]  # no sidecar, no scratch left


def test_scratch_folder_files_survive_success_and_failure(tmp_path):
    scratch = tmp_path / "fast-disk"
    scratch.mkdir()
    (scratch / "other-job.bin").write_bytes(b"\x00" * 100)
    (scratch / "tilegraph-old-notes").mkdir()  # named like ours, but without our marker
    before = _tree(scratch)
    img = _image()
    res = tilegraph.run(img, tmp_path / "ok.zarr", model=numpy_identity, scratch=str(scratch), **JOB)
    np.testing.assert_array_equal(res.output[:], img)
    assert _tree(scratch) == before and sorted(os.listdir(scratch)) == [
        "other-job.bin",
        "tilegraph-old-notes",
    ]

    def broken(batch):
        if not np.all(batch == batch.flat[0]):
            raise RuntimeError("model broke")
        return batch

    with pytest.raises(ModelOutputError):
        tilegraph.run(img, tmp_path / "bad.zarr", model=broken, scratch=str(scratch), **JOB)
    assert {k: v for k, v in _tree(scratch).items() if k in before} == before
    from tilegraph.cli import main

    assert main(["clean", str(tmp_path / "bad.zarr")]) == 0  # the failed run's own subfolder goes
    assert _tree(scratch) == before
    assert not (tmp_path / "bad.zarr").exists() and not (tmp_path / "bad.zarr.tilegraph").exists()


# --------------------------------------------------------------------------- an output looks complete only when it is


def test_destination_is_absent_until_the_output_is_complete(tmp_path):
    dest = tmp_path / "out.zarr"
    seen = []

    def watching(batch):
        seen.append(dest.exists())
        return np.array(batch, copy=True)

    img = _image()
    res = tilegraph.run(img, dest, model=watching, **JOB)
    assert len(seen) > 16 and not any(seen)  # every forward pass saw no destination
    plain = zarr.open_array(str(dest), mode="r")
    np.testing.assert_array_equal(plain[:], img)
    assert plain.attrs["tilegraph"]["complete"] is True and res.path == str(dest)
    assert sorted(os.listdir(tmp_path)) == ["out.zarr"]


def test_object_store_destination_keeps_the_completion_marker_rule():
    """On an fsspec URL the output is written in place; the marker says whether it is complete."""
    url = f"memory://tg-{uuid.uuid4().hex[:8]}/out.zarr"
    img = _image()

    def broken(batch):
        if not np.all(batch == batch.flat[0]):
            raise RuntimeError("model broke")
        return batch

    with pytest.raises(ModelOutputError):
        tilegraph.run(img, url, model=broken, **JOB)
    assert zarr.open_array(url, mode="r").attrs["tilegraph"]["complete"] is False
    res = tilegraph.run(img, url, model=numpy_identity, overwrite=True, **JOB)
    assert res.output.attrs["tilegraph"]["complete"] is True
    np.testing.assert_array_equal(res.output[:], img)


# --------------------------------------------------------------------------- one writer per destination


def test_two_runs_started_together_one_is_refused_naming_the_other(tmp_path):
    img = _image(3)
    dest = tmp_path / "out.zarr"
    tilegraph.run(img, dest, model=numpy_identity, **JOB)  # a previous output both may replace
    models = {"half": lambda b: b * 0.5, "invert": lambda b: 1 - b}
    expected = {
        n: np.asarray(tilegraph.run(img, tmp_path / f"{n}.zarr", model=f, **JOB).output[:])
        for n, f in models.items()
    }
    assert not np.array_equal(expected["half"], expected["invert"])
    gate = threading.Barrier(2)
    outcome: dict = {}

    def go(name):
        def slow(batch, f=models[name]):
            threading.Event().wait(0.02)
            return f(batch)

        gate.wait()
        try:
            outcome[name] = tilegraph.run(img, dest, model=slow, overwrite=True, **JOB)
        except DestinationClaimedError as exc:
            outcome[name] = exc

    threads = [threading.Thread(target=go, args=(n,)) for n in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    errors = {n: o for n, o in outcome.items() if isinstance(o, Exception)}
    winners = {n: o for n, o in outcome.items() if not isinstance(o, Exception)}
    assert len(errors) == 1 and len(winners) == 1, outcome
    (_, err), (winner, res) = next(iter(errors.items())), next(iter(winners.items()))
    run_id = res.output.attrs["tilegraph"]["run_id"]
    assert f"run {run_id}" in str(err) and "another run is writing this destination" in str(err)
    out = zarr.open_array(str(dest), mode="r")
    np.testing.assert_array_equal(out[:], expected[winner])  # entirely the survivor's model
    assert out.attrs["tilegraph"]["run_id"] == run_id and out.attrs["tilegraph"]["complete"] is True


def test_a_stale_claim_is_taken_over_only_with_resume_or_overwrite(tmp_path):
    from tilegraph.sink.claim import acquire_claim

    dest = tmp_path / "out.zarr"
    claim = acquire_claim(dest, run_id="deadbeef", heartbeat=False, stale_after=2.0, heartbeat_interval=1.0)
    with pytest.raises(DestinationClaimedError, match="deadbeef"):
        tilegraph.run(_image(), dest, model=numpy_identity, **JOB)  # live (this process holds it)
    os.utime(claim.path, (1, 1))  # its heartbeat stopped long ago
    with pytest.raises(DestinationClaimedError, match="seems to have stopped"):
        tilegraph.run(_image(), dest, model=numpy_identity, **JOB)
    res = tilegraph.run(_image(), dest, model=numpy_identity, overwrite=True, **JOB)
    assert res.output.attrs["tilegraph"]["complete"] is True


# --------------------------------------------------------------------------- resume


def test_resume_recomputes_only_what_is_missing_and_matches_a_clean_run(tmp_path):
    img = _image(5)
    clean = tilegraph.run(img, tmp_path / "clean.zarr", model=numpy_identity, blend="gaussian", **JOB)
    dest = tmp_path / "out.zarr"
    flag = tmp_path / "fail"
    flag.touch()
    model = Flaky(str(tmp_path / "calls"), str(flag), fail_at=7)
    with pytest.raises(ModelOutputError, match="injected failure") as info:
        tilegraph.run(img, dest, model=model, blend="gaussian", **JOB)
    assert info.value.window is not None
    assert not dest.exists()
    durable = Manifest.open(dest).durable_windows()
    assert len(durable) == 7 and model.calls() == 7
    # what is left is listed by `tilegraph info` and refused without resume/overwrite
    with pytest.raises(DestinationError, match="interrupted run"):
        tilegraph.run(img, dest, model=model, blend="gaussian", **JOB)
    with pytest.raises(ResumeMismatchError, match=r"options\.blend\.mode: 'gaussian' then, 'cosine' now"):
        tilegraph.run(img, dest, model=model, resume=True, **JOB)
    with pytest.raises(ResumeMismatchError, match="model"):
        tilegraph.run(img, dest, model=numpy_identity, blend="gaussian", resume=True, **JOB)
    flag.unlink()
    res = tilegraph.run(img, dest, model=model, blend="gaussian", resume=True, **JOB)
    n = res.plan.n_windows
    assert model.calls() - 7 == n - len(durable)  # only the windows that were not durable
    np.testing.assert_array_equal(res.output[:], clean.output[:])
    assert sorted(os.listdir(tmp_path)) == ["calls", "clean.zarr", "out.zarr"]


def test_resume_after_the_blend_started_skips_written_chunks(tmp_path, monkeypatch):
    """A failure while blending: the resumed run writes only the chunks not recorded, and no window again."""
    from tilegraph.errors import SinkError
    from tilegraph.sink.builtin import ZarrWriter

    img = _image(6, (120, 120, 3))
    clean = tilegraph.run(img, tmp_path / "clean.zarr", model=numpy_identity, **JOB)
    dest = tmp_path / "out.zarr"
    model = Flaky(str(tmp_path / "calls"), str(tmp_path / "never"), 0)
    original = ZarrWriter.write
    writes: list = []

    def failing(self, box, block, **kw):
        if len(writes) == 4:
            raise SinkError("disk went away", path=self.path)
        writes.append(box)
        return original(self, box, block, **kw)

    monkeypatch.setattr(ZarrWriter, "write", failing)
    with pytest.raises(SinkError, match="disk went away"):
        tilegraph.run(img, dest, model=model, **JOB)
    monkeypatch.setattr(ZarrWriter, "write", original)
    n = model.calls()
    m = Manifest.open(dest)
    assert len(m.durable_chunks()) == 4 and len(m.durable_windows()) == n
    res = tilegraph.run(img, dest, model=model, resume=True, **JOB)
    assert model.calls() == n  # every window was durable: the model never ran again
    assert res.plan.chunk_grid[0] * res.plan.chunk_grid[1] == 9
    np.testing.assert_array_equal(res.output[:], clean.output[:])


def test_info_lists_and_clean_removes_leftovers(tmp_path, capsys):
    from tilegraph.cli import main

    img = _image()
    dest = tmp_path / "out.zarr"
    flag = tmp_path / "fail"
    flag.touch()
    with pytest.raises(ModelOutputError):
        tilegraph.run(img, dest, model=Flaky(str(tmp_path / "c"), str(flag), 3), **JOB)
    capsys.readouterr()
    assert main(["info", str(dest)]) == 0
    state = json.loads(capsys.readouterr().out)["destination_state"]
    kinds = sorted(item["kind"] for item in state["leftovers"])
    assert kinds == ["manifest", "scratch", "staging"] and state["manifest"]["windows"]["durable"] == 3
    assert main(["clean", str(dest), "--dry-run"]) == 0
    assert (tmp_path / "out.zarr.tilegraph").exists()
    assert main(["clean", str(dest)]) == 0
    assert not (tmp_path / "out.zarr.tilegraph").exists() and not dest.exists()


# --------------------------------------------------------------------------- free space, models by content


def test_free_space_is_checked_before_any_work(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    calls = []

    def model(batch):
        calls.append(1)
        return batch

    with pytest.raises(
        InsufficientSpaceError, match=r"needs about 0\.00 GiB .*tile store .* but only"
    ) as info:
        tilegraph.run(_image(), tmp_path / "out.zarr", model=model, **JOB)
    assert "check_space=False" in str(info.value)
    assert len(calls) == 1  # the probe only
    assert os.listdir(tmp_path) == []
    res = tilegraph.run(_image(), tmp_path / "out.zarr", model=model, check_space=False, **JOB)
    assert res.output.attrs["tilegraph"]["complete"] is True


def test_model_changed_in_place_gives_the_new_output(tmp_path):
    import torch

    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 3, 1)
    img = _image()
    first = np.asarray(
        tilegraph.run(img, tmp_path / "a.zarr", model=model, output_dtype="float32", **JOB).output[:]
    )
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    second = np.asarray(
        tilegraph.run(img, tmp_path / "b.zarr", model=model, output_dtype="float32", **JOB).output[:]
    )
    assert not np.allclose(first, second)


# --------------------------------------------------------------------------- stall notice


def test_progress_says_when_windows_stop_finishing():
    import io

    from tilegraph.engine.progress import Progress

    out = io.StringIO()
    p = Progress(enabled=True, stream=out, min_stall=0.0)
    for k in range(5):
        p.update("windows", k, 10)
    p._per_window = [0.8, 1.0, 1.2]  # seconds per window so far (median 1 s)
    p._last_windows = (100.0, 4)
    assert p.check_stall(now=104.0) is None
    message = p.check_stall(now=106.0)
    assert message is not None and "no window has finished for 6 s (6x the median 1.0 s" in message
    assert p.check_stall(now=200.0) is None  # once per stall
    p.update("windows", 6, 10)  # windows finish again: a later stall is reported again
    assert p._warned_at is None
    p.close()
