"""Step 3, select best: pick the checkpoint to export from the evaluation history.

With `restore_best_weights` (the default) it is the evaluation with the best `monitor` value,
the earliest one on a tie; without it, the last evaluation, as Keras would leave the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from contrail import artifacts, layout
from contrail.errors import TrainingError
from contrail.history import best_record, read_history
from contrail.layout import SelectBestDir
from contrail.results import SelectBestResult, TrainResult
from contrail.spec import EarlyStoppingSpec, load_spec, metric_mode
from contrail.step import StepRun

log = logging.getLogger(__name__)

STEP = "select_best"


@dataclass(frozen=True)
class SelectBestArgs:
    spec_path: str
    train: TrainResult
    step_dir: str


def run(args: SelectBestArgs) -> SelectBestResult:
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
    if not layout.checkpoint_state(checkpoint).is_file():
        raise TrainingError(
            f"{checkpoint}: expected the selected checkpoint (evaluation {choice['eval_index']}) to exist, found none",
            path=str(checkpoint),
        )
    # In the record, the checkpoint relative to the run's folder: true wherever the run is read.
    best = {**choice, "checkpoint": str(checkpoint.relative_to(train_dir.parent))}
    with step.staged() as staging:
        artifacts.write_json_atomic(SelectBestDir(staging).best, best)
        result = SelectBestResult(
            step_dir=str(out.path),
            fingerprint=fp,
            best_file=str(out.best),
            checkpoint_path=str(checkpoint),
            eval_index=choice["eval_index"],
            step=choice["step"],
            monitor=choice["monitor"],
            value=choice["value"],
        )
        step.commit(staging, result, [out.best.name])
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
