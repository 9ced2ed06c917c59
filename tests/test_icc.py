"""ICC matrix/TRC profiles in the colour metrics: parsing, Lab against independent arithmetic, fallback."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest

from tilegraph.errors import UnsupportedSourceError
from tilegraph.plan import make_plan
from tilegraph.quality.icc import colour_converter, profile_description, rgb_to_lab_converter
from tilegraph.quality.metrics import delta_e2000, seam_metrics, srgb_to_lab

# D50-adapted colorants (columns r, g, b as rows here), as stored in real profiles
SRGB_D50 = [
    (0.4360747, 0.2225045, 0.0139322),
    (0.3850649, 0.7168786, 0.0971045),
    (0.1430804, 0.0606169, 0.7141733),
]
ADOBE_D50 = [(0.6097, 0.3111, 0.0195), (0.2053, 0.6257, 0.0609), (0.1492, 0.0632, 0.7446)]
SRGB_PARA = (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)
MID = np.array(
    [
        [0.5, 0.5, 0.5],
        [0.6, 0.4, 0.3],
        [0.3, 0.5, 0.7],
        [0.45, 0.6, 0.35],
        [0.7, 0.65, 0.5],
        [0.25, 0.3, 0.35],
    ]
)


# ----------------------------------------------------------------------------- building profiles by hand
def s15(*values: float) -> bytes:
    return struct.pack(f">{len(values)}i", *(round(v * 65536) for v in values))


def xyz_tag(x: float, y: float, z: float) -> bytes:
    return b"XYZ " + bytes(4) + s15(x, y, z)


def curv(values: list[int]) -> bytes:
    return b"curv" + bytes(4) + struct.pack(f">I{len(values)}H", len(values), *values)


def para(ftype: int, *params: float) -> bytes:
    return b"para" + bytes(4) + struct.pack(">HH", ftype, 0) + s15(*params)


def desc_v2(text: str) -> bytes:
    raw = text.encode("ascii") + b"\0"
    return b"desc" + bytes(4) + struct.pack(">I", len(raw)) + raw + bytes(12 + 67)


def mluc(text: str) -> bytes:
    raw = text.encode("utf-16-be")
    return b"mluc" + bytes(4) + struct.pack(">II2s2sII", 1, 12, b"en", b"US", len(raw), 28) + raw


def build_profile(
    colorants=SRGB_D50,
    trc: bytes | None = None,
    *,
    description: str | None = "Test RGB",
    v4: bool = False,
    space: bytes = b"RGB ",
    extra: dict[bytes, bytes] | None = None,
    drop: tuple[bytes, ...] = (),
) -> bytes:
    """A matrix/TRC ICC profile: header, tag table and tag data, written with ``struct``."""
    trc = curv([563]) if trc is None else trc  # gamma 563/256 = 2.19921875
    tags: dict[bytes, bytes] = {}
    if description is not None:
        tags[b"desc"] = mluc(description) if v4 else desc_v2(description)
    tags[b"wtpt"] = xyz_tag(0.9642, 1.0, 0.8249)
    for sig, xyz in zip((b"rXYZ", b"gXYZ", b"bXYZ"), colorants, strict=True):
        tags[sig] = xyz_tag(*xyz)
    for sig in (b"rTRC", b"gTRC", b"bTRC"):
        tags[sig] = trc
    tags.update(extra or {})
    for sig in drop:
        tags.pop(sig)
    body, table, offset = b"", b"", 128 + 4 + 12 * len(tags)
    for sig, data in tags.items():
        data += bytes(-len(data) % 4)
        table += struct.pack(">4sII", sig, offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (
        struct.pack(">I", size)
        + b"none"
        + struct.pack(">I", 0x04300000 if v4 else 0x02100000)
        + b"mntr"
        + space
        + b"XYZ "
        + bytes(12)
        + b"acsp"
        + bytes(4 * 4 + 8 + 4)
        + s15(0.9642, 1.0, 0.8249)
        + bytes(4 + 16 + 28)
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


# ----------------------------------------------------------------------------- independent arithmetic
def lab_d50(xyz: np.ndarray) -> np.ndarray:
    """CIE 1976 L*a*b* of XYZ against D50, written out from the CIE definition."""
    out = []
    for x, y, z in np.atleast_2d(xyz):
        f = []
        for t in (x / 0.9642, y / 1.0, z / 0.8249):
            f.append(t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29)
        out.append((116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])))
    return np.array(out)


def srgb_lab_d50(rgb: np.ndarray) -> np.ndarray:
    """sRGB to Lab D50: IEC 61966-2-1 curve, then the D50-adapted sRGB colorants."""
    rgb = np.atleast_2d(rgb)
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return lab_d50(lin @ np.array(SRGB_D50))


# ----------------------------------------------------------------------------- conversion
def test_none_is_the_existing_srgb_path():
    conv = rgb_to_lab_converter(None)
    assert conv.description == "sRGB (assumed)"
    np.testing.assert_array_equal(conv(MID), srgb_to_lab(MID))


def test_srgb_profile_with_parametric_curve_is_exact():
    conv = rgb_to_lab_converter(
        build_profile(SRGB_D50, para(3, *SRGB_PARA), v4=True, description="sRGB test")
    )
    assert conv.description == "sRGB test"
    rgb = np.concatenate([MID, np.eye(3), [[1.0, 1.0, 1.0], [0.02, 0.03, 0.01], [0.0, 0.0, 0.0]]])
    np.testing.assert_allclose(conv(rgb), srgb_lab_d50(rgb), atol=0.02)  # s15Fixed16 rounding
    np.testing.assert_allclose(conv(np.ones(3)), [100.0, 0.0, 0.0], atol=0.05)
    # the sRGB path's Lab is relative to D65, a profile's to D50: mid colours differ by a few ΔE00
    assert delta_e2000(conv(MID), srgb_to_lab(MID)).max() < 4.0


def test_gamma_22_profile_is_close_to_srgb_for_mid_colours():
    conv = rgb_to_lab_converter(build_profile(SRGB_D50, curv([round(2.2 * 256)])))
    de = delta_e2000(conv(MID), srgb_lab_d50(MID))
    assert de.max() < 1.0
    assert de.max() > 0.01  # a pure gamma is not the sRGB curve: the curve really is read


def test_sampled_and_identity_curves():
    gamma = 563 / 256
    table = [round(65535 * v**gamma) for v in np.linspace(0, 1, 1024)]
    by_table = rgb_to_lab_converter(build_profile(ADOBE_D50, curv(table)))
    by_gamma = rgb_to_lab_converter(build_profile(ADOBE_D50, curv([563])))
    assert delta_e2000(by_table(MID), by_gamma(MID)).max() < 0.05
    linear = rgb_to_lab_converter(build_profile(ADOBE_D50, curv([])))
    np.testing.assert_allclose(linear(MID), lab_d50(MID @ np.array(ADOBE_D50)), atol=2e-3)


@pytest.mark.parametrize(
    "ftype, params, expected",
    [
        (0, (2.0,), lambda x: x**2.0),
        (1, (2.0, 1.25, -0.25), lambda x: np.where(x >= 0.2, (1.25 * x - 0.25) ** 2.0, 0.0)),
        (2, (2.0, 1.25, -0.25, 0.1), lambda x: np.where(x >= 0.2, (1.25 * x - 0.25) ** 2.0 + 0.1, 0.1)),
        (3, SRGB_PARA, lambda x: np.where(x >= 0.04045, ((x + 0.055) / 1.055) ** 2.4, x / 12.92)),
        (
            4,
            (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045, 0.05, 0.01),
            lambda x: np.where(x >= 0.04045, ((x + 0.055) / 1.055) ** 2.4 + 0.05, x / 12.92 + 0.01),
        ),
    ],
)
def test_parametric_curve_types(ftype, params, expected):
    conv = rgb_to_lab_converter(build_profile(ADOBE_D50, para(ftype, *params)))
    x = np.linspace(0, 1, 41)
    rgb = np.stack([x, np.zeros_like(x), np.zeros_like(x)], -1)
    np.testing.assert_allclose(conv.linearize(rgb)[:, 0], expected(x), atol=2e-4)


def test_adobe_rgb_green_is_wider_than_srgb_green():
    conv = rgb_to_lab_converter(build_profile(ADOBE_D50, curv([563]), description="Adobe RGB (1998)"))
    green = conv(np.array([0.0, 1.0, 0.0]))
    expected = lab_d50(np.array(ADOBE_D50[1]))[0]  # the green colorant itself, straight from the CIE formula
    np.testing.assert_allclose(green, expected, atol=0.01)  # s15Fixed16 rounding
    np.testing.assert_allclose(green, [83.216, -129.085, 87.160], atol=0.01)
    assert green[1] < srgb_lab_d50(np.array([0.0, 1.0, 0.0]))[0, 1] - 30
    assert green[1] < srgb_to_lab(np.array([0.0, 1.0, 0.0]))[1] - 30
    np.testing.assert_allclose(conv(np.ones(3)), [100.0, 0.0, 0.0], atol=0.02)
    # mid grey through gamma 563/256
    y = 0.5 ** (563 / 256)
    np.testing.assert_allclose(
        conv(np.full(3, 0.5))[0], lab_d50(np.array([0.9642 * y, y, 0.8249 * y]))[0, 0], atol=1e-3
    )


def test_descriptions_v2_and_v4():
    assert profile_description(build_profile(description="Adobe RGB (1998)")) == "Adobe RGB (1998)"
    assert profile_description(build_profile(description="Display P3 ü", v4=True)) == "Display P3 ü"
    assert profile_description(build_profile(description=None)) is None
    assert rgb_to_lab_converter(build_profile(description=None)).description == "ICC profile"


@pytest.mark.parametrize(
    "profile, reason",
    [
        (b"not an icc profile at all" * 10, "damaged"),
        (build_profile()[:200], "truncated"),
        (build_profile(space=b"CMYK"), "not RGB"),
        (build_profile(space=b"GRAY", drop=(b"rXYZ", b"gXYZ", b"bXYZ", b"gTRC", b"bTRC")), "not RGB"),
        (build_profile(extra={b"A2B0": b"mft2" + bytes(60)}, drop=(b"rXYZ", b"gXYZ", b"bXYZ")), "LUT-based"),
        (build_profile(trc=b"xxxx" + bytes(12)), "tone curve"),
        (build_profile(trc=para(7, 1.0)), "parametric"),
    ],
)
def test_unsupported_profiles_raise_and_fall_back(profile, reason):
    with pytest.raises(UnsupportedSourceError, match=reason):
        rgb_to_lab_converter(profile)
    conv = colour_converter(profile)
    assert conv.description.startswith("sRGB (profile not supported: ") and reason in conv.description
    np.testing.assert_array_equal(conv(MID), srgb_to_lab(MID))


# ----------------------------------------------------------------------------- Little CMS as a cross-check
def test_littlecms_srgb_profile_matches():
    ImageCms = pytest.importorskip("PIL.ImageCms")
    raw = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    conv = rgb_to_lab_converter(raw)
    assert "sRGB" in conv.description
    np.testing.assert_allclose(conv(MID), srgb_lab_d50(MID), atol=0.05)  # lcms derives its own colorants


def test_littlecms_reads_our_adobe_profile_the_same_way():
    ImageCms = pytest.importorskip("PIL.ImageCms")
    from PIL import Image

    raw = build_profile(ADOBE_D50, curv([563]), description="Adobe RGB (1998)")
    ours = rgb_to_lab_converter(raw)
    src = ImageCms.ImageCmsProfile(io.BytesIO(raw))
    lab = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB", 5000))
    rgb8 = np.array([[[0, 255, 0], [128, 128, 128], [200, 90, 40], [60, 120, 220]]], dtype=np.uint8)
    xf = ImageCms.buildTransform(
        src, lab, "RGB", "LAB", renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC
    )
    out = np.asarray(ImageCms.applyTransform(Image.fromarray(rgb8, "RGB"), xf))[0]
    lcms = np.concatenate([out[:, :1].astype(float) * 100 / 255, out[:, 1:].view(np.int8).astype(float)], -1)
    expected = ours(rgb8[0] / 255.0)
    expected[:, 1:] = np.clip(expected[:, 1:], -128, 127)  # 8-bit Lab clips Adobe green's a* = -129
    np.testing.assert_allclose(lcms, expected, atol=1.5)


# ----------------------------------------------------------------------------- in the seam metrics
@pytest.fixture(scope="module")
def stitched():
    plan = make_plan((112, 112), tile=64, overlap=16, channels=3, dtype="float32", blend="crop", origin=0)
    h, w = plan.out_shape
    y = (np.arange(h)[:, None] + 0.5) / h
    x = (np.arange(w)[None, :] + 0.5) / w
    ref = np.stack([0.2 + 0.6 * x + 0 * y, 0.7 - 0.3 * y + 0 * x, 0.4 + 0.2 * x * y], -1).astype(np.float32)
    image = ref.copy()
    image[:, w // 2 :, 1] += 0.03  # the right-hand tiles drift in green
    return plan, image, ref


def test_seam_metrics_records_the_colour_space(stitched):
    plan, image, ref = stitched
    plain = seam_metrics(image, plan, reference=ref)
    assert plain["units"]["colour_space"] == "sRGB (assumed)"
    assert plain["units"]["values"] == "DN (1/255 of full scale)"

    srgb_icc = build_profile(SRGB_D50, para(3, *SRGB_PARA), description="sRGB built as ICC", v4=True)
    m_srgb = seam_metrics(image, plan, reference=ref, icc_profile=srgb_icc)
    assert m_srgb["units"]["colour_space"] == "sRGB built as ICC"
    assert m_srgb["colour"]["mean"] == pytest.approx(plain["colour"]["mean"], rel=0.15)

    adobe = build_profile(ADOBE_D50, curv([563]), description="Adobe RGB (1998)")
    m_adobe = seam_metrics(image, plan, reference=ref, icc_profile=adobe)
    assert m_adobe["units"]["colour_space"] == "Adobe RGB (1998)"
    assert m_adobe["colour"]["mean"] != pytest.approx(m_srgb["colour"]["mean"], rel=0.05)
    # the other metrics do not depend on the colour space
    assert m_adobe["seams"] == plain["seams"]

    bad = seam_metrics(image, plan, reference=ref, icc_profile=b"\x00" * 300)
    assert bad["units"]["colour_space"].startswith("sRGB (profile not supported: damaged ICC profile")
    assert bad["colour"] == plain["colour"]


def test_seam_metrics_one_channel_ignores_an_rgb_profile(stitched):
    plan, image, ref = stitched
    m = seam_metrics(image[..., 1], plan, reference=ref[..., 1:2], icc_profile=build_profile())
    assert m["units"]["colour_space"].startswith("sRGB (profile not supported: an RGB profile cannot")
    assert m["colour"] is not None
