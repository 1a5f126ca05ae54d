"""Step 2, train: tf.data over the TFRecords → Keras, evaluated every `eval_every_steps`.

Every evaluation writes a checkpoint (model, optimizer, data-iterator position, step and the
early-stopping state) into its own folder, published by one rename, and rewrites
`history.jsonl` from the state saved with it. A retried task resumes from the newest complete
checkpoint, so it neither restarts nor forgets how long it has been waiting to stop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from contrail import artifacts, report, tfrecord
from contrail.errors import TrainingError
from contrail.faults import failpoint
from contrail.progress import Progress
from contrail.spec import LoadedSpec, TrainSpec, load_spec

log = logging.getLogger(__name__)

STEP = "train"
HISTORY = "history.jsonl"
CHECKPOINTS = "checkpoints"
STATE = "state.json"
RUNNING = "running.json"


@dataclass(frozen=True)
class TrainArgs:
    spec_path: str
    preprocess: dict  # the preprocess step's XCom result
    step_dir: str
    params: dict = field(default_factory=dict)  # trigger-time overrides of model.params
    train_overrides: dict = field(default_factory=dict)  # e.g. {"max_steps": 200, "batch_size": 32}
    models_dir: str | None = None  # the pipeline's models/ folder: where train.warm_start looks
    on_checkpoint: Callable[[], None] | None = None  # called after each evaluation's checkpoint is written


def effective_config(loaded: LoadedSpec, params: dict, train_overrides: dict) -> tuple[dict, TrainSpec]:
    """The spec's params and train settings with trigger-time overrides applied."""
    merged = {**loaded.spec.model.params, **params}
    train = loaded.spec.train.model_copy(update=train_overrides) if train_overrides else loaded.spec.train
    return merged, train


def run(args: TrainArgs) -> dict:
    started = time.time()
    loaded = load_spec(args.spec_path)
    params, train = effective_config(loaded, args.params, args.train_overrides)
    step_dir = Path(args.step_dir)
    warm_start_from = _warm_start_source(train, args.models_dir)
    fp = artifacts.fingerprint(
        {
            "step": STEP,
            "examples": args.preprocess["fingerprint"],
            "params": params,
            "train": train.model_dump(),
            "build_fn": loaded.spec.model.build_fn,
            "build_fn_source": _build_fn_source_hash(loaded),
            # The version, not its path: a copy of a remote root sits in a new folder per task.
            "warm_start_from": Path(warm_start_from).name if warm_start_from else None,
        }
    )
    reused = artifacts.reusable_result(step_dir, fp)
    if reused is not None:
        log.info("Training for %s is complete and current; reusing %s", loaded.spec.name, step_dir)
        return reused
    _verify_examples(args.preprocess)
    trainer = _Trainer(loaded, params, train, args.preprocess, step_dir, fp, warm_start_from, args.on_checkpoint)
    return trainer.fit(started)


def _warm_start_source(train: TrainSpec, models_dir: str | None) -> str | None:
    """The production version folder to warm-start from, if the spec asks and one exists."""
    if not train.warm_start or not models_dir:
        return None
    production = Path(models_dir) / "production.json"
    if not production.is_file():
        log.info("train.warm_start: no production model in %s yet; starting from scratch", models_dir)
        return None
    return str(Path(models_dir) / str(artifacts.read_json(production)["version"]))


def _build_fn_source_hash(loaded: LoadedSpec) -> str | None:
    local = loaded.model_dir / (loaded.spec.model.module.replace(".", "/") + ".py")
    return hashlib.sha256(local.read_bytes()).hexdigest() if local.is_file() else None


def _verify_examples(preprocess: dict) -> None:
    """Check every shard against the record count in the preprocess manifest before training."""
    manifest = artifacts.read_manifest(Path(preprocess["step_dir"]))
    if manifest is None:
        raise TrainingError(f"{preprocess['step_dir']}: expected a committed preprocess manifest, found none")
    step_dir = Path(preprocess["step_dir"])
    shards = [(step_dir / o["path"], o["records"]) for o in manifest["outputs"] if "records" in o]
    tfrecord.verify_counts(shards, compression=preprocess["compression"])


