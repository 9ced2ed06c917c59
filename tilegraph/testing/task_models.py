"""Test models and images for the non-pixel output kinds (labels, detections, diff-merge, masks).

Pure numpy/scipy (no torch). Every model is a callable on a float32 batch ``(N, C, H, W)`` and declares
``task``, ``scale``, ``in_channels`` and ``out_channels`` as attributes; its output depends only on the
window's pixels, so a tiled run can be judged against the same model on the whole image.

* :class:`ConnectedComponents` (``task = "labels"``): threshold the channel mean, label the components;
* :class:`BlobDetector` (``task = "detections"``): threshold, components, one box per component;
* :func:`separate_objects_image`: bright, separate objects (ellipses, rings, crescents) on a dark
  textured background, optionally with objects larger than a window (a ring, a spiral, a snake);
* :func:`region_edit`: an "editing model" for diff-merge: changes the colours of one disk and adds
  small noise (below any sensible ΔE threshold) everywhere else;
* :class:`PixelClassifier` (``task = "probabilities"``): per-pixel softmax of fixed linear features
  (its probabilities tile exactly), optionally mixing in a coarse prior given by keyword or channels;
* :class:`ColourEdit`: a pixel-wise editing model for diff-merge through a run: recolours pixels of one
  colour, adds value-hashed noise of a fraction of a DN elsewhere.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = [
    "ConnectedComponents",
    "BlobDetector",
    "separate_objects_image",
    "region_edit",
    "coordinate_noise",
    "PixelClassifier",
    "ColourEdit",
    "band_edge_steps",
]


def _foreground(batch: np.ndarray, threshold: float) -> np.ndarray:
    arr = np.asarray(batch, dtype=np.float32)
    if arr.ndim != 4:
        raise ValueError(f"expected a batch (N, C, H, W), got shape {arr.shape}")
    return arr.mean(axis=1) > threshold


class ConnectedComponents:
    """Instance labels by connected components of ``mean(channels) > threshold`` (``task = "labels"``).

    Parameters
    ----------
    threshold
        Foreground threshold on the channel mean (inputs in ``[0, 1]``).
    connectivity
        4 or 8.

    Returns (when called)
    ---------------------
    ``int32 (N, 1, H, W)`` labels, 0 for background, ``1..k`` per window in raster order.
    """

    task = "labels"
    scale = 1
    in_channels = None
    out_channels = 1
    stride = 1

    def __init__(self, *, threshold: float = 0.5, connectivity: int = 4) -> None:
        if connectivity not in (4, 8):
            raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
        self.threshold = float(threshold)
        self.structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        fg = _foreground(batch, self.threshold)
        out = np.zeros((fg.shape[0], 1) + fg.shape[1:], np.int32)
        for i in range(fg.shape[0]):
            out[i, 0], _ = ndimage.label(fg[i], structure=self.structure)
        return out


class BlobDetector:
    """Boxes of bright blobs (``task = "detections"``): one ``(k, 6)`` array per window.

    Columns ``x0, y0, x1, y1, score, label`` in window pixels (``x1``, ``y1`` exclusive). The score is the
    object's mean channel-mean brightness and the label is 1 when that exceeds ``bright`` (else 0), so a
    whole object gets the same score and label in every window that sees it whole. Components smaller
    than ``min_pixels`` are ignored. Connectivity 8.
    """

    task = "detections"
    scale = 1
    in_channels = None
    out_channels = None
    stride = 1

    def __init__(self, *, threshold: float = 0.5, bright: float = 0.85, min_pixels: int = 4) -> None:
        self.threshold = float(threshold)
        self.bright = float(bright)
        self.min_pixels = int(min_pixels)

    def detect(self, image: np.ndarray) -> np.ndarray:
        """Boxes of one ``(C, H, W)`` float image."""
        grey = np.asarray(image, dtype=np.float32).mean(axis=0)
        lab, n = ndimage.label(grey > self.threshold, structure=np.ones((3, 3), bool))
        if n == 0:
            return np.zeros((0, 6), np.float32)
        idx = np.arange(1, n + 1)
        area = ndimage.sum_labels(np.ones_like(grey), lab, idx)
        mean = ndimage.mean(grey, lab, idx)
        rows = []
        for i, sl in enumerate(ndimage.find_objects(lab)):
            if sl is None or area[i] < self.min_pixels:
                continue
            score = float(mean[i])
            rows.append((sl[1].start, sl[0].start, sl[1].stop, sl[0].stop, score, float(score > self.bright)))
        return np.asarray(rows, np.float32).reshape(-1, 6)

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        arr = np.asarray(batch, dtype=np.float32)
        if arr.ndim != 4:
            raise ValueError(f"expected a batch (N, C, H, W), got shape {arr.shape}")
        return [self.detect(img) for img in arr]


def _disk(r: float) -> np.ndarray:
    k = int(np.ceil(r))
    yy, xx = np.mgrid[-k : k + 1, -k : k + 1]
    return (yy**2 + xx**2) <= r * r


def _shape(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A single 4-connected binary object fitting in ``size x size``."""
    half = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size] - half
    th = rng.uniform(0, np.pi)
    u = xx * np.cos(th) + yy * np.sin(th)
    v = -xx * np.sin(th) + yy * np.cos(th)
    a = half
    b = half * rng.uniform(0.45, 1.0)
    ell = (u / a) ** 2 + (v / b) ** 2 <= 1
    if kind == "ring" and size >= 20:
        inner = (u / (a * 0.55)) ** 2 + (v / (b * 0.55)) ** 2 <= 1
        obj = ell & ~inner
    elif kind == "crescent" and size >= 16:
        cut = ((u - 0.45 * a) / (a * 0.8)) ** 2 + (v / (b * 0.8)) ** 2 <= 1
        obj = ell & ~cut
    else:
        obj = ell
    lab, n = ndimage.label(obj)
    if n > 1:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        obj = lab == int(np.argmax(sizes))
    return obj


