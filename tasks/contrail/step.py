"""The lifecycle every step shares: reuse, staging, the manifest, the cache record, the result.

::

    step = StepRun("select_best", SelectBestResult, step_dir, fp, inputs={"train": ...})
    if (done := step.reusable()) is not None:
        return done                      # committed already, with the same fingerprint
    ...                                  # the step's own logic
    with step.staged() as staging:       # an empty folder beside step_dir
        write(staging / "best.json")
        return step.commit(staging, SelectBestResult(...), outputs=["best.json"])
    # leaving the block publishes staging as step_dir with one rename, then records the cache

A step that writes in place (train: its checkpoints are published one by one as it goes)
calls `commit(step_dir, ...)` directly. The manifest is always written last: its presence is
the commit.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from contrail import artifacts, cache
from contrail.errors import ArtifactError
from contrail.results import StepResult

log = logging.getLogger(__name__)

R = TypeVar("R", bound=StepResult)


class StepRun(Generic[R]):
    """One execution of a step.

    :param name: the step's name, as its manifest records it
    :param result_type: the step's result dataclass
    :param step_dir: the folder the step commits (final, not staging)
    :param fingerprint: what the output is a function of; equal fingerprints mean equal output
    :param inputs: the input fingerprints the manifest records
    :param cache_dir: the pipeline's content cache, for steps whose output other runs may reuse
    """

    def __init__(
        self,
        name: str,
        result_type: type[R],
        step_dir: Path,
        fingerprint: str,
        inputs: Mapping[str, Any],
        *,
        cache_dir: Path | None = None,
    ) -> None:
        self.name = name
        self.result_type = result_type
        self.step_dir = Path(step_dir)
        self.fingerprint = fingerprint
        self.inputs = dict(inputs)
        self.cache_dir = cache_dir
        self.started = time.time()
        self._committed = False

    def reusable(self) -> R | None:
        """This folder's committed result for the same fingerprint, marked reused; else None."""
        stored = artifacts.reusable_result(self.step_dir, self.fingerprint)
        if stored is None:
            return None
        try:
            result = self.result_type.from_xcom(stored, source=str(self.step_dir))
        except ArtifactError:
            # Committed by an older Contrail whose result had other fields: recompute.
            log.info("%s: committed in another result format; running %s again", self.step_dir, self.name)
            return None
        log.info("%s output in %s is complete and current; reusing it", self.name, self.step_dir)
        return result.replace(reused=True)

    def cached(self) -> Path | None:
        """Another run's committed folder with the same fingerprint, whose files can be linked."""
        source = cache.lookup(self.cache_dir, self.name, self.fingerprint)
        return source if source is not None and source != self.step_dir else None

    @contextlib.contextmanager
    def staged(self) -> Iterator[Path]:
        """An empty staging folder, published as `step_dir` with one rename when the block ends
        without an error (see `artifacts.staged_dir`), then recorded in the content cache."""
        with artifacts.staged_dir(self.step_dir) as staging:
            yield staging
        if self._committed:
            cache.record(self.cache_dir, self.name, self.fingerprint, self.step_dir)

    def commit(
        self,
        directory: Path,
        result: R,
        outputs: Sequence[str] | Sequence[dict],
        records: Mapping[str, int] | None = None,
    ) -> R:
        """Write the manifest into `directory` (the staging folder, or `step_dir` for a step
        that writes in place): `outputs` are file names under it (or ready manifest entries)."""
        entries = (
            list(outputs)
            if outputs and isinstance(outputs[0], dict)
            else artifacts.describe_outputs(directory, list(outputs), records)
        )
        artifacts.write_manifest(
            directory,
            step=self.name,
            fingerprint_=self.fingerprint,
            inputs=self.inputs,
            outputs=entries,
            result=result.to_xcom(),
            started=self.started,
        )
        self._committed = True
        return result
