"""The contracts that grow: a blend mode, a pass, a sink and an output kind are one module and one registration."""

from __future__ import annotations

import numpy as np
import pytest

import tilegraph
from tilegraph.blend import BLENDERS, get_blender, register_blender
from tilegraph.errors import DestinationError, InputError
from tilegraph.passes import PASSES, register_pass
from tilegraph.sink import sink_for
from tilegraph.testing import coordinate_image, numpy_identity
from tilegraph.testing.blenders import FirstWindow, Negate


@pytest.fixture
def first_mode():
    register_blender(FirstWindow)
    yield "first"
    BLENDERS.unregister("first")


@pytest.fixture
def negate_pass():
    register_pass(Negate)
    yield "negate"
    PASSES.unregister("negate")


def _first_window_reference(plan, image: np.ndarray) -> np.ndarray:
    """What "first" must produce for an identity model: each pixel from the first window covering it."""
    out = np.zeros_like(image)
    done = np.zeros(image.shape[:2], bool)
    for w in plan.windows():
        y0, x0 = plan.y.out_start(w.row), plan.x.out_start(w.col)
        y1, x1 = (
            min(image.shape[0], y0 + plan.out_window_shape[0]),
            min(image.shape[1], x0 + plan.out_window_shape[1]),
        )
        take = ~done[y0:y1, x0:x1]
        out[y0:y1, x0:x1][take] = image[y0:y1, x0:x1][take]
        done[y0:y1, x0:x1] = True
    return out


def test_a_new_blend_mode_is_one_class_and_one_registration(tmp_path, first_mode):
    image = coordinate_image((90, 130), "uint16")
    res = tilegraph.run(
        image,
        tmp_path / "o.zarr",
        model=numpy_identity,
        tile=40,
        overlap=10,
        blend=first_mode,
        client="inprocess",
    )
    assert res.output.attrs["tilegraph"]["blend"] == {"mode": "first"}
    np.testing.assert_array_equal(np.asarray(res.output[:]), _first_window_reference(res.plan, image))


def test_a_registered_blend_mode_runs_on_worker_processes(tmp_path, first_mode):
    """The blender travels to the workers with the run's context (by reference to its module)."""
    from distributed import Client, LocalCluster

    image = coordinate_image((70, 90), "uint8")
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            res = tilegraph.run(
                image,
                tmp_path / "d.zarr",
                model=numpy_identity,
                tile=40,
                overlap=10,
                blend=first_mode,
                client=client,
            )
    np.testing.assert_array_equal(np.asarray(res.output[:]), _first_window_reference(res.plan, image))


def test_unknown_blend_mode_is_refused_before_any_work_listing_the_known_ones(tmp_path):
    with pytest.raises(InputError, match="unknown blend mode 'nope'") as info:
        tilegraph.run(
            np.zeros((20, 20, 3), np.uint8),
            tmp_path / "x.zarr",
            model=numpy_identity,
            tile=16,
            overlap=4,
            blend="nope",
            client="inprocess",
        )
    assert "'cosine'" in str(info.value) and "'crop'" in str(info.value)
    assert not (tmp_path / "x.zarr").exists()


def test_entry_point_plugins_are_found(tmp_path, monkeypatch):
    """An installed plug-in registers a blend mode through the ``tilegraph.blenders`` entry-point group."""
    dist = tmp_path / "tilegraph_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tilegraph-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[tilegraph.blenders]\nplugin-first = tilegraph.testing.blenders:FirstWindow\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(BLENDERS, "_scanned", False)
    try:
        assert "plugin-first" in BLENDERS.names()
        assert isinstance(get_blender("plugin-first"), FirstWindow)
    finally:
        BLENDERS.unregister("plugin-first")


def test_a_registry_refuses_what_does_not_fit_the_contract():
    with pytest.raises(TypeError, match="Blender subclass"):
        register_blender(Negate)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="already registered"):
        register_blender(FirstWindow, name="cosine")


def test_a_pass_runs_after_blending_box_by_box(tmp_path, negate_pass):
    image = np.random.default_rng(0).integers(0, 256, (100, 130, 3), dtype=np.uint8)
    res = tilegraph.run(
        image,
        tmp_path / "p.zarr",
        model=numpy_identity,
        tile=48,
        overlap=16,
        out_chunks=32,
        passes=[negate_pass],
        client="inprocess",
    )
    np.testing.assert_array_equal(np.asarray(res.output[:]), 255 - image)
    assert res.output.attrs["tilegraph"]["passes"] == [{"name": "negate"}]
    assert res.output.attrs["tilegraph"]["complete"] is True


def test_unknown_pass_is_refused(tmp_path):
    with pytest.raises(InputError, match="unknown pass 'sharpen'"):
        tilegraph.run(
            np.zeros((20, 20, 3), np.uint8),
            tmp_path / "x.zarr",
            model=numpy_identity,
            tile=16,
            overlap=4,
            passes=["sharpen"],
            client="inprocess",
        )


@pytest.mark.parametrize(
    ("destination", "name"),
    [
        ("out.zarr", "zarr"),
        ("out", "zarr"),
        ("a/b.zarr/", "zarr"),
        ("x.tif", "tiff"),
        ("x.BTF", "tiff"),
        ("x.png", "raster"),
        ("x.jpeg", "raster"),
    ],
)
def test_sinks_are_chosen_by_suffix(destination, name):
    assert sink_for(destination).name == name


def test_an_unknown_suffix_is_refused_listing_the_supported_ones(tmp_path):
    with pytest.raises(DestinationError, match=r"no sink writes '\.bmp' files") as info:
        tilegraph.run(
            np.zeros((20, 20, 3), np.uint8),
            tmp_path / "x.bmp",
            model=numpy_identity,
            tile=16,
            overlap=4,
            client="inprocess",
        )
    assert ".png" in str(info.value) and ".tif" in str(info.value)
    assert not (tmp_path / "x.bmp").exists()
