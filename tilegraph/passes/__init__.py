"""Passes after blending: the :class:`Pass` contract, its registry and the built-in passes.

Built in: ``downsample2x`` (a pyramid level from the previous one; the OME-Zarr sink asks for it),
``lowfreq`` (low frequencies from the run's thumbnail inference where windows disagree,
:mod:`tilegraph.passes.lowfreq`) and ``refine-seams`` (the model rerun on windows centred on the seams,
blended into bands along them, :mod:`tilegraph.passes.refine`); ``run(lowfreq=..., refine=...)`` ask for
the last two.
"""

from __future__ import annotations

from typing import Any

from tilegraph.passes.abc import Box, Pass, PassContext, SourceView, WindowOutputs
from tilegraph.registry import Registry

__all__ = ["PASSES", "Box", "Pass", "PassContext", "SourceView", "WindowOutputs", "get_pass", "register_pass"]


#: Passes by name (registered, and from the ``tilegraph.passes`` entry points).
PASSES: Registry[type[Pass]] = Registry(
    "pass",
    "tilegraph.passes",
    {
        "downsample2x": "tilegraph.passes.pyramid:Downsample2x",
        "lowfreq": "tilegraph.passes.lowfreq:LowFreqPass",
        "refine-seams": "tilegraph.passes.refine:RefineSeamsPass",
    },
    base=Pass,
)

#: Register a :class:`Pass` subclass under ``name`` (default ``cls.name``); returns ``cls``.
register_pass = PASSES.add


def get_pass(name: str, **options: Any) -> Pass:
    """A new instance of the pass registered as ``name`` (``options``: its keyword arguments)."""
    return PASSES.get(name)(**options)
