"""Export and promotion on a regression dataset (auto-mpg cars from `vega_datasets`):
a changed schema, damaged versions, failed checks and concurrent promotions."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tests_support import run_export, run_steps, saved_model_check, spec_variant

from contrail import export, inference
from contrail.demo import write_cars
from contrail.errors import ExportError
from contrail.results import ExportResult


def _pipeline(spec: Path, data: Path, run: Path, **train_overrides) -> dict:
    return run_steps(spec, str(data / "cars" / "*.parquet"), run, **train_overrides)


@pytest.fixture(scope="module")
def cars(tmp_path_factory):
    base = tmp_path_factory.mktemp("cars")
    write_cars(base / "data")
    spec = spec_variant(base / "spec", base="cars", data_dir=base / "data")
    good = _pipeline(spec, base / "data", base / "runs" / "good")
    weak = _pipeline(spec, base / "data", base / "runs" / "weak", max_steps=50, eval_every_steps=50)
    return {"base": base, "data": base / "data", "good": good, "weak": weak}


def test_regression_export_scores_and_serves(cars, tmp_path):
    models = tmp_path / "models"
    result = run_export(cars["good"], models, "r1", tmp_path / "export")
    assert (result.version, result.decision) == (1, "first_model")
    assert result.candidate_score["val_rmse"] < 4.5  # miles per gallon; the label's std is about 7.8
    report = saved_model_check(models / "1", cars["good"]["preprocess"].eval_files)
    assert report["signatures"] == ["predict", "serving_default"] and report["max_abs_diff"] <= 1e-6
    scored = inference.run(
        inference.InferenceArgs(
            str(cars["good"]["spec"]),
            str(cars["data"] / "cars_to_score" / "*.parquet"),
            str(tmp_path / "inference"),
            str(models),
        )
    )
    table = pq.read_table(scored.predictions[0])
    assert table.column_names == ["car_id", "prediction", "model_version"] and table.num_rows == 398


def test_a_failed_check_publishes_nothing(cars, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ExportError("reloaded in a fresh process: output 'value' differs by 0.5")

    monkeypatch.setattr(export, "check_fresh_process", broken)
    with pytest.raises(ExportError, match="differs by 0.5"):
        run_export(cars["good"], tmp_path / "models", "r1", tmp_path / "export")
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [], "no version, no staging left behind"
    assert not (tmp_path / "export").exists()


def test_only_one_of_two_concurrent_better_candidates_wins(cars, tmp_path):
    models = tmp_path / "models"
    weak = run_export(cars["weak"], models, "weak", tmp_path / "weak")
    assert weak.decision == "first_model"
    results: dict[str, ExportResult] = {}
    threads = [
        threading.Thread(target=lambda k=k: results.setdefault(k, run_export(cars["good"], models, k, tmp_path / k)))
        for k in ("c1", "c2")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    decisions = sorted(r.decision for r in results.values())
    assert decisions == ["better", "not_better"], decisions
    winner = next(r for r in results.values() if r.decision == "better")
    production = json.loads((models / "production.json").read_text())
    assert production["version"] == winner.version
    assert [h["decision"] for h in production["history"]] == ["first_model", "better"]


def test_schema_change_is_compared_on_the_new_eval_data(cars, tmp_path):
    models = tmp_path / "models"
    narrow_spec = spec_variant(
        tmp_path / "narrow", {"data": {"features": {"acceleration": None}}}, base="cars", data_dir=cars["data"]
    )
    narrow = _pipeline(narrow_spec, cars["data"], tmp_path / "runs" / "narrow", max_steps=100, eval_every_steps=50)
    assert run_export(narrow, models, "narrow", tmp_path / "e1").decision == "first_model"
    wide = run_export(cars["good"], models, "wide", tmp_path / "e2")
    blessing = json.loads((tmp_path / "e2" / "blessing.json").read_text())
    assert blessing["schema_change"] == {"added": ["acceleration"], "removed": [], "retyped": []}
    assert blessing["production_score"] is not None, "the old model scored the new eval rows"
    assert "the schema changed (added acceleration)" in blessing["reason"]
    assert blessing["eval_rows"] == cars["good"]["preprocess"].eval_records
    assert wide.decision in ("better", "not_better")


@pytest.mark.parametrize("damage", ["delete-saved-model", "garbage-saved-model", "garbage-production-json"])
def test_damaged_production_is_named_and_nothing_is_promoted(cars, tmp_path, damage):
    models = tmp_path / "models"
    run_export(cars["weak"], models, "weak", tmp_path / "weak")
    before = (models / "production.json").read_bytes()
    if damage == "delete-saved-model":
        (models / "1" / "saved_model.pb").unlink()
        pattern = r"models/1: the production model named by .*production\.json cannot be loaded.*nothing was promoted"
    elif damage == "garbage-saved-model":
        (models / "1" / "saved_model.pb").write_bytes(b"not a protobuf")
        pattern = r"models/1: the production model named by .*cannot be loaded"
    else:
        (models / "production.json").write_text("{not json")
        before = (models / "production.json").read_bytes()
        pattern = r"production\.json: expected a production record with an integer 'version', found an unreadable file"
    with pytest.raises(ExportError, match=pattern):
        run_export(cars["good"], models, "good", tmp_path / "good")
    assert (models / "production.json").read_bytes() == before
