"""The assemble stage: run the output kind's steps (blend per chunk for an image) on the executor.

The kind yields :class:`~tilegraph.outputs.abc.Step` values; each becomes one task per argument
tuple, submitted once the windows it names are done when inference is still running (ordering only,
no result transfer), and the step's results are sent back into the kind. While inference runs, the
wait covers the model tasks too, so their errors surface at once and the progress counts windows.

A step that names what each task makes durable (:attr:`Step.record` and :attr:`Step.ids`, e.g. an
image's output chunks) has each task record its id in the resume manifest once written, and a
resumed run skips the ids already recorded (the kind receives ``None`` as their result).
"""

from __future__ import annotations

from tilegraph.engine.context import PreparedRun
from tilegraph.engine.executor import Executor
from tilegraph.engine.infer import Inference, InferenceReport, gather_inference, summarise
from tilegraph.engine.progress import Progress
from tilegraph.engine.resume import with_records
from tilegraph.outputs.abc import Assembly, KindResult, Step

__all__ = ["assemble"]


def assemble(
    run: PreparedRun,
    executor: Executor,
    inference: Inference,
    *,
    corrections: object,
    report: InferenceReport | None,
    progress: Progress | None,
) -> tuple[KindResult, InferenceReport]:
    """Drive the kind's assembly; returns its result and the (gathered) inference report.

    ``report`` is the inference report when every model task has finished already (reconciliation
    waited for them), else ``None``: the first step then waits for them alongside its own tasks.
    """
    ctx = run.context
    job = Assembly(
        plan=run.plan,
        context=ctx,
        blender=ctx.blender,
        corrections=corrections,
        results=report.results if report is not None else (),
        inference_done=report is not None,
        thumbnail=run.thumbnails.get,
        windows=None if ctx.mask is None else sorted(ctx.mask.windows),
    )
    steps = ctx.kind.assemble(job)
    sent: list | None = None
    while True:
        try:
            step: Step = next(steps) if sent is None else steps.send(sent)
        except StopIteration as stop:
            result: KindResult = stop.value
            break
        todo = _todo(run, step)
        n = len(todo)
        shared = executor.share(step.shared)
        after = None
        if report is None and step.after is not None:
            after = [inference.handles_for(step.after[i]) for i in todo]
        args = [step.args[i] for i in todo]
        columns: list = [[shared] * n, *(list(zip(*args, strict=True)) if n and args[0] else [])]
        fn = step.fn
        if step.record and step.ids is not None and run.guard is not None:
            ids = [[step.ids[i]] for i in todo]
            fn, columns = with_records(run.guard.writer(), fn, step.record, ids, columns)
        handles = executor.map(
            fn,
            *columns,
            keys=[f"tg-{step.label}-{run.token}-{i}" for i in todo],
            after=after,
        )
        if report is None:  # wait for the model tasks too: their errors first, windows counted
            m = len(inference.handles)
            out = executor.wait(
                list(inference.handles) + list(handles),
                progress=progress,
                label=["windows"] * m + [step.label] * n,
                units=inference.units + [1] * n,
            )
            report = summarise(out[:m])
            done = out[m:]
        else:
            done = executor.wait(handles, progress=progress, label=step.label)
        sent = [None] * len(step.args)
        for i, r in zip(todo, done, strict=True):
            sent[i] = r
    if report is None:
        report = gather_inference(inference, executor, progress)
    return result, report


def _todo(run: PreparedRun, step: Step) -> list[int]:
    """Indices of the step's tasks to run: all, less those a resumed run finds recorded durable."""
    n = len(step.args)
    if not (step.record and step.ids is not None and run.guard is not None and run.guard.resumed):
        return list(range(n))
    durable = run.guard.durable(step.record)
    return [i for i in range(n) if int(step.ids[i]) not in durable]
