"""Thin Airflow operators around the steps in `contrail` (the `tasks/contrail/` folder).

Each `execute()` opens the task's workspace (the artifact root, or a local copy of a remote
one), gets its rendered inputs ready there (`contrail.task.prepare`, driven by the step's
declared `READS`), builds the step's arguments, calls the step, records the execution in the
run's event log, and returns the step's result as XCom: artifact paths, counts and metric
values, never data. An operator never changes its own attributes in `execute()`. Step modules
(and so TensorFlow) are imported inside `execute()`, never at parse time.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from contrail import artifacts, config, storage
from contrail import task as task_io
from contrail.errors import ContrailError, SpecError
from contrail.layout import READS, PipelineLayout, Reads, RunLayout
from contrail_airflow.assets import emit_once, model_asset, promotion_alias, tfrecords_alias, tfrecords_asset
from contrail_airflow.params import Overrides, check_conf_keys, overrides, resolve_source
from contrail_airflow.report_plugin import RunReportLink

if TYPE_CHECKING:
    from airflow.sdk import Context

    from contrail.results import StepResult


@dataclass(frozen=True)
class Task:
    """What one execution of a step works with."""

    context: Context
    workspace: storage.Workspace
    pipeline: PipelineLayout  # on the workspace: the root itself, or the task's local copy
    run: RunLayout
    inputs: dict[str, Any]  # the rendered template fields, mapped onto the workspace
    overrides: Overrides

    @property
    def cache_dir(self) -> str:
        return str(self.workspace.cache_dir(self.pipeline))


class _ContrailOperator(BaseOperator):
    """Shared plumbing: the workspace, the declared reads, the event log and the XCom.

    Subclasses set `reads` (what the step reads from the artifact root), implement
    `run_step(task)`, and may give `read_hints` (which folder is their own, which model they
    score with) for `task.prepare`.
    """

    template_fields: tuple[str, ...] = ("spec_path",)
    ui_color = "#e8f1fb"
    reads: ClassVar[Reads] = Reads()
    step: ClassVar[str | None] = None  # the name its executions are recorded under; None: not recorded

    def __init__(self, *, spec_path: str, pipeline: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec_path = spec_path
        self.pipeline = pipeline

    def execute(self, context: Context) -> Any:
        try:
            return self._execute(context)
        except ContrailError as exc:
            if exc.retryable:
                raise
            # A spec, data, training or export error fails the same way on every try: fail now,
            # without spending the task's retries (and delaying the alert) on it.
            raise final(exc) from exc

    def _execute(self, context: Context) -> Any:
        rendered = {name: getattr(self, name) for name in self.template_fields}
        with storage.Workspace(config.artifact_location(), config.scratch_dir()) as workspace:
            pipeline = PipelineLayout(workspace.root, self.pipeline)
            run = pipeline.run(context["run_id"])
            hints = self.read_hints(context, rendered, pipeline, run)
            inputs = task_io.prepare(workspace, pipeline, run, self.reads, rendered, **hints)
            task = Task(context, workspace, pipeline, run, inputs, overrides(context["params"]))
            started = time.time()
            with task_io.out_of_space_named(workspace.root, self.task_id):
                result = self.run_step(task)
            if self.step is not None:
                self._record(task, result, started)
            workspace.push()
        return workspace.to_remote(self._xcom(result))

    def _xcom(self, result: Any) -> Any:
        """What the task pushes to XCom: its result's JSON."""
        return [r.to_xcom() for r in result] if isinstance(result, list) else result.to_xcom()

    def read_hints(self, context: Context, rendered: dict, pipeline: PipelineLayout, run: RunLayout) -> dict:
        """Keyword arguments of `task.prepare` this task needs besides its `reads`."""
        return {}

    def run_step(self, task: Task) -> Any:
        raise NotImplementedError

    def _record(self, task: Task, result: StepResult, started: float) -> None:
        """Add this execution to the run's event log and refresh the run report."""
        from contrail.report import write_report
        from contrail.spec import load_spec

        artifacts.record_event(
            task.run.events,
            {
                "step": self.step,
                "reused": bool(result.reused),
                "seconds": round(time.time() - started, 3),
                "try_number": task.context["ti"].try_number,
                "run_id": task.context["run_id"],
            },
        )
        write_report(task.run.path, load_spec(task.inputs["spec_path"], check_build_fn=False).spec)


