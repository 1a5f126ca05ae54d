"""Training that survives SIGKILL, reproduces itself, warm-starts and runs mirrored.

Each run is a fresh process (`tests/run_train.py`), as an Airflow retry would be.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests_support import ROOT, run_export, spec_variant

from contrail import train
from contrail.errors import TrainingError
from contrail.history import read_history
from contrail.layout import TrainDir
from contrail.results import TrainResult

RUNNER = ROOT / "tests" / "run_train.py"
pytestmark = pytest.mark.slow


def run_train(args: dict, *, failpoints: Path | None = None, cpus: int = 1) -> subprocess.CompletedProcess:
    """Train in a fresh process; `args` are `TrainArgs` as JSON (the preprocess result as XCom)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if failpoints is not None:
        env["CONTRAIL_FAILPOINTS_DIR"] = str(failpoints)
    return subprocess.run(
        [sys.executable, str(RUNNER), json.dumps(args), str(cpus)], env=env, capture_output=True, text=True, timeout=600
    )


def result_of(proc: subprocess.CompletedProcess) -> TrainResult:
    """The result `run_train.py` prints as its last line."""
    return TrainResult.from_xcom(json.loads(proc.stdout.strip().splitlines()[-1]))


def comparable(history: list[dict]) -> list[tuple]:
    """What must match between runs: indices, steps and every metric (not wall-clock fields)."""
    return [(r["eval_index"], r["step"], r["metrics"], r["best"], r["wait"]) for r in history]


@pytest.fixture(scope="module")
def reference(penguins_run, tmp_path_factory) -> dict:
    """An uninterrupted run in a fresh process, with the spec's seed and determinism on."""
    step_dir = tmp_path_factory.mktemp("reference") / "train"
    args = {
        "spec_path": str(penguins_run["spec"]),
        "preprocess": penguins_run["preprocess"].to_xcom(),
        "step_dir": str(step_dir),
    }
    proc = run_train(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = result_of(proc)
    return {"args": args, "result": result, "history": read_history(result.history)}


def test_two_fresh_runs_write_identical_histories(reference, tmp_path):
    args = {**reference["args"], "step_dir": str(tmp_path / "train")}
    proc = run_train(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = read_history(TrainDir(tmp_path / "train").history)
    assert comparable(again) == comparable(reference["history"])


@pytest.mark.parametrize(
    "point",
    [
        pytest.param("train.before_eval.4", id="killed-between-steps-and-evaluation"),
        pytest.param("train.checkpoint_write.4", id="killed-during-checkpoint-write"),
    ],
)
def test_sigkill_then_retry_matches_an_uninterrupted_run(reference, tmp_path, point):
    failpoints = tmp_path / "failpoints"
    failpoints.mkdir()
    (failpoints / point).touch()
    train_dir = TrainDir(tmp_path / "train")
    args = {**reference["args"], "step_dir": str(train_dir.path)}
    killed = run_train(args, failpoints=failpoints)
    assert killed.returncode == -9, "the failpoint should have killed the first attempt"
    checkpoints = sorted(p.name for p in train_dir.checkpoints.glob("ckpt-*"))
    assert checkpoints[-1] == "ckpt-00003", "the newest complete checkpoint is the one before the kill"
    if point.startswith("train.checkpoint_write"):
        assert list(train_dir.checkpoints.glob(".staging-ckpt-00004-*")), "a half-written checkpoint"
    assert len(read_history(train_dir.history)) == 3

    retry = run_train(args, failpoints=failpoints)
    assert retry.returncode == 0, retry.stderr[-3000:]
    assert "Resumed from" in retry.stderr and "evaluation 3" in retry.stderr
    result = result_of(retry)
    history = read_history(result.history)
    assert [r["eval_index"] for r in history] == list(range(1, len(history) + 1))  # no gap, no duplicate
    assert comparable(history) == comparable(reference["history"])  # same stop, same metrics: tolerance 0
    assert result.stop_reason == reference["result"].stop_reason == "early_stopping"
    assert result.best_value == pytest.approx(reference["result"].best_value, abs=1e-6)
    assert not list(train_dir.checkpoints.glob(".staging-*"))


def test_best_checkpoint_is_never_overwritten(reference, tmp_path):
    """Each evaluation owns its folder, and retention always keeps the best one."""
    history = reference["history"]
    best = reference["result"].best_eval_index
    kept = sorted(p.name for p in Path(reference["result"].checkpoint_dir).glob("ckpt-*"))
    assert f"ckpt-{best:05d}" in kept
    state = json.loads((Path(reference["result"].checkpoint_dir) / f"ckpt-{best:05d}" / "state.json").read_text())
    assert state["early_stopping"]["best"] == min(r["metrics"]["val_loss"] for r in history[:best])


def test_mirrored_strategy_on_two_logical_cpus(reference, penguins_dir, tmp_path):
    mirrored = spec_variant(tmp_path / "spec", {"train": {"strategy": "mirrored"}}, data_dir=penguins_dir)
    args = {**reference["args"], "spec_path": str(mirrored), "step_dir": str(tmp_path / "train")}
    proc = run_train(args, cpus=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = result_of(proc)
    assert (result.strategy, result.replicas) == ("mirrored", 2)
    history = read_history(TrainDir(tmp_path / "train").history)
    assert len(history) >= 3 and max(r["metrics"]["val_accuracy"] for r in history) >= 0.9


def test_warm_start_from_production(penguins_run, penguins_dir, tmp_path):
    models = tmp_path / "models"
    run_export(penguins_run, models, "r1", tmp_path / "export")
    warm = spec_variant(tmp_path / "spec", {"train": {"warm_start": True}}, data_dir=penguins_dir)
    result = train.run(
        train.TrainArgs(str(warm), penguins_run["preprocess"], str(tmp_path / "train"), models_dir=str(models))
    )
    warm_first = read_history(result.history)[0]["metrics"]["val_loss"]
    cold_first = read_history(penguins_run["train"].history)[0]["metrics"]["val_loss"]
    assert warm_first < cold_first / 2, (warm_first, cold_first)

    with pytest.raises(
        TrainingError,
        match=r"warm start from .*models/1: layer 'dense\w*' \(weight 0\) differs: the production model has dense\w*/kernel with shape \(12, 32\), this model has dense\w*/kernel with shape \(12, 64\)",
    ):
        train.run(
            train.TrainArgs(
                str(warm),
                penguins_run["preprocess"],
                str(tmp_path / "train2"),
                params={"hidden_units": [64, 16]},
                models_dir=str(models),
            )
        )
