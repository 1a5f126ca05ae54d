"""The artifact layout: the one place names live, and the reads each task declares."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contrail import layout
from contrail.layout import READS, STEPS, PipelineLayout, Reads, run_key


def test_a_run_folder_is_stable_safe_and_distinct():
    assert run_key("manual__2026-01-01T00:00:00+00:00").startswith("manual__2026-01-01T00-00-00-00-00-")
    assert run_key("a/b") != run_key("a:b")  # sanitize alike, stay apart
    run = PipelineLayout(Path("/root"), "penguins").run("manual__2026-01-01T00:00:00+00:00")
    assert run.path == Path("/root/penguins/runs") / run_key("manual__2026-01-01T00:00:00+00:00")
    assert [run.step(s).name for s in STEPS] == list(STEPS)
    assert run.train.checkpoint(7).name == "ckpt-00007" and run.pipeline == "penguins"
    assert run.inference.part(2, 4).path.name == "part-002-of-004" and run.inference.part(0, 1) == run.inference
    assert run.part(1, 2).path == run.parts / "part-00001-of-00002"


def test_models_scans_find_versions_production_and_a_runs_publications(tmp_path):
    models = PipelineLayout(tmp_path, "p").models
    assert models.versions() == [] and models.production_version() is None
    for version, key in ((1, "r1"), (2, "r2"), (3, "r1")):
        models.version(version).path.mkdir(parents=True)
        models.version(version).info.write_text(json.dumps({"run_key": key}))
    (models.path / ".staging-x").mkdir()  # not a version
    models.production.write_text(json.dumps({"version": 2}))
    assert models.versions() == [1, 2, 3] and models.production_version() == 2
    assert [v for v, _ in models.versions_of_run("r1")] == [1, 3]


def test_every_task_declares_its_reads():
    assert set(READS) == {
        "preprocess",
        "preprocess_plan",
        "preprocess_part",
        "tune_plan",
        "train",
        "train_trial",
        "select_best",
        "export",
        "batch_inference",
    }
    assert READS["train"].stable_inputs == ("preprocess",)  # tf.data names its files in checkpoints
    # A search's trial pulls its own folder, not every other trial's checkpoints.
    assert READS["train_trial"].own_dir and READS["train_trial"].steps == ("preprocess",)
    assert READS["train_trial"].stable_inputs == ("preprocess",)
    with pytest.raises(ValueError, match="unknown selector"):
        Reads(models=("newest",))
    with pytest.raises(ValueError, match="unknown step"):
        Reads(steps=("trian",))


def test_commit_markers_are_the_layouts_markers():
    assert layout.COMMIT_MARKERS == {layout.MANIFEST, layout.CHECKPOINT_STATE, layout.MODEL_INFO}
