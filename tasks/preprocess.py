"""Step 1, preprocess: Parquet or CSV → sharded TFRecords, schema.json and stats.json.

The split is a pure function of the row (its key, or its file and position) and the split
seed, so it is the same on every run. Vocabularies and normalization statistics come from
the train split only.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa

from contrail import artifacts, cache, data, example_encoder, framing, tfrecord
from contrail.errors import EmptyInputError, UnknownCategoryError
from contrail.progress import Progress
from contrail.spec import DataSpec, load_spec

log = logging.getLogger(__name__)

STEP = "preprocess"
SCHEMA = "schema.json"
STATS = "stats.json"


@dataclass(frozen=True)
class PreprocessArgs:
    spec_path: str
    source: str  # the rendered data.source glob
    step_dir: str
    cache_dir: str | None = None  # `<pipeline>/cache`: reuse another run's output for the same content


def run(args: PreprocessArgs) -> dict:
    """Convert the source data; return the XCom result (paths and counts, never data)."""
    started = time.time()
    loaded = load_spec(args.spec_path)
    spec = loaded.spec.data
    step_dir = Path(args.step_dir)
    files = data.resolve_files(args.source, field=f"{loaded.path.name}: data.source")
    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    inputs = cache.content_fingerprints(files, cache_dir)
    fp = artifacts.fingerprint({"step": STEP, "data": spec.model_dump(), "inputs": inputs})
    reused = artifacts.reusable_result(step_dir, fp)
    if reused is not None:
        log.info("Preprocess output for %s is complete and current; reusing %s", loaded.spec.name, step_dir)
        return reused
    source = cache.lookup(cache_dir, STEP, fp)
    if source is not None and source != step_dir:
        return _from_cache(source, step_dir, fp, inputs, started)

    columns = data.required_columns(spec.features, spec.label, spec.key)
    read_so_far = Progress(log, "preprocess: reading", sum(f.stat().st_size for f in files), unit="bytes")
    tables, origins = [], []
    # Several files are read and checked side by side (pyarrow releases the GIL); within a
    # file, pyarrow decodes row groups and columns on its own threads.
    with ThreadPoolExecutor(max_workers=max(1, min(len(files), os.cpu_count() or 1, 4))) as pool:
        read = pool.map(lambda path: (path, data.read_table(path, spec.format, columns)), files)
        for i, (path, table) in enumerate(read):
            log.info("Read %d rows from %s (%d/%d files)", table.num_rows, path, i + 1, len(files))
            tables.append(table)
            origins.append((path, table.num_rows))
            read_so_far.advance(path.stat().st_size)
    table = pa.concat_tables(tables) if tables else None
    if table is None or table.num_rows == 0:
        raise EmptyInputError(f"{args.source}: expected at least one data row, found 0 rows in {len(files)} file(s)")

    is_eval = split_mask(table, origins, spec)
    # Rows are written in a seeded random order, so training can shuffle whole batches.
    rng = np.random.default_rng(spec.split.seed)
    train_idx, eval_idx = rng.permutation(np.flatnonzero(~is_eval)), np.flatnonzero(is_eval)
    if len(train_idx) == 0 or len(eval_idx) == 0:
        raise EmptyInputError(
            f"{args.source}: expected rows in both splits (eval_fraction={spec.split.eval_fraction}), "
            f"found {len(train_idx)} train and {len(eval_idx)} eval rows out of {table.num_rows}"
        )
    schema, stats = compute_schema_and_stats(table, train_idx, eval_idx, spec, loaded.spec.name)
    _check_oov(stats, spec, args.source)

    # Train records pack the non-nullable float features into one list (model.tfrecord.PACKED_FEATURE):
    # training parses them several times faster. Eval records keep the serving layout.
    packed = [n for n, f in spec.features.items() if f.type == "float" and not f.nullable]
    packed = packed if len(packed) >= 2 else []
    schema["train_packing"] = {"feature": tfrecord.PACKED_FEATURE, "columns": packed} if packed else None
    splits = {"train": (table.take(train_idx), packed), "eval": (table.take(eval_idx), [])}
    written_so_far = Progress(log, "preprocess: writing TFRecords", len(train_idx) + len(eval_idx), unit="records")
    with artifacts.staged_dir(step_dir) as staging:
        jobs = []
        for split, (rows, split_packed) in splits.items():
            n_shards = max(1, math.ceil(rows.num_rows / spec.shard_rows))
            names = tfrecord.shard_names(split, n_shards, spec.compression)
            bounds = np.linspace(0, rows.num_rows, n_shards + 1).astype(int)
            for name, lo, hi in zip(names, bounds[:-1], bounds[1:], strict=True):
                columns = _encoded_columns(rows.slice(lo, hi - lo), spec, split_packed)
                jobs.append((staging / name, partial(example_encoder.encode_table, columns)))
        outputs = {}
        for path, written in framing.write_shards(jobs, compression=spec.compression):
            outputs[path.name] = written
            log.info("Wrote %s: %d records", path.name, written)
            written_so_far.advance(written)
        artifacts.write_json_atomic(staging / SCHEMA, schema)
        artifacts.write_json_atomic(staging / STATS, stats)
        entries = artifacts.describe_outputs(staging, [*outputs, SCHEMA, STATS], outputs)
        result = {
            "step_dir": str(step_dir),
            "schema": str(step_dir / SCHEMA),
            "stats": str(step_dir / STATS),
            "train_files": [str(step_dir / n) for n in outputs if n.startswith("train-")],
            "eval_files": [str(step_dir / n) for n in outputs if n.startswith("eval-")],
            "train_records": int(len(train_idx)),
            "eval_records": int(len(eval_idx)),
            "input_rows": int(table.num_rows),
            "compression": spec.compression,
            "fingerprint": fp,
            "reused": False,
        }
        artifacts.write_manifest(
            staging, step=STEP, fingerprint_=fp, inputs=inputs, outputs=entries, result=result, started=started
        )
    cache.record(cache_dir, STEP, fp, step_dir)
    log.info(
        "Preprocessed %d rows into %d train and %d eval records in %.1fs",
        table.num_rows,
        len(train_idx),
        len(eval_idx),
        time.time() - started,
    )
    return result


def _from_cache(source: Path, step_dir: Path, fp: str, inputs: dict, started: float) -> dict:
    """This run's output, hard-linked from an earlier run's with the same content fingerprint."""
    earlier = artifacts.read_manifest(source)["result"]
    with artifacts.staged_dir(step_dir) as staging:
        entries = cache.link_outputs(source, staging)
        result = {
            **earlier,
            "step_dir": str(step_dir),
            "schema": str(step_dir / SCHEMA),
            "stats": str(step_dir / STATS),
            "train_files": [str(step_dir / Path(f).name) for f in earlier["train_files"]],
            "eval_files": [str(step_dir / Path(f).name) for f in earlier["eval_files"]],
            "reused": False,
            "cache_hit": True,
            "reused_from": str(source),
        }
        artifacts.write_manifest(
            staging, step=STEP, fingerprint_=fp, inputs=inputs, outputs=entries, result=result, started=started
        )
    log.info(
        "Same data and data spec as %s (fingerprint %s): hard-linked its output instead of recomputing", source, fp[:12]
    )
    return result


def split_mask(table: pa.Table, origins: list[tuple[Path, int]], spec: DataSpec) -> np.ndarray:
    """True for eval rows. A row's side depends only on its key (or file name and row) and the seed."""
    seed = spec.split.seed
    if spec.key is not None:
        ids = [f"{seed}\x1f{k}" for k in table.column(spec.key).to_pylist()]
    else:
        ids = [f"{seed}\x1f{path.name}\x1f{i}" for path, n in origins for i in range(n)]
    threshold = int(spec.split.eval_fraction * 2**64)
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big") < threshold for s in ids),
        dtype=bool,
        count=len(ids),
    )


