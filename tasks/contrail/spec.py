"""The pipeline spec: a typed schema for `dags/pipelines/<name>.yaml`.

`load_spec(path)` parses and validates one spec. Every problem becomes a `SpecError` whose
message names the file, the line, the field path, what was expected and what was found. This
module imports neither Airflow nor TensorFlow: the DAG factory and `contrail lint` both use it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from contrail.errors import SpecError, translate

_NAME_RE = r"^[A-Za-z][A-Za-z0-9_\-]{0,99}$"
_BUILD_FN_RE = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"
# A feature's name is a SavedModel signature's input name, and TF keeps only these unchanged: it
# renames `a.b` or `a-b` to `a_b` and refuses a space, `<` or a non-ASCII letter at export.
_FEATURE_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]{0,99}$"

# Metrics each task reports, in training (`loss`) and in evaluation (`val_loss`).
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("loss", "accuracy", "auc"),
    "multiclass": ("loss", "accuracy"),
    "regression": ("loss", "mae", "rmse"),
}
_LOWER_IS_BETTER = {"loss", "mae", "rmse"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# The encodings each feature type takes (the first is the default: today's behaviour).
ENCODINGS: dict[str, tuple[str, ...]] = {
    "string": ("one_hot", "embedding", "hashed", "auto", "text"),
    "int": ("normalized", "category", "embedding", "hashed", "discretized", "log", "none"),
    "float": ("normalized", "discretized", "log", "none"),
    "float_list": ("normalized", "none"),
    # Variable-length lists of categories (tags, say): multi-hot over the vocabulary of their
    # items, or an embedding bag (the mean of the items' embeddings).
    "int_list": ("multi_hot", "embedding"),
    "string_list": ("multi_hot", "embedding"),
}
LIST_TYPES = ("float_list", "int_list", "string_list")
# `auto` for a string: one-hot up to this many vocabulary values, an embedding beyond.
AUTO_ONE_HOT_MAX = 50


class EncodingSpec(_Strict):
    """How a feature reaches build_fn. Written in the spec as a name (`one_hot`, `category`,
    `log`, ...) or as one key with its settings: `{embedding: {dim: 8}}`, `{hashed: {bins: 64}}`
    (with `dim`: an embedding of the bins), `{discretized: {bins: 10}}`."""

    kind: Literal[
        "one_hot",
        "embedding",
        "hashed",
        "auto",
        "text",
        "normalized",
        "category",
        "discretized",
        "log",
        "none",
        "multi_hot",
    ]
    dim: int | None = Field(default=None, gt=0)
    bins: int | None = Field(default=None, ge=2)
    # text: TextVectorization in the graph, its vocabulary the train split's most frequent tokens.
    max_tokens: int | None = Field(default=None, ge=1)
    ngrams: int | None = Field(default=None, ge=1, le=3)
    output: Literal["multi_hot", "tf_idf", "int"] | None = None
    sequence_length: int | None = Field(default=None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _short_forms(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"kind": value}
        if isinstance(value, dict) and len(value) == 1 and "kind" not in value:
            ((kind, settings),) = value.items()
            if settings is not None and not isinstance(settings, dict):
                raise ValueError(
                    f"expected {{{kind}: {{setting: value}}}}, such as {{embedding: {{dim: 8}}}}, found {value!r}"
                )
            return {"kind": kind, **(settings or {})}
        return value

    @model_validator(mode="after")
    def _settings_fit(self) -> EncodingSpec:
        if self.kind == "embedding" and self.dim is None:
            raise ValueError("expected {embedding: {dim: N}} with N > 0, found no dim")
        if self.kind in ("hashed", "discretized") and self.bins is None:
            raise ValueError(f"expected {{{self.kind}: {{bins: N}}}} with N >= 2, found no bins")
        if self.dim is not None and self.kind not in ("embedding", "hashed"):
            raise ValueError(f"expected dim only with embedding or hashed, found it with {self.kind}")
        if self.bins is not None and self.kind not in ("hashed", "discretized"):
            raise ValueError(f"expected bins only with hashed or discretized, found it with {self.kind}")
        text_only = [f for f in ("max_tokens", "ngrams", "output", "sequence_length") if getattr(self, f) is not None]
        if text_only and self.kind != "text":
            raise ValueError(f"expected {', '.join(text_only)} only with text, found it with {self.kind}")
        if self.sequence_length is not None and self.output != "int":
            raise ValueError("expected sequence_length only with output: int, found it with another output")
        return self

    def to_schema(self) -> dict:
        out = self.model_dump(exclude_none=True)
        if self.kind == "text":  # the defaults, spelled out for the model
            out = {"max_tokens": 20_000, "ngrams": 1, "output": "multi_hot", **out}
            if out["output"] == "int":
                out.setdefault("sequence_length", 64)
        return out


class FeatureSpec(_Strict):
    """One input column. `float` and `int` are normalized and `string` one-hot encoded over a
    vocabulary unless `encoding` says otherwise."""

    type: Literal["float", "int", "string", "float_list", "int_list", "string_list"]
    nullable: bool = False
    max_vocab_size: int = Field(default=10_000, gt=0)
    encoding: EncodingSpec | None = None
    # float_list: a vector of this many floats per row (an embedding computed elsewhere, say).
    # int_list and string_list have a length of their own per row.
    length: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _length_with_lists(self) -> FeatureSpec:
        if self.type == "float_list" and self.length is None:
            raise ValueError("expected a length for a float_list feature, found none")
        if self.type != "float_list" and self.length is not None:
            raise ValueError(f"expected length only with float_list, found it with {self.type}")
        return self

    @model_validator(mode="after")
    def _encoding_fits_the_type(self) -> FeatureSpec:
        if self.encoding is not None and self.encoding.kind not in ENCODINGS[self.type]:
            raise ValueError(
                f"encoding: expected one of {', '.join(ENCODINGS[self.type])} for a {self.type} feature, "
                f"found {self.encoding.kind!r}"
            )
        return self

    @property
    def kind(self) -> str:
        """The encoding's kind, the type's default when the spec names none."""
        return self.encoding.kind if self.encoding is not None else ENCODINGS[self.type][0]

    @property
    def categorical(self) -> bool:
        """Whether preprocess keeps a vocabulary of the values (strings, and ints as categories)."""
        return self.type in ("string", "int_list", "string_list") or self.kind in ("category", "embedding")


class CrossSpec(_Strict):
    """A feature cross: two or more string or int features hashed together into `bins`,
    one-hot encoded, or embedded with `dim`. build_fn receives it as `<a>_x_<b>[_x_<c>...]`."""

    features: list[str] = Field(min_length=2)
    bins: int = Field(ge=2)
    dim: int | None = Field(default=None, gt=0)

    @property
    def name(self) -> str:
        return "_x_".join(self.features)


class LabelSpec(_Strict):
    column: str
    task: Literal["binary", "multiclass", "regression"]


class SplitSpec(_Strict):
    eval_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    seed: int = 0


Source = Annotated[str, Field(min_length=1)]


class DriftSpec(_Strict):
    """How far this run's train data (drift, at preprocess) or the data scored (skew, at batch
    inference) may move from the production model's training data, per feature: L-infinity
    distance for strings, Jensen-Shannon divergence for numbers (contrail.drift)."""

    threshold: float = Field(default=0.1, gt=0.0, le=1.0)
    per_feature: dict[str, Annotated[float, Field(gt=0.0, le=1.0)]] = {}
    on_violation: Literal["warn", "fail"] = "warn"


class DataSpec(_Strict):
    # A glob, or a list of globs read as one (a window of partitions: each may use macros).
    source: Source | Annotated[list[Source], Field(min_length=1)]
    format: Literal["parquet", "csv"] = "parquet"
    key: str | None = None
    label: LabelSpec
    features: dict[str, FeatureSpec] = Field(min_length=1)
    split: SplitSpec = SplitSpec()
    shard_rows: int = Field(default=200_000, gt=0)
    compression: Literal["gzip", "none"] = "gzip"
    # Share of eval values outside the train vocabulary that is still accepted, per feature.
    max_oov_fraction: float = Field(default=0.05, ge=0.0, le=1.0)
    # > 1: preprocess maps over this many groups of input files (Airflow dynamic task mapping),
    # then a reduce merges their statistics and writes the shards: the same bytes as one task.
    parallelism: int = Field(default=1, ge=1, le=64)
    # Checked against the production model's training statistics; unset: measured, not checked.
    drift: DriftSpec | None = None
    crosses: list[CrossSpec] = []

    @field_validator("features")
    @classmethod
    def _names_can_be_signature_inputs(cls, features: dict[str, FeatureSpec]) -> dict[str, FeatureSpec]:
        bad = [name for name in features if not re.match(_FEATURE_NAME_RE, name)]
        if bad:
            raise ValueError(
                "expected feature names of letters, digits and '_' that do not start with a digit "
                f"(each becomes a SavedModel signature input), found {', '.join(map(repr, bad))}"
            )
        return features

    @model_validator(mode="after")
    def _columns_are_distinct(self) -> DataSpec:
        if self.label.column in self.features:
            raise ValueError(f"label column {self.label.column!r} must not also be a feature")
        if self.key is not None and (self.key in self.features or self.key == self.label.column):
            raise ValueError(f"key column {self.key!r} must not also be a feature or the label")
        lists = [n for n, f in self.features.items() if f.type in LIST_TYPES]
        if lists and self.format == "csv":
            raise ValueError(f"expected Parquet for list features ({', '.join(lists)}), found format csv")
        unknown = sorted(set(self.drift.per_feature) - set(self.features)) if self.drift else []
        if unknown:
            raise ValueError(f"drift.per_feature: expected features of data.features, found {', '.join(unknown)}")
        return self

    @field_validator("crosses")
    @classmethod
    def _crosses_over_categories(cls, crosses: list[CrossSpec], info: ValidationInfo) -> list[CrossSpec]:
        features = info.data.get("features") or {}
        names = [c.name for c in crosses]
        for cross in crosses:
            for name in cross.features:
                feature = features.get(name)
                if feature is None or feature.type not in ("string", "int"):
                    found = "no such feature" if feature is None else f"a {feature.type} feature"
                    raise ValueError(f"expected string or int features of data.features, found {name!r} ({found})")
            if cross.name in features:
                raise ValueError(f"expected a cross whose name is not a feature's, found {cross.name!r}")
            if names.count(cross.name) > 1:
                raise ValueError(f"expected each cross once, found {cross.name!r} twice")
        return crosses


class ParamBounds(_Strict):
    """Bounds of a numeric model param (each item's, for a list), as the trigger form's JSON schema states them."""

    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None

    def json_schema(self) -> dict[str, float]:
        keys = {
            "minimum": "minimum",
            "maximum": "maximum",
            "exclusive_minimum": "exclusiveMinimum",
            "exclusive_maximum": "exclusiveMaximum",
        }
        return {keys[k]: v for k, v in self.model_dump().items() if v is not None}

    def admits(self, value: float) -> bool:
        return not (
            (self.minimum is not None and value < self.minimum)
            or (self.maximum is not None and value > self.maximum)
            or (self.exclusive_minimum is not None and value <= self.exclusive_minimum)
            or (self.exclusive_maximum is not None and value >= self.exclusive_maximum)
        )


class ModelSpec(_Strict):
    build_fn: str = Field(pattern=_BUILD_FN_RE)
    params: dict[str, Any] = {}
    # The trigger form's bounds per numeric param; a param without bounds is checked for its type only.
    param_bounds: dict[str, ParamBounds] = {}

    @model_validator(mode="after")
    def _bounds_name_numeric_params(self) -> ModelSpec:
        for name, bounds in self.param_bounds.items():
            if name not in self.params:
                raise ValueError(
                    f"param_bounds.{name}: expected the name of a model param ({', '.join(self.params) or 'none'}), "
                    f"found {name!r}"
                )
            values = self.params[name] if isinstance(self.params[name], list) else [self.params[name]]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise ValueError(f"param_bounds.{name}: expected a numeric param, found {self.params[name]!r}")
            for value in values:
                if not bounds.admits(value):
                    raise ValueError(
                        f"param_bounds.{name}: expected bounds that admit the default {value!r}, found "
                        f"{bounds.json_schema()}"
                    )
        return self

    @field_validator("params")
    @classmethod
    def _params_are_plain(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, item in value.items():
            if not isinstance(item, (bool, int, float, str, list)) or (
                isinstance(item, list) and not all(isinstance(x, (bool, int, float, str)) for x in item)
            ):
                raise ValueError(f"param {key!r} must be a scalar or a list of scalars, found {item!r}")
        if "learning_rate" in value and not isinstance(value["learning_rate"], (int, float)):
            raise ValueError(f"param 'learning_rate' must be a number, found {value['learning_rate']!r}")
        return value

    @property
    def module(self) -> str:
        return self.build_fn.split(":", 1)[0]

    @property
    def function(self) -> str:
        return self.build_fn.split(":", 1)[1]


class EarlyStoppingSpec(_Strict):
    """Keras `EarlyStopping` vocabulary; `patience` counts evaluations, not steps."""

    monitor: str = "val_loss"
    mode: Literal["min", "max", "auto"] = "auto"
    patience: int = Field(default=5, ge=0)
    min_delta: float = Field(default=0.0, ge=0.0)
    baseline: float | None = None
    restore_best_weights: bool = True


class TrainSpec(_Strict):
    batch_size: int = Field(default=64, gt=0)
    max_steps: int = Field(default=1000, gt=0)
    eval_every_steps: int = Field(default=100, gt=0)
    early_stopping: EarlyStoppingSpec | None = EarlyStoppingSpec()
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    seed: int = 42
    deterministic: bool = False
    keep_checkpoints: int = Field(default=3, ge=1)
    shuffle_buffer: int = Field(default=10_000, gt=0)
    strategy: Literal["default", "mirrored", "multi_worker_mirrored"] = "default"
    # Start from the production model's weights when the architecture matches.
    warm_start: bool = False
    # Weight each training example by its class: `balanced` (n / (classes × n_class), from the
    # train split's class counts in stats.json) or {class: weight}; classes not named weigh 1.
    class_weight: Literal["balanced"] | dict[str, Annotated[float, Field(gt=0.0)]] | None = None

    @field_validator("class_weight", mode="before")
    @classmethod
    def _class_names_as_text(cls, value: Any) -> Any:
        """YAML reads `{0: 1.0, 1: 5.0}` with int keys: classes are named by their text."""
        return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value


class GateSpec(_Strict):
    """An absolute bound on an evaluation metric of the candidate."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _a_bound(self) -> GateSpec:
        if self.min is None and self.max is None:
            raise ValueError("expected min, max or both, found neither")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"expected min <= max, found min={self.min} > max={self.max}")
        return self


