from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from contrail import artifacts, train
from contrail.errors import CorruptRecordError, TrainingError
from contrail.history import read_history
from contrail.layout import TrainDir
from contrail.results import PreprocessResult
from contrail.train_handlers import Checkpoints, Evaluation


def test_penguins_model_learns_with_evaluations_and_checkpoints(penguins_run):
    result = penguins_run["train"]
    history = read_history(result.history)
    assert len(history) >= 3 and result.evaluations == len(history)
    assert [r["eval_index"] for r in history] == list(range(1, len(history) + 1))
    assert [r["step"] for r in history] == [25 * i for i in range(1, len(history) + 1)]
    assert history[-1]["metrics"]["val_accuracy"] >= 0.9
    assert history[0]["metrics"]["val_loss"] > min(r["metrics"]["val_loss"] for r in history)
    assert result.stop_reason == "early_stopping"
    # Stopped after exactly `patience` evaluations without improvement on val_loss.
    assert history[-1]["wait"] == 5 and history[-1]["eval_index"] - history[-1]["best_eval_index"] == 5
    kept = sorted(p.name for p in Path(result.checkpoint_dir).glob("ckpt-*"))
    best = f"ckpt-{result.best_eval_index:05d}"
    last_three = [f"ckpt-{i:05d}" for i in range(len(history) - 2, len(history) + 1)]
    # Retention keeps early stopping's best, the outright best (they differ when a gain is
    # below min_delta) and the last three.
    outright = f"ckpt-{min(history, key=lambda r: r['metrics']['val_loss'])['eval_index']:05d}"
    assert kept == sorted({best, outright, *last_three})
    assert list((Path(result.step_dir) / "tensorboard").glob("events.out.tfevents.*"))


def test_rerun_after_a_lost_manifest_resumes_from_the_last_checkpoint(penguins_run, tmp_path):
    step_dir = tmp_path / "train"
    shutil.copytree(penguins_run["train"].step_dir, step_dir)
    (step_dir / "manifest.json").unlink()
    resumed = train.run(train.TrainArgs(str(penguins_run["spec"]), penguins_run["preprocess"], str(step_dir)))
    assert resumed.stop_reason == "resumed_complete"
    original = read_history(penguins_run["train"].history)
    assert read_history(resumed.history) == original


def test_rerun_with_manifest_is_skipped(penguins_run):
    again = train.run(
        train.TrainArgs(str(penguins_run["spec"]), penguins_run["preprocess"], penguins_run["train"].step_dir)
    )
    assert again.reused is True
    assert again.replace(reused=False) == penguins_run["train"].replace(reused=False)


class TestTrainInvalid:
    def _train(self, spec_path, preprocess, tmp_path, **overrides):
        return train.run(train.TrainArgs(str(spec_path), preprocess, str(tmp_path / "train"), **overrides))

    def test_build_fn_that_raises(self, penguins_run, write_spec, tmp_path):
        spec = write_spec()
        (spec.parent / "penguins_model.py").write_text("def build(features, params):\n    raise KeyError('units')\n")
        with pytest.raises(
            TrainingError, match=r"penguins\.yaml: model\.build_fn='penguins_model:build' raised KeyError"
        ):
            self._train(spec, penguins_run["preprocess"], tmp_path)

    def test_build_fn_with_wrong_output_shape(self, penguins_run, write_spec, tmp_path):
        spec = write_spec()
        (spec.parent / "penguins_model.py").write_text(
            "import keras\ndef build(features, params):\n    return keras.ops.expand_dims(features['year'], -1)\n"
        )
        with pytest.raises(
            TrainingError, match=r"expected a Keras tensor of shape \(batch, units\), found .* shape \(None, 1, 1\)"
        ):
            self._train(spec, penguins_run["preprocess"], tmp_path)

    def test_nan_loss_fails_fast(self, penguins_run, tmp_path):
        with pytest.raises(TrainingError, match=r"loss became NaN at evaluation 1, step 25"):
            self._train(penguins_run["spec"], penguins_run["preprocess"], tmp_path, params={"learning_rate": 1e30})

    def test_truncated_shard_is_caught_before_training(self, penguins_run, tmp_path):
        original = penguins_run["preprocess"]
        pre_dir = Path(shutil.copytree(original.step_dir, tmp_path / "pre"))
        pre = PreprocessResult.from_xcom(
            json.loads(json.dumps(original.to_xcom()).replace(original.step_dir, str(pre_dir)))
        )
        shard = Path(pre.train_files[0])
        import tensorflow as tf

        records = [r.numpy() for r in tf.data.TFRecordDataset(str(shard), compression_type="GZIP")]
        with tf.io.TFRecordWriter(str(shard), "GZIP") as writer:  # cut at a record boundary: readers see no error
            for record in records[:-3]:
                writer.write(record)
        assert artifacts.read_manifest(pre_dir) is not None
        with pytest.raises(
            CorruptRecordError, match=rf"{shard.name}: expected {len(records)} records .*found {len(records) - 3}"
        ):
            self._train(penguins_run["spec"], pre, tmp_path)


