"""A run's hold on its destination: the claim, scratch space, staging, the resume manifest, free space.

:class:`DestinationGuard` applies the rules of issue 10 in the order that makes them hold:

1. before anything is written, the destination is checked (:func:`~tilegraph.sink.safety.check_replaceable`:
   never the source, a folder holding it or inside it; ``overwrite=True`` replaces only a previous
   tilegraph output or an empty folder) and the run takes the destination's exclusive claim
   (:func:`~tilegraph.sink.claim.acquire_claim`); a second run gets
   :class:`~tilegraph.errors.DestinationClaimedError` naming the holder;
2. once the plan is known (:meth:`DestinationGuard.begin`), a fresh run makes its own scratch folder
   inside ``scratch=`` (or the sidecar ``<destination>.tilegraph/``), stages a Zarr output under a
   temporary name beside the destination and starts the manifest; a resumed run checks that plan, model
   and options match the manifest and adopts the interrupted run's scratch and staging;
3. tasks record what is durable (:meth:`DestinationGuard.writer`);
4. on success the staged output is renamed into place (:meth:`DestinationGuard.publish`), then scratch
   and manifest are removed and the claim released (:meth:`DestinationGuard.close`); on failure
   everything is kept for ``resume=True`` and only the claim is released (:meth:`DestinationGuard.abort`).

Object stores (URLs) keep the completion marker as the rule: the output is written in place (a previous
tilegraph output removed first, under the claim) and there is no manifest, so no resume.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping

from tilegraph.errors import DestinationError, InputError
from tilegraph.options import OutputOptions
from tilegraph.plan.plan import Plan
from tilegraph.sink.claim import Claim, acquire_claim
from tilegraph.sink.manifest import IdRanges, Manifest, RecordWriter, sweep_partials
from tilegraph.sink.publish import (
    STAGING_PREFIX,
    adopt_staging,
    find_staging,
    publish,
    staging_path,
    uses_rename,
)
from tilegraph.sink.safety import (
    adopt_scratch,
    check_replaceable,
    is_scratch,
    local_path,
    make_scratch,
    remove_previous_output,
    remove_scratch,
    sidecar_path,
)

__all__ = ["DestinationGuard"]


class DestinationGuard:
    """This run's claim, scratch folder, staging output and manifest (see the module notes).

    Build it with :meth:`open`; the engine keeps it in :attr:`PreparedRun.guard
    <tilegraph.engine.context.PreparedRun>`.
    """

    def __init__(self, destination: str, *, run_id: str, source_path, output: OutputOptions, claim: Claim):
        self.destination = destination
        self.run_id = run_id
        self.source_path = source_path
        self.output = output
        self.claim = claim
        self.local = local_path(destination) is not None
        self.scratch = ""
        self.staging: str | None = None
        self.manifest: Manifest | None = None
        self.resumed = False
        self.published = False

    # ----------------------------------------------------------------- opening
    @classmethod
    def open(cls, destination: str, *, source_path, output: OutputOptions, run_id: str) -> DestinationGuard:
        """Check the destination and take its claim (before anything is written).

        Raises
        ------
        DestinationError
            The destination is refused (source overlap, exists without ``overwrite``, foreign content).
        DestinationClaimedError
            Another run holds the destination; the message names it.
        """
        has_manifest = cls._has_manifest(destination)
        replace = output.overwrite or (output.resume and has_manifest)
        check_replaceable(destination, source_path=source_path, overwrite=replace)  # fail fast
        if output.resume and local_path(destination) is None:
            raise InputError(
                "resume=True needs a destination on a file system (object stores keep no manifest)",
                path=destination,
                hint="rerun with overwrite=True",
            )
        claim = acquire_claim(
            destination, run_id=run_id, takeover=output.resume or output.overwrite, extra={"pid": os.getpid()}
        )
        try:
            guard = cls(destination, run_id=run_id, source_path=source_path, output=output, claim=claim)
            # under the claim: the check that counts, and an interrupted job nobody asked to continue
            has_manifest = cls._has_manifest(destination)
            check_replaceable(
                destination, source_path=source_path, overwrite=output.overwrite or has_manifest
            )
            if has_manifest and not (output.resume or output.overwrite):
                raise DestinationError(
                    "an interrupted run left work for this destination",
                    path=destination,
                    hint="pass resume=True to continue it, overwrite=True to start over, or run `tilegraph clean`",
                )
        except BaseException:
            claim.release()
            _tidy_sidecar(destination)
            raise
        return guard

    @property
    def will_resume(self) -> bool:
        """Whether :meth:`begin` will continue an interrupted run (``resume=True`` and a manifest)."""
        return self.output.resume and self._has_manifest(self.destination)

    @property
    def scratch_parent(self) -> str:
        """The folder in which this run's scratch folder is (or will be) made."""
        return self.output.scratch or sidecar_path(self.destination)

    @staticmethod
    def _has_manifest(destination: str) -> bool:
        return local_path(destination) is not None and Manifest.exists(destination)

    # ----------------------------------------------------------------- setting up
    def begin(
        self,
        *,
        plan: Plan,
        model: Mapping,
        options,
        exports: bool,
        n_chunks: int,
        source: Mapping | None = None,
    ) -> None:
        """Scratch, staging and manifest of this run: adopted from the interrupted run on resume, else fresh.

        The job's identity is the plan, the model (content token, weights hash) and the options plus
        the source's path, shape and dtype (``source``, recorded under ``options.input``).

        Raises
        ------
        ResumeMismatchError
            ``resume=True`` and the plan, model or options differ from the interrupted run's.
        """
        previous = Manifest.open(self.destination) if self.local else None
        identity = {**options.to_dict(), "input": dict(source or {})}
        if self.output.resume and previous is not None:
            previous.check_resumable(plan.to_dict(), model, identity)
            self._adopt(previous, exports)
            return
        if previous is not None:  # overwrite=True: the interrupted run's leftovers go (they are tilegraph's)
            self._drop_previous(previous)
        self.scratch = make_scratch(
            self.scratch_parent,
            run_id=self.run_id,
            destination=self.destination,
            source_path=self.source_path,
        )
        if not exports:
            if uses_rename(self.destination):
                self.staging = staging_path(self.destination, run_id=self.run_id)
            elif self.output.overwrite:  # object store: written in place, the previous output goes first
                remove_previous_output(self.destination, source_path=self.source_path)
        if self.local:
            self.manifest = Manifest.create(
                self.destination,
                plan=plan.to_dict(),
                model=model,
                options=identity,
                run_id=self.run_id,
                n_windows=plan.n_windows,
                n_chunks=n_chunks,
                staging=self.staging,
                scratch=self.scratch,
            )

    def _adopt(self, m: Manifest, exports: bool) -> None:
        self.resumed = True
        self.manifest = m
        m.add_run(self.run_id)
        scratch = m.get("scratch")
        if scratch and is_scratch(scratch):
            self.scratch = adopt_scratch(scratch, run_id=self.run_id, destination=self.destination)
            with contextlib.suppress(OSError):
                sweep_partials(self.scratch)
            if local_path(self.scratch) is not None:  # markers of passes the interruption cut short
                shutil.rmtree(os.path.join(self.scratch, "inflight"), ignore_errors=True)
        else:
            self.scratch = make_scratch(
                self.scratch_parent,
                run_id=self.run_id,
                destination=self.destination,
                source_path=self.source_path,
            )
            m.forget("windows")
            if exports:  # the export's Zarr lived in the lost scratch
                m.forget("chunks")
        if not exports:
            old = m.get("staging")
            if old and os.path.isdir(old):
                self.staging = adopt_staging(old, self.destination, run_id=self.run_id)
                with contextlib.suppress(OSError):
                    sweep_partials(self.staging)
            else:
                self.staging = staging_path(self.destination, run_id=self.run_id)
                m.forget("chunks")
        m.compact()
        m.update(staging=self.staging, scratch=self.scratch)

    def _drop_previous(self, m: Manifest) -> None:
        """Remove an interrupted job's scratch and staging (``overwrite=True`` under the claim)."""
        scratch = m.get("scratch")
        if scratch and is_scratch(scratch):
            remove_scratch(scratch)
        for path in find_staging(self.destination):
            if os.path.basename(path).startswith(STAGING_PREFIX):
                shutil.rmtree(path)
        m.remove()

    # ----------------------------------------------------------------- while running
    def durable(self, kind: str) -> IdRanges:
        """What a resumed run need not redo (empty for a fresh run)."""
        return self.manifest.durable(kind) if self.manifest is not None and self.resumed else IdRanges()

    def forget(self, kind: str) -> None:
        """Forget what was recorded durable of ``kind`` (its store had to be made again)."""
        if self.manifest is not None:
            self.manifest.forget(kind)

    def writer(self) -> RecordWriter | None:
        """The picklable record writer for tasks (checks the claim before each record), or ``None``."""
        if self.manifest is None:
            return None
        return self.manifest.writer(self.run_id, token=self.claim.token())

    def pass_done(self, name: str, result=None) -> None:
        """Record a finished pass (its small result) so a resume skips it."""
        if self.manifest is not None:
            self.claim.check()
            self.manifest.pass_done(name, result, run_id=self.run_id)

    def pass_result(self, name: str):
        """``(True, result)`` if pass ``name`` finished in an interrupted run, else ``(False, None)``."""
        if self.manifest is None or not self.resumed or not self.manifest.is_pass_done(name):
            return False, None
        return True, self.manifest.pass_result(name)

    # ----------------------------------------------------------------- the end
    def publish(self) -> str:
        """Rename the finished, marked staging output to the destination (claim checked first)."""
        self.claim.check()
        if self.staging is None:
            return self.destination
        path = publish(
            self.staging,
            self.destination,
            source_path=self.source_path,
            overwrite=self.output.overwrite or self.resumed,
        )
        self.published = True
        return path

    def close(self) -> None:
        """After success: remove scratch (unless kept) and the manifest, release the claim, tidy the sidecar."""
        try:
            if not self.output.keep_tile_store and self.scratch:
                with contextlib.suppress(FileNotFoundError):
                    remove_scratch(self.scratch)
            if self.manifest is not None:
                self.manifest.remove()
        finally:
            self.claim.release()
            _tidy_sidecar(self.destination)

    def abort(self) -> None:
        """After a failure: keep scratch, staging and manifest for ``resume=True``; release the claim."""
        with contextlib.suppress(Exception):
            self.claim.release()
        if self.manifest is None and self.scratch:  # nothing can resume it (object store): do not leak it
            with contextlib.suppress(Exception):
                remove_scratch(self.scratch)
        _tidy_sidecar(self.destination)


def _tidy_sidecar(destination: str) -> None:
    """Remove the destination's sidecar folder if nothing is left in it."""
    if local_path(destination) is not None:
        with contextlib.suppress(OSError):
            os.rmdir(sidecar_path(destination))
