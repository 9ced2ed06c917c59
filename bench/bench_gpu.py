"""tilegraph against the model alone, MONAI and a hand-written ``map_overlap``: one script for GPU and CPU.

What it measures (issue 4), every row in megapixels of *source image* per second (image pixels / wall time):

U-Net table -- the reference U-Net of ``shared/anchors/gpu_anchor.py`` (7.8 M parameters, seeded
``tilegraph.testing.models.ReferenceUNet``), channels_last, on a random uint8 RGB Zarr (chunks 1024, zstd):

(a)  the model alone over exactly tilegraph's windows (``make_plan`` with the run's geometry; the same
     boxes are checked against the run's own plan), batched like tilegraph (``--batch``), data already on
     the device in the model's dtype; ``torch.backends.cudnn.benchmark`` on, as in the anchor.
(a2) the same with tilegraph's runner arithmetic: float32 weights under ``torch.autocast`` and cudnn
     benchmark off (what a tilegraph worker does); informational.
(b)  MONAI ``sliding_window_inference`` with the image in device memory: roi 512, overlap 0.25, gaussian,
     the better of sw_batch 4 and 16.
(c)  the anchor's hand-written ``dask.array.map_overlap`` Zarr -> model -> Zarr (part C: chunk 1024, depth
     64, reflect boundary, dask threads 1 and 4, the better), in this process.
(d)  ``tilegraph.run`` Zarr -> Zarr, tile 1024, overlap 128, ``crop`` and ``cosine``, on an embedded
     cluster (``tilegraph.cluster.local.embedded_cluster()``: one worker per GPU) started before the clock
     and warmed by one small run of the same model (so CUDA start-up is outside the clock, as for the
     other rows' warm-up calls).
Ratios printed: (d)/(a) and (d)/(b) as throughput ratios.

RRDB table -- the ESRGAN-style RRDB x4 of ``shared/anchors/rrdb_x4_anchor.py`` (16.7 M parameters,
random seeded weights) on a 2048^2 input, tile 256, overlap 32: rows (a) and (d) (crop and cosine), in
input megapixels per second.

GPU configuration (pinned; used when CUDA is available): image 16256^2 (18 x 18 windows of 1024 at stride
896, window work 1.29 x the image), fp16, channels_last, batch 4. CPU mode (no CUDA, or ``--cpu``):
float32, smaller defaults (``--size``, default 1024, tile 512, overlap 64; the RRDB with ``--rrdb-blocks``
1 on a 32^2 input) -- the U-Net does well under 1 MP/s on two cores. Torch threads on CPU are equal in
every row: ``torch.set_num_threads(--threads)`` here and, through ``client.run``, in the worker
(Dask starts workers with ``OMP_NUM_THREADS=1``).

A time budget (``--budget``, default ``$BUDGET_S``, else 330 s on GPU, 3600 s on CPU) guards each part, like the anchor's
``BUDGET_S``; skipped parts say so. Rows are printed as they are measured, the tables at the end, and
``--json PATH`` writes every number. On the GPU machine run it through ``bench/run_gpu.sh``, which
installs the wheels that ``bench/gpu_wheels.sh`` downloads (dask, distributed, zarr, monai, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

T0 = time.time()
RESULTS: dict = {"rows": [], "notes": []}


def log(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


# ----------------------------------------------------------------------------- the RRDB x4 of the anchor
# Copied from shared/anchors/rrdb_x4_anchor.py (not part of tilegraph.testing); ``scale = 4`` declared
# for tilegraph's model contract. Defined here, it reaches the workers by value (cloudpickle).


class DenseBlock(nn.Module):
    def __init__(self, nf=64, gc=32):
        super().__init__()
        self.convs = nn.ModuleList(
            [nn.Conv2d(nf + i * gc, gc if i < 4 else nf, 3, padding=1) for i in range(5)]
        )

    def forward(self, x):
        feats = [x]
        for i, c in enumerate(self.convs):
            y = c(torch.cat(feats, 1))
            if i < 4:
                feats.append(F.leaky_relu(y, 0.2))
        return x + 0.2 * y


class RRDB(nn.Module):
    def __init__(self, nf=64):
        super().__init__()
        self.blocks = nn.Sequential(DenseBlock(nf), DenseBlock(nf), DenseBlock(nf))

    def forward(self, x):
        return x + 0.2 * self.blocks(x)


class RRDBNet(nn.Module):
    scale = 4
    in_channels = 3
    out_channels = 3
    stride = 1

    def __init__(self, nf=64, nb=23):
        super().__init__()
        self.first = nn.Conv2d(3, nf, 3, padding=1)
        self.body = nn.Sequential(*[RRDB(nf) for _ in range(nb)])
        self.trunk = nn.Conv2d(nf, nf, 3, padding=1)
        self.up1 = nn.Conv2d(nf, nf, 3, padding=1)
        self.up2 = nn.Conv2d(nf, nf, 3, padding=1)
        self.hr = nn.Conv2d(nf, nf, 3, padding=1)
        self.last = nn.Conv2d(nf, 3, 3, padding=1)

    def forward(self, x):
        f = self.first(x)
        f = f + self.trunk(self.body(f))
        f = F.leaky_relu(self.up1(F.interpolate(f, scale_factor=2, mode="nearest")), 0.2)
        f = F.leaky_relu(self.up2(F.interpolate(f, scale_factor=2, mode="nearest")), 0.2)
        return self.last(F.leaky_relu(self.hr(f), 0.2))


def make_rrdb(blocks: int) -> RRDBNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = RRDBNet(nb=blocks)
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


# ----------------------------------------------------------------------------- helpers


class Bench:
    """Device, dtype, budget and the result rows."""

    def __init__(self, args):
        self.args = args
        self.dev = torch.device(args.device)
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.precision]
        self.deadline = T0 + args.budget
        self.json_path = args.json

    def left(self) -> float:
        return self.deadline - time.time()

    def sync(self) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize()

    def free(self) -> None:
        if self.dev.type == "cuda":
            torch.cuda.empty_cache()

    def row(self, table: str, key: str, label: str, seconds: float | None, mpix: float, **extra) -> dict:
        r = {"table": table, "key": key, "label": label, "s": seconds, "image_mp": mpix, **extra}
        r["mp_s"] = mpix / seconds if seconds else None
        RESULTS["rows"].append(r)
        if seconds:
            log(f"ROW {table} {key}: {seconds:.3f} s, {r['mp_s']:.3f} MP/s  {label}")
        else:
            log(f"ROW {table} {key}: skipped ({extra.get('skipped', '')})  {label}")
        self.dump()
        return r

    def skip(self, table, key, label, mpix, why) -> dict:
        return self.row(table, key, label, None, mpix, skipped=why)

    def dump(self) -> None:
        if self.json_path:
            with open(self.json_path, "w") as f:
                json.dump(RESULTS, f, indent=1, default=str)


def write_random_zarr(path: str, size: int, chunk: int, seed: int = 0) -> np.ndarray:
    """Random uint8 RGB ``size x size`` Zarr (YXC, chunks ``chunk``), written strip by strip; returns it."""
    import zarr

    z = zarr.create_array(
        store=path, shape=(size, size, 3), chunks=(chunk, chunk, 3), dtype="uint8", overwrite=True
    )
    rng = np.random.default_rng(seed)
    img = np.empty((size, size, 3), dtype=np.uint8)
    for y in range(0, size, chunk):
        strip = rng.integers(0, 256, (min(chunk, size - y), size, 3), dtype=np.uint8)
        img[y : y + strip.shape[0]] = strip
        z[y : y + strip.shape[0]] = strip
    return img


def plan_for(size: int, tile: int, overlap: int, model, batch: int, blend: str = "crop"):
    """tilegraph's plan for this run geometry (as ``Job.prepare`` builds it)."""
    from tilegraph import make_plan

    return make_plan(
        (size, size),
        tile=tile,
        overlap=overlap,
        channels=3,
        dtype="uint8",
        layout="YXC",
        scale=getattr(model, "scale", 1),
        model_stride=int(getattr(model, "stride", 1) or 1),
        out_channels=3,
        out_dtype="uint8",
        blend=blend,
        batch_size=batch,
        halo=getattr(model, "halo", None),
    )


