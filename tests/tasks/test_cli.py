from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests_support import PIPELINES, ROOT


def lint(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "contrail.cli", "lint", *map(str, paths)], capture_output=True, text=True, cwd=ROOT
    )


def test_lint_passes_the_shipped_specs():
    result = lint()
    assert result.returncode == 0, result.stderr
    assert "penguins.yaml: ok (penguins, 7 features, multiclass)" in result.stdout
    assert "cars.yaml: ok (cars, 7 features, regression)" in result.stdout


def test_lint_points_at_file_line_and_field_without_airflow(write_spec):
    path = write_spec({"train": {"eval_every_steps": 0}})
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "eval_every_steps" in text)
    result = lint(path)
    assert result.returncode == 1
    assert f"{path}:{line}: field 'train.eval_every_steps': expected greater than 0, found 0" in result.stderr
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, contrail.cli; contrail.cli.main(['lint']); print('airflow' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert probe.stdout.strip().splitlines()[-1] == "False"


def test_an_unknown_pipeline_name_lists_the_pipelines_there_are(tmp_path):
    env = {**os.environ, "CONTRAIL_SPEC_DIR": str(PIPELINES)}
    for command in (
        ["-m", "contrail.cli", "summary", "pengiuns", "r1"],
        ["-m", "contrail_airflow.run", "pengiuns", "2026-01-01"],
    ):
        result = subprocess.run([sys.executable, *command], capture_output=True, text=True, cwd=tmp_path, env=env)
        assert result.returncode == 2, result.stderr
        assert (
            "unknown pipeline 'pengiuns': expected one of cars, flights, penguins, penguins_daily (the specs in "
            in result.stderr
        )
