"""Statistics as mergeable partials: each file (or batch) summarized on its own, merged in order.

A partial holds counts, the train split's moments (count, mean, M2, extremes, merged by Chan's
pairwise update) and value counters for strings and classes. `merge_partials` folds them, in
file order, into the schema the model is built from (vocabularies, normalization) and the
statistics a person reads (`stats.json`); so one task or a fan-out of parts gives the same bytes.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from contrail import data
from contrail.errors import SchemaMismatchError, UnknownCategoryError
from contrail.spec import DataSpec


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


def combine_partials(partials: list[dict]) -> dict:
    """Fold partials (a file's batches, in order) into one of the same shape, so a file's
    statistics take the memory of its value counters, not of its batches."""
    if len(partials) == 1:
        return partials[0]
    out: dict = {k: sum(p[k] for p in partials) for k in ("rows", "train", "eval")}
    out["features"] = {}
    for name, first in partials[0]["features"].items():
        parts = [p["features"][name] for p in partials]
        if "train_counts" in first:
            out["features"][name] = {
                "nulls": sum(p["nulls"] for p in parts),
                "train_counts": dict(_merge_counts([p["train_counts"] for p in parts])),
                "eval_counts": dict(_merge_counts([p["eval_counts"] for p in parts])),
            }
        else:
            out["features"][name] = {"missing": sum(p["missing"] for p in parts), **_merge_moments(parts)}
    labels = [p["label"] for p in partials]
    if "all" in labels[0]:  # regression
        out["label"] = {
            "train": _merge_moments([p["train"] for p in labels]),
            "all": _merge_moments([p["all"] for p in labels]),
        }
    else:
        out["label"] = {
            "classes": sorted({c for p in labels for c in p["classes"]}),
            "train_counts": dict(_merge_counts([p["train_counts"] for p in labels])),
            "eval_counts": dict(_merge_counts([p["eval_counts"] for p in labels])),
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


def check_oov(stats: dict, spec: DataSpec, source: str) -> None:
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
