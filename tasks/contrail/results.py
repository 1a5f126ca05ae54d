"""What each step returns: one frozen dataclass per step, and its XCom form.

A result names the artifacts a step committed (paths), with counts and metric values; never
data. `to_xcom()` is plain JSON for Airflow, `from_xcom()` reads it back (and a manifest's
`result`, which is the same JSON), so the next step's arguments hold the type, not a dict whose
keys every consumer spells again.

Paths are strings: XCom is JSON, and for a remote artifact root they are URIs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from contrail.errors import ArtifactError


@dataclass(frozen=True, kw_only=True)
class StepResult:
    """Fields every step's result carries."""

    step_dir: str  # the committed folder
    fingerprint: str  # what the step's output is a function of (config and input content)
    reused: bool = False  # True when a committed output was handed back without rerunning

    def to_xcom(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_xcom(cls, value: Any, *, source: str = "XCom") -> Self:
        """Read a result back; `source` names where it came from (an upstream task, a manifest)."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise ArtifactError(f"{source}: expected a dict from XCom, found {type(value).__name__}: {value!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if _required(f)}
        missing = sorted(required - set(value))
        unknown = sorted(set(value) - names)
        if missing or unknown:
            raise ArtifactError(
                f"{source}: expected a {cls.__name__} with {', '.join(sorted(required))}; "
                f"missing {missing or 'none'}, unknown {unknown or 'none'}"
            )
        return cls(**dict(value))

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


@dataclass(frozen=True, kw_only=True)
class PreprocessResult(StepResult):
    schema: str  # schema.json: what the model is built from
    stats: str  # stats.json: what a person reads
    train_files: list[str]
    eval_files: list[str]
    train_records: int
    eval_records: int
    input_rows: int
    compression: str
    parts: int | None = None  # the fan-out's reduce: how many parts it merged
    cache_hit: bool = False  # hard-linked from another run with the same content
    reused_from: str | None = None


@dataclass(frozen=True, kw_only=True)
class PartResult(StepResult):
    """One preprocess fan-out part."""

    files: list[str]
    train: int
    eval: int
    buckets: int = 1  # the train shuffle's spill buckets (`contrail.spill`)


@dataclass(frozen=True, kw_only=True)
class TrainResult(StepResult):
    checkpoint_dir: str
    history: str
    evaluations: int
    final_step: int
    stop_reason: str
    strategy: str
    replicas: int
    monitor: str
    best_value: float | None
    best_eval_index: int | None


@dataclass(frozen=True, kw_only=True)
class SelectBestResult(StepResult):
    best_file: str  # best.json: the choice and why it was made
    checkpoint_path: str  # the chosen checkpoint folder
    eval_index: int
    step: int
    monitor: str
    value: float
    # A search's choice (contrail.tune): the trial, and the params and train settings it
    # trained with, which export builds the model with. Empty without `tune:`.
    trial: str | None = None
    params: dict = field(default_factory=dict)
    train_settings: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ExportResult(StepResult):
    model_dir: str
    version: int
    promoted: bool
    decision: str  # the blessing: first_model, better, not_better, below_threshold or forced
    production_version: int | None  # None: a first model below a gate, so no production yet
    candidate_score: dict[str, float]
    production_score: dict[str, float] | None
    parity: dict[str, Any] = field(default_factory=dict)

    @property
    def parity_max_abs_diff(self) -> float:
        return float(self.parity["max_abs_diff"])


@dataclass(frozen=True, kw_only=True)
class InferenceResult(StepResult):
    predictions: list[str]
    rows: int
    model_version: int
    parts: int = 1
