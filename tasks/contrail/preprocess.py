"""Step 1, preprocess: Parquet or CSV → sharded TFRecords, schema.json and stats.json.

The split is a pure function of the row (its key, or its file and position) and the split
seed, so it is the same on every run (`contrail.split`). Vocabularies and normalization
statistics come from the train split only, as mergeable partials (`contrail.statistics`).

The work is organized so that it can fan out: each input file is read, checked, split,
summarized (partial statistics: counts, sums, vocabulary counters) and encoded on its own;
a reduce merges the partials in file order and writes the shards. In one task (`run`) the
files are simply all handled here; with `data.parallelism` N, Airflow maps `run_part` over N
groups of files and `run(parts=...)` is the reduce. Both paths run the same per-file code and
the same merge, in the same order, so their output is identical, byte for byte.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from contrail import artifacts, cache, data, drift, example_encoder, layout, spill, split, statistics, tfrecord
from contrail.errors import ArtifactError, CorruptRecordError, EmptyInputError, translating
from contrail.layout import ModelsLayout, PartDir, PreprocessDir
from contrail.progress import Progress
from contrail.results import PartResult, PreprocessResult
from contrail.spec import DataSpec, LoadedSpec, load_spec
from contrail.step import StepRun

log = logging.getLogger(__name__)

STEP = "preprocess"
PART_STEP = "preprocess-part"
# Bumped whenever the same inputs would give other bytes (the split hash, the record layout),
# so neither this run's manifest nor the cross-run cache hands back output of an older format.
# 3: string features record the vocabulary cut (schema `cut_fraction`, stats' unseen/cut counts)
# 4: read and spilled a batch at a time; big splits are shuffled bucket by bucket (`spill`)
FORMAT = 4
BATCH_ROWS = 65_536  # rows read, checked, encoded and spilled at a time
SPILL = ".spill"  # the records' spill folder inside the staging folder (one task)


@dataclass(frozen=True)
class PreprocessArgs:
    spec_path: str
    source: str | list[str]  # the rendered data.source: a glob, or a list of globs read as one
    step_dir: str
    cache_dir: str | None = None  # `<pipeline>/cache`: reuse another run's output for the same content
    parts: Sequence[str] | None = None  # fan-out: the folders `run_part` wrote, in file order
    models_dir: str | None = None  # `<pipeline>/models`: production's statistics, to measure drift against


@dataclass(frozen=True)
class PartArgs:
    """One group of the fan-out's plan (the mapped task's argument, as XCom)."""

    spec_path: str
    files: list[str]  # this part's files, in source order
    part_dir: str
    fingerprint: str = ""  # the whole step's, from `plan`: a part is reused only for the same inputs
    buckets: int = 1  # the train shuffle's spill buckets, the same for every part (`spill`)

    def to_xcom(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_xcom(cls, value: Any) -> PartArgs:
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(value, dict) or not {"spec_path", "files", "part_dir"} <= set(value) <= names:
            raise ArtifactError(f"preprocess_plan: expected a group with {sorted(names)}, found {value!r}")
        return cls(**value)


@dataclass
class _Part:
    """What one group of files contributes: partials per file, and its records in a spill folder."""

    partials: list[dict] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)  # spill folders, in file order
    buckets: int = 1


def _inputs_and_fingerprint(args: PreprocessArgs, loaded: LoadedSpec) -> tuple[list[data.InputFile], dict, str]:
    spec = loaded.spec.data
    files = data.resolve_files(args.source, field=f"{loaded.path.name}: data.source")
    inputs = data.fingerprints(files, Path(args.cache_dir) if args.cache_dir else None)
    fp = artifacts.fingerprint({"step": STEP, "format": FORMAT, "data": spec.model_dump(), "inputs": inputs})
    return files, inputs, fp


def _step_run(args: PreprocessArgs, fp: str, inputs: dict) -> StepRun[PreprocessResult]:
    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    return StepRun(STEP, PreprocessResult, Path(args.step_dir), fp, inputs, cache_dir=cache_dir)


def plan(args: PreprocessArgs, parallelism: int) -> list[PartArgs]:
    """The fan-out's groups of files, each written to a part folder of the run; none when the
    step's output is already complete (this run's, or another run's with the same content)."""
    loaded = load_spec(args.spec_path)
    files, inputs, fp = _inputs_and_fingerprint(args, loaded)
    step = _step_run(args, fp, inputs)
    if step.reusable() is not None or step.cached() is not None:
        log.info("Preprocess output for fingerprint %s exists; nothing to fan out", fp[:12])
        return []
    groups = [g for g in np.array_split(np.arange(len(files)), min(parallelism, len(files))) if len(g)]
    run_dir = layout.RunLayout(Path(args.step_dir).parent)
    buckets = _buckets(files, loaded.spec.data)
    return [
        PartArgs(
            spec_path=args.spec_path,
            files=[str(files[i]) for i in group],
            part_dir=str(run_dir.part(k, len(groups)).path),
            fingerprint=fp,
            buckets=buckets,
        )
        for k, group in enumerate(groups)
    ]


