"""What happens at each evaluation of training, one handler per concern.

The training loop (`contrail.train`) calls, in order, `on_evaluation(evaluation)` of each
handler after every evaluation, and `on_train_end()` once when it stops: the shape of Keras
callbacks. Each handler can be built and driven alone (tests do), and none of them decides
anything about training itself.

- `Lease`: who trains in this folder (`running.json`: pid, host, a token, a heartbeat). Each
  attempt takes it over; an attempt whose lease was taken (an orphan, left running by a dead
  worker) is fenced off: it stops before it publishes another checkpoint or history.
- `Checkpoints`: each evaluation's checkpoint (model, optimizer, data-iterator position and the
  early-stopping state), published by one rename; the newest complete one restored on a retry;
  retention of the best and the last few.
- `HistoryWriter`: `history.jsonl`, rewritten from the history saved with the checkpoint.
- `TensorBoardWriter`: every metric as a scalar summary.
- `ReportWriter`: the run report, so the curves show while training still runs.
- `Publisher`: a callback after each checkpoint (a remote artifact root uploads it).
- `ProgressLog`: one line per evaluation with the metrics, patience left, throughput and ETA.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contrail import artifacts, history, layout, report
from contrail.errors import LeaseLostError
from contrail.faults import failpoint
from contrail.layout import TrainDir
from contrail.spec import EarlyStoppingSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    """One evaluation, as the handlers see it."""

    eval_index: int
    step: int
    metrics: dict[str, float]
    record: dict[str, Any]  # its history.jsonl line
    history: list[dict]  # every record so far, this one last
    early_stopping: dict[str, Any]  # the early-stopping state after this evaluation


class Handler:
    """Does nothing; subclasses override what they need."""

    def on_evaluation(self, evaluation: Evaluation) -> None:
        pass

    def on_train_end(self) -> None:
        pass


class Lease(Handler):
    """This attempt's hold on a train folder, in `running.json`.

    Each attempt that takes the lease gets the next epoch, and the newest epoch wins: an older
    attempt (the orphan of a killed worker) that finds a newer one stops, and a newer attempt
    that finds its lease overwritten by an older one takes it back. Checking and writing happen
    under an `fcntl` lock beside the lease, so on one machine (or a POSIX shared root) an older
    attempt cannot renew its heartbeat over a lease taken in between.

    :param read_current: reads the lease as every attempt sees it (for a remote artifact root,
        the store's copy); by default the local file
    """

    def __init__(self, train_dir: TrainDir, read_current: Callable[[], dict | None] | None = None) -> None:
        self.path = train_dir.running
        self.token = uuid.uuid4().hex
        self.started = time.time()
        self.epoch = 0
        self.read_current = read_current or self._read_local

    def _read_local(self) -> dict | None:
        try:
            return artifacts.read_json(self.path)
        except (OSError, ValueError):
            return None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def acquire(self) -> None:
        """Take the lease over (whoever held it) with the next epoch, and say who is training here."""
        with self._locked():
            current = self.read_current() or {}
            self.epoch = int(current.get("epoch", 0)) + 1
            self._write()

    def check(self) -> None:
        """Raise `LeaseLostError` if a newer attempt has taken the lease since."""
        with self._locked():
            self._hold()

    def on_evaluation(self, evaluation: Evaluation) -> None:
        with self._locked():
            self._hold()
            self._write()  # the heartbeat: when this attempt last finished an evaluation

    def _hold(self) -> None:
        current = self.read_current() or {}
        if current.get("token") == self.token:
            return
        if int(current.get("epoch", 0)) < self.epoch:  # an older attempt wrote over this one's lease
            log.warning(
                "%s: an older attempt (pid %s on %s) wrote over this attempt's lease; taking it back",
                self.path,
                current.get("pid"),
                current.get("host"),
            )
            self._write()
            return
        raise LeaseLostError(
            f"{self.path}: expected this attempt's lease (pid {os.getpid()} on {socket.gethostname()}, "
            f"epoch {self.epoch}), found pid {current.get('pid')} on {current.get('host')} holding it "
            f"(epoch {current.get('epoch')}); a newer attempt took the training over, so this one stops "
            "without publishing",
            path=str(self.path),
        )

    def _write(self) -> None:
        artifacts.write_json_atomic(
            self.path,
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "token": self.token,
                "epoch": self.epoch,
                "started": self.started,
                "heartbeat": time.time(),
            },
        )


class Checkpoints(Handler):
    """Checkpoints under `train_dir/checkpoints/ckpt-NNNNN/`, each committed by its `state.json`.

    :param checkpoint: the `tf.train.Checkpoint` to write and restore
    :param fingerprint: the training config's; checkpoints of another config are discarded
    :param keep: how many of the newest checkpoints retention keeps (besides the best ones)
    :param early_stopping: the rule whose best checkpoints retention never deletes
    :param objective: a search's objective (as a rule): its best checkpoint is kept too, for
        select_best to choose across trials
    :param fence: called just before a checkpoint is published; raises to stop an attempt that
        no longer holds the lease
    """

    def __init__(
        self,
        train_dir: TrainDir,
        checkpoint: Any,
        fingerprint: str,
        keep: int,
        early_stopping: EarlyStoppingSpec,
        fence: Callable[[], None] = lambda: None,
        objective: EarlyStoppingSpec | None = None,
    ) -> None:
        self.dir = train_dir
        self.checkpoint = checkpoint
        self.fingerprint = fingerprint
        self.keep = keep
        self.early_stopping = early_stopping
        self.objective = objective
        self.fence = fence

    def restore(self) -> dict | None:
        """Restore the newest complete checkpoint written under this fingerprint; return its
        state (with `checkpoint`, the folder it came from), or None to start from scratch."""
        root = self.dir.checkpoints
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".staging-*"):
            shutil.rmtree(stale, ignore_errors=True)  # a write that a kill interrupted
        for directory in reversed(self.dir.checkpoint_dirs()):
            try:
                state = artifacts.read_json(layout.checkpoint_state(directory))
            except (OSError, ValueError):
                log.warning("Skipping incomplete checkpoint %s", directory)
                continue
            if state.get("fingerprint") != self.fingerprint:
                log.warning("Discarding checkpoints from a different config in %s", root)
                for other in self.dir.checkpoint_dirs():
                    shutil.rmtree(other, ignore_errors=True)
                return None
            self.checkpoint.read(layout.checkpoint_prefix(directory)).assert_consumed()
            return {**state, "checkpoint": str(directory)}
        return None

    def on_evaluation(self, evaluation: Evaluation) -> None:
        final = self.dir.checkpoint(evaluation.eval_index)
        staging = final.parent / f".staging-{final.name}-{uuid.uuid4().hex[:6]}"
        staging.mkdir(parents=True)
        try:
            self.checkpoint.write(layout.checkpoint_prefix(staging))
            state = {
                "fingerprint": self.fingerprint,
                "eval_index": evaluation.eval_index,
                "step": evaluation.step,
                "early_stopping": evaluation.early_stopping,
                "history": evaluation.history,
            }
            failpoint(f"train.checkpoint_write.{evaluation.eval_index}")  # tensors written, state not yet
            artifacts.write_json_atomic(layout.checkpoint_state(staging), state)
            self.fence()
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # a kill leaves it; `restore` removes that one
            raise
        if final.exists():  # left by an attempt whose history this one has rewound past
            shutil.rmtree(final)
        os.rename(staging, final)

    def retain(self, evaluation: Evaluation) -> None:
        """Keep the best checkpoints and the last `keep`; never delete a best one.

        "Best" twice: early stopping's best (an improvement must beat `min_delta`) and the
        evaluation with the best `monitor` value outright, which select_best may choose.
        """
        directories = self.dir.checkpoint_dirs()
        keep = {d.name for d in directories[-self.keep :]}
        best_index = evaluation.early_stopping.get("best_eval_index")
        if best_index is not None:
            keep.add(layout.checkpoint_name(best_index))
        for rule in (self.early_stopping, self.objective):
            if rule is not None:
                keep.add(layout.checkpoint_name(history.best_record(evaluation.history, rule)["eval_index"]))
        for directory in directories:
            if directory.name not in keep:
                shutil.rmtree(directory, ignore_errors=True)


class HistoryWriter(Handler):
    """`history.jsonl`: the history saved with the newest checkpoint, one line per evaluation."""

    def __init__(self, train_dir: TrainDir, fence: Callable[[], None] = lambda: None) -> None:
        self.path = train_dir.history
        self.fence = fence

    def write(self, records: list[dict]) -> None:
        self.fence()
        history.write_history(self.path, records)

    def on_evaluation(self, evaluation: Evaluation) -> None:
        self.write(evaluation.history)


class Retention(Handler):
    """Retention runs after the history names the new checkpoint (see `Checkpoints.retain`)."""

    def __init__(self, checkpoints: Checkpoints) -> None:
        self.checkpoints = checkpoints

    def on_evaluation(self, evaluation: Evaluation) -> None:
        self.checkpoints.retain(evaluation)


class TensorBoardWriter(Handler):
    def __init__(self, train_dir: TrainDir) -> None:
        import tensorflow as tf

        self.tf = tf
        self.writer = tf.summary.create_file_writer(str(train_dir.tensorboard))

    def on_evaluation(self, evaluation: Evaluation) -> None:
        with self.writer.as_default(step=evaluation.step):
            for name, value in evaluation.metrics.items():
                self.tf.summary.scalar(name, value)
        self.writer.flush()

    def on_train_end(self) -> None:
        self.writer.close()


class ReportWriter(Handler):
    def __init__(self, run_dir: Path, spec: Any) -> None:
        self.run_dir, self.spec = run_dir, spec

    def on_evaluation(self, evaluation: Evaluation) -> None:
        report.write_report(self.run_dir, self.spec)  # the curves so far


class Publisher(Handler):
    """Calls `publish` after each evaluation's checkpoint and records are written (`fence` first)."""

    def __init__(self, publish: Callable[[], None], fence: Callable[[], None] = lambda: None) -> None:
        self.publish = publish
        self.fence = fence

    def on_evaluation(self, evaluation: Evaluation) -> None:
        self.fence()
        self.publish()


class ProgressLog(Handler):
    """`eval N | step s/max | examples/s | metrics | best | patience left | ETA`."""

    def __init__(self, early_stopping: EarlyStoppingSpec, max_steps: int, start_step: int) -> None:
        self.early_stopping = early_stopping
        self.max_steps = max_steps
        self.start_step = start_step
        self.started = time.time()

    def on_evaluation(self, evaluation: Evaluation) -> None:
        record = evaluation.record
        rate = (evaluation.step - self.start_step) / max(time.time() - self.started, 1e-9)
        eta = (self.max_steps - evaluation.step) / rate if rate > 0 else float("nan")
        log.info(
            "eval %d | step %d/%d | %.0f examples/s | %s | best %s=%.5g (eval %s) | patience left %d | ETA <= %.0fs",
            evaluation.eval_index,
            evaluation.step,
            self.max_steps,
            record["examples_per_sec"],
            " ".join(f"{k}={v:.4g}" for k, v in sorted(evaluation.metrics.items())),
            self.early_stopping.monitor,
            record["best"],
            record["best_eval_index"],
            max(0, self.early_stopping.patience - record["wait"]),
            eta,
        )
