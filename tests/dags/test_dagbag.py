from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests_support import ROOT, airflow_env, spec_variant

PARSER = Path(__file__).with_name("parse_dags.py")
EXPECTED_GRAPH = {
    "preprocess": ["export", "train"],  # export also reads preprocess's XCom (the eval records)
    "train": ["export", "select_best"],
    "select_best": ["export"],
    "export": ["batch_inference"],
    "batch_inference": [],
}


def parse(dags_folder: Path, home: Path) -> dict:
    out = subprocess.run(
        [sys.executable, str(PARSER), str(dags_folder)],
        env=airflow_env(home, AIRFLOW__CORE__DAGS_FOLDER=str(dags_folder)),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_spec_becomes_a_dag_without_tensorflow(tmp_path):
    report = parse(ROOT / "dags", tmp_path)
    assert report["import_errors"] == {}
    specs = sorted(p.stem for p in (ROOT / "dags" / "pipelines").glob("*.yaml"))
    assert sorted(report["dags"]) == specs
    for dag in report["dags"].values():
        assert dag["tasks"] == EXPECTED_GRAPH
        assert "contrail" in dag["tags"]
        # One export of a pipeline at a time (an object-store root has no lock); the rest run free.
        assert dag["max_active_tis_per_dag"] == {t: (1 if t == "export" else None) for t in EXPECTED_GRAPH}
    assert not report["tensorflow_imported"] and not report["keras_imported"] and not report["pyarrow_imported"]


def test_trigger_form_params_have_types_bounds_and_defaults(tmp_path):
    params = parse(ROOT / "dags", tmp_path)["dags"]["penguins"]["params"]
    assert {k: params["max_steps"][k] for k in ("type", "minimum", "maximum")} == {
        "type": "integer",
        "minimum": 1,
        "maximum": 100_000_000,
    }
    assert params["learning_rate"]["type"] == "number" and params["learning_rate"]["exclusiveMinimum"] == 0
    assert params["hidden_units"]["type"] == "array" and params["hidden_units"]["items"] == {"type": "integer"}
    assert params["force_promote"]["type"] == "boolean"
    assert params["data_source"]["type"] == ["null", "string"]
    assert all(p.get("description") for p in params.values())


def test_broken_spec_breaks_only_itself(tmp_path):
    dags = tmp_path / "dags"
    shutil.copytree(ROOT / "dags", dags, ignore=shutil.ignore_patterns("__pycache__"))
    spec_variant(dags / "pipelines", {"train": {"eval_every_steps": "often"}}, name="broken")
    report = parse(dags, tmp_path)
    assert "penguins" in report["dags"] and "broken" not in report["dags"]
    (message,) = report["import_errors"].values()
    assert "broken.yaml" in message
    assert "field 'train.eval_every_steps': expected a valid integer" in message
    assert "found 'often'" in message


def test_a_missing_build_fn_module_breaks_only_its_own_dag(tmp_path):
    dags = tmp_path / "dags"
    shutil.copytree(ROOT / "dags", dags, ignore=shutil.ignore_patterns("__pycache__"))
    spec_variant(dags / "pipelines", {"model": {"build_fn": "no_such_module:build"}}, name="no_model")
    report = parse(dags, tmp_path)
    assert sorted(report["dags"]) == ["cars", "flights", "penguins", "penguins_daily"]
    (message,) = report["import_errors"].values()
    assert "no_model.yaml" in message and "field 'model.build_fn'" in message and "no_such_module" in message


def test_asset_schedules_on_promotion_and_on_upstream_assets(tmp_path):
    dags = tmp_path / "dags"
    shutil.copytree(ROOT / "dags", dags, ignore=shutil.ignore_patterns("__pycache__"))
    spec_variant(dags / "pipelines", {"inference": {"on_promotion": True}})
    # Retrain when the ETL says it has new data: any of two assets, or that or a cron.
    spec_variant(dags / "pipelines", {"schedule": {"assets": ["s3://events/a", "s3://events/b"]}}, name="on_events")
    spec_variant(
        dags / "pipelines", {"schedule": {"assets": ["s3://events/a"], "cron": "0 3 * * *"}}, name="on_events_or_cron"
    )
    report = parse(dags, tmp_path)
    assert report["import_errors"] == {}
    scoring = report["dags"]["penguins_inference"]
    assert scoring["tasks"] == {"batch_inference": []}
    assert scoring["schedule"] == "AssetTriggeredTimetable"
    assert report["dags"]["penguins"]["tasks"] == EXPECTED_GRAPH
    assert report["dags"]["on_events"]["schedule"] == "AssetTriggeredTimetable"
    assert report["dags"]["on_events_or_cron"]["schedule"] == "AssetOrTimeSchedule"


def test_twenty_specs_parse_without_tensorflow(tmp_path):
    dags = tmp_path / "dags"
    shutil.copytree(ROOT / "dags", dags, ignore=shutil.ignore_patterns("__pycache__"))
    shipped = len(list((dags / "pipelines").glob("*.yaml")))
    for i in range(20 - shipped):
        spec_variant(dags / "pipelines", name=f"copy_{i:02d}")
    report = parse(dags, tmp_path)
    assert report["import_errors"] == {} and len(report["dags"]) == 20
    assert not report["tensorflow_imported"] and not report["keras_imported"] and not report["pyarrow_imported"]


def test_data_parallelism_fans_preprocess_out_and_reduces(tmp_path):
    dags = tmp_path / "dags"
    shutil.copytree(ROOT / "dags", dags, ignore=shutil.ignore_patterns("__pycache__"))
    spec_variant(dags / "pipelines", {"data": {"parallelism": 4}})
    report = parse(dags, tmp_path)
    assert report["import_errors"] == {}
    tasks = report["dags"]["penguins"]["tasks"]
    assert tasks["preprocess_plan"] == ["preprocess_part"]
    assert tasks["preprocess_part"] == ["preprocess"]
    assert {k: v for k, v in tasks.items() if not k.startswith("preprocess_")} == EXPECTED_GRAPH


def test_a_search_maps_train_over_the_trials_and_the_form_caps_them(tmp_path):
    """`tune:` gives preprocess >> tune_plan >> train (mapped, at most `parallelism` trials of a
    run at once) >> select_best; the trigger form takes max_trials. Without it, nothing changes."""
    dags = tmp_path / "dags"
    shutil.copytree(ROOT / "dags", dags, ignore=shutil.ignore_patterns("__pycache__"))
    search = {
        "space": {"learning_rate": {"float": [0.001, 0.03], "scale": "log"}},
        "objective": "val_accuracy",
        "max_trials": 6,
        "parallelism": 3,
    }
    spec_variant(dags / "pipelines", {"tune": search}, name="searched")
    report = parse(dags, tmp_path)
    assert report["import_errors"] == {}
    dag = report["dags"]["searched"]
    assert dag["tasks"] == {
        **EXPECTED_GRAPH,
        "preprocess": ["export", "train", "tune_plan"],
        "tune_plan": ["select_best", "train"],
    }
    assert dag["mapped"] == ["train"] and dag["max_active_tis_per_dagrun"]["train"] == 3
    assert {k: dag["params"]["max_trials"][k] for k in ("type", "minimum", "maximum")} == {
        "type": "integer",
        "minimum": 1,
        "maximum": 1000,
    }
    plain = report["dags"]["penguins"]
    assert plain["tasks"] == EXPECTED_GRAPH and plain["mapped"] == [] and "max_trials" not in plain["params"]
