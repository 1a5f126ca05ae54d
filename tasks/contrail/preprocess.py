"""Step 1, preprocess: Parquet or CSV → sharded TFRecords, schema.json and stats.json.

The split is a pure function of the row (its key, or its file and position) and the split
seed, so it is the same on every run. Vocabularies and normalization statistics come from
the train split only.

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
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from contrail import artifacts, cache, data, example_encoder, framing, layout, tfrecord
from contrail.errors import ArtifactError, EmptyInputError, SchemaMismatchError, UnknownCategoryError
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


def _inputs_and_fingerprint(args: PreprocessArgs, loaded: LoadedSpec) -> tuple[list[Path], dict, str]:
    spec = loaded.spec.data
    files = data.resolve_files(args.source, field=f"{loaded.path.name}: data.source")
    inputs = cache.content_fingerprints(files, Path(args.cache_dir) if args.cache_dir else None)
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
    part = _process_files([Path(f) for f in args.files], loaded.spec.data)
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
    schema, stats = merge_partials(part.partials, spec, loaded.spec.name)
    _check_oov(stats, spec, args.source)
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
def _process_files(files: list[Path], spec: DataSpec) -> _Part:
    """Read and check each file (several side by side: pyarrow releases the GIL, and decodes a
    file's row groups and columns on its own threads), then split, summarize and encode it."""
    columns = data.required_columns(spec.features, spec.label, spec.key)
    progress = Progress(log, "preprocess: reading", sum(f.stat().st_size for f in files), unit="bytes")
    part = _Part()
    packed = _packed(spec)
    with ThreadPoolExecutor(max_workers=max(1, min(len(files), os.cpu_count() or 1, 4))) as pool:
        read = pool.map(lambda path: (path, data.read_table(path, spec.format, columns)), files)
        for i, (path, table) in enumerate(read):
            log.info("Read %d rows from %s (%d/%d files)", table.num_rows, path, i + 1, len(files))
            is_eval = split_mask(table, [(path, table.num_rows)], spec)
            part.partials.append(file_partials(table, is_eval, spec))
            train, evals = table.filter(pa.array(~is_eval)), table.filter(pa.array(is_eval))
            part.train.append(_serialize(example_encoder.encode_table(_encoded_columns(train, spec, packed))))
            part.eval.append(_serialize(example_encoder.encode_table(_encoded_columns(evals, spec, []))))
            progress.advance(path.stat().st_size)
    return part


def _load_parts(part_dirs: Sequence[str], files: list[Path]) -> _Part:
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


def split_mask(table: pa.Table, origins: list[tuple[Path, int]], spec: DataSpec) -> np.ndarray:
    """True for eval rows. A row's side depends only on its key (or file name and row) and the
    seed: the 64-bit hash of `seed 0x1F key` (or `seed 0x1F file 0x1F row`) below
    `eval_fraction * 2**64`. Hashed for all rows at once: FNV-1a over the bytes, one byte
    position at a time, then the splitmix64 finalizer to spread the bits."""
    seed = spec.split.seed
    if spec.key is not None:
        hashes = [_row_hashes(f"{seed}\x1f".encode(), table.column(spec.key))]
    else:
        hashes = [
            _row_hashes(f"{seed}\x1f{path.name}\x1f".encode(), pa.array(np.arange(n, dtype=np.int64)))
            for path, n in origins
        ]
    joined = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    return joined < np.uint64(min(int(spec.split.eval_fraction * 2**64), 2**64 - 1))


_FNV_PRIME = np.uint64(0x100000001B3)


def _row_hashes(prefix: bytes, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    text = pc.cast(values, pa.large_string()).cast(pa.large_binary())
    text = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
    n = len(text)
    start = 0xCBF29CE484222325
    for byte in prefix:
        start = ((start ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    hashes = np.full(n, start, dtype=np.uint64)
    if n:
        offsets = np.frombuffer(text.buffers()[1], dtype=np.int64)[text.offset : text.offset + n + 1]
        raw = text.buffers()[2]
        data = np.frombuffer(raw, dtype=np.uint8) if raw is not None else np.zeros(0, np.uint8)
        lengths = np.diff(offsets)
        with np.errstate(over="ignore"):
            for j in range(int(lengths.max())):
                active = np.flatnonzero(lengths > j)
                byte = data[offsets[active] + j].astype(np.uint64)
                hashes[active] = (hashes[active] ^ byte) * _FNV_PRIME
    return _splitmix64(hashes)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def file_partials(table: pa.Table, is_eval: np.ndarray, spec: DataSpec) -> dict:
    """One file's contribution to the statistics, JSON-able: counts, sums for the train
    split's mean and variance (Chan's pairwise form), extremes, and value counters."""
    train_mask, eval_mask = pa.array(~is_eval), pa.array(is_eval)
    out: dict = {"rows": table.num_rows, "train": int((~is_eval).sum()), "eval": int(is_eval.sum()), "features": {}}
    for name, fspec in spec.features.items():
        column = table.column(name)
        train, evals = column.filter(train_mask), column.filter(eval_mask)
        if fspec.type == "string":
            out["features"][name] = {
                "nulls": int(column.null_count),
                "train_counts": _value_counts(train, drop_empty=True),
                "eval_counts": _value_counts(evals, drop_empty=True),
            }
        else:
            values = data.float_values(train)
            finite = values[np.isfinite(values)]
            out["features"][name] = {
                "missing": int(np.isnan(data.float_values(column)).sum()),
                **_moments(finite),
            }
    label = table.column(spec.label.column)
    if spec.label.task == "regression":
        train_values = data.float_values(label.filter(train_mask))
        all_values = data.float_values(label)
        out["label"] = {"train": _moments(train_values), "all": _moments(all_values)}
    else:
        out["label"] = {
            "classes": sorted(pc.unique(label).to_pylist()),
            "train_counts": {str(k): v for k, v in _value_counts(label.filter(train_mask)).items()},
            "eval_counts": {str(k): v for k, v in _value_counts(label.filter(eval_mask)).items()},
        }
    return out


def _value_counts(array: pa.Array | pa.ChunkedArray, drop_empty: bool = False) -> dict:
    """`{value: count}` of the non-null values (and non-empty strings), in order of first appearance."""
    array = array.drop_null()
    if drop_empty and len(array):
        array = array.filter(pc.not_equal(array, ""))
    counts = pc.value_counts(array)
    return dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True))


def _moments(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"n": 0, "mean": 0.0, "m2": 0.0, "min": None, "max": None}
    mean = float(values.mean())
    return {
        "n": int(values.size),
        "mean": mean,
        "m2": float(((values - mean) ** 2).sum()),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def _merge_moments(parts: list[dict]) -> dict:
    """Chan et al.'s pairwise update, applied in file order (so the result is the same
    whichever task computed each part)."""
    total = {"n": 0, "mean": 0.0, "m2": 0.0, "min": None, "max": None}
    for part in parts:
        if not part["n"]:
            continue
        n = total["n"] + part["n"]
        delta = part["mean"] - total["mean"]
        total["mean"] += delta * part["n"] / n
        total["m2"] += part["m2"] + delta * delta * total["n"] * part["n"] / n
        total["n"] = n
        total["min"] = part["min"] if total["min"] is None else min(total["min"], part["min"])
        total["max"] = part["max"] if total["max"] is None else max(total["max"], part["max"])
    return total


def _merge_counts(counters: list[dict]) -> Counter:
    merged: Counter = Counter()
    for counter in counters:
        merged.update(counter)
    return merged


def merge_partials(partials: list[dict], spec: DataSpec, pipeline: str) -> tuple[dict, dict]:
    """The schema the model is built from, and the statistics a person reads, from the
    per-file partials in file order."""
    rows = sum(p["rows"] for p in partials)
    train_rows, eval_rows = sum(p["train"] for p in partials), sum(p["eval"] for p in partials)
    features, feature_stats = [], {}
    for name, fspec in spec.features.items():
        parts = [p["features"][name] for p in partials]
        entry = {"name": name, "type": fspec.type, "nullable": fspec.nullable}
        stat = {"type": fspec.type, "count": rows, "train_count": train_rows, "eval_count": eval_rows}
        if fspec.type == "string":
            counts = _merge_counts([p["train_counts"] for p in parts])
            vocab = [v for v, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][: fspec.max_vocab_size]
            known = set(vocab)
            eval_counts = _merge_counts([p["eval_counts"] for p in parts])
            # Outside the vocabulary for two reasons: cut by max_vocab_size (the user's choice),
            # or never seen in train (drift). Only the second counts against max_oov_fraction.
            unseen = sum(c for v, c in eval_counts.items() if v not in counts)
            cut = sum(c for v, c in eval_counts.items() if v in counts and v not in known)
            train_cut = sum(c for v, c in counts.items() if v not in known)
            entry["vocabulary"] = vocab
            entry["cut_fraction"] = _share(train_cut, sum(counts.values()))  # inference expects this much
            stat.update(
                missing=sum(p["nulls"] for p in parts),
                vocabulary_size=len(vocab),
                top_values=[[v, counts[v]] for v in vocab[:10]],
                train_cut_fraction=entry["cut_fraction"],
                eval_oov_count=unseen + cut,
                eval_oov_fraction=_share(unseen + cut, sum(eval_counts.values())),
                eval_unseen_count=unseen,
                eval_unseen_fraction=_share(unseen, sum(eval_counts.values())),
                eval_cut_count=cut,
                eval_cut_fraction=_share(cut, sum(eval_counts.values())),
            )
        else:
            moments = _merge_moments(parts)
            mean = moments["mean"] if moments["n"] else 0.0
            std = math.sqrt(moments["m2"] / moments["n"]) if moments["n"] else 1.0
            entry.update(mean=mean, std=std if std > 1e-12 else 1.0)
            stat.update(
                missing=sum(p["missing"] for p in parts), min=moments["min"], max=moments["max"], mean=mean, std=std
            )
        features.append(entry)
        feature_stats[name] = stat
    label, label_stats = _merge_label([p["label"] for p in partials], spec)
    schema = {
        "pipeline": pipeline,
        "features": features,
        "label": label,
        "key": spec.key,
        "compression": spec.compression,
    }
    stats = {
        "rows": rows,
        "train_rows": train_rows,
        "eval_rows": eval_rows,
        "split": {"eval_fraction": spec.split.eval_fraction, "seed": spec.split.seed, "by": spec.key or "file_and_row"},
        "features": feature_stats,
        "label": label_stats,
    }
    return schema, stats


def _merge_label(parts: list[dict], spec: DataSpec) -> tuple[dict, dict]:
    label = {"column": spec.label.column, "task": spec.label.task}
    if spec.label.task == "regression":
        train, every = _merge_moments([p["train"] for p in parts]), _merge_moments([p["all"] for p in parts])
        std = math.sqrt(train["m2"] / train["n"]) if train["n"] else 1.0
        label.update(dtype="float", mean=train["mean"], std=std if std > 1e-12 else 1.0)
        return label, {"min": every["min"], "max": every["max"], "mean": every["mean"]}
    classes = sorted({c for p in parts for c in p["classes"]})
    label.update(dtype="string" if classes and isinstance(classes[0], str) else "int", classes=classes)
    if spec.label.task == "binary" and len(classes) != 2:
        raise SchemaMismatchError(
            f"Label {spec.label.column!r}: expected exactly 2 classes for a binary task, "
            f"found {len(classes)}: {classes[:10]}",
            field="data.label",
        )
    if len(classes) < 2:
        raise SchemaMismatchError(
            f"Label {spec.label.column!r}: expected at least 2 classes, found {classes}", field="data.label"
        )
    stats = {
        "train_class_counts": dict(_merge_counts([p["train_counts"] for p in parts])),
        "eval_class_counts": dict(_merge_counts([p["eval_counts"] for p in parts])),
        "classes": classes,
    }
    return label, stats


def _share(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


def _check_oov(stats: dict, spec: DataSpec, source: str) -> None:
    """Eval values never seen in train, beyond `max_oov_fraction`, are drift; values the
    vocabulary cut (`max_vocab_size`) are the spec's choice and do not count."""
    for name, stat in stats["features"].items():
        if stat.get("eval_unseen_fraction", 0.0) > spec.max_oov_fraction:
            raise UnknownCategoryError(
                f"Feature {name!r} in {source}: expected at most {spec.max_oov_fraction:.1%} of eval values "
                f"never seen in the train split (data.max_oov_fraction), found {stat['eval_unseen_fraction']:.1%} "
                f"({stat['eval_unseen_count']} values; another {stat['eval_cut_count']} are train values that "
                f"max_vocab_size left out of the vocabulary, which do not count)",
                path=source,
                field=f"data.features.{name}",
            )


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
