"""What a run's output kind allows: options refused for kinds without float maps, the sink it writes to."""

from __future__ import annotations

from tilegraph.errors import DestinationError, InputError, PlanError
from tilegraph.infer.spec import ModelSpec
from tilegraph.options import RunOptions
from tilegraph.outputs.abc import OutputKind
from tilegraph.passes import get_pass
from tilegraph.sink import Sink, sink_for
from tilegraph.sink.table_sink import TableSink

__all__ = ["blend_passes", "check_kind_options", "choose_sink", "refuse_weighted_without_overlap"]


def check_kind_options(options: RunOptions, kind: OutputKind, passes: tuple) -> None:
    """Refuse options that need float maps for a kind whose model returns labels or boxes."""
    if kind.model_output == "array":
        if options.probabilities.coarse is not None and options.tiling.tile == "auto":
            raise InputError("tile='auto' probes the model without its coarse input", hint="give tile=")
        return
    given = {
        "coarse=": options.probabilities.coarse is not None,
        "reconcile=": options.reconcile.mode is not None,
        "passes (or diff_merge=True)": bool(passes),
        "tile='auto'": options.tiling.tile == "auto",
    }
    for name, on in given.items():
        if on:
            raise InputError(
                f"{name} works on float maps; task {options.task!r} gets {kind.model_output} from the model",
                hint=f"leave {name} out for task {options.task!r}",
            )


def choose_sink(destination: str, options: RunOptions, kind: OutputKind) -> Sink:
    """The destination's sink; no destination (``None``) only for kinds without an array (detections)."""
    if not destination:
        if kind.writes_array:
            raise InputError(f"task {options.task!r} writes an image: give a destination")
        return TableSink("")
    sink = sink_for(destination, options.export)
    if not kind.writes_array and not sink.holds_tables:
        raise DestinationError(
            f"task {options.task!r} gives a table, not an image",
            path=destination,
            hint="write it to a .csv or .parquet destination, or pass None (rows in the run's result only)",
        )
    return sink


def blend_passes(options: RunOptions) -> tuple:
    """The passes the blend options ask for, in order: ``refine="seams"``, then ``lowfreq``."""
    out = []
    if options.blend.refine == "seams":
        out.append(get_pass("refine-seams"))
    if options.blend.lowfreq == "thumbnail":
        out.append(get_pass("lowfreq", split=options.blend.lowfreq_split))
    return tuple(out)


def refuse_weighted_without_overlap(plan, blender, spec: ModelSpec) -> None:
    """A weighted blend needs an overlap to blend across: without one it is ``crop`` with seams, silently."""
    from tilegraph.blend.builtin import WeightedBlender

    if not isinstance(blender, WeightedBlender):
        return
    axes = [name for name, g in (("rows", plan.y), ("columns", plan.x)) if g.count > 1 and g.overlap == 0]
    if not axes:
        return
    if spec.halo:
        overlap = f"overlap={2 * int(spec.halo)} (twice the model's declared halo {spec.halo})"
    else:
        overlap = (
            "an overlap of twice the model's receptive-field radius (`tilegraph plan IMAGE --model MODEL` "
            "measures it and proposes one)"
        )
    raise PlanError(
        f"overlap 0 along {' and '.join(axes)} with blend={blender.name!r}: there is nothing to blend across, "
        "so every window edge would be a visible seam",
        hint=f"use blend='crop' to place windows side by side, or {overlap}",
    )
