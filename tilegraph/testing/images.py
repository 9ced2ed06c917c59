"""Synthetic test images (numpy only, no torch).

* :func:`coordinate_image` encodes every pixel's absolute position, so a window read, written or blended
  at the wrong place is detected exactly (:func:`decode_coordinates` reads the positions back);
* :func:`gradient_photo` is a smooth sky-like gradient crossed by fine lines: seams, drift and blur show.
"""

from __future__ import annotations

import numpy as np

__all__ = ["coordinate_image", "decode_coordinates", "gradient_photo", "smooth_gradient"]

# bits of exact integer resolution per dtype (floats hold k / 2**bits, k integer)
_BITS = {"uint8": 8, "uint16": 16, "float16": 11, "float32": 16, "float64": 16}


def _bits(dtype) -> int:
    name = str(np.dtype(dtype))
    if name not in _BITS:
        raise ValueError(f"coordinate_image supports {sorted(_BITS)}, got {name}")
    return _BITS[name]


def _shape2(shape) -> tuple[int, int]:
    h, w = (int(v) for v in tuple(shape)[:2])
    if h <= 0 or w <= 0:
        raise ValueError(f"shape must be positive, got {shape!r}")
    return h, w


def coordinate_image(shape, dtype="uint8") -> np.ndarray:
    """Image ``(H, W, 3)`` whose channels encode each pixel's row and column.

    With ``b`` bits of exact resolution for ``dtype`` (8 for uint8, 16 for uint16 and float32, 11 for
    float16) and ``k = 2 ** (b // 2)``:

    * channel 0 is ``row mod 2**b``;
    * channel 1 is ``col mod 2**b``;
    * channel 2 is ``(7 row + 13 col + k (row >> b) + (col >> b)) mod 2**b``.

    Integer dtypes store these integers; float dtypes store them divided by ``2**b`` (exact, in
    ``[0, 1)``). Every pixel's triple is unique while rows and columns stay below ``2**b * k``
    (4096 for uint8), so any misplaced, transposed or duplicated pixel is detected.

    Parameters
    ----------
    shape
        ``(H, W)`` (a trailing channel count is ignored).
    dtype
        ``uint8``, ``uint16``, ``float16``, ``float32`` or ``float64``.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` array of ``dtype``.

    Raises
    ------
    ValueError
        If the image is too large for positions to stay unique in ``dtype``.
    """
    h, w = _shape2(shape)
    b = _bits(dtype)
    mod, k = 1 << b, 1 << (b // 2)
    if max(h, w) > mod * k:
        raise ValueError(f"coordinate_image of {h} x {w} is not unique in {np.dtype(dtype)}; limit {mod * k}")
    r = np.arange(h, dtype=np.int64)[:, None]
    c = np.arange(w, dtype=np.int64)[None, :]
    ch0 = np.broadcast_to(r % mod, (h, w))
    ch1 = np.broadcast_to(c % mod, (h, w))
    ch2 = (7 * r + 13 * c + k * (r >> b) + (c >> b)) % mod
    img = np.stack([ch0, ch1, ch2], axis=-1)
    if np.dtype(dtype).kind == "f":
        return (img / mod).astype(dtype)
    return img.astype(dtype)


def decode_coordinates(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Absolute ``(rows, cols)`` of every pixel of a (crop of a) :func:`coordinate_image`.

    Parameters
    ----------
    image
        ``(h, w, 3)`` array, exactly as produced by :func:`coordinate_image` (any crop of it).

    Returns
    -------
    rows, cols : numpy.ndarray
        ``(h, w)`` int64 arrays.

    Raises
    ------
    ValueError
        If some pixel is not a valid code (a value changed on the way).
    """
    image = np.asarray(image)
    b = _bits(image.dtype)
    mod, k = 1 << b, 1 << (b // 2)
    v = image.astype(np.float64) * mod if image.dtype.kind == "f" else image.astype(np.float64)
    if not np.array_equal(v, np.round(v)) or v.min(initial=0) < 0 or v.max(initial=0) >= mod:
        raise ValueError("image is not a coordinate image: non-integer or out-of-range codes")
    lo_r, lo_c, ch2 = (v[..., i].astype(np.int64) for i in range(3))
    hi = (ch2 - 7 * lo_r - 13 * lo_c) % mod
    hi_r, hi_c = hi // k, hi % k
    return hi_r * mod + lo_r, hi_c * mod + lo_c


def gradient_photo(shape, dtype="uint8", *, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A smooth sky-like colour gradient with fine lines and a little grain, ``(H, W, C)``.

    Low frequencies (a vertical sky ramp, a warm horizontal glow and a soft sun) make colour drift and
    seams visible; one-pixel lines (a diagonal family and a sparse grid) make blur, shifts and
    misplacement visible. Values span about ``[0.03, 0.97]`` of the dtype range (floats in ``[0, 1]``).

    Parameters
    ----------
    shape
        ``(H, W)``.
    dtype
        Output dtype; integer dtypes are scaled to their maximum.
    channels
        Number of channels (the first three are R, G, B; further ones repeat the luminance).
    seed
        Seed of the grain.

    Returns
    -------
    numpy.ndarray
        ``(H, W, channels)`` array of ``dtype``.
    """
    h, w = _shape2(shape)
    y = (np.arange(h, dtype=np.float64)[:, None] + 0.5) / h
    x = (np.arange(w, dtype=np.float64)[None, :] + 0.5) / w
    sun = np.exp(-(((y - 0.25) / 0.18) ** 2 + ((x - 0.7) / 0.25) ** 2))
    base = [
        0.35 + 0.35 * y + 0.15 * x + 0.25 * sun,  # red: warmer towards the horizon and the sun
        0.50 + 0.25 * y + 0.05 * np.sin(3.0 * x) + 0.20 * sun,
        0.85 - 0.30 * y + 0.05 * x * y,  # blue sky, paler at the bottom
    ]
    rows = np.arange(h)[:, None]
    cols = np.arange(w)[None, :]
    lines = (((rows + 2 * cols) % 23) == 0) | ((rows % 61) == 0) | ((cols % 67) == 0)
    rng = np.random.default_rng(seed)
    out = np.empty((h, w, channels), dtype=np.float64)
    lum = None
    for ch in range(channels):
        if ch < 3:
            plane = np.broadcast_to(base[ch], (h, w)).copy()
            plane -= 0.25 * lines
            plane += rng.normal(0.0, 0.004, (h, w))
            lum = plane if lum is None else lum + plane
        else:
            assert lum is not None
            plane = lum / min(channels, 3)
        out[..., ch] = plane
    np.clip(out, 0.03, 0.97, out=out)
    if np.dtype(dtype).kind in "ui":
        top = np.iinfo(dtype).max
        return np.round(out * top).astype(dtype)
    return out.astype(dtype)


def smooth_gradient(shape, dtype="float32") -> np.ndarray:
    """A smooth three-channel gradient (no lines, no grain): where any seam or drift shows.

    Floats are in [0, 1]; integer dtypes are scaled to their full range and rounded.
    """
    h, w = _shape2(shape)
    y = (np.arange(h)[:, None] + 0.5) / h
    x = (np.arange(w)[None, :] + 0.5) / w
    img = np.stack(
        [
            0.2 + 0.5 * y + 0.2 * x + 0 * x * y,
            0.3 + 0.3 * x + 0.1 * np.sin(3 * y) + 0 * y,
            0.8 - 0.4 * y + 0.1 * x * y,
        ],
        -1,
    )
    dt = np.dtype(dtype)
    if dt.kind == "u":
        return np.rint(img * np.iinfo(dt).max).astype(dt)
    return img.astype(dt)
