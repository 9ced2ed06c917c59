"""Norm-statistics sync: per-sample normalisation layers that use statistics of the whole image.

GroupNorm and InstanceNorm compute their statistics over the window they see, so windows of the same
image disagree in colour in ways no overlap can fix (``algorithms.md`` §1.5). With every such layer using
the statistics of the *whole image*, the network is local again and crop-centre tiling is exact wherever
the receptive field fits half the overlap.

Two ways to obtain those statistics:

* **exact** (:func:`measure`, :func:`apply`): pass ``k`` runs every window with the layers before layer
  ``k`` already using global statistics and accumulates layer ``k``'s sufficient statistics (count, sum
  and sum of squared deviations per group, float64) over each window's *kept region* (the box ``crop``
  keeps, mapped to the layer's resolution), so every image pixel counts once; the forward stops at layer
  ``k``. The client adds the partial records (:func:`reduce_stats`) and finalises them
  (:meth:`PartialStats.finalize`). After one pass per layer, a last pass runs every layer with global
  statistics and produces the output. No activation is stored; a record is a few floats per group.
* **thumbnail** (:func:`record_stats`, :func:`thumbnail_stats`): one forward on a thumbnail of the image
  records every layer's statistics (Tiled VAE's fast mode). A thumbnail larger than the window is itself
  run tiled with the exact algorithm. :func:`stats_variation` compares two thumbnail sizes.

The caller's module is never modified: every call builds a *shadow* of it, a shallow copy of the modules
on the path to each normalisation layer with that layer swapped for a wrapper (parameters are shared, not
copied). Two tasks in one process can therefore measure and apply different statistics concurrently.

Kept regions at inner resolutions: a layer whose activation is ``r`` times the window input (``r`` = 1/8
after three stride-2 convolutions, 8 after three x2 up-samplings) sees the kept box ``[lo, hi)`` (window
input pixels) as ``[ceil(lo r), ceil(hi r))``. Window starts are multiples of the model stride, so these
boxes partition every layer's pixel grid. They coincide with the ``crop`` cut only when half the overlap
is a multiple of the layer's stride; :func:`check_alignment` requires that and says what to change.

torch is imported only by the functions that run a module; geometry, records and the reduction are pure
numpy.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from typing import Any

import numpy as np

from tilegraph.errors import ModelError, PlanError
from tilegraph.plan.grid import make_axis
from tilegraph.plan.normalize import lcm
from tilegraph.plan.plan import Plan, make_plan

__all__ = [
    "SYNC_MODES",
    "NormLayer",
    "NormReport",
    "PartialStats",
    "LayerStats",
    "find_norm_layers",
    "keep_boxes",
    "check_alignment",
    "measure",
    "apply",
    "record_stats",
    "record_forward",
    "pass_costs",
    "synced",
    "reduce_stats",
    "exact_stats",
    "tiled_windows",
    "thumbnail",
    "thumbnail_stats",
    "stats_variation",
]

SYNC_MODES = ("exact", "thumbnail")

Box = tuple[Fraction, Fraction, Fraction, Fraction]  # (y0, y1, x0, x1), window-local input pixels

_SYNC_KINDS = ("GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d")


# --------------------------------------------------------------------------- discovery
@dataclass(frozen=True)
class NormLayer:
    """One normalisation layer whose statistics are per sample and over space.

    Attributes
    ----------
    name : str
        Qualified name in the module (``"decoder.up.0.norm1"``).
    kind : str
        Class name (``"GroupNorm"``, ``"InstanceNorm2d"``, ``"LayerNorm"``).
    channels : int
        Channels normalised.
    groups : int
        Statistics groups (channels for InstanceNorm, ``num_groups`` for GroupNorm, 1 for LayerNorm).
    eps : float
        The layer's epsilon.
    order : int or None
        Position in the forward order of the probe (``None``: the probe did not reach it).
    resolution : tuple of Fraction or None
        Activation size over window input size ``(rows, cols)`` at the probe (``1/8``, ``8`` ...).
    syncable : bool
        Whether :func:`measure` and :func:`apply` support it (GroupNorm and InstanceNorm on 4-D
        activations); LayerNorm over space ties its affine weights to the input size and cannot be tiled.
    """

    name: str
    kind: str
    channels: int
    groups: int
    eps: float
    order: int | None = None
    resolution: tuple[Fraction, Fraction] | None = None
    syncable: bool = True

    @property
    def stride(self) -> int:
        """Input pixels per activation pixel, rounded up to an integer (1 at or above input resolution)."""
        if self.resolution is None:
            return 1
        return max(1, *(math.ceil(1 / r) for r in self.resolution))


@dataclass(frozen=True)
class NormReport:
    """What :func:`find_norm_layers` found in a model.

    Attributes
    ----------
    layers : tuple of NormLayer
        Per-sample normalisation layers over space, in forward order (then definition order for layers
        the probe did not reach).
    batchnorm_training : tuple of str
        BatchNorm layers in training mode: their statistics are per batch of windows.
    opaque : bool
        The model is not a torch module (a numpy callable): nothing can be inspected.
    probed : bool
        The forward order and resolutions come from a probe run (else definition order, no resolutions).
    note : str
        Why the probe did not run, if it did not.
    """

    layers: tuple[NormLayer, ...] = ()
    batchnorm_training: tuple[str, ...] = ()
    opaque: bool = False
    probed: bool = False
    note: str = ""

    @property
    def sync_layers(self) -> tuple[NormLayer, ...]:
        """The layers norm sync handles, in forward order."""
        return tuple(layer for layer in self.layers if layer.syncable)

    @property
    def names(self) -> tuple[str, ...]:
        """Names of :attr:`sync_layers`, in forward order."""
        return tuple(layer.name for layer in self.sync_layers)

    @property
    def passes(self) -> int:
        """Passes over the windows ``norm_sync="exact"`` needs: one per layer plus the output pass."""
        return len(self.sync_layers) + 1

    @property
    def resolutions(self) -> list[tuple[Fraction, Fraction]]:
        """Resolutions of the synced layers that the probe measured."""
        return [layer.resolution for layer in self.sync_layers if layer.resolution is not None]

    @property
    def total_stride(self) -> int:
        """Largest input-pixels-per-activation-pixel over the synced layers (1 if none is coarser)."""
        return max([1, *(layer.stride for layer in self.sync_layers)])

    @property
    def recommendation(self) -> str | None:
        """``"exact"`` when synced layers exist, else ``None``."""
        return "exact" if self.sync_layers else None

    def describe(self) -> str:
        """Plain-text paragraph for ``tilegraph plan``, ``run()`` and the QA report."""
        if self.opaque:
            return (
                "model is a numpy callable: its layers cannot be inspected; if it normalises per window "
                "(GroupNorm, InstanceNorm), tiles will differ in colour and no norm_sync is possible"
            )
        lines = []
        if self.layers:
            names = ", ".join(f"{layer.name} ({layer.kind})" for layer in self.layers[:8])
            more = f" and {len(self.layers) - 8} more" if len(self.layers) > 8 else ""
            lines.append(
                f"{len(self.layers)} per-sample normalisation layer(s) over space: {names}{more}; each window "
                "computes its own statistics, so tiles differ in colour"
            )
            if self.sync_layers:
                lines.append(
                    f"use norm_sync='exact' ({self.passes} passes over the windows, exact where the receptive "
                    "field fits half the overlap) or norm_sync='thumbnail' (one extra forward on a thumbnail, "
                    "approximate)"
                )
            bad = [layer.name for layer in self.layers if not layer.syncable]
            if bad:
                lines.append(
                    f"not syncable: {', '.join(bad)} (LayerNorm over space or activations that are not "
                    "(N, C, H, W)); tiling cannot reproduce whole-image inference there"
                )
        if self.batchnorm_training:
            lines.append(
                f"BatchNorm in training mode: {', '.join(self.batchnorm_training)}: statistics are per batch "
                "of windows; call model.eval() unless this is intended"
            )
        if not lines:
            return "no per-sample normalisation layers: windows are independent of each other's statistics"
        if not self.probed and self.note:
            lines.append(f"(order from the module definition: {self.note})")
        return "; ".join(lines)

    def to_dict(self) -> dict:
        """Plain-data form for metadata."""
        return {
            "layers": [
                {
                    "name": layer.name,
                    "kind": layer.kind,
                    "channels": layer.channels,
                    "groups": layer.groups,
                    "order": layer.order,
                    "resolution": None if layer.resolution is None else [str(r) for r in layer.resolution],
                    "syncable": layer.syncable,
                }
                for layer in self.layers
            ],
            "batchnorm_training": list(self.batchnorm_training),
            "opaque": self.opaque,
            "probed": self.probed,
            "passes": self.passes,
            "recommendation": self.recommendation,
        }


def _kind(m) -> str | None:
    """Classify a module: ``"sync"``, ``"layer"`` (LayerNorm), ``"batch-train"`` or ``None``."""
    import torch.nn as nn

    if isinstance(m, nn.GroupNorm):
        return "sync"
    if isinstance(m, nn.modules.instancenorm._InstanceNorm):
        # running statistics in eval mode are fixed numbers: nothing per sample
        return "sync" if (m.training or not m.track_running_stats) else None
    if isinstance(m, nn.LayerNorm):
        return "layer"
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return "batch-train" if m.training else None
    return None


def _norm_modules(module) -> dict[str, Any]:
    """``{name: layer}`` of the per-sample candidates (sync kinds and LayerNorm), definition order."""
    return {name: m for name, m in module.named_modules() if _kind(m) in ("sync", "layer")}


def _groups(m) -> tuple[int, int]:
    import torch.nn as nn

    if isinstance(m, nn.GroupNorm):
        return int(m.num_channels), int(m.num_groups)
    if isinstance(m, nn.LayerNorm):
        return int(np.prod(m.normalized_shape)), 1
    return int(m.num_features), int(m.num_features)


def _default_example(module, size: int):
    import torch
    import torch.nn as nn

    cin = getattr(module, "in_channels", None)
    if not isinstance(cin, int):
        first = next((m for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)), None)
        cin = getattr(first, "in_channels", None) or getattr(first, "in_features", None) or 3
    stride = getattr(module, "stride", 1)
    stride = stride if isinstance(stride, int) and stride > 0 else 1
    side = -(-size // stride) * stride
    params = list(module.parameters())
    dev = params[0].device if params else torch.device("cpu")
    dtype = params[0].dtype if params and params[0].is_floating_point() else torch.float32
    g = torch.Generator().manual_seed(0)
    return (0.5 + 0.1 * torch.randn(1, int(cin), side, side, generator=g)).to(dev, dtype)


def find_norm_layers(module, *, example=None, probe_size: int = 64) -> NormReport:
    """Find per-sample normalisation layers over space, in forward order, and BatchNorm in training mode.

    Parameters
    ----------
    module
        A ``torch.nn.Module``; anything else gives an opaque report.
    example
        Probe input ``(1, C, H, W)`` (tensor or array). Default: grey noise of ``module.in_channels``
        (else the first convolution's input channels) channels, ``probe_size`` pixels rounded up to
        ``module.stride``.
    probe_size
        Side of the default probe.

    Returns
    -------
    NormReport
        Its :meth:`~NormReport.describe` names the layers and recommends ``norm_sync``.
    """
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of torch models
        return NormReport(opaque=True)
    if not isinstance(module, torch.nn.Module):
        return NormReport(opaque=True)
    candidates = _norm_modules(module)
    bn = tuple(name for name, m in module.named_modules() if _kind(m) == "batch-train")
    order: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    note, probed, in_shape = "", False, None
    if candidates:
        if example is None:
            x = _default_example(module, probe_size)
        else:
            x = torch.as_tensor(np.asarray(example) if not isinstance(example, torch.Tensor) else example)
        in_shape = tuple(x.shape)
        calls: list[tuple[str, tuple[int, ...]]] = []
        parts = _torch_parts()
        shadow = _shadow(module, {n: parts.Recorder(m, n, calls) for n, m in candidates.items()})
        try:
            with torch.inference_mode():
                shadow(x)
            probed = True
        except Exception as exc:  # noqa: BLE001 - the probe is advisory; report why it failed
            note = f"the probe forward failed: {exc!r}"
        for name, shape in calls:
            if name in order:
                raise ModelError(
                    f"normalisation layer {name} runs more than once per forward; norm_sync needs each "
                    "layer to run once",
                    hint="give each use its own module instance",
                )
            order[name] = len(order)
            shapes[name] = shape
    layers = []
    for name, m in candidates.items():
        channels, groups = _groups(m)
        act = shapes.get(name)
        res = None
        syncable = _kind(m) == "sync"
        if act is not None and in_shape is not None:
            if len(act) == 4 and len(in_shape) == 4:
                res = (Fraction(act[2], in_shape[2]), Fraction(act[3], in_shape[3]))
            else:
                syncable = False
            if _kind(m) == "layer" and len(act) == 3:  # (N, L, C) tokens: per token, not over space
                continue
        layers.append(
            NormLayer(name, type(m).__name__, channels, groups, float(m.eps), order.get(name), res, syncable)
        )
    big = len(layers) + 1
    layers.sort(key=lambda layer: big if layer.order is None else layer.order)
    return NormReport(tuple(layers), bn, False, probed, note)


# --------------------------------------------------------------------------- statistics records
@dataclass(frozen=True, eq=False)
class PartialStats:
    """Sufficient statistics of one layer's activation over some pixels, per group (float64).

    Records of disjoint pixel sets add (:meth:`__add__`, Chan's pairwise update, so no precision is lost
    to ``sum of squares - square of sum``).

    Attributes
    ----------
    layer : str
        Layer name.
    count : float
        Values per group (pixels times channels per group).
    sum : numpy.ndarray
        ``(G,)`` sums.
    m2 : numpy.ndarray
        ``(G,)`` sums of squared deviations from the record's own group means.
    """

    layer: str
    count: float
    sum: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, layer: str, groups: int) -> PartialStats:
        """A record of no pixels."""
        return cls(layer, 0.0, np.zeros(groups), np.zeros(groups))

    @property
    def groups(self) -> int:
        """Number of groups."""
        return int(self.sum.shape[0])

    @property
    def mean(self) -> np.ndarray:
        """``(G,)`` means."""
        return self.sum / max(self.count, 1.0)

    @property
    def sumsq(self) -> np.ndarray:
        """``(G,)`` sums of squares (derived)."""
        return self.m2 + self.sum * self.mean

    def __add__(self, other: PartialStats) -> PartialStats:
        if other.layer != self.layer or other.groups != self.groups:
            raise ValueError(f"cannot add statistics of {other.layer} to {self.layer}")
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        m2 = self.m2 + other.m2 + delta * delta * (self.count * other.count / n)
        return PartialStats(self.layer, n, self.sum + other.sum, m2)

    def finalize(self) -> LayerStats:
        """Global statistics (biased variance, as the normalisation layers use)."""
        if self.count <= 0:
            raise ValueError(f"no pixels measured for layer {self.layer}")
        return LayerStats(self.layer, self.mean.copy(), self.m2 / self.count, self.count)

    def to_dict(self) -> dict:
        """Plain data."""
        return {"layer": self.layer, "count": self.count, "sum": self.sum.tolist(), "m2": self.m2.tolist()}


@dataclass(frozen=True, eq=False)
class LayerStats:
    """Global statistics of one layer: ``(G,)`` mean and biased variance, float64."""

    layer: str
    mean: np.ndarray
    var: np.ndarray
    count: float = 0.0

    def to_dict(self) -> dict:
        """Plain data."""
        return {
            "layer": self.layer,
            "mean": self.mean.tolist(),
            "var": self.var.tolist(),
            "count": self.count,
        }


def reduce_stats(records: Iterable[PartialStats]) -> dict[str, PartialStats]:
    """Add partial records per layer (the client's reduction); order does not matter beyond rounding."""
    out: dict[str, PartialStats] = {}
    for rec in records:
        out[rec.layer] = out[rec.layer] + rec if rec.layer in out else rec
    return out


# --------------------------------------------------------------------------- geometry
def keep_boxes(plan: Plan, indices: Iterable[int]) -> list[Box]:
    """The box ``crop`` keeps from each window, in window-local *input* pixels (Fractions).

    Parameters
    ----------
    plan
        The run's plan.
    indices
        Flat window indices (a batch).

    Returns
    -------
    list of tuple
        ``(y0, y1, x0, x1)`` per window; the union over all windows is the image, each pixel once.
    """
    s = plan.scale_fraction
    out = []
    for i in indices:
        w = plan.window(int(i))
        ky, kx = plan.y.keep(w.row), plan.x.keep(w.col)
        out.append(
            (
                Fraction(ky[0]) / s - w.y0,
                Fraction(ky[1]) / s - w.y0,
                Fraction(kx[0]) / s - w.x0,
                Fraction(kx[1]) / s - w.x0,
            )
        )
    return out


def _resolutions(resolutions) -> list[tuple[Fraction, Fraction]]:
    if isinstance(resolutions, NormReport):
        return resolutions.resolutions
    out = []
    for r in resolutions:
        if isinstance(r, int | Fraction | str | float):
            f = Fraction(r)
            out.append((f, f))
        else:
            ry, rx = r
            out.append((Fraction(ry), Fraction(rx)))
    return out


def check_alignment(plan: Plan, resolutions) -> None:
    """Check that the kept regions fall on whole pixels at every inner resolution.

    Parameters
    ----------
    plan
        The run's plan.
    resolutions
        A :class:`NormReport`, or activation-size over input-size ratios per layer (a number or a
        ``(rows, cols)`` pair each: ``1/8`` for a layer after three stride-2 convolutions).

    Raises
    ------
    PlanError
        Naming the axis and what to change: half the overlap (and the window stride) must be a multiple
        of the model's total stride at the synced layers.
    """
    res = _resolutions(resolutions)
    if not res:
        return
    for axis_name, axis, k in (("rows", plan.y, 0), ("cols", plan.x, 1)):
        if axis.count < 2:
            continue
        need = 1
        for r in res:
            need = lcm(need, r[k].denominator)
        if not _misaligned(axis, need):
            continue
        tile, overlap = axis.tile, axis.overlap

        step = lcm(2 * need, plan.align)
        candidates = range(-(-overlap // (2 * need)) * 2 * need, tile, 2 * need)
        good = next((o for o in candidates if _fits(plan, axis, o, need)), None)
        hint = (
            f"use overlap {good} (half the overlap a multiple of {need})"
            if good is not None
            else f"use a tile that is a multiple of {step} and an overlap that is a multiple of {2 * need}"
        )
        raise PlanError(
            f"norm_sync: the kept regions along {axis_name} do not fall on whole pixels at every inner "
            f"resolution (overlap {overlap}, stride {axis.stride}: half the overlap must be a multiple of the "
            f"model's total stride {need} at its normalisation layers)",
            hint=hint,
        )


def _fits(plan: Plan, axis, overlap: int, need: int) -> bool:
    """Whether ``overlap`` on this axis gives kept regions on whole pixels at ``1/need`` resolution."""
    if (axis.tile - overlap) % plan.align:
        return False
    crop = plan.blend == "crop"  # make_plan starts a crop grid at minus half the overlap
    origin = -((overlap // 2) // plan.align * plan.align) if crop else 0
    return not _misaligned(make_axis(axis.size, axis.tile, overlap, axis.scale, plan.align, origin), need)


def _misaligned(axis, need: int) -> list[Fraction]:
    """Window-local kept-region boundaries (input pixels) that are not multiples of ``need``.

    Every inner cut, seen from both windows it separates, and the image's start seen from the first
    window (which starts in the near padding when the grid's origin is negative).
    """
    s = axis.scale
    bounds = [Fraction(-axis.start(0))]
    for i in range(axis.count - 1):
        c = Fraction(axis.cut(i)) / s
        bounds += [c - axis.start(i), c - axis.start(i + 1)]
    return [b for b in bounds if (b / need).denominator != 1]


def _layer_box(box: Box, ry: Fraction, rx: Fraction, h: int, w: int) -> tuple[int, int, int, int]:
    y0, y1, x0, x1 = box

    def cl(v: Fraction, r: Fraction, n: int) -> int:
        return min(n, max(0, math.ceil(v * r)))

    return cl(y0, ry, h), cl(y1, ry, h), cl(x0, rx, w), cl(x1, rx, w)


# --------------------------------------------------------------------------- shadow modules
def _shadow(root, replace: Mapping[str, Any]):
    """A shallow copy of ``root`` where the named submodules are replaced; ``root`` is untouched.

    Only the modules on the path to a replaced one are copied (their ``_modules`` dicts too); parameters,
    buffers and all other submodules are shared.
    """
    if "" in replace:
        return replace[""]
    copies: dict[int, Any] = {}

    def dup(m):
        c = copies.get(id(m))
        if c is None:
            c = copy.copy(m)
            c._modules = dict(m._modules)
            copies[id(m)] = c
        return c

    new_root = dup(root)
    for name, repl in replace.items():
        parent = new_root
        parts = name.split(".")
        for p in parts[:-1]:
            child = dup(parent._modules[p])
            parent._modules[p] = child
            parent = child
        parent._modules[parts[-1]] = repl
    return new_root


class _StopForward(Exception):  # noqa: N818 - private control flow, not an error
    """Raised by the measuring wrapper to end the forward at the measured layer."""

    def __init__(self, stats: PartialStats):
        super().__init__(stats.layer)
        self.stats = stats


def _as_groups(x, groups: int):
    """``(N, G, C/G, H, W)`` view of a ``(N, C, H, W)`` activation."""
    n, c = x.shape[:2]
    return x.reshape(n, groups, c // groups, *x.shape[2:])


def _box_stats(x, groups: int, boxes: Sequence[tuple[int, int, int, int]], layer: str) -> PartialStats:
    """Sufficient statistics of ``x`` ``(N, C, h, w)`` over each sample's box (layer coordinates)."""
    import torch

    total = PartialStats.empty(layer, groups)
    wide = torch.float32 if x.device.type == "mps" else torch.float64
    for k, box in enumerate(boxes):
        a0, a1, b0, b1 = box
        if a1 <= a0 or b1 <= b0:
            continue
        v = _as_groups(x[k : k + 1, :, a0:a1, b0:b1], groups)[0].reshape(groups, -1).to(wide)
        n = v.shape[1]
        s = v.sum(dim=1)
        m2 = ((v - (s / n)[:, None]) ** 2).sum(dim=1)
        rec = PartialStats(
            layer, float(n), s.cpu().numpy().astype(np.float64), m2.cpu().numpy().astype(np.float64)
        )
        total = total + rec
    return total


def _normalise(x, norm, stats: LayerStats):
    """``norm`` applied to ``x`` with the given statistics instead of its own."""
    import torch

    c = x.shape[1]
    groups = stats.mean.shape[0]
    if c % groups:
        raise ModelError(f"layer {stats.layer}: {groups} statistics groups do not divide {c} channels")
    per = c // groups
    eps = float(norm.eps)
    rstd = 1.0 / np.sqrt(stats.var + eps)
    scale = np.repeat(rstd, per)
    shift = np.repeat(-stats.mean * rstd, per)
    weight = getattr(norm, "weight", None)
    bias = getattr(norm, "bias", None)
    wide = torch.float32 if x.device.type == "mps" else torch.float64
    sc = torch.as_tensor(scale, dtype=wide, device=x.device)
    sh = torch.as_tensor(shift, dtype=wide, device=x.device)
    if weight is not None:
        w = weight.detach().to(wide)
        sc, sh = sc * w, sh * w
    if bias is not None:
        sh = sh + bias.detach().to(wide)
    work = torch.promote_types(x.dtype, torch.float32)
    shape = (1, c) + (1,) * (x.dim() - 2)
    y = x.to(work) * sc.to(work).view(shape) + sh.to(work).view(shape)
    return y if torch.is_autocast_enabled() else y.to(x.dtype)


def _own_stats(x, groups: int, layer: str) -> LayerStats:
    """Statistics of a whole activation (batch pooled), float64."""
    import torch

    wide = torch.float32 if x.device.type == "mps" else torch.float64
    v = _as_groups(x, groups).transpose(0, 1).reshape(groups, -1).to(wide)
    mean = v.mean(dim=1)
    var = ((v - mean[:, None]) ** 2).mean(dim=1)
    return LayerStats(
        layer, mean.cpu().numpy().astype(np.float64), var.cpu().numpy().astype(np.float64), float(v.shape[1])
    )


@cache
def _torch_parts():
    """Wrapper module classes (defined on first use, so importing this module does not import torch)."""
    import torch.nn as nn

    class _Wrapper(nn.Module):
        def __init__(self, inner, name: str):
            super().__init__()
            self.__dict__["inner"] = inner  # not a submodule: nothing is registered or moved
            self.__dict__["layer_name"] = name
            self.training = inner.training

        def __getattr__(self, item):  # attribute reads (weight, num_groups ...) reach the real layer
            try:
                return super().__getattr__(item)
            except AttributeError:
                return getattr(self.__dict__["inner"], item)

    class Recorder(_Wrapper):
        """Records the call order and the activation shape, then runs the layer."""

        def __init__(self, inner, name: str, calls: list):
            super().__init__(inner, name)
            self.__dict__["calls"] = calls

        def forward(self, x):
            self.calls.append((self.layer_name, tuple(x.shape)))
            return self.inner(x)

    class Guard(_Wrapper):
        """A synced layer reached without statistics: the pass order is wrong."""

        def forward(self, x):
            raise ModelError(
                f"normalisation layer {self.layer_name} was reached without global statistics",
                hint="measure the layers in forward order (find_norm_layers(...).names) and pass every "
                "earlier layer's statistics",
            )

    class Fixed(_Wrapper):
        """Normalises with given global statistics."""

        def __init__(self, inner, name: str, stats: LayerStats):
            super().__init__(inner, name)
            self.__dict__["stats"] = stats

        def forward(self, x):
            return _normalise(x, self.inner, self.stats)

    class Measure(_Wrapper):
        """Accumulates the statistics over the kept boxes and stops the forward."""

        def __init__(self, inner, name: str, boxes: Sequence[Box], groups: int, in_shape):
            super().__init__(inner, name)
            self.__dict__["boxes"] = boxes
            self.__dict__["groups"] = groups
            self.__dict__["in_shape"] = in_shape

        def forward(self, x):
            if x.dim() != 4:
                raise ModelError(
                    f"norm_sync supports (N, C, H, W) activations; {self.layer_name} got {tuple(x.shape)}"
                )
            h, w = x.shape[2:]
            ry, rx = Fraction(h, self.in_shape[2]), Fraction(w, self.in_shape[3])
            boxes = [_layer_box(b, ry, rx, h, w) for b in self.boxes]
            raise _StopForward(_box_stats(x, self.groups, boxes, self.layer_name))

    class Record(_Wrapper):
        """Normalises with the activation's own statistics (pooled over the batch) and records them."""

        def __init__(self, inner, name: str, groups: int, out: dict):
            super().__init__(inner, name)
            self.__dict__["groups"] = groups
            self.__dict__["out"] = out

        def forward(self, x):
            stats = _own_stats(x, self.groups, self.layer_name)
            self.out[self.layer_name] = stats
            return _normalise(x, self.inner, stats)

    class Parts:
        pass

    parts = Parts()
    parts.Recorder = Recorder  # type: ignore[attr-defined]
    parts.Guard = Guard  # type: ignore[attr-defined]
    parts.Fixed = Fixed  # type: ignore[attr-defined]
    parts.Measure = Measure  # type: ignore[attr-defined]
    parts.Record = Record  # type: ignore[attr-defined]
    return parts


def _sync_modules(module) -> dict[str, Any]:
    return {name: m for name, m in module.named_modules() if _kind(m) == "sync"}


def _as_tensor(batch, module):
    import torch

    if isinstance(batch, torch.Tensor):
        return batch
    params = list(module.parameters())
    dev = params[0].device if params else torch.device("cpu")
    return torch.from_numpy(np.ascontiguousarray(batch)).to(dev)


# --------------------------------------------------------------------------- the per-batch calls
def measure(
    module, batch, *, layer: str, known_stats: Mapping[str, LayerStats], keep_boxes: Sequence[Box]
) -> PartialStats:
    """Pass ``k`` of ``norm_sync="exact"`` on one batch: layer ``k``'s statistics over the kept boxes.

    Layers before ``layer`` use ``known_stats``; the forward stops at ``layer``. The caller's module is
    not modified (a shadow copy runs), so concurrent calls are safe.

    Parameters
    ----------
    module
        The torch module.
    batch
        ``(N, C, H, W)`` tensor (on the module's device) or float32 array.
    layer
        Name of the layer to measure (one of :attr:`NormReport.names`).
    known_stats
        Global statistics of every synced layer that runs before ``layer``.
    keep_boxes
        One box per batch element, window-local input pixels (:func:`keep_boxes`).

    Returns
    -------
    PartialStats
        Summed over the batch; add the records of all batches with :func:`reduce_stats`.

    Raises
    ------
    ModelError
        When the forward never reaches ``layer``, or reaches a synced layer without statistics first.
    """
    import torch

    mods = _sync_modules(module)
    if layer not in mods:
        raise ModelError(
            f"{layer!r} is not a GroupNorm/InstanceNorm layer of the model", hint=f"use one of {sorted(mods)}"
        )
    x = _as_tensor(batch, module)
    if len(keep_boxes) != x.shape[0]:
        raise ValueError(f"{len(keep_boxes)} keep boxes for a batch of {x.shape[0]}")
    parts = _torch_parts()
    _, groups = _groups(mods[layer])
    repl: dict[str, Any] = {}
    for name, m in mods.items():
        if name == layer:
            repl[name] = parts.Measure(m, name, list(keep_boxes), groups, tuple(x.shape))
        elif name in known_stats:
            repl[name] = parts.Fixed(m, name, known_stats[name])
        else:
            repl[name] = parts.Guard(m, name)
    shadow = _shadow(module, repl)
    try:
        with torch.inference_mode():
            shadow(x)
    except _StopForward as stop:
        return stop.stats
    raise ModelError(f"the forward never reached layer {layer}", hint="check find_norm_layers(model).names")


def apply(module, batch, *, stats: Mapping[str, LayerStats]):
    """The last pass: the model's output with every synced layer using global ``stats``.

    Parameters
    ----------
    module
        The torch module (not modified).
    batch
        ``(N, C, H, W)`` tensor or float32 array.
    stats
        Global statistics of every synced layer the forward reaches.

    Returns
    -------
    torch.Tensor
        The model output.
    """
    import torch

    x = _as_tensor(batch, module)
    with torch.inference_mode():
        return synced(module, stats)(x)


def synced(module, stats: Mapping[str, LayerStats]):
    """A shadow of ``module`` whose synced layers use ``stats`` (call it like the module; for the runner)."""
    parts = _torch_parts()
    repl = {
        name: parts.Fixed(m, name, stats[name]) if name in stats else parts.Guard(m, name)
        for name, m in _sync_modules(module).items()
    }
    return _shadow(module, repl)


def record_stats(module, batch) -> dict[str, LayerStats]:
    """One forward on ``batch`` (a thumbnail) recording every synced layer's own statistics.

    With a batch of several samples the statistics are pooled over them (as if they were one image).

    Returns
    -------
    dict
        ``{layer name: LayerStats}`` in forward order.
    """
    return record_forward(module, batch)[1]


def record_forward(module, batch) -> tuple[Any, dict[str, LayerStats]]:
    """The model's output on ``batch`` and every synced layer's own statistics, from one forward.

    The output equals a plain forward (each layer normalises with the statistics it records), so a
    thumbnail inference can record statistics at no extra cost.

    Returns
    -------
    tuple
        ``(output tensor, {layer name: LayerStats})``.
    """
    import torch

    x = _as_tensor(batch, module)
    parts = _torch_parts()
    out: dict[str, LayerStats] = {}
    repl = {name: parts.Record(m, name, _groups(m)[1], out) for name, m in _sync_modules(module).items()}
    with torch.inference_mode():
        y = _shadow(module, repl)(x)
    return y, out


def pass_costs(module, report: NormReport, example, *, repeats: int = 3) -> list[float]:
    """Cost of each ``norm_sync="exact"`` pass relative to one plain forward, timed on ``example``.

    Pass ``k`` stops at layer ``k``, so early passes are cheap; the last pass is a whole forward with
    fixed statistics. The plan can report ``sum(pass_costs(...))`` as the inference cost of the run in
    units of a run without sync.

    Parameters
    ----------
    module
        The torch module.
    report
        Its :class:`NormReport`.
    example
        A window-sized input ``(N, C, H, W)`` (tensor or float32 array).
    repeats
        Rounds of timings after one warm-up call, at least (more, up to 20, while they take under 0.2 s);
        every round times all passes and a plain forward in turn, and the fastest run of each counts.

    Returns
    -------
    list of float
        One value per pass (``report.passes`` values), the last one for the output pass.
    """
    import torch

    x = _as_tensor(example, module)
    stats = record_stats(module, x)
    box = [(Fraction(0), Fraction(x.shape[2]), Fraction(0), Fraction(x.shape[3]))] * x.shape[0]

    def sync() -> None:
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)

    def plain():
        with torch.inference_mode():
            return module(x)

    def measuring(name: str) -> Callable[[], Any]:
        return lambda: measure(module, x, layer=name, known_stats=stats, keep_boxes=box)

    calls: list[Callable[[], Any]] = [plain, *(measuring(name) for name in report.names)]
    calls.append(lambda: apply(module, x, stats=stats))
    for fn in calls:  # warm-up (allocator, kernels, the shadow's first build), not timed
        fn()
    sync()
    best = [float("inf")] * len(calls)
    spent, rounds = 0.0, 0
    # rounds interleave every call, so load from other work hits all alike; at least ``repeats`` rounds,
    # more (up to 20) while they take under 0.2 s; the fastest run of each call counts
    while rounds < max(1, repeats) or (spent < 0.2 and rounds < 20):
        for k, fn in enumerate(calls):
            t0 = time.perf_counter()
            fn()
            sync()
            dt = time.perf_counter() - t0
            best[k] = min(best[k], dt)
            spent += dt
        rounds += 1
    return [b / best[0] for b in best[1:]]


# --------------------------------------------------------------------------- in-process reference driver
def _to_float(image: np.ndarray) -> np.ndarray:
    if image.dtype.kind in "ui":
        return image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)
    return image.astype(np.float32)


def _padded(image: np.ndarray, plan: Plan) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if tuple(image.shape[:2]) != tuple(plan.shape):
        raise ValueError(f"image is {image.shape[:2]} but the plan is for {plan.shape}")
    mode: Any = plan.pad_mode
    return np.pad(image, (*plan.pad_widths, (0, 0)), mode=mode)  # near padding too (a crop grid's origin)


def _window_batches(padded: np.ndarray, plan: Plan, batch_size: int):
    (top, _), (left, _) = plan.pad_widths
    for i0 in range(0, plan.n_windows, batch_size):
        idx = list(range(i0, min(plan.n_windows, i0 + batch_size)))
        wins = [plan.window(i) for i in idx]
        raw = np.stack([padded[w.y0 + top : w.y1 + top, w.x0 + left : w.x1 + left] for w in wins])
        yield idx, np.ascontiguousarray(np.moveaxis(_to_float(raw), -1, 1))


def exact_stats(
    module, image: np.ndarray, plan: Plan, *, report: NormReport | None = None, batch_size: int = 4
) -> tuple[dict[str, LayerStats], dict]:
    """Global statistics of every synced layer by the exact algorithm, in process (one pass per layer).

    Windows are read like the engine reads them (the image padded around as the plan says).

    Returns
    -------
    tuple
        ``({layer: LayerStats}, info)`` with ``info`` holding the passes, window forwards and seconds.
    """
    if report is None:
        g = np.random.default_rng(0)
        probe = (0.5 + 0.1 * g.standard_normal((1, plan.channels, *plan.window_shape))).astype(np.float32)
        report = find_norm_layers(module, example=_as_tensor(probe, module))
    check_alignment(plan, report)
    padded = _padded(image, plan)
    stats: dict[str, LayerStats] = {}
    t0 = time.perf_counter()
    forwards = 0
    for name in report.names:
        parts = []
        for idx, x in _window_batches(padded, plan, batch_size):
            parts.append(measure(module, x, layer=name, known_stats=stats, keep_boxes=keep_boxes(plan, idx)))
            forwards += len(idx)
        stats[name] = reduce_stats(parts)[name].finalize()
    info = {"passes": len(report.names), "window_forwards": forwards, "seconds": time.perf_counter() - t0}
    return stats, info


def tiled_windows(
    module,
    image: np.ndarray,
    plan: Plan,
    *,
    stats: Mapping[str, LayerStats] | None = None,
    batch_size: int = 4,
) -> np.ndarray:
    """Every window's output ``(N, C', h, w)`` float32, with synced layers using ``stats`` (or their own)."""
    import torch

    padded = _padded(image, plan)
    outs = []
    for _, x in _window_batches(padded, plan, batch_size):
        if stats is None:
            with torch.inference_mode():
                y = module(_as_tensor(x, module))
        else:
            y = apply(module, x, stats=stats)
        outs.append(y.detach().to("cpu", torch.float32).numpy())
    return np.concatenate(outs)


# --------------------------------------------------------------------------- thumbnail mode
def thumbnail(image: np.ndarray, *, size: int, align: int = 1) -> tuple[np.ndarray, int]:
    """Area-averaged thumbnail whose longest side is at most ``size``; returns ``(thumb, factor)``.

    The thumbnail (float32 ``(h, w, C)``, integers scaled to ``[0, 1]``) is padded by reflection to a
    multiple of ``align`` (the model stride).
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    h, w = image.shape[:2]
    factor = max(1, -(-max(h, w) // int(size)))
    th, tw = -(-h // factor), -(-w // factor)
    src = _to_float(image).astype(np.float64)
    src = np.pad(src, ((0, th * factor - h), (0, tw * factor - w), (0, 0)), mode="edge")
    small = src.reshape(th, factor, tw, factor, -1).mean(axis=(1, 3))
    ah, aw = -(-th // align) * align, -(-tw // align) * align
    if (ah, aw) != (th, tw):
        small = np.pad(
            small, ((0, ah - th), (0, aw - tw), (0, 0)), mode="reflect" if min(th, tw) > 1 else "edge"
        )
    return small.astype(np.float32), factor


def thumbnail_stats(
    module,
    image: np.ndarray,
    *,
    size: int,
    tile: int | None = None,
    overlap: int | None = None,
    align: int = 1,
) -> tuple[dict[str, LayerStats], dict]:
    """``norm_sync="thumbnail"``: every synced layer's statistics from one thumbnail of the image.

    Parameters
    ----------
    module
        The torch module.
    image
        ``(H, W, C)`` image (in process: the engine builds the thumbnail band by band instead).
    size
        Longest side of the thumbnail.
    tile, overlap
        When given and the thumbnail is larger than ``tile``, it is run tiled with the exact algorithm
        (:func:`exact_stats`) instead of as one forward.
    align
        Model stride: the thumbnail is padded to a multiple of it.

    Returns
    -------
    tuple
        ``({layer: LayerStats}, info)`` with the thumbnail factor and shape.
    """
    small, factor = thumbnail(image, size=size, align=align)
    info: dict = {"factor": factor, "shape": small.shape[:2]}
    if tile is not None and max(small.shape[:2]) > tile:
        plan = make_plan(
            small.shape[:2],
            tile=tile,
            overlap=overlap if overlap is not None else tile // 4,
            channels=small.shape[2],
            dtype="float32",
            model_stride=align,
            blend="crop",
            origin=0,  # the first windows start at the thumbnail's start, as in a norm_sync="exact" run
        )
        stats, more = exact_stats(module, small, plan)
        return stats, {**info, **more, "tiled": True}
    x = np.ascontiguousarray(np.moveaxis(small, -1, 0)[None])
    return record_stats(module, x), {**info, "tiled": False}


def stats_variation(
    a: Mapping[str, LayerStats], b: Mapping[str, LayerStats], *, threshold: float = 0.1
) -> dict:
    """How much statistics change between two thumbnail sizes (or any two estimates).

    For each layer present in both: the worst group's mean difference in units of ``b``'s standard
    deviation, and the worst ``|log(std_a / std_b)|``.

    Returns
    -------
    dict
        ``{"layers": {name: {"mean_shift": ..., "log_std_ratio": ...}}, "worst": float,
        "recommend_exact": bool}``; ``worst`` is the largest of both measures over layers, and
        ``recommend_exact`` is ``worst > threshold``.
    """
    layers = {}
    worst = 0.0
    for name in a:
        if name not in b:
            continue
        sa, sb = np.sqrt(a[name].var), np.sqrt(b[name].var)
        tiny = 1e-12
        shift = float(np.max(np.abs(a[name].mean - b[name].mean) / np.maximum(sb, tiny)))
        ratio = float(np.max(np.abs(np.log(np.maximum(sa, tiny) / np.maximum(sb, tiny)))))
        layers[name] = {"mean_shift": shift, "log_std_ratio": ratio}
        worst = max(worst, shift, ratio)
    return {"layers": layers, "worst": worst, "recommend_exact": worst > threshold}
