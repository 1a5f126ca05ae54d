"""Each training handler on its own, driven with hand-made evaluations (no model, no data)."""

from __future__ import annotations

import json
import logging

import pytest

from contrail import layout
from contrail.errors import LeaseLostError
from contrail.history import read_history
from contrail.layout import TrainDir
from contrail.spec import EarlyStoppingSpec
from contrail.train_handlers import Checkpoints, Evaluation, HistoryWriter, Lease, ProgressLog, Retention

ES = EarlyStoppingSpec(monitor="val_loss", patience=3, min_delta=0.05)


def _evaluations(losses: list[float]) -> list[Evaluation]:
    """Evaluations 1..n with these val_loss values, and early stopping's state as it would be."""
    history, out, best, best_index = [], [], None, None
    for i, loss in enumerate(losses, start=1):
        if best is None or loss < best - ES.min_delta:
            best, best_index = loss, i
        record = {
            "eval_index": i,
            "step": 10 * i,
            "metrics": {"val_loss": loss},
            "checkpoint": layout.checkpoint_record(i),
            "examples_per_sec": 1000.0,
            "best": best,
            "best_eval_index": best_index,
            "wait": i - best_index,
        }
        history = [*history, record]
        state = {"best": best, "best_eval_index": best_index, "wait": i - best_index, "stopped_eval_index": None}
        out.append(Evaluation(i, 10 * i, {"val_loss": loss}, record, history, state))
    return out


@pytest.fixture
def checkpoint():
    import tensorflow as tf

    return tf.train.Checkpoint(v=tf.Variable(0.0))


def test_each_evaluation_commits_a_checkpoint_that_a_retry_restores(tmp_path, checkpoint):
    train_dir = TrainDir(tmp_path / "train")
    saved = Checkpoints(train_dir, checkpoint, "fp", keep=2, early_stopping=ES)
    for evaluation in _evaluations([0.9, 0.5]):
        checkpoint.v.assign(float(evaluation.eval_index))
        saved.on_evaluation(evaluation)
    assert [d.name for d in train_dir.checkpoint_dirs()] == ["ckpt-00001", "ckpt-00002"]
    checkpoint.v.assign(-1.0)
    state = Checkpoints(train_dir, checkpoint, "fp", keep=2, early_stopping=ES).restore()
    assert state["eval_index"] == 2 and state["checkpoint"] == str(train_dir.checkpoint(2))
    assert float(checkpoint.v.numpy()) == 2.0 and len(state["history"]) == 2


def test_a_checkpoint_without_its_state_is_skipped_and_another_configs_are_discarded(tmp_path, checkpoint):
    train_dir = TrainDir(tmp_path / "train")
    saved = Checkpoints(train_dir, checkpoint, "fp", keep=5, early_stopping=ES)
    for evaluation in _evaluations([0.9, 0.5]):
        saved.on_evaluation(evaluation)
    layout.checkpoint_state(train_dir.checkpoint(2)).unlink()  # killed between tensors and state
    assert Checkpoints(train_dir, checkpoint, "fp", keep=5, early_stopping=ES).restore()["eval_index"] == 1
    assert Checkpoints(train_dir, checkpoint, "other-config", keep=5, early_stopping=ES).restore() is None
    assert train_dir.checkpoint_dirs() == []


def test_retention_keeps_the_last_k_and_both_bests(tmp_path, checkpoint):
    train_dir = TrainDir(tmp_path / "train")
    saved = Checkpoints(train_dir, checkpoint, "fp", keep=2, early_stopping=ES)
    retention = Retention(saved)
    # Evaluation 2 is early stopping's best; 4 is the outright best (better by less than min_delta).
    for evaluation in _evaluations([0.9, 0.5, 0.6, 0.48, 0.7, 0.8]):
        saved.on_evaluation(evaluation)
        retention.on_evaluation(evaluation)
    assert [d.name for d in train_dir.checkpoint_dirs()] == ["ckpt-00002", "ckpt-00004", "ckpt-00005", "ckpt-00006"]


