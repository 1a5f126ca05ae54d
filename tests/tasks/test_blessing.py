"""The promotion rule, pure: scores in, a decision and its reason out."""

from __future__ import annotations

import pytest

from contrail.blessing import decide, describe_change, schema_change
from contrail.evaluation import Bootstrap

RULE = {"metric": "val_accuracy", "mode": "auto", "min_improvement": 0.01}


@pytest.mark.parametrize(
    "candidate, production, version, force, expected",
    [
        pytest.param(0.5, None, None, False, ("first_model", True), id="first-model"),
        pytest.param(0.5, 0.9, 1, True, ("forced", True), id="forced-even-if-worse"),
        pytest.param(0.92, 0.9, 1, False, ("better", True), id="better-by-more-than-min-improvement"),
        pytest.param(0.905, 0.9, 1, False, ("not_better", False), id="better-by-less-than-min-improvement"),
        pytest.param(0.8, 0.9, 1, False, ("not_better", False), id="worse"),
    ],
)
def test_decisions(candidate, production, version, force, expected):
    decision = decide(
        {"val_accuracy": candidate},
        None if production is None else {"val_accuracy": production},
        RULE,
        production_version=version,
        force=force,
    )
    assert (decision.decision, decision.promoted) == expected
    assert "val_accuracy" in decision.reason


def test_the_reason_names_both_scores_and_the_rule():
    decision = decide({"val_loss": 0.3}, {"val_loss": 0.2}, {**RULE, "metric": "val_loss"}, production_version=4)
    assert decision.reason == "val_loss 0.3 does not beat production v4 0.2 (min, min_improvement=0.01)"


def test_a_production_model_that_could_not_be_scored_is_replaced_and_the_note_says_why():
    decision = decide({"val_accuracy": 0.5}, None, RULE, production_version=2, note="production v2 cannot score")
    assert (decision.decision, decision.promoted) == ("better", True)
    assert decision.reason.startswith("production v2 cannot score; promoting the candidate")


def test_a_candidate_outside_a_gate_is_not_promoted_even_as_a_first_model():
    rule = {**RULE, "thresholds": {"val_accuracy": {"min": 0.9}, "val_loss": {"max": 0.5}}}
    decision = decide({"val_accuracy": 0.85, "val_loss": 0.6}, None, rule, production_version=None)
    assert (decision.decision, decision.promoted) == ("below_threshold", False)
    assert decision.reason == ("val_accuracy 0.85 is below the gate min 0.9; val_loss 0.6 is above the gate max 0.5")
    inside = decide({"val_accuracy": 0.95, "val_loss": 0.4}, None, rule, production_version=None)
    assert inside.decision == "first_model"
    forced = decide({"val_accuracy": 0.85, "val_loss": 0.6}, None, rule, production_version=None, force=True)
    assert forced.decision == "forced"


def _bootstrap(improvement: float, lower: float) -> Bootstrap:
    return Bootstrap("val_accuracy", 1000, 0, 0.95, improvement, lower, improvement + 0.01, 500)


@pytest.mark.parametrize(
    "lower, expected",
    [
        pytest.param(0.015, ("better", True), id="lower-bound-beats-min-improvement"),
        pytest.param(0.005, ("not_better", False), id="point-beats-it-but-lower-bound-does-not"),
    ],
)
def test_with_a_confidence_the_lower_bound_decides(lower, expected):
    rule = {**RULE, "confidence": 0.95}
    decision = decide(
        {"val_accuracy": 0.93}, {"val_accuracy": 0.9}, rule, production_version=1, bootstrap=_bootstrap(0.03, lower)
    )
    assert (decision.decision, decision.promoted) == expected
    assert "95% lower bound" in decision.reason and "1000 paired resamples of 500 rows" in decision.reason


def test_other_label_classes_are_a_schema_change_that_prevents_comparing():
    old = {"features": [{"name": "x", "type": "float"}], "label": {"classes": ["a", "b", "c"]}}
    new = {"features": [{"name": "x", "type": "float"}], "label": {"classes": ["a", "b", "c", "d"]}}
    change = schema_change(old, new)
    assert change == {
        "added": [],
        "removed": [],
        "retyped": [],
        "label_classes": [["a", "b", "c"], ["a", "b", "c", "d"]],
    }
    assert describe_change(change) == "label classes ['a', 'b', 'c'] -> ['a', 'b', 'c', 'd']"
    assert schema_change(old, old) is None
