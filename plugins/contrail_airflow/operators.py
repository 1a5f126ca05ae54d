"""Thin Airflow operators around the steps in `contrail` (the `tasks/` folder).

Each `execute()` checks its rendered inputs, builds the step's arguments object, calls the
step and returns the step's result as XCom: artifact paths, counts and metric values, never
data. Step modules (and so TensorFlow) are imported inside `execute()`, never at parse time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from contrail import artifacts, config, storage
from contrail.errors import ContrailError, SpecError
from contrail_airflow.assets import model_asset, promotion_alias, tfrecords_asset
from contrail_airflow.report_plugin import RunReportLink

if TYPE_CHECKING:
    from airflow.sdk import Context

# Trigger-form params that are not model params.
RESERVED_PARAMS = ("max_steps", "batch_size", "force_promote", "data_source")


class _ContrailOperator(BaseOperator):
    """Shared plumbing: where this run's artifacts live, and what the trigger overrode.

    `execute` opens the task's workspace (the artifact root, or a local copy of a remote one:
    `contrail.storage`), maps the upstream results onto it, pulls what `pull_inputs` names,
    runs the step (`run_step`), pushes what it wrote and returns the result with remote paths.
    """

    template_fields: tuple[str, ...] = ("spec_path",)
    ui_color = "#e8f1fb"

    def __init__(self, *, spec_path: str, pipeline: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec_path = spec_path
        self.pipeline = pipeline

    def execute(self, context: Context) -> Any:
        with storage.Workspace(config.artifact_location(), config.scratch_dir()) as workspace:
            self.workspace = workspace
            if workspace.remote:
                for name in self.template_fields:
                    setattr(self, name, workspace.to_local(getattr(self, name)))
                # The run's own records (manifests, histories, events): what the report reads.
                self.pull(self.run_rel(context), include=("*.json", "*.jsonl"))
                self.pull_inputs(context)
            result = self.run_step(context)
            workspace.push()
            return workspace.to_remote(result)

    def pull_inputs(self, context: Context) -> None:
        """Copy what the step reads from a remote root (called for remote roots only)."""

    def run_step(self, context: Context) -> Any:
        raise NotImplementedError

    def pull(self, rel: str, include: tuple[str, ...] = ()) -> None:
        """Pull `rel`, relative to this pipeline's folder."""
        self.workspace.pull(f"{self.pipeline}/{rel}", include)

    def run_rel(self, context: Context, step: str | None = None) -> str:
        rel = f"runs/{artifacts.run_key(context['run_id'])}"
        return f"{rel}/{step}" if step else rel

    def pull_models(self, *versions: int | None) -> None:
        """Pull `models/production.json` and the given model versions; None stands for the
        version production names (if any)."""
        from contrail import serving

        self.pull("models/production.json")
        production = serving.production_version(self.paths().base)
        for version in {production if v is None else v for v in versions} - {None}:
            self.pull(f"models/{int(version)}")

    def paths(self) -> artifacts.PipelinePaths:
        return artifacts.PipelinePaths(self.workspace.root, self.pipeline)

    def step_dir(self, context: Context, step: str) -> str:
        return str(self.paths().step(artifacts.run_key(context["run_id"]), step))

    def cache_dir(self) -> str:
        """`<pipeline>/cache`; for a remote root, a folder of this worker's: its file hashes are
        keyed by local inodes, and its step pointers name local copies."""
        if not self.workspace.remote:
            return str(self.paths().base / "cache")
        key = artifacts.fingerprint({"root": self.workspace.location})[:12]
        return str(config.scratch_dir() / "contrail-cache" / key / self.pipeline)

    @staticmethod
    def overrides(context: Context) -> dict[str, Any]:
        """Trigger params that differ from the spec, split by where they apply."""
        params = dict(context["params"])
        train = {k: params[k] for k in ("max_steps", "batch_size") if k in params}
        model = {k: v for k, v in params.items() if k not in RESERVED_PARAMS}
        return {"train": train, "model": model, "force_promote": bool(params.get("force_promote", False))}

    def record(self, context: Context, step: str, result: dict, started: float) -> dict:
        """Append this execution to the run's event log, refresh the run report, then hand the
        result to XCom."""
        run_dir = self.paths().run(artifacts.run_key(context["run_id"]))
        artifacts.record_event(
            run_dir,
            {
                "step": step,
                "reused": bool(result.get("reused")),
                "seconds": round(time.time() - started, 3),
                "try_number": context["ti"].try_number,
                "run_id": context["run_id"],
            },
        )
        from contrail.report import write_report
        from contrail.spec import load_spec

        write_report(run_dir, load_spec(self.spec_path, check_build_fn=False).spec)
        return result


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

    def __init__(self, *, source: str, parts: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.parts = parts

    def args(self, context: Context):
        from contrail import preprocess

        check_conf_keys(context)
        source = resolve_source(self, context, self.source)
        self.log.info("Preprocessing %s from %s", self.pipeline, source)
        return preprocess.PreprocessArgs(
            self.spec_path, source, self.step_dir(context, preprocess.STEP), cache_dir=self.cache_dir()
        )

    def pull_inputs(self, context: Context) -> None:
        self.pull(self.run_rel(context, "preprocess"))
        if self.parts is not None:
            self.pull(self.run_rel(context, "preprocess-parts"))

    def run_step(self, context: Context) -> dict:
        import dataclasses

        from contrail import preprocess

        started = time.time()
        args = self.args(context)
        if self.parts is not None:
            parts = [p["part_dir"] for p in (self.parts or []) if p]  # none: the plan found the work done
            args = dataclasses.replace(args, parts=parts or None)
        result = preprocess.run(args)
        # The TFRecords asset's event (emitted on success) says which files this run published.
        context["outlet_events"][tfrecords_asset(self.pipeline)].extra = {
            "run_id": context["run_id"],
            "step_dir": self.workspace.to_remote(result["step_dir"]),
            "fingerprint": result["fingerprint"],
        }
        return self.record(context, preprocess.STEP, result, started)


class PreprocessPlanOperator(PreprocessOperator):
    """Fan-out, first task: the groups of input files to map `PreprocessPartOperator` over.

    XCom: a list with one `PartArgs` mapping per group; empty when the output already exists.
    """

    def __init__(self, *, parallelism: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.parallelism = parallelism

    def pull_inputs(self, context: Context) -> None:
        self.pull(self.run_rel(context, "preprocess"))

    def run_step(self, context: Context) -> list[dict]:
        from contrail import preprocess

        groups = preprocess.plan(self.args(context), self.parallelism)
        self.log.info("Fanning out over %d group(s) of files", len(groups))
        return groups


class PreprocessPartOperator(_ContrailOperator):
    """Fan-out, mapped: read, check, split, summarize and encode one group of files.

    :param group: one item of the plan's XCom (the mapped argument)

    XCom: the part's folder, its files and record counts.
    """

    template_fields = ("spec_path", "group")

    def __init__(self, *, group: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.group = group

    def pull_inputs(self, context: Context) -> None:
        part_dir = Path(_require_dict(self.group, "preprocess_plan")["part_dir"])
        self.pull(str(part_dir.relative_to(self.paths().base)))

    def run_step(self, context: Context) -> dict:
        from contrail import preprocess

        return preprocess.run_part(preprocess.PartArgs(**_require_dict(self.group, "preprocess_plan")))


class TrainOperator(_ContrailOperator):
    """Train with evaluation every `eval_every_steps`, checkpoints and early stopping.

    :param preprocess: the preprocess step's XCom (templated)

    XCom: the checkpoint folder, history path, number of evaluations and the stop reason.
    """

    template_fields = ("spec_path", "preprocess")
    operator_extra_links = (RunReportLink(),)

    def __init__(self, *, preprocess: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.preprocess = preprocess

    def pull_inputs(self, context: Context) -> None:
        from contrail.spec import load_spec

        self.pull(self.run_rel(context, "preprocess"))
        self.pull(self.run_rel(context, "train"))  # the checkpoints a retry resumes from
        if load_spec(self.spec_path, check_build_fn=False).spec.train.warm_start:
            self.pull_models(None)
        # Each checkpoint holds the tf.data iterator's position, file names included: every
        # attempt reads the TFRecords under one name, whichever copy (or worker) it runs in.
        examples = self.preprocess["step_dir"]
        name = artifacts.fingerprint(
            {"root": self.workspace.location, "pipeline": self.pipeline, "run": context["run_id"]}
        )
        alias = self.workspace.stable_alias(Path(examples), f"{self.pipeline}-train-examples-{name[:16]}")
        self.preprocess = storage.rebase(self.preprocess, examples, str(alias))

    def run_step(self, context: Context) -> dict:
        from contrail import train

        started = time.time()
        overrides = self.overrides(context)
        args = train.TrainArgs(
            spec_path=self.spec_path,
            preprocess=_require_dict(self.preprocess, "preprocess"),
            step_dir=self.step_dir(context, train.STEP),
            params=overrides["model"],
            train_overrides=overrides["train"],
            models_dir=str(self.paths().models),
            # A remote root gets every checkpoint as it is written: a retry elsewhere resumes.
            on_checkpoint=self.workspace.push if self.workspace.remote else None,
        )
        return self.record(context, train.STEP, train.run(args), started)


class SelectBestOperator(_ContrailOperator):
    """Choose the checkpoint to export from the evaluation history.

    :param train: the train step's XCom (templated)

    XCom: the chosen checkpoint, its evaluation index, step and monitored value.
    """

    template_fields = ("spec_path", "train")

    def __init__(self, *, train: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.train = train

    def pull_inputs(self, context: Context) -> None:
        self.pull(self.run_rel(context, "train"))
        self.pull(self.run_rel(context, "select_best"))

    def run_step(self, context: Context) -> dict:
        from contrail import select_best

        started = time.time()
        args = select_best.SelectBestArgs(
            self.spec_path, _require_dict(self.train, "train"), self.step_dir(context, select_best.STEP)
        )
        return self.record(context, select_best.STEP, select_best.run(args), started)


class ExportOperator(_ContrailOperator):
    """Export a versioned SavedModel with two signatures, check it, and promote it if better.

    :param preprocess: the preprocess step's XCom (templated)
    :param train: the train step's XCom (templated)
    :param best: the select_best step's XCom (templated)

    XCom: the model folder and version, the blessing decision and both models' scores.
    """

    template_fields = ("spec_path", "preprocess", "train", "best")
    operator_extra_links = (RunReportLink(),)

    def __init__(self, *, preprocess: Any, train: Any, best: Any, **kwargs: Any) -> None:
        # One export of a pipeline at a time, whatever the run: the scheduler serializes the
        # version numbering and the production read-compare-write on any artifact root (an
        # object store has no lock; fcntl still guards a POSIX root outside Airflow).
        kwargs.setdefault("max_active_tis_per_dag", 1)
        super().__init__(**kwargs)
        self.preprocess = preprocess
        self.train = train
        self.best = best

    def pull_inputs(self, context: Context) -> None:
        from contrail import serving

        for step in ("preprocess", "train", "select_best", "export"):
            self.pull(self.run_rel(context, step))
        # Every version's record (to find one this run already published), then production's
        # model and this run's.
        self.pull("models", include=("production.json", f"*/{serving.INFO_FILE}"))
        key = artifacts.run_key(context["run_id"])
        mine = [
            int(p.parent.name)
            for p in self.paths().models.glob(f"*/{serving.INFO_FILE}")
            if p.parent.name.isdigit() and artifacts.read_json(p).get("run_key") == key
        ]
        self.pull_models(None, *mine)

    def run_step(self, context: Context) -> dict:
        from contrail import export

        started = time.time()
        overrides = self.overrides(context)
        args = export.ExportArgs(
            spec_path=self.spec_path,
            preprocess=_require_dict(self.preprocess, "preprocess"),
            train=_require_dict(self.train, "train"),
            best=_require_dict(self.best, "best"),
            step_dir=self.step_dir(context, export.STEP),
            models_dir=str(self.paths().models),
            run_key=artifacts.run_key(context["run_id"]),
            dag_id=self.dag_id,
            run_id=context["run_id"],
            params=overrides["model"],
            force_promote=overrides["force_promote"],
        )
        result = export.run(args)
        if result["promoted"]:
            # Only a promotion updates the model asset. A retry of a promoting export emits it
            # again: scoring twice is harmless, a promotion nobody scores is not.
            context["outlet_events"][promotion_alias(self.pipeline)].add(
                model_asset(self.pipeline),
                extra={
                    "version": result["version"],
                    "model_dir": self.workspace.to_remote(result["model_dir"]),
                    "run_id": context["run_id"],
                },
            )
        return self.record(context, export.STEP, result, started)


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

    def __init__(self, *, source: str, export: Any = None, part: int = 0, parts: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.export = export
        self.part = part
        self.parts = parts

    def pull_inputs(self, context: Context) -> None:
        from contrail import inference

        part = inference.part_dir(Path(self.step_dir(context, inference.STEP)), self.part, self.parts)
        self.pull(str(part.relative_to(self.paths().base)))
        self.pull_models(self.model_version(context))

    def run_step(self, context: Context) -> dict:
        from contrail import inference

        started = time.time()
        if not self.source:
            raise SpecError(
                f"{self.spec_path}: field 'inference.source': expected a glob of files to score, found none"
            )
        args = inference.InferenceArgs(
            self.spec_path,
            self.source,
            str(inference.part_dir(Path(self.step_dir(context, inference.STEP)), self.part, self.parts)),
            str(self.paths().base),
            version=self.model_version(context),
            part=self.part,
            parts=self.parts,
        )
        return self.record(context, inference.STEP, inference.run(args), started)

    def model_version(self, context: Context) -> int | None:
        if isinstance(self.export, dict):
            return int(self.export["production_version"])
        events = context.get("triggering_asset_events") or {}
        versions = [int(e.extra["version"]) for evs in events.values() for e in evs if "version" in (e.extra or {})]
        return max(versions) if versions else None  # None: production now


def check_conf_keys(context: Context) -> None:
    """Airflow accepts any conf key; a misspelt override must fail loudly instead of being ignored."""
    conf = context["dag_run"].conf or {}
    # The DAG's declared params: context["params"] already has the conf keys merged in.
    allowed = sorted(context["dag"].params.keys())
    unknown = sorted(set(conf) - set(allowed))
    if unknown:
        raise SpecError(
            f"DAG {context['dag'].dag_id}: unknown conf key{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}; "
            f"expected only {', '.join(allowed)}"
        )


def resolve_source(operator: BaseOperator, context: Context, source: str) -> str:
    """The spec's source, or the `data_source` param rendered and confined to the data folder."""
    override = context["params"].get("data_source")
    if not override:
        return source
    rendered = operator.render_template(override, context)
    if "://" in rendered and not rendered.startswith("file://"):
        raise SpecError(f"param 'data_source': expected a path under {config.data_dir()}, found the URI {rendered!r}")
    path = Path(rendered.removeprefix("file://"))
    root = config.data_dir()
    resolved = (path if path.is_absolute() else root / path).resolve()
    if ".." in path.parts or not resolved.is_relative_to(root):
        raise SpecError(f"param 'data_source': expected a path under {root}, found {rendered!r}")
    return str(resolved)


def _require_dict(value: Any, name: str) -> dict:
    if not isinstance(value, dict):
        raise ContrailError(
            f"upstream {name!r} result: expected a dict from XCom, found {type(value).__name__}: {value!r}"
        )
    return value