class PromoteSpec(_Strict):
    metric: str = "val_loss"
    mode: Literal["min", "max", "auto"] = "auto"
    min_improvement: float = Field(default=0.0, ge=0.0)
    # Set: a paired bootstrap of the improvement over production on the whole eval split, and
    # promotion only when its one-sided lower bound at this confidence beats min_improvement.
    # Unset: the improvement itself must beat min_improvement.
    confidence: float | None = Field(default=None, gt=0.5, lt=1.0)
    bootstrap_samples: int = Field(default=1000, ge=100, le=100_000)
    seed: int = 0
    # Absolute gates on the candidate's metrics, e.g. {val_auc: {min: 0.7}}. A candidate outside
    # one is published but not promoted (decision below_threshold), a first model included.
    thresholds: dict[str, GateSpec] = {}
    # Block promotion when, in a slice of evaluate.slices with at least evaluate.min_count rows,
    # the candidate's promote metric is worse than production's by more than this.
    max_slice_regression: float | None = Field(default=None, ge=0.0)


# `evaluate.metrics` a task can add to its eval metrics (reported as `val_<name>`).
EXTRA_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("precision", "recall", "pr_auc", "log_loss", "calibration_error"),
    "multiclass": ("per_class_recall", "log_loss"),
    "regression": ("mae", "rmse", "mape"),
}


