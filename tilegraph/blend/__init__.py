"""Blend: weights and the per-output-box merge (pure numpy)."""

from tilegraph.blend.merge import blend_box, crop_box, to_output_dtype, window_region
from tilegraph.blend.windows import axis_weights, ramp

__all__ = ["axis_weights", "blend_box", "crop_box", "ramp", "to_output_dtype", "window_region"]