def return_freed_memory() -> None:
    """Make this process give freed buffers back to the OS at once, so its peak RSS is what it
    holds, not what it once held.

    Preprocess allocates and frees large buffers all the time (a batch's columns, a bucket's
    records, framed blocks), from several threads. Arrow's default pool (mimalloc) and glibc's
    malloc, whose mmap threshold rises after the first large free, both keep freed memory for
    reuse; measured on 5M mixed rows, the peak RSS was 915 MB with them and 668 MB with Arrow's
    system pool and a fixed 1 MB mmap threshold (memory held: under 230 MB of Arrow buffers at
    any time), at the same speed. A task process runs one step, so this is process-wide."""
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, 1 << 20)  # glibc: buffers over 1 MB are mmapped
    except (AttributeError, OSError):  # not glibc (musl, macOS): their defaults
        pass


_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def run_part(args: PartArgs) -> PartResult:
    """Read, check, split, summarize and encode one group of files into `part_dir`: its partial
    statistics and its records, spilled by bucket (`spill`)."""
    return_freed_memory()
    loaded = load_spec(args.spec_path)
    part_dir = PartDir(Path(args.part_dir))
    fp = artifacts.fingerprint(
        {"step": PART_STEP, "step_fingerprint": args.fingerprint, "files": args.files, "buckets": args.buckets}
    )
    step = StepRun(PART_STEP, PartResult, part_dir.path, fp, {"files": args.files})
    if (done := step.reusable()) is not None:
        return done
    with step.staged() as staging:
        staged = PartDir(staging)
        files = [data.input_file(f) for f in args.files]
        partials, written = _process_files(files, loaded.spec.data, staged.path, args.buckets)
        artifacts.write_json_atomic(staged.partials, partials)
        result = PartResult(
            step_dir=str(part_dir.path),
            fingerprint=fp,
            files=list(args.files),
            train=written.train,
            eval=written.eval,
            buckets=args.buckets,
        )
        step.commit(staging, result, sorted(p.name for p in staging.iterdir()))
    log.info(
        "Part %s: %d files, %d train and %d eval records", part_dir.path.name, len(files), result.train, result.eval
    )
    return result


