"""Drift and skew: how far the data in hand is from the data a model learned from.

- **Drift** (preprocess): this run's train statistics against the production model's.
- **Skew** (batch inference): the data being scored against the scoring model's train statistics.

The distances are TFDV's: the L-infinity distance between value frequencies for strings, and
the Jensen-Shannon divergence (base 2, so between 0 and 1) between histograms for numbers.
Missing values are left out of both: `stats.json` reports them on their own.

Numbers are summarized as mergeable histograms on one fixed grid, so partials of files, batches
or fan-out parts add up exactly and two runs' histograms line up: bins of width `GRID_WIDTH` in
sign(x)·log10(1 + |x|), about 4.7% wide in relative terms past |x| = 10 and 0.05 wide near 0.
The divergence is taken over `GROUPS` bins of equal mass in the baseline, made by merging
adjacent grid bins, so that it measures a moved distribution, not the noise of sparse bins.
Strings are summarized by their `TOP_VALUES` most frequent train values; the distance is exact
when there are fewer, and otherwise may miss a shift among values rarer than the last one kept.
The scored data's counts are merged file by file keeping the `MERGE_VALUES` most frequent, so a
value rare in early files and frequent later may be undercounted.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from contrail import artifacts, data, text
from contrail.errors import DriftError

log = logging.getLogger(__name__)

GRID_WIDTH = 0.02
GROUPS = 20
TOP_VALUES = 1_000
MERGE_VALUES = 20 * TOP_VALUES  # the scored data's value counts kept between files


# -- summaries --------------------------------------------------------------------------------
def histogram(values: np.ndarray) -> dict[str, int]:
    """Counts of finite `values` per grid bin, keyed by the bin's index (a JSON object key)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {}
    position = np.sign(finite) * np.log10(1.0 + np.abs(finite))
    bins, counts = np.unique(np.floor(position / GRID_WIDTH).astype(np.int64), return_counts=True)
    return {str(int(b)): int(c) for b, c in zip(bins, counts, strict=True)}


def merge_histograms(parts: Sequence[Mapping[str, int]]) -> dict[str, int]:
    total: Counter = Counter()
    for part in parts:
        total.update(part)
    return {k: total[k] for k in sorted(total, key=int)}


def summarize(table: pa.Table, features: Mapping[str, str]) -> dict:
    """A table's drift summary: per feature (name → type, or `text:<ngrams>`), a histogram or value
    counts (of a text's words)."""
    out = {}
    for name, kind in features.items():
        column = table.column(name)
        if kind.startswith("text:"):  # its tokens and n-grams, as its train statistics count them
            ngrams_counts, _, _ = text.counts(column, int(kind.split(":")[1]))
            out[name] = {
                "value_counts": ngrams_counts,
                "value_total": sum(ngrams_counts.values()),
                "value_kind": kind,  # tokens: comparable only with the same tokenization
            }
        elif kind in ("string", "string_list", "int_list"):  # a list's items, as its statistics count them
            values = column.drop_null() if kind == "string" else pc.list_flatten(column).cast(pa.string())
            values = values.filter(pc.not_equal(values, "")) if len(values) else values
            counts = pc.value_counts(values)
            out[name] = {
                "value_counts": dict(
                    zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
                ),
                "value_total": len(values),
            }
        elif kind == "float_list":  # every element of the vectors
            out[name] = {
                "histogram": histogram(pc.list_flatten(column).cast(pa.float64()).to_numpy(zero_copy_only=False))
            }
        else:
            out[name] = {"histogram": histogram(data.float_values(column))}
    return out


def grid_value(position: float) -> float:
    """The value at `position` on the grid's axis, sign(x)·log10(1 + |x|): its inverse."""
    return float(np.sign(position) * (10.0 ** abs(position) - 1.0))


