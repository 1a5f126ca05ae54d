"""Step results: typed, JSON on the way to XCom, strict on the way back."""

from __future__ import annotations

import json

import pytest

from contrail.errors import ArtifactError
from contrail.results import ExportResult, PreprocessResult, SelectBestResult

PRE = {
    "step_dir": "/a/runs/r/preprocess",
    "fingerprint": "f" * 64,
    "schema": "/a/runs/r/preprocess/schema.json",
    "stats": "/a/runs/r/preprocess/stats.json",
    "train_files": ["/a/runs/r/preprocess/train-00000-of-00001.tfrecord.gz"],
    "eval_files": ["/a/runs/r/preprocess/eval-00000-of-00001.tfrecord.gz"],
    "train_records": 266,
    "eval_records": 78,
    "input_rows": 344,
    "compression": "gzip",
}


def test_round_trip_through_json_is_the_identity():
    result = PreprocessResult.from_xcom(PRE)
    assert result.train_records == 266 and result.reused is False and result.cache_hit is False
    again = PreprocessResult.from_xcom(json.loads(json.dumps(result.to_xcom())))
    assert again == result


def test_replace_keeps_the_type_and_the_other_fields():
    result = PreprocessResult.from_xcom(PRE).replace(reused=True)
    assert isinstance(result, PreprocessResult) and result.reused and result.input_rows == 344


@pytest.mark.parametrize(
    "value, pattern",
    [
        pytest.param(
            "{{ not rendered }}", r"upstream 'preprocess' result: expected a dict from XCom, found str", id="str"
        ),
        pytest.param(
            {k: v for k, v in PRE.items() if k != "schema"}, r"missing \['schema'\], unknown none", id="missing-key"
        ),
        pytest.param({**PRE, "shcema": "x"}, r"missing none, unknown \['shcema'\]", id="unknown-key"),
    ],
)
def test_a_malformed_result_names_its_source_and_what_is_wrong(value, pattern):
    with pytest.raises(ArtifactError, match=pattern):
        PreprocessResult.from_xcom(value, source="upstream 'preprocess' result")


def test_names_that_meant_two_things_are_two_names():
    best = SelectBestResult(
        step_dir="/r/select_best",
        fingerprint="f",
        best_file="/r/select_best/best.json",
        checkpoint_path="/r/train/checkpoints/ckpt-00003",
        eval_index=3,
        step=75,
        monitor="val_loss",
        value=0.1,
    )
    assert set(best.to_xcom()) >= {"best_file", "checkpoint_path"} and "best" not in best.to_xcom()
    export = ExportResult(
        step_dir="/r/export",
        fingerprint="f",
        model_dir="/m/1",
        version=1,
        promoted=True,
        decision="first_model",
        production_version=1,
        candidate_score={"val_loss": 0.1},
        production_score=None,
        parity={"max_abs_diff": 2e-7, "rows": 78},
    )
    assert export.parity_max_abs_diff == 2e-7 and "blessing" not in export.to_xcom()
