"""Run one pipeline for one logical date through Airflow, in this process, and report.

    python -m contrail_airflow.run penguins 2026-01-01 [--conf '{"max_steps": 200}'] [--log-file logs/x.log]

This is `airflow dags test` with a stable run id: the run is keyed by its logical date
(`manual__<date>T00:00:00+00:00`), so running it again is a retry of the same Airflow run,
which finds the same artifact paths and reuses every step that is already complete.

With `--log-file`, everything Airflow and TensorFlow print goes to that file, and the terminal
shows one line per task (state, seconds, a key figure) and, on a failure, the error and the
log's path. Exits 1 if the run fails.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def _output_to(path: Path | None) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so C++ and child output
    too) to `path` while the block runs."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _figures(dag_id: str, run_id: str) -> dict[str, str]:
    """The one figure worth seeing for each step, from what the run committed."""
    from contrail import config, layout
    from contrail.report import latest_events, step_results
    from contrail.storage import Workspace

    with Workspace(config.artifact_location(), config.scratch_dir()) as workspace:
        workspace.pull_records(layout.run_rel(dag_id, run_id))
        run = layout.PipelineLayout(workspace.root, dag_id).run(run_id)
        results, events = step_results(run), latest_events(run)
    pre, train, best, export, infer = (results[s] for s in layout.STEPS)
    reused = {("batch_inference" if s == "inference" else s) for s, e in events.items() if e.get("reused")}
    figures = {
        "preprocess": pre and f"{pre.input_rows} rows -> {pre.train_records} train + {pre.eval_records} eval records",
        "train": train
        and f"{train.evaluations} evaluations, best {train.monitor}={train.best_value:.4g}, {train.stop_reason}",
        "select_best": best and f"evaluation {best.eval_index}: {best.monitor}={best.value:.4g}",
        "export": export and f"version {export.version}: {export.decision}",
        "batch_inference": infer and f"{infer.rows} predictions by version {infer.model_version}",
    }
    return {task: f"{figure} (reused)" if task in reused else figure for task, figure in figures.items() if figure}


def _report(run, log_file: Path | None) -> None:
    """One line per task instance, in the order they ran; on a failure, the error and the log."""
    figures = _figures(run.dag_id, run.run_id)
    instances = sorted(run.get_task_instances(), key=lambda ti: (ti.start_date or run.start_date, ti.task_id))
    for ti in instances:
        seconds = (ti.end_date - ti.start_date).total_seconds() if ti.start_date and ti.end_date else 0.0
        name = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
        figure = (figures.get(ti.task_id) or "") if ti.map_index < 0 and ti.state == "success" else ""
        print(f"  {name:<20} {str(ti.state):<8} {seconds:6.1f}s  {figure}".rstrip())
    if run.state != "success" and log_file is not None:
        errors = [
            line.strip()
            for line in log_file.read_text(errors="replace").splitlines()
            if re.match(r"^\s*(\w+\.)*\w*(Error|Exception)\b.*:", line)
        ]
        if errors:
            print(f"  error: {errors[-1]}")
        print(f"  full log: {log_file}")


def _record_real_start(run, started: dt.datetime) -> None:
    """`dag.test` starts a run at its logical date; record when this one really started, so the
    UI's durations are the work's own (a demo dated 2026-01-01 did not take months)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        stored = session.get(DagRun, run.id)
        if stored is not None:
            stored.start_date = started
    run.start_date = started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contrail_airflow.run")
    parser.add_argument("dag_id")
    parser.add_argument("logical_date", type=dt.date.fromisoformat)
    parser.add_argument("--conf", default="{}", help="JSON trigger params")
    parser.add_argument(
        "--log-file", type=Path, help="write Airflow's and TensorFlow's output here, not to the terminal"
    )
    args = parser.parse_args(argv)

    from contrail import config
    from contrail.errors import SpecError
    from contrail.spec import find_spec

    try:
        find_spec(args.dag_id.removesuffix("_inference"), config.spec_dir())
    except SpecError as exc:
        print(f"contrail: {exc}", file=sys.stderr)
        return 2

    with _output_to(args.log_file):
        from airflow.exceptions import AirflowException
        from airflow.utils.cli import get_bagged_dag
        from airflow.utils.state import DagRunState

        try:
            dag = get_bagged_dag(bundle_names=None, dag_id=args.dag_id)  # as `airflow dags test` finds it
        except AirflowException as exc:  # the spec exists but did not become a DAG: it is broken
            dag, error = None, exc
        if dag is not None:
            when = dt.datetime.combine(args.logical_date, dt.time(), tzinfo=dt.UTC)
            started = dt.datetime.now(dt.UTC)
            run = dag.test(logical_date=when, run_after=when, run_conf=json.loads(args.conf))
            _record_real_start(run, started)
    if dag is None:
        print(f"contrail: pipeline {args.dag_id!r} did not load: {error}", file=sys.stderr)
        return 2
    print(f"Run {run.run_id}: {run.state}")
    _report(run, args.log_file)
    return 0 if run.state == DagRunState.SUCCESS else 1


if __name__ == "__main__":
    sys.exit(main())
