"""The blessing: is the candidate better than production, and if so, make it production.

`decide` is the rule, pure: scores in, a decision and its reason out. `promote` is its I/O:
under the pipeline's promotion lock it reads `production.json`, scores candidate and
production on the whole eval split (streamed from its files), decides, and moves
`production.json` only for a promotion. The blessing record it returns always says why.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contrail import artifacts, evaluation, serving
from contrail.early_stopping import is_improvement
from contrail.errors import ExportError, InferenceError, translate
from contrail.layout import ModelsLayout
from contrail.spec import metric_mode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    decision: str  # first_model, better, not_better, below_threshold, slice_regression or forced (rolled_back: contrail.rollback)
    promoted: bool
    reason: str


def decide(
    candidate: Mapping[str, float],
    production: Mapping[str, float] | None,
    rule: Mapping,
    *,
    production_version: int | None,
    force: bool = False,
    note: str | None = None,
    bootstrap: evaluation.Bootstrap | None = None,
    slices: Sequence[Mapping] = (),
) -> Decision:
    """The blessing rule. `production_version` is None when there is no production model;
    `production` (its scores) is None also when it exists but could not be scored (`note` says
    why), and then the candidate is promoted. The candidate must pass every absolute gate
    (`rule['thresholds']`), a first model too. With `bootstrap` (the rule has a `confidence`),
    its lower bound of the improvement must beat `min_improvement`; without, the improvement
    itself. With `max_slice_regression`, no slice (of those with enough rows to be scored) may
    be worse than production by more than it."""
    metric = rule["metric"]
    mode = metric_mode(metric, rule["mode"])
    value = candidate[metric]
    if force:
        return Decision("forced", True, f"forced by the force_promote param ({metric}={value:.6g})")
    if failed := failed_gates(candidate, rule.get("thresholds") or {}):
        return Decision("below_threshold", False, "; ".join(failed))
    if production_version is None:
        return Decision("first_model", True, f"first model for this pipeline ({metric}={value:.6g})")
    if production is None:
        return Decision("better", True, f"{note}; promoting the candidate ({metric}={value:.6g})")
    if regressed := _worst_slice(slices, rule.get("max_slice_regression")):
        return Decision(
            "slice_regression",
            False,
            f"slice {regressed['name']} ({regressed['rows']} rows): {metric} {regressed['candidate'][metric]:.6g} "
            f"against production v{production_version}'s {regressed['production'][metric]:.6g}, worse by "
            f"{regressed['regression']:.4g}, more than max_slice_regression={rule['max_slice_regression']}",
        )
    versus = (
        f"production v{production_version} {production[metric]:.6g} ({mode}, min_improvement={rule['min_improvement']})"
    )
    if bootstrap is not None:
        bound = (
            f"improvement {bootstrap.improvement:+.4g}, {bootstrap.confidence:.0%} lower bound {bootstrap.lower:+.4g} "
            f"over {bootstrap.samples} paired resamples of {bootstrap.rows} rows"
        )
        if bootstrap.lower > rule["min_improvement"]:
            return Decision("better", True, f"{metric} {value:.6g} beats {versus}: {bound}")
        return Decision("not_better", False, f"{metric} {value:.6g} does not surely beat {versus}: {bound}")
    if is_improvement(value, production[metric], mode, rule["min_improvement"]):
        return Decision("better", True, f"{metric} {value:.6g} beats {versus}")
    return Decision("not_better", False, f"{metric} {value:.6g} does not beat {versus}")


def _worst_slice(slices: Sequence[Mapping], limit: float | None) -> Mapping | None:
    """The slice that regressed most beyond `limit`, if any did."""
    if limit is None:
        return None
    regressed = [s for s in slices if s.get("regression") is not None and s["regression"] > limit]
    return max(regressed, key=lambda s: s["regression"], default=None)


def failed_gates(scores: Mapping[str, float], thresholds: Mapping[str, Mapping]) -> list[str]:
    """Why the scores fail the absolute gates, one line per failed bound (none: they pass)."""
    failed = []
    for metric, gate in sorted(thresholds.items()):
        value = scores[metric]
        if gate.get("min") is not None and not value >= gate["min"]:
            failed.append(f"{metric} {value:.6g} is below the gate min {gate['min']:.6g}")
        if gate.get("max") is not None and not value <= gate["max"]:
            failed.append(f"{metric} {value:.6g} is above the gate max {gate['max']:.6g}")
    return failed


@contextlib.contextmanager
def promotion_lock(models: ModelsLayout) -> Iterator[None]:
    """Serialize promotions of one pipeline across processes (and, on NFS, across hosts)."""
    with models.promotion_lock.open("a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class EvalSplit:
    """The eval split as the blessing reads it: `batches()` streams its serialized records
    (once per model scored); `targets` are their encoded labels and `columns` the values of
    the slice features, in the same order."""

    batches: Callable[[], Iterable[np.ndarray]]
    targets: np.ndarray
    columns: Mapping[str, np.ndarray] = field(default_factory=dict)


RESCORES = 3  # times production may move while the blessing scores, before it scores under the lock


@dataclass
class _Comparison:
    """Production's side of a blessing, scored against one `production.json` record."""

    current: dict | None
    production_score: dict | None = None
    production_outputs: dict | None = None
    note: str | None = None
    changed: dict | None = None
    bootstrap: evaluation.Bootstrap | None = None


