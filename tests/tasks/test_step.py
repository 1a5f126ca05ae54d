"""The shared step lifecycle: reuse by fingerprint, staging, the manifest as the commit."""

from __future__ import annotations

import pytest

from contrail import artifacts, layout
from contrail.results import StepResult
from contrail.step import StepRun


def _result(step_dir, fp="fp-1"):
    return StepResult(step_dir=str(step_dir), fingerprint=fp)


def _run(step_dir, fp="fp-1", cache_dir=None):
    return StepRun("demo", StepResult, step_dir, fp, {"input": "sha"}, cache_dir=cache_dir)


def test_a_committed_step_is_reused_as_its_type_and_marked_reused(tmp_path):
    step_dir = tmp_path / "step"
    step = _run(step_dir)
    assert step.reusable() is None
    with step.staged() as staging:
        (staging / "out.txt").write_text("x")
        step.commit(staging, _result(step_dir), ["out.txt"])
        assert not step_dir.exists()  # published only when the block ends
    manifest = artifacts.read_manifest(step_dir)
    assert manifest["step"] == "demo" and manifest["inputs"] == {"input": "sha"}
    assert [o["path"] for o in manifest["outputs"]] == ["out.txt"]
    again = _run(step_dir).reusable()
    assert isinstance(again, StepResult) and again.reused and again.step_dir == str(step_dir)
    assert _run(step_dir, fp="fp-2").reusable() is None  # other config or inputs: not reused


def test_a_failure_inside_the_block_publishes_nothing(tmp_path):
    step_dir = tmp_path / "step"
    with pytest.raises(RuntimeError), _run(step_dir).staged() as staging:
        (staging / "half.txt").write_text("x")
        raise RuntimeError("crash")
    assert not step_dir.exists() and list(tmp_path.iterdir()) == []


def test_a_result_committed_in_another_format_is_recomputed(tmp_path):
    step_dir = tmp_path / "step"
    step_dir.mkdir()
    artifacts.write_manifest(
        step_dir, step="demo", fingerprint_="fp-1", inputs={}, outputs=[], result={"old_key": 1}, started=0.0
    )
    assert (step_dir / layout.MANIFEST).is_file()
    assert _run(step_dir).reusable() is None


def test_the_cache_records_a_published_step_for_other_runs(tmp_path):
    cache_dir, first = tmp_path / "cache", tmp_path / "run1" / "step"
    step = _run(first, cache_dir=cache_dir)
    with step.staged() as staging:
        (staging / "out.txt").write_text("x")
        step.commit(staging, _result(first), ["out.txt"])
    assert _run(tmp_path / "run2" / "step", cache_dir=cache_dir).cached() == first
    assert _run(first, cache_dir=cache_dir).cached() is None  # its own folder is not "another run's"
