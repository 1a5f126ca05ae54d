"""Operating a scheduled pipeline through a real Airflow: a CLI backfill over three dates, a
scheduled run and a manual REST run all at once, a rerun of one backfilled date, and the
model asset that starts a scoring-only DAG on each promotion.

One cluster (api-server, scheduler with LocalExecutor, dag-processor, PostgreSQL metadata)
serves the module; the
tests run in order and build on each other's runs, as an operator's day would.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from airflow_cluster import AirflowCluster
from tests_support import ROOT

from contrail import artifacts
from contrail.demo import write_penguins

pytestmark = pytest.mark.slow

DAG = "daily"
BACKFILL_DATES = ["2026-01-01", "2026-01-02", "2026-01-03"]


def _write_partitions(data: Path) -> dict[str, int]:
    """`daily/<ds>/part.parquet`: a third of the penguins (by row_id) per backfill date, so each
    partition has every island and species, and all of them for the dates a scheduled run may
    pick (yesterday and today, UTC)."""
    table = pa.concat_tables(pq.read_table(f) for f in sorted((data / "penguins").glob("*.parquet")))
    third = np.arange(table.num_rows) % 3
    rows = {}
    today = dt.datetime.now(dt.UTC).date()
    partitions = {d: third == i for i, d in enumerate(BACKFILL_DATES)}
    for day in (today - dt.timedelta(days=1), today):
        partitions[day.isoformat()] = None
    for ds, mask in partitions.items():
        part = table if mask is None else table.filter(mask)
        (data / "daily" / ds).mkdir(parents=True)
        pq.write_table(part, data / "daily" / ds / "part.parquet")
        rows[ds] = part.num_rows
    return rows


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("operations")
    write_penguins(home / "data")
    rows = _write_partitions(home / "data")
    specs = home / "pipelines"
    specs.mkdir()
    shutil.copy(ROOT / "dags" / "pipelines" / "penguins_model.py", specs)
    spec = yaml.safe_load((ROOT / "dags" / "pipelines" / "penguins.yaml").read_text())
    spec.update(name=DAG, schedule="@daily", catchup=False)
    spec["data"]["source"] = "{{ data_dir }}/daily/{{ ds }}/*.parquet"
    spec["train"].update(max_steps=150, eval_every_steps=50)
    spec["inference"]["on_promotion"] = True
    (specs / f"{DAG}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    # PostgreSQL: a CLI backfill writing while the scheduler and REST write is what SQLite's
    # single writer cannot take ("database is locked"); the embedded mode is for one user.
    with AirflowCluster(home, database="postgres", CONTRAIL_SPEC_DIR=str(specs)) as running:
        running.rows = rows
        running.wait_for_dag(DAG)
        running.wait_for_dag(f"{DAG}_inference")
        yield running


def _backfill(cluster: AirflowCluster, start: str, end: str, *extra: str) -> None:
    command = ["backfill", "create", "--dag-id", DAG, "--from-date", start, "--to-date", end, *extra]
    proc = subprocess.run(
        [sys.executable, "-m", "airflow", *command], env=cluster.env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _runs(cluster: AirflowCluster, dag_id: str) -> list[dict]:
    return cluster.api("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100}).json()["dag_runs"]


def _wait(predicate, timeout: float, what: str, cluster: AirflowCluster):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := predicate():
            return value
        cluster._check_alive()
        time.sleep(1)
    raise TimeoutError(f"waited {timeout}s for {what}\n{cluster.logs('scheduler')[-3000:]}")


def _pipeline_dir(cluster: AirflowCluster) -> Path:
    return cluster.home / "artifacts" / DAG


def _run_dir(cluster: AirflowCluster, run_id: str) -> Path:
    return _pipeline_dir(cluster) / "runs" / artifacts.run_key(run_id)


def _snapshot(directory: Path) -> dict[str, str]:
    """Every file's sha256 except the run's event log (it grows with each execution) and its
    report (a view, rebuilt with the time and the latest executions)."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != "report.html" and artifacts.EVENTS not in p.relative_to(directory).parts
    }


