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

from contrail import data, drift, text
from contrail.errors import EmptyInputError, SchemaMismatchError, UnknownCategoryError
from contrail.spec import AUTO_ONE_HOT_MAX, DataSpec, FeatureSpec


def file_partials(table: pa.Table, is_eval: np.ndarray, spec: DataSpec) -> dict:
    """One file's contribution to the statistics, JSON-able: counts, sums for the train
    split's mean and variance (Chan's pairwise form), extremes, and value counters."""
    train_mask, eval_mask = pa.array(~is_eval), pa.array(is_eval)
    out: dict = {"rows": table.num_rows, "train": int((~is_eval).sum()), "eval": int(is_eval.sum()), "features": {}}
    for name, fspec in spec.features.items():
        column = table.column(name)
        train, evals = column.filter(train_mask), column.filter(eval_mask)
        if fspec.type == "string" and fspec.kind == "text":
            out["features"][name] = _text_partial(column, train, evals, fspec)
        elif fspec.type in ("string", "string_list", "int_list"):
            if fspec.type != "string":  # a list's items are its values (an int's as its decimal string)
                train, evals = _items(train), _items(evals)
            train_counts, eval_counts = _value_counts(train, drop_empty=True), _value_counts(evals, drop_empty=True)
            out["features"][name] = {
                "nulls": int(column.null_count),
                "train_counts": train_counts,
                "eval_counts": eval_counts,
                "train_total": sum(train_counts.values()),
                "eval_total": sum(eval_counts.values()),
                "train_error": 0,  # Misra-Gries: how much any count may be short (`_sketch`)
                "eval_error": 0,
            }
        else:
            if fspec.type == "float_list":  # every element of the vectors; a missing vector counts once
                values = data.list_matrix(train, fspec.length).reshape(-1)
                missing = int(column.null_count)
            else:
                values = data.float_values(train)
                missing = int(np.isnan(data.float_values(column)).sum())
            finite = values[np.isfinite(values)]
            out["features"][name] = {
                "missing": missing,
                **_moments(finite),
                "histogram": drift.histogram(finite),
            }
            if fspec.categorical:  # an int as categories: its values' counts, for a vocabulary
                counts = _value_counts(train)
                out["features"][name].update(category_counts={str(v): c for v, c in counts.items()}, category_error=0)
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


def _text_partial(column, train, evals, fspec: FeatureSpec) -> dict:
    """A text feature's partial: the counts of its tokens (and n-grams) stand for the values'."""
    ngrams = fspec.encoding.to_schema()["ngrams"]
    train_counts, doc_counts, docs = text.counts(train, ngrams)
    eval_counts, _, _ = text.counts(evals, ngrams)
    return {
        "nulls": int(column.null_count),
        "train_counts": train_counts,
        "eval_counts": eval_counts,
        "train_total": sum(train_counts.values()),
        "eval_total": sum(eval_counts.values()),
        "train_error": 0,
        "eval_error": 0,
        "doc_counts": doc_counts,
        "doc_error": 0,
        "docs": docs,
    }


def combine_partials(partials: list[dict], spec: DataSpec) -> dict:
    """Fold partials (a file's batches, in order) into one of the same shape, so a file's
    statistics take the memory of its value counters, not of its batches."""
    if len(partials) == 1:
        return partials[0]
    out: dict = {k: sum(p[k] for p in partials) for k in ("rows", "train", "eval")}
    out["features"] = {}
    for name, first in partials[0]["features"].items():
        parts = [p["features"][name] for p in partials]
        if "train_counts" in first:
            capacity = _capacity(spec.features[name])
            train_counts, train_error = _sketch(parts, "train", capacity)
            eval_counts, eval_error = _sketch(parts, "eval", capacity)
            out["features"][name] = {
                "nulls": sum(p["nulls"] for p in parts),
                "train_counts": train_counts,
                "eval_counts": eval_counts,
                "train_total": sum(p["train_total"] for p in parts),
                "eval_total": sum(p["eval_total"] for p in parts),
                "train_error": train_error,
                "eval_error": eval_error,
            }
            if "doc_counts" in first:
                doc_counts, doc_error = _sketch(parts, "doc", capacity)
                out["features"][name].update(
                    doc_counts=doc_counts, doc_error=doc_error, docs=sum(p["docs"] for p in parts)
                )
        else:
            out["features"][name] = {
                "missing": sum(p["missing"] for p in parts),
                **_merge_moments(parts),
                "histogram": drift.merge_histograms([p["histogram"] for p in parts]),
            }
            if "category_counts" in first:
                counts, error = _sketch(parts, "category", sketch_capacity(spec.features[name].max_vocab_size))
                out["features"][name].update(category_counts=counts, category_error=error)
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


