"""Typed options: one normalisation of run()'s keywords, the command line and configuration files."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import tilegraph
from tilegraph.errors import InputError
from tilegraph.options import GROUP_KEYWORDS, ReconcileOptions, RunOptions, flat_fields, load_config
from tilegraph.testing import numpy_identity


def test_run_keywords_and_the_options_are_one_list():
    """Every option reachable through run() is a field of RunOptions, and the reverse."""
    params = set(inspect.signature(tilegraph.run).parameters) - {
        "source",
        "destination",
        "model",
        "client",
        "options",
        "security",  # a connection setting (like client), not a recorded option
    }
    fields_in_run = {f.flat for f in flat_fields() if f.run}
    assert params == fields_in_run | set(GROUP_KEYWORDS)
    defaults = {k: p.default for k, p in inspect.signature(tilegraph.run).parameters.items()}
    for f in flat_fields():
        if f.run and f.flat != "qa":
            assert defaults[f.flat] == f.default, f.flat


def test_cli_offers_every_option():
    from tilegraph.cli import _parser

    run_parser = _parser()._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    dests = {a.dest for a in run_parser._actions}
    assert {f.flat for f in flat_fields() if f.cli} <= dests
    python_only = {f.flat for f in flat_fields() if not f.cli}
    assert python_only <= {"storage_options", "factory_kwargs", "export_tile", "export_bigtiff"}


def test_unknown_keys_are_named():
    with pytest.raises(InputError, match="unknown reconcile_options option 'referense'"):
        RunOptions.from_kwargs(reconcile_options={"referense": "thumbnail"})
    with pytest.raises(InputError, match="unknown option 'tiles'"):
        RunOptions.from_kwargs(tiles=512)
    with pytest.raises(InputError, match="precision must be one of"):
        RunOptions.from_kwargs(precision="fp8")


def test_dicts_and_objects_give_the_same_options():
    a = RunOptions.from_kwargs(
        reconcile="gain-offset", reconcile_options={"reference": "thumbnail", "field": True}
    )
    b = RunOptions.from_kwargs(
        reconcile_options=ReconcileOptions(mode="gain-offset", reference="thumbnail", field=True)
    )
    assert a == b
    assert a.reconcile.mode == "gain-offset" and a.to_dict()["reconcile"]["field"] is True


def test_options_are_frozen():
    opts = RunOptions.from_kwargs(tile=256)
    with pytest.raises(AttributeError):
        opts.tiling.tile = 128  # type: ignore[misc]


def test_config_file_and_keywords(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('tile = 48\nblend = "crop"\n[reconcile]\nmode = "offset"\nstrength = 0.5\n')
    opts = load_config(cfg)
    assert (opts.tiling.tile, opts.blend.mode, opts.reconcile.mode, opts.reconcile.strength) == (
        48,
        "crop",
        "offset",
        0.5,
    )
    image = np.random.default_rng(0).integers(0, 256, (60, 70, 3), dtype=np.uint8)
    res = tilegraph.run(
        image, tmp_path / "o.zarr", model=numpy_identity, options=str(cfg), overlap=16, client="inprocess"
    )
    recorded = res.output.attrs["tilegraph"]["options"]
    assert recorded["tiling"]["tile"] == 48 and recorded["tiling"]["overlap"] == 16
    assert recorded["reconcile"]["mode"] == "offset"
    bad = tmp_path / "bad.toml"
    bad.write_text("[reconcile]\nstrenght = 1\n")
    with pytest.raises(InputError, match="unknown .* option 'strenght'") as info:
        load_config(bad)
    assert "bad.toml" in str(info.value)


def test_cli_runs_with_a_config_file(tmp_path, capsys):
    import json

    import zarr

    from tilegraph.cli import main

    src = str(tmp_path / "s.zarr")
    zarr.create_array(store=src, shape=(60, 80, 3), chunks=(32, 32, 3), dtype="uint8")[:] = 7
    cfg = tmp_path / "c.toml"
    cfg.write_text('tile = 32\noverlap = 8\nblend = "linear"\n')
    out = str(tmp_path / "o.zarr")
    assert (
        main(
            [
                "run",
                src,
                out,
                "--model",
                "tilegraph.testing.models:make_identity",
                "--config",
                str(cfg),
                "--blend",
                "crop",
                "--inprocess",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        json.loads(capsys.readouterr().out)["windows"] == 12
    )  # crop: cuts on multiples of the stride 24: 3 x 4
    recorded = zarr.open_array(out).attrs["tilegraph"]["options"]
    assert (
        recorded["blend"]["mode"] == "crop" and recorded["tiling"]["tile"] == 32
    )  # the flag wins over the file