def test_history_writer_replaces_the_file_with_the_checkpoints_history(tmp_path):
    train_dir = TrainDir(tmp_path / "train")
    train_dir.path.mkdir()
    writer = HistoryWriter(train_dir)
    evaluations = _evaluations([0.9, 0.5, 0.4])
    for evaluation in evaluations:
        writer.on_evaluation(evaluation)
    assert read_history(train_dir.history) == evaluations[-1].history
    writer.write(evaluations[0].history)  # a retry rewinds to its restored checkpoint
    assert [r["eval_index"] for r in read_history(train_dir.history)] == [1]
    assert [p.name for p in train_dir.path.iterdir()] == [layout.HISTORY]  # no temporary file left


def test_progress_log_names_evaluation_metrics_patience_and_eta(caplog):
    log = ProgressLog(ES, max_steps=100, start_step=0)
    with caplog.at_level(logging.INFO, logger="contrail.train_handlers"):
        for evaluation in _evaluations([0.9, 0.5, 0.6]):
            log.on_evaluation(evaluation)
    line = caplog.records[-1].getMessage()
    assert line.startswith("eval 3 | step 30/100 | 1000 examples/s | val_loss=0.6 | best val_loss=0.5 (eval 2)")
    assert "patience left 2" in line and "ETA <=" in line
    json.dumps(caplog.records[-1].args, default=str)  # lazy %-formatting: the arguments travel


def test_a_newer_attempt_fences_the_older_one_off(tmp_path, checkpoint):
    train_dir = TrainDir(tmp_path / "train")
    orphan, retry = Lease(train_dir), Lease(train_dir)
    orphan.acquire()
    orphan.check()  # holds it
    saved = Checkpoints(train_dir, checkpoint, "fp", keep=5, early_stopping=ES, fence=orphan.check)
    first, second = _evaluations([0.9, 0.5])
    saved.on_evaluation(first)
    retry.acquire()  # the retry takes over while the orphan still runs
    with pytest.raises(LeaseLostError, match=r"running\.json: expected this attempt's lease .* found pid \d+ on "):
        saved.on_evaluation(second)
    assert [d.name for d in train_dir.checkpoint_dirs()] == ["ckpt-00001"]  # the orphan published nothing more
    assert not list(train_dir.checkpoints.glob(".staging-*"))
    with pytest.raises(LeaseLostError):
        HistoryWriter(train_dir, fence=orphan.check).write(second.history)
    assert json.loads(train_dir.running.read_text())["token"] == retry.token
    retry.on_evaluation(second)  # the holder's heartbeat
    assert (
        json.loads(train_dir.running.read_text())["heartbeat"] >= json.loads(train_dir.running.read_text())["started"]
    )


def test_an_older_attempts_heartbeat_never_takes_the_lease_from_a_newer_one(tmp_path):
    """The race test_scaleout once lost: the orphan passed its fence, the retry took the lease,
    then the orphan's heartbeat wrote its own lease over the retry's and the retry stopped."""
    train_dir = TrainDir(tmp_path / "train")
    orphan, retry = Lease(train_dir), Lease(train_dir)
    orphan.acquire()
    orphan.check()
    retry.acquire()
    assert retry.epoch == orphan.epoch + 1
    (evaluation,) = _evaluations([0.9])
    with pytest.raises(LeaseLostError, match=r"epoch 1\), found pid \d+ on .* \(epoch 2\)"):
        orphan.on_evaluation(evaluation)  # the heartbeat checks first
    assert json.loads(train_dir.running.read_text())["token"] == retry.token
    # Were an older attempt's write to land anyway (a remote root has no lock), the newer one takes it back.
    orphan._write()
    retry.check()
    assert json.loads(train_dir.running.read_text())["token"] == retry.token
    with pytest.raises(LeaseLostError):
        orphan.check()
