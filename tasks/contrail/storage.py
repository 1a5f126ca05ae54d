"""Artifact roots on any fsspec file system: a local working copy per task, published to the
remote root with commit markers.

Every step works on a POSIX folder: it publishes with `rename`, appends with `O_APPEND` and
locks with `fcntl`, none of which an object store offers. So for a remote root (`s3://...`,
`gs://...`, any fsspec URI but a local path or `file://`) a task gets a `Workspace`: a private
local folder laid out exactly like the root. The task pulls what it reads, the step runs on
the local copy, and `push` sends up what changed:

- Files under a folder that holds a commit marker (`manifest.json`, a checkpoint's
  `state.json`, a model version's `contrail.json`) go first, the marker last, deepest folder
  first: a reader that finds the marker finds every file it commits. Before a committed folder
  changes, its old marker is deleted, so nobody reads old marker with new files.
- Files outside any committed folder (`production.json`, the history, events, the report)
  go after the folders they point into.
- Files the task deleted (a retired checkpoint, the fan-out's parts) are deleted remotely,
  markers first.

Paths in XCom are remote URIs (`to_remote`); a task maps its inputs onto its copy with
`to_local`. Paths inside the records a step writes (commit markers, `production.json`, events,
the report) are rewritten the same way on the way up and back down, so the remote root never
names a worker's folder. Files a manifest lists are sent as they are: their sizes and hashes
are part of the commit. For a local root the workspace is the root itself and every method is
a no-op, so operators are written once for both.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import logging
import os
import posixpath
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from contrail.errors import StorageError, translate
from contrail.layout import COMMIT_MARKERS, PipelineLayout

log = logging.getLogger(__name__)

RECORD_SUFFIXES = (".json", ".jsonl", ".html")  # small text records whose paths are rewritten


def is_remote(location: str) -> bool:
    """True for any URI but a plain path or `file://`."""
    scheme, sep, _ = location.partition("://")
    return bool(sep) and scheme not in ("file", "local")


def storage_options() -> dict[str, Any]:
    """`CONTRAIL_STORAGE_OPTIONS`, a JSON object handed to the fsspec file system (for S3, for
    example `{"endpoint_url": "http://minio:9000"}`); credentials come from the usual places
    (`AWS_*` variables, instance roles, `GOOGLE_APPLICATION_CREDENTIALS`)."""
    raw = os.environ.get("CONTRAIL_STORAGE_OPTIONS", "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise StorageError(
            f"CONTRAIL_STORAGE_OPTIONS: expected a JSON object, found {raw!r} ({exc})", field="CONTRAIL_STORAGE_OPTIONS"
        ) from None
    if not isinstance(value, dict):
        raise StorageError(
            f"CONTRAIL_STORAGE_OPTIONS: expected a JSON object, found {type(value).__name__}",
            field="CONTRAIL_STORAGE_OPTIONS",
        )
    return value


def filesystem(location: str, *, what: str = "CONTRAIL_ARTIFACT_ROOT"):
    """The fsspec file system of `location` and the root's path on it; `what` names the setting
    that gave the location, for the error."""
    import fsspec

    try:
        # Fresh listings always: another worker may have published since this process looked.
        options = {"use_listings_cache": False, "skip_instance_cache": True, **storage_options()}
        fs, root = fsspec.core.url_to_fs(location, **options)
    except (ImportError, ValueError) as exc:
        raise StorageError(
            f"{what}={location!r}: no fsspec file system for this URI ({exc}); "
            "install its package (s3fs is included; gcsfs for gs://, adlfs for az://)",
            field=what,
        ) from None
    return fs, root.rstrip("/")


def local_root(location: str) -> Path:
    """The folder a local root (a path or a `file://` URI) names."""
    return Path(location.removeprefix("file://")).resolve()


def read_text(location: str, rel: str) -> str | None:
    """The text of `rel` under the artifact root `location`, local or remote; None if absent."""
    if not is_remote(location):
        path = local_root(location) / rel
        return path.read_text(encoding="utf-8") if path.is_file() else None
    fs, root = filesystem(location)
    try:
        return fs.cat_file(f"{root}/{rel}").decode("utf-8")
    except FileNotFoundError:
        return None


WORKSPACE_PREFIX = "contrail-workspace-"
# A fixed path, not under the scratch folder (TMPDIR and CONTRAIL_SCRATCH_DIR differ between
# workers), so that every worker running as this user names an alias alike. Per user, 0700: no
# other local user can plant a link that would make training read their TFRecords.
ALIASES_PARENT = Path("/tmp")


def private_dir(folder: Path) -> Path:
    """`folder`, created 0700 if missing; a folder that is a link, is not this user's, or is open
    to others is refused (never used, never followed)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, 0o700)
    st = os.lstat(folder)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        kind = "a link" if stat.S_ISLNK(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode) else "a file"
        raise StorageError(
            f"{folder}: expected a folder owned by this user (uid {os.getuid()}) with mode 0700, found {kind} "
            f"owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}; remove it, or make it this user's "
            "and 0700",
            path=str(folder),
        )
    return folder