def compute_schema_and_stats(
    table: pa.Table, train_idx: np.ndarray, eval_idx: np.ndarray, spec: DataSpec, pipeline: str
) -> tuple[dict, dict]:
    """The schema the model is built from, and the statistics a person reads."""
    features, feature_stats = [], {}
    train_take, eval_take = pa.array(train_idx), pa.array(eval_idx)
    for name, fspec in spec.features.items():
        column = table.column(name)
        train, evals = column.take(train_take), column.take(eval_take)
        entry = {"name": name, "type": fspec.type, "nullable": fspec.nullable}
        stat = {"type": fspec.type, "count": len(column), "train_count": len(train), "eval_count": len(evals)}
        if fspec.type == "string":
            counts = Counter(v for v in train.to_pylist() if v not in (None, ""))
            vocab = [v for v, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][: fspec.max_vocab_size]
            known = set(vocab)
            eval_values = [v for v in evals.to_pylist() if v not in (None, "")]
            oov = sum(v not in known for v in eval_values)
            entry["vocabulary"] = vocab
            stat.update(
                missing=int(column.null_count),
                vocabulary_size=len(vocab),
                top_values=[[v, counts[v]] for v in vocab[:10]],
                eval_oov_count=oov,
                eval_oov_fraction=round(oov / len(eval_values), 6) if eval_values else 0.0,
            )
        else:
            values = data.float_values(train)
            finite = values[np.isfinite(values)]
            mean = float(finite.mean()) if finite.size else 0.0
            std = float(finite.std()) if finite.size else 1.0
            entry.update(mean=mean, std=std if std > 1e-12 else 1.0)
            all_values = data.float_values(column)
            stat.update(
                missing=int(np.isnan(all_values).sum()),
                min=float(finite.min()) if finite.size else None,
                max=float(finite.max()) if finite.size else None,
                mean=mean,
                std=std,
            )
        features.append(entry)
        feature_stats[name] = stat

    label = _label_schema(table, train_idx, spec)
    schema = {
        "pipeline": pipeline,
        "features": features,
        "label": label,
        "key": spec.key,
        "compression": spec.compression,
    }
    stats = {
        "rows": table.num_rows,
        "train_rows": int(len(train_idx)),
        "eval_rows": int(len(eval_idx)),
        "split": asdict_split(spec),
        "features": feature_stats,
        "label": _label_stats(table, train_idx, eval_idx, spec, label),
    }
    return schema, stats


