from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from tests_support import run_export, saved_model_check

from contrail import artifacts, serving
from contrail.errors import InferenceError
from contrail.results import ExportResult


def _export(penguins_run, models_dir: Path, run_key: str, step_dir: Path, **extra) -> ExportResult:
    return run_export(
        penguins_run, models_dir, run_key, step_dir, dag_id="penguins", run_id=f"manual__{run_key}", **extra
    )


@pytest.fixture(scope="module")
def exported(penguins_run, tmp_path_factory):
    """Run r1's export (version 1, the first production model), once for the module. Tests only
    read it: a test that exports again or moves production works on `own_export`."""
    base = tmp_path_factory.mktemp("export")
    result = _export(penguins_run, base / "models", "r1", base / "runs" / "r1" / "export")
    return {"base": base, "models": base / "models", "result": result}


@pytest.fixture
def own_export(exported, tmp_path):
    """This test's own copy of `exported` (its models and run folders), as the module fixture left them."""
    base = Path(shutil.copytree(exported["base"], tmp_path / "export"))
    return {**exported, "base": base, "models": base / "models"}


def test_first_export_is_version_1_and_production(exported):
    result = exported["result"]
    assert (result.version, result.decision, result.promoted) == (1, "first_model", True)
    production = json.loads((exported["models"] / "production.json").read_text())
    assert production["version"] == 1 and production["blessing"]["decision"] == "first_model"
    assert result.candidate_score["val_accuracy"] >= 0.9
    assert result.parity_max_abs_diff <= 1e-6


def test_version_carries_its_record(exported, penguins_run):
    info = json.loads((exported["models"] / "1" / "contrail.json").read_text())
    assert info["run_key"] == "r1" and info["dag_id"] == "penguins"
    assert info["data_fingerprint"] == penguins_run["preprocess"].fingerprint
    assert info["selected"]["eval_index"] == penguins_run["best"].eval_index
    assert info["metrics"]["val_loss"] == penguins_run["best"].value and "val_accuracy" in info["metrics"]
    assert {"tensorflow", "keras", "pyarrow", "contrail", "python"} <= set(info["libraries"])
    assert info["parity"]["fresh_process"] is True and info["parity"]["rows"] == penguins_run["preprocess"].eval_records
    assert set(info["signatures"]) == {"serving_default", "predict"}


def test_rerun_of_the_same_run_publishes_nothing_new(own_export, penguins_run):
    step_dir = own_export["base"] / "runs" / "r1" / "export"
    (step_dir / "manifest.json").unlink()  # as if the task died after publishing
    again = _export(penguins_run, own_export["models"], "r1", step_dir)
    assert again.version == 1 and again.decision == "first_model"
    assert sorted(p.name for p in own_export["models"].iterdir() if p.name.isdigit()) == ["1"]


def test_signatures_load_and_agree_in_a_fresh_process(exported, penguins_run):
    report = saved_model_check(exported["models"] / "1", penguins_run["preprocess"].eval_files)
    assert report["signatures"] == ["predict", "serving_default"]
    assert report["inputs"] == sorted(
        ["island", "bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "sex", "year"]
    )
    assert report["rows"] == penguins_run["preprocess"].eval_records
    assert report["max_abs_diff"] <= 1e-6
    assert set(report["labels"]) <= {"Adelie", "Chinstrap", "Gentoo"}


def test_predict_signature_accepts_missing_values(exported):
    model = serving.load_model(exported["base"], models_dir=exported["models"])
    frame = model.predict(
        [
            {
                "island": "Biscoe",
                "bill_length_mm": None,
                "bill_depth_mm": float("nan"),
                "flipper_length_mm": 217.0,
                "body_mass_g": 5000.0,
                "sex": None,
                "year": 2008,
            },
            {
                "island": "Atlantis",
                "bill_length_mm": 39.0,
                "bill_depth_mm": 18.0,
                "flipper_length_mm": 190.0,
                "body_mass_g": 3700.0,
                "sex": "male",
                "year": 2009,
            },
        ]
    )
    assert len(frame) == 2 and set(frame["model_version"]) == {1}
    assert frame["predicted_class"].tolist()[0] == "Gentoo"
    assert np.allclose([sum(p) for p in frame["probabilities"]], 1.0, atol=1e-5)


def test_not_better_keeps_production_and_says_why(own_export, penguins_run):
    second = _export(penguins_run, own_export["models"], "r2", own_export["base"] / "runs" / "r2" / "export")
    assert second.version == 2
    assert (second.decision, second.promoted, second.production_version) == ("not_better", False, 1)
    assert second.production_score == second.candidate_score  # same weights, same eval rows
    assert json.loads((own_export["models"] / "production.json").read_text())["version"] == 1
    blessing = json.loads((own_export["base"] / "runs" / "r2" / "export" / "blessing.json").read_text())
    assert "does not beat production v1" in blessing["reason"]


def test_force_promote(own_export, penguins_run):
    forced = _export(
        penguins_run, own_export["models"], "r3", own_export["base"] / "runs" / "r3" / "export", force_promote=True
    )
    assert (forced.decision, forced.promoted, forced.production_version) == ("forced", True, forced.version)
    production = json.loads((own_export["models"] / "production.json").read_text())
    assert production["version"] == forced.version
    assert [h["decision"] for h in production["history"]] == ["first_model", "forced"]


def test_concurrent_exports_get_distinct_versions(own_export, penguins_run):
    results, errors = {}, []

    def go(key):
        try:
            results[key] = _export(
                penguins_run, own_export["models"], key, own_export["base"] / "runs" / key / "export"
            )
        except Exception as exc:  # broad: surface any failure in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(k,)) for k in ("c1", "c2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results["c1"].version != results["c2"].version
    assert all(r.decision == "not_better" for r in results.values())


def test_missing_version_directory_names_the_path(exported):
    with pytest.raises(InferenceError, match=r"models/99: expected a complete model version with saved_model\.pb"):
        serving.load_model(exported["base"], version=99, models_dir=exported["models"])


def test_manifest_records_parity(exported):
    manifest = artifacts.read_manifest(exported["base"] / "runs" / "r1" / "export")
    assert manifest["result"]["parity"]["tolerance"] == 1e-6
