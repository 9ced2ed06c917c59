"""Out-of-memory recovery (:mod:`tilegraph.infer.oom`) and ``tile="auto"`` (:mod:`tilegraph.infer.autotile`)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn

from tilegraph.errors import ModelError
from tilegraph.errors import OutOfMemoryError as TgOOM
from tilegraph.infer import autotile
from tilegraph.infer.autotile import AutoTile, candidate_tiles, choose_tile, measure_peak
from tilegraph.infer.oom import is_oom, run_splitting
from tilegraph.infer.runner import BadOutput, BatchRunner
from tilegraph.infer.spec import ModelSpec
from tilegraph.testing.models import OOMModel


def _runner(model, device="cpu") -> BatchRunner:
    kind = "module" if isinstance(model, nn.Module) else "callable"
    return BatchRunner(model, ModelSpec(kind=kind, name=type(model).__name__, device=device))


def _raw(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _wide_conv() -> nn.Module:
    """Memory grows with the window: a 32-channel feature map per pixel (~0.3 KiB/px at the peak)."""
    gen = torch.Generator().manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 3, 3, padding=1))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return m.eval().requires_grad_(False)


# ----------------------------------------------------------------------------- is_oom


def test_is_oom_classifies():
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(torch.cuda.OutOfMemoryError("x"))
    assert is_oom(RuntimeError("CUDA error: out of memory"))
    assert is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"))
    assert is_oom(MemoryError())
    assert not is_oom(RuntimeError("shapes cannot be multiplied"))
    assert not is_oom(ValueError("out of memory"))  # only RuntimeError messages are read
    assert not is_oom(TgOOM("a single window ran out of memory"))  # the final verdict is not retried
    with pytest.raises(RuntimeError) as info:  # torch's real CPU allocator failure
        torch.empty(10**15, dtype=torch.uint8)
    assert is_oom(info.value)


# ----------------------------------------------------------------------------- run_splitting


def test_split_batch_halves_until_it_fits():
    model = OOMModel(max_batch=2)
    runner = _runner(model)
    raw = _raw(8, 32)
    res = run_splitting(lambda part: runner.run_raw(part, channels=3, out_dtype=np.float32), raw)
    expected = np.moveaxis(raw, -1, 1).astype(np.float32) / 255
    y, clipped = res.output  # what run_raw returns, for the whole batch
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-7)  # all windows, in order
    assert clipped == 0
    assert [c[0] for c in model.calls] == [8, 4, 2, 2, 2, 2]  # halved twice, then no failed call
    assert (res.splits, res.batch) == (2, 2)
    output, splits, batch = res  # a named tuple
    assert output is res.output

    # the learned batch, passed back, avoids the failed calls on the next batch
    model.calls.clear()
    res2 = run_splitting(
        lambda part: runner.run_raw(part, channels=3, out_dtype=np.float32), raw, max_batch=batch
    )
    assert [c[0] for c in model.calls] == [2, 2, 2, 2] and res2.splits == 0
    np.testing.assert_array_equal(res2.output[0], y)


def test_split_odd_batch_and_no_oom():
    model = OOMModel(max_batch=3)
    runner = _runner(model)
    raw = _raw(7, 16)
    res = run_splitting(lambda p: runner.run_raw(p, channels=3, out_dtype=np.float32), raw)
    assert [c[0] for c in model.calls] == [7, 4, 2, 2, 2, 1]  # ceil halves: 7 -> 4 -> 2
    assert res.output[0].shape == (7, 3, 16, 16) and res.splits == 2
    model.calls.clear()
    res = run_splitting(lambda p: runner.run_raw(p, channels=3, out_dtype=np.float32), raw[:3])
    assert [c[0] for c in model.calls] == [3] and res.splits == 0 and res.batch == 3


def test_single_window_too_large_raises_tilegraph_error():
    model = OOMModel(max_pixels=600 * 600)
    runner = _runner(model)
    raw = _raw(2, 640)
    with pytest.raises(TgOOM) as info:
        run_splitting(
            lambda p: runner.run_raw(p, channels=3, out_dtype=np.float32),
            raw,
            windows=[(3, 4), (3, 5)],
            device="cuda:0",
        )
    err = info.value
    assert isinstance(err, ModelError)
    assert "640 x 640" in str(err) and "single" in str(err) and "cuda:0" in str(err)
    assert "smaller tile" in str(err) and 'tile="auto"' in str(err)
    assert err.window == (3, 4)
    assert isinstance(err.__cause__, torch.OutOfMemoryError)
    assert [c[0] for c in model.calls] == [2, 1]  # split once, then the single window failed
    again = pickle.loads(pickle.dumps(err))  # crosses process boundaries on a cluster
    assert type(again) is TgOOM and str(again) == str(err)


def test_split_sums_counts_and_handles_plain_arrays():
    runner = _runner(OOMModel(max_batch=2))
    raw = _raw(5, 8)
    res = run_splitting(lambda p: runner.run_raw(p, channels=3, out_dtype=np.uint8), raw)
    y, clipped = res.output
    np.testing.assert_array_equal(y, np.moveaxis(raw, -1, 1))  # uint8 round trip, in order
    assert clipped == 0 and res.splits == 2  # 5 -> 3 -> 2
    res = run_splitting(lambda p: (p[:, :1].copy(), len(p)), raw, max_batch=2)
    assert res.output[1] == 5 and res.output[0].shape == (5, 1, 8, 3)
    wide = raw.astype(np.int32)
    res = run_splitting(lambda p: p * 2, wide, max_batch=2)  # a plain array
    np.testing.assert_array_equal(res.output, wide * 2)


def test_min_batch_stops_splitting():
    runner = _runner(OOMModel(max_batch=1))
    with pytest.raises(TgOOM, match="a batch of 2 windows of 8 x 8"):
        run_splitting(lambda p: runner.run_raw(p, channels=3, out_dtype=np.float32), _raw(4, 8), min_batch=2)


def test_other_errors_pass_through_with_batch_element():
    calls = []

    def fn(part):
        calls.append(len(part))
        if len(part) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        if calls.count(2) == 2:  # second chunk: elements 2, 3 of the batch
            raise BadOutput("nonfinite", "model returned NaN or Inf", 1)
        return part

    with pytest.raises(BadOutput) as info:
        run_splitting(fn, _raw(4, 4))
    assert info.value.element == 3  # shifted from the chunk to the whole batch
    with pytest.raises(ValueError, match="boom"):
        run_splitting(lambda p: (_ for _ in ()).throw(ValueError("boom")), _raw(4, 4))


# ----------------------------------------------------------------------------- choose_tile


def test_candidate_tiles():
    assert candidate_tiles(16) == [256, 384, 512, 768, 1024, 1536, 2048]
    assert candidate_tiles(48)[:3] == [240, 384, 528]  # rounded to multiples of the alignment
    assert candidate_tiles(8, candidates=[100, 256, 512, 36]) == [256, 512]
    assert candidate_tiles(16, max_tile=600) == [256, 384, 512, 608]  # one window covers the image
    assert candidate_tiles(16, min_tile=300, max_tile=3000) == [384, 512, 768, 1024, 1536, 2048]
    assert candidate_tiles(16, max_tile=100) == [112]
    with pytest.raises(ValueError):
        candidate_tiles(64, candidates=[100])


def test_choose_tile_oom_model_picks_largest_window_that_runs():
    model = OOMModel(max_pixels=600 * 600)
    auto = choose_tile(
        model, channels=3, dtype="uint8", align=16, candidates=[256, 512, 768], device="cpu",
        budget_bytes=2**30, max_batch=2,
    )  # fmt: skip
    assert isinstance(auto, AutoTile)
    assert (auto.tile, auto.batch) == (512, 2)
    assert [p[:2] for p in auto.probes] == [(256, 1), (512, 1), (768, 1), (512, 2)]
    assert auto.probes[2][2] == "oom"
    assert (768, 768) in {c[2:] for c in model.calls}  # the 768 pass really ran and failed
    assert auto.overlap == 64 and auto.device == "cpu" and auto.limit_bytes == int(0.8 * 2**30)
    d = auto.to_dict()
    assert d["tile"] == 512 and d["probes"][2] == [768, 1, "oom"]


def test_choose_tile_batch_limit_and_all_too_large():
    auto = choose_tile(
        OOMModel(max_batch=4), channels=3, dtype="uint16", align=8, candidates=[64], max_batch=16,
        budget_bytes=2**30, device="cpu",
    )  # fmt: skip
    assert (auto.tile, auto.batch) == (64, 4)
    assert auto.probes[-1] == (64, 8, "oom")
    with pytest.raises(TgOOM, match="even a single 256 x 256 window"):
        choose_tile(
            OOMModel(max_pixels=100 * 100), channels=3, dtype="uint8", align=16, candidates=[256, 512],
            budget_bytes=2**30, device="cpu",
        )  # fmt: skip


def _check_measured_budget(runner, device):
    """Budget 1.5x the measured peak of a 512 px pass: expect 512 <= chosen < the first size over it."""
    peak512 = measure_peak(runner, _raw(1, 512), channels=3)
    assert peak512 > 16 * 2**20  # the 32-channel maps alone are 32 MiB: the measurement sees them
    budget = int(1.5 * peak512)
    cands = [256, 512, 768, 1024]
    auto = choose_tile(
        runner, channels=3, dtype="uint8", align=16, candidates=cands, budget_bytes=budget, margin=1.0,
        max_batch=4, device=device,
    )  # fmt: skip
    assert auto.budget_bytes == auto.limit_bytes == budget
    assert 512 <= auto.tile
    measured = {(t, b): r for t, b, r in auto.probes}
    assert measured[(auto.tile, auto.batch)] == auto.peak_bytes <= budget
    assert all(
        isinstance(r, int) and r <= budget for (t, b), r in measured.items() if b == 1 and t <= auto.tile
    )
    nxt = next((c for c in cands if c > auto.tile), None)
    if nxt is not None:  # the next size, measured here if choose_tile skipped it, is over the budget
        r = measured.get((nxt, 1))
        peak_next = r if isinstance(r, int) else measure_peak(runner, _raw(1, nxt), channels=3)
        assert peak_next > budget, (nxt, peak_next, budget, auto)
    return auto, peak512


@pytest.mark.parametrize("method", ["default", "rss-sampling"])
def test_choose_tile_cpu_against_measured_budget(torch_threads, monkeypatch, method):
    if method == "rss-sampling":  # the fallback where /proc/self/clear_refs cannot be written
        monkeypatch.setattr(autotile, "_reset_hwm", lambda: False)
    auto, peak512 = _check_measured_budget(_runner(_wide_conv()), "cpu")
    assert auto.method == ("vmhwm" if method == "default" and autotile._reset_hwm() else "rss-sampling")
    assert auto.tile == 512 and auto.batch == 1  # 768 px needs ~2.25x, a batch of 2 ~2x


def test_choose_tile_default_budget_is_available_memory(torch_threads):
    import psutil

    auto = choose_tile(
        _runner(_wide_conv()), channels=3, dtype="uint8", align=16, candidates=[128, 256], max_batch=2,
    )  # fmt: skip
    avail = psutil.virtual_memory().available
    assert 0.5 * avail < auto.budget_bytes < 1.5 * avail
    assert (auto.tile, auto.batch) == (256, 2) and 0 < auto.peak_bytes < auto.limit_bytes


@pytest.mark.gpu
def test_choose_tile_cuda_against_measured_budget():
    runner = _runner(_wide_conv(), device="cuda")
    auto, _ = _check_measured_budget(runner, "cuda")
    assert auto.method == "cuda" and auto.device.startswith("cuda")
    free_auto = choose_tile(runner, channels=3, dtype="uint8", align=16, max_batch=16)
    free, _total = torch.cuda.mem_get_info()
    assert free_auto.peak_bytes <= free_auto.limit_bytes <= free_auto.budget_bytes
    assert free_auto.budget_bytes >= 0.5 * free


@pytest.mark.gpu
def test_run_splitting_real_cuda_oom():
    """A real torch.cuda.OutOfMemoryError under a per-process memory cap is recovered by splitting."""
    runner = _runner(_wide_conv(), device="cuda")
    raw = _raw(8, 1024)
    one = measure_peak(runner, raw[:1], channels=3)
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    cap = (torch.cuda.memory_reserved() + 2.5 * one) / total  # batch 2 fits, batch 4 does not
    torch.cuda.set_per_process_memory_fraction(cap)
    try:
        with pytest.raises(torch.OutOfMemoryError):
            runner.run_raw(raw, channels=3, out_dtype=np.float32)
        torch.cuda.empty_cache()
        res = run_splitting(lambda p: runner.run_raw(p, channels=3, out_dtype=np.float32), raw, device="cuda")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert res.splits >= 1 and res.batch in (1, 2)
    ref = np.concatenate(
        [runner.run_raw(raw[i : i + 1], channels=3, out_dtype=np.float32)[0] for i in range(8)]
    )
    np.testing.assert_allclose(res.output[0], ref, rtol=1e-4, atol=1e-4)


def test_run_recovers_from_out_of_memory_by_splitting_batches(tmp_path):
    import tilegraph
    from tilegraph.testing.models import OOMModel

    image = np.random.default_rng(0).integers(0, 255, (100, 160, 3), dtype=np.uint8)
    model = OOMModel(max_batch=2)
    res = tilegraph.run(
        image, tmp_path / "o.zarr", model=model, tile=32, overlap=8, batch_size=8, client="inprocess"
    )
    np.testing.assert_array_equal(np.asarray(res.output[:]), image)
    assert res.extra["oom_splits"] >= 1
    assert res.output.attrs["tilegraph"]["oom_splits"] == res.extra["oom_splits"]
    sizes = [shape[0] for shape in model.calls]
    assert sizes.count(8) == 1  # once a batch ran out of memory, later batches start at the size that fitted


def test_run_single_window_out_of_memory_is_named(tmp_path):
    """A window that cannot be split smaller (the halo covers it) and does not fit is an error naming it."""
    import tilegraph
    from tilegraph.errors import OutOfMemoryError
    from tilegraph.testing.models import OOMModel

    image = np.zeros((150, 150, 3), np.uint8)
    with pytest.raises(OutOfMemoryError, match="96 x 96") as info:  # the 64 x 64 probe fits, windows do not
        tilegraph.run(
            image,
            tmp_path / "o.zarr",
            model=OOMModel(max_pixels=90 * 90),
            tile=96,
            overlap=8,
            halo=64,
            client="inprocess",
        )
    assert info.value.window == (0, 0)


class _OOMConv(torch.nn.Module):
    """A 5 x 5 box filter (receptive radius 2) that runs out of memory on windows over ``limit`` pixels."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.shapes: list[tuple[int, int]] = []

    def forward(self, x):
        if x.shape[2] * x.shape[3] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        self.shapes.append((x.shape[2], x.shape[3]))
        return torch.nn.functional.avg_pool2d(
            torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate"), 5, 1
        )


