"""Step 2, train: tf.data over the TFRecords → Keras, evaluated every `eval_every_steps`.

The loop trains a round, evaluates, updates early stopping, and hands the evaluation to its
handlers (`contrail.train_handlers`): checkpoint, history, retention, TensorBoard, report,
publish, progress. Every evaluation's checkpoint holds the model, the optimizer, the
data-iterator position, the step and the early-stopping state, so a retried task resumes from
the newest complete one: it neither restarts nor forgets how long it has been waiting to stop.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contrail import artifacts, evaluation, serving, tfrecord, tune
from contrail.early_stopping import EvalEarlyStopping
from contrail.errors import TrainingError
from contrail.faults import failpoint
from contrail.history import halving_stop
from contrail.layout import ModelsLayout, TrainDir, checkpoint_record
from contrail.progress import Progress
from contrail.results import PreprocessResult, TrainResult
from contrail.spec import EarlyStoppingSpec, LoadedSpec, TrainSpec, load_spec
from contrail.step import StepRun
from contrail.train_handlers import (
    Checkpoints,
    Evaluation,
    Handler,
    HistoryWriter,
    Lease,
    ProgressLog,
    Publisher,
    ReportWriter,
    Retention,
    TensorBoardWriter,
)

log = logging.getLogger(__name__)

STEP = "train"


@dataclass(frozen=True)
class TrainArgs:
    spec_path: str
    preprocess: PreprocessResult
    step_dir: str
    params: dict = field(default_factory=dict)  # trigger-time overrides of model.params
    train_overrides: dict = field(default_factory=dict)  # e.g. {"max_steps": 200, "batch_size": 32}
    models_dir: str | None = None  # the pipeline's models/ folder: where train.warm_start looks
    on_checkpoint: Callable[[], None] | None = None  # called after each evaluation's checkpoint is written
    # Reads running.json as every attempt sees it (a remote root's copy); None: the local file.
    read_lease: Callable[[], dict | None] | None = None
    # One trial of a search (contrail.tune): its params and train settings, applied over the
    # overrides above, its name, and the run's halving board.
    trial: dict | None = None


def effective_config(loaded: LoadedSpec, params: dict, train_overrides: dict) -> tuple[dict, TrainSpec]:
    """The spec's params and train settings with trigger-time overrides applied."""
    merged = {**loaded.spec.model.params, **params}
    train = loaded.spec.train.model_copy(update=train_overrides) if train_overrides else loaded.spec.train
    return merged, train


def run(args: TrainArgs) -> TrainResult:
    loaded = load_spec(args.spec_path)
    trial = args.trial or {}
    params, train = effective_config(
        loaded, {**args.params, **trial.get("params", {})}, {**args.train_overrides, **trial.get("train", {})}
    )
    halving = tune.Halving.for_trial(trial, loaded.spec.tune) if trial and loaded.spec.tune else None
    warm_start_from = _warm_start_source(train, args.models_dir)
    identity = {
        "step": STEP,
        "examples": args.preprocess.fingerprint,
        "params": params,
        "train": train.model_dump(),
        "build_fn": loaded.spec.model.build_fn,
        "build_fn_source": _build_fn_source_hash(loaded),
        # The version, not its path: a copy of a remote root sits in a new folder per task.
        "warm_start_from": Path(warm_start_from).name if warm_start_from else None,
    }
    if halving is not None:  # its stops depend on the other trials of its run: never another run's
        identity["halving"] = {
            # The board's run and plan (<run>/train/rungs/<plan>), not where the root is mounted.
            "board": "/".join(halving.board.parts[-5:]),
            "trial": halving.trial,
            **loaded.spec.tune.halving.model_dump(),
        }
    fp = artifacts.fingerprint(identity)
    step = StepRun(STEP, TrainResult, Path(args.step_dir), fp, {"examples": args.preprocess.fingerprint})
    if (done := step.reusable()) is not None:
        return done
    _verify_examples(args.preprocess)
    lease = Lease(TrainDir(step.step_dir), args.read_lease)
    return _Trainer(
        step,
        loaded,
        params,
        train,
        args.preprocess,
        warm_start_from,
        args.on_checkpoint,
        lease,
        halving,
        trial.get("name"),
    ).fit()


