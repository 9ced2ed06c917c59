"""The only place that accepts flexible user input for the geometry (``coerce_*``).

Everything downstream receives normalised, validated values.
"""

from __future__ import annotations

import math
from fractions import Fraction

from tilegraph.errors import PlanError

__all__ = ["coerce_pair", "coerce_scale", "coerce_overlap", "PAD_MODES", "coerce_blend"]

PAD_MODES = ("reflect", "symmetric", "edge", "constant")


def coerce_pair(value, name: str) -> tuple[int, int]:
    """Return ``(y, x)`` from an int or a pair of ints, each strictly positive.

    Parameters
    ----------
    value
        ``512`` or ``(512, 768)``.
    name
        Parameter name used in the error message.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        pair = (value, value)
    else:
        try:
            pair = tuple(value)
        except TypeError:
            raise PlanError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if len(pair) != 2:
        raise PlanError(f"{name} must be an int or a pair of ints, got {value!r}")
    out = []
    for v in pair:
        if isinstance(v, bool) or int(v) != v:
            raise PlanError(f"{name} must be integers, got {value!r}")
        if int(v) <= 0:
            raise PlanError(f"{name} must be positive, got {value!r}")
        out.append(int(v))
    return out[0], out[1]


def coerce_scale(value) -> Fraction:
    """Normalise a scale factor to a :class:`~fractions.Fraction` ``n/1`` or ``1/k``.

    Accepts ``2``, ``4``, ``"x4"``, ``"1/8"``, ``0.125`` and ``Fraction(1, 8)``.
    """
    if isinstance(value, str):
        text = value.strip().lower().lstrip("x×")
        try:
            frac = Fraction(text)
        except (ValueError, ZeroDivisionError):
            raise PlanError(f"scale {value!r} is not a number; use e.g. 2, 4 or '1/8'") from None
    elif isinstance(value, Fraction):
        frac = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        frac = Fraction(value).limit_denominator(1024)
    else:
        raise PlanError(f"scale must be a number, got {value!r}")
    if frac <= 0:
        raise PlanError(f"scale must be positive, got {value!r}")
    if frac.numerator != 1 and frac.denominator != 1:
        raise PlanError(
            f"scale {value!r} is neither an integer up-scale (2, 4) nor an integer down-scale (1/8)"
        )
    return frac


def coerce_overlap(value, tile: tuple[int, int], align: int) -> tuple[int, int]:
    """Return the overlap in pixels per axis.

    A float in ``[0, 1)`` is a fraction of the tile; the stride ``tile - overlap`` is then rounded
    down to a multiple of ``align`` (the model stride and down-scale factor), so the overlap may grow
    slightly. Integer overlaps are taken as given and validated by the plan.
    """
    if isinstance(value, float) and 0.0 <= value < 1.0:
        out = []
        for t in tile:
            stride = t - int(round(value * t))
            stride = max(align, (stride // align) * align)
            out.append(t - stride)
        return out[0], out[1]
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
        return 0, 0
    if isinstance(value, int | float) and not isinstance(value, bool):
        if int(value) != value or value < 0:
            raise PlanError(f"overlap must be a non-negative int or a fraction in [0, 1), got {value!r}")
        return int(value), int(value)
    try:
        pair = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise PlanError(f"overlap must be an int, a pair or a fraction, got {value!r}") from None
    if len(pair) != 2 or min(pair) < 0:
        raise PlanError(f"overlap must be non-negative, got {value!r}")
    return pair[0], pair[1]


def coerce_blend(value: str) -> str:
    """A blend mode's name (the modes themselves are registered in :mod:`tilegraph.blend`)."""
    if not isinstance(value, str) or not value:
        raise PlanError(f"blend must be the name of a blend mode, got {value!r}")
    return value


def lcm(*values: int) -> int:
    """Least common multiple of positive ints."""
    out = 1
    for v in values:
        out = out * v // math.gcd(out, v)
    return out
