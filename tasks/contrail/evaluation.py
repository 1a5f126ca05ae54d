"""Metrics from a model's outputs, and what the blessing needs around them.

- `score`: the evaluation metrics of one model's outputs, named as in training (`val_*`).
- `paired_bootstrap`: the distribution of the improvement candidate − production of one metric
  over resamples of the same rows, both models scored on each resample (paired), seeded and
  vectorized: a chunk of resamples is one matrix of row counts.
- `stratified_sample`: a seeded sample of the eval rows with each label class (or, for a
  regression, each decile of the label) in its share, for the parity checks.

numpy only: no TensorFlow, so the rule can be tested and reused without a model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import numpy as np

# Resamples per chunk are chosen so that a chunk's count matrix holds about this many cells.
_CHUNK_CELLS = 4_000_000
_EPSILON = 1e-7  # probabilities are clipped as Keras' crossentropy clips them


METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("val_loss", "val_accuracy", "val_auc"),
    "multiclass": ("val_loss", "val_accuracy"),
    "regression": ("val_loss", "val_mae", "val_rmse"),
}


def score(outputs: Mapping[str, np.ndarray], targets: np.ndarray, task: str) -> dict[str, float]:
    """Evaluation metrics of a model's outputs, named as in training (`val_*`)."""
    once = np.ones((1, len(targets)))
    return {name: float(metric_of_counts(outputs, targets, task, name)(once)[0]) for name in METRICS[task]}


def metric_of_counts(
    outputs: Mapping[str, np.ndarray], targets: np.ndarray, task: str, metric: str
) -> Callable[[np.ndarray], np.ndarray]:
    """`metric` as a function of row counts: given a (k, rows) matrix of how many times each
    eval row is drawn, its k values. What does not depend on the counts (per-row terms, the
    sort by score) is computed once, here."""
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
        raise ValueError(f"expected one of {', '.join(METRICS[task])} for a {task} label, found {metric!r}")
    values = terms[metric]

    def mean(counts: np.ndarray) -> np.ndarray:
        return (counts @ values) / counts.sum(axis=1)

    return (lambda counts: np.sqrt(mean(counts))) if metric == "val_rmse" else mean


class _RankedScores:
    """ROC AUC by the rank statistic (ties count one half), for any row counts: the rows are
    sorted by score once; for each group of tied scores, the counted positives times the counted
    negatives below the group (plus half of those tied) sum to the correctly ordered pairs."""

    def __init__(self, scores: np.ndarray, labels: np.ndarray) -> None:
        self.order = np.argsort(scores, kind="mergesort")
        ordered = scores[self.order]
        self.starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        self.positive = labels.astype(np.int64)[self.order] == 1

    def auc(self, counts: np.ndarray) -> np.ndarray:
        w = counts[:, self.order]
        pos = np.add.reduceat(np.where(self.positive, w, 0.0), self.starts, axis=1)
        neg = np.add.reduceat(np.where(self.positive, 0.0, w), self.starts, axis=1)
        below = np.cumsum(neg, axis=1) - neg
        pairs = (pos * (below + 0.5 * neg)).sum(axis=1)
        n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
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
    ours = metric_of_counts(candidate, targets, task, metric)
    theirs = metric_of_counts(production, targets, task, metric)
    once = np.ones((1, n))
    point = sign * float(ours(once)[0] - theirs(once)[0])
    rng = np.random.default_rng(seed)
    chunk = max(1, min(samples, _CHUNK_CELLS // max(n, 1)))
    improvements = []
    for start in range(0, samples, chunk):
        k = min(chunk, samples - start)
        draws = rng.integers(0, n, size=(k, n)) + (np.arange(k) * n)[:, None]
        counts = np.bincount(draws.reshape(-1), minlength=k * n).reshape(k, n).astype(np.float64)
        improvements.append(sign * (ours(counts) - theirs(counts)))
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
