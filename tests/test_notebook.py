"""A notebook under ``examples/`` runs in a Jupyter kernel and shows the progress widget (issue 15)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.mark.slow
def test_example_notebook_shows_a_progress_widget(tmp_path):
    for package in ("nbclient", "nbformat", "ipykernel", "ipywidgets"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} not installed (pip install tilegraph[jupyter])")
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "examples" / "progress.ipynb", as_version=4)
    NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    widgets = [o for o in outputs if WIDGET in o.get("data", {})]
    assert widgets, [o.get("data", o.get("text")) for o in outputs]
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    models = {m["model_name"]: m["state"] for m in state.values()}
    bar, label = models["IntProgressModel"], models["LabelModel"]
    assert bar["description"] == "windows" and bar["value"] == bar["max"] == 12  # 4 x 3 windows, all done
    assert label["value"].startswith("windows 12/12") and "MP/s" in label["value"] and "ETA" in label["value"]
    assert (tmp_path / "notebook-output.zarr").exists()
    streams = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "\r[" not in streams  # no terminal bar as text in the notebook
