"""Passes after blending: the :class:`Pass` contract and its registry.

Built in: ``downsample2x`` (a pyramid level from the previous one; the OME-Zarr sink asks for it).
"""

from __future__ import annotations

from tilegraph.passes.abc import Box, Pass, PassContext, SourceView
from tilegraph.registry import Registry

__all__ = ["PASSES", "Box", "Pass", "PassContext", "SourceView", "get_pass", "register_pass"]


#: Passes by name (registered, and from the ``tilegraph.passes`` entry points).
PASSES: Registry[type[Pass]] = Registry(
    "pass", "tilegraph.passes", {"downsample2x": "tilegraph.passes.pyramid:Downsample2x"}, base=Pass
)

#: Register a :class:`Pass` subclass under ``name`` (default ``cls.name``); returns ``cls``.
register_pass = PASSES.add


def get_pass(name: str) -> Pass:
    """A new instance of the pass registered as ``name``."""
    return PASSES.get(name)()