def _items(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """The items of a list column's lists, as strings (JSON keys; a vocabulary of ints is made
    ints again in the schema)."""
    return pc.list_flatten(column).cast(pa.string())


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


# A string feature's value counters are exact up to this many distinct values, then a
# Misra-Gries summary of that many counters (mergeable: Agarwal et al., 2012).
SKETCH_MIN_CAPACITY = 100_000


def sketch_capacity(max_vocab_size: int) -> int:
    return max(SKETCH_MIN_CAPACITY, 4 * max_vocab_size)


def _capacity(fspec: FeatureSpec) -> int:
    """A string feature's sketch capacity: 4 × the vocabulary it keeps (a text's `max_tokens`)."""
    kept = fspec.encoding.to_schema()["max_tokens"] if fspec.kind == "text" else fspec.max_vocab_size
    return sketch_capacity(max(kept, fspec.max_vocab_size))


def _sketch(parts: list[dict], side: str, capacity: int) -> tuple[dict, int]:
    """Merge the parts' `<side>_counts` in order, keeping at most `capacity` counters; returns
    the counts and how much any of them may be short of the true count (0: exact).

    Whenever more than `capacity` distinct values are held, the (capacity + 1)-th largest count
    is subtracted from every count and the values left at zero or below are dropped
    (Misra-Gries). Each drop lowers a count by at most total / (capacity + 1), so a value with a
    true share above 1 / (capacity + 1) of the column is never lost, and the kept counts rank
    the frequent values as the exact counts would, up to that error."""
    merged: Counter = Counter()
    error = 0
    for part in parts:
        merged.update(part[f"{side}_counts"])
        error += part.get(f"{side}_error", 0)
        if len(merged) > capacity:
            threshold = int(np.partition(np.fromiter(merged.values(), np.int64), -(capacity + 1))[-(capacity + 1)])
            merged = Counter({v: c - threshold for v, c in merged.items() if c > threshold})
            error += threshold
    return dict(merged), error


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
        if fspec.type in ("string", "string_list", "int_list"):
            capacity = _capacity(fspec)
            counts, train_error = _sketch(parts, "train", capacity)
            size = fspec.encoding.to_schema()["max_tokens"] if fspec.kind == "text" else fspec.max_vocab_size
            order = (lambda kv: (-kv[1], int(kv[0]))) if fspec.type == "int_list" else (lambda kv: (-kv[1], kv[0]))
            vocab = [v for v, _ in sorted(counts.items(), key=order)][:size]
            if fspec.kind == "text":
                entry.update(_text_entry(name, fspec, parts, vocab, capacity))
            known = set(vocab)
            eval_counts, eval_error = _sketch(parts, "eval", capacity)
            train_total, eval_total = sum(p["train_total"] for p in parts), sum(p["eval_total"] for p in parts)
            # Outside the vocabulary for two reasons: cut by max_vocab_size (the user's choice),
            # or never seen in train (drift). Only the second counts against max_oov_fraction.
            # Exact below the sketch's capacity; past it, eval values the summary dropped count
            # as unseen, and values rarer in train than the error may too (stats say how much).
            in_vocab = sum(c for v, c in eval_counts.items() if v in known)
            cut = sum(c for v, c in eval_counts.items() if v in counts and v not in known)
            unseen = eval_total - in_vocab - cut
            train_cut = train_total - sum(counts[v] for v in vocab)
            entry["vocabulary"] = [int(v) for v in vocab] if fspec.type == "int_list" else vocab
            entry["cut_fraction"] = _share(train_cut, train_total)  # inference expects this much
            entry.update(_encoding(fspec, len(vocab)))
            stat.update(
                missing=sum(p["nulls"] for p in parts),
                vocabulary_size=len(vocab),
                top_values=[[v, counts[v]] for v in vocab[:10]],
                train_cut_fraction=entry["cut_fraction"],
                eval_oov_count=unseen + cut,
                eval_oov_fraction=_share(unseen + cut, eval_total),
                eval_unseen_count=unseen,
                eval_unseen_fraction=_share(unseen, eval_total),
                eval_cut_count=cut,
                eval_cut_fraction=_share(cut, eval_total),
            )
            # For drift checks against this model later (contrail.drift): train value counts
            # (of a text's tokens and n-grams: `value_kind` says which, to compare like with like).
            stat.update(value_counts=drift.top_values(counts), value_total=train_total)
            if fspec.kind == "text":
                stat["value_kind"] = f"text:{fspec.encoding.to_schema()['ngrams']}"
            if train_error or eval_error:  # more distinct values than the sketch holds
                stat["sketch"] = {
                    "capacity": capacity,
                    "train_max_undercount": train_error,
                    "eval_max_undercount": eval_error,
                }
        else:
            moments = _merge_moments(parts)
            mean = moments["mean"] if moments["n"] else 0.0
            std = math.sqrt(moments["m2"] / moments["n"]) if moments["n"] else 1.0
            entry.update(mean=mean, std=std if std > 1e-12 else 1.0)
            if fspec.type == "float_list":
                entry["length"] = fspec.length
            histogram = drift.merge_histograms([p["histogram"] for p in parts])
            entry.update(_numeric_encoding(fspec, parts, histogram))
            stat.update(
                missing=sum(p["missing"] for p in parts),
                min=moments["min"],
                max=moments["max"],
                mean=mean,
                std=std,
                histogram=histogram,  # train values, for drift
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
    if spec.crosses:  # only then, so that a spec without crosses gives today's schema
        schema["crosses"] = [{"name": c.name, **c.model_dump(exclude_none=True)} for c in spec.crosses]
    stats = {
        "rows": rows,
        "train_rows": train_rows,
        "eval_rows": eval_rows,
        "split": {"eval_fraction": spec.split.eval_fraction, "seed": spec.split.seed, "by": spec.key or "file_and_row"},
        "features": feature_stats,
        "label": label_stats,
    }
    return schema, stats


def _encoding(fspec: FeatureSpec, vocabulary_size: int) -> dict:
    """The schema's `encoding` of a feature whose spec names one (nothing for the default, so a
    spec without encodings gives today's schema byte for byte); `auto` resolved by the
    vocabulary's size."""
    encoding = fspec.encoding
    if encoding is None:
        return {}
    if encoding.kind == "auto":
        if vocabulary_size <= AUTO_ONE_HOT_MAX:
            return {"encoding": {"kind": "one_hot"}}
        # fastai's rule of thumb for an embedding's width, capped at 32.
        return {"encoding": {"kind": "embedding", "dim": min(32, math.ceil(1.6 * vocabulary_size**0.56))}}
    return {"encoding": encoding.to_schema()}


def _text_entry(name: str, fspec: FeatureSpec, parts: list[dict], vocab: list[str], capacity: int) -> dict:
    """A text feature's inverse document frequencies (for `output: tf_idf`), as Keras computes
    them: log(1 + documents / (1 + documents with the token))."""
    if not vocab:
        raise EmptyInputError(
            f"Feature {name!r}: expected tokens in the train split for a text encoding, found none "
            "(every value empty or punctuation)",
            field=f"data.features.{name}",
        )
    out = {}
    if fspec.encoding.to_schema()["output"] == "tf_idf":
        doc_counts, _ = _sketch(parts, "doc", capacity)
        docs = sum(p["docs"] for p in parts)
        out["idf"] = [math.log(1 + docs / (1 + doc_counts.get(v, 0))) for v in vocab]
    return out


def _numeric_encoding(fspec: FeatureSpec, parts: list[dict], histogram: dict) -> dict:
    """What the model needs for an int or float feature's encoding, from the train statistics:
    a vocabulary (ints as categories), quantile boundaries (`discretized`), or the moments of
    sign(x)·log10(1 + |x|) (`log`)."""
    out = _encoding(fspec, 0)
    kind = fspec.kind
    if fspec.categorical:
        counts, _ = _sketch(parts, "category", sketch_capacity(fspec.max_vocab_size))
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], int(kv[0])))
        out["vocabulary"] = [int(v) for v, _ in ranked[: fspec.max_vocab_size]]
    elif kind == "discretized":
        out["boundaries"] = drift.grid_quantiles(histogram, fspec.encoding.bins)
    elif kind == "log":
        out["log_mean"], out["log_std"] = drift.grid_moments(histogram)
    return out


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
        if spec.features[name].kind in ("hashed", "text"):
            continue  # hashed: any value gets a bin; text: new words are what text has
        if stat.get("eval_unseen_fraction", 0.0) > spec.max_oov_fraction:
            raise UnknownCategoryError(
                f"Feature {name!r} in {source}: expected at most {spec.max_oov_fraction:.1%} of eval values "
                f"never seen in the train split (data.max_oov_fraction), found {stat['eval_unseen_fraction']:.1%} "
                f"({stat['eval_unseen_count']} values; another {stat['eval_cut_count']} are train values that "
                f"max_vocab_size left out of the vocabulary, which do not count)",
                path=source,
                field=f"data.features.{name}",
            )
