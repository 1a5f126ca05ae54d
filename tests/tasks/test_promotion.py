"""Promotion on real runs (#16): the blessing scores the whole eval split, a confidence bound
keeps a noise-level gain out, absolute gates hold back even a first model.

A synthetic binary table (a label from two of five features, plus noise), because the check
that the old 10,000-row cap is gone needs an eval split larger than that: 24,000 rows at
`eval_fraction: 0.5`. Trainings are deterministic (`train.deterministic`), so every figure
below is the same on every run.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from tests_support import run_export, run_steps, write_spec

from contrail import artifacts, export, report
from contrail.layout import ModelsLayout


def _table(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 5))
    label = (x[:, 0] + 0.5 * x[:, 1] + 1.5 * rng.normal(size=rows) > 0).astype(np.int64)
    group = pa.array(np.array(["north", "south", "west"])[rng.integers(0, 3, rows)])
    return pa.table({**{f"x{i}": x[:, i] for i in range(5)}, "group": group, "label": label})


def _spec(directory: Path, source: Path, *, eval_fraction: float, promote_if: dict) -> Path:
    spec = {
        "name": "noisy",
        "data": {
            "source": str(source / "*.parquet"),
            "label": {"column": "label", "task": "binary"},
            "features": {**{f"x{i}": {"type": "float"} for i in range(5)}, "group": {"type": "string"}},
            "split": {"eval_fraction": eval_fraction, "seed": 3},
        },
        "model": {"build_fn": "noisy_model:build", "params": {"hidden_units": [8], "learning_rate": 0.01}},
        "train": {
            "batch_size": 128,
            "max_steps": 300,
            "eval_every_steps": 100,
            "early_stopping": None,
            "seed": 1,
            "deterministic": True,
        },
        "export": {"promote_if": promote_if},
    }
    return write_spec(directory, spec, "noisy_model")


def _pipeline(spec: Path, run: Path, **overrides) -> dict:
    return run_steps(spec, yaml.safe_load(spec.read_text())["data"]["source"], run, **overrides)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("promotion")
    (base / "large").mkdir()
    pq.write_table(_table(24_000, seed=0), base / "large" / "part-0.parquet")
    (base / "small").mkdir()
    pq.write_table(_table(1_200, seed=1), base / "small" / "part-0.parquet")
    rule = {"metric": "val_loss", "mode": "min"}
    large = _spec(base / "spec-large", base / "large", eval_fraction=0.5, promote_if={**rule, "metric": "val_auc"})
    small = _spec(base / "spec-small", base / "small", eval_fraction=0.3, promote_if=rule)
    return {
        "base": base,
        "large": _pipeline(large, base / "runs" / "large"),
        # Two models of the same data that differ by their seed only, and a barely trained one.
        "seed1": _pipeline(small, base / "runs" / "seed1"),
        "seed2": _pipeline(small, base / "runs" / "seed2", seed=2),
        "weak": _pipeline(small, base / "runs" / "weak", max_steps=2, eval_every_steps=2),
    }


def _with_rule(stages: dict, directory: Path, **promote_if) -> dict:
    """The same stages under a copy of their spec whose promote_if has `promote_if` merged in."""
    spec = yaml.safe_load(stages["spec"].read_text())
    spec["export"]["promote_if"].update(promote_if)
    return {**stages, "spec": write_spec(directory, spec, "noisy_model")}


def test_the_blessing_scores_the_whole_eval_split(runs, tmp_path):
    stages = runs["large"]
    result = run_export(stages, tmp_path / "models", "r1", tmp_path / "export")
    blessing = artifacts.read_json(Path(result.step_dir) / "blessing.json")
    eval_records = stages["preprocess"].eval_records
    assert eval_records > export.PARITY_ROWS  # the old cap would have scored 10,000 of them
    assert blessing["eval_rows"] == eval_records
    # Keras' figures for the selected checkpoint, on the same split, in training.
    selected = artifacts.read_json(Path(stages["best"].best_file))["metrics"]
    ours = result.candidate_score
    assert ours["val_loss"] == pytest.approx(selected["val_loss"], abs=1e-5)
    assert ours["val_accuracy"] == pytest.approx(selected["val_accuracy"], abs=1e-6)
    # Keras' AUC interpolates over 200 thresholds; ours is the exact rank statistic.
    assert ours["val_auc"] == pytest.approx(selected["val_auc"], abs=2e-3)
    # The parity checks keep a seeded sample, stratified by label.
    assert abs(result.parity["rows"] - export.PARITY_ROWS) <= 2


def test_a_gain_within_noise_is_not_promoted_with_a_confidence_bound(runs, tmp_path):
    # The premise: two seeds on 1,200 rows, one better than the other by a little.
    first, second = sorted((runs["seed1"], runs["seed2"]), key=lambda s: -s["best"].value)  # worse first
    assert 1e-4 < first["best"].value - second["best"].value < 0.02

    plain = tmp_path / "plain"
    run_export(first, plain, "r1", tmp_path / "plain-1")
    without = run_export(second, plain, "r2", tmp_path / "plain-2")
    assert (without.decision, without.promoted) == ("better", True)  # today's rule: any gain

    bounded = tmp_path / "bounded"
    run_export(_with_rule(first, tmp_path / "spec-a", confidence=0.95), bounded, "r1", tmp_path / "bounded-1")
    result = run_export(_with_rule(second, tmp_path / "spec-b", confidence=0.95), bounded, "r2", tmp_path / "bounded-2")
    blessing = artifacts.read_json(Path(result.step_dir) / "blessing.json")
    assert (result.decision, result.promoted) == ("not_better", False)
    assert blessing["bootstrap"]["improvement"] > 0 >= blessing["bootstrap"]["lower"]
    assert blessing["bootstrap"]["samples"] == 1000 and blessing["bootstrap"]["rows"] == blessing["eval_rows"]
    assert "95% lower bound" in blessing["reason"]
    assert ModelsLayout(bounded).production_version() == 1


def test_a_clear_gain_is_promoted_and_production_history_keeps_the_interval(runs, tmp_path):
    models = tmp_path / "models"
    run_export(_with_rule(runs["weak"], tmp_path / "spec-w", confidence=0.95), models, "r1", tmp_path / "e1")
    run_dir = tmp_path / "noisy" / "runs" / "r2"
    result = run_export(
        _with_rule(runs["seed1"], tmp_path / "spec-s", confidence=0.95), models, "r2", run_dir / "export"
    )
    assert (result.decision, result.promoted) == ("better", True)
    production = artifacts.read_json(models / "production.json")
    interval = production["history"][-1]["bootstrap"]
    assert interval["metric"] == "val_loss" and 0 < interval["lower"] <= interval["improvement"] <= interval["upper"]
    assert production["blessing"]["bootstrap"]["lower"] == interval["lower"]
    page = report.write_report(run_dir).read_text()
    shown = re.search(r'<span id="bootstrap">([^ ]+) \[([^,]+), ([^\]]+)\]</span>', page)
    assert shown and [float(x) for x in shown.groups()] == pytest.approx(
        [interval["improvement"], interval["lower"], interval["upper"]], rel=1e-5
    )


def test_a_first_model_below_a_gate_is_published_but_not_promoted(runs, tmp_path):
    models = tmp_path / "models"
    gated = _with_rule(runs["large"], tmp_path / "spec", thresholds={"val_auc": {"min": 0.99}})
    result = run_export(gated, models, "r1", tmp_path / "export")
    assert (result.decision, result.promoted, result.production_version) == ("below_threshold", False, None)
    blessing = artifacts.read_json(Path(result.step_dir) / "blessing.json")
    assert blessing["reason"].startswith(f"val_auc {result.candidate_score['val_auc']:.6g} is below the gate min 0.99")
    assert (models / "1" / "saved_model.pb").is_file()  # published, for inspection
    assert not (models / "production.json").exists()


def test_a_regressed_slice_blocks_a_candidate_better_overall(runs, tmp_path):
    first, second = sorted((runs["seed1"], runs["seed2"]), key=lambda s: -s["best"].value)  # worse first
    evaluate = {"slices": ["group"], "min_count": 30, "metrics": ["precision", "recall"]}

    def export_pair(models: Path, **promote_if) -> dict:
        specs = [
            _with_rule(s, tmp_path / f"{models.name}-spec-{i}", **promote_if) for i, s in enumerate((first, second))
        ]
        for stages in specs:
            spec = yaml.safe_load(stages["spec"].read_text())
            spec["evaluate"] = evaluate
            stages["spec"].write_text(yaml.safe_dump(spec, sort_keys=False))
        run_export(specs[0], models, "r1", tmp_path / f"{models.name}-1")
        run_dir = tmp_path / models.name / "noisy" / "runs" / "r2"
        result = run_export(specs[1], models, "r2", run_dir / "export")
        return {
            "result": result,
            "blessing": artifacts.read_json(Path(result.step_dir) / "blessing.json"),
            "report": report.write_report(run_dir).read_text(),
        }

    free = export_pair(tmp_path / "free")
    assert free["result"].decision == "better"  # better overall: val_loss
    slices = {s["name"]: s for s in free["blessing"]["slices"]}
    assert set(slices) == {"group=north", "group=south", "group=west"}
    assert sum(s["rows"] for s in slices.values()) == free["blessing"]["eval_rows"]
    for s in slices.values():  # both models scored per slice, extra metrics included
        assert {"val_loss", "val_auc", "val_precision", "val_recall"} <= set(s["candidate"]) == set(s["production"])
        assert s["regression"] == pytest.approx(s["candidate"]["val_loss"] - s["production"]["val_loss"])
    worst = max(slices.values(), key=lambda s: s["regression"])
    assert worst["regression"] > 0  # the premise: a slice where the overall winner is worse

    gated = export_pair(tmp_path / "gated", max_slice_regression=worst["regression"] / 2)
    assert (gated["result"].decision, gated["result"].promoted) == ("slice_regression", False)
    assert gated["blessing"]["reason"].startswith(f"slice {worst['name']} ({worst['rows']} rows): val_loss ")
    assert ModelsLayout(tmp_path / "gated").production_version() == 1
    # The report lists every slice with both models' figures, and every metric.
    assert '<table id="slices">' in gated["report"] and '<table id="metrics">' in gated["report"]
    for name, s in slices.items():
        assert f"<tr><td>{name}</td><td>{s['rows']:,}</td>" in gated["report"]
    assert "<td>val_precision</td>" in gated["report"]


def test_a_rerun_with_other_promotion_settings_blesses_again_without_publishing_twice(runs, tmp_path):
    models = tmp_path / "models"
    first = run_export(runs["large"], models, "r1", tmp_path / "export")
    gated = _with_rule(runs["large"], tmp_path / "spec", thresholds={"val_auc": {"min": 0.99}})
    again = run_export(gated, models, "r1", tmp_path / "export")  # same run, same folder: a rerun
    assert (first.version, again.version) == (1, 1) and ModelsLayout(models).versions() == [1]
    assert again.fingerprint != first.fingerprint  # blessed again under the new settings
