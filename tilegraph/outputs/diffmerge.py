"""Diff-merge: keep the original wherever the model did not change it, blend the changed regions in.

For editing models that should leave most of an image untouched (flux-kontext-diff-merge, see
``algorithms.md`` §8): the model's output (``edited``) is merged back into the ``original`` so that

* a **change mask** ``M`` marks where the model changed the image: CIEDE2000 between the two (sRGB,
  D65) above ``threshold``, cleaned by a morphological opening (``open_radius``: isolated specks of noise
  go) and closing (``close_radius``: small holes close), then grown by ``grow`` pixels (the halo);
* outside ``M`` the output **is** the original, bit for bit;
* inside ``M`` farther than ``band`` pixels from its edge (the interior ``I``) the output is the model's
  output (cast to the original's dtype the way every tilegraph output is cast);
* in the **transition band** ``B`` (pixels of ``M`` within ``band`` pixels of an unmasked pixel) the
  output is the gradient-domain (Poisson) blend ``f = edited + d``: the membrane ``d`` is harmonic in
  ``B``, equals ``original - edited`` on the unmasked pixels next to the band and 0 on the interior
  pixels next to it. ``f`` therefore keeps the model's gradients inside the band and meets the original
  at its outer edge and the model's output at its inner edge without a step: only the (small)
  difference between original and model output at the outer edge is spread smoothly across the band.

Everything is local, so it runs **chunk by chunk**: :func:`merge_chunk` takes the arrays of a box grown
by :attr:`DiffMergeOptions.halo` (clipped to the image) and returns the box. Within the halo the mask and
band are exact (morphology and distances reach ``2 open + 2 close + grow + band`` pixels); the membrane
of a thin band is local too: a boundary value's influence along a band of width ``w`` decays like
``exp(-pi x / w)``, and the solve reaches ``solve_margin`` (default ``4 band``) beyond the box, so chunk
seams differ from a whole-image solve by about ``exp(-4 pi)`` of the boundary difference (a few
millionths of a DN), far below rounding. A changed region crossing chunk (or tile) seams is handled like
any other. :func:`diff_merge` runs the chunks in a loop over array-likes (numpy, Zarr) for in-process use.

Images are ``(H, W)`` or ``(H, W, C)`` with C = 1 (grey), 3 (RGB) or 4 (RGBA: an alpha change of more
than ``threshold`` percent also counts as a change); integer images are scaled by their dtype maximum,
float images are in ``[0, 1]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from typing import Any, ClassVar

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import splu

from tilegraph._cast import to_output_dtype
from tilegraph._colour import delta_e2000, srgb_to_lab
from tilegraph.errors import InputError
from tilegraph.options import DiffMergeOptions
from tilegraph.passes.abc import Box, Pass, PassContext
from tilegraph.plan.plan import Plan

__all__ = [
    "DiffMergeOptions",
    "DiffMergePass",
    "change_map",
    "change_mask",
    "band_split",
    "solve_membrane",
    "halo_box",
    "merge_chunk",
    "diff_merge",
]

#: Screening added to the band's Laplacian: keeps a band piece with no Dirichlet neighbour (possible
#: only next to a chunk's outer halo) solvable; its effect elsewhere is below 1e-6 of a DN.
_SCREEN = 1e-9


# --------------------------------------------------------------------------- pieces
def _as_float(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise InputError(f"diff-merge needs (H, W) or (H, W, C) with C in 1, 3, 4; got shape {arr.shape}")
    if arr.dtype.kind in "ui":
        return arr.astype(np.float64) / np.iinfo(arr.dtype).max
    if arr.dtype.kind == "f":
        return arr.astype(np.float64)
    raise InputError(f"diff-merge does not support dtype {arr.dtype}")


def change_map(original: np.ndarray, edited: np.ndarray) -> np.ndarray:
    """Per-pixel change: CIEDE2000 of the colours (grey as neutral colour), alpha change in percent.

    Parameters
    ----------
    original, edited
        Same-shaped ``(h, w[, C])`` blocks (integers scaled by their maximum, floats in ``[0, 1]``).

    Returns
    -------
    numpy.ndarray
        float64 ``(h, w)``.
    """
    a, b = _as_float(original), _as_float(edited)
    if a.shape != b.shape:
        raise InputError(
            f"original {a.shape} and edited {b.shape} differ in shape", hint="diff-merge needs scale 1"
        )
    rgb_a = np.repeat(a[..., :1], 3, -1) if a.shape[-1] == 1 else a[..., :3]
    rgb_b = np.repeat(b[..., :1], 3, -1) if b.shape[-1] == 1 else b[..., :3]
    de = delta_e2000(srgb_to_lab(np.clip(rgb_a, 0, 1)), srgb_to_lab(np.clip(rgb_b, 0, 1)))
    if a.shape[-1] == 4:
        de = np.maximum(de, 100.0 * np.abs(a[..., 3] - b[..., 3]))
    return de


def _disk(r: int) -> np.ndarray:
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (yy * yy + xx * xx) <= r * r + r  # a round disk including the 4 axis tips


def change_mask(change: np.ndarray, *, options: DiffMergeOptions) -> np.ndarray:
    """Cleaned and grown change mask of a block: threshold, opening, closing, dilation.

    The block is extended by edge replication before the morphology, so a region touching the block's
    border is treated as continuing beyond it (right at the image border; inside the image the caller's
    halo makes the border irrelevant).

    Parameters
    ----------
    change
        :func:`change_map` of the block.
    options
        Threshold and radii.

    Returns
    -------
    numpy.ndarray
        bool ``(h, w)``.
    """
    raw = np.asarray(change) > options.threshold
    r = options.morphology_reach + 1
    m = np.pad(raw, r, mode="edge")
    if options.open_radius:
        m = ndimage.binary_opening(m, _disk(options.open_radius))
    if options.close_radius:
        m = ndimage.binary_closing(m, _disk(options.close_radius))
    if options.grow:
        m = ndimage.binary_dilation(m, _disk(options.grow))
    return m[r:-r, r:-r]


def band_split(mask: np.ndarray, *, band: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a mask into its transition band and its interior.

    The block is extended by edge replication first, so the image border is not an edge of the mask
    (a changed region touching the border gets no band there; inside the image the caller's halo makes
    the block's border irrelevant).

    Parameters
    ----------
    mask
        bool ``(h, w)`` change mask.
    band
        Band width: mask pixels within this (Euclidean) distance of an unmasked pixel.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``band`` and ``interior`` bool masks.
    """
    pad = band + 1
    m = np.pad(mask, pad, mode="edge")
    dist = ndimage.distance_transform_edt(m)[pad:-pad, pad:-pad]
    b = mask & (dist <= band)
    return b, mask & ~b


