"""Step 3, select best: pick the checkpoint to export from the evaluation history.

With `restore_best_weights` (the default) it is the evaluation with the best `monitor` value,
the earliest one on a tie; without it, the last evaluation, as Keras would leave the model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from contrail import artifacts
from contrail.errors import TrainingError
from contrail.spec import EarlyStoppingSpec, load_spec, metric_mode
from contrail.train import read_history

log = logging.getLogger(__name__)

STEP = "select_best"
BEST = "best.json"


@dataclass(frozen=True)
class SelectBestArgs:
    spec_path: str
    train: dict  # the train step's XCom result
    step_dir: str
    train_overrides: dict = field(default_factory=dict)


def run(args: SelectBestArgs) -> dict:
    started = time.time()
    loaded = load_spec(args.spec_path)
    es = loaded.spec.train.early_stopping or EarlyStoppingSpec()
    step_dir = Path(args.step_dir)
    fp = artifacts.fingerprint({"step": STEP, "train": args.train["fingerprint"], "early_stopping": es.model_dump()})
    reused = artifacts.reusable_result(step_dir, fp)
    if reused is not None:
        return reused
    history = read_history(args.train["history"])
    choice = choose(history, es)
    checkpoint = Path(args.train["step_dir"]) / choice["checkpoint"]
    if not (checkpoint / "state.json").is_file():
        raise TrainingError(
            f"{checkpoint}: expected the selected checkpoint (evaluation {choice['eval_index']}) to exist, found none"
        )
    # In the record, the checkpoint relative to the run's folder: true wherever the run is read.
    best = {**choice, "checkpoint": str(checkpoint.relative_to(Path(args.train["step_dir"]).parent))}
    with artifacts.staged_dir(step_dir) as staging:
        artifacts.write_json_atomic(staging / BEST, best)
        result = {
            "step_dir": str(step_dir),
            "best": str(step_dir / BEST),
            "checkpoint": str(checkpoint),
            "eval_index": choice["eval_index"],
            "step": choice["step"],
            "monitor": choice["monitor"],
            "value": choice["value"],
            "fingerprint": fp,
            "reused": False,
        }
        artifacts.write_manifest(
            staging,
            step=STEP,
            fingerprint_=fp,
            inputs={"train": args.train["fingerprint"]},
            outputs=artifacts.describe_outputs(staging, [BEST]),
            result=result,
            started=started,
        )
    log.info("Selected evaluation %d (step %d): %s", choice["eval_index"], choice["step"], choice["reason"])
    return result


def best_record(history: list[dict], es: EarlyStoppingSpec) -> dict:
    """The evaluation with the best `monitor` value outright; the earliest on a tie."""
    sign = 1 if metric_mode(es.monitor, es.mode) == "min" else -1
    return min(history, key=lambda r: (sign * r["metrics"][es.monitor], r["eval_index"]))


def choose(history: list[dict], es: EarlyStoppingSpec) -> dict:
    """The chosen evaluation, and why it was chosen."""
    if not history:
        raise TrainingError("history.jsonl: expected at least one evaluation, found none")
    monitor, mode = es.monitor, metric_mode(es.monitor, es.mode)
    if monitor not in history[0]["metrics"]:
        raise TrainingError(
            f"history.jsonl: monitor {monitor!r} is not in the history; expected one of "
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
