"""The demo job: a synthetic 16-bit photograph with everything that betrays tiling, run end to end.

The image (default 8000 x 6000 px, RGB, uint16) holds a smooth sky gradient, a polished-metal
gradient with a specular band, fine diagonal lines and a texture patch that cross every window
border. It is written to Zarr band by band (never whole in memory), then a built-in local
convolution model runs over it on the embedded cluster, and the seam step along the real seams is
measured on the output.
"""

from __future__ import annotations

import os
import time

import numpy as np

__all__ = ["synthetic_photo_band", "write_synthetic_photo", "run_demo"]


def synthetic_photo_band(y0: int, y1: int, width: int, height: int) -> np.ndarray:
    """Rows ``[y0, y1)`` of the synthetic photograph, ``(rows, width, 3)`` uint16."""
    yy, xx = np.mgrid[y0:y1, 0:width].astype(np.float64)
    v, u = yy / max(height - 1, 1), xx / max(width - 1, 1)
    sky = np.stack([0.25 + 0.35 * v + 0.05 * u, 0.45 + 0.30 * v, 0.85 - 0.10 * v], axis=-1)
    metal_t = np.clip((v - 0.62) / 0.38, 0.0, 1.0)
    spec = np.exp(-(((u - 0.3 - 0.4 * metal_t) / 0.05) ** 2))
    metal = (0.35 + 0.35 * u + 0.3 * spec)[..., None] * np.array([0.92, 0.94, 1.0])
    img = np.where((v < 0.62)[..., None], sky, metal)
    lines = (np.mod(xx + 0.7 * yy, 37.0) < 1.2) & (v > 0.3)
    img[lines] *= 0.55
    tex_region = (u > 0.55) & (u < 0.8) & (v > 0.15) & (v < 0.45)
    rng = np.random.default_rng(y0 * 7919 + width)
    tex = rng.normal(0.0, 0.03, size=img.shape[:2])
    img[tex_region] += tex[tex_region][:, None]
    return np.clip(np.rint(img * 65535.0), 0, 65535).astype(np.uint16)


def write_synthetic_photo(path: str, *, shape=(6000, 8000), band: int = 1024) -> str:
    """Write the synthetic photograph as a Zarr v3 array (YXC uint16) at ``path``."""
    import zarr

    h, w = shape
    arr = zarr.create_array(
        store=path, shape=(h, w, 3), chunks=(band, 1024, 3), dtype="uint16", fill_value=0, overwrite=True
    )
    for y0 in range(0, h, band):
        y1 = min(h, y0 + band)
        arr[y0:y1] = synthetic_photo_band(y0, y1, w, h)
    return path


def run_demo(output: str, *, shape=(6000, 8000), tile=1024, overlap=128, blend="cosine", client=None) -> dict:
    """Make the demo image, run the built-in model on the embedded cluster, print the results."""
    from tilegraph.pipeline import run
    from tilegraph.testing.models import LocalConv

    os.makedirs(output, exist_ok=True)
    src = os.path.join(output, "photo.zarr")
    dst = os.path.join(output, "restored.zarr")
    t0 = time.perf_counter()
    print(f"tilegraph demo: writing a {shape[1]} x {shape[0]} px 16-bit RGB photograph to {src}", flush=True)
    write_synthetic_photo(src, shape=shape)
    print(f"  done in {time.perf_counter() - t0:.1f} s", flush=True)
    model = LocalConv(channels=3, layers=2)
    result = run(
        src,
        dst,
        model=model,
        tile=tile,
        overlap=overlap,
        blend=blend,
        client=client,
        overwrite=True,
        progress=True,
    )
    step = _worst_seam_step(result)
    summary = {
        "windows": result.plan.n_windows,
        "grid": list(result.plan.grid),
        "megapixels_per_s": round(result.timings["megapixels_per_s"], 2),
        "seconds": round(result.timings["total_s"], 2),
        "clipped": result.clipped,
        "worst_seam_step_dn": round(step, 4),
        "output": os.path.abspath(dst),
    }
    print(
        f"tilegraph demo: {summary['windows']} windows ({summary['grid'][0]} x {summary['grid'][1]}), "
        f"{summary['megapixels_per_s']} MP/s, {summary['seconds']} s, clipped values: {summary['clipped']}"
    )
    print(
        f"tilegraph demo: worst step across a window seam against whole-image inference: "
        f"{summary['worst_seam_step_dn']} DN (1 DN = 1/255 of full scale)"
    )
    print(f"tilegraph demo: output written to {summary['output']}")
    return summary


def _worst_seam_step(result) -> float:
    """Largest difference, in DN, between the tiled output and the model run on a crop around each seam."""
    import torch

    from tilegraph.testing.models import LocalConv

    plan, out = result.plan, result.output
    model = LocalConv(channels=3, layers=2)
    import zarr

    photo = zarr.open_array(os.path.join(os.path.dirname(result.path), "photo.zarr"), mode="r")
    worst = 0.0
    margin = 16
    for i in range(min(plan.y.count - 1, 3)):
        cy = plan.y.cut(i)
        for j in range(min(plan.x.count - 1, 3)):
            cx = plan.x.cut(j)
            y0, y1, x0, x1 = cy - 32, cy + 32, cx - 32, cx + 32
            crop = (
                np.asarray(photo[y0 - margin : y1 + margin, x0 - margin : x1 + margin]).astype(np.float32)
                / 65535
            )
            with torch.inference_mode():
                ref = model(torch.from_numpy(np.moveaxis(crop, -1, 0)[None].copy()))[0].numpy()
            ref = np.moveaxis(ref, 0, -1)[margin:-margin, margin:-margin]
            got = np.asarray(out[y0:y1, x0:x1]).astype(np.float32) / 65535
            worst = max(worst, float(np.abs(got - np.clip(ref, 0, 1)).max() * 255))
    return worst
