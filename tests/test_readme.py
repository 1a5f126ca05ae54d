"""The README's shell commands, as written: each one that needs no outside service runs here;
the others are listed with the reason they do not, and where else they run."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from tests_support import ROOT, airflow_env, readme_commands, run_export

# (pattern, why it is not run here). Every README command must match one, or run below.
NOT_RUN_HERE = [
    (r"^make test$", "the suite itself: .ci/run is `make test`"),
    (r"^make demo$", "the demo: its pipeline run is tests/dags/test_pipeline.py, through the same entry point"),
    (r" backfill create ", "needs a running scheduler: tests/dags/test_operations.py runs it as written"),
    (r"^scripts/env tensorboard ", "starts a server that runs until stopped"),
    (
        r"^scripts/env airflow (api-server|scheduler|dag-processor)",
        "starts Airflow's servers: tests/airflow_cluster.py does",
    ),
    (r"celery worker", "starts a Celery worker: tests/dags/test_scaleout.py does, on the machine's Redis"),
    (r"^export CONTRAIL_", "the scale-out settings, for hosts the reader names (db-host, redis-host)"),
    (
        r"contrail_airflow\.mode check$",
        "checks the reader's PostgreSQL and Redis: tests/plugins/test_mode.py checks it",
    ),
    (r"^[A-Z_]+=[^ ]+$|^[A-Z_]+='.*'$", "an environment setting, not a command"),
    (r"^(cp docker/|docker )", "the Docker deployment: no Docker engine on this machine (tests/test_deployment.py)"),
]
RUN_HERE = [r"^scripts/env airflow db migrate$", r"^saved_model_cli "]


def _skip_reason(command: str) -> str | None:
    return next((why for pattern, why in NOT_RUN_HERE if re.search(pattern, command)), None)


def test_every_readme_command_is_run_here_or_says_where():
    unclassified = [
        c for c in readme_commands() if _skip_reason(c) is None and not any(re.search(p, c) for p in RUN_HERE)
    ]
    assert unclassified == [], "README commands no test runs or explains"
    for command in readme_commands():
        print(f"{'runs here' if _skip_reason(command) is None else _skip_reason(command)}: {command}")


@pytest.fixture(scope="module")
def exported_here(tmp_path_factory, penguins_run):
    """A folder laid out as the project after `make demo`: artifacts/penguins/models/1."""
    home = tmp_path_factory.mktemp("readme")
    models = home / "artifacts" / "penguins" / "models"
    run_export(penguins_run, models, "readme", home / "export")
    return home


@pytest.mark.parametrize("command", [c for c in readme_commands() if c.startswith("saved_model_cli ")])
def test_saved_model_cli_commands_run_as_written(command, exported_here):
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        ["bash", "-c", command], cwd=exported_here, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    if " show " in command:
        assert "signature_def['predict']" in proc.stdout and "signature_def['serving_default']" in proc.stdout
    else:
        assert "class_label" in proc.stdout and "probabilities" in proc.stdout


def test_scripts_env_airflow_db_migrate_runs_as_written(tmp_path):
    (command,) = [c for c in readme_commands() if c == "scripts/env airflow db migrate"]
    env = airflow_env(tmp_path)
    del env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]  # scripts/env's own default: $AIRFLOW_HOME/airflow.db
    proc = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (tmp_path / "airflow.db").is_file()
