"""Run a small local model over a synthetic 16-bit photograph, in-process, and check one seam.

Run with ``python examples/quickstart.py``; it writes into a temporary directory.
"""

from __future__ import annotations

import tempfile

import numpy as np

import tilegraph
from tilegraph.testing import LocalConv, gradient_photo, whole_image_inference


def main() -> None:
    image = gradient_photo((700, 900), "uint16")
    model = LocalConv(channels=3, layers=2)
    with tempfile.TemporaryDirectory() as tmp:
        result = tilegraph.run(
            image, f"{tmp}/out.zarr", model=model, tile=256, overlap=32, blend="crop", client="inprocess"
        )
        tiled = np.asarray(result.output[:]).astype(np.int64)
        whole = whole_image_inference(image, model, result.plan)
        whole = np.rint(np.clip(whole, 0, 1) * 65535).astype(np.int64)
        print(result.plan)
        worst = int(np.abs(tiled - whole).max())  # float32 rounding can land a half step either way
        print("max |tiled - whole| (uint16 steps):", worst)
        assert worst <= 1, worst


if __name__ == "__main__":
    main()
