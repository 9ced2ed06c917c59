"""The QA report: ``report.json`` plus ``report.html`` with pictures (Pillow for PNG, no other dependency).

The page shows the summary table (the same numbers as the JSON, formatted once by :func:`summary_rows`), a
heat map of the seam steps over a thumbnail, and crops of the worst seams and of the worst tile corner, each
shown as is and through a solar curve (``1/2 - 1/2 cos(2 pi n v)``, n = 3: a 1 DN step becomes about 9 DN),
which makes steps of a fraction of a DN visible, as retouchers use it. :func:`summary_html` is the summary
alone, for a Jupyter ``_repr_html_``.

Pictures are PNG files in ``report_files/`` beside the page (``embed=False``) or data URIs inside it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from tilegraph.plan.plan import Plan
from tilegraph.quality.metrics import read_dn, solar_curve

__all__ = ["write_report", "summary_html", "summary_rows", "thumbnail", "seam_heatmap"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#176317}.bad{color:#a01010;font-weight:600}figure{display:inline-block;margin:6px;vertical-align:top}
figcaption{font-size:12px;color:#555;max-width:520px}img{image-rendering:pixelated;border:1px solid #aaa}
"""


# --------------------------------------------------------------------------- summary
def _get(d: dict | None, *keys):
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}"


def summary_rows(metrics: dict) -> list[dict]:
    """The headline numbers: ``[{"name", "key", "value", "text", "target", "ok"}]``.

    ``key`` is the path into ``metrics`` (dot-separated), ``value`` the raw number (as in the JSON), ``text``
    its formatting in the HTML, ``ok`` whether it meets ``target`` (``None`` when there is no target or value).
    """
    spec = [
        ("seam segments measured", "seams.count", None, None),
        ("worst seam step beyond the noise floor (DN)", "seams.worst_step", "< 0.5", lambda v: abs(v) < 0.5),
        ("p95 seam step (DN)", "seams.p95_step", None, None),
        ("mean seam step (DN)", "seams.mean_step", None, None),
        ("seam step noise floor, median (DN)", "seams.noise_floor", None, None),
        ("largest raw seam step, content included (DN)", "seams.worst_raw_step", None, None),
        ("worst near-seam step, m px each side (DN)", "seams.worst_near_step", None, None),
        ("segments with a visible step (>= 0.5 DN beyond the floor)", "seams.visible", "0", lambda v: v == 0),
        ("seam-to-interior gradient ratio", "gradient_ratio.value", "0.9 - 1.1", lambda v: 0.9 <= v <= 1.1),
        ("texture ratio at seams", "texture_ratio.value", "0.9 - 1.1", lambda v: 0.9 <= v <= 1.1),
        ("power at the tile period (dB, max of x/y)", "period.max_db", "< 6", lambda v: v < 6),
        ("colour drift dE00 mean", "colour.mean", None, None),
        ("colour drift dE00 p95", "colour.p95", "< 2", lambda v: v < 2),
        ("colour drift dE00 max", "colour.max", None, None),
        ("neighbour-tile dE00 max", "colour.neighbour.max", "< 0.5", lambda v: v < 0.5),
        ("neighbour-tile dE00 p95", "colour.neighbour.p95", None, None),
        ("tile-correlated share of dE00 variance", "colour.tile_share", None, None),
        ("PSNR vs whole image, seam bands (dB)", "fidelity.psnr_seam", None, None),
        ("PSNR vs whole image, interiors (dB)", "fidelity.psnr_interior", None, None),
        ("max |tiled - whole| (DN)", "fidelity.max_abs_dn", None, None),
        ("tile-grid shift: max |difference| (DN)", "grid_shift.max_abs_dn", None, None),
        ("tile-grid shift: PSNR (dB)", "grid_shift.psnr", None, None),
    ]
    rows = []
    for name, key, target, test in spec:
        value = _get(metrics, *key.split("."))
        if value is None and key.split(".")[0] in ("colour", "fidelity", "grid_shift"):
            continue
        ok = None if (test is None or value is None) else bool(test(value))
        rows.append(
            {"name": name, "key": key, "value": value, "text": _fmt(value), "target": target, "ok": ok}
        )
    return rows


