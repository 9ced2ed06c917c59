"""The packages keep their layers: stage packages depend only on shared modules and ``plan``.

Every ``import`` in ``tilegraph/`` (module level and inside functions) is read with :mod:`ast`:

* shared modules (``errors``, ``_cast``, ``_colour``, ``_version``, ``registry``, ``options``, ``metadata``) import nothing
  else of tilegraph;
* ``plan`` imports only shared modules;
* the stage packages (``source``, ``blend``, ``reconcile``, ``quality``, ``sink``, ``infer``,
  ``passes``) import only shared modules, ``plan`` and themselves;
* ``outputs`` (output kinds) may add ``blend``, ``sink``, ``reconcile`` and ``passes``;
* ``engine`` and ``cluster`` compose all of the above, never ``pipeline``, ``cli``, ``qa``,
  ``demo``, ``batch`` or ``testing``, which sit on top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "tilegraph"
SHARED = {"errors", "_cast", "_colour", "_version", "registry", "options", "metadata"}
STAGES = {"source", "blend", "reconcile", "quality", "sink", "infer", "passes"}
TOP = {"pipeline", "batch", "cli", "qa", "demo", "testing", "__main__", "__init__"}
ALLOWED = {
    **{name: SHARED for name in SHARED},
    "plan": SHARED,
    **{name: SHARED | {"plan"} for name in STAGES},
    "outputs": SHARED | {"plan", "blend", "sink", "reconcile", "passes"},
    "engine": SHARED | STAGES | {"plan", "outputs", "engine", "cluster"},
    "cluster": SHARED | STAGES | {"plan", "outputs", "engine", "cluster"},
}


def _package(path: Path, root: Path) -> str:
    return path.relative_to(root).parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = (
                [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                if node.module == "tilegraph"
                else [node.module]
            )
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "tilegraph" and len(parts) > 1:
                out.append((node.lineno, parts[1]))
    return out


def _violations(root: Path = ROOT) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        pkg = _package(path, root)
        if pkg in TOP:
            continue
        allowed = ALLOWED.get(pkg)
        assert allowed is not None, f"{path}: package {pkg!r} has no layer; add it to tests/test_layers.py"
        for line, target in _imports(path):
            if target != pkg and target not in allowed:
                bad.append(f"{path.relative_to(root.parent)}:{line}: {pkg} imports tilegraph.{target}")
    return bad


def test_every_import_respects_the_layers():
    assert _violations() == []


def test_the_check_catches_an_upward_import(tmp_path):
    """The checker itself fails on a stage package importing the engine (it cannot pass vacuously)."""
    fake = tmp_path / "tilegraph"
    (fake / "blend").mkdir(parents=True)
    (fake / "blend" / "bad.py").write_text("def f():\n    from tilegraph.engine.executor import Executor\n")
    assert _violations(fake) == ["tilegraph/blend/bad.py:2: blend imports tilegraph.engine"]


@pytest.mark.parametrize("module", ["tilegraph", "tilegraph.options", "tilegraph.blend", "tilegraph.plan"])
def test_light_imports(module):
    """``import tilegraph`` (and the contracts) load neither torch nor distributed."""
    import subprocess
    import sys

    code = f"import sys, {module}; print('torch' in sys.modules, 'distributed' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "False"]
