"""Where Contrail keeps things, read from the environment at run time (never at parse time
for data): workers on other machines set their own paths."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def project_root() -> Path:
    """`CONTRAIL_HOME`, else `AIRFLOW_HOME`, else the current directory."""
    for name in ("CONTRAIL_HOME", "AIRFLOW_HOME"):
        value = os.environ.get(name)
        if value:
            return Path(value).resolve()
    return Path.cwd()


def artifact_location() -> str:
    """`CONTRAIL_ARTIFACT_ROOT` as given, else `<project>/artifacts`.

    A local path or `file://` URI (one machine, or a POSIX mount every worker shares: NFS, EFS,
    Filestore), or any fsspec URI (`s3://bucket/prefix`, `gs://...`): tasks then work on a
    local copy and publish to it (`contrail.storage`).
    """
    return os.environ.get("CONTRAIL_ARTIFACT_ROOT") or str(project_root() / "artifacts")


def scratch_dir() -> Path:
    """`CONTRAIL_SCRATCH_DIR`, else the system's temporary folder: where a task copies what it
    needs from a remote artifact root (removed when the task ends)."""
    value = os.environ.get("CONTRAIL_SCRATCH_DIR")
    return Path(value) if value else Path(tempfile.gettempdir())


def data_dir() -> Path:
    """`CONTRAIL_DATA_DIR`, else `<project>/data`: what `{{ data_dir }}` means in a spec."""
    value = os.environ.get("CONTRAIL_DATA_DIR")
    return Path(value).resolve() if value else project_root() / "data"


def spec_dir() -> Path:
    """Where the pipeline specs live: `CONTRAIL_SPEC_DIR`, else `pipelines/` in Airflow's DAGs
    folder (`AIRFLOW__CORE__DAGS_FOLDER`), else `<project>/dags/pipelines`. The DAG factory, the
    CLI and `contrail lint` all ask here."""
    value = os.environ.get("CONTRAIL_SPEC_DIR")
    if value:
        return Path(value).resolve()
    dags = os.environ.get("AIRFLOW__CORE__DAGS_FOLDER")
    return (Path(dags).resolve() if dags else project_root() / "dags") / "pipelines"
