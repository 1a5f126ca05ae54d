from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests_support import run_export

from contrail import inference
from contrail.demo import penguins_table
from contrail.errors import InferenceError, SchemaMismatchError, UnknownCategoryError
from contrail.results import InferenceResult


@pytest.fixture(scope="module")
def pipeline_dir(penguins_run, tmp_path_factory):
    base = tmp_path_factory.mktemp("inference") / "penguins"
    run_export(penguins_run, base / "models", "r1", base / "runs" / "r1" / "export")
    return base


def _infer(penguins_run, pipeline_dir: Path, source: str, step: str = "inference") -> InferenceResult:
    return inference.run(
        inference.InferenceArgs(
            str(penguins_run["spec"]), source, str(pipeline_dir / "runs" / step), str(pipeline_dir / "models")
        )
    )


def test_one_prediction_per_input_row_with_key_and_version(penguins_run, pipeline_dir, penguins_dir):
    result = _infer(penguins_run, pipeline_dir, str(penguins_dir / "penguins_to_score" / "*.parquet"))
    table = pa.concat_tables(pq.read_table(p) for p in result.predictions)
    assert table.num_rows == result.rows == 344
    assert table.column("row_id").to_pylist() == penguins_table().column("row_id").to_pylist()
    assert set(table.column("model_version").to_pylist()) == {1}
    truth = penguins_table().column("species").to_pylist()
    accuracy = sum(a == b for a, b in zip(table.column("predicted_class").to_pylist(), truth)) / len(truth)
    assert accuracy >= 0.9


def test_without_a_production_model(penguins_run, tmp_path, penguins_dir):
    with pytest.raises(InferenceError, match=r"production\.json: expected a production model, found none"):
        _infer(penguins_run, tmp_path / "empty", str(penguins_dir / "penguins_to_score" / "*.parquet"))


def _write(tmp_path, table) -> str:
    directory = tmp_path / "score"
    directory.mkdir()
    pq.write_table(table, directory / "part-0.parquet")
    return str(directory / "*.parquet")


def test_bad_row_fails_with_its_location_and_publishes_nothing(penguins_run, pipeline_dir, tmp_path):
    years = penguins_table().column("year").to_pylist()
    years[7] = None  # `year` is not nullable
    table = penguins_table().set_column(8, "year", pa.array(years, pa.int64()))
    step = "bad-row"
    with pytest.raises(
        SchemaMismatchError, match=r"Feature 'year' in .*part-0\.parquet: expected no missing values.*first at row 7"
    ):
        _infer(penguins_run, pipeline_dir, _write(tmp_path, table), step)
    assert not (pipeline_dir / "runs" / step).exists()


def test_unknown_categories_beyond_tolerance(penguins_run, pipeline_dir, tmp_path):
    islands = ["Atlantis"] * 344
    table = penguins_table().set_column(2, "island", pa.array(islands))
    with pytest.raises(
        UnknownCategoryError, match=r"Feature 'island' in .*: expected at most 5\.0%.*found 100\.0%, e\.g\. 'Atlantis'"
    ):
        _infer(penguins_run, pipeline_dir, _write(tmp_path, table), "oov")


def test_missing_key_column(penguins_run, pipeline_dir, tmp_path):
    with pytest.raises(SchemaMismatchError, match=r"expected column 'row_id'"):
        _infer(penguins_run, pipeline_dir, _write(tmp_path, penguins_table().drop_columns(["row_id"])), "nokey")
    shutil.rmtree(tmp_path / "score")