class EvaluateSpec(_Strict):
    """What export's blessing measures besides the task's metrics: more metrics, and slices."""

    metrics: list[str] = []
    # A slice is one feature, or a list of features crossed: [island, [island, sex]].
    slices: list[str | Annotated[list[str], Field(min_length=1)]] = []
    # Slices with fewer eval rows are listed with their count, without metrics or a gate.
    min_count: int = Field(default=30, ge=1)

    def slice_keys(self) -> list[tuple[str, ...]]:
        return [(s,) if isinstance(s, str) else tuple(s) for s in self.slices]


class ExportSpec(_Strict):
    promote_if: PromoteSpec = PromoteSpec()


class InferenceSpec(_Strict):
    source: Source | Annotated[list[Source], Field(min_length=1)] | None = None
    format: Literal["parquet", "csv"] = "parquet"
    batch_size: int = Field(default=4096, gt=0)
    # > 1: batch inference is a mapped task, one instance per part of the files (Airflow
    # dynamic task mapping), so scoring spreads over workers.
    parallelism: int = Field(default=1, ge=1, le=64)
    # Also generate `<name>_inference`: a scoring-only DAG scheduled on the model asset, so every
    # promotion starts a scoring run with no one in between.
    on_promotion: bool = False

    @model_validator(mode="after")
    def _source_for_on_promotion(self) -> InferenceSpec:
        if self.on_promotion and not self.source:
            raise ValueError("inference.on_promotion: expected an inference.source to score, found none")
        return self