def run(args: PreprocessArgs) -> PreprocessResult:
    """Convert the source data; return the result (paths and counts, never data).

    With `parts` (the fan-out's reduce), the records and partial statistics come from the
    folders `run_part` wrote; otherwise every file is processed here."""
    return_freed_memory()
    loaded = load_spec(args.spec_path)
    spec = loaded.spec.data
    source = args.source if isinstance(args.source, str) else ", ".join(args.source)  # for messages
    out = PreprocessDir(Path(args.step_dir))
    files, inputs, fp = _inputs_and_fingerprint(args, loaded)
    step = _step_run(args, fp, inputs)
    if (done := step.reusable()) is not None:
        return done
    if (cached := step.cached()) is not None:
        return _from_cache(step, cached, spec, args.models_dir, source)

    with step.staged() as staging:
        if args.parts:
            part = _load_parts(args.parts, files)
        else:
            part = _Part(folders=[staging / SPILL], buckets=_buckets(files, spec))
            part.partials, _ = _process_files(files, spec, part.folders[0], part.buckets)
        rows = sum(p["rows"] for p in part.partials)
        n_train, n_eval = sum(p["train"] for p in part.partials), sum(p["eval"] for p in part.partials)
        if rows == 0:
            raise EmptyInputError(
                f"{source}: expected at least one data row, found 0 rows in {len(files)} file(s)", path=source
            )
        if n_train == 0 or n_eval == 0:
            raise EmptyInputError(
                f"{source}: expected rows in both splits (eval_fraction={spec.split.eval_fraction}), "
                f"found {n_train} train and {n_eval} eval rows out of {rows}",
                path=source,
                field="data.split.eval_fraction",
            )
        schema, stats = statistics.merge_partials(part.partials, spec, loaded.spec.name)
        statistics.check_oov(stats, spec, source)
        drifted = _drift(stats, spec, args.models_dir, source)
        packed = _packed(spec)
        schema["train_packing"] = {"feature": tfrecord.PACKED_FEATURE, "columns": packed} if packed else None
        # Train records go out in a seeded random order (bucket by bucket), so training can
        # shuffle whole batches; eval records in input order.
        written_so_far = Progress(log, "preprocess: writing TFRecords", rows, unit="records")
        outputs = {}
        train_chunks = spill.train_order(part.folders, part.buckets, spec.split.seed)
        for split_name, chunks, total in (
            ("train", train_chunks, n_train),
            ("eval", spill.eval_order(part.folders), n_eval),
        ):
            for name, written in spill.write_shards(
                staging, split_name, chunks, total, spec.shard_rows, spec.compression
            ):
                outputs[name] = written
                log.info("Wrote %s: %d records", name, written)
                written_so_far.advance(written)
        shutil.rmtree(staging / SPILL, ignore_errors=True)
        staged = PreprocessDir(staging)
        artifacts.write_json_atomic(staged.schema, schema)
        artifacts.write_json_atomic(staged.stats, stats)
        artifacts.write_json_atomic(staged.drift, drifted)
        result = PreprocessResult(
            step_dir=str(out.path),
            fingerprint=fp,
            schema=str(out.schema),
            stats=str(out.stats),
            train_files=[str(out.path / n) for n in outputs if n.startswith("train-")],
            eval_files=[str(out.path / n) for n in outputs if n.startswith("eval-")],
            train_records=n_train,
            eval_records=n_eval,
            input_rows=rows,
            compression=spec.compression,
            parts=len(args.parts) if args.parts else None,
        )
        step.commit(staging, result, [*outputs, out.schema.name, out.stats.name, out.drift.name], outputs)
    for part_dir in args.parts or ():  # intermediate: the committed shards supersede them
        shutil.rmtree(part_dir, ignore_errors=True)
    log.info(
        "Preprocessed %d rows into %d train and %d eval records in %.1fs",
        rows,
        n_train,
        n_eval,
        time.time() - step.started,
    )
    return result


def _drift(stats: dict, spec: DataSpec, models_dir: str | None, source: str) -> dict:
    """This run's train statistics against the production model's (`data.drift`)."""
    models = ModelsLayout(Path(models_dir)) if models_dir else None
    version = models.production_version() if models is not None else None
    baseline = drift.model_stats(models.version(version).path) if version is not None else None
    return drift.compare(
        stats["features"],
        None if baseline is None else baseline["features"],
        None if spec.drift is None else spec.drift.model_dump(),
        what="drift",
        against=f"production model v{version}'s training data"
        if baseline is not None
        else ("no production model yet" if version is None else f"production v{version} keeps no statistics"),
        where=source,
    )