def _big_objects(h: int, w: int) -> list[np.ndarray]:
    """Objects larger than any window: a wide ring, a spiral and a snake crossing the whole width."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = []
    cy, cx = 0.32 * h, 0.3 * w
    r = np.hypot(yy - cy, xx - cx)
    out.append((r >= 0.22 * min(h, w)) & (r <= 0.22 * min(h, w) + 9))
    cy2, cx2 = 0.62 * h, 0.7 * w
    ang = np.arctan2(yy - cy2, xx - cx2)
    rad = np.hypot(yy - cy2, xx - cx2)
    pitch = 34.0
    turn = (rad - pitch * (ang + np.pi) / (2 * np.pi)) / pitch  # spiral arms at integer values
    spiral = (np.abs(turn - np.round(turn)) * pitch <= 5) & (rad <= 0.27 * min(h, w)) & (rad >= 20)
    lab, n = ndimage.label(spiral)
    if n:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        spiral = lab == int(np.argmax(sizes))
    out.append(spiral)
    snake_y = 0.955 * h + 0.025 * h * np.sin(xx / w * 5 * np.pi)
    out.append(np.abs(yy - snake_y) <= 6)
    return out


def separate_objects_image(
    shape: tuple[int, int],
    *,
    n_objects: int = 120,
    size_range: tuple[int, int] = (12, 70),
    big: bool = False,
    gap: int = 3,
    boxes_apart: bool = False,
    channels: int = 3,
    seed: int = 0,
) -> np.ndarray:
    """Bright separate objects on a dark textured background, ``uint8 (H, W, C)``.

    Objects are ellipses, rings and crescents of ``size_range`` pixels (each one 4-connected), at least
    ``gap`` pixels apart; half of them are brighter (mean above 0.85 of full scale) than the others
    (about 0.7). The background stays below 0.25 of full scale, objects above 0.6, so any threshold in
    between separates them. Some objects are cut by the image border. With ``big``, a ring, a spiral and
    a snake larger than a 256-px window are drawn first. An object that finds no free spot is skipped.

    Parameters
    ----------
    shape
        ``(H, W)``.
    n_objects
        Number of small objects to try to place.
    size_range
        Smallest and largest bounding-box side in pixels.
    big
        Add objects larger than a window.
    gap
        Minimal distance in pixels between objects.
    boxes_apart
        Keep the objects' bounding boxes (not only their pixels) ``gap`` apart: no object sits in
        another's box, so overlap-based box merging cannot mistake two objects for one.
    channels
        Number of channels.
    seed
        Random seed.

    Returns
    -------
    numpy.ndarray
    """
    h, w = shape
    rng = np.random.default_rng(seed)
    occupied = np.zeros((h, w), bool)
    value = np.zeros((h, w), np.float64)
    grow = _disk(gap)

    def place(obj: np.ndarray, y: int, x: int) -> bool:
        oh, ow = obj.shape
        sl = (slice(y, y + oh), slice(x, x + ow))
        if (occupied[sl] if boxes_apart else occupied[sl] & obj).any():
            return False
        level = 0.92 if rng.random() < 0.5 else 0.72
        value[sl][obj] = level
        if boxes_apart:
            occupied[sl] = True
        else:
            occupied[sl] |= ndimage.binary_dilation(obj, grow) if obj.size < 20000 else obj
        return True

    if big:
        for obj in _big_objects(h, w):
            if (occupied & obj).any():
                continue
            value[obj] = 0.92
            occupied |= ndimage.binary_dilation(obj, grow)
    kinds = ("ellipse", "ring", "crescent")
    for _ in range(n_objects):
        size = int(rng.integers(size_range[0], size_range[1] + 1))
        obj = _shape(kinds[int(rng.integers(0, 3))], size, rng)
        pad = np.pad(obj, gap)
        for _attempt in range(30):
            y = int(rng.integers(-size // 2, h - size // 2))  # some objects are cut by the image border
            x = int(rng.integers(-size // 2, w - size // 2))
            y0, x0 = max(0, y), max(0, x)
            cut = pad[y0 - y : min(h, y + pad.shape[0]) - y, x0 - x : min(w, x + pad.shape[1]) - x]
            if cut.size and cut.any():
                lab, n = ndimage.label(cut)
                if n == 1 and place(cut, y0, x0):
                    break
    yy, xx = np.mgrid[0:h, 0:w]
    texture = 0.04 * np.sin(yy / 7.0) * np.cos(xx / 11.0)
    img = np.where(value > 0, value + texture, 0.12 + texture + 0.03 * rng.random((h, w)))
    img = np.clip(img, 0, 1)
    out = np.repeat(np.round(img * 255).astype(np.uint8)[..., None], channels, axis=-1)
    if channels >= 3:  # a little colour, same channel mean class
        out[..., 0] = np.clip(out[..., 0].astype(np.int16) + 6, 0, 255).astype(np.uint8)
        out[..., 2] = np.clip(out[..., 2].astype(np.int16) - 6, 0, 255).astype(np.uint8)
    return out


def coordinate_noise(shape: tuple[int, int], channels: int, *, seed: int = 0) -> np.ndarray:
    """Uniform noise in ``[-1, 1]`` that depends only on the pixel coordinates (tile-independent)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.uint64)
    out = np.empty((h, w, channels), np.float64)
    for c in range(channels):
        v = (yy * np.uint64(73856093)) ^ (xx * np.uint64(19349663)) ^ np.uint64((c + 1) * 83492791 + seed)
        v = (v * np.uint64(2654435761)) % np.uint64(2**32)
        out[..., c] = v.astype(np.float64) / 2**31 - 1.0
    return out


