"""The artifact layout: the only module that names Contrail's folders and files.

::

    <root>/<pipeline>/
      runs/<run_key>/                      RunLayout: one folder per Airflow run
        preprocess/                        PreprocessDir: shards, schema.json, stats.json
        preprocess-parts/part-K-of-N/      PartDir: one fan-out part (spilled records, partials.json)
        train/                             TrainDir: checkpoints/ckpt-NNNNN/, history.jsonl, running.json,
                                           tensorboard/
        select_best/                       SelectBestDir: best.json
        export/                            ExportDir: blessing.json
        inference/[part-K-of-N/]           InferenceDir: part-NNNNN.parquet
        events/*.json                      one file per step execution
        report.html
      models/                              ModelsLayout
        <version>/                         VersionDir: SavedModel, schema.json, contrail.json, warm_start/
        production.json                    which version serves, and why
      cache/                               content cache (file hashes, step pointers)

Every step folder commits with `manifest.json`; a checkpoint commits with its `state.json`, a
model version with its `contrail.json` (`COMMIT_MARKERS`, which the remote-root push orders by).
The classes here only compose paths: none of them writes a file, and the only reads are of a
models folder (`ModelsLayout.versions`, `versions_of_run`, `production_version`).

`READS` declares, as data, what each step's task reads from the artifact root. The remote-root
pulls (`contrail.task.prepare`) consume it; it lives here, not in the step modules, so that
the operators can name it at DAG-parse time without importing a step (and TensorFlow).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# The steps of a pipeline, in order; each one's name is its folder under the run.
STEPS = ("preprocess", "train", "select_best", "export", "inference")

MANIFEST = "manifest.json"  # a step folder's commit marker
CHECKPOINT_STATE = "state.json"  # a checkpoint's commit marker
MODEL_INFO = "contrail.json"  # a model version's commit marker
COMMIT_MARKERS = frozenset({MANIFEST, CHECKPOINT_STATE, MODEL_INFO})

SCHEMA = "schema.json"  # in preprocess/ and in every model version
STATS = "stats.json"  # in preprocess/ and in every model version (its train statistics)
DRIFT = "drift.json"  # preprocess: this run's data against production's (contrail.drift)
SKEW = "skew.json"  # batch inference: the scored data against the model's training data
PART_PARTIALS = "partials.json"
HISTORY = "history.jsonl"
RUNNING = "running.json"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"
CHECKPOINT_PREFIX = "ckpt"  # the tf.train.Checkpoint prefix inside a checkpoint folder
BEST = "best.json"
BLESSING = "blessing.json"
EVENTS = "events"
REPORT = "report.html"
PRODUCTION = "production.json"
PROMOTION_LOCK = ".promotion.lock"
WARM_START = "warm_start"
WARM_START_LAYOUT = "layout.json"
FILE_HASHES = "file-hashes.json"
SAVED_MODEL = "saved_model.pb"

_RUNS, _MODELS, _CACHE, _PARTS = "runs", "models", "cache", "preprocess-parts"


def run_key(run_id: str) -> str:
    """A filesystem-safe, collision-free folder name for an Airflow run id.

    `manual__2026-01-01T00:00:00+00:00` becomes `manual__2026-01-01T00-00-00-00-00-1a2b3c4d`: readable,
    and the hash keeps two run ids that sanitize alike apart.
    """
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", run_id).strip("-.")[:80] or "run"
    return f"{safe}-{hashlib.sha256(run_id.encode()).hexdigest()[:8]}"


def _part_name(part: int, parts: int, width: int) -> str:
    return f"part-{part:0{width}d}-of-{parts:0{width}d}"


@dataclass(frozen=True)
class StepDir:
    """A step's output folder; `manifest.json` inside it is the commit."""

    path: Path

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST


@dataclass(frozen=True)
class PreprocessDir(StepDir):
    @property
    def schema(self) -> Path:
        return self.path / SCHEMA

    @property
    def stats(self) -> Path:
        return self.path / STATS

    @property
    def drift(self) -> Path:
        return self.path / DRIFT


@dataclass(frozen=True)
class PartDir(StepDir):
    """One fan-out part of preprocess: its partial statistics, and its encoded records spilled
    by train bucket (`train-NNNNN.arrow`, `eval.arrow`: `contrail.spill`)."""

    @property
    def partials(self) -> Path:
        return self.path / PART_PARTIALS


