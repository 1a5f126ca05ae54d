"""The scale-out mode for real: CeleryExecutor on the machine's Redis, metadata on its PostgreSQL,
two `airflow celery worker` processes beside a scheduler, a dag-processor and an api-server.

The module creates and drops its own database, uses its own Redis database number (flushed
before and after), and stops every process it started. Each worker runs from its own private
folder (cwd, HOME and TMPDIR: its "local disk"); the artifact root is a separate folder given as a
`file://` URI, standing in for the shared storage every worker mounts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from airflow_cluster import AirflowCluster
from tests_support import SLOW_TRAINING, spec_variant, wait_until

from contrail import artifacts
from contrail.demo import write_penguins
from contrail.history import read_history
from contrail.layout import PipelineLayout

pytestmark = pytest.mark.slow

REDIS_URL = os.environ.get("CONTRAIL_TEST_REDIS_URL", "redis://127.0.0.1:6379") + "/13"
WORKERS = {"worker-a": "default", "worker-b": "default,training"}
PARTS = 4
SEARCH = {
    "space": {"learning_rate": {"float": [0.001, 0.03], "scale": "log"}, "hidden_units": {"choice": [[8], [16]]}},
    "objective": "val_accuracy",
    "max_trials": 6,
    "parallelism": 2,
    "seed": 1,
}
TRIALS = 4  # the run's max_trials


def _specs(home: Path) -> Path:
    specs = home / "pipelines"
    scoring = {"inference": {"source": "{{ data_dir }}/score/*.parquet", "parallelism": PARTS}}
    variants = {
        # preprocess mapped over the two penguins files, then reduced; a search of 6 trials (the
        # run's form caps it at 4), two at once, then scoring mapped over 4 parts
        "fanout": {"data": {"parallelism": 2}, "tune": SEARCH},
        # train goes to the `training` queue, which only worker-b consumes (a GPU worker's role)
        "routed": {"queues": {"train": "training"}},
        # many short evaluation rounds, so that a kill lands mid-training and the orphan still
        # trains when the retry starts
        "slow": SLOW_TRAINING,
    }
    for name, changes in variants.items():
        spec_variant(specs, {**scoring, **changes}, name=name)
    return specs


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("scaleout")
    data = home / "data"
    write_penguins(data)
    table = pa.concat_tables(pq.read_table(f) for f in sorted((data / "penguins").glob("*.parquet")))
    (data / "score").mkdir()
    for i in range(PARTS):  # one file to score per mapped part
        pq.write_table(table.slice(i * 86, 86), data / "score" / f"batch-{i}.parquet")
    shared = home / "shared"  # stands in for the NFS/EFS mount every worker shares
    running = AirflowCluster(
        home,
        database="postgres",
        CONTRAIL_SPEC_DIR=str(_specs(home)),
        CONTRAIL_ARTIFACT_ROOT=f"file://{shared}/artifacts",
        AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT="20",
    )
    running.use_scaleout(REDIS_URL)  # the mode switch under test: CONTRAIL_MODE=scaleout and two URLs
    try:
        running.start()
        for name, queues in WORKERS.items():
            local = home / "local" / name
            (local / "tmp").mkdir(parents=True)
            running.start_worker(name, queues, concurrency=1, cwd=local, HOME=str(local), TMPDIR=str(local / "tmp"))
        running.shared = shared
        running.wait_for_dag("slow")
        yield running
    finally:
        running.stop()


def _alive(pid: int) -> bool:
    """A live process, not a zombie nobody reaped."""
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _tries(cluster, dag_id, run_id, task_id) -> list[dict]:
    return cluster.task_tries(dag_id, run_id, task_id)


def _mapped(cluster, dag_id, run_id, task_id="batch_inference") -> list[dict]:
    body = cluster.api(
        "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"task_id": task_id, "limit": 100}
    ).json()
    return [ti for ti in body["task_instances"] if ti["task_id"] == task_id]


@pytest.fixture(scope="module")
def fanout_run(cluster) -> str:
    """A run of the fan-out pipeline (preprocess over 2 parts, scoring over 4), finished."""
    cluster.trigger("fanout", "fanout-1", conf={"max_steps": 100, "max_trials": TRIALS})
    return cluster.wait_for_run("fanout", "fanout-1", timeout=600)


def test_mapped_tasks_run_on_both_workers(cluster, fanout_run):
    assert fanout_run == "success"
    parts = _mapped(cluster, "fanout", "fanout-1", "preprocess_part")
    assert sorted(ti["map_index"] for ti in parts) == [0, 1] and {ti["state"] for ti in parts} == {"success"}
    run = PipelineLayout(cluster.shared / "artifacts", "fanout").run("fanout-1")
    reduced = artifacts.read_manifest(run.preprocess.path)
    assert reduced["result"]["parts"] == 2 and reduced["result"]["input_rows"] == 344
    mapped = _mapped(cluster, "fanout", "fanout-1")
    assert sorted(ti["map_index"] for ti in mapped) == list(range(PARTS))
    assert {ti["hostname"] for ti in mapped} == set(WORKERS), [(ti["map_index"], ti["hostname"]) for ti in mapped]
    # The parts together scored every row exactly once, with one model version.
    from contrail import inference

    result, _ = inference.collect(run.inference.path)
    assert result.rows == 4 * 86 and result.parts == PARTS
    keys = pa.concat_tables(pq.read_table(p) for p in result.predictions)["row_id"].to_pylist()
    assert len(keys) == len(set(keys)) == 4 * 86


def test_search_trials_spread_over_both_workers_one_at_a_time_on_each(cluster, fanout_run):
    assert fanout_run == "success"
    trials = _mapped(cluster, "fanout", "fanout-1", "train")
    assert sorted(ti["map_index"] for ti in trials) == list(range(TRIALS))  # the form's max_trials, not 6
    assert {ti["state"] for ti in trials} == {"success"}
    assert {ti["hostname"] for ti in trials} == set(WORKERS), [(ti["map_index"], ti["hostname"]) for ti in trials]
    for host in WORKERS:  # each worker has one slot: its trials never overlapped
        spans = sorted((ti["start_date"], ti["end_date"]) for ti in trials if ti["hostname"] == host)
        assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:])), spans
    run = PipelineLayout(cluster.shared / "artifacts", "fanout").run("fanout-1")
    best = artifacts.read_json(run.select_best.best)
    assert [t["trial"] for t in best["trials"]] == [f"trial-{i:03d}" for i in range(TRIALS)]
    assert best["value"] == max(t["value"] for t in best["trials"])
    version = artifacts.read_json(PipelineLayout(cluster.shared / "artifacts", "fanout").models.version(1).info)
    assert version["trial"] == best["trial"] and version["params"]["learning_rate"] == best["params"]["learning_rate"]


def test_a_task_queue_from_the_spec_routes_to_the_worker_that_consumes_it(cluster):
    cluster.trigger("routed", "routed-1", conf={"max_steps": 100})
    assert cluster.wait_for_run("routed", "routed-1", timeout=600) == "success"
    (train,) = _tries(cluster, "routed", "routed-1", "train")
    assert train["queue"] == "training" and train["hostname"] == "worker-b"
    (preprocess,) = _tries(cluster, "routed", "routed-1", "preprocess")
    assert preprocess["queue"] == "default"


def test_a_worker_killed_mid_task_is_retried_on_the_other_worker(cluster):
    run_id = "kill-worker"
    cluster.trigger("slow", run_id)
    pipeline = PipelineLayout(cluster.shared / "artifacts", "slow")
    run = pipeline.run(run_id)
    train_dir = run.train
    wait_until(
        lambda: train_dir.history.is_file() and len(read_history(train_dir.history)) >= 3,
        300,
        "training to reach its third evaluation",
        interval=0.1,
    )
    (running,) = _tries(cluster, "slow", run_id, "train")
    victim = running["hostname"]
    # The worker is killed alone: the training process it started (its own process group) lives
    # on as an orphan, training into the same folder as the retry. It is paused until the retry
    # has taken the lease (the scheduler notices a dead worker after 30-40 s, and on a loaded
    # machine an orphan could finish first), then let go, to race the retry. Should it have
    # been paused holding the lease's lock, the retry cannot take the lease: it is let go after
    # the retry has waited a minute.
    orphan = json.loads(train_dir.running.read_text())["pid"]
    cluster.kill(victim)
    os.kill(orphan, signal.SIGSTOP)
    killed_at = len(read_history(train_dir.history))
    retry_seen: dict[str, float] = {}

    def retry_holds_the_lease_or_waited() -> bool:
        if json.loads(train_dir.running.read_text())["pid"] != orphan:
            return True
        if len(_tries(cluster, "slow", run_id, "train")) < 2:
            return False
        return time.monotonic() - retry_seen.setdefault("at", time.monotonic()) > 60

    try:
        wait_until(retry_holds_the_lease_or_waited, 600, "the retry to take the training lease", interval=0.2)
    finally:
        # The orphan may be gone already: the system kills it with its dead supervisor on some
        # runs (seen once in CI). Then there is nothing to race, and the checks below still hold.
        with contextlib.suppress(ProcessLookupError):
            os.kill(orphan, signal.SIGCONT)
    assert cluster.wait_for_run("slow", run_id, timeout=600) == "success"
    tries = _tries(cluster, "slow", run_id, "train")
    assert [t["state"] for t in tries] == ["failed", "success"], tries
    assert tries[1]["hostname"] == next(w for w in WORKERS if w != victim)
    final = read_history(train_dir.history)
    assert killed_at < len(final)
    assert [r["eval_index"] for r in final] == list(range(1, len(final) + 1))  # no gap, no duplicate
    # The retry took the lease; the orphan, fenced off, stopped at its next checkpoint.
    assert json.loads(train_dir.running.read_text())["pid"] != orphan
    wait_until(lambda: not _alive(orphan), 300, f"the orphaned training process {orphan} to stop")
    exports = artifacts.read_events(run.events)
    assert [e["step"] for e in exports].count("export") == 1
    assert len(pipeline.models.versions()) == 1


def test_no_step_wrote_to_a_workers_local_disk(cluster, fanout_run):
    written = [
        p.relative_to(cluster.home / "local")
        for p in (cluster.home / "local").rglob("*")
        # scratch (TMPDIR: TensorFlow's autograph sources) and per-user caches are not outputs
        if p.is_file() and not any(part in ("tmp", ".keras", ".cache", ".config") for part in p.parts)
    ]
    assert written == []
    assert PipelineLayout(cluster.shared / "artifacts", "fanout").models.production.is_file()