def test_backfill_scheduled_and_manual_runs_together(cluster):
    # Three backfilled dates, the scheduled run the scheduler creates for the latest interval,
    # and a manual REST run with conf, all of the same pipeline, all in flight at once.
    _backfill(cluster, BACKFILL_DATES[0], BACKFILL_DATES[-1], "--max-active-runs", "3")
    cluster.trigger(DAG, "manual-concurrent", conf={"max_steps": 100}, logical_date="2026-01-02T12:00:00Z")
    scheduled = _wait(
        lambda: [r for r in _runs(cluster, DAG) if r["run_type"] == "scheduled"], 120, "a scheduled run", cluster
    )
    backfill = _wait(
        lambda: (runs := [r for r in _runs(cluster, DAG) if r["run_type"] == "backfill"]) and len(runs) == 3 and runs,
        60,
        "three backfill runs",
        cluster,
    )
    runs = {r["dag_run_id"]: r for r in [*backfill, *scheduled]}
    runs["manual-concurrent"] = {"logical_date": "2026-01-02T12:00:00Z"}
    for run_id in runs:
        assert cluster.wait_for_run(DAG, run_id, timeout=900) == "success", run_id

    # Each run read its own date's partition and wrote under its own run key.
    keys = set()
    for run_id, run in runs.items():
        ds = run["logical_date"][:10]
        preprocess = artifacts.read_manifest(_run_dir(cluster, run_id) / "preprocess")
        sources = [Path(s) for s in preprocess["inputs"]]
        assert sources == [cluster.home / "data" / "daily" / ds / "part.parquet"], (run_id, sources)
        counts = preprocess["result"]["train_records"] + preprocess["result"]["eval_records"]
        assert counts == cluster.rows[ds], run_id
        keys.add(artifacts.run_key(run_id))
    assert len(keys) == len(runs) == 5
    backfill_ds = sorted(r["logical_date"][:10] for r in backfill)
    assert backfill_ds == BACKFILL_DATES

    # Concurrent exports: one version per run, and a production history with no lost update.
    models = _pipeline_dir(cluster) / "models"
    versions = sorted(int(p.name) for p in models.iterdir() if p.name.isdigit())
    assert versions == list(range(1, 6))
    exported = {artifacts.read_manifest(_run_dir(cluster, r) / "export")["result"]["version"] for r in runs}
    assert exported == set(versions)
    history = artifacts.read_json(models / "production.json")["history"]
    assert history[0]["previous_version"] is None
    assert all(b["previous_version"] == a["candidate_version"] for a, b in zip(history, history[1:], strict=False))
    # Nothing half-written in these runs or among the models (scoring runs may still be going).
    published = [_run_dir(cluster, r) for r in runs] + [models]
    leftovers = [p for d in published for p in d.rglob(".*") if p.name.startswith((".staging", ".trash"))]
    assert not leftovers


def test_rerunning_a_backfilled_date_reproduces_its_artifacts(cluster):
    run_id = "backfill__2026-01-02T00:00:00+00:00"
    run_dir = _run_dir(cluster, run_id)
    before = _snapshot(run_dir)
    executions = len(artifacts.read_events(run_dir))
    versions = sorted(p.name for p in (_pipeline_dir(cluster) / "models").iterdir())
    # One backfill per DAG at a time: the scheduler closes the first once its runs are done.
    _wait(
        lambda: all(
            b["completed_at"] for b in cluster.api("GET", "/backfills", params={"dag_id": DAG}).json()["backfills"]
        ),
        120,
        "the first backfill to complete",
        cluster,
    )
    _backfill(cluster, "2026-01-02", "2026-01-02", "--reprocess-behavior", "completed")
    _wait(lambda: len(artifacts.read_events(run_dir)) >= executions + 5, 600, "the rerun's five steps", cluster)
    assert cluster.wait_for_run(DAG, run_id) == "success"
    assert _snapshot(run_dir) == before
    rerun = artifacts.read_events(run_dir)[executions:]
    assert sorted(e["step"] for e in rerun) == sorted(["preprocess", "train", "select_best", "export", "inference"])
    assert all(e["reused"] for e in rerun), rerun
    assert sorted(p.name for p in (_pipeline_dir(cluster) / "models").iterdir()) == versions


def test_a_promotion_starts_the_scoring_dag_through_the_model_asset(cluster):
    def scored_versions() -> dict[str, int]:
        out = {}
        for run in _runs(cluster, f"{DAG}_inference"):
            if run["state"] == "success":
                assert run["run_type"] == "asset_triggered", run
                step = _pipeline_dir(cluster) / "runs" / artifacts.run_key(run["dag_run_id"]) / "inference"
                out[run["dag_run_id"]] = artifacts.read_manifest(step)["result"]["model_version"]
        return out

    promoted = {
        h["candidate_version"]
        for h in artifacts.read_json(_pipeline_dir(cluster) / "models" / "production.json")["history"]
    }
    _wait(lambda: scored_versions(), 300, "a scoring run after the backfill's promotions", cluster)
    assert set(scored_versions().values()) <= promoted

    # A forced promotion is a new model version: scoring follows with no one in between.
    cluster.trigger(DAG, "manual-forced", conf={"force_promote": True}, logical_date="2026-01-03T12:00:00Z")
    assert cluster.wait_for_run(DAG, "manual-forced") == "success"
    export = artifacts.read_manifest(_run_dir(cluster, "manual-forced") / "export")["result"]
    assert export["promoted"] and export["blessing"] == "forced"
    _wait(lambda: export["version"] in scored_versions().values(), 300, "scoring with the forced version", cluster)

    # The TFRecords asset has one event per preprocess success, each naming its run.
    (asset,) = cluster.api("GET", "/assets", params={"uri_pattern": f"x-contrail://{DAG}/tfrecords"}).json()["assets"]
    events = cluster.api("GET", "/assets/events", params={"asset_id": asset["id"], "limit": 100}).json()["asset_events"]
    assert {e["extra"]["run_id"] for e in events} >= {"manual-forced", "manual-concurrent"}


def test_a_data_source_matching_nothing_names_the_resolved_glob(cluster):
    run = cluster.trigger(DAG, "no-partition", logical_date="2026-02-01T00:00:00Z")
    assert cluster.wait_for_run(DAG, run["dag_run_id"]) == "failed"
    log = "".join(p.read_text() for p in (cluster.home / "logs").rglob("*.log") if "no-partition" in str(p))
    assert f"{cluster.home}/data/daily/2026-02-01/*.parquet" in log
