"""`data.source` and `inference.source` on an object store: an `s3://` glob read with pyarrow
through fsspec, against a real S3 endpoint (moto's server on loopback)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from tests_support import run_export, spec_variant

from contrail import inference, preprocess
from contrail.demo import penguins_table
from contrail.errors import CorruptRecordError, EmptyInputError, StorageError


def _upload(s3, bucket: str, folder: Path, prefix: str) -> None:
    fs = s3.filesystem()
    for path in sorted(folder.iterdir()):
        fs.put_file(str(path), f"{bucket}/{prefix}/{path.name}")


def _preprocess(spec: Path, source: str, out: Path) -> preprocess.PreprocessResult:
    return preprocess.run(preprocess.PreprocessArgs(str(spec), source, str(out)))


def _digests(result: preprocess.PreprocessResult) -> dict[str, str]:
    paths = [*result.train_files, *result.eval_files, result.schema, result.stats]
    return {Path(p).name: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def test_preprocess_reads_an_s3_glob_into_the_same_bytes_as_the_local_files(s3, penguins_dir, tmp_path):
    bucket = s3.new_bucket()
    _upload(s3, bucket, penguins_dir / "penguins", "penguins/2026")
    spec = spec_variant(tmp_path / "pipelines", data_dir=penguins_dir)
    local = _preprocess(spec, str(penguins_dir / "penguins" / "*.parquet"), tmp_path / "local")
    remote = _preprocess(spec, f"s3://{bucket}/penguins/*/*.parquet", tmp_path / "remote")
    assert remote.input_rows == local.input_rows == 344
    assert _digests(remote) == _digests(local)  # the split hashes file names, not where they are

    # A rerun is reused; a changed object (a new ETag) is not.
    assert _preprocess(spec, f"s3://{bucket}/penguins/*/*.parquet", tmp_path / "remote").reused
    fs = s3.filesystem()
    first = sorted(fs.glob(f"{bucket}/penguins/*/*.parquet"))[0]
    pq.write_table(penguins_table().slice(0, 100), tmp_path / "smaller.parquet")
    fs.put_file(str(tmp_path / "smaller.parquet"), first)
    changed = _preprocess(spec, f"s3://{bucket}/penguins/*/*.parquet", tmp_path / "remote")
    assert not changed.reused and changed.input_rows < 344


def test_a_csv_source_on_s3(s3, penguins_dir, tmp_path):
    bucket = s3.new_bucket()
    pacsv.write_csv(penguins_table(), tmp_path / "penguins.csv")
    s3.filesystem().put_file(str(tmp_path / "penguins.csv"), f"{bucket}/csv/penguins.csv")
    spec = spec_variant(tmp_path / "pipelines", {"data": {"format": "csv"}}, data_dir=penguins_dir)
    result = _preprocess(spec, f"s3://{bucket}/csv/*.csv", tmp_path / "out")
    assert result.input_rows == 344 and result.train_records + result.eval_records == 344


def test_batch_inference_scores_an_s3_glob(s3, penguins_run, penguins_dir, tmp_path):
    bucket = s3.new_bucket()
    _upload(s3, bucket, penguins_dir / "penguins_to_score", "score")
    base = tmp_path / "penguins"
    run_export(penguins_run, base / "models", "r1", base / "runs" / "r1" / "export")

    def score(source: str, step: str) -> pa.Table:
        result = inference.run(
            inference.InferenceArgs(str(penguins_run["spec"]), source, str(base / "runs" / step), str(base / "models"))
        )
        return pa.concat_tables(pq.read_table(p) for p in result.predictions)

    remote = score(f"s3://{bucket}/score/*.parquet", "remote")
    local = score(str(penguins_dir / "penguins_to_score" / "*.parquet"), "local")
    assert remote.num_rows == 344
    assert remote.equals(local)


def test_errors_name_the_object_store_location(s3, penguins_dir, tmp_path):
    spec = spec_variant(tmp_path / "pipelines", data_dir=penguins_dir)
    bucket = s3.new_bucket()
    with pytest.raises(
        EmptyInputError,
        match=rf"data\.source: expected at least one file, found none matching 's3://{bucket}/nothing/\*\.parquet'",
    ):
        _preprocess(spec, f"s3://{bucket}/nothing/*.parquet", tmp_path / "a")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    s3.filesystem().put_file(str(tmp_path / "broken.parquet"), f"{bucket}/broken/part-0.parquet")
    with pytest.raises(CorruptRecordError, match=rf"s3://{bucket}/broken/part-0\.parquet") as info:
        _preprocess(spec, f"s3://{bucket}/broken/*.parquet", tmp_path / "b")
    assert info.value.path == f"s3://{bucket}/broken/part-0.parquet"
    assert not (tmp_path / "b").exists()  # nothing published
    with pytest.raises(
        StorageError, match=r"expected the bucket 'no-such-bucket-contrail' of 's3://no-such.*found no such bucket"
    ):
        _preprocess(spec, "s3://no-such-bucket-contrail/x/*.parquet", tmp_path / "c")
