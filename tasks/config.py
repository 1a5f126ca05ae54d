"""Where Contrail keeps things, read from the environment at run time (never at parse time
for data): workers on other machines set their own paths."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """`CONTRAIL_HOME`, else `AIRFLOW_HOME`, else the current directory."""
    for name in ("CONTRAIL_HOME", "AIRFLOW_HOME"):
        value = os.environ.get(name)
        if value:
            return Path(value).resolve()
    return Path.cwd()


def artifact_root() -> Path:
    """`CONTRAIL_ARTIFACT_ROOT`, else `<project>/artifacts`."""
    value = os.environ.get("CONTRAIL_ARTIFACT_ROOT")
    return Path(value).resolve() if value else project_root() / "artifacts"


def data_dir() -> Path:
    """`CONTRAIL_DATA_DIR`, else `<project>/data`: what `{{ data_dir }}` means in a spec."""
    value = os.environ.get("CONTRAIL_DATA_DIR")
    return Path(value).resolve() if value else project_root() / "data"


def spec_dir() -> Path:
    """`CONTRAIL_SPEC_DIR`, else `<project>/dags/pipelines`: where the pipeline specs live."""
    value = os.environ.get("CONTRAIL_SPEC_DIR")
    return Path(value).resolve() if value else project_root() / "dags" / "pipelines"