def asdict_split(spec: DataSpec) -> dict:
    return {"eval_fraction": spec.split.eval_fraction, "seed": spec.split.seed, "by": spec.key or "file_and_row"}


def _label_schema(table: pa.Table, train_idx: np.ndarray, spec: DataSpec) -> dict:
    column = table.column(spec.label.column)
    label = {"column": spec.label.column, "task": spec.label.task}
    if spec.label.task == "regression":
        values = data.float_values(column.take(pa.array(train_idx)))
        std = float(values.std())
        label.update(dtype="float", mean=float(values.mean()), std=std if std > 1e-12 else 1.0)
        return label
    classes = sorted(set(column.to_pylist()))
    label.update(dtype="string" if pa.types.is_string(column.type) else "int", classes=classes)
    if spec.label.task == "binary" and len(classes) != 2:
        raise EmptyInputError(
            f"Label {spec.label.column!r}: expected exactly 2 classes for a binary task, "
            f"found {len(classes)}: {classes[:10]}"
        )
    if len(classes) < 2:
        raise EmptyInputError(f"Label {spec.label.column!r}: expected at least 2 classes, found {classes}")
    return label


def _label_stats(table, train_idx, eval_idx, spec: DataSpec, label: dict) -> dict:
    column = table.column(spec.label.column)
    if spec.label.task == "regression":
        values = data.float_values(column)
        return {"min": float(values.min()), "max": float(values.max()), "mean": float(values.mean())}
    values = column.to_pylist()
    return {
        "train_class_counts": dict(Counter(str(values[i]) for i in train_idx)),
        "eval_class_counts": dict(Counter(str(values[i]) for i in eval_idx)),
        "classes": label["classes"],
    }


def _check_oov(stats: dict, spec: DataSpec, source: str) -> None:
    for name, stat in stats["features"].items():
        if stat.get("eval_oov_fraction", 0.0) > spec.max_oov_fraction:
            raise UnknownCategoryError(
                f"Feature {name!r} in {source}: expected at most {spec.max_oov_fraction:.1%} of eval values "
                f"outside the train vocabulary (data.max_oov_fraction), found {stat['eval_oov_fraction']:.1%} "
                f"({stat['eval_oov_count']} values)"
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
