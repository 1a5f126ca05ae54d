from __future__ import annotations

import pytest

from contrail import select_best
from contrail.errors import TrainingError
from contrail.history import read_history
from contrail.spec import EarlyStoppingSpec


def _history(values, metric="val_loss"):
    return [
        {"eval_index": i, "step": 10 * i, "checkpoint": f"checkpoints/ckpt-{i:05d}", "metrics": {metric: v}}
        for i, v in enumerate(values, start=1)
    ]


@pytest.mark.parametrize(
    ("values", "spec", "expected"),
    [
        pytest.param([0.5, 0.3, 0.4], EarlyStoppingSpec(), 2, id="min-loss"),
        pytest.param([0.3, 0.5, 0.3], EarlyStoppingSpec(), 1, id="tie-takes-earliest"),
        pytest.param([0.5, 0.3, 0.4], EarlyStoppingSpec(monitor="val_loss", mode="max"), 1, id="explicit-max"),
        pytest.param([0.5, 0.3, 0.4], EarlyStoppingSpec(restore_best_weights=False), 3, id="last-without-restore"),
    ],
)
def test_choose(values, spec, expected):
    choice = select_best.choose(_history(values), spec)
    assert choice["eval_index"] == expected
    assert choice["checkpoint"] == f"checkpoints/ckpt-{expected:05d}"
    assert choice["reason"]


def test_unknown_monitor_lists_what_exists():
    with pytest.raises(TrainingError, match=r"monitor 'val_auc' is not in the history; expected one of val_loss"):
        select_best.choose(_history([0.1]), EarlyStoppingSpec(monitor="val_auc"))


def test_selected_checkpoint_is_the_best_in_the_history(penguins_run):
    history = read_history(penguins_run["train"].history)
    best = penguins_run["best"]
    assert best.value == min(r["metrics"]["val_loss"] for r in history)
    assert best.checkpoint_path.endswith(f"ckpt-{best.eval_index:05d}")