def _warm_start_source(train: TrainSpec, models_dir: str | None) -> str | None:
    """The production version folder to warm-start from, if the spec asks and one exists."""
    if not train.warm_start or not models_dir:
        return None
    models = ModelsLayout(Path(models_dir))
    if not models.production.is_file():
        log.info("train.warm_start: no production model in %s yet; starting from scratch", models_dir)
        return None
    return str(models.version(artifacts.read_json(models.production)["version"]).path)


def _build_fn_source_hash(loaded: LoadedSpec) -> str | None:
    local = loaded.model_dir / (loaded.spec.model.module.replace(".", "/") + ".py")
    return hashlib.sha256(local.read_bytes()).hexdigest() if local.is_file() else None


def _verify_examples(preprocess: PreprocessResult) -> None:
    """Check every shard against the record count in the preprocess manifest before training."""
    step_dir = Path(preprocess.step_dir)
    manifest = artifacts.read_manifest(step_dir)
    if manifest is None:
        raise TrainingError(
            f"{step_dir}: expected a committed preprocess manifest, found none", path=preprocess.step_dir
        )
    shards = [(step_dir / o["path"], o["records"]) for o in manifest["outputs"] if "records" in o]
    tfrecord.verify_counts(shards, compression=preprocess.compression)


class _Trainer:
    def __init__(
        self,
        step: StepRun[TrainResult],
        loaded: LoadedSpec,
        params: dict,
        train: TrainSpec,
        preprocess: PreprocessResult,
        warm_start_from: str | None,
        on_checkpoint: Callable[[], None] | None,
        lease: Lease,
        halving: tune.Halving | None = None,
        trial: str | None = None,
    ):
        self.step, self.loaded, self.params, self.train = step, loaded, params, train
        self.halving, self._trial = halving, trial
        goal = tune.objective(loaded.spec.tune) if trial and loaded.spec.tune else None
        self.objective = EarlyStoppingSpec(monitor=goal["metric"], mode=goal["mode"]) if goal else None
        self.preprocess, self.warm_start_from, self.on_checkpoint = preprocess, warm_start_from, on_checkpoint
        self.lease = lease
        self.dir = TrainDir(step.step_dir)
        self.schema = artifacts.read_json(Path(preprocess.schema))
        self.early_stopping = train.early_stopping or EarlyStoppingSpec(patience=10**9)

    def fit(self) -> TrainResult:
        from contrail import model as model_lib

        train = self.train
        model_lib.set_seeds(train.seed, train.deterministic)
        self._take_over()
        strategy = model_lib.distribution_strategy(train.strategy)
        replicated = strategy.num_replicas_in_sync > 1
        log.info("Training with the %s strategy over %d replica(s)", train.strategy, strategy.num_replicas_in_sync)
        # Keras' multi-step loop fails to compile under MirroredStrategy (a placeholder without
        # a feed inside its while loop), so replicated training runs one step per call.
        spe = 1 if replicated else _steps_per_execution(train.eval_every_steps)
        with strategy.scope():
            model = model_lib.build_model(self.schema, self.loaded, self.params)
            model_lib.compile_model(model, self.schema["label"], train, self.params, spe)
        eval_ds = model_lib.make_dataset(
            self.preprocess.eval_files,
            self.schema,
            batch_size=max(train.batch_size, 256),
            compression=self.preprocess.compression,
            training=False,
        )
        checkpoints, iterator, state = self._restore(model, strategy)
        if state is None and self.warm_start_from:
            model_lib.warm_start(model, Path(self.warm_start_from))
        stopper = EvalEarlyStopping(self.early_stopping, state["early_stopping"] if state else None)
        history: list[dict] = state["history"] if state else []
        step = int(model.optimizer.iterations.numpy())
        stop_reason = None
        if state is not None:
            log.info("Resumed from %s at step %d, evaluation %d", state["checkpoint"], step, len(history))
            if _finished(stopper, step, train.max_steps, history):
                stop_reason = "resumed_complete"
        self.dir.path.mkdir(parents=True, exist_ok=True)
        history_writer = HistoryWriter(self.dir, fence=self.lease.check)
        if state is not None:
            history_writer.write(history)  # the restored checkpoint's, not a later attempt's
        steps = _StepLoop(model, spe)
        handlers = self._handlers(checkpoints, history_writer, step)
        while stop_reason is None:
            evaluation, should_stop = self._round(model, iterator, eval_ds, steps, replicated, stopper, history)
            halted = self._halve(evaluation)
            for handler in handlers:
                handler.on_evaluation(evaluation)
            stop_reason = _stop_reason(should_stop, halted, evaluation.step >= train.max_steps)
        for handler in handlers:
            handler.on_train_end()
        return self._commit(history, stopper, stop_reason, strategy.num_replicas_in_sync)

    def _halve(self, evaluation: Evaluation) -> bool:
        """A search's halving at a rung: record the decision in the evaluation's history record
        (so the checkpoint holds it) and return whether this trial stops here."""
        decision = self.halving.decide(evaluation.eval_index, evaluation.metrics) if self.halving else None
        if decision is None:
            return False
        evaluation.record["halving"] = decision
        log.info(
            "Halving, rung %d: %s ranks %d of %d at %s=%.5g, the best %d go on: %s",
            decision["rung"],
            self.halving.trial,
            decision["rank"],
            decision["of"],
            self.halving.metric,
            decision["value"],
            decision["keep"],
            decision["decision"],
        )
        return decision["decision"] == "stop"

    def _take_over(self) -> None:
        """Take the lease: whoever trained here before (an orphan of a dead worker) is fenced off
        from now on. A remote root gets the lease before it gets any checkpoint of this attempt."""
        self.lease.acquire()
        if self.on_checkpoint is not None:
            self.on_checkpoint()

    def _restore(self, model, strategy) -> tuple[Checkpoints, Any, dict | None]:
        """The checkpoints, the training data's iterator, and the state of the newest complete
        checkpoint restored into both (None: nothing to resume)."""
        import tensorflow as tf

        def checkpoints(checkpoint) -> Checkpoints:
            return Checkpoints(
                self.dir,
                checkpoint,
                self.step.fingerprint,
                self.train.keep_checkpoints,
                self.early_stopping,
                fence=self.lease.check,
                objective=self.objective,
            )

        if strategy.num_replicas_in_sync > 1:
            # A tf.distribute iterator cannot be checkpointed: restore the model and optimizer,
            # then continue with a shuffle seeded by the evaluation index reached.
            saved = checkpoints(tf.train.Checkpoint(model=model, optimizer=model.optimizer))
            state = saved.restore()
            seed = self.train.seed + (state["eval_index"] if state else 0)
            return saved, iter(strategy.experimental_distribute_dataset(self._train_dataset(seed))), state
        iterator = iter(self._train_dataset(self.train.seed))
        saved = checkpoints(tf.train.Checkpoint(model=model, optimizer=model.optimizer, iterator=iterator))
        return saved, iterator, saved.restore()

    def _handlers(self, checkpoints: Checkpoints, history_writer: HistoryWriter, step: int) -> list[Handler]:
        handlers = [
            checkpoints,
            history_writer,
            Retention(checkpoints),
            TensorBoardWriter(self.dir),
            # The run's folder: train/'s parent, or a search trial's (train/trial-NNN) grandparent.
            ReportWriter(self.dir.path.parent.parent if self._trial else self.dir.path.parent, self.loaded.spec),
        ]
        if self.on_checkpoint is not None:
            handlers.append(Publisher(self.on_checkpoint, fence=self.lease.check))  # e.g. to a remote root
        return [*handlers, self.lease, ProgressLog(self.early_stopping, self.train.max_steps, step)]

    def _train_dataset(self, seed: int):
        from contrail import model as model_lib

        return model_lib.make_dataset(
            self.preprocess.train_files,
            self.schema,
            batch_size=self.train.batch_size,
            compression=self.preprocess.compression,
            training=True,
            shuffle_buffer=self.train.shuffle_buffer,
            seed=seed,
            records=self.preprocess.train_records,
            packed=(self.schema.get("train_packing") or {}).get("columns", ()),
            class_weights=class_weights(self.train.class_weight, self.schema, Path(self.preprocess.stats)),
        )

    def _round(self, model, iterator, eval_ds, steps: _StepLoop, replicated: bool, stopper, history: list[dict]):
        """Train up to the next evaluation, evaluate, and update early stopping; append the
        evaluation's record to `history`. Returns the evaluation and whether to stop."""
        train, monitor = self.train, self.early_stopping.monitor
        step = int(model.optimizer.iterations.numpy())
        eval_index = len(history) + 1
        round_steps = min(train.eval_every_steps, train.max_steps - step)
        model.reset_metrics()
        started, logs = time.time(), {}
        # Between evaluations (the evaluation logs itself): a line every 30 s of a long round.
        ticks = Progress(log, f"training to evaluation {eval_index}", round_steps, "steps", 30, log_at_end=False)
        logs = steps.run(iterator, round_steps, ticks)
        failpoint(f"train.before_eval.{eval_index}")
        train_seconds = time.time() - started
        step = int(model.optimizer.iterations.numpy())
        train_metrics = {k: float(v) for k, v in model.get_metrics_result().items()} or {
            k: float(v) for k, v in logs.items()
        }
        metrics = {**train_metrics, **_evaluate(model, eval_ds, self.schema, replicated)}
        if any(math.isnan(v) for v in metrics.values()):
            raise TrainingError(
                f"{self.loaded.path.name}: the loss became NaN at evaluation {eval_index}, step {step}: "
                f"{metrics}. Lower model.params.learning_rate or check the data for extreme values.",
                path=str(self.loaded.path),
                field="model.params.learning_rate",
            )
        if monitor not in metrics:
            raise TrainingError(
                f"{self.loaded.path.name}: train.early_stopping.monitor={monitor!r} is not a metric "
                f"this model reports; expected one of {', '.join(sorted(metrics))}",
                path=str(self.loaded.path),
                field="train.early_stopping.monitor",
            )
        should_stop = stopper.update(metrics[monitor], eval_index)
        record = {
            "eval_index": eval_index,
            "step": step,
            "metrics": metrics,
            "checkpoint": checkpoint_record(eval_index),
            "wall_time": time.time(),
            "train_seconds": round(train_seconds, 4),
            "examples_per_sec": round(round_steps * train.batch_size / max(train_seconds, 1e-9), 1),
            "best": stopper.state.best,
            "best_eval_index": stopper.state.best_eval_index,
            "wait": stopper.state.wait,
        }
        history.append(record)
        evaluation = Evaluation(eval_index, step, metrics, record, history, stopper.as_dict())
        return evaluation, should_stop

    def _commit(self, history: list[dict], stopper, stop_reason: str, replicas: int) -> TrainResult:
        if not history:
            raise TrainingError(f"{self.dir.path}: training finished without a single evaluation")
        last = history[-1]
        result = TrainResult(
            step_dir=str(self.dir.path),
            fingerprint=self.step.fingerprint,
            checkpoint_dir=str(self.dir.checkpoints),
            history=str(self.dir.history),
            evaluations=len(history),
            final_step=last["step"],
            stop_reason=stop_reason,
            strategy=self.train.strategy,
            replicas=replicas,
            monitor=self.early_stopping.monitor,
            best_value=stopper.state.best,
            best_eval_index=stopper.state.best_eval_index,
        )
        self.step.commit(self.dir.path, result, [self.dir.history.name])
        log.info(
            "Training stopped (%s) after %d evaluations at step %d; best %s=%.5g at evaluation %s",
            stop_reason,
            len(history),
            last["step"],
            self.early_stopping.monitor,
            stopper.state.best,
            stopper.state.best_eval_index,
        )
        return result


