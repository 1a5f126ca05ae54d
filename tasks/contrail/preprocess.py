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

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from contrail import artifacts, cache, data, example_encoder, framing, layout, split, statistics, tfrecord
from contrail.errors import ArtifactError, EmptyInputError
from contrail.layout import PartDir, PreprocessDir
from contrail.progress import Progress
from contrail.results import PartResult, PreprocessResult
from contrail.spec import DataSpec, LoadedSpec, load_spec
from contrail.step import StepRun

log = logging.getLogger(__name__)

STEP = "preprocess"
PART_STEP = "preprocess-part"
# Bumped whenever the same inputs would give other bytes (the split hash, the record layout),
# so neither this run's manifest nor the cross-run cache hands back output of an older format.
FORMAT = 3  # 3: string features record the vocabulary cut (schema `cut_fraction`, stats' unseen/cut counts)


@dataclass(frozen=True)
class PreprocessArgs:
    spec_path: str
    source: str  # the rendered data.source glob
    step_dir: str
    cache_dir: str | None = None  # `<pipeline>/cache`: reuse another run's output for the same content
    parts: Sequence[str] | None = None  # fan-out: the folders `run_part` wrote, in file order


@dataclass(frozen=True)
class PartArgs:
    """One group of the fan-out's plan (the mapped task's argument, as XCom)."""

    spec_path: str
    files: list[str]  # this part's files, in source order
    part_dir: str
    fingerprint: str = ""  # the whole step's, from `plan`: a part is reused only for the same inputs

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
    """What one group of files contributes: partials per file, encoded records, row counts."""

    partials: list[dict] = field(default_factory=list)
    train: list[pa.Array] = field(default_factory=list)  # serialized train records, per file
    eval: list[pa.Array] = field(default_factory=list)


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
    return [
        PartArgs(
            spec_path=args.spec_path,
            files=[str(files[i]) for i in group],
            part_dir=str(run_dir.part(k, len(groups)).path),
            fingerprint=fp,
        )
        for k, group in enumerate(groups)
    ]


def run_part(args: PartArgs) -> PartResult:
    """Read, check, split, summarize and encode one group of files into `part_dir`."""
    loaded = load_spec(args.spec_path)
    part_dir = PartDir(Path(args.part_dir))
    fp = artifacts.fingerprint({"step": PART_STEP, "step_fingerprint": args.fingerprint, "files": args.files})
    step = StepRun(PART_STEP, PartResult, part_dir.path, fp, {"files": args.files})
    if (done := step.reusable()) is not None:
        return done
    part = _process_files([data.input_file(f) for f in args.files], loaded.spec.data)
    train, evals = _concat(part.train), _concat(part.eval)
    with step.staged() as staging:
        staged = PartDir(staging)
        table = pa.table(
            {
                "split": pa.array(["train"] * len(train) + ["eval"] * len(evals)).dictionary_encode(),
                "record": pa.concat_arrays([train, evals]),
            }
        )
        with ipc.new_file(staged.records, table.schema) as writer:
            writer.write_table(table)
        artifacts.write_json_atomic(staged.partials, part.partials)
        result = PartResult(
            step_dir=str(part_dir.path), fingerprint=fp, files=list(args.files), train=len(train), eval=len(evals)
        )
        step.commit(staging, result, [staged.records.name, staged.partials.name])
    log.info(
        "Part %s: %d files, %d train and %d eval records", part_dir.path.name, len(args.files), len(train), len(evals)
    )
    return result


