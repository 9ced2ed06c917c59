"""Apply per-window colour corrections before blending (pure numpy).

:class:`Corrections` holds one affine map ``y -> gain * y + offset`` per window and channel. Its
:meth:`~Corrections.transform` has the signature :func:`tilegraph.blend.merge.blend_box` expects, so the
blend window itself interpolates the correction across each overlap: constant in each core, ramped over the
overlap, no new step.

For outputs that are already seamless (exact models under ``crop``) but drift against the reference, a
per-window constant would create steps at the cut lines. :meth:`Corrections.as_field` instead returns a
:class:`FieldCorrections`: the per-window values placed at window centres and interpolated bilinearly (a
partition of unity, continuous, gradient ``|delta| / stride``), evaluated at each pixel's output position, so
every window sees the same correction at the same pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tilegraph.plan.plan import Plan

__all__ = ["Corrections", "FieldCorrections"]


def _as_table(name: str, v) -> np.ndarray:
    arr = np.array(v, dtype=np.float64)  # a copy: callers' arrays are never aliased
    if arr.ndim != 2:
        raise ValueError(f"{name} must be (n_windows, channels), got shape {arr.shape}")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class Corrections:
    """Per-window, per-channel affine corrections ``y' = gain * y + offset``.

    Attributes
    ----------
    gain : numpy.ndarray
        ``(n_windows, C)`` float64, read-only.
    offset : numpy.ndarray
        ``(n_windows, C)`` float64 in the data's own units (1.0 = full scale for float outputs), read-only.
    info : dict
        Solver diagnostics (iterations, time, residuals); plain data.
    """

    gain: np.ndarray
    offset: np.ndarray
    info: dict | None = None

    def __post_init__(self):
        g, o = _as_table("gain", self.gain), _as_table("offset", self.offset)
        if g.shape != o.shape:
            raise ValueError(f"gain {g.shape} and offset {o.shape} differ in shape")
        object.__setattr__(self, "gain", g)
        object.__setattr__(self, "offset", o)
        object.__setattr__(self, "info", dict(self.info or {}))

    @classmethod
    def identity(cls, n_windows: int, channels: int) -> Corrections:
        """Gain 1, offset 0 everywhere."""
        return cls(np.ones((n_windows, channels)), np.zeros((n_windows, channels)))

    def with_info(self, info: dict) -> Corrections:
        """The same corrections with ``info`` replaced."""
        return Corrections(self.gain, self.offset, info)

    @property
    def n_windows(self) -> int:
        """Number of windows."""
        return int(self.gain.shape[0])

    @property
    def channels(self) -> int:
        """Number of channels."""
        return int(self.gain.shape[1])

    def scaled(self, strength: float) -> Corrections:
        """Corrections moved toward identity: ``gain = 1 + s (gain - 1)``, ``offset = s offset``."""
        s = float(strength)
        return Corrections(1.0 + s * (self.gain - 1.0), s * self.offset, {**(self.info or {}), "strength": s})

    def transform(
        self, index: int, region: np.ndarray, slices: tuple[slice, slice] | None = None
    ) -> np.ndarray:
        """Corrected copy of a window region, for ``blend_box(..., transform=corrections.transform)``.

        Parameters
        ----------
        index
            Flat window index.
        region
            ``(C, rows, cols)`` part of that window's output; not modified.
        slices
            The region's place in the window (unused: the correction is constant per window).

        Returns
        -------
        numpy.ndarray
            float32 ``(C, rows, cols)``.
        """
        g = self.gain[index].astype(np.float32)[:, None, None]
        o = self.offset[index].astype(np.float32)[:, None, None]
        return np.asarray(region, dtype=np.float32) * g + o

    __call__ = transform

    def as_field(self, plan: Plan) -> FieldCorrections:
        """The same values as a smooth field, bilinear between window centres (see module notes)."""
        rows, cols = plan.grid
        if rows * cols != self.n_windows:
            raise ValueError(f"plan has {rows * cols} windows, corrections {self.n_windows}")
        return FieldCorrections(
            gain=self.gain.reshape(rows, cols, -1),
            offset=self.offset.reshape(rows, cols, -1),
            centres_y=_centres(plan.y),
            centres_x=_centres(plan.x),
            starts_y=np.array([plan.y.out_start(i) for i in range(rows)]),
            starts_x=np.array([plan.x.out_start(i) for i in range(cols)]),
        )

    def to_dict(self) -> dict:
        """Plain-data form (JSON-able)."""
        return {"gain": self.gain.tolist(), "offset": self.offset.tolist(), "info": self.info}

    @classmethod
    def from_dict(cls, d: dict) -> Corrections:
        """Inverse of :meth:`to_dict`."""
        return cls(np.asarray(d["gain"]), np.asarray(d["offset"]), d.get("info"))


def _centres(axis) -> np.ndarray:
    """Centres of each window's footprint clipped to the image, output pixels (pixel-centre coordinates)."""
    out = []
    for i in range(axis.count):
        lo, hi = axis.footprint(i)
        out.append(0.5 * (lo + hi))
    return np.asarray(out, dtype=np.float64)