def _stop_reason(early_stopping: bool, halted: bool, at_max_steps: bool) -> str | None:
    """Why training stops after an evaluation (None: it goes on)."""
    if early_stopping:
        return "early_stopping"
    if at_max_steps:
        return "max_steps"
    return "halving" if halted else None


def _finished(stopper: EvalEarlyStopping, step: int, max_steps: int, history: list[dict]) -> bool:
    """Whether a restored checkpoint is where training had stopped: by early stopping, at
    max_steps, or by a search's halving."""
    halted = halving_stop(history) is not None
    return stopper.state.stopped_eval_index is not None or step >= max_steps or halted


def class_weights(rule: str | dict | None, schema: dict, stats_path: Path) -> list[float] | None:
    """`train.class_weight` as one weight per class, in the label's class order: `balanced`
    gives n / (classes × n_class) from the train split's class counts; a map names some
    classes, and the others weigh 1."""
    if rule is None:
        return None
    classes = schema["label"]["classes"]
    if rule == "balanced":
        counts = artifacts.read_json(stats_path)["label"]["train_class_counts"]
        total = sum(counts.values())
        return [total / (len(classes) * counts[str(c)]) if counts.get(str(c)) else 1.0 for c in classes]
    named = {str(k): float(v) for k, v in rule.items()}
    unknown = sorted(set(named) - {str(c) for c in classes})
    if unknown:
        raise TrainingError(
            f"{stats_path}: train.class_weight names classes the label does not have: {', '.join(unknown)} "
            f"(expected some of {', '.join(map(str, classes))})",
            field="train.class_weight",
        )
    return [named.get(str(c), 1.0) for c in classes]


