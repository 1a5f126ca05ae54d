"""Shared fixtures: real penguins data, specs written to tmp_path, an isolated Airflow home."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = ROOT / "dags" / "pipelines"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def penguins_dir(tmp_path_factory) -> Path:
    """The real Palmer penguins data, written as the demo writes it."""
    from contrail.demo import write_penguins

    data_dir = tmp_path_factory.mktemp("data")
    write_penguins(data_dir)
    return data_dir


def penguins_spec_dict(data_dir: Path) -> dict:
    spec = yaml.safe_load((PIPELINES / "penguins.yaml").read_text())
    spec["data"]["source"] = str(data_dir / "penguins" / "*.parquet")
    spec["inference"]["source"] = str(data_dir / "penguins_to_score" / "*.parquet")
    return spec


def deep_update(base: dict, changes: dict) -> dict:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


@pytest.fixture
def write_spec(tmp_path, penguins_dir):
    """Write a penguins-based spec (with changes) and its model module under tmp_path."""

    def write(changes: dict | None = None, name: str = "penguins", directory: Path | None = None) -> Path:
        directory = directory or tmp_path / "pipelines"
        directory.mkdir(parents=True, exist_ok=True)
        spec = deep_update(penguins_spec_dict(penguins_dir), {"name": name, **(changes or {})})
        shutil.copy(PIPELINES / "penguins_model.py", directory / "penguins_model.py")
        path = directory / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    return write


def airflow_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment for an Airflow process with its own home, database, artifacts and data."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CONTRAIL"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW_CONFIG=str(ROOT / "airflow.cfg"),
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(ROOT / "plugins"),
        AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(home / "logs"),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(home / "passwords.json"),
        AIRFLOW__API_AUTH__JWT_SECRET="contrail-tests-only-secret-0123456789abcdef",
        CONTRAIL_HOME=str(ROOT),
        CONTRAIL_ARTIFACT_ROOT=str(home / "artifacts"),
        CONTRAIL_DATA_DIR=str(home / "data"),
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
        PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    )
    env.update(extra)
    return env


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
    from contrail import preprocess, select_best, train

    base = tmp_path_factory.mktemp("penguins_run")
    spec_dir = base / "pipelines"
    spec_dir.mkdir()
    shutil.copy(PIPELINES / "penguins_model.py", spec_dir / "penguins_model.py")
    spec_path = spec_dir / "penguins.yaml"
    spec_path.write_text(yaml.safe_dump(penguins_spec_dict(penguins_dir), sort_keys=False))
    run_dir = base / "artifacts" / "penguins" / "runs" / "r1"
    pre = preprocess.run(
        preprocess.PreprocessArgs(
            str(spec_path), str(penguins_dir / "penguins" / "*.parquet"), str(run_dir / "preprocess")
        )
    )
    trained = train.run(train.TrainArgs(str(spec_path), pre, str(run_dir / "train")))
    best = select_best.run(select_best.SelectBestArgs(str(spec_path), trained, str(run_dir / "select_best")))
    return {"spec": spec_path, "base": base, "run_dir": run_dir, "preprocess": pre, "train": trained, "best": best}


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
