"""Drift (preprocess) and skew (batch inference) against the production model's training data
(#16 item 6): the distances on their own, then through real steps on penguins with one
feature shifted."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from tests_support import run_export, spec_variant

from contrail import artifacts, drift, inference, preprocess, report
from contrail.errors import DriftError


def test_histograms_are_mergeable_exactly():
    values = np.random.default_rng(0).normal(50, 20, 10_000)
    parts = [drift.histogram(values[:3_000]), drift.histogram(values[3_000:7_000]), drift.histogram(values[7_000:])]
    assert drift.merge_histograms(parts) == drift.histogram(values)
    assert sum(drift.histogram(np.array([1.0, np.nan, np.inf, -2.0])).values()) == 2  # finite values only


def test_js_divergence_separates_a_shift_from_sampling_noise():
    rng = np.random.default_rng(1)
    base = drift.histogram(rng.normal(4_000, 800, 20_000))
    same = drift.js_divergence(drift.histogram(rng.normal(4_000, 800, 5_000)), base)
    shifted = drift.js_divergence(drift.histogram(rng.normal(4_000 * 1.5, 800, 5_000)), base)
    disjoint = drift.js_divergence(drift.histogram(rng.normal(-1e6, 1, 5_000)), base)
    assert drift.js_divergence(base, base) == 0.0
    assert same < 0.02 < 0.3 < shifted
    assert disjoint == pytest.approx(1.0)
    assert drift.js_divergence({}, base) is None


def test_linf_is_the_largest_frequency_difference():
    assert drift.linf_distance({"a": 50, "b": 50}, 100, {"a": 80, "b": 10, "c": 10}, 100) == pytest.approx(0.4)
    assert drift.linf_distance({"a": 5}, 5, {"a": 9}, 9) == 0.0


def test_compare_warns_or_fails_as_configured(caplog):
    current = {
        "x": {"histogram": drift.histogram(np.arange(100.0) + 1_000)},
        "s": {"value_counts": {"a": 1}, "value_total": 1},
    }
    baseline = {
        "x": {"histogram": drift.histogram(np.arange(100.0))},
        "s": {"value_counts": [["a", 3]], "value_total": 3},
    }
    rule = {"threshold": 0.2, "per_feature": {}, "on_violation": "warn"}
    with caplog.at_level(logging.WARNING, logger="contrail.drift"):
        record = drift.compare(current, baseline, rule, what="drift", against="production v1", where="data/*.parquet")
    assert record["features"]["x"]["violated"] and not record["features"]["s"]["violated"]
    assert record["features"]["s"] == {"measure": "linf", "distance": 0.0, "threshold": 0.2, "violated": False}
    assert "feature 'x': Jensen-Shannon divergence 1.0000 from production v1, above the threshold 0.2" in caplog.text
    lenient = drift.compare(
        current, baseline, {**rule, "per_feature": {"x": 1.0}}, what="drift", against="v1", where="d"
    )
    assert lenient["violations"] == []
    with pytest.raises(
        DriftError, match=r"data/\*\.parquet: drift: feature 'x': Jensen-Shannon divergence 1\.0000 .*threshold 0\.2"
    ):
        drift.compare(
            current, baseline, {**rule, "on_violation": "fail"}, what="drift", against="v1", where="data/*.parquet"
        )
    with pytest.raises(DriftError, match=r"above the threshold 0\.5 \(data\.drift\.per_feature\.x\)$"):
        drift.compare(
            current,
            baseline,
            {**rule, "per_feature": {"x": 0.5}, "on_violation": "fail"},
            what="drift",
            against="v1",
            where="d",
        )
    unchecked = drift.compare(current, baseline, None, what="drift", against="v1", where="d")
    assert unchecked["violations"] == [] and unchecked["features"]["x"]["threshold"] is None


# -- through the steps --------------------------------------------------------------------------
def _shifted(source: Path, target: Path, factor: float) -> Path:
    """The penguins files of `source` with body_mass_g multiplied by `factor`."""
    target.mkdir(parents=True)
    for path in sorted(source.glob("*.parquet")):
        table = pq.read_table(path)
        index = table.column_names.index("body_mass_g")
        table = table.set_column(index, "body_mass_g", pc.multiply(table.column("body_mass_g"), pa.scalar(factor)))
        pq.write_table(table, target / path.name)
    return target


@pytest.fixture(scope="module")
def production(penguins_run, tmp_path_factory) -> Path:
    """A models folder whose production model is penguins_run's, with its training statistics."""
    models = tmp_path_factory.mktemp("drift") / "models"
    run_export(penguins_run, models, "r1", models.parent / "export")
    return models


def _preprocess(spec: Path, source: Path, step_dir: Path, models: Path):
    return preprocess.run(
        preprocess.PreprocessArgs(str(spec), str(source / "*.parquet"), str(step_dir), models_dir=str(models))
    )


def test_a_version_keeps_its_training_statistics(production, penguins_run):
    kept = artifacts.read_json(production / "1" / "stats.json")
    assert kept == artifacts.read_json(Path(penguins_run["preprocess"].stats))
    assert kept["features"]["body_mass_g"]["histogram"] and kept["features"]["island"]["value_counts"]