class PreprocessOperator(_ContrailOperator):
    """Convert the spec's data source into sharded TFRecords, schema.json and stats.json.

    :param spec_path: path of the pipeline spec (templated)
    :param source: the data glob; `{{ ds }}` and the other Airflow macros work (templated).
        A `data_source` trigger param replaces it, and must stay under the data folder.
    :param parts: with `data.parallelism` > 1, the mapped parts' XComs (templated): this task
        is then the reduce that merges them

    XCom: the TFRecord paths, record counts, schema and stats paths, and the fingerprint.
    """

    template_fields = ("spec_path", "source", "parts")
    step = "preprocess"

    def __init__(self, *, source: str | list[str], parts: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.parts = parts

    reads = READS["preprocess"]

    def args(self, task: Task):
        from contrail import preprocess

        check_conf_keys(task.context)
        override = task.overrides.data_source
        source = resolve_source(
            task.inputs["source"], self.render_template(override, task.context) if override else None
        )
        self.log.info("Preprocessing %s from %s", self.pipeline, source)
        parts = [p["step_dir"] for p in (task.inputs["parts"] or []) if p]  # none: the plan found the work done
        return preprocess.PreprocessArgs(
            task.inputs["spec_path"],
            source,
            str(task.run.preprocess.path),
            cache_dir=task.cache_dir,
            parts=parts or None,
            models_dir=str(task.pipeline.models.path),
        )

    def run_step(self, task: Task):
        from contrail import preprocess

        result = preprocess.run(self.args(task))
        # The TFRecords asset's event says which files this run published; once per run and output.
        extra = {
            "run_id": task.context["run_id"],
            "step_dir": task.workspace.to_remote(result.step_dir),
            "fingerprint": result.fingerprint,
        }
        pipeline = self.pipeline
        emit_once(task.context, tfrecords_alias(pipeline), tfrecords_asset(pipeline), extra, key=list(extra))
        return result


class PreprocessPlanOperator(PreprocessOperator):
    """Fan-out, first task: the groups of input files to map `PreprocessPartOperator` over.

    XCom: a list with one `PartArgs` mapping per group; empty when the output already exists.
    """

    step = None

    def __init__(self, *, parallelism: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.parallelism = parallelism

    reads = READS["preprocess_plan"]

    def run_step(self, task: Task):
        from contrail import preprocess

        groups = preprocess.plan(self.args(task), self.parallelism)
        self.log.info("Fanning out over %d group(s) of files", len(groups))
        return groups


class PreprocessPartOperator(_ContrailOperator):
    """Fan-out, mapped: read, check, split, summarize and encode one group of files.

    :param group: one item of the plan's XCom (the mapped argument)

    XCom: the part's folder, its files and record counts.
    """

    template_fields = ("spec_path", "group")

    reads = READS["preprocess_part"]

    def __init__(self, *, group: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.group = group

    def read_hints(self, context: Context, rendered: dict, pipeline: PipelineLayout, run: RunLayout) -> dict:
        from contrail.preprocess import PartArgs

        return {"own_dir": PartArgs.from_xcom(rendered["group"]).part_dir}

    def run_step(self, task: Task):
        from contrail import preprocess

        return preprocess.run_part(preprocess.PartArgs.from_xcom(task.inputs["group"]))


class TrainOperator(_ContrailOperator):
    """Train with evaluation every `eval_every_steps`, checkpoints and early stopping.

    :param preprocess: the preprocess step's XCom (templated)

    XCom: the checkpoint folder, history path, number of evaluations and the stop reason.
    """

    template_fields = ("spec_path", "preprocess", "trial")
    operator_extra_links = (RunReportLink(),)
    step = "train"

    def __init__(self, *, preprocess: Any, trial: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.preprocess = preprocess
        self.trial = trial  # mapped: one trial of the search's plan (contrail.tune)

    def read_hints(self, context: Context, rendered: dict, pipeline: PipelineLayout, run: RunLayout) -> dict:
        from contrail.spec import load_spec

        hints = {"warm_start": load_spec(rendered["spec_path"], check_build_fn=False).spec.train.warm_start}
        if rendered.get("trial"):  # a trial reads the examples under a name of its own, and its own folder
            name = rendered["trial"]["name"]
            hints.update(alias_key=name, own_dir=str(run.trial(name).path))
        return hints

    @property
    def reads(self) -> Reads:  # type: ignore[override]
        """A trial pulls the examples and its own folder, not every other trial's checkpoints."""
        return READS["train_trial"] if self.trial else READS["train"]

    def run_step(self, task: Task):
        from contrail import train
        from contrail.results import PreprocessResult

        trial = task.inputs.get("trial")
        train_dir = task.run.trial(trial["name"]) if trial else task.run.train
        args = train.TrainArgs(
            spec_path=task.inputs["spec_path"],
            preprocess=PreprocessResult.from_xcom(task.inputs["preprocess"], source="upstream 'preprocess' result"),
            step_dir=str(train_dir.path),
            trial={**trial, "board": str(task.run.rungs / trial["plan"])} if trial else None,
            params=task.overrides.model,
            train_overrides=task.overrides.train,
            models_dir=str(task.pipeline.models.path),
            # A remote root gets every checkpoint as it is written: a retry elsewhere resumes.
            on_checkpoint=task.workspace.push if task.workspace.remote else None,
            # The lease as every attempt sees it: the store's copy, for a remote root.
            read_lease=task.workspace.reader(task.pipeline.rel(train_dir.running)) if task.workspace.remote else None,
        )
        return train.run(args)


class SelectBestOperator(_ContrailOperator):
    """Choose the checkpoint to export from the evaluation history.

    :param train: the train step's XCom (templated)

    XCom: the chosen checkpoint, its evaluation index, step and monitored value.
    """

    template_fields = ("spec_path", "train", "plan")
    step = "select_best"

    reads = READS["select_best"]

    def __init__(self, *, train: Any, plan: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.train = train
        self.plan = plan  # a search's trials (tune_plan's XCom): then `train` is one result per trial

    def run_step(self, task: Task):
        from contrail import select_best
        from contrail.results import TrainResult

        trials = task.inputs.get("plan")
        if trials is not None:
            results = [
                TrainResult.from_xcom(r, source=f"upstream 'train' result of {t['name']}")
                for t, r in zip(trials, list(task.inputs["train"]), strict=True)
            ]
            args = select_best.SelectBestArgs(task.inputs["spec_path"], results, str(task.run.select_best.path), trials)
        else:
            args = select_best.SelectBestArgs(
                task.inputs["spec_path"],
                TrainResult.from_xcom(task.inputs["train"], source="upstream 'train' result"),
                str(task.run.select_best.path),
            )
        return select_best.run(args)


class TunePlanOperator(_ContrailOperator):
    """A search's first task: the trials to map the train task over (`tune:` in the spec), drawn
    once per run from the seeded space; the trigger form's `max_trials` caps how many.

    XCom: one mapping per trial: its index, name, model params and train settings.
    """

    step = "tune_plan"
    reads = READS["tune_plan"]

    def run_step(self, task: Task):
        from contrail import tune
        from contrail.spec import load_spec

        check_conf_keys(task.context)
        search = load_spec(task.inputs["spec_path"], check_build_fn=False).spec.tune
        if search is not None and search.algorithm == "halving" and task.workspace.remote:
            raise SpecError(
                "tune.algorithm: halving ranks trials on a rung board the trials share as they train, which "
                "needs a shared POSIX artifact root; found an object-store root. Use algorithm: random or grid",
                field="tune.algorithm",
            )
        args = tune.TunePlanArgs(task.inputs["spec_path"], str(task.run.tune_plan), task.overrides.max_trials)
        result = tune.plan(args)
        self.log.info("Fanning out over %d trial(s)", len(result.trials))
        return result

    def _xcom(self, result):
        return result.mapped()


class ExportOperator(_ContrailOperator):
    """Export a versioned SavedModel with two signatures, check it, and promote it if better.

    :param preprocess: the preprocess step's XCom (templated)
    :param train: the train step's XCom (templated)
    :param best: the select_best step's XCom (templated)

    XCom: the model folder and version, the blessing decision and both models' scores.
    """

    template_fields = ("spec_path", "preprocess", "train", "best")
    operator_extra_links = (RunReportLink(),)
    step = "export"

    reads = READS["export"]

    def __init__(self, *, preprocess: Any, train: Any, best: Any, **kwargs: Any) -> None:
        # One export of a pipeline at a time, whatever the run: the scheduler serializes the
        # version numbering and the production read-compare-write on any artifact root (an
        # object store has no lock; fcntl still guards a POSIX root outside Airflow).
        kwargs.setdefault("max_active_tis_per_dag", 1)
        super().__init__(**kwargs)
        self.preprocess = preprocess
        self.train = train
        self.best = best

    def run_step(self, task: Task):
        from contrail import export
        from contrail.results import PreprocessResult, SelectBestResult, TrainResult

        best = SelectBestResult.from_xcom(task.inputs["best"], source="upstream 'select_best' result")
        trained = task.inputs["train"]
        if not isinstance(trained, dict):  # a search's trials: the chosen one's
            trained = next(r for r in trained if Path(r["step_dir"]).name == best.trial)
        args = export.ExportArgs(
            spec_path=task.inputs["spec_path"],
            preprocess=PreprocessResult.from_xcom(task.inputs["preprocess"], source="upstream 'preprocess' result"),
            train=TrainResult.from_xcom(trained, source="upstream 'train' result"),
            best=best,
            step_dir=str(task.run.export.path),
            models_dir=str(task.pipeline.models.path),
            run_key=task.run.key,
            dag_id=self.dag_id,
            run_id=task.context["run_id"],
            params=task.overrides.model,
            force_promote=task.overrides.force_promote,
        )
        result = export.run(args)
        if result.promoted and result.production_version == result.version:
            # Only a promotion updates the model asset, once: a rerun that reused this export
            # announces nothing, a retry after a crash before the event still does.
            extra = {
                "version": result.version,
                "model_dir": task.workspace.to_remote(result.model_dir),
                "run_id": task.context["run_id"],
            }
            pipeline = self.pipeline
            emit_once(task.context, promotion_alias(pipeline), model_asset(pipeline), extra, key=["version", "run_id"])
        return result


class BatchInferenceOperator(_ContrailOperator):
    """Score Parquet or CSV files with the production model; write predictions as Parquet.

    The model is the one production held when this run's export decided, so a rerun of the
    run reproduces its predictions even after later runs promoted newer models. In the
    scoring-only DAG (no export), it is the newest version the triggering asset events carry.

    :param source: the glob of files to score (templated)
    :param export: the export step's XCom (templated); None in the scoring-only DAG
    :param part: which part of the files this instance scores (the mapped argument)
    :param parts: `inference.parallelism`: files part, part + parts, ... go to this instance

    XCom: the prediction files, the row count and the model version that made them.
    """

    template_fields = ("spec_path", "source", "export")
    step = "inference"

    reads = READS["batch_inference"]

    def __init__(
        self, *, source: str | list[str], export: Any = None, part: int = 0, parts: int = 1, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.export = export
        self.part = part
        self.parts = parts

    def read_hints(self, context: Context, rendered: dict, pipeline: PipelineLayout, run: RunLayout) -> dict:
        return {
            "own_dir": str(run.inference.part(self.part, self.parts).path),
            "scoring_version": model_version(context, rendered["export"]),
        }

    def run_step(self, task: Task):
        from contrail import inference

        if not task.inputs["source"]:
            raise SpecError(
                f"{self.spec_path}: field 'inference.source': expected a glob of files to score, found none",
                path=self.spec_path,
                field="inference.source",
            )
        args = inference.InferenceArgs(
            task.inputs["spec_path"],
            task.inputs["source"],
            str(task.run.inference.part(self.part, self.parts).path),
            str(task.pipeline.models.path),
            version=model_version(task.context, task.inputs["export"]),
            part=self.part,
            parts=self.parts,
        )
        return inference.run(args)


@functools.cache
def _final_class(cls: type[ContrailError]) -> type[ContrailError]:
    return type(cls.__name__, (cls, AirflowFailException), {"__module__": cls.__module__, "__doc__": cls.__doc__})


def final(exc: ContrailError) -> ContrailError:
    """`exc` as an error Airflow does not retry: the same Contrail type, message, path and field,
    and also an `AirflowFailException`."""
    return _final_class(type(exc))(str(exc), path=exc.path, field=exc.field)


def model_version(context: Context, export: Any) -> int | None:
    """The version to score with: the one production held after this run's export, else the
    one the newest triggering asset event names (a promotion's, or a rollback's), else None
    (production now; also after a first model that a gate kept from production)."""
    if isinstance(export, dict):
        version = export.get("production_version")
        return None if version is None else int(version)
    events = context.get("triggering_asset_events") or {}
    named = [e for evs in events.values() for e in evs if "version" in (e.extra or {})]
    newest = max(named, key=lambda e: e.timestamp, default=None)
    return None if newest is None else int(newest.extra["version"])
