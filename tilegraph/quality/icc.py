"""RGB to CIELAB through an embedded ICC profile (matrix/TRC RGB profiles only), for the colour metrics.

The QA colour metrics treat data as sRGB unless an ICC profile says otherwise. This module reads the
profile itself (``struct``, no colour engine): the ICC header (128 bytes), the tag table and, for a
matrix/TRC RGB profile (ICC.1:2010 §8.3, e.g. Adobe RGB (1998), ProPhoto, Display P3 or sRGB built as a
profile), the colorant tags ``rXYZ``/``gXYZ``/``bXYZ`` and tone curves ``rTRC``/``gTRC``/``bTRC``.
Values are linearised with the tone curves, multiplied by the colorant matrix (columns r, g, b, already
adapted to the D50 profile connection space in v2 and v4 profiles) and turned into CIELAB relative to the
PCS white D50 ``(0.9642, 1.0, 0.8249)``; this is the ICC media-relative colorimetric rendering.

Anything else (LUT-based ``A2B`` profiles without colorant tags, CMYK, grey ``kTRC``, Lab PCS, a damaged
or truncated profile) raises :class:`tilegraph.errors.UnsupportedSourceError`;
:func:`colour_converter` catches it, falls back to sRGB and records why in the description. A profile that
holds both a LUT and colorant tags is read through its colorant tags.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tilegraph.errors import UnsupportedSourceError

__all__ = ["RGBToLab", "rgb_to_lab_converter", "colour_converter", "profile_description", "D50"]

D50 = np.array([0.9642, 1.0, 0.8249])
SRGB_ASSUMED = "sRGB (assumed)"


@dataclass(frozen=True)
class RGBToLab:
    """RGB in ``[0, 1]`` ``(..., 3)`` to CIELAB, in two stages so means can be taken in linear light.

    Attributes
    ----------
    linearize
        Device values ``(..., 3)`` to linear light (same shape).
    linear_to_lab
        Linear light ``(..., 3)`` to CIELAB ``(..., 3)``.
    description
        What the conversion assumes: ``"sRGB (assumed)"``, the profile's description, or the fallback reason.
    """

    linearize: Callable[[np.ndarray], np.ndarray]
    linear_to_lab: Callable[[np.ndarray], np.ndarray]
    description: str

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """CIELAB ``(..., 3)`` float64 of RGB ``rgb`` in ``[0, 1]`` ``(..., 3)``."""
        return self.linear_to_lab(self.linearize(np.asarray(rgb, dtype=np.float64)))


def _srgb() -> RGBToLab:
    from tilegraph.quality.metrics import _linear_to_lab, _srgb_to_linear  # metrics imports this module

    return RGBToLab(_srgb_to_linear, _linear_to_lab, SRGB_ASSUMED)


def rgb_to_lab_converter(icc_profile: bytes | None) -> RGBToLab:
    """A converter from RGB in ``[0, 1]`` to CIELAB for data tagged with ``icc_profile``.

    Parameters
    ----------
    icc_profile
        The ICC profile bytes, or ``None`` for untagged data (the existing sRGB path, CIELAB D65).

    Returns
    -------
    RGBToLab
        A callable ``(..., 3) -> (..., 3)``; for a profile, CIELAB relative to D50 (the ICC PCS). Its
        ``description`` is the profile's ``desc`` text (``"ICC profile"`` when it has none).

    Raises
    ------
    UnsupportedSourceError
        When the profile is not a matrix/TRC RGB profile with an XYZ PCS (LUT-only, CMYK, grey, Lab PCS) or
        is damaged (bad signature, truncated, tags outside the data, unknown curve type).
    """
    if icc_profile is None:
        return _srgb()
    data = bytes(icc_profile)
    tags = _tag_table(data)
    if data[16:20] != b"RGB ":
        raise UnsupportedSourceError(f"ICC colour space {_sig(data[16:20])!r} is not RGB")
    if data[20:24] != b"XYZ ":
        raise UnsupportedSourceError(f"ICC PCS {_sig(data[20:24])!r} is not XYZ (not a matrix/TRC profile)")
    need = ("rXYZ", "gXYZ", "bXYZ", "rTRC", "gTRC", "bTRC")
    missing = [t for t in need if t not in tags]
    if missing:
        kind = "LUT-based" if any(t.startswith(("A2B", "D2B")) for t in tags) else "incomplete"
        raise UnsupportedSourceError(f"{kind} ICC profile, not matrix/TRC (missing {', '.join(missing)})")
    matrix = np.stack([_xyz(tags[t]) for t in ("rXYZ", "gXYZ", "bXYZ")], axis=1)  # columns r, g, b
    curves = [_curve(tags[t]) for t in ("rTRC", "gTRC", "bTRC")]
    desc = _description(data, tags) or "ICC profile"

    def linearize(v: np.ndarray) -> np.ndarray:
        v = np.clip(np.asarray(v, dtype=np.float64), 0.0, 1.0)
        return np.stack([curves[k](v[..., k]) for k in range(3)], axis=-1)

    def linear_to_lab(lin: np.ndarray) -> np.ndarray:
        return xyz_to_lab(np.asarray(lin, dtype=np.float64) @ matrix.T, D50)

    return RGBToLab(linearize, linear_to_lab, desc)


def colour_converter(icc_profile: bytes | None, *, channels: int = 3) -> RGBToLab:
    """Like :func:`rgb_to_lab_converter`, but never raises: unsupported profiles fall back to sRGB.

    Parameters
    ----------
    icc_profile
        The ICC profile bytes or ``None``.
    channels
        Channels the colour metrics use (1 or 3); an RGB profile cannot describe one-channel data.

    Returns
    -------
    RGBToLab
        The profile's converter, or the sRGB one with ``description`` ``"sRGB (assumed)"`` or
        ``"sRGB (profile not supported: <reason>)"``.
    """
    if icc_profile is None:
        return _srgb()
    if channels != 3:
        reason = f"an RGB profile cannot describe {channels}-channel data"
    else:
        try:
            return rgb_to_lab_converter(icc_profile)
        except UnsupportedSourceError as exc:
            reason = exc.message
    srgb = _srgb()
    return RGBToLab(srgb.linearize, srgb.linear_to_lab, f"sRGB (profile not supported: {reason})")


def profile_description(icc_profile: bytes) -> str | None:
    """The ``desc`` text of an ICC profile (v2 textDescription or v4 mluc), or ``None``.

    Raises
    ------
    UnsupportedSourceError
        When the header or tag table is damaged.
    """
    data = bytes(icc_profile)
    return _description(data, _tag_table(data))


def xyz_to_lab(xyz: np.ndarray, white: np.ndarray) -> np.ndarray:
    """CIE XYZ ``(..., 3)`` (Y of white = 1) to CIELAB relative to ``white``."""
    t = np.asarray(xyz, dtype=np.float64) / white
    eps, kappa = 216 / 24389, 24389 / 27
    f = np.where(t > eps, np.cbrt(np.maximum(t, eps)), (kappa * t + 16) / 116)
    lab = np.empty_like(f)
    lab[..., 0] = 116 * f[..., 1] - 16
    lab[..., 1] = 500 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200 * (f[..., 1] - f[..., 2])
    return lab


# --------------------------------------------------------------------------- parsing
def _sig(b: bytes) -> str:
    return b.decode("latin-1")


def _tag_table(data: bytes) -> dict[str, bytes]:
    """Tag signature -> tag data (type signature first) of a checked ICC profile."""
    if len(data) < 132 or data[36:40] != b"acsp":
        raise UnsupportedSourceError("damaged ICC profile (no 'acsp' signature or shorter than its header)")
    size, count = struct.unpack(">I", data[:4])[0], struct.unpack(">I", data[128:132])[0]
    if size > len(data) or 132 + 12 * count > len(data):
        raise UnsupportedSourceError(f"truncated ICC profile ({len(data)} bytes, header says {size})")
    tags = {}
    for i in range(count):
        sig, off, n = struct.unpack(">4sII", data[132 + 12 * i : 144 + 12 * i])
        if n < 8 or off + n > len(data):
            raise UnsupportedSourceError(f"damaged ICC profile (tag {_sig(sig)!r} outside the data)")
        tags[_sig(sig)] = data[off : off + n]
    return tags


def _s15(raw: bytes) -> np.ndarray:
    return np.array(struct.unpack(f">{len(raw) // 4}i", raw), dtype=np.float64) / 65536.0


def _xyz(tag: bytes) -> np.ndarray:
    if tag[:4] != b"XYZ " or len(tag) < 20:
        raise UnsupportedSourceError(f"damaged ICC profile (colorant tag of type {_sig(tag[:4])!r})")
    return _s15(tag[8:20])


def _curve(tag: bytes) -> Callable[[np.ndarray], np.ndarray]:
    """The tone curve of a ``curv`` or ``para`` tag as a function on ``[0, 1]``."""
    kind = tag[:4]
    if kind == b"curv":
        (n,) = struct.unpack(">I", tag[8:12])
        if len(tag) < 12 + 2 * n:
            raise UnsupportedSourceError("damaged ICC profile (truncated curv table)")
        if n == 0:
            return lambda x: x
        if n == 1:
            gamma = struct.unpack(">H", tag[12:14])[0] / 256.0
            return lambda x: x**gamma
        table = np.array(struct.unpack(f">{n}H", tag[12 : 12 + 2 * n]), dtype=np.float64) / 65535.0
        grid = np.linspace(0.0, 1.0, n)
        return lambda x: np.interp(x, grid, table)
    if kind == b"para":
        (ftype,) = struct.unpack(">H", tag[8:10])
        nparam = {0: 1, 1: 3, 2: 4, 3: 5, 4: 7}.get(ftype)
        if nparam is None or len(tag) < 12 + 4 * nparam:
            raise UnsupportedSourceError(f"unsupported or damaged ICC parametric curve (type {ftype})")
        p = [float(v) for v in _s15(tag[12 : 12 + 4 * nparam])]
        return _parametric(ftype, p)
    raise UnsupportedSourceError(f"unsupported ICC tone curve type {_sig(kind)!r}")


def _parametric(ftype: int, p: list[float]) -> Callable[[np.ndarray], np.ndarray]:
    """ICC.1:2010 §10.18 parametric curve types 0-4."""
    g = p[0]

    def pw(x: np.ndarray, a: float, b: float) -> np.ndarray:
        return np.maximum(a * x + b, 0.0) ** g

    if ftype == 0:
        return lambda x: np.maximum(x, 0.0) ** g
    a, b = p[1], p[2]
    knee = -b / a if a != 0 else 0.0
    if ftype == 1:
        return lambda x: np.where(x >= knee, pw(x, a, b), 0.0)
    if ftype == 2:
        return lambda x: np.where(x >= knee, pw(x, a, b) + p[3], p[3])
    c, d = p[3], p[4]
    if ftype == 3:
        return lambda x: np.where(x >= d, pw(x, a, b), c * x)
    e, f = p[5], p[6]
    return lambda x: np.where(x >= d, pw(x, a, b) + e, c * x + f)


def _description(data: bytes, tags: dict[str, bytes]) -> str | None:
    tag = tags.get("desc")
    if tag is None or len(tag) < 12:
        return None
    try:
        if tag[:4] == b"desc":  # v2 textDescriptionType: count (with NUL), ASCII
            (n,) = struct.unpack(">I", tag[8:12])
            text = tag[12 : 12 + n].split(b"\0", 1)[0].decode("latin-1")
        elif tag[:4] == b"mluc":  # v4 multiLocalizedUnicodeType: records (lang, country, length, offset)
            count, rec = struct.unpack(">II", tag[8:16])
            records = [struct.unpack(">2s2sII", tag[16 + rec * i : 28 + rec * i]) for i in range(count)]
            if not records:
                return None
            pick = next((r for r in records if r[0] == b"en"), records[0])
            text = tag[pick[3] : pick[3] + pick[2]].decode("utf-16-be")
        else:
            return None
    except (struct.error, UnicodeDecodeError):
        return None
    return text.strip() or None