# The train settings a search may vary besides model.params (eval_every_steps stays fixed: it is
# the cadence halving's rungs are counted in, the same for every trial).
TUNABLE_TRAIN = ("batch_size", "max_steps", "optimizer")


class SearchDimension(_Strict):
    """One dimension of `tune.space`, written `{choice: [a, b, ...]}`, `{int: [low, high]}` or
    `{float: [low, high]}` (both ends included), with `scale: log` for ranges spanning orders of
    magnitude."""

    kind: Literal["choice", "int", "float"]
    values: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    scale: Literal["linear", "log"] = "linear"

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        if not isinstance(value, dict) or "kind" in value:
            return value
        kinds = [k for k in ("choice", "int", "float") if k in value]
        if len(kinds) != 1:
            raise ValueError(
                "expected exactly one of {choice: [values]}, {int: [low, high]} or {float: [low, high]}, "
                f"found {value!r}"
            )
        (kind,), rest = kinds, {k: v for k, v in value.items() if k not in ("choice", "int", "float")}
        if kind == "choice":
            return {"kind": kind, "values": value[kind], **rest}
        bounds = value[kind]
        if not (isinstance(bounds, list) and len(bounds) == 2):
            raise ValueError(f"expected {{{kind}: [low, high]}}, found {{{kind}: {bounds!r}}}")
        return {"kind": kind, "low": bounds[0], "high": bounds[1], **rest}

    @model_validator(mode="after")
    def _a_space(self) -> SearchDimension:
        if self.kind == "choice":
            if not self.values:
                raise ValueError("expected {choice: [values]} with at least one value, found none")
            if self.scale != "linear":
                raise ValueError("expected scale only with an int or float range, found it with choice")
            return self
        if self.low is None or self.high is None or self.values is not None:
            raise ValueError(f"expected {{{self.kind}: [low, high]}}, found no bounds")
        if self.kind == "int" and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise ValueError(f"expected whole numbers for an int range, found [{self.low}, {self.high}]")
        if self.low > self.high or (self.kind == "float" and self.low == self.high):
            raise ValueError(f"expected low < high, found [{self.low}, {self.high}]")
        if self.scale == "log" and self.low <= 0:
            raise ValueError(f"expected low > 0 for scale: log, found [{self.low}, {self.high}]")
        return self

    def grid(self) -> list[Any] | None:
        """Every value, for a grid search: a choice's values or an int range's integers (None for a
        float range, which has no grid)."""
        if self.kind == "choice":
            return list(self.values)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1))
        return None

    def ends(self) -> list[Any]:
        """The values a setting must accept for every sample to be valid: the choices, or both ends."""
        if self.kind == "choice":
            return list(self.values)
        cast = int if self.kind == "int" else float
        return [cast(self.low), cast(self.high)]


