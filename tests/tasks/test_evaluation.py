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


def _average_precision_by_loop(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision, written as its definition: for each distinct threshold, from the
    highest, the precision of everything at or above it times the recall it adds."""
    total, seen_tp, ap = labels.sum(), 0, 0.0
    for threshold in sorted(set(scores.tolist()), reverse=True):
        chosen = scores >= threshold
        tp = int(np.sum(chosen & (labels == 1)))
        ap += (tp - seen_tp) / total * (tp / int(np.sum(chosen)))
        seen_tp = tp
    return ap


def test_added_binary_metrics_agree_with_independent_implementations_and_keras():
    outputs, labels = _binary(3_000, seed=8, rounding=3)
    ours = evaluation.score(
        outputs, labels, "binary", ["precision", "recall", "pr_auc", "log_loss", "calibration_error"]
    )
    p, y = outputs["probabilities"][:, 1], labels
    predicted = p > 0.5
    assert ours["val_precision"] == pytest.approx(np.sum(predicted & (y == 1)) / np.sum(predicted))
    assert ours["val_recall"] == pytest.approx(np.sum(predicted & (y == 1)) / np.sum(y == 1))
    assert ours["val_pr_auc"] == pytest.approx(_average_precision_by_loop(p, y), abs=1e-12)
    assert ours["val_log_loss"] == pytest.approx(ours["val_loss"])
    bins = np.minimum((p * 10).astype(int), 9)
    ece = sum(abs(y[bins == b].sum() - p[bins == b].sum()) for b in range(10)) / len(p)
    assert ours["val_calibration_error"] == pytest.approx(ece)
    for name, metric in (
        ("val_precision", keras.metrics.Precision()),
        ("val_recall", keras.metrics.Recall()),
        ("val_pr_auc", keras.metrics.AUC(curve="PR", num_thresholds=2_000)),
    ):
        metric.update_state(y.astype(np.float32), p.astype(np.float32))
        assert ours[name] == pytest.approx(float(metric.result()), abs=5e-3 if name == "val_pr_auc" else 1e-6)


def test_per_class_recall_and_mape():
    rng = np.random.default_rng(9)
    targets = rng.integers(0, 3, 600)
    probabilities = rng.dirichlet([1, 1, 1], 600)
    probabilities[np.arange(300), targets[:300]] += 1  # right on the first half
    outputs = {"probabilities": probabilities, "class_index": probabilities.argmax(axis=1)}
    ours = evaluation.score(outputs, targets, "multiclass", ["per_class_recall"], ["Adelie", "Chinstrap", "Gentoo"])
    for i, name in enumerate(["Adelie", "Chinstrap", "Gentoo"]):
        mask = targets == i
        assert ours[f"val_recall_{name}"] == pytest.approx(np.mean(outputs["class_index"][mask] == i))
        recall = keras.metrics.Recall(class_id=i)
        recall.update_state(
            keras.utils.to_categorical(targets, 3), keras.utils.to_categorical(outputs["class_index"], 3)
        )
        assert ours[f"val_recall_{name}"] == pytest.approx(float(recall.result()), abs=1e-6)
    y = rng.uniform(5, 50, 800)
    value = y * rng.uniform(0.8, 1.2, 800)
    mape = keras.metrics.MeanAbsolutePercentageError()
    mape.update_state(y.astype(np.float32), value.astype(np.float32))
    got = evaluation.score({"value": value}, y, "regression", ["mape"])["val_mape"]
    assert got == pytest.approx(np.mean(np.abs(y - value) / y) * 100) and got == pytest.approx(
        float(mape.result()), rel=1e-5
    )


def test_slices_group_rows_by_value_and_by_cross():
    outputs, labels = _binary(1_000, seed=10)
    rng = np.random.default_rng(11)
    columns = {
        "island": np.array([b"Biscoe", b"Dream", b""])[rng.choice(3, 1_000, p=[0.6, 0.38, 0.02])],
        "year": rng.integers(2007, 2010, 1_000),
    }
    worse = {"probabilities": outputs["probabilities"][:, ::-1], "class_index": 1 - outputs["class_index"]}
    slices = evaluation.slice_scores(
        outputs,
        worse,
        labels,
        "binary",
        columns,
        [("island",), ("island", "year")],
        metric="val_auc",
        mode="max",
        min_count=30,
    )
    by_name = {s["name"]: s for s in slices}
    assert [s["name"] for s in slices[:3]] == ["island=Biscoe", "island=Dream", "island=(missing)"]
    assert by_name["island=(missing)"]["candidate"] is None and by_name["island=(missing)"]["rows"] < 30
    assert sum(s["rows"] for s in slices if len(s["slice"]) == 2) == 1_000
    mask = (columns["island"] == b"Dream") & (columns["year"] == 2008)
    cell = by_name["island=Dream, year=2008"]
    assert cell["rows"] == mask.sum()
    expected = evaluation.score({k: v[mask] for k, v in outputs.items()}, labels[mask], "binary")
    assert cell["candidate"] == expected
    # Production (the reversed model) is worse on every slice, so the candidate regresses on none.
    assert cell["regression"] == pytest.approx(cell["production"]["val_auc"] - cell["candidate"]["val_auc"])
    assert all(s["regression"] < 0 for s in slices if s["regression"] is not None)