@pytest.mark.parametrize("blend", ["crop", "cosine"])
def test_window_that_does_not_fit_alone_is_split_with_its_halo(tmp_path, blend):
    """Promise: a single window that runs out of memory is split into overlapping sub-windows with the
    model's halo and retried; for crop, where the halo covers the receptive field, the output is exact."""
    import tilegraph
    from tilegraph.testing import whole_image_inference

    image = np.random.default_rng(3).integers(0, 255, (150, 170, 3), dtype=np.uint8)
    model = _OOMConv(limit=70 * 70)  # the 64 x 64 probe fits; 96 x 96 windows do not
    res = tilegraph.run(
        image, tmp_path / "s.zarr", model=model, tile=96, overlap=16, halo=4, blend=blend, client="inprocess"
    )
    assert res.extra["oom_splits"] >= 1
    tiled = np.asarray(res.output[:])
    plain = tilegraph.run(
        image,
        tmp_path / "p.zarr",
        model=_OOMConv(limit=10**9),
        tile=96,
        overlap=16,
        blend=blend,
        client="inprocess",
    )
    np.testing.assert_array_equal(tiled, np.asarray(plain.output[:]))  # split windows equal whole windows
    if blend == "crop":
        whole = whole_image_inference(image, _OOMConv(limit=10**9), res.plan)
        np.testing.assert_array_equal(tiled, np.clip(np.rint(whole * 255), 0, 255).astype(np.uint8))


def test_run_with_tile_auto_records_choice(tmp_path):
    import tilegraph
    from tilegraph.testing.models import OOMModel

    image = np.random.default_rng(1).integers(0, 255, (900, 1000, 3), dtype=np.uint8)
    res = tilegraph.run(
        image,
        tmp_path / "a.zarr",
        model=OOMModel(max_pixels=600 * 600),
        tile="auto",
        overlap=32,
        client="inprocess",
    )
    auto = res.extra["autotile"]
    assert auto["tile"] * auto["tile"] <= 600 * 600 and auto["tile"] >= 256
    assert res.plan.tile == (auto["tile"], auto["tile"])
    assert res.output.attrs["tilegraph"]["autotile"]["tile"] == auto["tile"]
    np.testing.assert_array_equal(np.asarray(res.output[:]), image)