def summary_html(metrics: dict, *, title: str | None = None) -> str:
    """An HTML table of the headline numbers (for Jupyter's ``_repr_html_`` and the report page)."""
    out = [f"<h3>{html.escape(title)}</h3>"] if title else []
    out.append("<table class='summary'><tr><th>metric</th><th>value</th><th>target</th></tr>")
    for r in summary_rows(metrics):
        cls = "" if r["ok"] is None else (" ok" if r["ok"] else " bad")
        out.append(
            f"<tr data-key='{r['key']}'><td>{html.escape(r['name'])}</td><td class='num{cls}'>{r['text']}</td>"
            f"<td>{html.escape(r['target'] or '')}</td></tr>"
        )
    out.append("</table>")
    units = metrics.get("units")
    if isinstance(units, dict) and units.get("colour_space"):
        out.append(f"<p class='units'>colour space: {html.escape(str(units['colour_space']))}</p>")
    return "\n".join(out)


# --------------------------------------------------------------------------- pictures
def thumbnail(image, *, max_side: int = 1024, block: int = 2048) -> tuple[np.ndarray, int]:
    """Block-mean thumbnail in DN ``(h, w, C)`` float32 and its factor, read block by block."""
    h, w = image.shape[:2]
    f = max(1, math.ceil(max(h, w) / max_side))
    bs = max(f, (block // f) * f)
    th, tw = math.ceil(h / f), math.ceil(w / f)
    c = 1 if len(image.shape) == 2 else image.shape[2]
    out = np.zeros((th, tw, c), dtype=np.float32)
    for y0 in range(0, h, bs):
        for x0 in range(0, w, bs):
            blk = read_dn(image, y0, min(h, y0 + bs), x0, min(w, x0 + bs))
            bh, bw = blk.shape[:2]
            ph, pw = math.ceil(bh / f) * f, math.ceil(bw / f) * f
            if (ph, pw) != (bh, bw):
                blk = np.pad(blk, ((0, ph - bh), (0, pw - bw), (0, 0)), mode="edge")
            small = blk.reshape(ph // f, f, pw // f, f, c).mean(axis=(1, 3))
            out[y0 // f : y0 // f + small.shape[0], x0 // f : x0 // f + small.shape[1]] = small
    return out, f


def _to_rgb8(dn: np.ndarray) -> np.ndarray:
    """DN block ``(h, w, C)`` to displayable uint8 RGB (grey for one channel, first three otherwise)."""
    if dn.shape[-1] >= 3:
        rgb = dn[..., :3]
    else:
        rgb = np.repeat(dn[..., :1], 3, axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _solar8(dn: np.ndarray, cycles: float = 3.0) -> np.ndarray:
    v = np.clip(dn / 255.0, 0.0, 1.0)
    return _to_rgb8(255.0 * solar_curve(v, cycles=cycles).astype(np.float32))


def _step_colour(step: float, scale: float) -> tuple[int, int, int]:
    """Green (0) -> yellow (scale / 2) -> red (>= scale)."""
    t = min(1.0, abs(step) / scale)
    if t < 0.5:
        return int(510 * t), 200, 40
    return 255, int(200 * (2 - 2 * t)), 40


def seam_heatmap(
    metrics: dict, plan: Plan, thumb_dn: np.ndarray, factor: int, *, scale: float = 1.0
) -> Image.Image:
    """Seam steps drawn over a dimmed thumbnail: one line per segment, coloured by ``|step| / scale``."""
    base = _to_rgb8(thumb_dn).astype(np.float32)
    base = (0.35 * base + 0.65 * base.mean(axis=-1, keepdims=True)) * 0.8 + 20
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    width = max(2, round(min(plan.out_window_shape) / factor / 12))
    grid = _get(metrics, "seams", "step_grid")
    segments = []
    if grid is not None:
        for r, row in enumerate(grid["x"]):
            for c, v in enumerate(row):
                if v is not None:
                    lo, hi = plan.y.keep(r)
                    segments.append(("x", plan.x.cut(c), lo, hi, v))
        for r, row in enumerate(grid["y"]):
            for c, v in enumerate(row):
                if v is not None:
                    lo, hi = plan.x.keep(c)
                    segments.append(("y", plan.y.cut(r), lo, hi, v))
    else:
        segments = [
            (s["axis"], s["pos"], *s["extent"], s["step"]) for s in _get(metrics, "seams", "worst") or []
        ]
    for axis, pos, lo, hi, v in sorted(segments, key=lambda s: abs(s[4])):
        p, a, b = pos / factor, lo / factor, max(lo / factor, (hi - 1) / factor)
        xy = [(p, a), (p, b)] if axis == "x" else [(a, p), (b, p)]
        draw.line(xy, fill=_step_colour(v, scale), width=width)
    return img


def _crop_box(cy: float, cx: float, size: int, h: int, w: int) -> tuple[int, int, int, int]:
    y0 = int(min(max(0, round(cy - size / 2)), max(0, h - size)))
    x0 = int(min(max(0, round(cx - size / 2)), max(0, w - size)))
    return y0, min(h, y0 + size), x0, min(w, x0 + size)


def _worst_corner(metrics: dict, plan: Plan) -> tuple[int, int]:
    """Output position of the tile corner with the largest summed |step| of its four segments."""
    grid = _get(metrics, "seams", "step_grid")
    rows, cols = plan.grid
    if rows < 2 or cols < 2:
        return plan.out_shape[0] // 2, plan.out_shape[1] // 2
    best, where = -1.0, (rows // 2 - 1, cols // 2 - 1)
    if grid is not None:
        gx, gy = grid["x"], grid["y"]
        for r in range(rows - 1):
            for c in range(cols - 1):
                vals = [gx[r][c], gx[r + 1][c], gy[r][c], gy[r][c + 1]]
                total = sum(abs(v) for v in vals if v is not None)
                if total > best:
                    best, where = total, (r, c)
    return plan.y.cut(where[0]), plan.x.cut(where[1])


class _Pictures:
    """Writes PNGs to ``report_files/`` or keeps them as data URIs."""

    def __init__(self, out_dir: Path, embed: bool):
        self.dir = out_dir / "report_files"
        self.embed = embed
        self.paths: dict[str, Path] = {}
        if not embed:
            self.dir.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, img: Image.Image) -> str:
        if self.embed:
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        path = self.dir / f"{name}.png"
        img.save(path, format="PNG")
        self.paths[name] = path
        return f"report_files/{name}.png"


def _pair_figure(pics: _Pictures, image, name: str, box, zoom_to: int, caption: str) -> str:
    y0, y1, x0, x1 = box
    dn = read_dn(image, y0, y1, x0, x1)
    zoom = max(1, zoom_to // max(1, max(y1 - y0, x1 - x0)))
    size = ((x1 - x0) * zoom, (y1 - y0) * zoom)
    normal = Image.fromarray(_to_rgb8(dn)).resize(size, Image.Resampling.NEAREST)
    solar = Image.fromarray(_solar8(dn)).resize(size, Image.Resampling.NEAREST)
    a, b = pics.add(f"{name}", normal), pics.add(f"{name}_solar", solar)
    cap = html.escape(caption)
    return (
        f"<figure><img src='{a}' width='{size[0]}' height='{size[1]}' alt='{name}'>"
        f"<img src='{b}' width='{size[0]}' height='{size[1]}' alt='{name} (solar)'>"
        f"<figcaption>{cap} (left: as is; right: solar curve)</figcaption></figure>"
    )


# --------------------------------------------------------------------------- the report
def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def write_report(
    metrics: dict,
    image,
    plan: Plan,
    out_dir,
    *,
    title: str = "tilegraph QA report",
    top_k: int = 4,
    crop: int = 96,
    zoom_to: int = 288,
    thumb: int = 1024,
    step_scale: float = 1.0,
    embed: bool = False,
) -> dict[str, Path]:
    """Write ``report.json`` and ``report.html`` (with pictures) for a stitched output.

    Parameters
    ----------
    metrics
        The dict from :func:`tilegraph.quality.metrics.seam_metrics` (extra keys are kept in the JSON; a
        list of strings under ``"notes"`` is shown as "Notes on this run").
    image
        The stitched output ``(H, W, C)`` (numpy, Zarr, ...); read in blocks for the thumbnail and the crops.
    plan
        The plan that produced it.
    out_dir
        Folder to write into (created).
    title
        Page title.
    top_k
        Number of worst seams shown as crops.
    crop
        Crop size in output pixels.
    zoom_to
        Crops are enlarged (nearest neighbour) to about this many screen pixels.
    thumb
        Longest side of the thumbnail under the heat map.
    step_scale
        ``|step|`` (DN) drawn fully red in the heat map.
    embed
        Put the pictures inside the page as data URIs instead of files in ``report_files/``.

    Returns
    -------
    dict
        ``{"json": path, "html": path, <picture name>: path, ...}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pics = _Pictures(out_dir, embed)
    h, w = plan.out_shape
    thumb_dn, factor = thumbnail(image, max_side=thumb)
    heat = pics.add("heatmap", seam_heatmap(metrics, plan, thumb_dn, factor, scale=step_scale))
    figures = []
    for k, s in enumerate((_get(metrics, "seams", "worst") or [])[:top_k]):
        mid = 0.5 * (s["extent"][0] + s["extent"][1])
        cy, cx = (mid, s["pos"]) if s["axis"] == "x" else (s["pos"], mid)
        kind = "vertical" if s["axis"] == "x" else "horizontal"
        cap = (
            f"#{k + 1}: {kind} seam at {s['axis']} = {s['pos']}, windows {s['windows'][0]}/{s['windows'][1]}, "
            f"step {s['step']:+.3f} DN, z {s['z']:.1f}"
        )
        figures.append(_pair_figure(pics, image, f"seam{k + 1}", _crop_box(cy, cx, crop, h, w), zoom_to, cap))
    cy, cx = _worst_corner(metrics, plan)
    corner = _pair_figure(
        pics,
        image,
        "corner",
        _crop_box(cy, cx, crop, h, w),
        zoom_to,
        f"tile corner at y = {cy}, x = {cx} (largest summed step of its four segments)",
    )
    rows = summary_rows(metrics)
    doc = {"title": title, "summary": rows, "metrics": _jsonable(metrics), "plan": plan.to_dict()}
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(_jsonable(doc), indent=1, sort_keys=False))
    worst_rows = "".join(
        f"<tr><td>{s['axis']}</td><td class='num'>{s['pos']}</td><td class='num'>{s['extent'][0]}-{s['extent'][1]}</td>"
        f"<td class='num'>{s['windows'][0]}/{s['windows'][1]}</td><td class='num'>{s['step']:+.3f}</td>"
        f"<td class='num'>{s['raw_step']:+.3f}</td><td class='num'>{s['floor']:.3f}</td>"
        f"<td class='num'>{_fmt(s['near_step'])}</td><td class='num'>{s['z']:.1f}</td>"
        f"<td class='num'>{_fmt(s['gradient_ratio'])}</td></tr>"
        for s in _get(metrics, "seams", "worst") or []
    )
    geo = metrics.get("geometry", {})
    notes = "".join(f"<li>{html.escape(str(n))}</li>" for n in metrics.get("notes") or [])
    notes_html = f"<h2>Notes on this run</h2>\n<ul class='notes'>{notes}</ul>" if notes else ""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>Output {h} &times; {w}, {plan.grid[0]} &times; {plan.grid[1]} windows, blend <b>{html.escape(plan.blend)}</b>,
seam segments measured: {_get(metrics, "seams", "count")} of {_get(metrics, "seams", "expected")}.
Units: DN = 1/255 of full scale. A seam's step is what it shows beyond its noise floor (what the content
does on parallel lines and on the lines beside the seam); the raw step includes the content.
The same numbers are in <a href="report.json">report.json</a>.</p>
<h2>Summary</h2>
{summary_html(metrics)}
{notes_html}
<h2>Seam strength</h2>
<figure><img id="heatmap" src="{heat}" alt="seam heat map" width="{thumb_dn.shape[1]}"
 height="{thumb_dn.shape[0]}" style="max-width:100%;height:auto">
<figcaption>Every seam segment coloured by its step: green 0 DN, yellow {step_scale / 2:g} DN, red &ge; {step_scale:g} DN
(thumbnail 1:{factor}).</figcaption></figure>
<h2>Worst seams</h2>
<table><tr><th>axis</th><th>pos</th><th>extent</th><th>windows</th><th>step (DN)</th><th>raw step</th>
<th>floor</th><th>near step</th><th>z</th>
<th>gradient ratio</th></tr>{worst_rows}</table>
{"".join(figures)}
<h2>Tile corner</h2>
{corner}
<p style="font-size:12px;color:#666">Profile half-width {geo.get("radius")}, step over {geo.get("m")} px per
side; colour blocks of {geo.get("colour_block")} px; step fit {html.escape(json.dumps(geo.get("step_fit")))}.</p>
</body></html>
"""
    html_path = out_dir / "report.html"
    html_path.write_text(page, encoding="utf-8")
    return {"json": json_path, "html": html_path, **pics.paths}
