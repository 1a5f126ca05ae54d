"""A full disk under the artifact root is named, and a rerun resumes once space is freed.

The root is a 4 MB tmpfs mounted for the test (the machine's tests run as root): a penguins
checkpoint, with its data iterator's shuffle buffer, takes about 2 MB, so the second one fills it.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from tests_support import task_context

from contrail import layout
from contrail.errors import StorageError
from contrail_airflow.operators import PreprocessOperator, TrainOperator

pytestmark = pytest.mark.slow


@pytest.fixture
def small_root(tmp_path):
    root = tmp_path / "small-root"
    root.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(root)], capture_output=True)
    if mounted.returncode != 0:
        pytest.fail(f"this test mounts a tmpfs (as root): {mounted.stderr.decode().strip()}")
    yield root
    subprocess.run(["umount", "-l", str(root)], check=True)


def test_a_full_disk_names_root_free_space_and_step_then_the_rerun_resumes(
    small_root, write_spec, penguins_dir, monkeypatch, caplog
):
    monkeypatch.setenv("CONTRAIL_ARTIFACT_ROOT", str(small_root))
    spec = str(write_spec({"train": {"early_stopping": None}}))
    context = task_context({"max_steps": 100})  # four evaluations of 25 steps
    pre = PreprocessOperator(
        task_id="preprocess", source=str(penguins_dir / "penguins" / "*.parquet"), spec_path=spec, pipeline="penguins"
    ).execute(context)
    train = TrainOperator(task_id="train", preprocess=pre, spec_path=spec, pipeline="penguins")
    with pytest.raises(StorageError) as full:
        train.execute(context)
    message = str(full.value)
    assert message.startswith(f"{small_root}: no space left on the device while the train step was writing (")
    assert "bytes free)" in message and full.value.retryable
    train_dir = layout.PipelineLayout(small_root, "penguins").run(context["run_id"]).train
    written = len(train_dir.checkpoint_dirs())
    assert written >= 1 and not list(train_dir.checkpoints.glob(".staging-*"))  # nothing half-written kept

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_root)], check=True)  # space freed
    with caplog.at_level("INFO", logger="contrail.train"):
        result = train.execute(context)
    assert f"ckpt-{written:05d}" in caplog.text and "Resumed from" in caplog.text
    history = [json.loads(line) for line in train_dir.history.read_text().splitlines()]
    assert [r["eval_index"] for r in history] == list(range(1, len(history) + 1))
    assert result["final_step"] == 100 and len(history) == 4