class ObjectiveSpec(_Strict):
    """What a search maximizes or minimizes: an evaluation metric (`mode: auto` as Keras decides)."""

    metric: str
    mode: Literal["min", "max", "auto"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        return {"metric": value} if isinstance(value, str) else value


class HalvingSpec(_Strict):
    """Successive halving on the evaluation cadence: at rung k (after `min_evaluations` × eta^k
    evaluations) a trial stops unless it is in the best 1/eta of the trials that reached the rung."""

    eta: int = Field(default=3, ge=2)
    min_evaluations: int = Field(default=1, ge=1)


class TuneSpec(_Strict):
    """A hyperparameter search: trials over `space` (keys of model.params, or train.<setting>),
    each trained as its own mapped task, the best by `objective` exported."""

    space: dict[str, SearchDimension] = Field(min_length=1)
    objective: ObjectiveSpec
    max_trials: int = Field(default=10, ge=1, le=1000)
    # How many trials of one run train at once (Airflow's max_active_tis_per_dagrun); the
    # queue's worker slots bound it too.
    parallelism: int = Field(default=2, ge=1, le=64)
    seed: int = 0
    algorithm: Literal["random", "grid", "halving"] = "random"
    halving: HalvingSpec = HalvingSpec()

    @field_validator("space", mode="before")
    @classmethod
    def _a_space(cls, value: Any) -> Any:
        if isinstance(value, dict) and not value:
            raise ValueError("expected at least one param to search over, found an empty space")
        return value

    @model_validator(mode="after")
    def _grid_fits(self) -> TuneSpec:
        if self.algorithm != "grid":
            return self
        floats = [k for k, d in self.space.items() if d.grid() is None]
        if floats:
            raise ValueError(
                f"expected choice or int dimensions for algorithm: grid, found float ranges ({', '.join(floats)}); "
                "use algorithm: random"
            )
        size = math.prod(len(d.grid()) for d in self.space.values())
        if size > self.max_trials:
            raise ValueError(
                f"expected a grid of at most max_trials ({self.max_trials}) points, found {size}; raise "
                "max_trials, shrink the space, or use algorithm: random to sample it"
            )
        return self

    def grid_size(self) -> int | None:
        return math.prod(len(d.grid()) for d in self.space.values()) if self.algorithm == "grid" else None


class AssetScheduleSpec(_Strict):
    """Run when any of `assets` is updated (an upstream DAG's outlet, an API event), and on `cron`
    as well when it is given."""

    assets: list[Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9+.\-]*://\S+$")]] = Field(min_length=1)
    cron: str | None = None


class PipelineSpec(_Strict):
    name: str = Field(pattern=_NAME_RE)
    description: str = ""
    # A cron string or preset; or upstream assets (and optionally a cron) to run on.
    schedule: str | AssetScheduleSpec | None = None
    start_date: dt.date = dt.date(2026, 1, 1)
    catchup: bool = False
    retries: int = Field(default=1, ge=0)
    tags: list[str] = []
    data: DataSpec
    model: ModelSpec
    train: TrainSpec = TrainSpec()
    evaluate: EvaluateSpec = EvaluateSpec()
    export: ExportSpec = ExportSpec()
    inference: InferenceSpec = InferenceSpec()
    # A hyperparameter search: train becomes one mapped task per trial (contrail.tune).
    tune: TuneSpec | None = None
    # Celery queue per task, e.g. {train: gpu}: workers started with `--queues gpu` take them.
    queues: dict[Literal["preprocess", "tune_plan", "train", "select_best", "export", "batch_inference"], str] = {}

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule_form(cls, value: Any) -> Any:
        """A mapping is the assets form: validated here, so that its error says what is wrong in
        it rather than that it is not a string."""
        if not isinstance(value, dict):
            return value
        try:
            return AssetScheduleSpec.model_validate(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(
                f"expected a cron string, or {{assets: [URI, ...], cron: optional}} with URIs such as "
                f"s3://bucket/table; at {where}: {first['msg']}, found {first.get('input')!r}"
            ) from None

    @model_validator(mode="after")
    def _metrics_exist(self) -> PipelineSpec:
        task = self.data.label.task
        known = eval_metric_names(task) + TASK_METRICS[task]
        checks = [("export.promote_if.metric", self.export.promote_if.metric)]
        if self.train.early_stopping is not None:
            checks.append(("train.early_stopping.monitor", self.train.early_stopping.monitor))
        for field, metric in checks:
            if metric not in known:
                raise ValueError(f"{field}: expected one of {', '.join(known)} for a {task} label, found {metric!r}")
        if self.export.promote_if.metric not in eval_metric_names(task):
            raise ValueError(
                "export.promote_if.metric: expected an evaluation metric "
                f"({', '.join(eval_metric_names(task))}), found {self.export.promote_if.metric!r}"
            )
        return self

    @model_validator(mode="after")
    def _class_weight_fits_the_task(self) -> PipelineSpec:
        if self.train.class_weight is not None and self.data.label.task == "regression":
            raise ValueError("train.class_weight: expected a binary or multiclass label, found a regression label")
        return self

    @model_validator(mode="after")
    def _evaluation_is_consistent(self) -> PipelineSpec:
        """evaluate.metrics fit the task, slices name string or int features, and the gates
        name metrics the blessing computes."""
        task = self.data.label.task
        for name in self.evaluate.metrics:
            if name not in EXTRA_METRICS[task]:
                raise ValueError(
                    f"evaluate.metrics: expected metrics of a {task} label ({', '.join(EXTRA_METRICS[task])}), "
                    f"found {name!r}"
                )
        for key in self.evaluate.slice_keys():
            for name in key:
                feature = self.data.features.get(name)
                if feature is None or feature.type not in ("string", "int"):
                    found = "no such feature" if feature is None else f"a {feature.type} feature"
                    raise ValueError(
                        f"evaluate.slices: expected string or int features of data.features, found {name!r} ({found})"
                    )
        gateable = eval_metric_names(task) + tuple(f"val_{m}" for m in self.evaluate.metrics if m != "per_class_recall")
        for metric in self.export.promote_if.thresholds:
            if metric not in gateable:
                raise ValueError(
                    f"export.promote_if.thresholds.{metric}: expected an evaluation metric "
                    f"({', '.join(gateable)}), found {metric!r}"
                )
        if self.export.promote_if.max_slice_regression is not None and not self.evaluate.slices:
            raise ValueError("export.promote_if.max_slice_regression: expected evaluate.slices to check, found none")
        return self

    @model_validator(mode="after")
    def _search_fits(self) -> PipelineSpec:
        """tune.space names what build_fn receives (model.params, and learning_rate, which the
        optimizer takes from params) or a tunable train setting, with values the setting accepts;
        the objective is an evaluation metric of the task."""
        if self.tune is None:
            return self
        task = self.data.label.task
        if self.tune.objective.metric not in eval_metric_names(task):
            raise ValueError(
                f"tune.objective: expected an evaluation metric of a {task} label "
                f"({', '.join(eval_metric_names(task))}), found {self.tune.objective.metric!r}"
            )
        for key, dimension in self.tune.space.items():
            if key.startswith("train."):
                setting = key.removeprefix("train.")
                if setting not in TUNABLE_TRAIN:
                    raise ValueError(
                        f"tune.space.{key}: expected one of {', '.join('train.' + t for t in TUNABLE_TRAIN)}, "
                        f"found {key!r}"
                    )
                for value in dimension.ends():
                    try:
                        TrainSpec.model_validate({**self.train.model_dump(), setting: value})
                    except ValidationError as exc:
                        raise ValueError(
                            f"tune.space.{key}: expected values train.{setting} accepts, found {value!r} "
                            f"({exc.errors()[0]['msg']})"
                        ) from None
            elif key not in self.model.params and key != "learning_rate":
                raise ValueError(
                    f"tune.space.{key}: expected a key of model.params (what build_fn receives: "
                    f"{', '.join(self.model.params) or 'none'}) or train.<setting>, found {key!r}, which build_fn "
                    "never receives; give it a default in model.params"
                )
        return self

    def hash(self) -> str:
        """A stable content hash of the validated spec."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


def eval_metric_names(task: str) -> tuple[str, ...]:
    return tuple(f"val_{name}" for name in TASK_METRICS[task])


def metric_mode(metric: str, mode: str) -> str:
    """Resolve `mode='auto'` as Keras does: losses and errors go down, the rest go up."""
    if mode != "auto":
        return mode
    return "min" if metric.removeprefix("val_") in _LOWER_IS_BETTER else "max"


class LoadedSpec(BaseModel):
    """A validated spec together with where it came from."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    spec: PipelineSpec
    path: Path

    @property
    def model_dir(self) -> Path:
        return self.path.parent


def load_spec(path: str | Path, *, check_build_fn: bool = True) -> LoadedSpec:
    """Read, validate and return the spec at `path`, or raise a `SpecError` that says why."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise translate(exc, SpecError, f"{path}: cannot read the spec", path=str(path)) from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}", path=str(path)) from exc
    if not isinstance(raw, Mapping):
        raise SpecError(f"{path}: expected a mapping of spec fields, found {type(raw).__name__}", path=str(path))
    try:
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        lines = _line_index(node)
        first = ".".join(str(p) for p in exc.errors()[0]["loc"]) if exc.errors() else None
        raise SpecError(_format_validation_error(path, exc, lines), path=str(path), field=first) from exc
    if spec.name != path.stem:
        raise SpecError(
            f"{path}:{lines_for(node, ('name',))}: field 'name': expected the file name "
            f"{path.stem!r} (one spec per file, named after its DAG), found {spec.name!r}",
            path=str(path),
            field="name",
        )
    loaded = LoadedSpec(spec=spec, path=path.resolve())
    if check_build_fn:
        _check_build_fn_module(loaded, node)
    return loaded


def _check_build_fn_module(loaded: LoadedSpec, node: yaml.Node) -> None:
    """Find the build_fn's module without importing it (importing may pull in TensorFlow)."""
    module = loaded.spec.model.module
    local = loaded.model_dir / (module.replace(".", "/") + ".py")
    if local.is_file():
        return
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise SpecError(
            f"{loaded.path}:{lines_for(node, ('model', 'build_fn'))}: field 'model.build_fn': "
            f"expected an importable module, found no module {module!r} "
            f"(looked for {local} and on sys.path)",
            path=str(loaded.path),
            field="model.build_fn",
        )


def _line_index(node: yaml.Node | None) -> dict[tuple[str, ...], int]:
    """Map each field path of a YAML document to its 1-based line."""
    index: dict[tuple[str, ...], int] = {}

    def walk(item: yaml.Node, path: tuple[str, ...]) -> None:
        index.setdefault(path, item.start_mark.line + 1)
        if isinstance(item, yaml.MappingNode):
            for key, value in item.value:
                child = (*path, str(key.value))
                index[child] = key.start_mark.line + 1
                walk(value, child)
        elif isinstance(item, yaml.SequenceNode):
            for i, value in enumerate(item.value):
                walk(value, (*path, str(i)))

    if node is not None:
        walk(node, ())
    return index


def lines_for(node: yaml.Node | None, path: tuple[str, ...]) -> int:
    index = _line_index(node)
    while path and path not in index:
        path = path[:-1]
    return index.get(path, 1)


def _format_validation_error(path: Path, exc: ValidationError, lines: dict[tuple[str, ...], int]) -> str:
    problems = []
    for error in exc.errors():
        loc = tuple(str(p) for p in error["loc"])
        field = ".".join(loc) or "<root>"
        probe = loc
        while probe and probe not in lines:
            probe = probe[:-1]
        line = lines.get(probe, 1)
        kind = error["type"]
        if kind == "missing":
            problems.append(f"{path}:{line}: field '{field}': expected a value, found nothing (required)")
        elif kind == "extra_forbidden":
            parent = ".".join(loc[:-1])
            problems.append(
                f"{path}:{line}: field '{field}': expected no such field"
                f"{' under ' + repr(parent) if parent else ''}, found {error['input']!r} (unknown field; check the spelling)"
            )
        else:
            message = error["msg"].removeprefix("Value error, ")
            if message.startswith("Input should be "):
                message = "expected " + message.removeprefix("Input should be ")
                problems.append(f"{path}:{line}: field '{field}': {message}, found {_show(error.get('input'))}")
            else:
                # Our own validators already say what was expected and what was found.
                problems.append(f"{path}:{line}: field '{field}': {message}")
    head = f"{path}: invalid pipeline spec ({len(problems)} problem{'s' * (len(problems) != 1)})"
    return "\n".join([head, *("  " + p for p in problems)])


def _show(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) < 120 else text[:117] + "..."


def discover_specs(directory: str | Path) -> list[Path]:
    """Every spec file in `directory`, sorted so that DAG order is stable."""
    directory = Path(directory)
    return sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])


def find_spec(name: str, directory: str | Path) -> Path:
    """The spec file of pipeline `name`, or a `SpecError` that lists the pipelines there are."""
    known = {p.stem: p for p in discover_specs(directory)}
    if name not in known:
        raise SpecError(
            f"unknown pipeline {name!r}: expected one of {', '.join(sorted(known)) or '(none)'} "
            f"(the specs in {directory})"
        )
    return known[name]


def is_valid_name(name: str) -> bool:
    return re.match(_NAME_RE, name) is not None
