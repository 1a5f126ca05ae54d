"""The artifact root on S3: the demo pipeline through a real scheduler (LocalExecutor), with
`CONTRAIL_ARTIFACT_ROOT=s3://<bucket>/artifacts` on moto's S3 server over HTTP, and the data to
train on and to score read from `s3://<bucket>/data/`.

Nothing is shared between tasks but the bucket: each task works in its own scratch copy, so
this is the object-store path of a Celery deployment whose workers share no disk. The spec
fans preprocess out over two parts and scores in two mapped parts, and the training process
is killed (SIGKILL, at a failpoint) before its third evaluation: the retry must resume from
the checkpoints in the bucket.
"""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pyarrow.parquet as pq
import pytest
from airflow_cluster import AirflowCluster
from tests_support import saved_model_check, spec_variant

from contrail.demo import write_penguins
from contrail.layout import run_rel

pytestmark = pytest.mark.slow
RUN_ID = "s3-run"
STEPS = ("preprocess", "train", "select_best", "export")


@pytest.fixture(scope="module")
def run(tmp_path_factory, s3_server):
    home = tmp_path_factory.mktemp("s3cluster")
    write_penguins(home / "data")
    # The data is in the bucket too: data.source and inference.source are s3:// globs.
    bucket = s3_server.new_bucket()
    fs = s3_server.filesystem()
    for folder in ("penguins", "penguins_to_score"):
        for path in sorted((home / "data" / folder).iterdir()):
            fs.put_file(str(path), f"{bucket}/data/{folder}/{path.name}")
    specs = home / "pipelines"
    spec_variant(
        specs,
        {
            "data": {"parallelism": 2, "source": f"s3://{bucket}/data/penguins/*.parquet"},
            "inference": {"parallelism": 2, "source": f"s3://{bucket}/data/penguins_to_score/*.parquet"},
        },
    )
    failpoints = home / "failpoints"
    failpoints.mkdir()
    (failpoints / "train.before_eval.3").touch()
    uri = f"s3://{bucket}/artifacts"
    with AirflowCluster(
        home,
        CONTRAIL_SPEC_DIR=str(specs),
        CONTRAIL_FAILPOINTS_DIR=str(failpoints),
        CONTRAIL_ARTIFACT_ROOT=uri,
        CONTRAIL_SCRATCH_DIR=str(home / "scratch"),
        **s3_server.env,
    ) as cluster:
        cluster.wait_for_dag("penguins")
        cluster.trigger("penguins", RUN_ID)
        state = cluster.wait_for_run("penguins", RUN_ID)
        assert state == "success", cluster.logs("scheduler")[-3000:]
        run_uri = f"{uri}/{run_rel('penguins', RUN_ID)}"
        yield {
            "cluster": cluster,
            "fs": fs,
            "uri": uri,
            "run": run_uri,
            "home": home,
            "manifests": {s: json.loads(fs.cat_file(f"{run_uri}/{s}/manifest.json")) for s in STEPS},
        }


def _xcom(cluster: AirflowCluster, task_id: str, map_index: int = -1):
    path = f"/dags/penguins/dagRuns/{RUN_ID}/taskInstances/{task_id}/xcomEntries/return_value"
    response = cluster.api("GET", path, params={"map_index": map_index, "deserialize": True})
    assert response.status_code == 200, response.text
    return response.json()["value"]


def test_every_output_is_in_the_bucket_and_none_on_local_disk(run):
    fs, uri = run["fs"], run["uri"]
    assert fs.exists(f"{uri}/penguins/models/1/saved_model.pb")
    production = json.loads(fs.cat_file(f"{uri}/penguins/models/production.json"))
    assert production["version"] == 1 and production["path"] == f"{uri}/penguins/models/1"
    # The XComs are URIs in the bucket: a task on any machine can find them.
    export = _xcom(run["cluster"], "export")
    assert export["model_dir"] == f"{uri}/penguins/models/1"
    assert all(p.startswith(f"{run['run']}/preprocess/") for p in _xcom(run["cluster"], "preprocess")["train_files"])
    assert not (run["home"] / "artifacts").exists()
    assert not list((run["home"] / "scratch").glob("contrail-workspace-*"))  # each task removed its copy


def test_records_in_the_bucket_name_it_never_a_workers_folder(run):
    fs = run["fs"]
    records = [p for p in fs.find(run["uri"]) if p.endswith((".json", ".jsonl", ".html"))]
    assert len(records) > 20
    naming_a_copy = [p for p in records if str(run["home"] / "scratch") in fs.cat_file(p).decode()]
    assert naming_a_copy == []
    manifest = run["manifests"]["preprocess"]
    assert manifest["result"]["step_dir"] == f"{run['run']}/preprocess"