def grid_quantiles(hist: Mapping[str, int], bins: int) -> list[float]:
    """The `bins - 1` inner boundaries of `bins` groups of about equal count, from a grid
    histogram: each quantile interpolated linearly within the grid bin where it falls (so within
    one grid bin of the true quantile: about 4.7% of the value past |x| = 10). Repeated
    boundaries (a column of few values) are dropped, so there may be fewer groups."""
    if not hist:
        return []
    keys = np.array(sorted(int(b) for b in hist))
    counts = np.array([hist[str(b)] for b in keys], dtype=np.float64)
    cum = np.cumsum(counts)
    edges = set()
    for q in np.arange(1, bins) / bins:
        target = q * cum[-1]
        i = min(int(np.searchsorted(cum, target)), len(keys) - 1)
        before = cum[i] - counts[i]
        position = (keys[i] + (target - before) / counts[i]) * GRID_WIDTH
        edges.add(round(grid_value(position), 12))
    return sorted(edges)


def grid_moments(hist: Mapping[str, int]) -> tuple[float, float]:
    """Mean and standard deviation of sign(x)·log10(1 + |x|), from a grid histogram (bin centres)."""
    if not hist:
        return 0.0, 1.0
    centres = (np.array([int(b) for b in hist]) + 0.5) * GRID_WIDTH
    counts = np.array(list(hist.values()), dtype=np.float64)
    mean = float(np.average(centres, weights=counts))
    std = float(np.sqrt(np.average((centres - mean) ** 2, weights=counts)))
    return mean, std if std > 1e-12 else 1.0


def merge_summaries(parts: Sequence[dict]) -> dict:
    out = {}
    for name in parts[0] if parts else ():
        pieces = [p[name] for p in parts]
        if "histogram" in pieces[0]:
            out[name] = {"histogram": merge_histograms([p["histogram"] for p in pieces])}
        else:
            counts: Counter = Counter()
            for p in pieces:
                counts.update(p["value_counts"])
            # Bounded: the most frequent MERGE_VALUES values are kept (see the module doc).
            out[name] = {
                "value_counts": dict(counts.most_common(MERGE_VALUES)),
                "value_total": sum(p["value_total"] for p in pieces),
            }
            if "value_kind" in pieces[0]:
                out[name]["value_kind"] = pieces[0]["value_kind"]
    return out


def top_values(counts: Mapping[str, int]) -> list[list]:
    """The `TOP_VALUES` most frequent values and their counts, most frequent first."""
    return [[v, c] for v, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_VALUES]]


# -- distances --------------------------------------------------------------------------------
def js_divergence(current: Mapping[str, int], baseline: Mapping[str, int]) -> float | None:
    """Jensen-Shannon divergence (base 2) between two grid histograms, over up to `GROUPS`
    bins of equal baseline mass; None when either side has no values."""
    if not current or not baseline:
        return None
    base_bins = np.array(sorted(int(b) for b in baseline))
    base_counts = np.array([baseline[str(b)] for b in base_bins], dtype=np.float64)
    # Group adjacent baseline bins into about equal masses; each group ends at a baseline bin.
    share = np.cumsum(base_counts) / base_counts.sum()
    group_of_bin = np.minimum((share * GROUPS - 1e-9).astype(np.int64), GROUPS - 1)
    ends = base_bins[np.r_[np.flatnonzero(np.diff(group_of_bin)), len(base_bins) - 1]]
    # Groups 1..len(ends); 0 and len(ends) + 1 hold what lies below or above the baseline's range.
    groups = len(ends) + 2
    p = np.bincount(np.searchsorted(ends, base_bins) + 1, weights=base_counts, minlength=groups)
    cur_bins = np.array([int(b) for b in current])
    cur_counts = np.array([current[str(b)] for b in cur_bins], dtype=np.float64)
    where = np.where(cur_bins < base_bins[0], 0, np.searchsorted(ends, cur_bins) + 1)
    q = np.bincount(where, weights=cur_counts, minlength=groups)
    return _js(p / p.sum(), q / q.sum())