def solve_membrane(
    band: np.ndarray, interior: np.ndarray, outside_value: np.ndarray, *, screen: float = _SCREEN
) -> np.ndarray:
    """Harmonic membrane on the band: 0 next to the interior, ``outside_value`` next to unmasked pixels.

    Solves, per channel, the 5-point Laplace equation on the band pixels with Dirichlet values from
    their 4-neighbours outside the band (``outside_value`` where the neighbour is unmasked, 0 where it is
    interior) and no flux across the block's border.

    Parameters
    ----------
    band, interior
        bool ``(h, w)``.
    outside_value
        float ``(h, w, C)``: the membrane's value on unmasked pixels (``original - edited``).
    screen
        Small screening term (see module constant).

    Returns
    -------
    numpy.ndarray
        float64 ``(h, w, C)``, zero outside the band.
    """
    h, w = band.shape
    c = outside_value.shape[-1]
    out = np.zeros((h, w, c), np.float64)
    nb = int(band.sum())
    if nb == 0:
        return out
    index = np.full((h, w), -1, np.int64)
    index[band] = np.arange(nb)
    outside = ~(band | interior)
    deg = np.full(nb, screen)
    rhs = np.zeros((nb, c))
    rows, cols = [], []
    ys, xs = np.nonzero(band)
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        qy, qx = ys + dy, xs + dx
        inside = (qy >= 0) & (qy < h) & (qx >= 0) & (qx < w)
        p = index[ys[inside], xs[inside]]
        qy, qx = qy[inside], qx[inside]
        deg[p] += 1.0
        q = index[qy, qx]
        nbr = q >= 0
        rows.append(p[nbr])
        cols.append(q[nbr])
        out_n = outside[qy, qx]
        np.add.at(rhs, p[out_n], outside_value[qy[out_n], qx[out_n]])
    r = np.concatenate(rows)
    k = np.concatenate(cols)
    lap = coo_matrix(
        (
            np.concatenate([deg, -np.ones(r.size)]),
            (np.concatenate([np.arange(nb), r]), np.concatenate([np.arange(nb), k])),
        ),
        shape=(nb, nb),
    ).tocsc()
    sol = splu(lap).solve(rhs)
    out[band] = sol.reshape(nb, c)
    return out