def test_killed_training_resumed_from_the_checkpoints_in_the_bucket(run):
    cluster = run["cluster"]
    tries = cluster.task_tries("penguins", RUN_ID, "train")
    assert [t["state"] for t in tries] == ["failed", "success"], tries
    log = "".join(p.read_text() for p in (run["home"] / "logs").rglob("*.log") if "task_id=train" in str(p))
    assert "Resumed from" in log and "ckpt-00002" in log
    history = [json.loads(line) for line in run["fs"].cat_file(f"{run['run']}/train/history.jsonl").splitlines()]
    assert [r["eval_index"] for r in history] == list(range(1, len(history) + 1))  # no gap, no duplicate
    assert len(history) > 3
    assert run["manifests"]["train"]["result"]["evaluations"] == len(history)


def test_fanned_out_parts_went_through_the_bucket(run):
    cluster = run["cluster"]
    parts = cluster.api("GET", f"/dags/penguins/dagRuns/{RUN_ID}/taskInstances", params={"task_id": "preprocess_part"})
    states = [ti["state"] for ti in parts.json()["task_instances"] if ti["task_id"] == "preprocess_part"]
    assert states == ["success", "success"]
    assert not run["fs"].exists(f"{run['run']}/preprocess-parts")  # the reduce removed them
    assert run["manifests"]["preprocess"]["result"]["input_rows"] == 344
    # Read from the bucket, each object known by its ETag (no download to fingerprint it).
    inputs = run["manifests"]["preprocess"]["inputs"]
    assert inputs and all(k.startswith("s3://") and "/data/penguins/" in k and v["tag"] for k, v in inputs.items())
    assert len(run["fs"].glob(f"{run['run']}/inference/part-*-of-002/manifest.json")) == 2
    predictions = run["fs"].glob(f"{run['run']}/inference/part-*-of-002/*.parquet")
    table = pq.ParquetDataset(predictions, filesystem=run["fs"]).read()
    assert table.num_rows == 344 and set(table.column("model_version").to_pylist()) == {1}


def test_the_model_in_the_bucket_loads_in_a_fresh_process(run, tmp_path):
    fs = run["fs"]
    fs.get(f"{run['uri']}/penguins/models/1", str(tmp_path / "model"), recursive=True)
    eval_files = []
    for path in fs.glob(f"{run['run']}/preprocess/eval-*"):
        fs.get(path, str(tmp_path / path.rsplit("/", 1)[1]))
        eval_files.append(str(tmp_path / path.rsplit("/", 1)[1]))
    report = saved_model_check(tmp_path / "model", eval_files)
    assert report["signatures"] == ["predict", "serving_default"] and report["max_abs_diff"] <= 1e-6
    assert report["rows"] == run["manifests"]["preprocess"]["result"]["eval_records"]


def test_the_api_server_serves_the_report_from_the_bucket(run):
    cluster = run["cluster"]
    token = cluster.token("viewer", "viewer")
    page = httpx.get(
        f"{cluster.base}/contrail/reports/penguins/{RUN_ID}", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert page.status_code == 200, page.text
    assert f"<title>Contrail run report: penguins / {RUN_ID}</title>" in page.text


def test_a_cleared_run_reuses_every_step_from_the_bucket(run):
    cluster, fs = run["cluster"], run["fs"]
    before = len(fs.find(f"{run['run']}/events"))
    body = {"dag_run_id": RUN_ID, "dry_run": False, "only_failed": False, "reset_dag_runs": True}
    response = cluster.api("POST", "/dags/penguins/clearTaskInstances", json=body)
    assert response.status_code == 200, response.text
    assert cluster.wait_for_run("penguins", RUN_ID) == "success"
    events = [json.loads(fs.cat_file(p)) for p in sorted(fs.find(f"{run['run']}/events"))][before:]
    assert sorted(e["step"] for e in events) == sorted(
        ["preprocess", "train", "select_best", "export", "inference", "inference"]
    )
    assert all(e["reused"] for e in events), events
    versions = {p.rsplit("/", 2)[-2] for p in fs.glob(f"{run['uri']}/penguins/models/*/contrail.json")}
    assert versions == {"1"}  # nothing published twice


def test_the_summary_command_reads_the_run_from_the_bucket(run, tmp_path):
    out = tmp_path / "summary.json"
    env = {**run["cluster"].env}
    proc = subprocess.run(
        [sys.executable, "-m", "contrail.cli", "summary", "penguins", RUN_ID, "--output", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["model"] == {"dir": f"{run['uri']}/penguins/models/1", "version": 1}
    assert summary["predictions"]["rows"] == 344
    assert all(p.startswith(run["run"]) for p in summary["predictions"]["paths"])
    assert f"export       version 1 at {run['uri']}/penguins/models/1" in proc.stdout
