"""Contrail under a real Airflow: api-server, scheduler (LocalExecutor) and dag-processor.

Runs are triggered over the REST API with auth, and executed by the scheduler in task
processes, so a SIGKILL of the training process is a real task failure and the retry is a
real Airflow retry.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from airflow_cluster import AirflowCluster
from tests_support import PIPELINES, ROOT, SLOW_TRAINING, spec_variant, wait_until

from contrail import artifacts
from contrail.demo import write_penguins
from contrail.history import read_history
from contrail.layout import PipelineLayout, RunLayout, TrainDir

pytestmark = pytest.mark.slow


EVENTS = "s3://events/penguins"  # what the upstream ETL DAG announces when it has written new data
PRODUCER = f"""
import datetime as dt
from airflow.sdk import DAG, Asset, task

with DAG("events_etl", schedule=None, start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), catchup=False):
    @task(outlets=[Asset("{EVENTS}")])
    def publish():
        return "new data"

    publish()
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("cluster")
    write_penguins(home / "data")
    specs = home / "pipelines"
    shutil.copytree(PIPELINES, specs)
    # A slower variant for the kill test: many short evaluation rounds, so a kill lands mid-run.
    spec_variant(specs, SLOW_TRAINING, name="penguins_slow")
    # Retrained whenever the upstream ETL DAG (below) updates its asset; short training.
    spec_variant(specs, {"schedule": {"assets": [EVENTS]}, "train": {"max_steps": 50}}, name="on_events")
    # The DAG folder: Contrail's DAG file beside a plain Airflow DAG that produces the asset.
    dags = home / "dags"
    dags.mkdir()
    (dags / "contrail_dags.py").symlink_to(ROOT / "dags" / "contrail_dags.py")
    (dags / "events_etl.py").write_text(PRODUCER)
    failpoints = home / "failpoints"
    failpoints.mkdir()
    with AirflowCluster(
        home,
        CONTRAIL_SPEC_DIR=str(specs),
        CONTRAIL_FAILPOINTS_DIR=str(failpoints),
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
    ) as running:
        running.failpoints = failpoints
        running.wait_for_dag("penguins_slow")
        running.wait_for_dag("events_etl")
        yield running


def _run(cluster: AirflowCluster, dag_id: str, run_id: str) -> RunLayout:
    return PipelineLayout(cluster.home / "artifacts", dag_id).run(run_id)


@pytest.fixture(scope="module")
def checkpoint_kill_run(cluster) -> str:
    """A penguins run whose training is killed in the middle of its third checkpoint write."""
    run_id = "kill-in-checkpoint"
    (cluster.failpoints / "train.checkpoint_write.3").touch()
    cluster.trigger("penguins", run_id)
    assert cluster.wait_for_run("penguins", run_id) == "success"
    return run_id


def _reference_history(cluster: AirflowCluster, dag_id: str, run_id: str, tmp_path: Path) -> list[dict]:
    """The same training, uninterrupted, in a fresh process."""
    preprocess = artifacts.read_manifest(_run(cluster, dag_id, run_id).preprocess.path)["result"]
    args = {
        "spec_path": cluster.env["CONTRAIL_SPEC_DIR"] + f"/{dag_id}.yaml",
        "preprocess": preprocess,
        "step_dir": str(tmp_path / "reference"),
    }
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "run_train.py"), json.dumps(args)],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return read_history(TrainDir(tmp_path / "reference").history)


def _comparable(history):
    return [(r["eval_index"], r["step"], r["metrics"], r["best"], r["wait"]) for r in history]


