from __future__ import annotations

import json

import pytest
from tests_support import task_context

from contrail import artifacts
from contrail.errors import ContrailError, SpecError
from contrail.layout import PipelineLayout
from contrail_airflow.assets import tfrecords_alias, tfrecords_asset
from contrail_airflow.operators import PreprocessOperator, TrainOperator
from contrail_airflow.params import check_conf_keys, resolve_source


def test_unknown_conf_key_is_rejected_with_the_allowed_keys():
    with pytest.raises(
        SpecError, match=r"unknown conf key 'max_step'; expected only batch_size, data_source, force_promote, max_steps"
    ):
        check_conf_keys(task_context(conf={"max_step": 10}))


def test_declared_conf_keys_pass():
    check_conf_keys(task_context(conf={"max_steps": 10, "force_promote": True}))


@pytest.mark.parametrize(
    "override",
    [
        pytest.param("../../etc/*.parquet", id="parent-escape"),
        pytest.param("s3://bucket/data/*.parquet", id="other-scheme"),
        pytest.param("/tmp/elsewhere/*.parquet", id="absolute-outside"),
    ],
)
def test_data_source_override_must_stay_under_the_data_folder(override, tmp_path, monkeypatch):
    monkeypatch.setenv("CONTRAIL_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(SpecError, match=r"param 'data_source': expected a path under .*/data, found"):
        resolve_source("spec-source", override)


def test_data_source_override_under_the_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTRAIL_DATA_DIR", str(tmp_path / "data"))
    resolved = resolve_source("spec-source", "penguins/2026-*.parquet")
    assert resolved == str(tmp_path / "data" / "penguins" / "2026-*.parquet")
    assert resolve_source("spec-source", None) == "spec-source"


def test_preprocess_operator_writes_artifacts_and_returns_paths_only(write_spec, penguins_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CONTRAIL_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    spec = write_spec()
    operator = PreprocessOperator(
        task_id="preprocess",
        source=str(penguins_dir / "penguins" / "*.parquet"),
        spec_path=str(spec),
        pipeline="penguins",
    )
    context = task_context()
    result = operator.execute(context)
    json.dumps(result)  # XCom is JSON: small, and paths only
    assert len(json.dumps(result)) < 4096
    run = PipelineLayout(tmp_path / "artifacts", "penguins").run(context["run_id"])
    assert result["step_dir"] == str(run.preprocess.path)
    assert artifacts.read_manifest(run.preprocess.path)["result"] == result
    (event,) = context["outlet_events"][tfrecords_alias("penguins")].asset_alias_events
    assert event.dest_asset_key.uri == tfrecords_asset("penguins").uri
    assert event.extra == {
        "run_id": context["run_id"],
        "step_dir": result["step_dir"],
        "fingerprint": result["fingerprint"],
    }
    again = operator.execute(context)
    assert again["reused"] is True
    # The rerun reused the output: nothing new to announce.
    assert len(context["outlet_events"][tfrecords_alias("penguins")].asset_alias_events) == 1
    assert [e["reused"] for e in artifacts.read_events(run.events)] == [False, True]


def test_unresolved_upstream_result_is_a_clear_error(write_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("CONTRAIL_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    operator = TrainOperator(
        task_id="train", preprocess="{{ not rendered }}", spec_path=str(write_spec()), pipeline="penguins"
    )
    with pytest.raises(ContrailError, match=r"upstream 'preprocess' result: expected a dict from XCom, found str"):
        operator.execute(task_context())


def test_bad_data_fails_without_a_retry_and_a_storage_error_keeps_its_retries(write_spec, tmp_path, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from contrail.errors import EmptyInputError, StorageError

    monkeypatch.setenv("CONTRAIL_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    operator = PreprocessOperator(
        task_id="preprocess", source=str(tmp_path / "nothing" / "*.parquet"), spec_path=str(write_spec()), pipeline="p"
    )
    with pytest.raises(EmptyInputError, match=r"data\.source: expected at least one file") as caught:
        operator.execute(task_context())
    assert isinstance(caught.value, AirflowFailException)  # Airflow fails the task at once

    monkeypatch.setenv("CONTRAIL_ARTIFACT_ROOT", "s3://")
    monkeypatch.setenv("CONTRAIL_STORAGE_OPTIONS", "{broken")
    with pytest.raises(StorageError) as caught:
        operator.execute(task_context())
    assert not isinstance(caught.value, AirflowFailException)  # a transient kind: retried as usual
