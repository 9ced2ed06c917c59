"""Norm-statistics sync side by side: no sync, thumbnail, exact, for three models with normalisation layers (issue 11).

Models (random weights, :mod:`tilegraph.testing.norm_models`):

* InstanceNorm: conv, InstanceNorm, tanh, conv (residual), on a ``--size`` photograph (``gradient_photo``);
* two GroupNorm: two GroupNorm layers in a residual stack, same image;
* VAE-like decoder: seven GroupNorm layers at x1..x8, a ``--latent`` smooth random latent (output 8x larger).

Every run goes through ``tilegraph.run`` (in process, one torch thread by default) and is judged against
whole-image inference of the same model on the unpadded image (``tilegraph.testing.whole_image_inference``
with a grid that fits the image, the truth), never against the thumbnail. Sizes must fit the window grid. Columns, in DN (1/255 of full scale), worst channel:

* max |err|: largest absolute difference from the truth, off a border band of the receptive radius;
* step 128: worst difference of the error's mean between neighbouring 128-px blocks (a seam the eye sees);
* block 64: worst absolute mean error of a 64-px block (colour wrong in place);
* passes: passes over the windows (statistics passes + the output pass);
* run s: wall seconds of the run; x none: that over the run without sync; model s: model seconds summed over
  all passes (statistics passes and output pass).

``thumbnail`` uses a thumbnail ``--thumb-div`` times smaller than the input (a real thumbnail; at the
default size, 1024 px, a 1024-px image would be its own thumbnail and the statistics exact).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np


def _latent(side: int, seed: int = 1) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    return (3 * gaussian_filter(rng.standard_normal((side, side, 4)), (3, 3, 0))).astype(np.float32)


def _measure(out: np.ndarray, truth: np.ndarray, band: int) -> dict:
    from tilegraph.testing.norm_models import block_error_dn, block_step_dn

    inner = (slice(band, out.shape[0] - band), slice(band, out.shape[1] - band))
    return {
        "max": 255.0 * float(np.abs(out[inner] - truth[inner]).max()),
        "step": block_step_dn(out, truth, block=128),
        "block": block_error_dn(out, truth, block=64),
    }


def _one(image, model, *, mode, thumb, tile, overlap, blend, workdir):
    import tilegraph
    from tilegraph.errors import TilegraphWarning

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TilegraphWarning)
        res = tilegraph.run(
            image,
            os.path.join(workdir, "normsync-bench.zarr"),
            model=model,
            tile=tile,
            overlap=overlap,
            blend=blend,
            client="inprocess",
            output_dtype="float32",
            overwrite=True,
            progress=False,
            norm_sync=mode,
            thumbnail=thumb if mode == "thumbnail" else None,
        )
    seconds = time.perf_counter() - t0
    info = res.extra["norm_sync"]
    model_s = res.timings["model_s_sum"] + float(info.get("stats_model_s_sum", 0.0))
    return np.asarray(res.output[:]), res, seconds, info["passes"], model_s


def bench_model(name, image, model, *, tile, overlap, blend, thumb_div, band, workdir) -> None:
    from tilegraph.plan import make_plan
    from tilegraph.testing import whole_image_inference

    kw = dict(tile=tile, overlap=overlap, blend=blend, workdir=workdir)
    thumb = max(16, max(image.shape[:2]) // thumb_div)
    _, first, *_ = _one(image, model, mode=None, thumb=thumb, **kw)  # warm-up (not counted), gives the scale
    # the truth: the model on the whole image, unpadded (a grid from the image's start that fits it; a crop
    # grid would start in the padding, and normalisation statistics would then count the padding too)
    plan = make_plan(
        image.shape[:2],
        tile=tile,
        overlap=overlap,
        channels=image.shape[2],
        dtype="float32",
        scale=first.plan.scale,
        blend="cosine",
    )
    if plan.pad_widths != ((0, 0), (0, 0)):
        raise SystemExit(f"{name}: the window grid must fit the image exactly (padding {plan.pad_widths})")
    t0 = time.perf_counter()
    truth = whole_image_inference(image, model, plan)
    whole_s = time.perf_counter() - t0
    print(
        f"\n{name}: input {image.shape[0]}x{image.shape[1]}x{image.shape[2]}, output {truth.shape[0]}x"
        f"{truth.shape[1]}, tile {tile}, overlap {overlap}, blend {blend}, thumbnail {thumb} px; "
        f"whole-image inference {whole_s:.2f} s; border band {band} px"
    )
    print(
        f"{'mode':<10} {'max |err| DN':>13} {'step 128 DN':>12} {'block 64 DN':>12} {'passes':>7} "
        f"{'run s':>7} {'x none':>7} {'model s':>8}"
    )
    base = None
    for mode in (None, "thumbnail", "exact"):
        out, res, seconds, passes, model_s = _one(image, model, mode=mode, thumb=thumb, **kw)
        m = _measure(out, truth, band)
        base = seconds if base is None else base
        print(
            f"{mode or 'none':<10} {m['max']:>13.4f} {m['step']:>12.4f} {m['block']:>12.4f} {passes:>7d} "
            f"{seconds:>7.2f} {seconds / base:>7.2f} {model_s:>8.2f}"
        )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--size", type=int, default=1024, help="image side for the InstanceNorm and GroupNorm models"
    )
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--latent", type=int, default=256, help="latent side for the decoder")
    p.add_argument("--latent-tile", type=int, default=64)
    p.add_argument("--latent-overlap", type=int, default=16)
    p.add_argument("--blends", default="crop,cosine")
    p.add_argument("--thumb-div", type=int, default=4, help="thumbnail = input side / this")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--workdir", default=".")
    args = p.parse_args(argv)

    import torch

    from tilegraph.testing import gradient_photo
    from tilegraph.testing.norm_models import InstanceNormModel, TinyVAEDecoder, TwoGroupNormModel

    torch.set_num_threads(args.threads)
    print("== bench_normsync (issue 11)")
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} cpus")
    photo = gradient_photo((args.size, args.size), "float32")
    z = _latent(args.latent)
    for blend in [b for b in args.blends.split(",") if b]:
        kw = dict(blend=blend, thumb_div=args.thumb_div, workdir=args.workdir)
        bench_model(
            "InstanceNorm", photo, InstanceNormModel(), tile=args.tile, overlap=args.overlap, band=2, **kw
        )
        bench_model(
            "two GroupNorm", photo, TwoGroupNormModel(), tile=args.tile, overlap=args.overlap, band=2, **kw
        )
        bench_model(
            "VAE-like decoder",
            z,
            TinyVAEDecoder(),
            tile=args.latent_tile,
            overlap=args.latent_overlap,
            band=8 * TinyVAEDecoder.halo,
            **kw,
        )


if __name__ == "__main__":
    main()
