"""Metrics from a model's outputs, and what the blessing needs around them.

- `score`: the evaluation metrics of one model's outputs, named as in training (`val_*`).
- `paired_bootstrap`: the distribution of the improvement candidate − production of one metric
  over resamples of the same rows, both models scored on each resample (paired), seeded and
  vectorized: a chunk of resamples is one matrix of drawn rows (a mean is a gather of per-row
  terms; the AUC counts each row's draws and sums them by tied-score group).
- `stratified_sample`: a seeded sample of the eval rows with each label class (or, for a
  regression, each decile of the label) in its share, for the parity checks.

numpy only: no TensorFlow, so the rule can be tested and reused without a model.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# Resamples per chunk are chosen so that a chunk's count matrix holds about this many cells.
_CHUNK_CELLS = 4_000_000
_EPSILON = 1e-7  # probabilities are clipped as Keras' crossentropy clips them


METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("val_loss", "val_accuracy", "val_auc"),
    "multiclass": ("val_loss", "val_accuracy"),
    "regression": ("val_loss", "val_mae", "val_rmse"),
}


class Resamples:
    """k resamples of the n eval rows: `draws[i]` holds the rows drawn for resample i (with
    replacement). A mean over a resample gathers its draws; the AUC needs how many times each
    row was drawn, `counts`, computed on first use."""

    def __init__(self, draws: np.ndarray) -> None:
        self.draws = draws

    @classmethod
    def whole(cls, n: int) -> Resamples:
        """The eval split itself: one resample that draws every row once."""
        return cls(np.arange(n)[None, :])

    @classmethod
    def drawn(cls, rng: np.random.Generator, k: int, n: int) -> Resamples:
        # 32-bit draws are ~15x faster than 64-bit ones; the indices are widened once after.
        dtype = np.uint32 if n < 2**32 else np.int64
        return cls(rng.integers(0, n, size=(k, n), dtype=dtype).astype(np.int64))

    @functools.cached_property
    def counts(self) -> np.ndarray:
        k, n = self.draws.shape
        flat = (self.draws + (np.arange(k) * n)[:, None]).reshape(-1)
        return np.bincount(flat, minlength=k * n).reshape(k, n).astype(np.uint16)  # a count past 65,535: never


def score(
    outputs: Mapping[str, np.ndarray],
    targets: np.ndarray,
    task: str,
    extra: Sequence[str] = (),
    classes: Sequence[Any] = (),
) -> dict[str, float]:
    """Evaluation metrics of a model's outputs, named as in training (`val_*`), and the spec's
    `evaluate.metrics` (`extra`; `classes` names a multiclass label's classes, in index order)."""
    whole = Resamples.whole(len(targets))
    scores = {name: float(metric_function(outputs, targets, task, name)(whole)[0]) for name in METRICS[task]}
    for name in extra:
        if f"val_{name}" in scores:  # a regression's mae and rmse are its task metrics already
            continue
        if name == "per_class_recall":
            scores.update(_per_class_recall(outputs, targets, classes))
        else:
            scores[f"val_{name}"] = float(_EXTRA[name](outputs, targets))
    return scores


def _crossentropy(outputs: Mapping[str, np.ndarray], targets: np.ndarray) -> float:
    probabilities = np.clip(outputs["probabilities"].astype(np.float64), _EPSILON, 1 - _EPSILON)
    index = targets.astype(np.int64)
    return float(-np.mean(np.log(probabilities[np.arange(len(index)), index])))


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, 0 when the denominator is (Keras' `divide_no_nan`)."""
    return float(numerator / denominator) if denominator else 0.0


def _precision(outputs: Mapping[str, np.ndarray], targets: np.ndarray) -> float:
    predicted, actual = np.asarray(outputs["class_index"]) == 1, targets.astype(np.int64) == 1
    return _ratio(np.sum(predicted & actual), np.sum(predicted))


def _recall(outputs: Mapping[str, np.ndarray], targets: np.ndarray) -> float:
    predicted, actual = np.asarray(outputs["class_index"]) == 1, targets.astype(np.int64) == 1
    return _ratio(np.sum(predicted & actual), np.sum(actual))


def _average_precision(outputs: Mapping[str, np.ndarray], targets: np.ndarray) -> float:
    """The area under the precision-recall curve as a step function (scikit-learn's average
    precision): the precision at each distinct score, weighted by the recall it adds."""
    scores = np.asarray(outputs["probabilities"])[:, 1].astype(np.float64)
    order = np.argsort(-scores, kind="mergesort")
    ordered, positive = scores[order], targets.astype(np.int64)[order] == 1
    if not positive.any():
        return 0.0
    ends = np.r_[np.flatnonzero(ordered[1:] != ordered[:-1]), len(ordered) - 1]  # last row of each tie group
    true_positives = np.cumsum(positive)[ends]
    precision = true_positives / (ends + 1)
    gained = np.diff(np.r_[0, true_positives]) / positive.sum()
    return float(np.sum(gained * precision))


def _calibration_error(outputs: Mapping[str, np.ndarray], targets: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over `bins` equal-width bins of the positive probability:
    the row-weighted mean of |observed positive rate - mean predicted probability| per bin."""
    p = np.asarray(outputs["probabilities"])[:, 1].astype(np.float64)
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    gap = np.bincount(which, weights=targets.astype(np.float64), minlength=bins) - np.bincount(
        which, weights=p, minlength=bins
    )
    return float(np.abs(gap).sum() / len(p))


def _mape(outputs: Mapping[str, np.ndarray], targets: np.ndarray) -> float:
    """Mean absolute percentage error, as Keras computes it (|y| floored at 1e-7)."""
    y = targets.astype(np.float64)
    error = np.abs(y - outputs["value"].astype(np.float64).reshape(-1)) / np.maximum(np.abs(y), _EPSILON)
    return float(100.0 * np.mean(error))


def _per_class_recall(outputs: Mapping[str, np.ndarray], targets: np.ndarray, classes: Sequence[Any]) -> dict:
    index, predicted = targets.astype(np.int64), np.asarray(outputs["class_index"])
    names = list(classes) or list(range(int(max(index.max(initial=0), predicted.max(initial=0))) + 1))
    return {
        f"val_recall_{name}": _ratio(np.sum((predicted == i) & (index == i)), np.sum(index == i))
        for i, name in enumerate(names)
    }


_EXTRA: dict[str, Callable[[Mapping[str, np.ndarray], np.ndarray], float]] = {
    "precision": _precision,
    "recall": _recall,
    "pr_auc": _average_precision,
    "log_loss": _crossentropy,
    "calibration_error": _calibration_error,
    "mape": _mape,
}


def metric_function(
    outputs: Mapping[str, np.ndarray], targets: np.ndarray, task: str, metric: str
) -> Callable[[Resamples], np.ndarray]:
    """`metric` as a function of resamples of the eval rows: its value on each. What does not
    depend on the resample (per-row terms, the sort by score) is computed once, here."""
    if metric == "val_auc":
        return _RankedScores(np.asarray(outputs["probabilities"])[:, 1].astype(np.float64), targets).auc
    if task == "regression":
        error = outputs["value"].astype(np.float64).reshape(-1) - targets.astype(np.float64)
        terms = {"val_loss": error**2, "val_rmse": error**2, "val_mae": np.abs(error)}
    else:
        probabilities = np.clip(outputs["probabilities"].astype(np.float64), _EPSILON, 1 - _EPSILON)
        index = targets.astype(np.int64)
        terms = {
            "val_loss": -np.log(probabilities[np.arange(len(index)), index]),
            "val_accuracy": (np.asarray(outputs["class_index"]) == index).astype(np.float64),
        }
    if metric not in terms:
        return _resampled(outputs, targets, _EXTRA[metric.removeprefix("val_")])
    values = terms[metric]

    def mean(resamples: Resamples) -> np.ndarray:
        return values[resamples.draws].mean(axis=1)

    return (lambda resamples: np.sqrt(mean(resamples))) if metric == "val_rmse" else mean


def _resampled(
    outputs: Mapping[str, np.ndarray], targets: np.ndarray, fn: Callable[[Mapping[str, np.ndarray], np.ndarray], float]
) -> Callable[[Resamples], np.ndarray]:
    """A metric with no vectorized form over resamples: computed on each resample's rows."""

    def each(resamples: Resamples) -> np.ndarray:
        return np.array([fn({k: v[rows] for k, v in outputs.items()}, targets[rows]) for rows in resamples.draws])

    return each


class _RankedScores:
    """ROC AUC by the rank statistic (ties count one half), for any resample: the rows are
    sorted by score once; for each group of tied scores, the drawn positives times the drawn
    negatives below the group (plus half of those tied) sum to the correctly ordered pairs."""

    def __init__(self, scores: np.ndarray, labels: np.ndarray) -> None:
        self.order = np.argsort(scores, kind="mergesort")
        ordered = scores[self.order]
        self.starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        self.positive = labels.astype(np.int64)[self.order] == 1

    def auc(self, resamples: Resamples) -> np.ndarray:
        w = resamples.counts[:, self.order]
        zero = np.zeros((), w.dtype)
        pos = np.add.reduceat(np.where(self.positive, w, zero).astype(np.int64), self.starts, axis=1)
        neg = np.add.reduceat(np.where(self.positive, zero, w).astype(np.int64), self.starts, axis=1)
        below = np.cumsum(neg, axis=1) - neg
        pairs = (pos * (below + 0.5 * neg)).sum(axis=1)
        n_pos, n_neg = pos.sum(axis=1).astype(np.float64), neg.sum(axis=1).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where((n_pos > 0) & (n_neg > 0), pairs / (n_pos * n_neg), np.nan)


@dataclass(frozen=True)
class Bootstrap:
    """The improvement candidate − production (production − candidate for a metric that goes
    down), on the eval split and over `samples` paired resamples of it."""

    metric: str
    samples: int
    seed: int
    confidence: float
    improvement: float  # on the eval split itself
    lower: float  # the (1 - confidence) quantile of the resampled improvements: the one-sided bound
    upper: float  # the confidence quantile
    rows: int

    def to_json(self) -> dict:
        return asdict(self)


def paired_bootstrap(
    candidate: Mapping[str, np.ndarray],
    production: Mapping[str, np.ndarray],
    targets: np.ndarray,
    task: str,
    metric: str,
    mode: str,
    *,
    samples: int,
    seed: int,
    confidence: float,
) -> Bootstrap:
    """Resample the eval rows with replacement `samples` times (seeded); score both models on
    each resample; return the improvement's point value and its quantiles."""
    n = len(targets)
    sign = 1.0 if mode == "max" else -1.0
    ours = metric_function(candidate, targets, task, metric)
    theirs = metric_function(production, targets, task, metric)
    whole = Resamples.whole(n)
    point = sign * float(ours(whole)[0] - theirs(whole)[0])
    rng = np.random.default_rng(seed)
    chunk = max(1, min(samples, _CHUNK_CELLS // max(n, 1)))
    improvements = []
    for start in range(0, samples, chunk):
        resamples = Resamples.drawn(rng, min(chunk, samples - start), n)
        improvements.append(sign * (ours(resamples) - theirs(resamples)))
    values = np.concatenate(improvements)
    values = values[~np.isnan(values)]
    lower, upper = (
        (float(np.quantile(values, 1 - confidence)), float(np.quantile(values, confidence)))
        if len(values)
        else (math.nan, math.nan)
    )
    return Bootstrap(metric, samples, seed, confidence, point, lower, upper, n)


def stratified_sample(targets: np.ndarray, task: str, rows: int, seed: int) -> np.ndarray:
    """Sorted indices of about `rows` eval rows, drawn with a seeded generator, each label class
    (a regression's label decile) in proportion to its count and with at least one row. All
    rows when there are no more than `rows`."""
    n = len(targets)
    if n <= rows:
        return np.arange(n)
    if task == "regression":
        edges = np.quantile(targets.astype(np.float64), np.linspace(0, 1, 11)[1:-1])
        strata = np.searchsorted(edges, targets, side="right")
    else:
        strata = targets.astype(np.int64)
    rng = np.random.default_rng(seed)
    chosen = []
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        take = max(1, round(rows * len(members) / n))
        chosen.append(rng.choice(members, size=min(take, len(members)), replace=False))
    return np.sort(np.concatenate(chosen))


MISSING = "(missing)"  # a slice value for a row whose feature is missing
MAX_SLICES = 100  # per slice key: the most frequent values are kept


def slice_scores(
    candidate: Mapping[str, np.ndarray],
    production: Mapping[str, np.ndarray] | None,
    targets: np.ndarray,
    task: str,
    columns: Mapping[str, np.ndarray],
    keys: Sequence[Sequence[str]],
    *,
    metric: str,
    mode: str,
    min_count: int,
    extra: Sequence[str] = (),
    classes: Sequence[Any] = (),
) -> list[dict]:
    """Both models' metrics on each slice of the eval rows: for each key (one feature, or a cross
    of several), each combination of values, the most frequent `MAX_SLICES` first. A slice with
    fewer than `min_count` rows gets its count only. `regression` is how much worse the candidate
    is than production on `metric` in the slice (negative: better)."""
    out = []
    for key in keys:
        codes = np.zeros(len(targets), dtype=np.int64)
        for name in key:  # one code per combination of values
            values, inverse = np.unique(columns[name], return_inverse=True)
            codes = codes * len(values) + inverse.reshape(-1)
        _, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
        for g in np.argsort(-counts, kind="stable")[:MAX_SLICES]:
            rows = np.flatnonzero(inverse == g)
            first = rows[0]
            where = {name: _slice_value(columns[name][first]) for name in key}
            entry = {
                "slice": where,
                "name": ", ".join(f"{k}={v}" for k, v in where.items()),
                "rows": int(len(rows)),
                "candidate": None,
                "production": None,
                "regression": None,
            }
            if len(rows) >= min_count:
                target = targets[rows]
                entry["candidate"] = score({k: v[rows] for k, v in candidate.items()}, target, task, extra, classes)
                if production is not None:
                    entry["production"] = score(
                        {k: v[rows] for k, v in production.items()}, target, task, extra, classes
                    )
                    difference = entry["production"][metric] - entry["candidate"][metric]
                    entry["regression"] = float(difference if mode == "max" else -difference)
            out.append(entry)
    return out


def _slice_value(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace") if value else MISSING
    if isinstance(value, np.integer | int) and int(value) == np.iinfo(np.int64).min:
        return MISSING
    return str(value)