@dataclass(frozen=True)
class TrainDir(StepDir):
    @property
    def history(self) -> Path:
        return self.path / HISTORY

    @property
    def running(self) -> Path:
        return self.path / RUNNING

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    def checkpoint(self, eval_index: int) -> Path:
        return self.checkpoints / checkpoint_name(eval_index)

    def checkpoint_dirs(self) -> list[Path]:
        """The published checkpoint folders, oldest first (staging folders start with a dot)."""
        return sorted(self.checkpoints.glob(f"{CHECKPOINT_PREFIX}-*"))


def checkpoint_name(eval_index: int) -> str:
    return f"{CHECKPOINT_PREFIX}-{eval_index:05d}"


def checkpoint_record(eval_index: int) -> str:
    """How history.jsonl names a checkpoint: relative to the train folder."""
    return f"{CHECKPOINTS}/{checkpoint_name(eval_index)}"


def checkpoint_prefix(checkpoint_dir: Path) -> str:
    """The `tf.train.Checkpoint` path prefix inside a checkpoint (or warm-start) folder."""
    return str(checkpoint_dir / CHECKPOINT_PREFIX)


def checkpoint_state(checkpoint_dir: Path) -> Path:
    return checkpoint_dir / CHECKPOINT_STATE


@dataclass(frozen=True)
class SelectBestDir(StepDir):
    @property
    def best(self) -> Path:
        return self.path / BEST


@dataclass(frozen=True)
class ExportDir(StepDir):
    @property
    def blessing(self) -> Path:
        return self.path / BLESSING


@dataclass(frozen=True)
class InferenceDir(StepDir):
    """Batch inference's folder, or with `inference.parallelism` N one part's."""

    @property
    def skew(self) -> Path:
        return self.path / SKEW

    def part(self, part: int, parts: int) -> InferenceDir:
        return self if parts == 1 else InferenceDir(self.path / _part_name(part, parts, 3))

    def parts(self) -> list[InferenceDir]:
        return [InferenceDir(p) for p in sorted(self.path.glob("part-*-of-*")) if p.is_dir()]

    @staticmethod
    def predictions_name(file_index: int) -> str:
        return f"part-{file_index:05d}.parquet"


def expected_parts(folder: Path) -> int:
    """N, from a `part-K-of-N` folder name."""
    return int(folder.name.rsplit("-", 1)[1])


@dataclass(frozen=True)
class RunLayout:
    """One Airflow run's folder."""

    path: Path

    @property
    def key(self) -> str:
        return self.path.name

    @property
    def pipeline(self) -> str:
        return self.path.parent.parent.name

    def step(self, name: str) -> Path:
        return self.path / name

    @property
    def preprocess(self) -> PreprocessDir:
        return PreprocessDir(self.step("preprocess"))

    @property
    def parts(self) -> Path:
        return self.path / _PARTS

    def part(self, part: int, parts: int) -> PartDir:
        return PartDir(self.parts / _part_name(part, parts, 5))

    @property
    def train(self) -> TrainDir:
        return TrainDir(self.step("train"))

    def trial(self, name: str) -> TrainDir:
        """One trial of a search: a train folder of its own under train/."""
        return TrainDir(self.step("train") / name)

    @property
    def rungs(self) -> Path:
        """A halving search's rung board: each trial's objective at each rung, and its decision."""
        return self.step("train") / "rungs"

    @property
    def tune_plan(self) -> Path:
        return self.step("tune_plan")

    @property
    def select_best(self) -> SelectBestDir:
        return SelectBestDir(self.step("select_best"))

    @property
    def export(self) -> ExportDir:
        return ExportDir(self.step("export"))

    @property
    def inference(self) -> InferenceDir:
        return InferenceDir(self.step("inference"))

    @property
    def events(self) -> Path:
        return self.path / EVENTS

    @property
    def report(self) -> Path:
        return self.path / REPORT


@dataclass(frozen=True)
class VersionDir:
    """One published model version: a SavedModel in the TF Serving layout, plus its records."""

    path: Path

    @property
    def version(self) -> int:
        return int(self.path.name)

    @property
    def info(self) -> Path:
        return self.path / MODEL_INFO

    @property
    def schema(self) -> Path:
        return self.path / SCHEMA

    @property
    def stats(self) -> Path:
        return self.path / STATS

    @property
    def saved_model(self) -> Path:
        return self.path / SAVED_MODEL

    @property
    def warm_start(self) -> Path:
        return self.path / WARM_START