def run(args: PreprocessArgs) -> PreprocessResult:
    """Convert the source data; return the result (paths and counts, never data).

    With `parts` (the fan-out's reduce), the records and partial statistics come from the
    folders `run_part` wrote; otherwise every file is processed here."""
    loaded = load_spec(args.spec_path)
    spec = loaded.spec.data
    out = PreprocessDir(Path(args.step_dir))
    files, inputs, fp = _inputs_and_fingerprint(args, loaded)
    step = _step_run(args, fp, inputs)
    if (done := step.reusable()) is not None:
        return done
    if (source := step.cached()) is not None:
        return _from_cache(step, source)

    part = _load_parts(args.parts, files) if args.parts else _process_files(files, spec)
    train_records, eval_records = _concat(part.train), _concat(part.eval)
    rows = sum(p["rows"] for p in part.partials)
    if rows == 0:
        raise EmptyInputError(
            f"{args.source}: expected at least one data row, found 0 rows in {len(files)} file(s)", path=args.source
        )
    if len(train_records) == 0 or len(eval_records) == 0:
        raise EmptyInputError(
            f"{args.source}: expected rows in both splits (eval_fraction={spec.split.eval_fraction}), "
            f"found {len(train_records)} train and {len(eval_records)} eval rows out of {rows}",
            path=args.source,
            field="data.split.eval_fraction",
        )
    schema, stats = statistics.merge_partials(part.partials, spec, loaded.spec.name)
    statistics.check_oov(stats, spec, args.source)
    packed = _packed(spec)
    schema["train_packing"] = {"feature": tfrecord.PACKED_FEATURE, "columns": packed} if packed else None
    # Train records are written in a seeded random order, so training can shuffle whole batches.
    order = np.random.default_rng(spec.split.seed).permutation(len(train_records))
    splits = {"train": train_records.take(pa.array(order)), "eval": eval_records}
    written_so_far = Progress(log, "preprocess: writing TFRecords", rows, unit="records")
    with step.staged() as staging:
        jobs = []
        for split, records in splits.items():
            n_shards = max(1, math.ceil(len(records) / spec.shard_rows))
            names = tfrecord.shard_names(split, n_shards, spec.compression)
            bounds = np.linspace(0, len(records), n_shards + 1).astype(int)
            for name, lo, hi in zip(names, bounds[:-1], bounds[1:], strict=True):
                jobs.append((staging / name, _as_encoded(records.slice(lo, hi - lo))))
        outputs = {}
        for path, written in framing.write_shards(jobs, compression=spec.compression):
            outputs[path.name] = written
            log.info("Wrote %s: %d records", path.name, written)
            written_so_far.advance(written)
        staged = PreprocessDir(staging)
        artifacts.write_json_atomic(staged.schema, schema)
        artifacts.write_json_atomic(staged.stats, stats)
        result = PreprocessResult(
            step_dir=str(out.path),
            fingerprint=fp,
            schema=str(out.schema),
            stats=str(out.stats),
            train_files=[str(out.path / n) for n in outputs if n.startswith("train-")],
            eval_files=[str(out.path / n) for n in outputs if n.startswith("eval-")],
            train_records=len(train_records),
            eval_records=len(eval_records),
            input_rows=rows,
            compression=spec.compression,
            parts=len(args.parts) if args.parts else None,
        )
        step.commit(staging, result, [*outputs, out.schema.name, out.stats.name], outputs)
    for part_dir in args.parts or ():  # intermediate: the committed shards supersede them
        shutil.rmtree(part_dir, ignore_errors=True)
    log.info(
        "Preprocessed %d rows into %d train and %d eval records in %.1fs",
        rows,
        len(train_records),
        len(eval_records),
        time.time() - step.started,
    )
    return result


