"""User-scale acceptance: a 20,000 x 15,000 uint16 RGB LZW striped TIFF through a 2-process cluster.

Slow (a few minutes on 2 cores) but part of CI: ``pytest -m slow tests/test_e2e_tiff.py``.
"""

from __future__ import annotations

import os
import resource
import time

import imagecodecs
import numpy as np
import pytest
import tifffile

import tilegraph
from tilegraph.sink.tiff_sink import PROVENANCE_TAG, _append_sub_ifds
from tilegraph.source.tiff_source import TiffSource, segment_decode_count
from tilegraph.testing.windows import srgb_icc

# the acceptance size; the environment may shrink it for a quick local try (never in CI)
HEIGHT = int(os.environ.get("TILEGRAPH_E2E_HEIGHT", 15_000))
WIDTH = int(os.environ.get("TILEGRAPH_E2E_WIDTH", 20_000))
ROWS_PER_STRIP = 16
MEMORY_LIMIT = 2 * 2**30


def write_striped_lzw_tiff(
    path: str, height: int, width: int, *, icc: bytes, pool: int = 48, seed: int = 0
) -> int:
    """Write a uint16 RGB, LZW + horizontal predictor, 16-row striped TIFF with ICC and EXIF.

    imagecodecs' LZW encoder runs at ~35 MB/s and holds the GIL, so encoding 1.8 GB would take a
    minute: instead ``pool`` distinct strips (smooth waves plus noise, each different) are encoded
    once and written in a seeded random order, strip by strip, as pre-encoded segments. The image is
    not periodic, so a window read from the wrong place would not match. Returns the strip count.
    """
    rng = np.random.default_rng(seed)
    xs = np.arange(width, dtype=np.float32)
    encoded = []
    for k in range(pool):
        ys = np.arange(ROWS_PER_STRIP, dtype=np.float32)[:, None, None] + 37 * k
        phase = rng.uniform(0, 6.3, 3).astype(np.float32)
        waves = np.stack([np.sin(xs / (200 + 40 * c) + phase[c]) for c in range(3)], axis=-1) * 9000
        strip = (32768 + waves[None] + 12000 * np.sin(ys / 230.0)).astype(np.uint16)
        strip += rng.integers(0, 64, strip.shape, dtype=np.uint16)
        diff = strip.copy()
        diff[:, 1:] -= strip[:, :-1]  # TIFF horizontal differencing, modulo 2**16 per sample
        encoded.append(imagecodecs.lzw_encode(diff.astype("<u2").tobytes()))
    n = -(-height // ROWS_PER_STRIP)
    order = rng.integers(0, pool, n)
    last_rows = height - (n - 1) * ROWS_PER_STRIP

    def segments():
        for i in range(n):
            if i == n - 1 and last_rows != ROWS_PER_STRIP:
                whole = imagecodecs.lzw_decode(encoded[order[i]])
                yield imagecodecs.lzw_encode(whole[: last_rows * width * 3 * 2])
            else:
                yield encoded[order[i]]

    tifffile.imwrite(
        path,
        segments(),
        shape=(height, width, 3),
        dtype="uint16",
        photometric="rgb",
        rowsperstrip=ROWS_PER_STRIP,
        compression="lzw",
        predictor=2,
        iccprofile=icc,
        resolution=(300, 300),
        resolutionunit="INCH",
        metadata=None,
        extratags=[
            (271, "s", 0, "Phase One", True),
            (272, "s", 0, "IQ4 150MP", True),
            (34664, "I", 1, 0, True),
        ],
    )
    # an EXIF sub-IFD (tifffile does not write one): ExposureTime 1/125, FNumber 8, PixelX/YDimension
    exif = {
        33434: (5, 1, np.array([1, 125], "<u4").tobytes()),
        33437: (5, 1, np.array([8, 1], "<u4").tobytes()),
        40962: (4, 1, np.array([width], "<u4").tobytes()),
        40963: (4, 1, np.array([height], "<u4").tobytes()),
    }
    _append_sub_ifds(path, {34665: exif}, bigtiff=False)
    return n


def _reference(model, crop: np.ndarray) -> np.ndarray:
    """The model on one crop, converted exactly as the contract says: [0, 1] floats, round, clip."""
    import torch

    x = torch.from_numpy(np.moveaxis(crop.astype(np.float32) / 65535, -1, 0)[None].copy())
    with torch.inference_mode():
        y = model(x)[0].numpy()
    return np.clip(np.rint(np.moveaxis(y, 0, -1) * 65535), 0, 65535).astype(np.uint16)


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.mark.slow
def test_user_scale_striped_lzw_tiff_to_tiled_bigtiff(tmp_path):
    from distributed import Client, LocalCluster

    from tilegraph.testing.models import LocalConv

    src = str(tmp_path / "original.tif")
    t0 = time.perf_counter()
    n_strips = write_striped_lzw_tiff(src, HEIGHT, WIDTH, icc=srgb_icc())
    t_gen = time.perf_counter() - t0
    with tifffile.TiffFile(src) as tif:  # the input is what the issue describes
        page = tif.pages[0]
        assert (page.imagelength, page.imagewidth, page.samplesperpixel) == (HEIGHT, WIDTH, 3)
        assert int(page.compression) == 5 and not page.is_tiled and len(page.dataoffsets) == n_strips
        assert page.tags["ExifTag"].value["ExposureTime"] == (1, 125)
    source = TiffSource(src)
    assert source.storage == "strips" and not source.region_reads

    model = LocalConv(layers=1)  # halo 1: its receptive field fits the 128 px overlap
    out = str(tmp_path / "result.btf")
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            memory_limit=MEMORY_LIMIT,
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,
    ):
        workers_before = set(client.scheduler_info()["workers"])
        client.run(segment_decode_count, reset=True)
        t0 = time.perf_counter()
        result = tilegraph.run(
            src,
            out,
            model=model,
            tile=1024,
            overlap=128,
            blend="crop",
            client=client,
            scratch=str(tmp_path / "scratch"),
        )
        t_run = time.perf_counter() - t0
        decodes = sum(client.run(segment_decode_count).values())
        peaks = client.run(_peak_rss)
        workers_after = set(client.scheduler_info()["workers"])
    print(
        f"\ngenerate {t_gen:.0f} s, run {t_run:.0f} s, strips {n_strips}, decoded {decodes}, "
        f"worker peak RSS {[round(v / 2**20) for v in peaks.values()]} MiB, timings {result.timings}"
    )
    # no worker died or was restarted for memory, and none went past its limit
    assert workers_after == workers_before
    assert all(v < MEMORY_LIMIT for v in peaks.values()), peaks
    # strips decoded about once (staging by bands of whole strips), not once per window row
    assert n_strips <= decodes <= 1.1 * n_strips, (decodes, n_strips)

    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert tif.is_bigtiff and page.is_tiled
        assert page.dtype == np.uint16 and page.shape == (HEIGHT, WIDTH, 3)
        tags = page.tags
        assert tags["InterColorProfile"].value == srgb_icc()  # byte for byte
        assert tags["ExifTag"].value["ExposureTime"] == (1, 125) and tags["Make"].value == "Phase One"
        assert tags[PROVENANCE_TAG].value
    got = TiffSource(out)
    assert got.storage == "tiled"

    rng = np.random.default_rng(2026)
    size, margin = 300, 4  # compare away from the crops' borders (the model's halo is 1)
    corners = [(0, 0), (HEIGHT - size, WIDTH - size), (1024 - size // 2, 2048 - size // 2)]
    corners += [(int(rng.integers(0, HEIGHT - size)), int(rng.integers(0, WIDTH - size))) for _ in range(5)]
    for y, x in corners:
        crop_in = source.read(y, y + size, x, x + size)
        expected = _reference(model, crop_in)
        crop_out = got.read(y, y + size, x, x + size)
        inner = (slice(margin, -margin), slice(margin, -margin))
        diff = np.abs(crop_out[inner].astype(np.int32) - expected[inner].astype(np.int32))
        assert diff.max() <= 1, (y, x, int(diff.max()))
