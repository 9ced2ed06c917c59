"""tilegraph: seam-free tiled inference on images larger than RAM, on a Dask cluster of GPUs.

``import tilegraph`` imports neither torch nor distributed; they load when a run starts.
"""

from tilegraph import errors
from tilegraph._version import __version__
from tilegraph.plan import Plan, make_plan
from tilegraph.source import open_source

__all__ = ["Plan", "errors", "make_plan", "open_source", "run", "__version__"]


def __getattr__(name):
    if name == "run":
        from tilegraph.pipeline import run

        return run
    raise AttributeError(f"module 'tilegraph' has no attribute {name!r}")