def test_sigkill_of_the_training_process_is_retried_and_resumes(cluster, tmp_path):
    run_id = "kill-midway"
    cluster.trigger("penguins_slow", run_id)
    train_dir = _run(cluster, "penguins_slow", run_id).train
    wait_until(
        lambda: train_dir.history.is_file() and len(train_dir.history.read_text().splitlines()) >= 3,
        300,
        "training to reach its third evaluation",
        interval=0.05,
    )
    pid = json.loads(train_dir.running.read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    killed_at = len(read_history(train_dir.history))
    assert cluster.wait_for_run("penguins_slow", run_id) == "success"
    tries = cluster.task_tries("penguins_slow", run_id, "train")
    assert [t["state"] for t in tries] == ["failed", "success"], tries
    final = read_history(train_dir.history)
    assert killed_at < len(final), "the kill landed before training finished"
    assert [r["eval_index"] for r in final] == list(range(1, len(final) + 1))
    reference = _reference_history(cluster, "penguins_slow", run_id, tmp_path)
    assert _comparable(final) == _comparable(reference)  # same stopping evaluation; tolerance 0
    manifest = artifacts.read_manifest(train_dir.path)
    assert manifest["result"]["stop_reason"] == "early_stopping"
    assert manifest["result"]["best_value"] == reference[-1]["best"]  # the early-stopping best carried over


def test_kill_during_a_checkpoint_write_falls_back_to_the_previous_one(cluster, checkpoint_kill_run, tmp_path):
    run_id = checkpoint_kill_run
    assert not (cluster.failpoints / "train.checkpoint_write.3").exists(), "the failpoint fired"
    tries = cluster.task_tries("penguins", run_id, "train")
    assert [t["state"] for t in tries] == ["failed", "success"]
    train_dir = _run(cluster, "penguins", run_id).train
    log = "".join(p.read_text() for p in (cluster.home / "logs").rglob("*.log") if "train" in str(p))
    assert "Resumed from" in log and "ckpt-00002" in log
    final = read_history(train_dir.history)
    assert _comparable(final) == _comparable(_reference_history(cluster, "penguins", run_id, tmp_path))


def test_rest_requires_auth_and_a_viewer_cannot_trigger(cluster):
    anonymous = httpx.post(f"{cluster.base}/api/v2/dags/penguins/dagRuns", json={"logical_date": None}, timeout=10)
    assert anonymous.status_code == 401
    viewer = cluster.api("POST", "/dags/penguins/dagRuns", user="viewer", json={"logical_date": None})
    assert viewer.status_code == 403
    invalid = cluster.api("POST", "/dags/penguins/dagRuns", json={"logical_date": None, "conf": {"max_steps": 0}})
    assert invalid.status_code == 400  # the Param's minimum is 1


def test_the_run_report_link_opens_the_report_through_the_api_server(cluster, checkpoint_kill_run):
    run_id = checkpoint_kill_run
    for task_id in ("train", "export"):
        links = cluster.api("GET", f"/dags/penguins/dagRuns/{run_id}/taskInstances/{task_id}/links").json()
        url = links["extra_links"]["Run report"]
        assert url == f"{cluster.base}/contrail/reports/penguins/{run_id}", links
    token = cluster.token("viewer", "viewer")  # reading a run's report needs only read access
    page = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<title>Contrail run report: penguins / kill-in-checkpoint</title>" in page.text
    assert 'id="decision"' in page.text
    assert httpx.get(url, timeout=30).status_code == 401  # no credentials, no report
    missing = httpx.get(
        f"{cluster.base}/contrail/reports/penguins/no-such-run",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert missing.status_code == 404 and "has no report yet" in missing.text


def test_an_upstream_asset_update_starts_a_retraining_run(cluster):
    """`schedule: {assets: [...]}`: the producer DAG's outlet event starts the pipeline."""
    cluster.trigger("events_etl", "etl-1")
    assert cluster.wait_for_run("events_etl", "etl-1") == "success"
    runs = wait_until(
        lambda: cluster.api("GET", "/dags/on_events/dagRuns").json()["dag_runs"],
        120,
        "the asset event to start a run of on_events",
        interval=1,
    )
    (run,) = runs
    assert run["run_type"] == "asset_triggered"
    assert cluster.wait_for_run("on_events", run["dag_run_id"]) == "success"
    manifest = artifacts.read_manifest(_run(cluster, "on_events", run["dag_run_id"]).train.path)
    assert manifest["result"]["final_step"] <= 50