def promote(
    models: ModelsLayout,
    candidate: serving.LoadedModel,
    split: EvalSplit,
    rule: Mapping,
    *,
    evaluate: Mapping | None = None,
    force: bool = False,
    run_key: str = "",
) -> dict:
    """Bless the candidate if it beats production on the whole eval split; always say why.
    `evaluate` is the spec's `evaluate` section: more metrics, and slices (as
    `EvaluateSpec.slice_keys` gives them: a tuple of feature names each).

    Scoring (minutes on a large split with a bootstrap) runs outside the promotion lock; under
    it, `production.json` is read again, and if another promotion or a rollback moved it in the
    meantime, production's side is scored again. After `RESCORES` such moves, the last try
    scores under the lock."""
    task = candidate.schema["label"]["task"]
    evaluate = evaluate or {}
    extra, classes = evaluate.get("metrics", ()), candidate.schema["label"].get("classes", ())
    candidate_outputs = candidate.predict_batches(split.batches())
    candidate_score = evaluation.score(candidate_outputs, split.targets, task, extra, classes)
    for _ in range(RESCORES):
        current = read_production(models.production)
        if _version(current) == candidate.version:
            log.info("Version %d is already production", candidate.version)
            return {**current["blessing"], "promoted": True}
        compared = _compare(models, current, candidate, candidate_outputs, split, rule, evaluate, force)
        with promotion_lock(models):
            now = read_production(models.production)
            if _version(now) == _version(current):
                return _decide_and_record(
                    models,
                    candidate,
                    candidate_outputs,
                    candidate_score,
                    compared,
                    split,
                    rule,
                    evaluate,
                    force,
                    run_key,
                )
        log.info("Production moved from v%s to v%s while scoring; scoring again", _version(current), _version(now))
    with promotion_lock(models):  # production keeps moving: score under the lock this time
        current = read_production(models.production)
        if _version(current) == candidate.version:
            return {**current["blessing"], "promoted": True}
        compared = _compare(models, current, candidate, candidate_outputs, split, rule, evaluate, force)
        return _decide_and_record(
            models, candidate, candidate_outputs, candidate_score, compared, split, rule, evaluate, force, run_key
        )


def _version(record: dict | None) -> int | None:
    return None if record is None else int(record["version"])


def _compare(
    models: ModelsLayout,
    current: dict | None,
    candidate: serving.LoadedModel,
    candidate_outputs: dict,
    split: EvalSplit,
    rule: Mapping,
    evaluate: Mapping,
    force: bool,
) -> _Comparison:
    """Score production (named by `current`) on the same rows, and bootstrap the difference."""
    compared = _Comparison(current)
    if current is None:
        return compared
    production, compared.note = _load_production(models, current, candidate.version, force)
    if production is None:
        return compared
    compared.changed = schema_change(production.schema, candidate.schema)
    if compared.changed and compared.changed.get("label_classes"):
        compared.note = (
            f"production v{current['version']} predicts other label classes "
            f"({describe_change({'label_classes': compared.changed['label_classes']})}), so its scores cannot be compared"
        )
        return compared
    task = candidate.schema["label"]["task"]
    try:
        outputs = production.predict_batches(split.batches())
        compared.production_score = evaluation.score(
            outputs, split.targets, task, evaluate.get("metrics", ()), candidate.schema["label"].get("classes", ())
        )
    except Exception as exc:  # broad: TF raises its own types when the schema changed shape
        compared.note = f"production v{current['version']} cannot score this run's eval data ({type(exc).__name__})"
        return compared
    compared.production_outputs = outputs
    if rule.get("confidence") and not force:
        metric, mode = rule["metric"], metric_mode(rule["metric"], rule["mode"])
        started = time.perf_counter()
        compared.bootstrap = evaluation.paired_bootstrap(
            candidate_outputs,
            outputs,
            split.targets,
            task,
            metric,
            mode,
            samples=rule["bootstrap_samples"],
            seed=rule["seed"],
            confidence=rule["confidence"],
        )
        b = compared.bootstrap
        log.info(
            "Bootstrap of %s over %d resamples of %d rows in %.1fs: improvement %.4g, [%.4g, %.4g]",
            metric,
            b.samples,
            b.rows,
            time.perf_counter() - started,
            b.improvement,
            b.lower,
            b.upper,
        )
    return compared


