"""Shared fixtures: real penguins data, specs written to tmp_path, an isolated Airflow home.

Helpers live in `tests_support`; this file only turns them into fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests_support import airflow_env, run_steps, spec_variant

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def penguins_dir(tmp_path_factory) -> Path:
    """The real Palmer penguins data, written as the demo writes it."""
    from contrail.demo import write_penguins

    data_dir = tmp_path_factory.mktemp("data")
    write_penguins(data_dir)
    return data_dir


@pytest.fixture
def write_spec(tmp_path, penguins_dir):
    """Write a penguins-based spec (with changes) and its model module under tmp_path."""

    def write(changes: dict | None = None, name: str = "penguins", directory: Path | None = None) -> Path:
        return spec_variant(directory or tmp_path / "pipelines", changes, name=name, data_dir=penguins_dir)

    return write


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory) -> Path:
    """A migrated SQLite metadata database in a fresh AIRFLOW_HOME, shared by the session."""
    home = tmp_path_factory.mktemp("airflow_home")
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], env=airflow_env(home), check=True, capture_output=True
    )
    return home


@pytest.fixture(scope="session")
def penguins_run(tmp_path_factory, penguins_dir) -> dict:
    """Preprocess, train and select_best on penguins once, for the tests of later steps."""
    base = tmp_path_factory.mktemp("penguins_run")
    spec_path = spec_variant(base / "pipelines", data_dir=penguins_dir)
    run_dir = base / "artifacts" / "penguins" / "runs" / "r1"
    stages = run_steps(spec_path, str(penguins_dir / "penguins" / "*.parquet"), run_dir)
    return {**stages, "base": base, "run_dir": run_dir}


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 endpoint (moto's server) on loopback, for the whole session."""
    from object_store import S3Server

    with S3Server() as server:
        yield server


@pytest.fixture
def s3(s3_server, monkeypatch):
    """This process's S3 clients pointed at the loopback endpoint; `s3.new_bucket()` for a bucket."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server
