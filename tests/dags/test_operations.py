"""Operating a scheduled pipeline through a real Airflow: a CLI backfill over three dates, a
scheduled run and a manual REST run all at once, a rerun of one backfilled date, and the
model asset that starts a scoring-only DAG on each promotion.

One cluster (api-server, scheduler with LocalExecutor, dag-processor, PostgreSQL metadata)
serves the module. The busy day (the backfill, the scheduled run and the manual run) is a
module fixture that the tests which look at its runs ask for, so any test runs alone.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from airflow_cluster import AirflowCluster
from tests_support import ROOT, readme_commands, spec_variant, wait_until

from contrail import artifacts
from contrail.demo import DAILY_DATES, write_penguins, write_penguins_daily
from contrail.layout import STEPS, PipelineLayout, RunLayout

pytestmark = pytest.mark.slow

DAG = "penguins_daily"  # the shipped scheduled pipeline, on the partitions `contrail demo-data` writes
BACKFILL_DATES = list(DAILY_DATES[:3])
# The README's backfill commands, run as written: three dates, then one of them again.
BACKFILL, REPROCESS = [c for c in readme_commands() if " backfill create " in c]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("operations")
    write_penguins(home / "data")
    rows = write_penguins_daily(home / "data")
    specs = home / "pipelines"
    spec_variant(specs, {"train": {"max_steps": 150}, "inference": {"on_promotion": True}}, base=DAG)
    # PostgreSQL: a CLI backfill writing while the scheduler and REST write is what SQLite's
    # single writer cannot take ("database is locked"); the embedded mode is for one user.
    with AirflowCluster(home, database="postgres", CONTRAIL_SPEC_DIR=str(specs)) as running:
        running.rows = rows
        running.wait_for_dag(DAG)
        running.wait_for_dag(f"{DAG}_inference")
        yield running


def _backfill(cluster: AirflowCluster, command: str) -> None:
    """Run a README command in the project folder, against this cluster (scripts/env keeps the
    cluster's AIRFLOW_HOME, database and secret, which are already set)."""
    proc = subprocess.run(
        ["bash", "-c", command], cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _runs(cluster: AirflowCluster, dag_id: str) -> list[dict]:
    return cluster.api("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100}).json()["dag_runs"]


def _wait(predicate, timeout: float, what: str, cluster: AirflowCluster):
    return wait_until(
        predicate,
        timeout,
        what,
        interval=1,
        alive=cluster.check_alive,
        diagnose=lambda: cluster.logs("scheduler")[-3000:],
    )


def _asset_events(cluster: AirflowCluster, kind: str) -> list[tuple]:
    """The `x-contrail://<DAG>/<kind>` asset's events: (run_id, version or fingerprint) each."""
    (asset,) = cluster.api("GET", "/assets", params={"uri_pattern": f"x-contrail://{DAG}/{kind}"}).json()["assets"]
    events = cluster.api("GET", "/assets/events", params={"asset_id": asset["id"], "limit": 100}).json()
    return sorted(
        (e["extra"]["run_id"], e["extra"].get("version", e["extra"].get("fingerprint"))) for e in events["asset_events"]
    )


def _pipeline(cluster: AirflowCluster) -> PipelineLayout:
    return PipelineLayout(cluster.home / "artifacts", DAG)


def _run(cluster: AirflowCluster, run_id: str) -> RunLayout:
    return _pipeline(cluster).run(run_id)


def _snapshot(directory: Path) -> dict[str, str]:
    """Every file's sha256 except the run's event log (it grows with each execution) and its
    report (a view, rebuilt with the time and the latest executions)."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p != RunLayout(directory).report and not p.is_relative_to(RunLayout(directory).events)
    }


@pytest.fixture(scope="module")
def busy_day(cluster) -> dict:
    """The scheduled run the scheduler creates for the latest interval (the pipeline's first),
    then three backfilled dates and a manual REST run with conf, all of the same pipeline, all
    in flight at once; returns the runs (by run id), the backfill's runs, and the state each run
    finished in.

    The scheduled run goes first because of an Airflow 3.3 race: the first events two tasks emit
    at once through a new asset alias both insert its alias-asset row, and the loser is marked
    failed without a retry (UniqueViolation on asset_alias_asset_pkey). A pipeline's first run
    announces its TFRecords alone; from then on, concurrent announcements are safe."""
    scheduled = _wait(
        lambda: [r for r in _runs(cluster, DAG) if r["run_type"] == "scheduled"], 120, "a scheduled run", cluster
    )
    first = cluster.wait_for_run(DAG, scheduled[0]["dag_run_id"], timeout=900)
    assert f"--from-date {BACKFILL_DATES[0]} --to-date {BACKFILL_DATES[-1]}" in BACKFILL
    _backfill(cluster, BACKFILL)
    cluster.trigger(DAG, "manual-concurrent", conf={"max_steps": 100}, logical_date="2026-01-02T12:00:00Z")
    backfill = _wait(
        lambda: (runs := [r for r in _runs(cluster, DAG) if r["run_type"] == "backfill"]) and len(runs) == 3 and runs,
        60,
        "three backfill runs",
        cluster,
    )
    runs = {r["dag_run_id"]: r for r in [*backfill, *scheduled]}
    runs["manual-concurrent"] = {"logical_date": "2026-01-02T12:00:00Z"}
    states = {run_id: cluster.wait_for_run(DAG, run_id, timeout=900) for run_id in runs}
    return {"runs": runs, "backfill": backfill, "states": {**states, scheduled[0]["dag_run_id"]: first}}


def test_backfill_scheduled_and_manual_runs_together(cluster, busy_day):
    runs, backfill = busy_day["runs"], busy_day["backfill"]
    assert busy_day["states"] == dict.fromkeys(runs, "success")

    # Each run read its own date's partition and wrote under its own run key.
    keys = set()
    for run_id, run in runs.items():
        ds = run["logical_date"][:10]
        preprocess = artifacts.read_manifest(_run(cluster, run_id).preprocess.path)
        sources = [Path(s) for s in preprocess["inputs"]]
        assert sources == [cluster.home / "data" / DAG / ds / "part-00000.parquet"], (run_id, sources)
        counts = preprocess["result"]["train_records"] + preprocess["result"]["eval_records"]
        assert counts == cluster.rows[ds], run_id
        keys.add(_run(cluster, run_id).key)
    assert len(keys) == len(runs) == 5
    backfill_ds = sorted(r["logical_date"][:10] for r in backfill)
    assert backfill_ds == BACKFILL_DATES

    # Concurrent exports: one version per run, and a production history with no lost update.
    models = _pipeline(cluster).models
    versions = models.versions()
    assert versions == list(range(1, 6))
    exported = {artifacts.read_manifest(_run(cluster, r).export.path)["result"]["version"] for r in runs}
    assert exported == set(versions)
    history = artifacts.read_json(models.production)["history"]
    assert history[0]["previous_version"] is None
    assert all(b["previous_version"] == a["candidate_version"] for a, b in zip(history, history[1:], strict=False))
    # Nothing half-written in these runs or among the models (scoring runs may still be going).
    published = [_run(cluster, r).path for r in runs] + [models.path]
    leftovers = [p for d in published for p in d.rglob(".*") if p.name.startswith((".staging", ".trash"))]
    assert not leftovers


def test_rerunning_a_backfilled_date_reproduces_its_artifacts(cluster, busy_day):
    run_id = "backfill__2026-01-02T00:00:00+00:00"
    run = _run(cluster, run_id)
    before = _snapshot(run.path)
    executions = len(artifacts.read_events(run.events))
    versions = sorted(p.name for p in _pipeline(cluster).models.path.iterdir())
    announced = {kind: _asset_events(cluster, kind) for kind in ("model", "tfrecords")}
    scoring_runs = len(_runs(cluster, f"{DAG}_inference"))
    # One backfill per DAG at a time: the scheduler closes the first once its runs are done.
    _wait(
        lambda: all(
            b["completed_at"] for b in cluster.api("GET", "/backfills", params={"dag_id": DAG}).json()["backfills"]
        ),
        120,
        "the first backfill to complete",
        cluster,
    )
    assert "--from-date 2026-01-02 --to-date 2026-01-02 --reprocess-behavior completed" in REPROCESS
    _backfill(cluster, REPROCESS)
    _wait(lambda: len(artifacts.read_events(run.events)) >= executions + 5, 600, "the rerun's five steps", cluster)
    assert cluster.wait_for_run(DAG, run_id) == "success"
    assert _snapshot(run.path) == before
    rerun = artifacts.read_events(run.events)[executions:]
    assert sorted(e["step"] for e in rerun) == sorted(STEPS)
    assert all(e["reused"] for e in rerun), rerun
    assert sorted(p.name for p in _pipeline(cluster).models.path.iterdir()) == versions
    # A rerun that reused everything announces nothing: no asset event, so no scoring run.
    assert {kind: _asset_events(cluster, kind) for kind in ("model", "tfrecords")} == announced
    assert len(_runs(cluster, f"{DAG}_inference")) == scoring_runs


def test_a_promotion_starts_the_scoring_dag_through_the_model_asset(cluster, busy_day):
    def scored_versions() -> dict[str, int]:
        out = {}
        for run in _runs(cluster, f"{DAG}_inference"):
            if run["state"] == "success":
                assert run["run_type"] == "asset_triggered", run
                step = _run(cluster, run["dag_run_id"]).inference.path
                out[run["dag_run_id"]] = artifacts.read_manifest(step)["result"]["model_version"]
        return out

    promoted = {h["candidate_version"] for h in artifacts.read_json(_pipeline(cluster).models.production)["history"]}
    _wait(lambda: scored_versions(), 300, "a scoring run after the backfill's promotions", cluster)
    assert set(scored_versions().values()) <= promoted

    # A forced promotion is a new model version: scoring follows with no one in between.
    cluster.trigger(DAG, "manual-forced", conf={"force_promote": True}, logical_date="2026-01-03T12:00:00Z")
    assert cluster.wait_for_run(DAG, "manual-forced") == "success"
    export = artifacts.read_manifest(_run(cluster, "manual-forced").export.path)["result"]
    assert export["promoted"] and export["decision"] == "forced"
    _wait(lambda: export["version"] in scored_versions().values(), 300, "scoring with the forced version", cluster)

    # The TFRecords asset has one event per preprocess success, each naming its run.
    (asset,) = cluster.api("GET", "/assets", params={"uri_pattern": f"x-contrail://{DAG}/tfrecords"}).json()["assets"]
    events = cluster.api("GET", "/assets/events", params={"asset_id": asset["id"], "limit": 100}).json()["asset_events"]
    assert {e["extra"]["run_id"] for e in events} >= {"manual-forced", "manual-concurrent"}


def test_a_data_source_matching_nothing_names_the_resolved_glob(cluster):
    run = cluster.trigger(DAG, "no-partition", logical_date="2026-02-01T00:00:00Z")
    assert cluster.wait_for_run(DAG, run["dag_run_id"]) == "failed"
    # Bad input fails the same way every time: one try, no retry spent (the spec has retries: 1).
    tries = cluster.task_tries(DAG, run["dag_run_id"], "preprocess")
    assert [t["state"] for t in tries] == ["failed"], tries
    log = "".join(p.read_text() for p in (cluster.home / "logs").rglob("*.log") if "no-partition" in str(p))
    assert f"{cluster.home}/data/{DAG}/2026-02-01/*.parquet" in log
