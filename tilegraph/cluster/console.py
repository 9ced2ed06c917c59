"""What the embedded cluster does for a person at a console: scripts, the current folder, quiet logs.

* :func:`check_main_guard`: distributed starts worker processes with ``spawn``, which imports the
  caller's script again in each of them; a script calling :func:`tilegraph.run` at its top level
  (without ``if __name__ == "__main__":``) would start a cluster from every worker while it starts,
  and end in hundreds of lines of ``Nanny failed to start``. Refused here, before any process starts,
  with the fix.
* :class:`WorkerSetup` (a worker plugin): puts the current folder on the workers' ``sys.path`` (as
  ``python -m`` does for the command itself), so a model module beside the image imports on the
  local workers; and sends distributed's log records to a debug log instead of the console.
* :func:`divert_logs`: the same for this process (the embedded scheduler and nannies run here), undone
  when the cluster closes. A task's error reaches the user once, as tilegraph's typed error; the
  tracebacks distributed logs on the way are kept in the debug log (:func:`debug_log_path`).
"""

from __future__ import annotations

import ast
import logging
import os
import sys
import tempfile
from collections.abc import Callable

from tilegraph.errors import ClusterError

__all__ = ["check_main_guard", "WorkerSetup", "divert_logs", "debug_log_path", "GUARD_HINT"]

GUARD_HINT = (
    'put the call under `if __name__ == "__main__":` (worker processes import your script again '
    "when they start; without the guard each would start a cluster of its own)"
)


def debug_log_path() -> str:
    """Where distributed's log records of this process's embedded cluster go (``TILEGRAPH_LOG`` wins)."""
    given = os.environ.get("TILEGRAPH_LOG")
    if given:
        return given
    folder = os.path.join(tempfile.gettempdir(), "tilegraph-logs")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"dask-{os.getpid()}.log")


def _is_main_guard(test: ast.expr) -> bool:
    """``__name__ == "__main__"`` (either way round)."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    consts = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    return len(names) == 1 and len(consts) == 1


def _guarded_lines(source: str) -> list[tuple[int, int]]:
    """Line ranges of the bodies of ``if __name__ == "__main__":`` blocks in ``source``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.If) and _is_main_guard(node.test) and node.body:
            out.append((node.body[0].lineno, node.body[-1].end_lineno or node.body[-1].lineno))
    return out


def _unguarded_call_line() -> int | None:
    """The line of the caller's script that led here from its top level outside the guard, if any."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not path or not str(path).endswith(".py"):
        return None  # interactive, python -c, Jupyter: nothing is imported again
    frame = sys._getframe(1)
    line = None
    while frame is not None:
        if frame.f_globals is vars(main) and frame.f_code.co_name == "<module>":
            line = frame.f_lineno  # the outermost top-level frame of the script
        frame = frame.f_back  # type: ignore[assignment]
    if line is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            guarded = _guarded_lines(f.read())
    except (OSError, SyntaxError, ValueError):
        return None  # cannot tell: do not refuse
    return None if any(a <= line <= b for a, b in guarded) else line


def check_main_guard() -> None:
    """Refuse to start worker processes from a script's unguarded top level (see the module notes).

    Raises
    ------
    tilegraph.errors.ClusterError
        In a worker process starting up (its ``spawn`` re-imports the script), or in a script whose
        top-level code outside ``if __name__ == "__main__":`` starts the cluster.
    """
    import multiprocessing

    import dask

    method = dask.config.get("distributed.worker.multiprocessing-method", "spawn")
    if method not in ("spawn", "forkserver"):
        return
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise ClusterError(
            "tilegraph started a cluster while a worker process was importing your script", hint=GUARD_HINT
        )
    line = _unguarded_call_line()
    if line is not None:
        path = getattr(sys.modules["__main__"], "__file__", None)
        raise ClusterError(
            f"the embedded cluster was started from the top level of a script (line {line})",
            path=path,
            hint=GUARD_HINT,
        )


def _console_handlers(logger: logging.Logger) -> list[logging.Handler]:
    consoles = (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    return [
        h
        for h in logger.handlers
        if isinstance(h, logging.StreamHandler)
        and not isinstance(h, logging.FileHandler)
        and getattr(h, "stream", None) in consoles
    ]


def divert_logs(path: str) -> Callable[[], None]:
    """Send the ``distributed`` loggers of this process to ``path`` instead of the console.

    Returns the function that undoes it.
    """
    logger = logging.getLogger("distributed")
    removed = _console_handlers(logger)
    for h in removed:
        logger.removeHandler(h)
    try:
        handler: logging.Handler | None = logging.FileHandler(path, delay=True)
    except OSError:  # an unwritable log folder never stops a run
        handler = None
    if handler is not None:
        handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    propagate = logger.propagate
    logger.propagate = False

    def restore() -> None:
        if handler is not None:
            logger.removeHandler(handler)
            handler.close()
        for h in removed:
            if h not in logger.handlers:
                logger.addHandler(h)
        logger.propagate = propagate

    return restore


try:  # distributed is a dependency; the plugin base only gives the class a name the scheduler knows
    from distributed.diagnostics.plugin import WorkerPlugin as _PluginBase
except ImportError:  # pragma: no cover
    _PluginBase = object  # type: ignore[assignment,misc]


class WorkerSetup(_PluginBase):
    """Worker plugin of the embedded cluster: the current folder importable, logs to a debug file.

    Parameters
    ----------
    folder
        Put on the workers' ``sys.path`` (first), as ``python -m`` puts the current folder.
    log
        Debug log receiving distributed's records on the workers (``None``: leave logging alone).
    """

    name = "tilegraph-worker-setup"

    def __init__(self, folder: str | None, log: str | None) -> None:
        self.folder = folder
        self.log = log

    def setup(self, worker) -> None:
        if self.folder and self.folder not in sys.path:
            sys.path.insert(0, self.folder)
        if self.log:
            divert_logs(self.log)