def test_large_splits_shuffle_whole_batches_and_still_learn(penguins_run, tmp_path):
    """With more train records than `shuffle_buffer`, training shuffles batches of the
    (pre-shuffled) shard instead of records; one shard must work too."""
    result = train.run(
        train.TrainArgs(
            str(penguins_run["spec"]),
            penguins_run["preprocess"],
            str(tmp_path / "train"),
            train_overrides={"shuffle_buffer": 64},
        )
    )
    history = read_history(result.history)
    assert len(penguins_run["preprocess"].train_files) == 1
    assert max(r["metrics"]["val_accuracy"] for r in history) >= 0.9


def test_a_cadence_the_multi_step_loop_does_not_divide_trains_as_one_step_per_call(penguins_run, tmp_path, monkeypatch):
    """Rounds of 40 steps run as calls of 32 + 8 (and the last, cut to 20 by max_steps, as one
    call of 20): the same evaluations, at the same steps, with the same metrics as one step per call."""
    overrides = {"eval_every_steps": 40, "max_steps": 100}
    spec, pre = str(penguins_run["spec"]), penguins_run["preprocess"]
    multi = train.run(train.TrainArgs(spec, pre, str(tmp_path / "multi"), train_overrides=overrides))
    monkeypatch.setattr(train, "_steps_per_execution", lambda eval_every: 1)
    single = train.run(train.TrainArgs(spec, pre, str(tmp_path / "single"), train_overrides=overrides))
    ours, reference = read_history(multi.history), read_history(single.history)
    assert [r["step"] for r in ours] == [40, 80, 100] == [r["step"] for r in reference]
    for a, b in zip(ours, reference, strict=True):
        assert a["metrics"] == pytest.approx(b["metrics"], rel=1e-6, abs=1e-7)


def test_retention_keeps_both_bests_and_the_last_k(tmp_path):
    """With min_delta, early stopping's best and the outright best can differ: keep both."""
    from contrail.spec import EarlyStoppingSpec, TrainSpec

    train_dir = TrainDir(tmp_path)
    settings = TrainSpec(keep_checkpoints=2, early_stopping=EarlyStoppingSpec(min_delta=0.1))
    checkpoints = Checkpoints(train_dir, None, "fp", settings.keep_checkpoints, settings.early_stopping)
    values = [1.0, 0.5, 0.45, 0.6, 0.7, 0.8]  # ES best: eval 2 (0.45 is not 0.1 better); outright: eval 3
    history = [{"eval_index": i, "metrics": {"val_loss": v}} for i, v in enumerate(values, start=1)]
    for i in range(1, 7):
        train_dir.checkpoint(i).mkdir(parents=True)
    last = history[-1]
    checkpoints.retain(Evaluation(6, 60, last["metrics"], last, history, {"best_eval_index": 2}))
    kept = sorted(p.name for p in train_dir.checkpoints.iterdir())
    assert kept == ["ckpt-00002", "ckpt-00003", "ckpt-00005", "ckpt-00006"]