class _Trainer:
    def __init__(
        self,
        loaded: LoadedSpec,
        params: dict,
        train: TrainSpec,
        preprocess: dict,
        step_dir: Path,
        fp: str,
        warm_start_from: str | None = None,
        on_checkpoint: Callable[[], None] | None = None,
    ):
        self.loaded, self.params, self.train, self.preprocess = loaded, params, train, preprocess
        self.step_dir, self.fp, self.warm_start_from = step_dir, fp, warm_start_from
        self.on_checkpoint = on_checkpoint
        self.ckpt_root = step_dir / CHECKPOINTS
        self.schema = artifacts.read_json(Path(preprocess["schema"]))

    def fit(self, started: float) -> dict:
        import tensorflow as tf

        from contrail import model as model_lib
        from contrail.early_stopping import EvalEarlyStopping
        from contrail.spec import EarlyStoppingSpec

        train, schema = self.train, self.schema
        model_lib.set_seeds(train.seed, train.deterministic)
        self._mark_running()
        strategy = model_lib.distribution_strategy(train.strategy)
        self.replicas = strategy.num_replicas_in_sync
        log.info("Training with the %s strategy over %d replica(s)", train.strategy, self.replicas)
        # Keras' multi-step loop fails to compile under MirroredStrategy (a placeholder without
        # a feed inside its while loop), so replicated training runs one step per call.
        spe = 1 if strategy.num_replicas_in_sync > 1 else _steps_per_execution(train.eval_every_steps, train.max_steps)
        with strategy.scope():
            model = model_lib.build_model(schema, self.loaded, self.params)
            model_lib.compile_model(model, schema["label"], train, self.params, spe)

        def train_dataset(seed: int):
            return model_lib.make_dataset(
                self.preprocess["train_files"],
                schema,
                batch_size=train.batch_size,
                compression=self.preprocess["compression"],
                training=True,
                shuffle_buffer=train.shuffle_buffer,
                seed=seed,
                records=self.preprocess["train_records"],
                packed=(schema.get("train_packing") or {}).get("columns", ()),
            )

        eval_ds = model_lib.make_dataset(
            self.preprocess["eval_files"],
            schema,
            batch_size=max(train.batch_size, 256),
            compression=self.preprocess["compression"],
            training=False,
        )
        es_spec = train.early_stopping or EarlyStoppingSpec(patience=10**9)
        if strategy.num_replicas_in_sync > 1:
            # A tf.distribute iterator cannot be checkpointed: restore the model and optimizer,
            # then continue with a shuffle seeded by the evaluation index reached.
            checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
            state = self._restore(checkpoint)
            seed = train.seed + (state["eval_index"] if state else 0)
            iterator = iter(strategy.experimental_distribute_dataset(train_dataset(seed)))
        else:
            iterator = iter(train_dataset(train.seed))
            checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, iterator=iterator)
            state = self._restore(checkpoint)
        if state is None and self.warm_start_from:
            model_lib.warm_start(model, Path(self.warm_start_from))
        stopper = EvalEarlyStopping(es_spec, state["early_stopping"] if state else None)
        history: list[dict] = state["history"] if state else []
        step = int(model.optimizer.iterations.numpy())
        eval_index = history[-1]["eval_index"] if history else 0
        stop_reason = None
        if state is not None:
            log.info("Resumed from %s at step %d, evaluation %d", state["checkpoint"], step, eval_index)
            if stopper.state.stopped_eval_index is not None or step >= train.max_steps:
                stop_reason = "resumed_complete"
        self.step_dir.mkdir(parents=True, exist_ok=True)
        writer = tf.summary.create_file_writer(str(self.step_dir / "tensorboard"))
        model.make_train_function()
        fit_started, steps_at_start = time.time(), step
        while stop_reason is None:
            round_steps = min(train.eval_every_steps, train.max_steps - step)
            model.reset_metrics()
            t0 = time.time()
            logs = {}
            # Between evaluations (the evaluation logs itself): a line every 30 s of a long round.
            ticks = Progress(
                log, f"training to evaluation {eval_index + 1}", round_steps, "steps", 30, log_at_end=False
            )
            for _ in range(math.ceil(round_steps / spe)):
                logs = model.train_function(iterator)
                ticks.advance(spe)
            failpoint(f"train.before_eval.{eval_index + 1}")
            train_seconds = time.time() - t0
            step = int(model.optimizer.iterations.numpy())
            train_metrics = {k: float(v) for k, v in model.get_metrics_result().items()} or {
                k: float(v) for k, v in logs.items()
            }
            metrics = {**train_metrics, **_evaluate(model, eval_ds, schema, strategy.num_replicas_in_sync > 1)}
            eval_index += 1
            if any(math.isnan(v) for v in metrics.values()):
                raise TrainingError(
                    f"{self.loaded.path.name}: the loss became NaN at evaluation {eval_index}, step {step}: "
                    f"{metrics}. Lower model.params.learning_rate or check the data for extreme values."
                )
            if es_spec.monitor not in metrics:
                raise TrainingError(
                    f"{self.loaded.path.name}: train.early_stopping.monitor={es_spec.monitor!r} is not a metric "
                    f"this model reports; expected one of {', '.join(sorted(metrics))}"
                )
            should_stop = stopper.update(metrics[es_spec.monitor], eval_index)
            examples_per_sec = round_steps * train.batch_size / max(train_seconds, 1e-9)
            record = {
                "eval_index": eval_index,
                "step": step,
                "metrics": metrics,
                "checkpoint": f"{CHECKPOINTS}/ckpt-{eval_index:05d}",
                "wall_time": time.time(),
                "train_seconds": round(train_seconds, 4),
                "examples_per_sec": round(examples_per_sec, 1),
                "best": stopper.state.best,
                "best_eval_index": stopper.state.best_eval_index,
                "wait": stopper.state.wait,
            }
            history.append(record)
            self._write_checkpoint(checkpoint, eval_index, step, stopper.as_dict(), history)
            with writer.as_default(step=step):
                for name, value in metrics.items():
                    tf.summary.scalar(name, value)
            writer.flush()
            report.write_report(self.step_dir.parent, self.loaded.spec)  # the curves so far
            if self.on_checkpoint is not None:
                self.on_checkpoint()  # e.g. publish it to a remote artifact root
            elapsed = time.time() - fit_started
            rate = (step - steps_at_start) / max(elapsed, 1e-9)
            eta = (train.max_steps - step) / rate if rate > 0 else float("nan")
            log.info(
                "eval %d | step %d/%d | %.0f examples/s | %s | best %s=%.5g (eval %s) | patience left %d | ETA <= %.0fs",
                eval_index,
                step,
                train.max_steps,
                examples_per_sec,
                " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())),
                es_spec.monitor,
                stopper.state.best,
                stopper.state.best_eval_index,
                stopper.patience_left,
                eta,
            )
            if should_stop:
                stop_reason = "early_stopping"
            elif step >= train.max_steps:
                stop_reason = "max_steps"
        writer.close()
        return self._commit(history, stopper, stop_reason, es_spec, started)

    def _restore(self, checkpoint) -> dict | None:
        """Restore the newest complete checkpoint written under this fingerprint, if any."""
        self.ckpt_root.mkdir(parents=True, exist_ok=True)
        for stale in self.ckpt_root.glob(".staging-*"):
            shutil.rmtree(stale, ignore_errors=True)  # a write that a kill interrupted
        for directory in sorted(self.ckpt_root.glob("ckpt-*"), reverse=True):
            state_path = directory / STATE
            try:
                state = artifacts.read_json(state_path)
            except (OSError, json.JSONDecodeError):
                log.warning("Skipping incomplete checkpoint %s", directory)
                continue
            if state.get("fingerprint") != self.fp:
                log.warning("Discarding checkpoints from a different config in %s", self.ckpt_root)
                for other in self.ckpt_root.glob("ckpt-*"):
                    shutil.rmtree(other, ignore_errors=True)
                return None
            from contrail import model as model_lib

            checkpoint.read(model_lib.checkpoint_path(directory)).assert_consumed()
            state["checkpoint"] = str(directory)
            self._write_history(state["history"])
            return state
        return None

    def _write_checkpoint(self, checkpoint, eval_index: int, step: int, es_state: dict, history: list[dict]) -> None:
        from contrail import model as model_lib

        final = self.ckpt_root / f"ckpt-{eval_index:05d}"
        staging = self.ckpt_root / f".staging-{final.name}-{uuid.uuid4().hex[:6]}"
        staging.mkdir(parents=True)
        checkpoint.write(model_lib.checkpoint_path(staging))
        state = {
            "fingerprint": self.fp,
            "eval_index": eval_index,
            "step": step,
            "early_stopping": es_state,
            "history": history,
        }
        failpoint(f"train.checkpoint_write.{eval_index}")  # tensors written, state not yet
        artifacts.write_json_atomic(staging / STATE, state)
        if final.exists():  # left by an attempt whose history this one has rewound past
            shutil.rmtree(final)
        os.rename(staging, final)
        self._write_history(history)
        self._retain(es_state.get("best_eval_index"), history)

    def _mark_running(self) -> None:
        """Say who is training here: a person (or a test) can find the process to inspect."""
        self.step_dir.mkdir(parents=True, exist_ok=True)
        artifacts.write_json_atomic(
            self.step_dir / RUNNING, {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        )

    def _write_history(self, history: list[dict]) -> None:
        path = self.step_dir / HISTORY
        tmp = path.with_name(f".{HISTORY}.{uuid.uuid4().hex[:6]}.tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in history))
        os.replace(tmp, path)

    def _retain(self, best_index: int | None, history: list[dict]) -> None:
        """Keep the best checkpoints and the last `keep_checkpoints`; never delete a best one.

        "Best" twice: early stopping's best (an improvement must beat `min_delta`) and the
        evaluation with the best `monitor` value outright, which select_best may choose.
        """
        from contrail.select_best import best_record
        from contrail.spec import EarlyStoppingSpec

        directories = sorted(self.ckpt_root.glob("ckpt-*"))
        keep = {d.name for d in directories[-self.train.keep_checkpoints :]}
        if best_index is not None:
            keep.add(f"ckpt-{best_index:05d}")
        if history:
            outright = best_record(history, self.train.early_stopping or EarlyStoppingSpec())
            keep.add(f"ckpt-{outright['eval_index']:05d}")
        for directory in directories:
            if directory.name not in keep:
                shutil.rmtree(directory, ignore_errors=True)

    def _commit(self, history, stopper, stop_reason, es_spec, started) -> dict:
        if not history:
            raise TrainingError(f"{self.step_dir}: training finished without a single evaluation")
        last = history[-1]
        result = {
            "step_dir": str(self.step_dir),
            "checkpoint_dir": str(self.ckpt_root),
            "history": str(self.step_dir / HISTORY),
            "evaluations": len(history),
            "final_step": last["step"],
            "stop_reason": stop_reason,
            "strategy": self.train.strategy,
            "replicas": self.replicas,
            "monitor": es_spec.monitor,
            "best_value": stopper.state.best,
            "best_eval_index": stopper.state.best_eval_index,
            "fingerprint": self.fp,
            "reused": False,
        }
        outputs = artifacts.describe_outputs(self.step_dir, [HISTORY])
        artifacts.write_manifest(
            self.step_dir,
            step=STEP,
            fingerprint_=self.fp,
            inputs={"examples": self.preprocess["fingerprint"]},
            outputs=outputs,
            result=result,
            started=started,
        )
        log.info(
            "Training stopped (%s) after %d evaluations at step %d; best %s=%.5g at evaluation %s",
            stop_reason,
            len(history),
            last["step"],
            es_spec.monitor,
            stopper.state.best,
            stopper.state.best_eval_index,
        )
        return result


def _evaluate(model, eval_ds, schema: dict, replicated: bool) -> dict[str, float]:
    """Metrics on the whole eval split, named `val_*`."""
    if not replicated:
        return {f"val_{k}": float(v) for k, v in model.evaluate(eval_ds, verbose=0, return_dict=True).items()}
    # Keras' evaluate fails under MirroredStrategy with string inputs (it tries to AddN them
    # across replicas): predict batch by batch instead, and score as export's blessing does.
    import numpy as np

    from contrail import serving

    outputs, targets = [], []
    for features, target in eval_ds:
        outputs.append(model(features, training=False).numpy())
        targets.append(target.numpy())
    from contrail.model import head_outputs

    task = schema["label"]["task"]
    return serving.score(head_outputs(np.concatenate(outputs), task), np.concatenate(targets), task)


def _steps_per_execution(eval_every: int, max_steps: int, cap: int = 32) -> int:
    """The largest divisor of both the cadence and max_steps up to `cap`, so that the
    multi-step training call never runs past an evaluation."""
    g = math.gcd(eval_every, max_steps)
    return max(d for d in range(1, min(cap, g) + 1) if g % d == 0)


def read_history(path: str | Path) -> list[dict]:
    with Path(path).open() as handle:
        return [json.loads(line) for line in handle if line.strip()]