# --------------------------------------------------------------------------- chunks
def halo_box(
    box: tuple[int, int, int, int], *, shape: tuple[int, int], options: DiffMergeOptions
) -> tuple[int, int, int, int]:
    """The box a chunk task reads: ``box`` grown by ``options.halo``, clipped to the image ``shape``."""
    y0, y1, x0, x1 = box
    hl = options.halo
    return max(0, y0 - hl), min(shape[0], y1 + hl), max(0, x0 - hl), min(shape[1], x1 + hl)


def merge_chunk(
    original: np.ndarray,
    edited: np.ndarray,
    *,
    box: tuple[int, int, int, int],
    read_box: tuple[int, int, int, int],
    shape: tuple[int, int],
    options: DiffMergeOptions | None = None,
) -> tuple[np.ndarray, dict]:
    """Diff-merge one box (worker side), from its arrays grown by the halo.

    Parameters
    ----------
    original
        The source over ``read_box``, ``(h, w[, C])`` in its own dtype.
    edited
        The model's output over ``read_box`` (floats in ``[0, 1]``, or integers scaled by their max).
    box
        The output box ``(y0, y1, x0, x1)`` in image pixels.
    read_box
        :func:`halo_box` of ``box`` (what ``original`` and ``edited`` cover).
    shape
        Image extent ``(H, W)``.
    options
        :class:`DiffMergeOptions` (default values when None).

    Returns
    -------
    (numpy.ndarray, dict)
        The merged box in the original's dtype and layout, and counts for the report (over the box):
        ``changed`` (raw ΔE above threshold), ``mask``, ``band``, ``interior`` pixels and ``max_membrane``
        (largest ``|d|`` in DN).

    Raises
    ------
    InputError
        Shapes that do not match the boxes, unsupported channels or dtypes.
    """
    opts = options or DiffMergeOptions()
    orig = np.asarray(original)
    ry0, ry1, rx0, rx1 = read_box
    y0, y1, x0, x1 = box
    if orig.shape[:2] != (ry1 - ry0, rx1 - rx0) or np.asarray(edited).shape[:2] != orig.shape[:2]:
        raise InputError(
            f"blocks {orig.shape[:2]} / {np.asarray(edited).shape[:2]} do not match read box {read_box}",
            hint="read original and edited over halo_box(box)",
        )
    if not (ry0 <= y0 <= y1 <= ry1 and rx0 <= x0 <= x1 <= rx1):
        raise InputError(f"box {box} is not inside read box {read_box}")
    edit = np.asarray(edited)
    a = _as_float(orig)
    b = _as_float(edit)
    change = change_map(a, b)
    mask = change_mask(change, options=opts)
    band, interior = band_split(mask, band=opts.band)
    # the membrane only where it can reach the box: the band within the solve margin
    my0, my1 = max(0, y0 - ry0 - opts.margin), min(ry1 - ry0, y1 - ry0 + opts.margin)
    mx0, mx1 = max(0, x0 - rx0 - opts.margin), min(rx1 - rx0, x1 - rx0 + opts.margin)
    win = (slice(my0, my1), slice(mx0, mx1))
    membrane = solve_membrane(band[win], interior[win], (a - b)[win])

    cy, cx = slice(y0 - ry0, y1 - ry0), slice(x0 - rx0, x1 - rx0)
    oy, ox = slice(y0 - ry0 - my0, y1 - ry0 - my0), slice(x0 - rx0 - mx0, x1 - rx0 - mx0)
    core_shape = orig[cy, cx].shape
    if edit.dtype == orig.dtype:  # the model's output as it is
        edited_cast = edit[cy, cx].reshape(core_shape)
    else:
        edited_cast = to_output_dtype(b[cy, cx].astype(np.float32), orig.dtype)[0].reshape(core_shape)
    blended = (b[cy, cx] + membrane[oy, ox]).astype(np.float32)
    blended_cast = to_output_dtype(blended, orig.dtype)[0].reshape(core_shape)
    out = np.array(orig[cy, cx], copy=True)
    m_core, b_core, i_core = mask[cy, cx], band[cy, cx], interior[cy, cx]
    out[i_core] = edited_cast[i_core]
    out[b_core] = blended_cast[b_core]
    stats = {
        "changed": int(np.count_nonzero(change[cy, cx] > opts.threshold)),
        "mask": int(np.count_nonzero(m_core)),
        "band": int(np.count_nonzero(b_core)),
        "interior": int(np.count_nonzero(i_core)),
        "max_membrane": float(np.abs(membrane[oy, ox]).max(initial=0.0) * 255.0),
    }
    return out, stats