# -- per file --------------------------------------------------------------------------------
def _buckets(files: list[data.InputFile], spec: DataSpec) -> int:
    """The train shuffle's spill buckets, from the rows the files hold (Parquet footers; for CSV,
    a generous guess from the bytes): enough that one bucket holds about `spill.BUCKET_ROWS`."""
    rows = 0
    for f in files:
        if spec.format == "parquet":
            fs, where = f.filesystem()
            with translating(CorruptRecordError, str(f), expected="a readable Parquet file", path=str(f)):
                rows += pq.read_metadata(where, filesystem=fs).num_rows
        else:
            rows += f.size // 32
    return spill.bucket_count(int(rows * (1 - spec.split.eval_fraction)))


def _process_files(
    files: list[data.InputFile], spec: DataSpec, folder: Path, buckets: int
) -> tuple[list[dict], spill.SpillWriter]:
    """Read each file a batch at a time; check, split, summarize and encode each batch, and
    spill its records to `folder`. Returns the partials (one per file) and the spill's counts.
    Memory holds a batch and the value counters, never the table.

    Each batch's encoding and spill run on a thread of their own while the next batch is read,
    split and summarized here: the kernels and Arrow's writes release the GIL, and the
    statistics are Python. One batch is encoded at a time, in order, so the spill's order is
    the input's and memory holds two batches."""
    columns = data.required_columns(spec.features, spec.label, spec.key)
    total = sum(f.size for f in files)
    progress = Progress(log, "preprocess: reading", total, unit="bytes")
    packed = _packed(spec)
    writer = spill.SpillWriter(folder, buckets, spec.split.seed)
    partials = []

    def encode_and_spill(train: pa.Table, identities: np.ndarray, evals: pa.Table) -> None:
        writer.add(
            _serialize(example_encoder.encode_table(_encoded_columns(train, spec, packed))),
            identities,
            # Eval records keep one feature per column: the layout serving parses.
            _serialize(example_encoder.encode_table(_encoded_columns(evals, spec, []))),
        )

    try:
        with ThreadPoolExecutor(max_workers=1) as encoder:
            pending: Future | None = None
            for i, path in enumerate(files):
                summary, rows = None, 0
                for offset, table in data.iter_tables(path, spec.format, columns, BATCH_ROWS):
                    is_eval = split.split_mask(table, [(path, table.num_rows)], spec, offset=offset)
                    # Folded in as each batch is read: memory holds one file summary's counters.
                    batch = statistics.file_partials(table, is_eval, spec)
                    summary = batch if summary is None else statistics.combine_partials([summary, batch], spec)
                    train, evals = table.filter(pa.array(~is_eval)), table.filter(pa.array(is_eval))
                    identities = spill.row_identities(train, path.name, offset, spec.key, spec.split.seed, ~is_eval)
                    if pending is not None:
                        pending.result()  # the previous batch is spilled (its error, if any, raised here)
                    pending = encoder.submit(encode_and_spill, train, identities, evals)
                    rows += table.num_rows
                partials.append(summary)
                log.info("Read %d rows from %s (%d/%d files)", rows, path, i + 1, len(files))
                progress.advance(path.size)
            if pending is not None:
                pending.result()
    finally:
        writer.close()
    return partials, writer


def _load_parts(part_dirs: Sequence[str], files: list[data.InputFile]) -> _Part:
    part = _Part()
    covered: list[str] = []
    buckets = set()
    for folder in part_dirs:
        part_dir = PartDir(Path(folder))
        manifest = artifacts.read_manifest(part_dir.path)
        if manifest is None:
            raise ArtifactError(f"{part_dir.path}: expected a committed preprocess part, found none", path=folder)
        result = PartResult.from_xcom(manifest["result"], source=str(part_dir.manifest))
        covered += result.files
        buckets.add(result.buckets)
        part.partials += json.loads(part_dir.partials.read_text())
        part.folders.append(part_dir.path)
    if covered != [str(f) for f in files]:
        raise ArtifactError(f"preprocess parts: expected the files {[str(f) for f in files]} in order, found {covered}")
    if len(buckets) != 1:
        raise ArtifactError(f"preprocess parts: expected one bucket count for every part, found {sorted(buckets)}")
    part.buckets = buckets.pop()
    return part


