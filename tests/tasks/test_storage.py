"""The remote workspace against a real S3 endpoint (moto's server over HTTP, through s3fs)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from contrail import artifacts, storage
from contrail.errors import StorageError


def _committed_step(step_dir: Path, files: dict[str, bytes]) -> None:
    with artifacts.staged_dir(step_dir) as staging:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        artifacts.write_manifest(
            staging,
            step="demo",
            fingerprint_="fp",
            inputs={},
            outputs=artifacts.describe_outputs(staging, sorted(files)),
            result={"step_dir": str(step_dir), "files": [str(step_dir / n) for n in sorted(files)]},
            started=time.time(),
        )


def _order(ws: storage.Workspace) -> list[tuple[str, list[str]]]:
    """Record every upload and delete the workspace makes, in order, as paths below the root."""
    calls: list[tuple[str, list[str]]] = []
    put, pipe, rm = ws.fs.put, ws.fs.pipe_file, ws.fs.rm
    cut = len(ws.remote_path("")) + 1

    def recording_pipe(rpath, data, **kw):
        calls.append(("put", [rpath[cut:]]))
        return pipe(rpath, data, **kw)

    def recording_put(lpaths, rpaths, **kw):
        calls.append(("put", [r[cut:] for r in rpaths]))
        return put(lpaths, rpaths, **kw)

    def recording_rm(paths, **kw):
        calls.append(("rm", [p[cut:] for p in paths]))
        return rm(paths, **kw)

    ws.fs.put, ws.fs.pipe_file, ws.fs.rm = recording_put, recording_pipe, recording_rm
    return calls


def test_a_local_root_is_used_in_place(tmp_path):
    ws = storage.Workspace(str(tmp_path))
    assert ws.root == tmp_path.resolve() and not ws.remote
    assert ws.pull("anything") == 0 and ws.push() == {"uploaded": 0, "deleted": 0}
    assert ws.to_remote({"a": str(tmp_path / "x")}) == {"a": str(tmp_path / "x")}
    assert storage.Workspace(f"file://{tmp_path}").root == tmp_path.resolve()


def test_a_step_round_trips_through_s3_with_paths_as_uris(s3, tmp_path):
    uri = f"s3://{s3.new_bucket()}/artifacts"
    with storage.Workspace(uri, scratch=tmp_path) as ws:
        step = ws.root / "p" / "runs" / "r1" / "preprocess"
        _committed_step(step, {"a.bin": b"x" * 1000, "b.json": b"{}"})
        result = ws.to_remote(artifacts.read_manifest(step)["result"])
        assert ws.push() == {"uploaded": 3, "deleted": 0}
        assert ws.push() == {"uploaded": 0, "deleted": 0}  # nothing changed since
        local_copy = ws._tmp
    assert not local_copy.exists()  # the copy goes with the task
    assert result == {
        "step_dir": f"{uri}/p/runs/r1/preprocess",
        "files": [f"{uri}/p/runs/r1/preprocess/{n}" for n in ("a.bin", "b.json")],
    }

    # The records name the remote root, never the folder of the worker that wrote them.
    remote_manifest = json.loads(s3.filesystem().cat_file(f"{uri}/p/runs/r1/preprocess/manifest.json"))
    assert remote_manifest["result"] == result

    with storage.Workspace(uri, scratch=tmp_path) as other:
        local = other.to_local(result)
        assert local["step_dir"] == str(other.root / "p/runs/r1/preprocess")
        assert other.pull("p/runs/r1", include=["*.json"]) == 2  # manifest and b.json only
        assert not Path(local["files"][0]).exists()
        assert other.pull("p/runs/r1/preprocess") == 1  # the two records it has are not copied again
        assert Path(local["files"][0]).read_bytes() == b"x" * 1000
        reused = artifacts.reusable_result(Path(local["step_dir"]), "fp")
        assert reused is not None and reused["files"] == local["files"]
        assert other.push() == {"uploaded": 0, "deleted": 0}  # what was pulled is not sent back


def test_markers_go_last_and_pointers_after_what_they_point_to(s3, tmp_path):
    uri = f"s3://{s3.new_bucket()}/root"
    with storage.Workspace(uri, scratch=tmp_path) as ws:
        calls = _order(ws)
        ckpt = ws.root / "train" / "checkpoints" / "ckpt-00001"
        ckpt.mkdir(parents=True)
        (ckpt / "weights.data").write_bytes(b"w" * 100)
        (ckpt / "state.json").write_text("{}")
        (ws.root / "train" / "history.jsonl").write_text("{}\n")
        artifacts.write_manifest(
            ws.root / "train", step="train", fingerprint_="fp", inputs={}, outputs=[], result={}, started=0.0
        )
        (ws.root / "production.json").write_text('{"version": 1}')
        ws.push()
    uploaded = [path for kind, paths in calls if kind == "put" for path in paths]
    assert uploaded.index("train/checkpoints/ckpt-00001/weights.data") < uploaded.index(
        "train/checkpoints/ckpt-00001/state.json"
    )
    assert uploaded.index("train/history.jsonl") < uploaded.index("train/manifest.json")
    assert uploaded.index("train/checkpoints/ckpt-00001/state.json") < uploaded.index("train/manifest.json")
    assert uploaded[-1] == "production.json"


def test_changing_a_committed_folder_uncommits_it_first_and_deletions_follow(s3, tmp_path):
    uri = f"s3://{s3.new_bucket()}/root"
    fs = s3.filesystem()
    with storage.Workspace(uri, scratch=tmp_path) as ws:
        for i in (1, 2):
            ckpt = ws.root / "ckpts" / f"ckpt-{i}"
            ckpt.mkdir(parents=True)
            (ckpt / "data").write_bytes(bytes([i]) * 10)
            (ckpt / "state.json").write_text(json.dumps({"i": i}))
        _committed_step(ws.root / "step", {"out.bin": b"old"})
        ws.push()
    with storage.Workspace(uri, scratch=tmp_path) as ws:
        ws.pull("")
        calls = _order(ws)
        import shutil

        shutil.rmtree(ws.root / "ckpts" / "ckpt-1")  # retired
        _committed_step(ws.root / "step", {"out.bin": b"new!"})  # republished
        ws.push()
    kinds = [(kind, paths) for kind, paths in calls]
    # Both touched folders are uncommitted before anything else changes, then the rest goes.
    assert kinds[0] == ("rm", ["ckpts/ckpt-1/state.json", "step/manifest.json"])
    assert kinds[1] == ("rm", ["ckpts/ckpt-1/data"])
    assert kinds[-1] == ("put", ["step/manifest.json"])
    assert not fs.exists(f"{uri}/ckpts/ckpt-1/data") and fs.exists(f"{uri}/ckpts/ckpt-2/state.json")
    assert fs.cat_file(f"{uri}/step/out.bin") == b"new!"


def test_an_interrupted_push_leaves_nothing_a_reader_would_take_as_committed(s3, tmp_path, monkeypatch):
    uri = f"s3://{s3.new_bucket()}/root"
    with storage.Workspace(uri, scratch=tmp_path) as ws:
        _committed_step(ws.root / "step", {"big.bin": b"b" * 5000})
        real_upload = ws._upload
        uploads = []

        def dies_before_the_marker(rels, records=False):
            uploads.append(rels)
            if any(r.endswith("manifest.json") for r in rels):
                raise StorageError("network gone")
            real_upload(rels, records)

        monkeypatch.setattr(ws, "_upload", dies_before_the_marker)
        with pytest.raises(StorageError, match="network gone"):
            ws.push()
    with storage.Workspace(uri, scratch=tmp_path) as reader:
        assert reader.pull("step") == 1  # the data arrived, its marker did not
        assert artifacts.reusable_result(reader.root / "step", "fp") is None


def test_bad_storage_options_name_the_variable(monkeypatch):
    monkeypatch.setenv("CONTRAIL_STORAGE_OPTIONS", "{not json")
    with pytest.raises(StorageError, match=r"CONTRAIL_STORAGE_OPTIONS: expected a JSON object, found '\{not json'"):
        storage.Workspace("s3://bucket/root")
    monkeypatch.setenv("CONTRAIL_STORAGE_OPTIONS", "[1]")
    with pytest.raises(StorageError, match="expected a JSON object, found list"):
        storage.Workspace("s3://bucket/root")


def test_an_unknown_scheme_says_which_package_is_missing():
    with pytest.raises(StorageError, match=r"CONTRAIL_ARTIFACT_ROOT='nosuchfs://x/y': no fsspec file system"):
        storage.Workspace("nosuchfs://x/y")


def test_a_missing_bucket_is_named(s3, tmp_path):
    with storage.Workspace("s3://contrail-no-such-bucket/root", scratch=tmp_path) as ws:
        assert ws.pull("runs") == 0  # nothing there yet is not an error
        (ws.root / "f.txt").write_text("x")
        with pytest.raises(StorageError, match=r"s3://contrail-no-such-bucket/root: upload of f.txt .*failed"):
            ws.push()


def test_a_dead_tasks_copy_is_removed_by_the_next_task(s3, tmp_path):
    abandoned = tmp_path / f"{storage.WORKSPACE_PREFIX}999999999-x"  # above any pid_max: no such process
    abandoned.mkdir()
    with storage.Workspace(f"s3://{s3.new_bucket()}/r", scratch=tmp_path) as ws:
        alive = ws._tmp
        assert not abandoned.exists()
        with storage.Workspace(f"s3://{s3.new_bucket()}/r", scratch=tmp_path):
            assert alive.exists()  # ours: this pid is alive