@dataclass(frozen=True)
class ModelsLayout:
    path: Path

    @property
    def production(self) -> Path:
        return self.path / PRODUCTION

    @property
    def promotion_lock(self) -> Path:
        return self.path / PROMOTION_LOCK

    def production_version(self) -> int | None:
        """The version `production.json` names, or None before the first promotion."""
        if not self.production.is_file():
            return None
        return int(json.loads(self.production.read_text())["version"])

    def version(self, version: int) -> VersionDir:
        return VersionDir(self.path / str(int(version)))

    def versions(self) -> list[int]:
        """The published version numbers, ascending."""
        if not self.path.is_dir():
            return []
        return sorted(int(p.name) for p in self.path.iterdir() if p.name.isdigit())

    def staging(self, token: str) -> Path:
        return self.path / f".staging-{token}"

    def versions_of_run(self, key: str) -> Iterator[tuple[int, dict]]:
        """The versions a run published, with their records (`contrail.json`), oldest first."""
        for version in self.versions():
            try:
                info = json.loads(self.version(version).info.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # not committed (no record yet), or damaged: not this run's publication
            if info.get("run_key") == key:
                yield version, info


@dataclass(frozen=True)
class PipelineLayout:
    """Where one pipeline's artifacts live under an artifact root (a local folder)."""

    root: Path
    pipeline: str

    @property
    def base(self) -> Path:
        return self.root / self.pipeline

    @property
    def models(self) -> ModelsLayout:
        return ModelsLayout(self.base / _MODELS)

    @property
    def cache(self) -> Path:
        return self.base / _CACHE

    def run(self, run_id: str) -> RunLayout:
        """The folder of the Airflow run `run_id`."""
        return self.run_by_key(run_key(run_id))

    def run_by_key(self, key: str) -> RunLayout:
        return RunLayout(self.base / _RUNS / key)

    def rel(self, path: Path) -> str:
        """`path` relative to the artifact root, as the remote root names it."""
        return path.relative_to(self.root).as_posix()


def run_rel(pipeline: str, run_id: str) -> str:
    """A run's folder relative to the artifact root, for reading a root that is not local."""
    return f"{pipeline}/{_RUNS}/{run_key(run_id)}"


@dataclass(frozen=True)
class Reads:
    """What a step reads from the artifact root, besides its run's small records.

    :param steps: this run's step folders (`preprocess`, `train`, ...; `parts` for the
        preprocess fan-out's parts)
    :param own_dir: the task's own output folder (a mapped part's), so that a rerun can reuse it
    :param model_records: every model version's record and `production.json`
    :param models: which model versions: `production` (the one serving), `warm_start` (the one
        serving, when the spec asks to warm-start), `run` (those this run published),
        `scoring` (the version batch inference scores with)
    :param stable_inputs: upstream results whose files are read under a path that is the same
        for every attempt on every worker (tf.data writes the names of the files it reads into
        its checkpoints)
    :param baseline_stats: production's training statistics, to measure drift against
    """

    steps: tuple[str, ...] = ()
    own_dir: bool = False
    model_records: bool = False
    models: tuple[str, ...] = ()
    stable_inputs: tuple[str, ...] = ()
    baseline_stats: bool = False  # production's training statistics (`<version>/stats.json`) alone

    def __post_init__(self) -> None:
        unknown = set(self.models) - {"production", "warm_start", "run", "scoring"}
        if unknown:
            raise ValueError(f"Reads.models: unknown selector(s) {sorted(unknown)}")
        unknown_steps = set(self.steps) - {*STEPS, "parts", "tune_plan"}
        if unknown_steps:
            raise ValueError(f"Reads.steps: unknown step(s) {sorted(unknown_steps)}")


# What each task reads besides its run's records (see `Reads`).
READS = {
    # Its own folder (a retry reuses it) and, as the fan-out's reduce, the parts' folders.
    "preprocess": Reads(steps=("preprocess", "parts"), baseline_stats=True),
    "preprocess_plan": Reads(steps=("preprocess",)),
    "preprocess_part": Reads(own_dir=True),
    # The examples (under a stable alias), its own folder (the checkpoints a retry resumes from),
    # and production's model when the spec warm-starts from it.
    "train": Reads(steps=("preprocess", "train"), models=("warm_start",), stable_inputs=("preprocess",)),
    # A search's trial: the examples, and its own folder (train/trial-NNN) to resume from.
    "train_trial": Reads(steps=("preprocess",), own_dir=True, models=("warm_start",), stable_inputs=("preprocess",)),
    "select_best": Reads(steps=("train", "select_best")),
    "tune_plan": Reads(steps=("tune_plan",)),
    # Every version's record (to find one this run published already), production's model (to
    # compare with) and this run's versions.
    "export": Reads(
        steps=("preprocess", "train", "select_best", "export"), model_records=True, models=("production", "run")
    ),
    # Its own (part's) folder, for a rerun to reuse, and the version it scores with.
    "batch_inference": Reads(own_dir=True, models=("scoring",)),
}