def _serialize(encoded: example_encoder.Encoded) -> pa.Array:
    """Encoded records as one Arrow binary array (zero-copy over the encoder's buffers)."""
    return example_encoder.binary_array(encoded.data, encoded.offsets)


def _packed(spec: DataSpec) -> list[str]:
    """The float features train records pack into one list (two or more non-nullable ones)."""
    names = [n for n, f in spec.features.items() if f.type == "float" and not f.nullable]
    return names if len(names) >= 2 else []


def _from_cache(
    step: StepRun[PreprocessResult], source: Path, spec: DataSpec, models_dir: str | None, data_source: str
) -> PreprocessResult:
    """This run's output, hard-linked from an earlier run's with the same content fingerprint.
    Drift is measured again: production may have changed since that run."""
    earlier = PreprocessResult.from_xcom(artifacts.read_manifest(source)["result"], source=str(source))
    out = PreprocessDir(step.step_dir)
    with step.staged() as staging:
        entries = cache.link_outputs(source, staging)
        staged = PreprocessDir(staging)
        drifted = _drift(artifacts.read_json(staged.stats), spec, models_dir, data_source)
        staged.drift.unlink(missing_ok=True)  # a hard link to the earlier run's record: replace, never write through
        artifacts.write_json_atomic(staged.drift, drifted)
        entries = [e for e in entries if e["path"] != layout.DRIFT]
        entries += artifacts.describe_outputs(staging, [layout.DRIFT], None)
        result = earlier.replace(
            step_dir=str(out.path),
            schema=str(out.schema),
            stats=str(out.stats),
            train_files=[str(out.path / Path(f).name) for f in earlier.train_files],
            eval_files=[str(out.path / Path(f).name) for f in earlier.eval_files],
            reused=False,
            cache_hit=True,
            reused_from=str(source),
        )
        step.commit(staging, result, entries)
    log.info(
        "Same data and data spec as %s (fingerprint %s): hard-linked its output instead of recomputing",
        source,
        step.fingerprint[:12],
    )
    return result


def _fixed_list(column: pa.ChunkedArray, length: int) -> pa.Array:
    """A float_list column (checked: every list of `length`) as the encoder's fixed-size float
    lists; a null list stays null, and the record leaves the feature out."""
    array = column.combine_chunks() if column.num_chunks else pa.array([], pa.list_(pa.float64()))
    matrix = data.list_matrix(array, length).astype(np.float32)
    present = np.asarray(pc.is_valid(array).to_numpy(zero_copy_only=False), dtype=bool) if len(array) else None
    values = pa.array(matrix.reshape(-1))
    return pa.FixedSizeListArray.from_arrays(values, length, mask=None if present is None else pa.array(~present))


def _encoded_columns(table: pa.Table, spec: DataSpec, packed: list[str]) -> list[tuple[str, str, pa.Array]]:
    """(name, Example list kind, values) for every feature, the label and the key; the
    `packed` features as one fixed-length float list."""
    kinds = {"float": "float", "int": "int", "string": "bytes", "int_list": "int", "string_list": "bytes"}
    columns = [
        (n, "float", _fixed_list(table.column(n), f.length))
        if f.type == "float_list"
        else (n, kinds[f.type], table.column(n))
        for n, f in spec.features.items()
        if n not in packed
    ]
    if packed:
        dense = np.stack([table.column(n).to_numpy().astype(np.float32) for n in packed], axis=1)
        lists = pa.FixedSizeListArray.from_arrays(pa.array(dense.reshape(-1)), len(packed))
        columns.append((tfrecord.PACKED_FEATURE, "float", lists))
    label = table.column(spec.label.column)
    if spec.label.task == "regression":
        label_kind = "float"
    else:
        label_kind = "bytes" if pa.types.is_string(label.type) else "int"
    columns.append((spec.label.column, label_kind, label))
    if spec.key is not None:
        columns.append((spec.key, "bytes", table.column(spec.key)))
    return columns