def window_boxes(plan) -> list[tuple[int, int, int, int]]:
    return [(w.y0, w.y1, w.x0, w.x1) for w in plan.windows()]


def device_batches(b: Bench, img: np.ndarray, plan, dtype, channels_last: bool) -> list[torch.Tensor]:
    """tilegraph's windows of ``img`` (read with its own padding), batched, on the device, in ``dtype``."""
    from tilegraph.source import open_source, read_padded

    src = open_source(img)
    out = []
    for batch in plan.batches():
        xs = []
        for i in batch:
            w = plan.window(i)
            block = read_padded(src, w.y0, w.y1, w.x0, w.x1, plan.pad_mode)
            xs.append(torch.from_numpy(np.ascontiguousarray(block)).to(b.dev).permute(2, 0, 1))
        x = torch.stack(xs).to(dtype).div_(255)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(x)
    b.sync()
    return out


def time_passes(b: Bench, fn, reps: int) -> float:
    """Best of ``reps`` timed calls (after one warm-up call by the caller)."""
    best = math.inf
    for _ in range(reps):
        b.sync()
        t = time.perf_counter()
        fn()
        b.sync()
        best = min(best, time.perf_counter() - t)
    return best


def model_alone(b: Bench, model, batches, *, autocast: bool, reps: int) -> float:
    """Seconds for one pass of ``model`` over ``batches`` (best of ``reps``, after a one-batch warm-up)."""
    amp = None if b.dtype == torch.float32 else b.dtype

    def one(x):
        with torch.inference_mode():
            if autocast and amp is not None:
                with torch.autocast(device_type=b.dev.type, dtype=amp):
                    return model(x)
            return model(x)

    one(batches[0])
    b.sync()

    def all_batches():
        for x in batches:
            one(x)

    return time_passes(b, all_batches, reps)