def _decide_and_record(
    models: ModelsLayout,
    candidate: serving.LoadedModel,
    candidate_outputs: dict,
    candidate_score: dict,
    compared: _Comparison,
    split: EvalSplit,
    rule: Mapping,
    evaluate: Mapping,
    force: bool,
    run_key: str,
) -> dict:
    """Under the lock: slices, the decision, the blessing record, and `production.json` moved
    for a promotion."""
    task = candidate.schema["label"]["task"]
    metric, mode = rule["metric"], metric_mode(rule["metric"], rule["mode"])
    current, targets = compared.current, split.targets
    slices = evaluation.slice_scores(
        candidate_outputs,
        compared.production_outputs,
        targets,
        task,
        split.columns,
        evaluate.get("slices", ()),
        metric=metric,
        mode=mode,
        min_count=evaluate.get("min_count", 30),
        extra=evaluate.get("metrics", ()),
        classes=candidate.schema["label"].get("classes", ()),
    )
    decision = decide(
        candidate_score,
        compared.production_score,
        rule,
        production_version=_version(current),
        force=force,
        note=compared.note,
        bootstrap=compared.bootstrap,
        slices=slices,
    )
    reason = decision.reason
    if compared.changed:
        reason += (
            f"; the schema changed ({describe_change(compared.changed)}), so both were scored on this run's eval data"
        )
    bootstrap = compared.bootstrap
    blessing = {
        "decision": decision.decision,
        "promoted": decision.promoted,
        "reason": reason,
        "metric": metric,
        "mode": mode,
        "candidate_version": candidate.version,
        "candidate_score": candidate_score,
        "production_version": candidate.version if decision.promoted else _version(current),
        "previous_version": _version(current),
        "production_score": compared.production_score,
        "bootstrap": bootstrap.to_json() if bootstrap else None,
        "slices": _finite(slices),
        "thresholds": dict(rule.get("thresholds") or {}),
        "eval_rows": int(len(targets)),
        "compared_on": f"the whole eval split of run {run_key} ({len(targets)} rows), scored by both models",
        "schema_change": compared.changed,
        "note": compared.note,
        "run_key": run_key,
        "time": time.time(),
    }
    if decision.promoted:
        entry = {k: blessing[k] for k in ("decision", "candidate_version", "previous_version", "time")}
        if bootstrap:
            entry["bootstrap"] = {k: blessing["bootstrap"][k] for k in ("metric", "improvement", "lower", "upper")}
        record = {
            "version": candidate.version,
            "path": str(models.version(candidate.version).path),
            "blessing": blessing,
            "history": [*(current or {}).get("history", []), entry],
        }
        artifacts.write_json_atomic(models.production, record)
    return blessing


def _finite(value: Any) -> Any:
    """NaN (a slice's AUC when it holds one class) as null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _load_production(
    models: ModelsLayout, current: dict, candidate_version: int, force: bool
) -> tuple[serving.LoadedModel | None, str | None]:
    """Production's model, or (None, why) when it cannot be loaded and `force` says go on."""
    production_dir = models.version(current["version"]).path
    try:
        return serving.load_version_dir(production_dir, int(current["version"])), None
    except InferenceError as exc:
        if not force:
            raise ExportError(
                f"{production_dir}: the production model named by {models.production} cannot be loaded, "
                f"so the candidate v{candidate_version} cannot be compared and nothing was promoted "
                f"({exc}). Restore that version, or trigger with force_promote.",
                path=str(production_dir),
            ) from exc
        return None, f"the production model at {production_dir} cannot be loaded"


def read_production(path: Path) -> dict | None:
    """`production.json`, or None before the first promotion."""
    if not path.is_file():
        return None
    try:
        record = artifacts.read_json(path)
        int(record["version"])
        return record
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise translate(
            exc,
            ExportError,
            str(path),
            expected="a production record with an integer 'version'",
            found="an unreadable file",
            then="nothing was promoted",
            path=str(path),
        ) from exc


def schema_change(old: dict, new: dict) -> dict | None:
    """Features added, removed or retyped between the production model and the candidate, and
    label classes that differ (then their class indices do not mean the same)."""
    before = {f["name"]: f["type"] for f in old["features"]}
    after = {f["name"]: f["type"] for f in new["features"]}
    change = {
        "added": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
        "retyped": sorted(n for n in set(before) & set(after) if before[n] != after[n]),
    }
    old_classes, new_classes = old["label"].get("classes"), new["label"].get("classes")
    if old_classes != new_classes:
        change["label_classes"] = [old_classes, new_classes]
    return change if any(change.values()) else None


def describe_change(change: dict) -> str:
    parts = []
    for kind, names in change.items():
        if not names:
            continue
        if kind == "label_classes":
            parts.append(f"label classes {names[0]} -> {names[1]}")
        else:
            parts.append(f"{kind} {', '.join(names)}")
    return "; ".join(parts)