def _evaluate(model, eval_ds, schema: dict, replicated: bool) -> dict[str, float]:
    """Metrics on the whole eval split, named `val_*`."""
    if not replicated:
        return {f"val_{k}": float(v) for k, v in model.evaluate(eval_ds, verbose=0, return_dict=True).items()}
    # Keras' evaluate fails under MirroredStrategy with string inputs (it tries to AddN them
    # across replicas): predict batch by batch instead, and score as export's blessing does.
    import numpy as np

    outputs, targets = [], []
    for features, target in eval_ds:
        outputs.append(model(features, training=False).numpy())
        targets.append(target.numpy())
    task = schema["label"]["task"]
    return evaluation.score(serving.head_outputs(np.concatenate(outputs), task), np.concatenate(targets), task)


def _steps_per_execution(eval_every: int, cap: int = 32) -> int:
    """Steps per call of Keras' multi-step training loop: `cap`, or the whole round when it is
    shorter. `_StepLoop` runs a round's remainder as one shorter call, so the cadence need not
    divide by it. (A divisor of the cadence, as before, gave 4 for a cadence of 244 steps, and
    the per-call overhead cost a third of the throughput at batch 1024.)"""
    return max(1, min(cap, eval_every))


class _StepLoop:
    """Runs n training steps as calls of `spe` steps, then one call of the remainder.

    Keras bakes `steps_per_execution` into its train function when the function is first
    traced, so each call length gets its own function, built and traced on first use: a round's
    length and its remainder, and the last round's when max_steps cuts it short. Each step is
    the same step on the same iterator, so the updates are those of one step per call.
    """

    def __init__(self, model, spe: int) -> None:
        self.model, self.spe = model, spe
        self._functions: dict[int, Any] = {}

    def run(self, iterator, steps: int, ticks: Progress) -> dict:
        logs: dict = {}
        while steps > 0:
            count = min(self.spe, steps)
            logs = self._function(count)(iterator)
            ticks.advance(count)
            steps -= count
        return logs

    def _function(self, count: int):
        self.model.steps_per_execution = count  # read when the function traces, on its first call
        if count not in self._functions:
            self.model.make_train_function(force=True)
            self._functions[count] = self.model.train_function
        return self._functions[count]
