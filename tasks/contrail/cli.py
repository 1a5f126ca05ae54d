"""`contrail`: the command line that works without a running Airflow.

contrail lint [SPEC ...]              validate specs (default: every spec in $CONTRAIL_SPEC_DIR,
                                       else dags/pipelines)
contrail demo-data                     write the demo data (penguins, cars, daily penguins) under the data folder
contrail summary PIPELINE RUN_ID       print a run's summary and write it as JSON
"""

from __future__ import annotations

import argparse
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
    from contrail.demo import write_cars, write_penguins, write_penguins_daily

    data_dir = Path(args.data_dir) if args.data_dir else config.data_dir()
    written = {**write_penguins(data_dir), **write_cars(data_dir)}
    for name, files in written.items():
        print(f"{name}: {', '.join(files)}")
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
    summary["idempotent_rerun"] = len(reused) == len(layout.STEPS)
    out = Path(args.output) if args.output else default_out
    artifacts.write_json_atomic(out, summary)
    print(format_summary(summary, reused))
    print(f"Summary written to {out}")
    return 0


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
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ContrailError as exc:
        print(f"contrail: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
