"""Drive a run stage by stage (for tests and debugging): prepare, infer, assemble, finish.

:func:`tilegraph.run` composes the same stage functions in one call; here each is a method, so a test
can inspect or damage what lies between them (the per-window store after inference, say)::

    stages = Stages(image, "out.zarr", model=m, tile=32, overlap=8, client="inprocess")
    run = stages.prepare()
    stages.infer()
    os.remove(run.context.tile_store.chunk_path(4))
    stages.assemble()         # raises MissingWindowError naming window 4
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["Stages"]


class Stages:
    """One run as explicit stage calls (keywords are :func:`tilegraph.run`'s; ``client`` default ``"inprocess"``)."""

    def __init__(
        self,
        source: Any,
        destination: str | os.PathLike,
        *,
        model: Any,
        client: Any = "inprocess",
        **kwargs: Any,
    ):
        from tilegraph.cluster.local import connect
        from tilegraph.options import RunOptions

        self.source = source
        self.destination = os.fspath(destination)
        self.model = model
        self.options = RunOptions.from_kwargs(**kwargs)
        self.executor = connect(client)
        self.run: Any = None
        self.inference: Any = None
        self.report: Any = None
        self.assembled: Any = None
        self.reconciliation: Any = None
        self._started = 0.0

    def prepare(self) -> Any:
        """The prepared run (:class:`tilegraph.engine.context.PreparedRun`)."""
        from tilegraph.engine.prepare import prepare
        from tilegraph.infer.spec import spec_for
        from tilegraph.source import open_source

        spec = spec_for(self.model, self.options.model)
        self.run = prepare(
            open_source(self.source, **self.options.source.reader_kwargs()),
            self.destination,
            spec=spec,
            model=self.model if spec.kind != "path" else None,
            options=self.options,
            executor=self.executor,
            progress=None,
        )
        return self.run

    def infer(self) -> Any:
        """Sync normalisation statistics (``norm_sync``), submit the model tasks (in process: they run now)
        and gather their report."""
        import time

        from tilegraph.engine.infer import gather_inference, submit_inference
        from tilegraph.engine.normsync import synchronise

        self._started = time.perf_counter()
        self.run = synchronise(self.run, self.executor, None)
        self.inference = submit_inference(self.run, self.executor)
        self.report = gather_inference(self.inference, self.executor, None)
        if self.options.reconcile.mode:
            from tilegraph.engine.reconcile import solve_corrections

            self.reconciliation = solve_corrections(self.run, self.report)
        return self.report

    def assemble(self) -> Any:
        """Run the output kind's steps (blend per chunk for an image)."""
        from tilegraph.engine.assemble import assemble

        corrections = self.reconciliation.corrections if self.reconciliation is not None else None
        self.assembled, self.report = assemble(
            self.run,
            self.executor,
            self.inference,
            corrections=corrections,
            report=self.report,
            progress=None,
        )
        return self.assembled

    def finish(self) -> Any:
        """Passes, completion marker, export, QA, clean-up; the :class:`~tilegraph.engine.result.RunResult`."""
        from tilegraph.engine.finish import finish
        from tilegraph.engine.passes import run_passes

        passed = run_passes(self.run, self.executor, None)
        try:
            return finish(
                self.run,
                self.executor,
                inference=self.report,
                assembled=self.assembled,
                reconciliation=self.reconciliation,
                passes=passed,
                started=self._started,
                progress=None,
            )
        finally:
            self.executor.close()

    def all(self) -> Any:
        """Every stage in order."""
        self.prepare()
        self.infer()
        self.assemble()
        return self.finish()