def _js(p: np.ndarray, q: np.ndarray) -> float:
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nonzero = a > 0
        return float(np.sum(a[nonzero] * np.log2(a[nonzero] / m[nonzero])))

    return max(0.0, 0.5 * kl(p) + 0.5 * kl(q))


def linf_distance(
    current: Mapping[str, int], current_total: int, baseline: Mapping[str, int], baseline_total: int
) -> float | None:
    """The largest difference between a value's frequency in the two; None when either is empty."""
    if not current_total or not baseline_total:
        return None
    values = set(current) | set(baseline)
    return float(max(abs(current.get(v, 0) / current_total - baseline.get(v, 0) / baseline_total) for v in values))


def distances(current: Mapping[str, dict], baseline: Mapping[str, dict]) -> dict[str, dict]:
    """Per feature found in both: the distance, and which one (`linf` or `js`). Both sides are
    drift summaries (`summarize`) or `stats.json` features, which carry the same fields."""
    out = {}
    for name, now in current.items():
        then = baseline.get(name)
        if then is None:
            continue
        if "histogram" in now and "histogram" in then:
            out[name] = {"measure": "js", "distance": js_divergence(now["histogram"], then["histogram"])}
        elif "value_counts" in now and "value_counts" in then:
            if now.get("value_kind") != then.get("value_kind"):  # values against tokens: no distance
                out[name] = {"measure": "linf", "distance": None, "note": "not comparable: the encoding changed"}
                continue
            out[name] = {
                "measure": "linf",
                "distance": linf_distance(
                    _as_counts(now["value_counts"]),
                    now["value_total"],
                    _as_counts(then["value_counts"]),
                    then["value_total"],
                ),
            }
    return out


def _as_counts(value_counts: Mapping | list) -> dict:
    return dict(value_counts) if isinstance(value_counts, Mapping) else {v: c for v, c in value_counts}


# -- the check --------------------------------------------------------------------------------
def compare(
    current: Mapping[str, dict],
    baseline: Mapping[str, dict] | None,
    rule: Mapping | None,
    *,
    what: str,
    against: str,
    where: str,
) -> dict:
    """The distance of every feature from the baseline, against `rule` (the spec's
    `data.drift`; None: measured, not checked). With `on_violation: fail` a feature beyond its
    threshold raises `DriftError`, naming the feature, the distance and the threshold; with
    `warn` it is logged. Returns the record written beside the step's outputs."""
    if baseline is None:
        return {"check": what, "baseline": None, "note": f"no baseline: {against}", "features": {}, "violations": []}
    measured = distances(current, baseline)
    features, violations = {}, []
    for name, entry in measured.items():
        own = rule is not None and name in rule.get("per_feature", {})
        threshold = None if rule is None else rule["per_feature"][name] if own else rule["threshold"]
        violated = threshold is not None and entry["distance"] is not None and entry["distance"] > threshold
        features[name] = {**entry, "threshold": threshold, "violated": violated}
        if violated:
            measure = "L-infinity distance" if entry["measure"] == "linf" else "Jensen-Shannon divergence"
            field = f"data.drift.per_feature.{name}" if own else "data.drift.threshold"
            violations.append(
                f"feature {name!r}: {measure} {entry['distance']:.4f} from {against}, above the threshold "
                f"{threshold} ({field})"
            )
    record = {"check": what, "baseline": against, "features": features, "violations": violations}
    if violations:
        message = f"{where}: {what}: " + "; ".join(violations)
        if rule is not None and rule.get("on_violation") == "fail":
            raise DriftError(message, path=where, field="data.drift")
        log.warning("%s (data.drift.on_violation: warn)", message)
    return record


def model_stats(version_dir: Path) -> dict | None:
    """The train statistics a model version keeps (`stats.json`), or None for a version
    exported before versions kept them."""
    path = version_dir / "stats.json"
    return artifacts.read_json(path) if path.is_file() else None