def monai_row(
    b: Bench, model, img: np.ndarray, roi: int, sw_batches, channels_last: bool
) -> tuple[float, int]:
    """MONAI sliding_window_inference over the whole image resident on the device; (best seconds, sw_batch)."""
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(img).to(b.dev).permute(2, 0, 1)[None].to(b.dtype).div_(255)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def predictor(t):
        if channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        return model(t)

    def run(inp, swb):
        with torch.inference_mode():
            return sliding_window_inference(
                inp, (roi, roi), swb, predictor, overlap=0.25, mode="gaussian", sw_device=b.dev, device=b.dev
            )

    best = (math.inf, 0)
    warm = x[..., : min(x.shape[-2], 2 * roi), : min(x.shape[-1], 2 * roi)]
    for swb in sw_batches:
        run(warm, swb)
        b.sync()
        s = time_passes(b, lambda swb=swb: run(x, swb), 1)
        log(f"  monai sw_batch {swb}: {s:.3f} s")
        best = min(best, (s, swb))
    x = warm = None  # free the device copy
    b.free()
    return best


def map_overlap_row(
    b: Bench, model, in_path: str, out_path: str, depth: int, threads_list, channels_last: bool, stride: int
) -> tuple[float, int]:
    """The anchor's part C: ``da.from_zarr`` -> ``map_overlap(infer)`` -> ``da.to_zarr``; (best s, threads).

    Blocks are reflect-padded up to a multiple of the model stride and cropped back (the anchor needs no
    padding at its sizes; it matters only for small CPU sizes).
    """
    import dask
    import dask.array as da

    @torch.inference_mode()
    def infer(block):
        x = (
            torch.from_numpy(np.ascontiguousarray(block))
            .to(b.dev)
            .permute(2, 0, 1)[None]
            .to(b.dtype)
            .div_(255)
        )
        h, w = x.shape[-2:]
        ph, pw = (-h) % stride, (-w) % stride
        if ph or pw:
            x = F.pad(x.float(), (0, pw, 0, ph), mode="reflect").to(b.dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = model(x)[..., :h, :w]
        return y[0].permute(1, 2, 0).clamp_(0, 1).mul_(255).to(torch.uint8).cpu().numpy()

    best = (math.inf, 0)
    for threads in threads_list:
        a = da.from_zarr(in_path)
        out = a.map_overlap(infer, depth={0: depth, 1: depth, 2: 0}, boundary="reflect", dtype=np.uint8)
        shutil.rmtree(out_path, ignore_errors=True)
        t = time.perf_counter()
        with dask.config.set(scheduler="threads", num_workers=threads):
            da.to_zarr(out, out_path, overwrite=True)
        s = time.perf_counter() - t
        log(f"  map_overlap threads {threads}: {s:.3f} s (chunks {a.chunksize[:2]}, depth {depth})")
        best = min(best, (s, threads))
        shutil.rmtree(out_path, ignore_errors=True)
    return best


def tilegraph_row(
    client, model, in_path: str, out_path: str, *, tile, overlap, blend, batch, precision, channels_last
) -> tuple[float, object]:
    """Wall seconds of one ``tilegraph.run`` Zarr -> Zarr on ``client``, and its RunResult."""
    import tilegraph

    shutil.rmtree(out_path, ignore_errors=True)
    t = time.perf_counter()
    res = tilegraph.run(
        in_path,
        out_path,
        model=model,
        tile=tile,
        overlap=overlap,
        blend=blend,
        client=client,
        batch_size=batch,
        precision=precision,
        channels_last=channels_last,
        overwrite=True,
        progress=False,
    )
    s = time.perf_counter() - t
    shutil.rmtree(out_path, ignore_errors=True)
    return s, res


def timing_note(res) -> str:
    t = res.timings
    keys = (
        "prepare_s",
        "probe_s",
        "stage_s",
        "run_s",
        "model_s_sum",
        "read_s_sum",
        "write_s_sum",
        "blend_s_sum",
    )
    return ", ".join(f"{k}={t[k]:.2f}" for k in keys if k in t)


def start_cluster(b: Bench):
    """The embedded cluster (one worker per GPU), started before any clock; a plain LocalCluster fallback."""
    import dask
    from distributed import Client

    from tilegraph.cluster.local import DASK_CONFIG

    dask.config.set(DASK_CONFIG)
    try:
        from tilegraph.cluster.local import embedded_cluster

        if b.dev.type == "cuda":
            cluster = embedded_cluster()
        else:
            cluster = embedded_cluster(n_workers=1, threads_per_worker=max(2, b.args.threads))
        how = "tilegraph.cluster.local.embedded_cluster()"
    except Exception as exc:  # e.g. tilegraph.cluster.gpu not written yet
        from distributed import LocalCluster

        res = {"GPU": 1} if b.dev.type == "cuda" else {"MODEL": 1}
        cluster = LocalCluster(
            n_workers=1,
            threads_per_worker=max(2, os.cpu_count() or 2),
            processes=True,
            resources=res,
            dashboard_address=":0",
        )
        how = f"LocalCluster(1 worker, resources {res}) because embedded_cluster failed: {exc!r}"
    client = Client(cluster)  # default client: DaskExecutor.wait needs one (as_completed without a loop)
    expected = len(getattr(cluster, "worker_spec", None) or {}) or 1
    client.wait_for_workers(expected, timeout=120)
    info = client.scheduler_info()
    workers = info.get("workers", {})
    desc = [f"{w.get('nthreads')} threads, resources {w.get('resources')}" for w in workers.values()]
    note = f"cluster: {how}; {len(workers)} worker(s): {desc}"
    RESULTS["notes"].append(note)
    log(note)
    return cluster, client


def _set_torch_threads(n: int) -> int:
    import torch as _torch

    _torch.set_num_threads(int(n))
    return _torch.get_num_threads()


def _get_torch_threads() -> int:
    import torch as _torch

    return _torch.get_num_threads()


# ----------------------------------------------------------------------------- tables


def fmt_table(title: str, rows: list[dict], ratios: list[tuple[str, str, str]]) -> str:
    lines = [title, f"{'row':<5} {'what':<78} {'seconds':>9} {'MP/s':>10}"]
    by_key = {}
    for r in rows:
        by_key[r["key"]] = r
        if r["s"]:
            lines.append(f"{r['key']:<5} {r['label']:<78} {r['s']:>9.3f} {r['mp_s']:>10.3f}")
        else:
            lines.append(f"{r['key']:<5} {r['label']:<78} {'-':>9} {'-':>10}   skipped: {r.get('skipped')}")
    for num, den, text in ratios:
        a, c = by_key.get(num), by_key.get(den)
        if a and c and a["s"] and c["s"]:
            lines.append(
                f"ratio {text}: {a['mp_s'] / c['mp_s']:.3f} (throughput; time ratio {a['s'] / c['s']:.3f})"
            )
        else:
            lines.append(f"ratio {text}: n/a")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="force CPU mode even with CUDA")
    p.add_argument("--size", type=int, default=None, help="U-Net image side (GPU 16256, CPU 1024)")
    p.add_argument("--tile", type=int, default=None, help="U-Net tile (GPU 1024, CPU 512)")
    p.add_argument("--overlap", type=int, default=None, help="U-Net overlap (GPU 128, CPU 64)")
    p.add_argument("--batch", type=int, default=4, help="tilegraph batch_size and the model-alone batch")
    p.add_argument("--roi", type=int, default=512, help="MONAI roi (clipped to half the image)")
    p.add_argument(
        "--mo-chunk",
        type=int,
        default=None,
        help="map_overlap chunk (GPU 1024 as the anchor; CPU tile-overlap)",
    )
    p.add_argument(
        "--mo-depth", type=int, default=None, help="map_overlap depth (GPU 64 as the anchor; CPU overlap/2)"
    )
    p.add_argument("--rrdb-size", type=int, default=None, help="RRDB input side (GPU 2048, CPU 32)")
    p.add_argument("--rrdb-tile", type=int, default=None, help="RRDB tile (GPU 256, CPU 16)")
    p.add_argument("--rrdb-overlap", type=int, default=None, help="RRDB overlap (GPU 32, CPU 4)")
    p.add_argument("--rrdb-blocks", type=int, default=None, help="RRDB blocks (GPU 23 as the anchor, CPU 1)")
    p.add_argument("--precision", default=None, choices=("fp32", "fp16", "bf16"), help="GPU fp16, CPU fp32")
    p.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads on CPU (every row)"
    )
    p.add_argument("--reps", type=int, default=None, help="timed passes for the model-alone rows (best of)")
    p.add_argument("--parts", default="a,a2,b,c,d,rrdb", help="comma list of a,a2,b,c,d,rrdb")
    p.add_argument("--blends", default="crop,cosine", help="tilegraph rows (d): comma list of crop, cosine")
    p.add_argument(
        "--budget", type=float, default=None, help="seconds (default $BUDGET_S, else GPU 330, CPU 3600)"
    )
    p.add_argument("--workdir", default=None, help="where the Zarr stores go (default: a temp dir)")
    p.add_argument("--json", default=None, help="write every number to this JSON file")
    a = p.parse_args(argv)
    gpu = cuda and not a.cpu
    a.device = "cuda" if gpu else "cpu"
    dflt = (
        dict(
            size=16256,
            tile=1024,
            overlap=128,
            rrdb_size=2048,
            rrdb_tile=256,
            rrdb_overlap=32,
            rrdb_blocks=23,
            precision="fp16",
            reps=3,
        )
        if gpu
        else dict(
            size=1024,
            tile=512,
            overlap=64,
            rrdb_size=32,
            rrdb_tile=16,
            rrdb_overlap=4,
            rrdb_blocks=1,
            precision="fp32",
            reps=1,
        )
    )
    for k, v in dflt.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.mo_chunk is None:
        a.mo_chunk = 1024 if gpu else a.tile - a.overlap
    if a.mo_depth is None:
        a.mo_depth = 64 if gpu else a.overlap // 2
    a.roi = max(16, min(a.roi, (a.size // 2) // 16 * 16))
    if a.budget is None:
        a.budget = float(os.environ.get("BUDGET_S", "330" if gpu else "3600"))
    a.parts = set(a.parts.split(","))
    a.blends = set(a.blends.split(","))
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    b = Bench(args)
    gpu = b.dev.type == "cuda"
    if not gpu:
        torch.set_num_threads(args.threads)
    card = torch.cuda.get_device_name() if gpu else "cpu"
    import dask
    import distributed
    import zarr

    import tilegraph

    head = (
        f"device: {card}; torch {torch.__version__}; python {sys.version.split()[0]}; numpy {np.__version__}; "
        f"dask {dask.__version__}; distributed {distributed.__version__}; zarr {zarr.__version__}; "
        f"tilegraph {tilegraph.__version__}; cpus {os.cpu_count()}; precision {args.precision}; "
        f"torch threads {torch.get_num_threads()}"
    )
    RESULTS["head"] = head
    RESULTS["args"] = {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()}
    log(head)
    if gpu:
        torch.backends.cudnn.benchmark = True
    work = tempfile.mkdtemp(prefix="tgbench-", dir=args.workdir)
    cluster = client = None
    tables = []
    try:
        cluster, client = start_cluster(b)
        if not gpu:
            got = client.run(_set_torch_threads, args.threads)
            log(
                f"worker torch threads set to {sorted(set(got.values()))} (Dask starts workers with OMP_NUM_THREADS=1)"
            )
        tables.append(unet_table(b, client, work))
        if "rrdb" in args.parts:
            tables.append(rrdb_table(b, client, work))
        if not gpu:
            got = client.run(_get_torch_threads)
            RESULTS["notes"].append(f"worker torch threads at the end: {sorted(set(got.values()))}")
    except Exception:
        RESULTS["notes"].append("error: " + traceback.format_exc()[-2000:])
        traceback.print_exc()
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"== tilegraph bench_gpu ({'GPU' if gpu else 'CPU mode'}) -- {head}")
    for t in tables:
        print(t)
        print()
    for n in RESULTS["notes"]:
        print("note:", n)
    print(f"total wall time {time.time() - T0:.1f} s (budget {args.budget:.0f} s)")
    b.dump()
    return 0


@contextlib.contextmanager
def guarded(b: Bench, rows: list, table: str, key: str, label: str, mpix: float):
    """Run one part; on an error, record the row as skipped with the error (the other parts still run)."""
    try:
        yield
    except Exception as exc:
        traceback.print_exc()
        rows.append(b.skip(table, key, label, mpix, f"error: {exc!r}"[:400]))
        with contextlib.suppress(Exception):
            b.free()


def tilegraph_rows(
    b: Bench, client, model, plan, rows, tab, labels, in_path, out_path, work, *, n, tile, ov, batch, need_s
) -> None:
    """Rows (d): a small warm-up run (not counted), then one timed run per blend."""
    args = b.args
    mp = n * n / 1e6
    wn = min(n, 2 * tile - ov)
    warm = f"{work}/warm-{tab}.zarr"
    write_random_zarr(warm, wn, min(1024, wn), seed=1)
    t = time.perf_counter()
    try:
        tilegraph_row(
            client,
            model,
            warm,
            f"{work}/warm-{tab}-out.zarr",
            tile=tile,
            overlap=ov,
            blend="crop",
            batch=batch,
            precision=args.precision,
            channels_last=True,
        )
        log(f"tilegraph warm-up run ({wn}^2) took {time.perf_counter() - t:.1f} s (not counted)")
    except Exception as exc:
        traceback.print_exc()
        log(f"tilegraph warm-up failed: {exc!r}")
    shutil.rmtree(warm, ignore_errors=True)
    for blend, key in (("crop", "d-crop"), ("cosine", "d-cos")):
        if blend not in args.blends:
            continue
        if b.left() < need_s:
            rows.append(b.skip(tab, key, labels[key], mp, f"budget ({b.left():.0f} s left)"))
            continue
        with guarded(b, rows, tab, key, labels[key], mp):
            s, res = tilegraph_row(
                client,
                model,
                in_path,
                out_path,
                tile=tile,
                overlap=ov,
                blend=blend,
                batch=batch,
                precision=args.precision,
                channels_last=True,
            )
            # its own geometry's windows (crop's grid starts at -overlap/2, cosine's at 0), as many and as
            # large as row (a)'s, which ran over crop's
            same = window_boxes(res.plan) == window_boxes(plan_for(n, tile, ov, model, batch, blend)) and (
                res.plan.n_windows == plan.n_windows and res.plan.window_shape == plan.window_shape
            )
            rows.append(
                b.row(
                    tab,
                    key,
                    labels[key],
                    s,
                    mp,
                    timings=res.timings,
                    windows_match=same,
                    devices=res.model.get("devices"),
                    clipped=res.clipped,
                )
            )
            note = f"{tab} {key}: windows as planned, as many and as large as row (a)'s: {same}; timings: {timing_note(res)}"
            RESULTS["notes"].append(note)
            log(note)


def unet_table(b: Bench, client, work: str) -> str:
    from tilegraph.testing.models import ReferenceUNet

    args, gpu = b.args, b.dev.type == "cuda"
    n, tile, ov, batch = args.size, args.tile, args.overlap, args.batch
    mp = n * n / 1e6
    tab = "unet"
    unet = ReferenceUNet()  # float32, CPU: what tilegraph gets (it applies precision/channels_last itself)
    dev_model = copy.deepcopy(unet).to(b.dev, b.dtype).to(memory_format=torch.channels_last)
    plan = plan_for(n, tile, ov, unet, batch)
    title = (
        f"U-Net table: {n}x{n} uint8 RGB Zarr ({mp:.1f} MP), tile {tile}, overlap {ov}, "
        f"{plan.grid[0]}x{plan.grid[1]} windows, window work {plan.window_work:.2f} x image, batch {batch}, "
        f"{args.precision}, channels_last"
    )
    log(title)
    in_path, out_path = f"{work}/unet_in.zarr", f"{work}/unet_out.zarr"
    t = time.perf_counter()
    img = write_random_zarr(in_path, n, min(1024, n))
    log(f"wrote {in_path} in {time.perf_counter() - t:.1f} s")
    mo_threads = (1, 4) if gpu else (1,)
    rows: list = []
    labels = {
        "a": f"model alone over tilegraph's windows, on-device, .to({args.precision}), cudnn.benchmark={gpu}",
        "a2": "model alone, tilegraph runner arithmetic (fp32 weights + autocast, cudnn.benchmark off)",
        "b": f"MONAI sliding_window_inference, image on device, roi {args.roi}, overlap 0.25, gaussian",
        "c": f"hand-written map_overlap Zarr->Zarr (chunk {args.mo_chunk}, depth {args.mo_depth}, "
        f"dask threads {'/'.join(map(str, mo_threads))})",
        "d-crop": "tilegraph.run Zarr->Zarr, blend crop, embedded cluster (started before the clock)",
        "d-cos": "tilegraph.run Zarr->Zarr, blend cosine, embedded cluster (started before the clock)",
    }
    # (a) and (a2)
    if "a" in args.parts or "a2" in args.parts:
        batches = None
        with guarded(b, rows, tab, "a", labels["a"], mp):
            batches = device_batches(b, img, plan, b.dtype, True)
            if "a" in args.parts:
                s = model_alone(b, dev_model, batches, autocast=False, reps=args.reps)
                rows.append(b.row(tab, "a", labels["a"], s, mp, windows=plan.n_windows))
        if batches is not None and "a2" in args.parts and args.precision != "fp32":
            with guarded(b, rows, tab, "a2", labels["a2"], mp):
                runner_model = copy.deepcopy(unet).to(b.dev).to(memory_format=torch.channels_last)
                batches = [x.float().contiguous(memory_format=torch.channels_last) for x in batches]
                if gpu:
                    torch.backends.cudnn.benchmark = False
                try:
                    s = model_alone(b, runner_model, batches, autocast=True, reps=args.reps)
                finally:
                    if gpu:
                        torch.backends.cudnn.benchmark = True
                rows.append(b.row(tab, "a2", labels["a2"], s, mp))
                runner_model = None
        batches = None
        b.free()
    # (d) tilegraph, warmed by one small run (worker CUDA context, model transfer) before the clock
    if "d" in args.parts:
        tilegraph_rows(
            b,
            client,
            unet,
            plan,
            rows,
            tab,
            labels,
            in_path,
            out_path,
            work,
            n=n,
            tile=tile,
            ov=ov,
            batch=batch,
            need_s=1.5 * mp / 20 + 10 if gpu else 0,
        )
    # (b) MONAI
    if "b" in args.parts:
        if b.left() < (30 if gpu else 0):
            rows.append(b.skip(tab, "b", labels["b"], mp, f"budget ({b.left():.0f} s left)"))
        else:
            with guarded(b, rows, tab, "b", labels["b"], mp):
                try:
                    import monai.inferers  # noqa: F401
                except ImportError as exc:
                    rows.append(b.skip(tab, "b", labels["b"], mp, f"monai not importable: {exc}"))
                else:
                    s, swb = monai_row(b, dev_model, img, args.roi, (4, 16), True)
                    rows.append(b.row(tab, "b", labels["b"] + f", best sw_batch {swb}", s, mp))
    # (c) map_overlap
    if "c" in args.parts:
        if b.left() < (40 if gpu else 0):
            rows.append(b.skip(tab, "c", labels["c"], mp, f"budget ({b.left():.0f} s left)"))
        else:
            with guarded(b, rows, tab, "c", labels["c"], mp):
                mo_in = in_path
                if args.mo_chunk != min(1024, n):
                    import zarr

                    mo_in = f"{work}/mo_in.zarr"
                    z = zarr.create_array(
                        store=mo_in,
                        shape=img.shape,
                        chunks=(args.mo_chunk, args.mo_chunk, 3),
                        dtype="uint8",
                        overwrite=True,
                    )
                    z[...] = img
                s, th = map_overlap_row(
                    b,
                    dev_model,
                    mo_in,
                    f"{work}/mo_out.zarr",
                    args.mo_depth,
                    mo_threads,
                    True,
                    int(unet.stride),
                )
                rows.append(b.row(tab, "c", labels["c"] + f", best threads {th}", s, mp))
    img = dev_model = None
    b.free()
    order = ["a", "a2", "b", "c", "d-crop", "d-cos"]
    rows.sort(key=lambda r: order.index(r["key"]))
    ratios = [
        ("d-crop", "a", "(d) crop / (a) model alone"),
        ("d-cos", "a", "(d) cosine / (a) model alone"),
        ("d-crop", "a2", "(d) crop / (a2) runner arithmetic"),
        ("d-crop", "b", "(d) crop / (b) MONAI"),
        ("d-cos", "b", "(d) cosine / (b) MONAI"),
        ("d-crop", "c", "(d) crop / (c) map_overlap"),
    ]
    return fmt_table(title, rows, ratios)


def rrdb_table(b: Bench, client, work: str) -> str:
    args, gpu = b.args, b.dev.type == "cuda"
    n, tile, ov, batch = args.rrdb_size, args.rrdb_tile, args.rrdb_overlap, args.batch
    mp = n * n / 1e6
    tab = "rrdb"
    model = make_rrdb(args.rrdb_blocks)
    plan = plan_for(n, tile, ov, model, batch)
    title = (
        f"RRDB x4 table ({args.rrdb_blocks} blocks): {n}x{n} input ({mp:.2f} input MP), tile {tile}, "
        f"overlap {ov}, {plan.grid[0]}x{plan.grid[1]} windows, batch {batch}, {args.precision}, channels_last; "
        "MP/s of input"
    )
    log(title)
    in_path, out_path = f"{work}/rrdb_in.zarr", f"{work}/rrdb_out.zarr"
    img = write_random_zarr(in_path, n, min(1024, n), seed=2)
    rows: list = []
    labels = {
        "a": f"model alone over tilegraph's windows, on-device, .to({args.precision})",
        "d-crop": "tilegraph.run Zarr->Zarr, blend crop, embedded cluster",
        "d-cos": "tilegraph.run Zarr->Zarr, blend cosine, embedded cluster",
    }
    if b.left() < (20 if gpu else 0):
        rows.append(b.skip(tab, "a", labels["a"], mp, f"budget ({b.left():.0f} s left)"))
    else:
        with guarded(b, rows, tab, "a", labels["a"], mp):
            dev_model = copy.deepcopy(model).to(b.dev, b.dtype).to(memory_format=torch.channels_last)
            batches = device_batches(b, img, plan, b.dtype, True)
            s = model_alone(b, dev_model, batches, autocast=False, reps=args.reps)
            rows.append(b.row(tab, "a", labels["a"], s, mp))
        dev_model = batches = None
        b.free()
    tilegraph_rows(
        b,
        client,
        model,
        plan,
        rows,
        tab,
        labels,
        in_path,
        out_path,
        work,
        n=n,
        tile=tile,
        ov=ov,
        batch=batch,
        need_s=30 if gpu else 0,
    )
    ratios = [("d-crop", "a", "(d) crop / (a) model alone"), ("d-cos", "a", "(d) cosine / (a) model alone")]
    return fmt_table(title, rows, ratios)


if __name__ == "__main__":
    sys.exit(main())