def test_a_shifted_feature_warns_and_the_record_names_it(production, penguins_dir, tmp_path):
    spec = spec_variant(tmp_path / "spec", {"data": {"drift": {"threshold": 0.1}}}, data_dir=penguins_dir)
    same = _preprocess(spec, penguins_dir / "penguins", tmp_path / "same", production)
    unchanged = artifacts.read_json(Path(same.step_dir) / "drift.json")
    assert unchanged["violations"] == [] and unchanged["baseline"] == "production model v1's training data"
    assert all(f["distance"] == 0.0 for f in unchanged["features"].values())

    run_dir = tmp_path / "penguins" / "runs" / "r2"
    heavy = _shifted(penguins_dir / "penguins", tmp_path / "heavy", 1.5)
    moved = _preprocess(spec, heavy, run_dir / "preprocess", production)
    record = artifacts.read_json(Path(moved.step_dir) / "drift.json")
    page = report.write_report(run_dir).read_text()
    assert '<table id="drift">' in page and '<tr class="violated"><td>body_mass_g</td><td>js</td>' in page
    assert [n for n, f in record["features"].items() if f["violated"]] == ["body_mass_g"]
    assert record["features"]["body_mass_g"]["measure"] == "js" and record["features"]["body_mass_g"]["distance"] > 0.3
    assert record["features"]["island"] == {"measure": "linf", "distance": 0.0, "threshold": 0.1, "violated": False}


def test_a_shifted_feature_fails_preprocess_when_configured(production, penguins_dir, tmp_path):
    spec = spec_variant(
        tmp_path / "spec", {"data": {"drift": {"threshold": 0.1, "on_violation": "fail"}}}, data_dir=penguins_dir
    )
    heavy = _shifted(penguins_dir / "penguins", tmp_path / "heavy", 1.5)
    with pytest.raises(
        DriftError,
        match=r"^\S+/heavy/\*\.parquet: drift: feature 'body_mass_g': Jensen-Shannon divergence 0\.\d+ "
        r"from production model v1's training data, above the threshold 0\.1 \(data\.drift\.threshold\)$",
    ) as info:
        _preprocess(spec, heavy, tmp_path / "pre", production)
    assert info.value.field == "data.drift" and not info.value.retryable
    assert not (tmp_path / "pre" / "manifest.json").exists()  # nothing published
    # A per-feature threshold lets the feature move as far as the user says it may.
    lenient = spec_variant(
        tmp_path / "lenient",
        {"data": {"drift": {"threshold": 0.1, "per_feature": {"body_mass_g": 0.9}, "on_violation": "fail"}}},
        data_dir=penguins_dir,
    )
    assert _preprocess(lenient, heavy, tmp_path / "pre2", production).train_records > 0


def test_skew_of_the_scored_data_warns_or_fails(production, penguins_run, penguins_dir, tmp_path):
    heavy = _shifted(penguins_dir / "penguins_to_score", tmp_path / "heavy", 1.5)

    def score(on_violation: str, source: Path, name: str):
        spec = spec_variant(
            tmp_path / f"spec-{name}",
            {"data": {"drift": {"threshold": 0.1, "on_violation": on_violation}}},
            data_dir=penguins_dir,
        )
        return inference.run(
            inference.InferenceArgs(str(spec), str(source / "*.parquet"), str(tmp_path / name), str(production))
        )

    plain = artifacts.read_json(Path(score("fail", penguins_dir / "penguins_to_score", "plain").step_dir) / "skew.json")
    assert plain["violations"] == [] and plain["baseline"] == "model v1's training data"
    warned = artifacts.read_json(Path(score("warn", heavy, "warned").step_dir) / "skew.json")
    assert [n for n, f in warned["features"].items() if f["violated"]] == ["body_mass_g"]
    with pytest.raises(DriftError, match=r"skew: feature 'body_mass_g': Jensen-Shannon divergence"):
        score("fail", heavy, "failed")
    assert not (tmp_path / "failed" / "manifest.json").exists()


def test_a_content_cache_hit_measures_drift_again(production, penguins_dir, tmp_path):
    spec = spec_variant(tmp_path / "spec", {"data": {"drift": {"threshold": 0.1}}}, data_dir=penguins_dir)
    heavy = _shifted(penguins_dir / "penguins", tmp_path / "heavy", 1.5)

    def run(step: str, models: Path):
        return preprocess.run(
            preprocess.PreprocessArgs(
                str(spec),
                str(heavy / "*.parquet"),
                str(tmp_path / step),
                cache_dir=str(tmp_path / "cache"),
                models_dir=str(models),
            )
        )

    first = run("first", tmp_path / "no-models-yet")
    assert artifacts.read_json(Path(first.step_dir) / "drift.json")["baseline"] is None
    second = run("second", production)
    assert second.cache_hit
    record = artifacts.read_json(Path(second.step_dir) / "drift.json")
    assert record["features"]["body_mass_g"]["violated"]
    assert (
        artifacts.read_json(Path(first.step_dir) / "drift.json")["baseline"] is None
    )  # the link was not written through
