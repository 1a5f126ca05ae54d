"""A manual check, not part of the suite (it adds minutes): the scale-out mode and an S3 root
together. PostgreSQL, CeleryExecutor on Redis (db 12), two workers, each with its own HOME,
TMPDIR and CONTRAIL_SCRATCH_DIR, and the artifact root on moto's S3 server. Preprocess fans out
over 2 parts, scoring over 4, and a failpoint SIGKILLs training once before its 3rd evaluation.
It prints which worker ran each task, the train tries and the history in the bucket.

    scripts/env python scripts/check_celery_s3.py
"""

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    import pyarrow as pa
    import pyarrow.parquet as pq
    from airflow_cluster import AirflowCluster
    from object_store import S3Server
    from tests_support import spec_variant

    from contrail.demo import write_penguins
    from contrail.layout import run_rel

    home = Path(tempfile.mkdtemp(prefix="celery-s3-"))
    write_penguins(home / "data")
    table = pa.concat_tables(pq.read_table(f) for f in sorted((home / "data" / "penguins").glob("*.parquet")))
    (home / "data" / "score").mkdir()
    for i in range(4):
        pq.write_table(table.slice(i * 86, 86), home / "data" / "score" / f"b{i}.parquet")
    specs = home / "pipelines"
    changes = {"data": {"parallelism": 2}, "inference": {"source": "{{ data_dir }}/score/*.parquet", "parallelism": 4}}
    spec_variant(specs, changes)
    fp = home / "failpoints"
    fp.mkdir()
    (fp / "train.before_eval.3").touch()
    with S3Server() as s3:
        uri = f"s3://{s3.new_bucket()}/artifacts"
        c = AirflowCluster(
            home,
            database="postgres",
            CONTRAIL_SPEC_DIR=str(specs),
            CONTRAIL_FAILPOINTS_DIR=str(fp),
            CONTRAIL_ARTIFACT_ROOT=uri,
            **s3.env,
        )
        c.use_scaleout("redis://127.0.0.1:6379/12")
        try:
            c.start()
            for name in ("worker-a", "worker-b"):
                local = home / "local" / name
                (local / "tmp").mkdir(parents=True)
                c.start_worker(
                    name,
                    concurrency=2,
                    cwd=local,
                    HOME=str(local),
                    TMPDIR=str(local / "tmp"),
                    CONTRAIL_SCRATCH_DIR=str(local / "scratch"),
                )
            c.wait_for_dag("penguins")
            t = time.time()
            c.trigger("penguins", "celery-s3")
            state = c.wait_for_run("penguins", "celery-s3", timeout=900)
            print("state", state, f"{time.time() - t:.1f}s")
            body = c.api("GET", "/dags/penguins/dagRuns/celery-s3/taskInstances", params={"limit": 100}).json()
            for ti in sorted(body["task_instances"], key=lambda x: (x["task_id"], x["map_index"])):
                print(
                    f"  {ti['task_id']:18s} map={ti['map_index']:2d} try={ti['try_number']} {ti['state']:8s} {ti['hostname']}"
                )
            print("train tries", [(x["state"], x["hostname"]) for x in c.task_tries("penguins", "celery-s3", "train")])
            fs = s3.filesystem()
            run = f"{uri}/{run_rel('penguins', 'celery-s3')}"
            h = [json.loads(line)["eval_index"] for line in fs.cat_file(f"{run}/train/history.jsonl").splitlines()]
            print("history", h[:5], "...", len(h), "contiguous", h == list(range(1, len(h) + 1)))
            print("versions", fs.glob(f"{uri}/penguins/models/*/contrail.json"))
            print(
                "local artifacts",
                list(home.glob("**/artifacts")),
                "workspaces left",
                list(home.glob("local/*/scratch/contrail-workspace-*")),
            )
        finally:
            c.stop()
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
