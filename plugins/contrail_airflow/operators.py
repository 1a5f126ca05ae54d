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

from contrail import artifacts, config
from contrail.errors import ContrailError, SpecError
from contrail_airflow.assets import model_asset, promotion_alias, tfrecords_asset
from contrail_airflow.report_plugin import RunReportLink

if TYPE_CHECKING:
    from airflow.sdk import Context

# Trigger-form params that are not model params.
RESERVED_PARAMS = ("max_steps", "batch_size", "force_promote", "data_source")


class _ContrailOperator(BaseOperator):
    """Shared plumbing: where this run's artifacts live, and what the trigger overrode."""

    template_fields: tuple[str, ...] = ("spec_path",)
    ui_color = "#e8f1fb"

    def __init__(self, *, spec_path: str, pipeline: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec_path = spec_path
        self.pipeline = pipeline

    def paths(self) -> artifacts.PipelinePaths:
        return artifacts.PipelinePaths(config.artifact_root(), self.pipeline)

    def step_dir(self, context: Context, step: str) -> str:
        return str(self.paths().step(artifacts.run_key(context["run_id"]), step))

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
            self.spec_path, source, self.step_dir(context, preprocess.STEP), cache_dir=str(self.paths().base / "cache")
        )

    def execute(self, context: Context) -> dict:
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
            "step_dir": result["step_dir"],
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

    def execute(self, context: Context) -> list[dict]:
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

    def execute(self, context: Context) -> dict:
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

    def execute(self, context: Context) -> dict:
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

    def execute(self, context: Context) -> dict:
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
        super().__init__(**kwargs)
        self.preprocess = preprocess
        self.train = train
        self.best = best

    def execute(self, context: Context) -> dict:
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
                extra={"version": result["version"], "model_dir": result["model_dir"], "run_id": context["run_id"]},
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

    def execute(self, context: Context) -> dict:
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
