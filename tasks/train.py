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
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from contrail import artifacts, tfrecord
from contrail.errors import TrainingError
from contrail.spec import LoadedSpec, TrainSpec, load_spec

log = logging.getLogger(__name__)

STEP = "train"
HISTORY = "history.jsonl"
CHECKPOINTS = "checkpoints"
STATE = "state.json"


@dataclass(frozen=True)
class TrainArgs:
    spec_path: str
    preprocess: dict  # the preprocess step's XCom result
    step_dir: str
    params: dict = field(default_factory=dict)  # trigger-time overrides of model.params
    train_overrides: dict = field(default_factory=dict)  # e.g. {"max_steps": 200, "batch_size": 32}


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
    fp = artifacts.fingerprint(
        {
            "step": STEP,
            "examples": args.preprocess["fingerprint"],
            "params": params,
            "train": train.model_dump(),
            "build_fn": loaded.spec.model.build_fn,
            "build_fn_source": _build_fn_source_hash(loaded),
        }
    )
    reused = artifacts.reusable_result(step_dir, fp)
    if reused is not None:
        log.info("Training for %s is complete and current; reusing %s", loaded.spec.name, step_dir)
        return reused
    _verify_examples(args.preprocess)
    return _Trainer(loaded, params, train, args.preprocess, step_dir, fp).fit(started)


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
    def __init__(self, loaded: LoadedSpec, params: dict, train: TrainSpec, preprocess: dict, step_dir: Path, fp: str):
        self.loaded, self.params, self.train, self.preprocess = loaded, params, train, preprocess
        self.step_dir, self.fp = step_dir, fp
        self.ckpt_root = step_dir / CHECKPOINTS
        self.schema = artifacts.read_json(Path(preprocess["schema"]))

    def fit(self, started: float) -> dict:
        import tensorflow as tf

        from contrail import model as model_lib
        from contrail.early_stopping import EvalEarlyStopping
        from contrail.spec import EarlyStoppingSpec

        train, schema = self.train, self.schema
        model_lib.set_seeds(train.seed, train.deterministic)
        spe = _steps_per_execution(train.eval_every_steps, train.max_steps)
        model = model_lib.build_model(schema, self.loaded, self.params)
        model_lib.compile_model(model, schema["label"], train, self.params, spe)
        train_ds = model_lib.make_dataset(
            self.preprocess["train_files"],
            schema,
            batch_size=train.batch_size,
            compression=self.preprocess["compression"],
            training=True,
            shuffle_buffer=train.shuffle_buffer,
            seed=train.seed,
        )
        eval_ds = model_lib.make_dataset(
            self.preprocess["eval_files"],
            schema,
            batch_size=max(train.batch_size, 256),
            compression=self.preprocess["compression"],
            training=False,
        )
        iterator = iter(train_ds)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, iterator=iterator)
        es_spec = train.early_stopping or EarlyStoppingSpec(patience=10**9)
        state = self._restore(checkpoint)
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
            for _ in range(math.ceil(round_steps / spe)):
                logs = model.train_function(iterator)
            train_seconds = time.time() - t0
            step = int(model.optimizer.iterations.numpy())
            train_metrics = {k: float(v) for k, v in model.get_metrics_result().items()} or {
                k: float(v) for k, v in logs.items()
            }
            val = model.evaluate(eval_ds, verbose=0, return_dict=True)
            metrics = {**train_metrics, **{f"val_{k}": float(v) for k, v in val.items()}}
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
        artifacts.write_json_atomic(staging / STATE, state)
        if final.exists():  # left by an attempt whose history this one has rewound past
            shutil.rmtree(final)
        os.rename(staging, final)
        self._write_history(history)
        self._retain(es_state.get("best_eval_index"))

    def _write_history(self, history: list[dict]) -> None:
        path = self.step_dir / HISTORY
        tmp = path.with_name(f".{HISTORY}.{uuid.uuid4().hex[:6]}.tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in history))
        os.replace(tmp, path)

    def _retain(self, best_index: int | None) -> None:
        """Keep the best checkpoint and the last `keep_checkpoints`; never delete the best."""
        directories = sorted(self.ckpt_root.glob("ckpt-*"))
        keep = {d.name for d in directories[-self.train.keep_checkpoints :]}
        if best_index is not None:
            keep.add(f"ckpt-{best_index:05d}")
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


def _steps_per_execution(eval_every: int, max_steps: int, cap: int = 32) -> int:
    """The largest divisor of both the cadence and max_steps up to `cap`, so that the
    multi-step training call never runs past an evaluation."""
    g = math.gcd(eval_every, max_steps)
    return max(d for d in range(1, min(cap, g) + 1) if g % d == 0)


def read_history(path: str | Path) -> list[dict]:
    with Path(path).open() as handle:
        return [json.loads(line) for line in handle if line.strip()]