# -- per file --------------------------------------------------------------------------------
def _process_files(files: list[data.InputFile], spec: DataSpec) -> _Part:
    """Read and check each file (several side by side: pyarrow releases the GIL, and decodes a
    file's row groups and columns on its own threads), then split, summarize and encode it."""
    columns = data.required_columns(spec.features, spec.label, spec.key)
    progress = Progress(log, "preprocess: reading", sum(f.size for f in files), unit="bytes")
    part = _Part()
    packed = _packed(spec)
    with ThreadPoolExecutor(max_workers=max(1, min(len(files), os.cpu_count() or 1, 4))) as pool:
        read = pool.map(lambda path: (path, data.read_table(path, spec.format, columns)), files)
        for i, (path, table) in enumerate(read):
            log.info("Read %d rows from %s (%d/%d files)", table.num_rows, path, i + 1, len(files))
            is_eval = split.split_mask(table, [(path, table.num_rows)], spec)
            part.partials.append(statistics.file_partials(table, is_eval, spec))
            train, evals = table.filter(pa.array(~is_eval)), table.filter(pa.array(is_eval))
            part.train.append(_serialize(example_encoder.encode_table(_encoded_columns(train, spec, packed))))
            part.eval.append(_serialize(example_encoder.encode_table(_encoded_columns(evals, spec, []))))
            progress.advance(path.size)
    return part


def _load_parts(part_dirs: Sequence[str], files: list[data.InputFile]) -> _Part:
    part = _Part()
    covered: list[str] = []
    for folder in part_dirs:
        part_dir = PartDir(Path(folder))
        manifest = artifacts.read_manifest(part_dir.path)
        if manifest is None:
            raise ArtifactError(f"{part_dir.path}: expected a committed preprocess part, found none", path=folder)
        covered += PartResult.from_xcom(manifest["result"], source=str(part_dir.manifest)).files
        part.partials += json.loads(part_dir.partials.read_text())
        with ipc.open_file(part_dir.records) as reader:
            table = reader.read_all()
        split = table.column("split").combine_chunks().dictionary_decode()
        record = table.column("record").combine_chunks()
        part.train.append(record.filter(pc.equal(split, "train")))
        part.eval.append(record.filter(pc.equal(split, "eval")))
    if covered != [str(f) for f in files]:
        raise ArtifactError(f"preprocess parts: expected the files {[str(f) for f in files]} in order, found {covered}")
    return part


def _serialize(encoded: example_encoder.Encoded) -> pa.Array:
    """Encoded records as one Arrow binary array (zero-copy over the encoder's buffers)."""
    return pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(encoded), [None, pa.py_buffer(encoded.offsets), pa.py_buffer(encoded.data)]
    )


def _as_encoded(records: pa.Array) -> example_encoder.Encoded:
    records = records.cast(pa.large_binary())
    if records.offset or records.null_count:
        records = pa.concat_arrays([records])  # a compact copy, offsets from zero
    offsets = np.frombuffer(records.buffers()[1], dtype=np.int64)[: len(records) + 1]
    data_buffer = records.buffers()[2]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    start = int(offsets[0])
    return example_encoder.Encoded(data[start : int(offsets[-1])], offsets - start)


def _concat(arrays: list[pa.Array]) -> pa.Array:
    arrays = [a.cast(pa.large_binary()) for a in arrays]
    return pa.concat_arrays(arrays) if arrays else pa.array([], pa.large_binary())


def _packed(spec: DataSpec) -> list[str]:
    """The float features train records pack into one list (two or more non-nullable ones)."""
    names = [n for n, f in spec.features.items() if f.type == "float" and not f.nullable]
    return names if len(names) >= 2 else []


def _from_cache(step: StepRun[PreprocessResult], source: Path) -> PreprocessResult:
    """This run's output, hard-linked from an earlier run's with the same content fingerprint."""
    earlier = PreprocessResult.from_xcom(artifacts.read_manifest(source)["result"], source=str(source))
    out = PreprocessDir(step.step_dir)
    with step.staged() as staging:
        entries = cache.link_outputs(source, staging)
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


def _encoded_columns(table: pa.Table, spec: DataSpec, packed: list[str]) -> list[tuple[str, str, pa.Array]]:
    """(name, Example list kind, values) for every feature, the label and the key; the
    `packed` features as one fixed-length float list."""
    kinds = {"float": "float", "int": "int", "string": "bytes"}
    columns = [(n, kinds[f.type], table.column(n)) for n, f in spec.features.items() if n not in packed]
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
