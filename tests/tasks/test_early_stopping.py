from __future__ import annotations

import pytest

from contrail.early_stopping import EvalEarlyStopping
from contrail.spec import EarlyStoppingSpec


def _stops_at(values, **settings) -> int | None:
    stopper = EvalEarlyStopping(EarlyStoppingSpec(**settings))
    for index, value in enumerate(values, start=1):
        if stopper.update(value, index):
            return index
    return None


@pytest.mark.parametrize(
    ("values", "settings", "expected"),
    [
        pytest.param([1.0, 0.9, 0.95, 0.96, 0.97], {"patience": 3}, 5, id="patience-counts-evaluations"),
        pytest.param([1.0, 0.9, 0.95, 0.85, 0.86, 0.87], {"patience": 3}, None, id="improvement-resets-wait"),
        pytest.param([1.0, 0.995, 0.99], {"patience": 2, "min_delta": 0.01}, 3, id="min-delta"),
        pytest.param(
            [0.5, 0.6, 0.6, 0.6], {"monitor": "val_accuracy", "patience": 2}, 4, id="auto-mode-max-for-accuracy"
        ),
        pytest.param([1.0, 2.0], {"patience": 0}, 2, id="patience-zero"),
        # As in Keras: an evaluation that improves but misses the baseline does not reset `wait`.
        pytest.param([0.9, 0.95, 0.96], {"patience": 2, "baseline": 0.5}, 2, id="baseline-not-beaten"),
        pytest.param([0.9, 0.95, 0.96], {"patience": 2}, 3, id="same-without-baseline"),
    ],
)
def test_stopping_rule(values, settings, expected):
    assert _stops_at(values, **settings) == expected


def test_state_round_trips_so_a_restart_continues_the_count():
    spec = EarlyStoppingSpec(patience=3)
    first = EvalEarlyStopping(spec)
    for index, value in enumerate([1.0, 0.9, 0.95, 0.96], start=1):
        assert not first.update(value, index)
    resumed = EvalEarlyStopping(spec, first.as_dict())
    assert resumed.state.wait == 2 and resumed.state.best == 0.9 and resumed.state.best_eval_index == 2
    assert resumed.update(0.97, 5) is True