def _interp_weights(pos: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower index, upper index and fraction for linear interpolation, constant beyond the end centres."""
    n = len(centres)
    if n == 1:
        z = np.zeros(len(pos), dtype=np.intp)
        return z, z, np.zeros(len(pos))
    t = np.interp(pos, centres, np.arange(n, dtype=np.float64))
    i0 = np.minimum(np.floor(t).astype(np.intp), n - 2)
    return i0, i0 + 1, t - i0


@dataclass(frozen=True, eq=False)
class FieldCorrections:
    """A correction field, bilinear between window centres; the same at a pixel whichever window covers it.

    Build it with :meth:`Corrections.as_field`.

    Attributes
    ----------
    gain, offset : numpy.ndarray
        ``(rows, cols, C)`` values at the window centres.
    centres_y, centres_x : numpy.ndarray
        Window centres in output pixels, per axis.
    starts_y, starts_x : numpy.ndarray
        Window output starts, per axis (to place a window region in the image).
    """

    gain: np.ndarray
    offset: np.ndarray
    centres_y: np.ndarray
    centres_x: np.ndarray
    starts_y: np.ndarray
    starts_x: np.ndarray

    def at(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """Gain and offset fields over the output box ``[y0:y1, x0:x1]``, each ``(C, rows, cols)`` float32."""
        iy0, iy1, fy = _interp_weights(np.arange(y0, y1) + 0.5, self.centres_y)
        ix0, ix1, fx = _interp_weights(np.arange(x0, x1) + 0.5, self.centres_x)
        fy, fx = fy[:, None, None], fx[None, :, None]

        def field(v: np.ndarray) -> np.ndarray:
            top = v[iy0][:, ix0] * (1 - fx) + v[iy0][:, ix1] * fx
            bottom = v[iy1][:, ix0] * (1 - fx) + v[iy1][:, ix1] * fx
            return np.moveaxis((top * (1 - fy) + bottom * fy).astype(np.float32), -1, 0)

        return field(self.gain), field(self.offset)

    def transform(self, index: int, region: np.ndarray, slices: tuple[slice, slice]) -> np.ndarray:
        """Corrected copy of a window region (signature of ``blend_box``'s ``transform``).

        Parameters
        ----------
        index
            Flat window index (places the region in the image).
        region
            ``(C, rows, cols)`` part of that window's output; not modified.
        slices
            ``(rows, cols)`` slices of the region in the window's output coordinates.

        Returns
        -------
        numpy.ndarray
            float32 ``(C, rows, cols)``.
        """
        cols = len(self.starts_x)
        r, c = divmod(int(index), cols)
        y0 = int(self.starts_y[r]) + (slices[0].start or 0)
        x0 = int(self.starts_x[c]) + (slices[1].start or 0)
        g, o = self.at(y0, y0 + region.shape[-2], x0, x0 + region.shape[-1])
        return np.asarray(region, dtype=np.float32) * g + o

    __call__ = transform
