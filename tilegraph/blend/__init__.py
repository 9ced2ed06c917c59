"""Blend: the :class:`Blender` contract, its registry and the built-in modes (pure numpy).

Adding a blend mode is one class and one registration line::

    from tilegraph.blend import Blender, register_blender

    class Nearest(Blender):
        name = "nearest"
        def blend(self, plan, box, read, *, transform=None, strips=None): ...

    register_blender(Nearest)          # or an entry point in the "tilegraph.blenders" group
"""

from __future__ import annotations

from tilegraph.blend.abc import Blender, Box, Strip, WindowReader, WindowTransform, overlap_strips
from tilegraph.blend.merge import blend_box, crop_box, window_region
from tilegraph.blend.windows import axis_weights, ramp
from tilegraph.options import BlendOptions
from tilegraph.registry import Registry

__all__ = [
    "BLENDERS",
    "Blender",
    "Box",
    "Strip",
    "WindowReader",
    "WindowTransform",
    "axis_weights",
    "blend_box",
    "crop_box",
    "get_blender",
    "overlap_strips",
    "ramp",
    "register_blender",
    "window_region",
]


#: Blend modes by name (built-in, registered, and from the ``tilegraph.blenders`` entry points).
BLENDERS: Registry[type[Blender]] = Registry(
    "blend mode",
    "tilegraph.blenders",
    {
        "crop": "tilegraph.blend.builtin:CropBlender",
        "linear": "tilegraph.blend.builtin:LinearBlender",
        "cosine": "tilegraph.blend.builtin:CosineBlender",
        "gaussian": "tilegraph.blend.builtin:GaussianBlender",
    },
    base=Blender,
)

#: Register a :class:`Blender` subclass under ``name`` (default ``cls.name``); returns ``cls``.
register_blender = BLENDERS.add


def get_blender(options: BlendOptions | str) -> Blender:
    """The blender of ``options`` (or of a mode name), built with those options.

    Raises
    ------
    tilegraph.errors.InputError
        Unknown mode; the message lists the registered ones.
    """
    opts = BlendOptions(mode=options) if isinstance(options, str) else options
    return BLENDERS.get(opts.mode)(opts)
