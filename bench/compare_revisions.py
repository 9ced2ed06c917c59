"""Run a benchmark script of two git revisions side by side, in one run, interleaved (base, head, base, head...).

Each revision runs its own copy of the script from a temporary worktree (``git worktree add``), in the
same interpreter and environment, one after the other and alternating, so that a busy machine slows
both alike. The figures each script prints in its own result table are extracted and set side by side
with their ratio head / base.

Usage (from the repository root)::

    python bench/compare_revisions.py --base b0f7b97 --rounds 2 -- bench_core_cpu.py --size 2048 --blends crop,cosine
    python bench/compare_revisions.py --base b0f7b97 -- bench_memory.py --sizes 4096,8192,16384

Extracted: for ``bench_core_cpu.py`` the seconds and CPU seconds of every table row (``model alone``,
``tilegraph <blend>``, ``map_overlap``) and the ratio of tilegraph to the model alone within the run;
for ``bench_null_copy.py`` the seconds and ratio to the copy of each row; for ``bench_memory.py`` the largest worker peak RSS and MP/s per image size. The worktrees are removed
at the end (only those this script created).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _worktree(rev: str, where: str) -> str:
    path = os.path.join(where, rev.replace("/", "_"))
    subprocess.run(
        ["git", "-C", ROOT, "worktree", "add", "--detach", path, rev], check=True, capture_output=True
    )
    return path


def _run(tree: str, script: str, args: list[str]) -> str:
    env = {**os.environ, "PYTHONPATH": tree}
    out = subprocess.run(
        [sys.executable, os.path.join(tree, "bench", script), *args],
        cwd=os.path.join(tree, "bench"),
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise SystemExit(
            f"{script} at {tree} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        )
    return out.stdout


_CORE_ROW = re.compile(r"^\d (.+?)\s{2,}[\d.]+\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+([\d.]+)\s+[\d.]+\s*$")
_NULL_ROW = re.compile(r"^((?:dask threaded|tilegraph) .+?)\s{2,}([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$")
_MEM_ROW = re.compile(r"^(\d+)\^2\s+\d+\s+[\d.]+\s+([\d.]+)\s+(\d+) / (\d+)")


def _figures(script: str, text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    if script.startswith("bench_core_cpu"):
        rows = {}
        for line in text.splitlines():
            m = _CORE_ROW.match(line)
            if m:
                name = re.sub(r"\s*\(.*", "", m.group(1)).strip()
                rows[name] = (float(m.group(2)), float(m.group(3)))
        alone = rows.get("model alone over tilegraph's windows", (float("nan"),))[0]
        for name, (sec, cpu) in rows.items():
            out[f"{name}: seconds"] = sec
            out[f"{name}: CPU s"] = cpu
            if name.startswith("tilegraph"):
                out[f"{name}: / model alone"] = sec / alone
    elif script.startswith("bench_null_copy"):
        for line in text.splitlines():
            m = _NULL_ROW.match(line)
            if m:
                out[f"{m.group(1)}: seconds"] = float(m.group(2))
                out[f"{m.group(1)}: x copy"] = float(m.group(4))
    elif script.startswith("bench_memory"):
        for line in text.splitlines():
            m = _MEM_ROW.match(line)
            if m:
                out[f"{m.group(1)}^2: worker peak MiB"] = float(max(int(m.group(3)), int(m.group(4))))
                out[f"{m.group(1)}^2: MP/s"] = float(m.group(2))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", required=True, help="git revision to compare against")
    p.add_argument("--head", default="HEAD")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("script")
    p.add_argument("args", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    args = [x for x in a.args if x != "--"]
    tmp = tempfile.mkdtemp(prefix="tilegraph-compare-")
    trees = {}
    try:
        for label, rev in (("base", a.base), ("head", a.head)):
            sha = subprocess.run(
                ["git", "-C", ROOT, "rev-parse", "--short", rev], check=True, capture_output=True, text=True
            ).stdout.strip()
            trees[label] = (sha, _worktree(sha, tmp))
        results: dict[str, list[dict[str, float]]] = {"base": [], "head": []}
        for r in range(a.rounds):
            for label in ("base", "head") if r % 2 == 0 else ("head", "base"):
                sha, tree = trees[label]
                print(f"round {r + 1}/{a.rounds}: {label} ({sha}) {a.script} {' '.join(args)}", flush=True)
                text = _run(tree, a.script, args)
                results[label].append(_figures(a.script, text))
                print("\n".join("    " + line for line in text.splitlines()[-14:]), flush=True)
        keys = [k for k in results["head"][0] if all(k in d for d in results["base"] + results["head"])]
        print(
            f"\n== compare_revisions: {a.script} {' '.join(args)}; base {trees['base'][0]}, head {trees['head'][0]}, "
            f"median of {a.rounds} round(s) each, interleaved"
        )
        width = max(len(k) for k in keys) if keys else 10
        print(f"{'figure'.ljust(width)}  {'base':>10}  {'head':>10}  {'head/base':>9}")
        for k in keys:
            b = statistics.median(d[k] for d in results["base"])
            h = statistics.median(d[k] for d in results["head"])
            print(f"{k.ljust(width)}  {b:10.3f}  {h:10.3f}  {h / b if b else float('nan'):9.3f}")
    finally:
        for _, tree in trees.values():
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tree], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
