"""Early stopping counted in evaluations, with state that survives a restart.

Keras' `EarlyStopping` resets `wait` and `best` when training starts, so a retried task
forgets how long it has waited. Here the state is a plain dict saved with every checkpoint,
and the rule is the Keras rule, applied once per evaluation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from contrail.spec import EarlyStoppingSpec, metric_mode


@dataclass
class EarlyStoppingState:
    best: float | None = None
    best_eval_index: int | None = None
    wait: int = 0
    stopped_eval_index: int | None = None


class EvalEarlyStopping:
    """`patience` is the number of consecutive evaluations without an improvement of more
    than `min_delta` on `monitor`. With `baseline`, `wait` resets only on beating it too."""

    def __init__(self, spec: EarlyStoppingSpec, state: dict | None = None):
        self.monitor = spec.monitor
        self.mode = metric_mode(spec.monitor, spec.mode)
        if self.mode not in ("min", "max"):
            raise ValueError(f"Expected `mode` to be 'min', 'max' or 'auto'. Received: mode={spec.mode!r}")
        self.patience = spec.patience
        self.min_delta = spec.min_delta
        self.baseline = spec.baseline
        self.state = EarlyStoppingState(**(state or {}))

    def _is_improvement(self, current: float, reference: float | None) -> bool:
        return reference is None or is_improvement(current, reference, self.mode, self.min_delta)

    def update(self, current: float, eval_index: int) -> bool:
        """Record one evaluation; return True when training should stop."""
        if math.isnan(current):
            return False
        state = self.state
        state.wait += 1
        if self._is_improvement(current, state.best):
            state.best, state.best_eval_index = current, eval_index
            if self.baseline is None or self._is_improvement(current, self.baseline):
                state.wait = 0
            return False
        if state.wait >= self.patience:
            state.stopped_eval_index = eval_index
            return True
        return False

    @property
    def patience_left(self) -> int:
        return max(0, self.patience - self.state.wait)

    def as_dict(self) -> dict:
        return asdict(self.state)


def is_improvement(current: float, reference: float, mode: str, min_delta: float = 0.0) -> bool:
    """The one improvement rule, for early stopping and the blessing alike: strictly better than
    `reference` by more than `min_delta`, in the direction `mode` ('min' or 'max') says."""
    if mode == "min":
        return current < reference - min_delta
    return current > reference + min_delta
