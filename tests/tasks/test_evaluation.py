"""The blessing's metrics, bootstrap and parity sample, against independent implementations."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest

from contrail import evaluation


def _binary(n: int, seed: int, *, rounding: int = 2) -> tuple[dict, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    p = np.round(np.clip(0.3 * labels + 0.7 * rng.random(n), 0, 1), rounding)  # rounded: many ties
    return {"probabilities": np.stack([1 - p, p], axis=1), "class_index": (p > 0.5).astype(np.int64)}, labels


def _brute_force_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pairs = [
        1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(scores[labels == 1], scores[labels == 0])
    ]
    return float(np.mean(pairs))


def test_auc_is_the_rank_statistic_with_ties_counted_half():
    outputs, labels = _binary(300, seed=0)
    got = evaluation.score(outputs, labels, "binary")["val_auc"]
    assert got == pytest.approx(_brute_force_auc(outputs["probabilities"][:, 1], labels), abs=1e-12)


def test_binary_metrics_agree_with_keras():
    outputs, labels = _binary(5_000, seed=1, rounding=6)
    ours = evaluation.score(outputs, labels, "binary")
    p, y = outputs["probabilities"][:, 1].astype(np.float32), labels.astype(np.float32)
    assert ours["val_loss"] == pytest.approx(float(keras.losses.binary_crossentropy(y, p)), rel=1e-5)
    accuracy = keras.metrics.BinaryAccuracy()
    accuracy.update_state(y, p)
    assert ours["val_accuracy"] == pytest.approx(float(accuracy.result()), abs=1e-7)
    auc = keras.metrics.AUC(num_thresholds=20_000)
    auc.update_state(y, p)
    assert ours["val_auc"] == pytest.approx(float(auc.result()), abs=1e-3)


def test_regression_metrics_agree_with_keras():
    rng = np.random.default_rng(2)
    targets = rng.normal(20, 5, 2_000)
    value = targets + rng.normal(0, 2, 2_000)
    ours = evaluation.score({"value": value}, targets, "regression")
    for name, metric in (
        ("val_mae", keras.metrics.MeanAbsoluteError()),
        ("val_rmse", keras.metrics.RootMeanSquaredError()),
    ):
        metric.update_state(targets.astype(np.float32), value.astype(np.float32))
        assert ours[name] == pytest.approx(float(metric.result()), rel=1e-5)
    assert ours["val_loss"] == pytest.approx(ours["val_rmse"] ** 2)


@pytest.mark.parametrize("metric", ["val_loss", "val_accuracy", "val_auc"])
def test_each_resample_is_scored_as_the_rows_it_draws(metric):
    outputs, labels = _binary(400, seed=3)
    resamples = evaluation.Resamples.drawn(np.random.default_rng(4), 3, 400)
    values = evaluation.metric_function(outputs, labels, "binary", metric)(resamples)
    for rows, value in zip(resamples.draws, values, strict=True):
        resampled = {k: v[rows] for k, v in outputs.items()}
        assert value == pytest.approx(evaluation.score(resampled, labels[rows], "binary")[metric], abs=1e-12)


def test_the_bootstrap_is_seeded_and_paired():
    candidate, labels = _binary(2_000, seed=5, rounding=6)
    rng = np.random.default_rng(6)
    p = np.clip(candidate["probabilities"][:, 1] + rng.normal(0, 0.05, 2_000), 0, 1)
    production = {"probabilities": np.stack([1 - p, p], axis=1), "class_index": (p > 0.5).astype(np.int64)}

    def run(seed: int) -> evaluation.Bootstrap:
        return evaluation.paired_bootstrap(
            candidate, production, labels, "binary", "val_auc", "max", samples=300, seed=seed, confidence=0.9
        )

    assert run(7) == run(7) and run(7) != run(8)
    result = run(7)
    expected = (
        evaluation.score(candidate, labels, "binary")["val_auc"]
        - evaluation.score(production, labels, "binary")["val_auc"]
    )
    assert result.improvement == pytest.approx(expected)
    assert result.lower < result.improvement < result.upper
    # Paired: a model against itself differs by exactly 0 on every resample.
    same = evaluation.paired_bootstrap(
        candidate, candidate, labels, "binary", "val_loss", "min", samples=100, seed=0, confidence=0.95
    )
    assert (same.improvement, same.lower, same.upper) == (0.0, 0.0, 0.0)


def test_a_lower_is_better_metric_is_turned_into_an_improvement():
    targets = np.linspace(0, 10, 500)
    good, bad = {"value": targets + 0.1}, {"value": targets + 1.0}
    result = evaluation.paired_bootstrap(
        good, bad, targets, "regression", "val_mae", "min", samples=200, seed=0, confidence=0.95
    )
    assert result.improvement == pytest.approx(0.9) and result.lower == pytest.approx(0.9)


def test_the_parity_sample_is_seeded_and_stratified():
    labels = np.array([0] * 9_000 + [1] * 900 + [2] * 100)
    np.random.default_rng(0).shuffle(labels)
    sample = evaluation.stratified_sample(labels, "multiclass", 1_000, seed=3)
    assert np.array_equal(sample, evaluation.stratified_sample(labels, "multiclass", 1_000, seed=3))
    assert not np.array_equal(sample, evaluation.stratified_sample(labels, "multiclass", 1_000, seed=4))
    assert np.all(np.diff(sample) > 0)  # sorted, no repeats
    assert np.bincount(labels[sample]).tolist() == [900, 90, 10]
    assert evaluation.stratified_sample(labels[:500], "multiclass", 1_000, seed=3).tolist() == list(range(500))
    deciles = evaluation.stratified_sample(np.arange(10_000.0), "regression", 100, seed=0)
    assert np.bincount(deciles // 1_000).tolist() == [10] * 10
