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
    """`CONTRAIL_ARTIFACT_ROOT` (a path or a `file://` URI), else `<project>/artifacts`.

    Every worker must see the same root: on several hosts, a shared POSIX mount (NFS, EFS,
    Filestore). Steps publish with rename and promotions lock with fcntl, so the root must
    offer both; an object store is reached through such a mount (see README, 'Shared artifacts').
    """
    value = os.environ.get("CONTRAIL_ARTIFACT_ROOT")
    return Path(local_path(value, "CONTRAIL_ARTIFACT_ROOT")).resolve() if value else project_root() / "artifacts"


def local_path(value: str, name: str) -> str:
    """A path from a plain path or a `file://` URI; any other scheme is a clear error."""
    scheme, sep, rest = value.partition("://")
    if not sep:
        return value
    if scheme == "file":
        return rest
    from contrail.errors import SpecError

    raise SpecError(
        f"{name}: expected a local path or a file:// URI on storage every worker mounts, found {value!r}; "
        f"mount {scheme}:// storage (for example with s3fs or gcsfuse) and give its mount point"
    )


def data_dir() -> Path:
    """`CONTRAIL_DATA_DIR`, else `<project>/data`: what `{{ data_dir }}` means in a spec."""
    value = os.environ.get("CONTRAIL_DATA_DIR")
    return Path(value).resolve() if value else project_root() / "data"


def spec_dir() -> Path:
    """`CONTRAIL_SPEC_DIR`, else `<project>/dags/pipelines`: where the pipeline specs live."""
    value = os.environ.get("CONTRAIL_SPEC_DIR")
    return Path(value).resolve() if value else project_root() / "dags" / "pipelines"
