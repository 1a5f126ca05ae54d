"""`contrail`: the command line that works without a running Airflow.

contrail lint [SPEC ...]              validate specs (default: every spec in $CONTRAIL_SPEC_DIR,
                                       else dags/pipelines)
contrail demo-data                     write the demo data (penguins, cars, daily penguins, flights) under the data folder
contrail summary PIPELINE RUN_ID       print a run's summary and write it as JSON
contrail rollback PIPELINE [--to N]    make an earlier (or version N) model production again
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from contrail import config
from contrail.errors import ContrailError, SpecError


def _lint(args: argparse.Namespace) -> int:
    from contrail.spec import discover_specs, load_spec

    paths = [Path(p) for p in args.specs] or discover_specs(config.spec_dir())
    if not paths:
        print("contrail lint: no spec files found", file=sys.stderr)
        return 2
    failures = 0
    for path in paths:
        try:
            loaded = load_spec(path)
        except SpecError as exc:
            failures += 1
            print(str(exc), file=sys.stderr)
        else:
            print(
                f"{path}: ok ({loaded.spec.name}, {len(loaded.spec.data.features)} features, "
                f"{loaded.spec.data.label.task})"
            )
    return 1 if failures else 0


def _demo_data(args: argparse.Namespace) -> int:
    from contrail.demo import write_cars, write_flights, write_penguins, write_penguins_daily

    data_dir = Path(args.data_dir) if args.data_dir else config.data_dir()
    written = {**write_penguins(data_dir), **write_cars(data_dir)}
    for name, files in written.items():
        print(f"{name}: {', '.join(files)}")
    flights = write_flights(data_dir)["flights"]
    print(f"flights: {len(flights)} monthly files under {data_dir / 'flights'}")
    daily = write_penguins_daily(data_dir)
    print(f"penguins_daily: {len(daily)} dates, {min(daily)} to {max(daily)}, under {data_dir / 'penguins_daily'}")
    return 0


def _summary(args: argparse.Namespace) -> int:
    from contrail import artifacts, layout
    from contrail.demo import format_summary, summarize
    from contrail.report import latest_events
    from contrail.spec import find_spec
    from contrail.storage import Workspace

    find_spec(args.pipeline, config.spec_dir())
    with Workspace(config.artifact_location(), config.scratch_dir()) as workspace:
        # A remote root: its run records (small JSON files) are enough for the summary.
        workspace.pull_records(layout.run_rel(args.pipeline, args.run_id))
        summary = summarize(workspace.root, args.pipeline, args.run_id)
        latest = latest_events(layout.RunLayout(Path(summary["run_dir"])))
        summary = workspace.to_remote(summary)
        default_out = (
            workspace.root if not workspace.remote else config.project_root() / "artifacts"
        ) / "demo-summary.json"
    # Steps the latest execution of this run reused rather than recomputed.
    reused = [s for s, e in latest.items() if e.get("reused")]
    summary["reused_steps"] = reused
    summary["idempotent_rerun"] = set(layout.STEPS) <= set(reused)
    out = Path(args.output) if args.output else default_out
    artifacts.write_json_atomic(out, summary)
    print(format_summary(summary, reused))
    print(f"Summary written to {out}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from contrail import layout
    from contrail import rollback as rollback_lib
    from contrail.spec import find_spec
    from contrail.storage import Workspace

    with Workspace(args.artifact_root or config.artifact_location(), config.scratch_dir()) as workspace:
        pipeline = layout.PipelineLayout(workspace.root, args.pipeline)
        models = pipeline.models
        # A remote root: production.json and the versions' records, then the target's folder
        # (it must load); the new production.json goes back with the push.
        workspace.pull(pipeline.rel(models.path), include=(layout.PRODUCTION, f"*/{layout.MODEL_INFO}"))
        if not models.production.is_file():
            find_spec(args.pipeline, config.spec_dir())  # a mistyped name: list the pipelines there are
        if workspace.remote:
            workspace.pull(pipeline.rel(models.version(rollback_lib.target_version(models, args.to)).path))
        record = rollback_lib.rollback(models, args.to, reason_note=args.note)
        workspace.push()
        model_dir = workspace.to_remote(record["path"])
    blessing = record["blessing"]
    print(
        f"{args.pipeline}: production v{blessing['previous_version']} -> v{record['version']} ({blessing['decision']})"
    )
    extra = {
        "version": record["version"],
        "model_dir": model_dir,
        "previous_version": blessing["previous_version"],
        "decision": blessing["decision"],
        "by": blessing["by"],
    }
    _announce_rollback(args.pipeline, extra, skip=args.no_asset_event)
    return 0


def _announce_rollback(pipeline: str, extra: dict, *, skip: bool) -> None:
    """Add an event to the pipeline's model asset when Airflow is configured here; else say so.
    Production has moved either way: what reads production.json follows it."""
    if skip:
        why = "--no-asset-event"
    elif not _airflow_configured():
        why = "Airflow is not configured here (no AIRFLOW_HOME, AIRFLOW_CONFIG or ~/airflow/airflow.cfg)"
    else:
        try:
            from contrail_airflow.rollback import announce_rollback
        except ImportError as exc:
            why = f"Airflow cannot be imported here ({exc})"
        else:
            added, line = announce_rollback(pipeline, extra)
            if added:
                print(line)
                return
            why = line
    print(
        f"contrail: note: no model asset event: {why}. Production is v{extra['version']} all the same: batch "
        "inference without a version, the next export and a scoring run triggered by hand use it",
        file=sys.stderr,
    )


def _airflow_configured() -> bool:
    """Whether this environment names an Airflow installation (importing Airflow without one
    would create ~/airflow with an empty database)."""
    names = ("AIRFLOW_HOME", "AIRFLOW_CONFIG", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    return any(os.environ.get(n) for n in names) or (Path.home() / "airflow" / "airflow.cfg").is_file()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="contrail", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    lint = sub.add_parser("lint", help="validate pipeline specs")
    lint.add_argument("specs", nargs="*")
    lint.set_defaults(func=_lint)
    demo = sub.add_parser("demo-data", help="write the penguins demo data")
    demo.add_argument("--data-dir")
    demo.set_defaults(func=_demo_data)
    summary = sub.add_parser("summary", help="summarize a finished run")
    summary.add_argument("pipeline")
    summary.add_argument("run_id")
    summary.add_argument("--output")
    summary.set_defaults(func=_summary)
    rollback = sub.add_parser("rollback", help="make an earlier model version production again")
    rollback.add_argument("pipeline")
    rollback.add_argument(
        "--to", type=int, metavar="N", help="the version to make production (default: the one before the current)"
    )
    rollback.add_argument("--note", help="why, recorded in production.json's history")
    rollback.add_argument("--artifact-root", help="the artifact root (default: $CONTRAIL_ARTIFACT_ROOT)")
    rollback.add_argument(
        "--no-asset-event", action="store_true", help="do not add an event to the model asset in Airflow"
    )
    rollback.set_defaults(func=_rollback)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ContrailError as exc:
        print(f"contrail: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
