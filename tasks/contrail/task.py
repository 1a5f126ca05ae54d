"""What a task does around its step, with no Airflow import: get the step's inputs ready on the
task's workspace (`prepare`, driven by the step's declared `layout.READS`), and name a full disk
(`out_of_space_named`). The operators in `contrail_airflow` call both.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from contrail import layout
from contrail.errors import StorageError
from contrail.layout import PipelineLayout, Reads, RunLayout
from contrail.storage import Workspace, rebase


def prepare(
    workspace: Workspace,
    pipeline: PipelineLayout,
    run: RunLayout,
    reads: Reads,
    inputs: Mapping[str, Any],
    *,
    own_dir: str | None = None,
    warm_start: bool = False,
    scoring_version: int | None = None,
    alias_key: str = "",
) -> dict[str, Any]:
    """Get a task's inputs ready in `workspace`: its upstream results mapped onto it, and for a
    remote root, what `reads` declares pulled into it. Returns the inputs as the step sees them.

    `own_dir` is the task's own output folder (a path or URI under the root), `warm_start`
    whether the spec warm-starts, `scoring_version` the version batch inference scores with
    (None: production's): the facts the `reads` selectors depend on. `alias_key` tells apart
    tasks of one run that read the same inputs side by side on one worker (a search's trials):
    each gets its own stable name for them.

    A local root needs none of it: the inputs come back as they are.
    """
    if not workspace.remote:
        return dict(inputs)
    inputs = {name: workspace.to_local(value) for name, value in inputs.items()}
    workspace.pull_records(pipeline.rel(run.path))  # manifests, histories, events: what the report reads
    for step in reads.steps:
        workspace.pull(pipeline.rel(run.parts if step == "parts" else run.step(step)))
    if reads.own_dir and own_dir is not None:
        workspace.pull(pipeline.rel(Path(workspace.to_local(own_dir))))
    models = pipeline.models
    if reads.model_records:
        workspace.pull(pipeline.rel(models.path), include=(layout.PRODUCTION, f"*/{layout.MODEL_INFO}"))
    if reads.models:
        workspace.pull(pipeline.rel(models.production))
        production = models.production_version()
        wanted = {
            "production": {production},
            "warm_start": {production} if warm_start else set(),
            "run": {v for v, _ in models.versions_of_run(run.key)},
            "scoring": {production if scoring_version is None else scoring_version},
        }
        for version in set().union(*(wanted[s] for s in reads.models)) - {None}:
            workspace.pull(pipeline.rel(models.version(version).path))
    if reads.baseline_stats:
        workspace.pull(pipeline.rel(models.production))
        if (production := models.production_version()) is not None:
            workspace.pull(pipeline.rel(models.version(production).path), include=(layout.STATS,))
    for name in reads.stable_inputs:
        # Each checkpoint holds the tf.data iterator's position, file names included: every
        # attempt reads these files under one name, whichever copy (or worker) it runs in.
        folder = inputs[name]["step_dir"]
        identity = f"{workspace.location}\x1f{pipeline.pipeline}\x1f{run.key}" + (
            f"\x1f{alias_key}" if alias_key else ""
        )
        key = hashlib.sha256(identity.encode()).hexdigest()
        alias = workspace.stable_alias(Path(folder), f"{pipeline.pipeline}-{name}-{key[:16]}")
        inputs[name] = rebase(inputs[name], folder, str(alias))
    return inputs


def _out_of_space(exc: BaseException | None) -> bool:
    """Whether `exc`, or an error it was raised from, is a full disk: the OS's ENOSPC, or
    TensorFlow's ResourceExhaustedError carrying it (a checkpoint written to a full disk)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if type(exc).__name__ == "ResourceExhaustedError" and "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def out_of_space_named(folder: Path, step: str) -> Iterator[None]:
    """A full disk under `folder` while `step` runs becomes a `StorageError` that names the
    folder, the free space and the step (retryable: once space is freed, a retry resumes from
    what the step committed), instead of the OS's or TensorFlow's words."""
    try:
        yield
    except Exception as exc:  # broad: any layer may be the one that hit the full disk
        if not _out_of_space(exc):
            raise
        usage = shutil.disk_usage(folder)
        raise StorageError(
            f"{folder}: no space left on the device while the {step} step was writing ({usage.free:,} of "
            f"{usage.total:,} bytes free); free some space and run the task again: what it committed is kept, "
            "and it resumes from there",
            path=str(folder),
        ) from exc
