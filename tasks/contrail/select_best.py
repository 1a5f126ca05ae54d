"""Step 3, select best: pick the checkpoint to export from the evaluation history.

With `restore_best_weights` (the default) it is the evaluation with the best `monitor` value,
the earliest one on a tie; without it, the last evaluation, as Keras would leave the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from contrail import artifacts, layout, tune
from contrail.errors import TrainingError
from contrail.history import best_record, halving_stop, read_history
from contrail.layout import SelectBestDir
from contrail.results import SelectBestResult, TrainResult
from contrail.spec import EarlyStoppingSpec, load_spec, metric_mode
from contrail.step import StepRun

log = logging.getLogger(__name__)

STEP = "select_best"


@dataclass(frozen=True)
class SelectBestArgs:
    spec_path: str
    train: TrainResult | list[TrainResult]  # a list: a search's trials, in the plan's order
    step_dir: str
    trials: list[dict] | None = None  # the plan's trials (contrail.tune), with the list above


def run(args: SelectBestArgs) -> SelectBestResult:
    if isinstance(args.train, list):
        return _run_search(args)
    loaded = load_spec(args.spec_path)
    es = loaded.spec.train.early_stopping or EarlyStoppingSpec()
    out = SelectBestDir(Path(args.step_dir))
    fp = artifacts.fingerprint({"step": STEP, "train": args.train.fingerprint, "early_stopping": es.model_dump()})
    step = StepRun(STEP, SelectBestResult, out.path, fp, {"train": args.train.fingerprint})
    if (done := step.reusable()) is not None:
        return done
    choice = choose(read_history(args.train.history), es)
    train_dir = Path(args.train.step_dir)
    checkpoint = train_dir / choice["checkpoint"]
    # In the record, the checkpoint relative to the run's folder: true wherever the run is read.
    best = {**choice, "checkpoint": str(checkpoint.relative_to(train_dir.parent))}
    result = _publish(step, out, checkpoint, f"evaluation {choice['eval_index']}", best, monitor=choice["monitor"])
    log.info("Selected evaluation %d (step %d): %s", choice["eval_index"], choice["step"], choice["reason"])
    return result


def choose(history: list[dict], es: EarlyStoppingSpec) -> dict:
    """The chosen evaluation, and why it was chosen."""
    if not history:
        raise TrainingError(f"{layout.HISTORY}: expected at least one evaluation, found none")
    monitor, mode = es.monitor, metric_mode(es.monitor, es.mode)
    if monitor not in history[0]["metrics"]:
        raise TrainingError(
            f"{layout.HISTORY}: monitor {monitor!r} is not in the history; expected one of "
            f"{', '.join(sorted(history[0]['metrics']))}"
        )
    if es.restore_best_weights:
        chosen = best_record(history, es)
        reason = (
            f"best {monitor} ({mode}) = {chosen['metrics'][monitor]:.6g} at evaluation {chosen['eval_index']} "
            f"of {len(history)}"
        )
    else:
        chosen = history[-1]
        reason = f"last evaluation ({chosen['eval_index']}): restore_best_weights is false"
    return {
        "eval_index": chosen["eval_index"],
        "step": chosen["step"],
        "checkpoint": chosen["checkpoint"],
        "monitor": monitor,
        "mode": mode,
        "value": chosen["metrics"][monitor],
        "metrics": chosen["metrics"],
        "reason": reason,
        "evaluations": len(history),
    }


def _run_search(args: SelectBestArgs) -> SelectBestResult:
    """Across a search's trials: each trial's best evaluation by the objective, and of those the
    best; best.json lists every trial (its params, value, evaluations, how it stopped and where
    halving stopped it) for the report."""
    loaded = load_spec(args.spec_path)
    goal = tune.objective(loaded.spec.tune)
    es = EarlyStoppingSpec(monitor=goal["metric"], mode=goal["mode"], restore_best_weights=True)
    trials = args.trials or []
    if len(trials) != len(args.train):
        raise TrainingError(f"tune: expected a result for each of the {len(trials)} trials, found {len(args.train)}")
    out = SelectBestDir(Path(args.step_dir))
    fp = artifacts.fingerprint(
        {"step": STEP, "trials": [t.fingerprint for t in args.train], "objective": goal, "plan": trials}
    )
    step = StepRun(STEP, SelectBestResult, out.path, fp, {"train": [t.fingerprint for t in args.train]})
    if (done := step.reusable()) is not None:
        return done
    summaries = []
    for trial, result in zip(trials, args.train, strict=True):
        history = read_history(result.history)
        choice = choose(history, es)
        summaries.append(
            {
                **choice,
                "trial": trial["name"],
                "trial_index": trial["index"],
                "params": trial["params"],
                "train": trial["train"],
                "stop_reason": result.stop_reason,
                "halving": halving_stop(history),
                "train_dir": result.step_dir,
            }
        )
    chosen = tune.best_trial(summaries, goal["mode"])
    train_dir = Path(chosen["train_dir"])
    checkpoint = train_dir / chosen["checkpoint"]
    run_dir = train_dir.parent.parent  # <run>/train/trial-NNN
    best = {
        **{k: v for k, v in chosen.items() if k != "train_dir"},
        "checkpoint": str(checkpoint.relative_to(run_dir)),
        "reason": f"{chosen['trial']}: {chosen['reason']}; best {goal['metric']} of {len(summaries)} trials",
        "objective": goal,
        "trials": [{k: v for k, v in s.items() if k != "train_dir"} for s in summaries],
    }
    result = _publish(
        step,
        out,
        checkpoint,
        f"{chosen['trial']}, evaluation {chosen['eval_index']}",
        best,
        monitor=goal["metric"],
        trial=chosen["trial"],
        params=chosen["params"],
        train_settings=chosen["train"],
    )
    log.info(
        "Selected %s, evaluation %d (step %d): %s",
        chosen["trial"],
        chosen["eval_index"],
        chosen["step"],
        best["reason"],
    )
    return result


def _publish(step: StepRun, out: SelectBestDir, checkpoint: Path, what: str, best: dict, **fields) -> SelectBestResult:
    """Check that the chosen checkpoint (`what`: which evaluation) exists, then commit best.json
    and the result; `fields` are the result's besides the choice's evaluation, step and value."""
    if not layout.checkpoint_state(checkpoint).is_file():
        raise TrainingError(
            f"{checkpoint}: expected the selected checkpoint ({what}) to exist, found none", path=str(checkpoint)
        )
    with step.staged() as staging:
        artifacts.write_json_atomic(SelectBestDir(staging).best, best)
        result = SelectBestResult(
            step_dir=str(out.path),
            fingerprint=step.fingerprint,
            best_file=str(out.best),
            checkpoint_path=str(checkpoint),
            eval_index=best["eval_index"],
            step=best["step"],
            value=best["value"],
            **fields,
        )
        step.commit(staging, result, [out.best.name])
    return result