def region_edit(
    image: np.ndarray,
    *,
    center: tuple[float, float],
    radius: float,
    shift: tuple[float, ...] = (0.25, -0.12, 0.08),
    noise_dn: float = 0.6,
    tint_dn: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """An editing model's output: one disk recoloured, small noise elsewhere; float32 ``[0, 1]``.

    Inside the disk of ``radius`` around ``center`` (``(y, x)`` image pixels) each channel gets
    ``shift[c]`` added (with a 2-px soft edge); everywhere else coordinate noise of at most ``noise_dn``
    DN (1/255 of full scale) plus a uniform ``tint_dn`` DN is added, so the change mask must find the
    disk and nothing else, and a merge that pastes the disk without blending leaves a step of about
    ``tint_dn`` at the paste's edge.

    Parameters
    ----------
    image
        ``(H, W, C)`` integer (scaled by its maximum) or float image in ``[0, 1]``.
    center, radius
        The changed disk in image pixels.
    shift
        Per-channel change (fractions of full scale).
    noise_dn
        Noise amplitude outside the disk, in DN.
    tint_dn
        Uniform offset outside the disk, in DN.
    seed
        Noise seed.

    Returns
    -------
    numpy.ndarray
        float32 ``(H, W, C)``.
    """
    arr = np.asarray(image)
    f = arr.astype(np.float64) / np.iinfo(arr.dtype).max if arr.dtype.kind in "ui" else arr.astype(np.float64)
    if f.ndim == 2:
        f = f[..., None]
    h, w, c = f.shape
    yy, xx = np.mgrid[0:h, 0:w]
    d = np.hypot(yy - center[0], xx - center[1])
    alpha = np.clip((radius - d) / 2.0 + 0.5, 0.0, 1.0)[..., None]
    delta = np.asarray([shift[i % len(shift)] for i in range(c)], np.float64)
    noise = coordinate_noise((h, w), c, seed=seed) * (noise_dn / 255.0) + tint_dn / 255.0
    out = f + alpha * delta + (1 - alpha) * noise
    return np.clip(out, 0.0, 1.0).astype(np.float32)


class PixelClassifier:
    """Per-pixel class probabilities: a soft nearest-prototype classifier of the colour (``task = "probabilities"``).

    Class ``k`` has a prototype colour ``c_k`` (random, fixed by ``seed``); the logits are
    ``-sharpness * |x - c_k|^2``, so every class owns a region of colour space.

    The output at a pixel depends on that pixel only, so windows tile exactly and any blend of them
    gives the whole-image probabilities (up to float rounding).

    Parameters
    ----------
    classes
        Number of classes ``K`` (output channels).
    channels
        Input channels the features read (3 for RGB).
    coarse
        ``None``, ``"keyword"`` (the model takes ``coarse=`` ``(N, K, H, W)``, optional) or
        ``"channel"`` (the model takes ``channels + K`` input channels; declared ``in_channels``).
    mix
        Weight of the coarse prior in the output: ``(1 - mix) * own + mix * prior``.
    sharpness
        Inverse temperature of the distances.
    seed
        Seed of the prototypes.
    """

    task = "probabilities"
    scale = 1
    stride = 1

    def __init__(
        self,
        classes: int = 4,
        *,
        channels: int = 3,
        coarse: str | None = None,
        mix: float = 0.5,
        sharpness: float = 20.0,
        seed: int = 0,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.prototypes = rng.uniform(0.15, 0.85, (classes, channels)).astype(np.float32)
        self.sharpness = np.float32(sharpness)
        self.classes, self.channels, self.coarse, self.mix = classes, channels, coarse, float(mix)
        self.out_channels = classes
        self.in_channels = channels + (classes if coarse == "channel" else 0)
        if coarse == "keyword":
            self.coarse_keyword = "coarse"

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """The model's own probabilities ``(N, K, H, W)`` of the first ``channels`` channels."""
        x = np.asarray(batch, np.float32)[:, : self.channels]
        d = x[:, None] - self.prototypes[None, :, :, None, None]  # (N, K, C, H, W)
        logits = -self.sharpness * (d * d).sum(axis=2)
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def __call__(self, batch: np.ndarray, coarse: np.ndarray | None = None) -> np.ndarray:
        own = self.probabilities(batch)
        prior = coarse
        if self.coarse == "channel":
            prior = np.asarray(batch, np.float32)[:, self.channels :]
        if prior is None:
            return own
        return ((1 - self.mix) * own + self.mix * np.asarray(prior, np.float32)).astype(np.float32)


class ColourEdit:
    """A pixel-wise editing model: recolours one colour, leaves the rest nearly unchanged (diff-merge tests).

    Pixels whose first channel exceeds ``red`` and whose last channel is below ``blue`` (a saturated
    red) get ``shift`` added; every other pixel gets ``tint_dn`` DN plus noise of at most ``noise_dn``
    DN hashed from its values, so the output depends on the pixel only (windows tile exactly).
    """

    task = "image"
    scale = 1
    stride = 1

    def __init__(
        self,
        *,
        red: float = 0.7,
        blue: float = 0.3,
        shift: tuple[float, float, float] = (-0.25, 0.2, 0.3),
        noise_dn: float = 0.6,
        tint_dn: float = 1.5,
    ) -> None:
        self.red, self.blue, self.noise_dn, self.tint_dn = (
            float(red),
            float(blue),
            float(noise_dn),
            float(tint_dn),
        )
        self.shift = np.asarray(shift, np.float32)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = np.asarray(batch, np.float32)
        hit = (x[:, 0] > self.red) & (x[:, -1] < self.blue)
        h = (
            np.sin(x[:, :1] * 12.9898 * 255 + x[:, 1:2] * 78.233 * 255 + x[:, 2:3] * 37.719 * 255)
            * 43758.5453
        )
        noise = (h - np.floor(h)) * 2 - 1  # in [-1, 1), from the pixel's values only
        calm = x + np.float32(self.tint_dn / 255) + noise * np.float32(self.noise_dn / 255)
        out = np.where(hit[:, None], x + self.shift[None, :, None, None], calm)
        return np.clip(out, 0, 1).astype(np.float32)


def band_edge_steps(
    out_dn: np.ndarray,
    ref_dn: np.ndarray,
    inner: np.ndarray,
    outer: np.ndarray,
    *,
    centre: tuple[float, float],
    segment: int = 32,
) -> tuple[float, int]:
    """Worst coherent step (DN) across the edge between ``inner`` and ``outer`` pixels (diff-merge checks).

    For each 4-neighbour pair (``p`` in ``inner``, ``q`` in ``outer``) the step is ``(f_p - f_q) - (r_p -
    r_q)``: the jump of the output ``f`` across the edge beyond the reference ``r``'s own difference.
    Steps are ordered along a roughly round edge by their angle around ``centre`` and averaged over runs
    of ``segment`` pairs (texture and noise average out, a coherent step does not). Returns the worst
    absolute mean over segments and channels, and the number of pairs.
    """
    steps, keys = [], []
    for axis in (0, 1):
        for sgn in (1, -1):
            p_sl: list = [slice(None), slice(None)]
            q_sl: list = [slice(None), slice(None)]
            p_sl[axis] = slice(None, -1) if sgn == 1 else slice(1, None)
            q_sl[axis] = slice(1, None) if sgn == 1 else slice(None, -1)
            pair = inner[tuple(p_sl)] & outer[tuple(q_sl)]
            d = (out_dn[tuple(p_sl)] - out_dn[tuple(q_sl)]) - (ref_dn[tuple(p_sl)] - ref_dn[tuple(q_sl)])
            ys, xs = np.nonzero(pair)
            steps.append(d[ys, xs])
            keys.append(np.arctan2(ys - centre[0], xs - centre[1]))
    s = np.concatenate(steps)
    s = s[np.argsort(np.concatenate(keys))]
    n = s.shape[0] // segment * segment
    means = s[:n].reshape(-1, segment, s.shape[1]).mean(axis=1)
    return float(np.abs(means).max()), int(s.shape[0])
