"""Atomic publishing, manifests and the run's event log, shared by every step.

Where things go is `contrail.layout`'s business; this module writes and reads them. A step builds its output in a staging folder beside the final one and publishes it with one
`os.rename`, so a reader never sees half an output. `manifest.json` is written last: its
presence is the commit. A step whose manifest records the same fingerprint (config and inputs)
is skipped and returns the result stored in the manifest (`contrail.step` runs that lifecycle).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from contrail.layout import MANIFEST

FORMAT_VERSION = 1


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to `path` through a temporary file and `os.replace`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with tmp.open("w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    with path.open() as handle:
        return json.load(handle)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(payload: Mapping[str, Any]) -> str:
    """A content hash of a JSON-able mapping (config, input hashes)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success, publish it as `final` with one rename.

    An earlier, uncommitted `final` (no manifest: a crashed attempt) is moved aside first and
    deleted after the rename. On failure the staging folder is removed and `final` is untouched.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".staging-{final.name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    trash = None
    if final.exists():
        trash = final.parent / f".trash-{final.name}-{uuid.uuid4().hex[:8]}"
        os.rename(final, trash)
    os.rename(staging, final)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def describe_outputs(step_dir: Path, names: list[str], records: Mapping[str, int] | None = None) -> list[dict]:
    """Manifest entries for files under `step_dir`: relative path, size, sha256, record count."""
    entries = []
    for name in names:
        path = step_dir / name
        entry: dict[str, Any] = {"path": name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
        if records is not None and name in records:
            entry["records"] = int(records[name])
        entries.append(entry)
    return entries


def write_manifest(
    step_dir: Path,
    *,
    step: str,
    fingerprint_: str,
    inputs: Mapping[str, Any],
    outputs: list[dict],
    result: Mapping[str, Any],
    started: float,
) -> dict:
    """Write the commit record of a step. Call it last."""
    finished = time.time()
    manifest = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "fingerprint": fingerprint_,
        "inputs": dict(inputs),
        "outputs": outputs,
        "result": dict(result),
        "timings": {"started": started, "finished": finished, "seconds": round(finished - started, 3)},
    }
    write_json_atomic(step_dir / MANIFEST, manifest)
    return manifest


def read_manifest(step_dir: Path) -> dict | None:
    path = step_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except (OSError, json.JSONDecodeError):
        # A manifest is written atomically, so an unreadable one means outside damage:
        # treat the step as not done, and let it run again.
        return None


def reusable_result(step_dir: Path, fingerprint_: str) -> dict | None:
    """The stored result (XCom form) of a committed step with the same fingerprint, else None.

    Every output the manifest lists must still exist with its recorded size, so a step whose
    files were deleted or cut runs again instead of handing on a broken path.
    """
    manifest = read_manifest(step_dir)
    if manifest is None or manifest.get("fingerprint") != fingerprint_:
        return None
    for entry in manifest.get("outputs", []):
        path = step_dir / entry["path"]
        if not path.exists() or (path.is_file() and path.stat().st_size != entry.get("bytes", -1)):
            return None
    return dict(manifest["result"])


def record_event(events_dir: Path, event: Mapping[str, Any]) -> None:
    """Add one record to the run's event log (which step ran, whether it was reused).

    One small file per event (`events/<time>-<random>.json`): concurrent writers (mapped
    tasks, a retry beside its orphan) never touch the same file, on a POSIX folder or on an
    object store, where nothing can be appended to.
    """
    now = time.time_ns()
    folder = events_dir
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / f"{now:020d}-{uuid.uuid4().hex[:8]}.json", {"time": now / 1e9, **event})


def read_events(events_dir: Path) -> list[dict]:
    """The run's events, oldest first."""
    folder = events_dir
    if not folder.is_dir():
        return []
    return [read_json(path) for path in sorted(folder.glob("*.json"))]
