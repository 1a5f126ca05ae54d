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
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
    `evaluate` is the spec's `evaluate` section: more metrics, and slices."""
    task = candidate.schema["label"]["task"]
    metric, mode = rule["metric"], metric_mode(rule["metric"], rule["mode"])
    evaluate = evaluate or {}
    extra, classes = evaluate.get("metrics", ()), candidate.schema["label"].get("classes", ())
    targets = split.targets
    eval_batches = split.batches
    with promotion_lock(models):
        current = read_production(models.production)
        if current is not None and int(current["version"]) == candidate.version:
            log.info("Version %d is already production", candidate.version)
            return {**current["blessing"], "promoted": True}
        candidate_outputs = candidate.predict_batches(eval_batches())
        candidate_score = evaluation.score(candidate_outputs, targets, task, extra, classes)
        production_score, note, changed, bootstrap = None, None, None, None
        production_outputs = None
        if current is not None:
            production, note = _load_production(models, current, candidate.version, force)
            if production is not None:
                changed = schema_change(production.schema, candidate.schema)
                try:
                    production_outputs = production.predict_batches(eval_batches())
                except Exception as exc:  # broad: TF raises its own types when the schema changed shape
                    note = f"production v{current['version']} cannot score this run's eval data ({type(exc).__name__})"
                else:
                    production_score = evaluation.score(production_outputs, targets, task, extra, classes)
                    if rule.get("confidence") and not force:
                        started = time.perf_counter()
                        bootstrap = evaluation.paired_bootstrap(
                            candidate_outputs,
                            production_outputs,
                            targets,
                            task,
                            metric,
                            mode,
                            samples=rule["bootstrap_samples"],
                            seed=rule["seed"],
                            confidence=rule["confidence"],
                        )
                        log.info(
                            "Bootstrap of %s over %d resamples of %d rows in %.1fs: improvement %.4g, [%.4g, %.4g]",
                            metric,
                            bootstrap.samples,
                            bootstrap.rows,
                            time.perf_counter() - started,
                            bootstrap.improvement,
                            bootstrap.lower,
                            bootstrap.upper,
                        )
        slices = evaluation.slice_scores(
            candidate_outputs,
            production_outputs if production_score is not None else None,
            targets,
            task,
            split.columns,
            [tuple(k) if not isinstance(k, str) else (k,) for k in evaluate.get("slices", ())],
            metric=metric,
            mode=mode,
            min_count=evaluate.get("min_count", 30),
            extra=extra,
            classes=classes,
        )
        decision = decide(
            candidate_score,
            production_score,
            rule,
            production_version=int(current["version"]) if current else None,
            force=force,
            note=note,
            bootstrap=bootstrap,
            slices=slices,
        )
        reason = decision.reason
        if changed:
            reason += f"; the schema changed ({describe_change(changed)}), so both were scored on this run's eval data"
        blessing = {
            "decision": decision.decision,
            "promoted": decision.promoted,
            "reason": reason,
            "metric": metric,
            "mode": mode,
            "candidate_version": candidate.version,
            "candidate_score": candidate_score,
            "production_version": candidate.version
            if decision.promoted
            else (int(current["version"]) if current else None),
            "previous_version": int(current["version"]) if current else None,
            "production_score": production_score,
            "bootstrap": bootstrap.to_json() if bootstrap else None,
            "slices": slices,
            "thresholds": dict(rule.get("thresholds") or {}),
            "eval_rows": int(len(targets)),
            "compared_on": f"the whole eval split of run {run_key} ({len(targets)} rows), scored by both models",
            "schema_change": changed,
            "note": note,
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
    """Features added, removed or retyped between the production model and the candidate."""
    before = {f["name"]: f["type"] for f in old["features"]}
    after = {f["name"]: f["type"] for f in new["features"]}
    change = {
        "added": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
        "retyped": sorted(n for n in set(before) & set(after) if before[n] != after[n]),
    }
    return change if any(change.values()) else None


def describe_change(change: dict) -> str:
    parts = [f"{kind} {', '.join(names)}" for kind, names in change.items() if names]
    return "; ".join(parts)