def _boxes(shape: tuple[int, int], chunks: tuple[int, int]) -> Iterator[tuple[int, int, int, int]]:
    for y in range(0, shape[0], chunks[0]):
        for x in range(0, shape[1], chunks[1]):
            yield y, min(shape[0], y + chunks[0]), x, min(shape[1], x + chunks[1])


def diff_merge(
    original,
    edited,
    *,
    options: DiffMergeOptions | None = None,
    chunks: int | tuple[int, int] = 1024,
    out=None,
) -> tuple[np.ndarray, dict]:
    """Diff-merge two images chunk by chunk (in-process loop over :func:`merge_chunk`).

    Parameters
    ----------
    original, edited
        Array-likes ``(H, W[, C])`` that slice lazily (numpy, Zarr); ``edited`` is the model's output at
        scale 1 with the original's channels.
    options
        :class:`DiffMergeOptions`.
    chunks
        Output chunk extent (int or pair); each chunk reads its box grown by the halo.
    out
        Array-like to write into (default: a new numpy array).

    Returns
    -------
    (array, dict)
        The merged image and the summed counts of :func:`merge_chunk`.
    """
    opts = options or DiffMergeOptions()
    shape = (int(original.shape[0]), int(original.shape[1]))
    if tuple(edited.shape[:2]) != shape:
        raise InputError(
            f"edited {tuple(edited.shape)} and original {tuple(original.shape)} differ in size",
            hint="diff-merge needs a model at scale 1",
        )
    ch = (chunks, chunks) if isinstance(chunks, int) else tuple(chunks)
    if out is None:
        out = np.empty(original.shape, np.asarray(original[:1, :1]).dtype)
    totals: dict = {"changed": 0, "mask": 0, "band": 0, "interior": 0, "max_membrane": 0.0}
    for box in _boxes(shape, ch):  # type: ignore[arg-type]
        rb = halo_box(box, shape=shape, options=opts)
        sl = (slice(rb[0], rb[1]), slice(rb[2], rb[3]))
        merged, stats = merge_chunk(
            np.asarray(original[sl]), np.asarray(edited[sl]), box=box, read_box=rb, shape=shape, options=opts
        )
        out[box[0] : box[1], box[2] : box[3]] = merged
        for k, v in stats.items():
            totals[k] = max(totals[k], v) if k == "max_membrane" else totals[k] + v
    return out, totals


class DiffMergePass(Pass):
    """``diff_merge=True``: the blended model output merged back into the source, chunk by chunk.

    Runs after blending (the last pass unless more follow), reading its box of the blended output
    and of the source (at the output's scale, through :meth:`PassContext.source`) grown by
    :attr:`DiffMergeOptions.halo`; returns the merged box in the source's dtype, so that unchanged
    pixels are written bit for bit. Needs a model at scale 1 keeping the channels, and an output in
    the source's dtype.
    """

    name: ClassVar[str] = "diff-merge"

    def __init__(self, options: DiffMergeOptions | None = None) -> None:
        self.options = options if options is not None else DiffMergeOptions(enabled=True)

    def halo(self, plan: Plan) -> int:
        return self.options.halo

    def prepare(self, ctx: PassContext) -> Any:
        plan = ctx.plan
        source = ctx.source()
        if plan.scale_fraction != 1:
            raise InputError(
                f"diff-merge compares the model's output with its input pixel by pixel: the model's scale is {plan.scale}",
                hint="diff-merge needs a model at scale 1",
            )
        if int(plan.out_channels or 0) != source.channels:
            raise InputError(
                f"diff-merge needs the model to keep the channels ({source.channels} in, {plan.out_channels} out)"
            )
        if str(plan.out_dtype) != str(source.dtype):
            raise InputError(
                f"diff-merge writes the source's dtype {source.dtype}, the output is {plan.out_dtype}",
                hint="leave output_dtype unset",
            )
        return source

    def apply(self, plan: Plan, box: Box, block: np.ndarray, in_box: Box, state: Any) -> np.ndarray:
        original = state.read(in_box)
        merged, _ = merge_chunk(
            original, block, box=box, read_box=in_box, shape=plan.out_shape, options=self.options
        )
        return merged if merged.ndim == 3 else merged[..., None]

    def describe(self) -> dict:
        return {"name": self.name, **{k: v for k, v in asdict(self.options).items() if k != "enabled"}}
