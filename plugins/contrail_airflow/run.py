"""Run one pipeline for one logical date through Airflow, in this process, and report.

    python -m contrail_airflow.run penguins 2026-01-01 [--conf '{"max_steps": 200}']

This is `airflow dags test` with a stable run id: the run is keyed by its logical date
(`manual__<date>T00:00:00+00:00`), so running it again is a retry of the same Airflow run,
which finds the same artifact paths and reuses every step that is already complete.
Exits 1 if the run fails.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contrail_airflow.run")
    parser.add_argument("dag_id")
    parser.add_argument("logical_date", type=dt.date.fromisoformat)
    parser.add_argument("--conf", default="{}", help="JSON trigger params")
    args = parser.parse_args(argv)

    from contrail import config
    from contrail.errors import SpecError
    from contrail.spec import find_spec

    try:
        find_spec(args.dag_id.removesuffix("_inference"), config.spec_dir())
    except SpecError as exc:
        print(f"contrail: {exc}", file=sys.stderr)
        return 2

    from airflow.exceptions import AirflowException
    from airflow.utils.cli import get_bagged_dag
    from airflow.utils.state import DagRunState

    try:
        dag = get_bagged_dag(bundle_names=None, dag_id=args.dag_id)  # as `airflow dags test` finds it
    except AirflowException as exc:  # the spec exists but did not become a DAG: it is broken
        print(f"contrail: pipeline {args.dag_id!r} did not load: {exc}", file=sys.stderr)
        return 2
    when = dt.datetime.combine(args.logical_date, dt.time(), tzinfo=dt.UTC)
    run = dag.test(logical_date=when, run_after=when, run_conf=json.loads(args.conf))
    print(f"Run {run.run_id}: {run.state}")
    return 0 if run.state == DagRunState.SUCCESS else 1


if __name__ == "__main__":
    sys.exit(main())