def _alias_dir(scratch: Path) -> Path:
    folder = ALIASES_PARENT / f"contrail-aliases-{os.getuid()}"
    if os.access(ALIASES_PARENT, os.W_OK):
        return private_dir(folder)
    log.warning("%s is not writable: aliases go under %s, which every worker must share", ALIASES_PARENT, scratch)
    return private_dir(scratch / f"contrail-aliases-{os.getuid()}")


def _remove_abandoned(scratch: Path) -> None:
    """Remove the copies of tasks that died without cleaning up (SIGKILL, OOM): their folder
    names carry the pid, and no process with that pid is alive on this host."""
    for folder in scratch.glob(f"{WORKSPACE_PREFIX}*"):
        pid = folder.name[len(WORKSPACE_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
            log.info("Removed %s, left by a task that died", folder)
        except PermissionError:
            pass  # alive, another user's


def _skipped(rel: str) -> bool:
    """Transient local names (staging folders, temporary files, lock files) never travel."""
    return any(part.startswith(".") for part in rel.split("/"))


def _stat(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


class Workspace:
    """The folder a task works in: the artifact root itself, or a local copy of a remote one.

    :param location: the artifact root, a local path or any fsspec URI
    :param scratch: where remote copies are made (a private folder is created there)
    """

    def __init__(self, location: str, scratch: Path | None = None) -> None:
        self.location = location.rstrip("/")
        self.remote = is_remote(location)
        self._snapshot: dict[str, tuple[int, int, int]] = {}  # what the remote holds, as copied here
        self._remote_sizes: dict[str, int] = {}
        self._aliases: list[tuple[Path, Path]] = []
        if not self.remote:
            self.root = local_root(location)
            self._tmp = None
            return
        self.fs, self._remote_root = filesystem(location)
        scratch = Path(scratch or tempfile.gettempdir())
        scratch.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(scratch)
        self._scratch = scratch
        self._tmp = Path(tempfile.mkdtemp(prefix=f"{WORKSPACE_PREFIX}{os.getpid()}-", dir=scratch))
        self.root = self._tmp / "root"
        self.root.mkdir()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stable_alias(self, folder: Path, name: str) -> Path:
        """A path that names `folder` (in this copy) and is the same for every copy made for
        `name` on any worker: a symbolic link in this user's private alias folder (0700, see
        `private_dir`), replaced atomically, removed with
        the copy. For readers that write the names of the files they read into
        their own state (tf.data's iterator checkpoints do)."""
        link = _alias_dir(self._scratch) / name
        tmp = link.with_name(f".{name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        os.symlink(folder, tmp)
        os.replace(tmp, link)
        self._aliases.append((link, folder))
        return link

    def close(self) -> None:
        """Remove the local copy (a remote root's only) and its aliases."""
        for link, folder in self._aliases:
            with contextlib.suppress(OSError):
                if os.readlink(link) == str(folder):  # not yet taken over by a newer attempt
                    link.unlink()
        self._aliases = []
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    # -- paths --------------------------------------------------------------------------------

    def remote_path(self, rel: str) -> str:
        return f"{self._remote_root}/{rel}" if rel else self._remote_root

    def to_remote(self, value: Any) -> Any:
        """`value` (a result: strings, lists, dicts) with local paths under the copy as URIs."""
        return self._translate(value, str(self.root), self.location)

    def to_local(self, value: Any) -> Any:
        """`value` (an upstream result) with URIs under the root as paths in the copy."""
        return self._translate(value, self.location, str(self.root))

    def _translate(self, value: Any, old: str, new: str) -> Any:
        return rebase(value, old, new) if self.remote else value

    # -- transfers ----------------------------------------------------------------------------

    def pull(self, rel: str, include: Iterable[str] = ()) -> int:
        """Copy the files under `rel` (a folder or a file, relative to the root) here; with
        `include`, only those whose path below `rel` matches one of the glob patterns.
        Returns how many files were copied; a missing `rel` copies none."""
        if not self.remote:
            return 0
        wanted = self._to_pull(rel, list(include))
        if not wanted:
            return 0
        locals_ = [self.root / r for r in wanted]
        for path in locals_:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.fs.get([self.remote_path(r) for r in wanted], [str(p) for p in locals_])
        except Exception as exc:  # broad: each fsspec backend raises its own types
            raise translate(exc, StorageError, f"{self.location}/{rel}: download failed") from exc
        for relpath, size in wanted.items():
            self._check_pulled(relpath, size)
        log.info("Pulled %d file(s) from %s/%s", len(wanted), self.location, rel)
        return len(wanted)

    def _to_pull(self, rel: str, patterns: list[str]) -> dict[str, int]:
        """The files under `rel` (matching `patterns`, if any) not already here as they are
        there: `{path relative to the root: remote size}`."""
        try:
            found = self.fs.find(self.remote_path(rel), detail=True)
        except FileNotFoundError:
            found = {}
        except Exception as exc:  # broad: each fsspec backend raises its own types
            raise translate(exc, StorageError, f"{self.location}/{rel}: cannot list the artifact root") from exc
        wanted: dict[str, int] = {}
        for path, info in found.items():
            relpath = path[len(self._remote_root) + 1 :]
            below = relpath[len(rel) + 1 :] if rel and relpath != rel else relpath
            if info.get("type") == "directory" or _skipped(relpath):
                continue
            if patterns and not any(fnmatch.fnmatch(below, p) for p in patterns):
                continue
            size = int(info.get("size", -1))
            if self._remote_sizes.get(relpath) != size or not self._unchanged(relpath):
                wanted[relpath] = size  # else pulled already (a folder's records, then the whole folder)
        return wanted

    def _check_pulled(self, relpath: str, size: int) -> None:
        """Check a downloaded file's size; map the root's URI in a record onto this copy."""
        local = self.root / relpath
        if not local.is_file() or (size >= 0 and local.stat().st_size != size):
            raise StorageError(
                f"{self.location}/{relpath}: expected {size} bytes, found "
                f"{local.stat().st_size if local.is_file() else 'no file'} after download"
            )
        if relpath.endswith(RECORD_SUFFIXES):
            remote_name, local_name = self.location.encode(), str(self.root).encode()
            data = local.read_bytes()
            if remote_name in data:
                local.write_bytes(data.replace(remote_name, local_name))
        self._snapshot[relpath] = _stat(local)
        self._remote_sizes[relpath] = size

    def reader(self, rel: str) -> Callable[[], dict | None]:
        """A function that reads the JSON record at `rel` from the root itself (None if absent)."""

        def read() -> dict | None:
            text = read_text(self.location, rel)
            return None if text is None else json.loads(text)

        return read

    def pull_records(self, rel: str) -> int:
        """Pull the small records (`*.json`, `*.jsonl`) under `rel`: manifests, histories, events."""
        return self.pull(rel, include=("*.json", "*.jsonl"))

    def cache_dir(self, pipeline: PipelineLayout) -> Path:
        """The pipeline's content cache; for a remote root, a folder of this worker's: its file
        hashes are keyed by local inodes, and its step pointers name local copies."""
        if not self.remote:
            return pipeline.cache
        key = hashlib.sha256(self.location.encode()).hexdigest()[:12]
        return self._scratch / "contrail-cache" / key / pipeline.pipeline

    def _unchanged(self, rel: str) -> bool:
        path = self.root / rel
        return path.is_file() and _stat(path) == self._snapshot.get(rel)

    def push(self) -> dict[str, int]:
        """Make the remote root hold what changed here since the pull, in commit order."""
        if not self.remote:
            return {"uploaded": 0, "deleted": 0}
        current = {
            str(p.relative_to(self.root)): _stat(p)
            for p in self.root.rglob("*")
            if p.is_file() and not _skipped(str(p.relative_to(self.root)))
        }
        changed = sorted(r for r, st in current.items() if self._snapshot.get(r) != st)
        removed = sorted(r for r in self._snapshot if r not in current)
        if not changed and not removed:
            return {"uploaded": 0, "deleted": 0}
        units = {posixpath.dirname(r) for r in [*current, *self._snapshot] if posixpath.basename(r) in COMMIT_MARKERS}

        def unit_of(rel: str) -> str | None:
            """The nearest folder above `rel` that holds (or held) a commit marker."""
            parent = posixpath.dirname(rel)
            while parent not in units:
                if not parent:
                    return None
                parent = posixpath.dirname(parent)
            return parent

        touched = {unit_of(r) for r in changed + removed} - {None}
        # 1. Uncommit every committed folder about to change, then 2. delete what is gone.
        stale_markers = {f"{u}/{m}" if u else m for u in touched for m in COMMIT_MARKERS} & set(self._snapshot)
        self._delete(sorted(stale_markers))
        self._delete([r for r in removed if r not in stale_markers])
        changed = sorted(set(changed) | (stale_markers & set(current)))  # recommit what stays
        # 3. Committed folders, deepest first, each marker after its files; 4. the rest.
        by_depth: dict[int, list[str]] = {}
        loose = []
        for rel in changed:
            unit = unit_of(rel)
            if unit is None:
                loose.append(rel)
            else:
                by_depth.setdefault(unit.count("/") + bool(unit), []).append(rel)
        for depth in sorted(by_depth, reverse=True):
            files = by_depth[depth]
            self._upload([r for r in files if posixpath.basename(r) not in COMMIT_MARKERS])
            self._upload([r for r in files if posixpath.basename(r) in COMMIT_MARKERS], records=True)
        self._upload(loose, records=True)
        self._snapshot = dict(current)
        for rel in changed + removed:
            self._remote_sizes.pop(rel, None)
        log.info("Pushed %d file(s), deleted %d, under %s", len(changed), len(removed), self.location)
        return {"uploaded": len(changed), "deleted": len(removed)}

    def _upload(self, rels: list[str], records: bool = False) -> None:
        """Send `rels`; with `records`, small text records go with this copy's folder named as
        the remote root."""
        if not rels:
            return
        local_name, remote_name = str(self.root).encode(), self.location.encode()
        try:
            plain = []
            for rel in rels:
                data = (self.root / rel).read_bytes() if records and rel.endswith(RECORD_SUFFIXES) else b""
                if local_name in data:
                    self.fs.pipe_file(self.remote_path(rel), data.replace(local_name, remote_name))
                else:
                    plain.append(rel)
            if plain:
                self.fs.put([str(self.root / r) for r in plain], [self.remote_path(r) for r in plain])
        except Exception as exc:  # broad: each fsspec backend raises its own types
            where = f"{self.location}: upload of {rels[0]} and {len(rels) - 1} more failed"
            raise translate(exc, StorageError, where) from exc

    def _delete(self, rels: list[str]) -> None:
        if not rels:
            return
        try:
            self.fs.rm([self.remote_path(r) for r in rels])
        except FileNotFoundError:
            pass
        except Exception as exc:  # broad: each fsspec backend raises its own types
            where = f"{self.location}: deleting {rels[0]} and {len(rels) - 1} more failed"
            raise translate(exc, StorageError, where) from exc
        for rel in rels:
            self._snapshot.pop(rel, None)


def rebase(value: Any, old: str, new: str) -> Any:
    """`value` (strings, lists, mappings) with every path under `old` moved under `new`."""
    if isinstance(value, str):
        if value == old:
            return new
        return new + value[len(old) :] if value.startswith(old + "/") else value
    if isinstance(value, Mapping):
        return {k: rebase(v, old, new) for k, v in value.items()}
    if isinstance(value, Sequence | Iterator) and not isinstance(value, bytes):
        return [rebase(v, old, new) for v in value]  # also Airflow's lazy XCom sequences
    return value
