"""Caching by content, across runs of one pipeline.

Two parts, both under `<pipeline>/cache/`:

- **File hashes** (`file-hashes.json`). A step's input fingerprint is the sha256 of every input
  file's *content*, never its name, size or time alone, so new data under an old path (even
  with the same name and size) is a new fingerprint. Hashing a large input on every run would
  cost a full read, so, as git's index does, the hash is remembered with the file's stat
  (size, mtime in ns, inode, device) and reused while that stat is unchanged. Any write to the
  file changes its mtime (and a replace by rename changes its inode), which forces a rehash.
  A file modified within `RACY_SECONDS` of when its hash was recorded could share an mtime
  with the hashed version on a coarse-timestamp file system, so such entries are always
  rehashed ("racily clean", as git calls it). Cost: a `stat` per file when nothing changed.

- **Step results** (`<step>/<fingerprint>.json`). When a step commits, it records its
  folder under its fingerprint. A later run (another run id) whose fingerprint matches reuses
  that folder's files by hard link (a copy across file systems), instead of recomputing them.
  A hard link shares the bytes, and published files are never written again, so the two runs
  cannot diverge; deleting either run's folder leaves the other's files whole.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from contrail import artifacts
from contrail.layout import FILE_HASHES

log = logging.getLogger(__name__)

RACY_SECONDS = 2.0


def content_fingerprints(files: list[Path], cache_dir: Path | None) -> dict[str, dict]:
    """`{path: {"sha256", "bytes"}}` for each file, hashing only files whose stat changed."""
    known = _read(cache_dir / FILE_HASHES) if cache_dir else {}
    out, changed = {}, False
    for path in files:
        stat = path.stat()
        key = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ino": stat.st_ino, "dev": stat.st_dev}
        entry = known.get(str(path))
        fresh = (
            entry is not None
            and all(entry.get(k) == v for k, v in key.items())
            and entry["recorded_ns"] - stat.st_mtime_ns > RACY_SECONDS * 1e9
        )
        if not fresh:
            started = time.time()
            entry = {**key, "sha256": artifacts.sha256_file(path), "recorded_ns": time.time_ns()}
            known[str(path)] = entry
            changed = True
            log.info("Hashed %s (%d bytes) in %.2fs", path, stat.st_size, time.time() - started)
        out[str(path)] = {"sha256": entry["sha256"], "bytes": entry["bytes"]}
    if cache_dir and changed:
        artifacts.write_json_atomic(cache_dir / FILE_HASHES, known)  # a cache: the last writer wins
    return out


def lookup(cache_dir: Path | None, step: str, fingerprint: str) -> Path | None:
    """The committed step folder recorded under `fingerprint`, if it is still whole."""
    if cache_dir is None:
        return None
    entry = _read(cache_dir / step / f"{fingerprint}.json")
    if not entry:
        return None
    source = Path(entry["step_dir"])
    if artifacts.reusable_result(source, fingerprint) is None:
        return None  # deleted, cut or recomputed with other inputs since: not a hit
    return source


def record(cache_dir: Path | None, step: str, fingerprint: str, step_dir: Path) -> None:
    if cache_dir is not None:
        artifacts.write_json_atomic(cache_dir / step / f"{fingerprint}.json", {"step_dir": str(step_dir)})


def link_outputs(source: Path, staging: Path) -> list[dict]:
    """Hard-link (or copy) every output `source`'s manifest lists into `staging`; returns the
    manifest's output entries. (`lookup` checked their sizes; train re-counts every record.)"""
    manifest = artifacts.read_manifest(source)
    for entry in manifest["outputs"]:
        src, dst = source / entry["path"], staging / entry["path"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    return manifest["outputs"]


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
