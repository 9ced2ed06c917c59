"""The resume manifest and the leftovers of crashed runs (issue 10, point 4)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import random
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tilegraph.options import RunOptions
from tilegraph.plan import Plan, make_plan
from tilegraph.sink.claim import ClaimLostError, acquire_claim, claim_path
from tilegraph.sink.manifest import (
    IdRanges,
    Manifest,
    ResumeMismatchError,
    clean,
    destination_status,
    find_leftovers,
    resume_work,
    sweep_partials,
)
from tilegraph.sink.publish import staging_path
from tilegraph.sink.safety import make_scratch, sidecar_path


def small_plan(**kw: Any) -> Plan:
    args: dict[str, Any] = dict(
        tile=128, overlap=32, channels=3, dtype="uint8", layout="YXC", scale=1, out_chunks=64
    )
    args.update(kw)
    return make_plan((300, 260), **args)


def opened(dest: str) -> Manifest:
    """The manifest of ``dest`` (there must be one)."""
    m = Manifest.open(dest)
    assert m is not None
    return m


MODEL = {"name": "LocalConv", "weights_sha256": "ab" * 32, "token": "cafe"}


def new_manifest(dest, plan=None, options=None, run_id="run-1"):
    plan = plan or small_plan()
    return Manifest.create(
        dest,
        plan=plan.to_dict(),
        model=MODEL,
        options=(options or RunOptions()).to_dict(),
        run_id=run_id,
        n_windows=plan.n_windows,
        n_chunks=plan.chunk_grid[0] * plan.chunk_grid[1],
    )


# --------------------------------------------------------------------------------------------------
# compact id sets


@settings(max_examples=60, deadline=None)
@given(st.sets(st.integers(0, 300), max_size=120), st.sets(st.integers(0, 300), max_size=120))
def test_id_ranges_behave_as_sets(a, b):
    ra, rb = IdRanges.from_ids(a), IdRanges.from_ids(b)
    assert set(ra) == a and len(ra) == len(a)
    assert set(ra | rb) == a | b
    assert ra.missing(250) == sorted(set(range(250)) - a)
    assert all((i in ra) == (i in a) for i in range(-2, 305))
    assert IdRanges.from_json(json.loads(json.dumps(ra.to_json()))) == ra


def test_id_ranges_stay_compact():
    r = IdRanges.from_ids(range(100_000)) | IdRanges([(100_000, 200_000), (300_000, 300_001)])
    assert r.ranges == ((0, 200_000), (300_000, 300_001)) and len(r) == 200_001
    with pytest.raises(ValueError):
        IdRanges([(5, 2)])


# --------------------------------------------------------------------------------------------------
# records from many workers


def _write_records(writer, ids: list[int]) -> int:
    for i in ids:
        writer.add("windows", [i], worker=os.getpid())
    return os.getpid()


def test_records_from_several_processes_union_and_compact(tmp_path):
    dest = str(tmp_path / "out.zarr")
    m = new_manifest(dest)
    writer = pickle.loads(pickle.dumps(m.writer("run-1")))
    ids = list(range(60))
    random.Random(0).shuffle(ids)
    with mp.get_context("spawn").Pool(2) as pool:
        pids = pool.starmap(_write_records, [(writer, ids[:30]), (writer, ids[30:])])
    assert len(set(pids)) == 2
    records = os.path.join(sidecar_path(dest), "records", "windows")
    assert len(os.listdir(records)) == 60  # one file per task, none rewritten
    assert m.durable_windows() == IdRanges([(0, 60)])
    m.compact()
    assert os.listdir(records) == [] and m.durable_windows() == IdRanges([(0, 60)])
    m.record("windows", [70, 71], run_id="run-2")  # a record after compaction is kept
    m.compact("windows")
    reopened = opened(dest)
    assert reopened.durable_windows() == IdRanges([(0, 60), (70, 72)])
    assert reopened.durable_chunks() == IdRanges()
    reopened.forget("windows")
    assert len(reopened.durable_windows()) == 0


def test_a_record_writer_of_a_run_that_lost_its_claim_refuses(tmp_path):
    dest = str(tmp_path / "out.zarr")
    m = new_manifest(dest)
    claim = acquire_claim(dest, run_id="run-1", heartbeat=False)
    writer = m.writer("run-1", token=claim.token())
    writer.add("chunks", [0])
    os.unlink(claim_path(dest))  # taken away
    with pytest.raises(ClaimLostError):
        writer.add("chunks", [1])
    assert m.durable_chunks() == IdRanges([(0, 1)])


# --------------------------------------------------------------------------------------------------
# identity and resume refusal


def test_compare_names_what_differs_and_ignores_what_does_not_change_the_output(tmp_path):
    dest = str(tmp_path / "out.zarr")
    plan, opts = small_plan(), RunOptions.from_kwargs(tile=128, overlap=32, blend="cosine")
    new_manifest(dest, plan, opts)
    m = opened(dest)
    assert m.compare(plan, MODEL, opts) == []
    harmless = RunOptions.from_kwargs(tile=128, overlap=32, blend="cosine", progress=False, overwrite=True)
    assert m.compare(plan, MODEL, harmless) == []
    m.check_resumable(plan.to_dict(), dict(MODEL), harmless.to_dict())

    other_plan = small_plan(overlap=48)
    other_opts = RunOptions.from_kwargs(tile=128, overlap=48, blend="linear")
    other_model = {**MODEL, "weights_sha256": "cd" * 32}
    diffs = m.compare(other_plan, other_model, other_opts)
    keys = {(d.section, d.key) for d in diffs}
    assert ("plan", "overlap") in keys and ("model", "weights_sha256") in keys
    assert ("options", "blend.mode") in keys and ("options", "tiling.overlap") in keys
    assert not any(k[1].startswith(("execution", "output.overwrite")) for k in keys)
    with pytest.raises(ResumeMismatchError) as info:
        m.check_resumable(plan, other_model, opts)
    msg = str(info.value)
    assert "model" in msg and "weights_sha256" in msg and "overwrite=True" in msg
    with pytest.raises(ResumeMismatchError, match="plan"):
        m.check_resumable(other_plan, MODEL, opts)


def test_passes_record_small_results_and_resume_continues_at_the_next(tmp_path):
    dest = str(tmp_path / "out.zarr")
    m = new_manifest(dest)
    order = ["norm-statistics", "infer", "colour-statistics", "seams", "blend", "pyramid-1"]
    assert m.next_pass(order) == "norm-statistics"
    m.pass_done("norm-statistics", {"mean": [0.1, 0.2, 0.3], "std": [1.0, 1.0, 1.0]}, run_id="run-1")
    time.sleep(0.01)
    m.pass_done("infer", run_id="run-1")
    again = opened(dest)
    assert again.passes_done() == ["norm-statistics", "infer"]
    assert again.next_pass(order) == "colour-statistics"
    assert again.pass_result("norm-statistics")["mean"] == [0.1, 0.2, 0.3]
    assert again.pass_result("seams") is None
    again.forget_pass("infer")
    assert again.next_pass(order) == "infer"
    with pytest.raises(ValueError):
        again.pass_done("../escape", {})
    again.add_run("run-2")
    assert [r["run_id"] for r in opened(dest).runs] == ["run-1", "run-2"]


def test_manifests_live_on_file_systems_only():
    with pytest.raises(Exception, match="file systems only"):
        Manifest.create("s3://bucket/out.zarr", plan={}, model={}, options={}, run_id="r")


# --------------------------------------------------------------------------------------------------
# what a resume recomputes


@pytest.mark.parametrize("blend", ["cosine", "crop"])
def test_resume_recomputes_only_what_is_not_durable(tmp_path, blend):
    plan = small_plan(blend=blend)
    ny, nx = plan.chunk_grid
    n_chunks = ny * nx

    def windows_for_chunk(c):
        return plan.windows_for_box(*plan.chunk_box(*divmod(c, nx)))

    dest = str(tmp_path / "out.zarr")
    m = new_manifest(dest, plan)
    writer = m.writer("run-1")
    # the interrupted run: windows finish in raster order, a chunk is written once all its windows are
    done_w: set[int] = set()
    for w in range(plan.n_windows // 2 + 1):
        writer.add("windows", [w])
        done_w.add(w)
        for c in range(n_chunks):
            if set(windows_for_chunk(c)) <= done_w and c not in m.durable_chunks():
                writer.add("chunks", [c])
    m.compact()
    work = resume_work(
        n_windows=plan.n_windows,
        n_chunks=n_chunks,
        windows_for_chunk=windows_for_chunk,
        durable_windows=m.durable_windows(),
        durable_chunks=m.durable_chunks(),
    )
    # brute force: what the remaining chunks need and is not durable
    todo_chunks = [c for c in range(n_chunks) if c not in m.durable_chunks()]
    need = {w for c in todo_chunks for w in windows_for_chunk(c)}
    assert work.chunks == todo_chunks and len(todo_chunks) < n_chunks
    assert work.windows == sorted(need - done_w)
    assert set(work.windows).isdisjoint(done_w)  # nothing durable is computed again
    assert len(work.windows) <= plan.n_windows - len(done_w)
    assert work.durable_windows == len(done_w) and "resuming" in work.describe()
    # doing the work completes the job
    for w in work.windows:
        done_w.add(w)
    assert all(set(windows_for_chunk(c)) <= done_w for c in work.chunks)
    with pytest.raises(ValueError):
        resume_work(n_windows=2, n_chunks=1, windows_for_chunk=lambda c: [5])


# --------------------------------------------------------------------------------------------------
# leftovers: tilegraph clean / tilegraph info


def _crashed_run(tmp_path, *, live: bool):
    """The remains of a run: claim, manifest, records, staging, scratch (sidecar and scratch=)."""
    dest = str(tmp_path / "out.zarr")
    claim = acquire_claim(dest, run_id="crashed", heartbeat=False, stale_after=1.0, heartbeat_interval=0.5)
    if not live:
        t = time.time() - 3600
        os.utime(claim.path, (t, t))
    m = new_manifest(dest, run_id="crashed")
    m.record("windows", range(5), run_id="crashed")
    m.pass_done("norm-statistics", {"mean": 0.5})
    stage = staging_path(dest, run_id="crashed")
    os.makedirs(os.path.join(stage, "c", "0"))
    inner = make_scratch(sidecar_path(dest), run_id="crashed", destination=dest)
    user_scratch = tmp_path / "scratch"
    user_scratch.mkdir()
    (user_scratch / "keep.txt").write_text("user file")
    outer = make_scratch(str(user_scratch), run_id="crashed", destination=dest)
    m.update(scratch=outer)
    export_tmp = tmp_path / ".out.zarr.partial-0123456789ab"
    export_tmp.write_bytes(b"half an export")
    return dest, claim, inner, outer, user_scratch


def test_clean_removes_the_leftovers_of_a_crashed_run_and_nothing_else(tmp_path):
    dest, claim, inner, outer, user_scratch = _crashed_run(tmp_path, live=False)
    (tmp_path / "unrelated.txt").write_text("mine")
    found = find_leftovers(dest, stale_after=1.0)
    kinds = sorted(i.kind for i in found)
    assert kinds == ["claim", "manifest", "partial", "scratch", "scratch", "staging"]
    assert not any(i.live for i in found)
    manifest_item = next(i for i in found if i.kind == "manifest")
    assert "5/9 windows" in manifest_item.detail and "norm-statistics" in manifest_item.detail
    status = destination_status(dest, stale_after=1.0)
    assert status["kind"] == "absent" and status["claim_live"] is False and "crashed" in status["claim"]
    assert status["manifest"]["windows"] == {"durable": 5, "total": 9}
    # the folder view finds the same destination's leftovers and the scratch folder in scratch=
    assert {i.path for i in find_leftovers(str(tmp_path), stale_after=1.0)} >= {i.path for i in found}
    assert any(i.path == outer for i in find_leftovers(str(user_scratch), stale_after=1.0))

    removed = clean(dest, stale_after=1.0)
    assert len(removed) == 6
    assert not os.path.exists(sidecar_path(dest)) and not os.path.exists(outer)
    assert sorted(os.listdir(user_scratch)) == ["keep.txt"]
    assert sorted(os.listdir(tmp_path)) == ["scratch", "unrelated.txt"]
    assert find_leftovers(dest) == []


def test_clean_leaves_a_running_job_alone(tmp_path):
    dest, claim, inner, outer, user_scratch = _crashed_run(tmp_path, live=True)
    claim.start_heartbeat()
    try:
        found = find_leftovers(dest, stale_after=30.0)
        assert found and all(i.live for i in found)
        assert clean(dest, stale_after=30.0) == []
        assert os.path.isdir(inner) and os.path.isdir(outer) and Manifest.exists(dest)
        assert destination_status(dest, stale_after=30.0)["claim_live"] is True
    finally:
        claim.release()


def test_legacy_scratch_of_older_versions_is_found(tmp_path):
    legacy = tmp_path / "out.zarr.tilegraph-tmp-0a1b2c3d"
    (legacy / "tiles.zarr").mkdir(parents=True)
    lookalike = tmp_path / "notes.tilegraph-tmp-0a1b2c3d"  # right name, foreign content
    lookalike.mkdir()
    (lookalike / "thesis.docx").write_text("x")
    found = find_leftovers(str(tmp_path))
    assert [(i.kind, i.path) for i in found] == [("legacy-scratch", str(legacy))]
    clean(str(tmp_path))
    assert not legacy.exists() and (lookalike / "thesis.docx").exists()


# --------------------------------------------------------------------------------------------------
# the chaos kit: counting calls per window across a crash and a resume


def _model_input(image, window):
    """Window ``(1, 3, h, w)`` as the engine hands it to a torch model (uint8 scaled to [0, 1])."""
    import numpy as np
    import torch

    tile = image[window.y0 : window.y1, window.x0 : window.x1]
    return torch.from_numpy(np.moveaxis(tile, -1, 0)[None].astype(np.float32) / 255.0)


def test_counting_model_counts_recomputation_across_a_crash_and_resume(tmp_path):
    import numpy as np

    from tilegraph.testing.chaos import CountingModel, call_counts, total_calls
    from tilegraph.testing.images import coordinate_image

    plan = small_plan(tile=96, overlap=16)
    image = np.pad(coordinate_image((300, 260)), ((0, 100), (0, 100), (0, 0)), mode="reflect")
    calls = str(tmp_path / "calls")
    model = pickle.loads(pickle.dumps(CountingModel(calls, key="origin", source_dtype="uint8")))
    dest = str(tmp_path / "out.zarr")
    ny, nx = plan.chunk_grid

    def windows_for_chunk(c):
        return plan.windows_for_box(*plan.chunk_box(*divmod(c, nx)))

    m = new_manifest(dest, plan)
    writer = m.writer("run-1")
    in_flight = 3  # computed, but the driver died before their records were written
    crash_at = plan.n_windows // 2
    for w in range(crash_at + in_flight):
        y = model(_model_input(image, plan.window(w)))
        assert y.shape == (1, 3, 96, 96)
        if w < crash_at:
            writer.add("windows", [w])
    work = resume_work(
        n_windows=plan.n_windows,
        n_chunks=ny * nx,
        windows_for_chunk=windows_for_chunk,
        durable_windows=opened(dest).durable_windows(),
    )
    for w in work.windows:
        model(_model_input(image, plan.window(w)))
    counts = call_counts(calls)
    origins = {f"{plan.window(w).y0}_{plan.window(w).x0}" for w in range(plan.n_windows)}
    assert set(counts) == origins  # every window was computed, named by its decoded origin
    recomputed = sum(c - 1 for c in counts.values())
    assert recomputed == in_flight and total_calls(calls) == plan.n_windows + in_flight


def test_hang_model_blocks_on_its_window_only(tmp_path):
    import numpy as np

    from tilegraph.testing.chaos import HangModel
    from tilegraph.testing.images import coordinate_image

    plan = small_plan(tile=96, overlap=16)
    image = np.pad(coordinate_image((300, 260)), ((0, 100), (0, 100), (0, 0)), mode="reflect")
    target = plan.window(4)
    release = tmp_path / "release"
    model = HangModel((target.y0, target.x0), seconds=30.0, release_file=str(release))
    t0 = time.monotonic()
    model(_model_input(image, plan.window(3)))
    assert time.monotonic() - t0 < 1.0
    import threading

    threading.Timer(0.5, release.touch).start()
    t0 = time.monotonic()
    model(_model_input(image, target))
    assert 0.4 < time.monotonic() - t0 < 10.0


def _count_forever(folder: str) -> None:
    import torch

    from tilegraph.testing.chaos import CountingModel

    model = CountingModel(folder, seconds_per_window=0.02)
    for i in range(100_000):
        model(torch.full((1, 3, 4, 4), float(i)))


def test_kill_worker_when_sigkills_the_computing_process_at_the_count(tmp_path):
    from tilegraph.testing.chaos import calls_by_pid, kill_worker_when, total_calls

    calls = str(tmp_path / "calls")
    os.makedirs(calls)
    ctx = mp.get_context("spawn")
    worker = ctx.Process(target=_count_forever, args=(calls,))
    worker.start()
    trigger = kill_worker_when(calls, 10, timeout=120)
    worker.join(timeout=120)
    trigger.join(timeout=10)
    assert worker.exitcode == -9 and trigger.error is None
    (threshold, seen, pid) = trigger.fired[0]
    assert threshold == 10 and pid == worker.pid and seen >= 10
    assert 10 <= total_calls(calls) <= seen + 10 and set(calls_by_pid(calls)) == {worker.pid}


def test_sweep_partials_removes_only_orphans_of_atomic_writes(tmp_path):
    stage = tmp_path / "staging-r1"
    (stage / "c" / "0").mkdir(parents=True)
    (stage / "c" / "0" / "1").write_bytes(b"chunk")
    orphan = stage / "c" / "0" / f"1.{'a' * 32}.partial"
    orphan.write_bytes(b"half a chunk")
    (stage / "zarr.json").write_text("{}")
    assert sweep_partials(str(stage)) == [str(orphan)]
    assert sorted(os.listdir(stage / "c" / "0")) == ["1"] and (stage / "zarr.json").exists()
