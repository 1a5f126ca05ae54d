from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contrail import artifacts, preprocess, spill
from contrail.demo import penguins_table
from contrail.errors import CorruptRecordError, EmptyInputError, SchemaMismatchError, UnknownCategoryError
from contrail.results import PreprocessResult


def _run(spec_path: Path, source: str, step_dir: Path) -> PreprocessResult:
    return preprocess.run(preprocess.PreprocessArgs(str(spec_path), source, str(step_dir)))


def _records(path: str) -> list[dict]:
    import tensorflow as tf

    out = []
    for raw in tf.data.TFRecordDataset(path, compression_type="GZIP"):
        example = tf.train.Example.FromString(raw.numpy())
        out.append({k: v for k, v in example.features.feature.items()})
    return out


def test_penguins_become_tfrecords_with_every_row_once(write_spec, penguins_dir, tmp_path):
    spec = write_spec()
    result = _run(spec, str(penguins_dir / "penguins" / "*.parquet"), tmp_path / "pre")
    assert result.train_records + result.eval_records == result.input_rows == 344
    ids = []
    for path in result.train_files + result.eval_files:
        ids += [r["row_id"].bytes_list.value[0].decode() for r in _records(path)]
    assert sorted(ids) == sorted(penguins_table().column("row_id").to_pylist())
    manifest = artifacts.read_manifest(tmp_path / "pre")
    shard_counts = {o["path"]: o["records"] for o in manifest["outputs"] if "records" in o}
    assert sum(shard_counts.values()) == 344
    assert all(len(o["sha256"]) == 64 for o in manifest["outputs"])
    # A missing value is an absent feature, not a zero.
    missing_sex = [r for p in result.train_files + result.eval_files for r in _records(p) if "sex" not in r]
    assert len(missing_sex) == 11


def test_split_is_deterministic_and_keyed(write_spec, penguins_dir, tmp_path):
    spec = write_spec()
    source = str(penguins_dir / "penguins" / "*.parquet")
    first = _run(spec, source, tmp_path / "a")
    second = _run(spec, source, tmp_path / "b")
    hashes = [{o["path"]: o["sha256"] for o in artifacts.read_manifest(tmp_path / d)["outputs"]} for d in ("a", "b")]
    assert hashes[0] == hashes[1]
    # Keyed split: the same rows land in eval when the files are reordered and reshaped.
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    table = penguins_table()
    order = np.random.default_rng(0).permutation(table.num_rows)
    pq.write_table(table.take(pa.array(order)), shuffled / "all.parquet")
    third = _run(spec, str(shuffled / "*.parquet"), tmp_path / "c")

    def eval_ids(result):
        return {r["row_id"].bytes_list.value[0] for p in result.eval_files for r in _records(p)}

    assert eval_ids(first) == eval_ids(second) == eval_ids(third)
    assert 0.15 < first.eval_records / 344 < 0.35


def test_normalization_statistics_come_from_train_rows_only(write_spec, penguins_dir, tmp_path):
    result = _run(write_spec(), str(penguins_dir / "penguins" / "*.parquet"), tmp_path / "pre")
    schema = json.loads(Path(result.schema).read_text())
    stats = json.loads(Path(result.stats).read_text())
    train_masses = [
        r["body_mass_g"].float_list.value[0] for p in result.train_files for r in _records(p) if "body_mass_g" in r
    ]
    mass = next(f for f in schema["features"] if f["name"] == "body_mass_g")
    assert mass["mean"] == pytest.approx(np.mean(train_masses), rel=1e-6)
    all_mean = np.nanmean(penguins_table().column("body_mass_g").to_numpy(zero_copy_only=False).astype(float))
    assert mass["mean"] != pytest.approx(all_mean, rel=1e-9)
    island = next(f for f in schema["features"] if f["name"] == "island")
    assert sorted(island["vocabulary"]) == ["Biscoe", "Dream", "Torgersen"]
    assert stats["features"]["sex"]["missing"] == 11
    assert stats["features"]["bill_length_mm"]["missing"] == 2
    assert schema["label"]["classes"] == ["Adelie", "Chinstrap", "Gentoo"]


def test_rerun_with_same_inputs_is_skipped(write_spec, penguins_dir, tmp_path):
    spec, source = write_spec(), str(penguins_dir / "penguins" / "*.parquet")
    first = _run(spec, source, tmp_path / "pre")
    before = (tmp_path / "pre" / "manifest.json").stat().st_mtime_ns
    second = _run(spec, source, tmp_path / "pre")
    assert second.reused is True and first.reused is False
    assert first == second.replace(reused=False)
    assert (tmp_path / "pre" / "manifest.json").stat().st_mtime_ns == before


def test_csv_source_with_missing_values(write_spec, tmp_path):
    csv = tmp_path / "csv"
    csv.mkdir()
    import pyarrow.csv as pacsv

    pacsv.write_csv(penguins_table(), csv / "penguins.csv")
    spec = write_spec({"data": {"format": "csv", "source": str(csv / "*.csv")}})
    result = _run(spec, str(csv / "*.csv"), tmp_path / "pre")
    assert result.input_rows == 344


class TestPreprocessInvalidInput:
    def _write(self, tmp_path: Path, table: pa.Table) -> str:
        directory = tmp_path / "bad"
        directory.mkdir(exist_ok=True)
        pq.write_table(table, directory / "part-0.parquet")
        return str(directory / "*.parquet")

    def test_missing_column(self, write_spec, tmp_path):
        source = self._write(tmp_path, penguins_table().drop_columns(["island"]))
        with pytest.raises(SchemaMismatchError, match=r"part-0\.parquet: expected column 'island', found only"):
            _run(write_spec(), source, tmp_path / "pre")

    def test_wrong_type(self, write_spec, tmp_path):
        table = penguins_table()
        table = table.set_column(table.schema.get_field_index("year"), "year", table.column("year").cast(pa.string()))
        source = self._write(tmp_path, table)
        with pytest.raises(
            SchemaMismatchError, match=r"Feature 'year' in .*part-0\.parquet: expected an int column, found string"
        ):
            _run(write_spec(), source, tmp_path / "pre")

    def test_nan_in_non_nullable_feature(self, write_spec, tmp_path):
        table = penguins_table().drop_null()
        values = table.column("bill_depth_mm").to_numpy().copy()
        values[5] = np.nan
        table = table.set_column(table.schema.get_field_index("bill_depth_mm"), "bill_depth_mm", pa.array(values))
        spec = write_spec({"data": {"features": {"bill_depth_mm": {"type": "float", "nullable": False}}}})
        source = self._write(tmp_path, table)
        with pytest.raises(
            SchemaMismatchError,
            match=r"Feature 'bill_depth_mm' in .*: expected finite values \(nullable: false\), found nan at row 5",
        ):
            _run(spec, source, tmp_path / "pre")

    def test_inf_in_non_nullable_feature(self, write_spec, tmp_path):
        table = penguins_table().drop_null()
        values = table.column("flipper_length_mm").to_numpy().astype(float)
        values[7] = np.inf
        table = table.set_column(
            table.schema.get_field_index("flipper_length_mm"), "flipper_length_mm", pa.array(values)
        )
        spec = write_spec({"data": {"features": {"flipper_length_mm": {"type": "float", "nullable": False}}}})
        with pytest.raises(
            SchemaMismatchError, match=r"'flipper_length_mm' in .*: expected finite values .*found inf at row 7"
        ):
            _run(spec, self._write(tmp_path, table), tmp_path / "pre")

    def test_ragged_csv_row(self, write_spec, tmp_path):
        directory = tmp_path / "ragged"
        directory.mkdir()
        import pyarrow.csv as pacsv

        pacsv.write_csv(penguins_table(), directory / "penguins.csv")
        lines = (directory / "penguins.csv").read_text().splitlines()
        lines[10] = lines[10].rsplit(",", 2)[0]  # two fields short
        (directory / "penguins.csv").write_text("\n".join(lines) + "\n")
        spec = write_spec({"data": {"format": "csv", "source": str(directory / "*.csv")}})
        with pytest.raises(
            SchemaMismatchError,
            match=r"penguins\.csv: expected every row to have the header's fields.*, found: .*Expected 9 columns, got 7",
        ):
            _run(spec, str(directory / "*.csv"), tmp_path / "pre")
        assert not (tmp_path / "pre").exists()

    def test_null_label(self, write_spec, tmp_path):
        table = penguins_table()
        species = table.column("species").to_pylist()
        species[3] = None
        table = table.set_column(table.schema.get_field_index("species"), "species", pa.array(species))
        with pytest.raises(
            SchemaMismatchError, match=r"Label 'species' in .*: expected no missing values.*first at row 3"
        ):
            _run(write_spec(), self._write(tmp_path, table), tmp_path / "pre")

    def test_no_files(self, write_spec, tmp_path):
        with pytest.raises(
            EmptyInputError,
            match=r"data\.source: expected at least one file, found none matching '.*nowhere/\*\.parquet'",
        ):
            _run(write_spec(), str(tmp_path / "nowhere" / "*.parquet"), tmp_path / "pre")

    def test_zero_rows(self, write_spec, tmp_path):
        source = self._write(tmp_path, penguins_table().slice(0, 0))
        with pytest.raises(EmptyInputError, match=r"expected at least one data row, found 0 rows in 1 file"):
            _run(write_spec(), source, tmp_path / "pre")

    def test_header_only_csv(self, write_spec, tmp_path):
        directory = tmp_path / "csv"
        directory.mkdir()
        (directory / "a.csv").write_text(",".join(penguins_table().column_names) + "\n")
        spec = write_spec({"data": {"format": "csv"}})
        with pytest.raises(EmptyInputError, match=r"found 0 rows"):
            _run(spec, str(directory / "*.csv"), tmp_path / "pre")

    def test_corrupt_parquet(self, write_spec, tmp_path):
        source = self._write(tmp_path, penguins_table())
        path = Path(source).parent / "part-0.parquet"
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(CorruptRecordError, match=r"part-0\.parquet: expected a readable Parquet file"):
            _run(write_spec(), source, tmp_path / "pre")

    def test_unknown_categories_in_eval_beyond_tolerance(self, write_spec, tmp_path):
        table = penguins_table()
        islands = [f"Island-{i}" if i % 3 == 0 else v for i, v in enumerate(table.column("island").to_pylist())]
        table = table.set_column(table.schema.get_field_index("island"), "island", pa.array(islands))
        with pytest.raises(
            UnknownCategoryError, match=r"Feature 'island' in .*: expected at most 5\.0% .* found \d+\.\d%"
        ):
            _run(write_spec(), self._write(tmp_path, table), tmp_path / "pre")

    def test_failure_leaves_published_output_intact(self, write_spec, penguins_dir, tmp_path):
        spec = write_spec()
        good = _run(spec, str(penguins_dir / "penguins" / "*.parquet"), tmp_path / "pre")
        manifest_before = (tmp_path / "pre" / "manifest.json").read_bytes()
        bad = self._write(tmp_path, penguins_table().drop_columns(["sex"]))
        with pytest.raises(SchemaMismatchError):
            _run(spec, bad, tmp_path / "pre")
        assert (tmp_path / "pre" / "manifest.json").read_bytes() == manifest_before
        assert all(Path(p).is_file() for p in good.train_files + good.eval_files)
        assert not list(tmp_path.glob(".staging-*"))


class TestCachingByContent:
    def _csv(self, tmp_path: Path) -> Path:
        import pyarrow.csv as pacsv

        directory = tmp_path / "csv"
        directory.mkdir()
        pacsv.write_csv(penguins_table(), directory / "penguins.csv")
        old = time.time() - 60  # written a minute ago: not "racily clean"
        os.utime(directory / "penguins.csv", (old, old))
        return directory / "penguins.csv"

    def _run(self, spec, source, step_dir, cache_dir):
        return preprocess.run(preprocess.PreprocessArgs(str(spec), source, str(step_dir), cache_dir=str(cache_dir)))

    def test_a_new_run_on_the_same_content_hard_links_the_earlier_output(self, write_spec, tmp_path, caplog):
        csv = self._csv(tmp_path)
        spec = write_spec({"data": {"format": "csv", "source": str(csv)}})
        cache_dir = tmp_path / "cache"
        first = self._run(spec, str(csv), tmp_path / "runs" / "a" / "preprocess", cache_dir)
        with caplog.at_level(logging.INFO, logger="contrail.cache"):
            caplog.clear()  # only the second run's records
            second = self._run(spec, str(csv), tmp_path / "runs" / "b" / "preprocess", cache_dir)
        assert second.cache_hit and second.reused_from == first.step_dir
        assert not any("Hashed" in r.getMessage() for r in caplog.records)  # unchanged stat: no rehash
        for a, b in zip(first.train_files + first.eval_files, second.train_files + second.eval_files):
            assert Path(b).parent == tmp_path / "runs" / "b" / "preprocess"
            assert os.stat(a).st_ino == os.stat(b).st_ino  # the same bytes, not a recomputation
        assert second.train_records == first.train_records
        assert artifacts.read_manifest(Path(second.step_dir))["fingerprint"] == first.fingerprint

    def test_new_data_under_the_same_name_and_size_is_noticed(self, write_spec, tmp_path):
        csv = self._csv(tmp_path)
        spec = write_spec({"data": {"format": "csv", "source": str(csv)}})
        cache_dir = tmp_path / "cache"
        first = self._run(spec, str(csv), tmp_path / "runs" / "a" / "preprocess", cache_dir)
        text = csv.read_text()
        changed = text.replace("39.1", "39.2", 1)  # one bill length, same byte count
        assert changed != text and len(changed) == len(text)
        size = csv.stat().st_size
        with csv.open("r+") as handle:  # in place: same name, same inode, same size
            handle.write(changed)
        assert csv.stat().st_size == size
        second = self._run(spec, str(csv), tmp_path / "runs" / "b" / "preprocess", cache_dir)
        assert not second.cache_hit and second.fingerprint != first.fingerprint

        def count_39_2(result):
            values = [
                r["bill_length_mm"].float_list.value[0]
                for f in result.train_files + result.eval_files
                for r in _records(f)
                if "bill_length_mm" in r
            ]
            return sum(abs(v - 39.2) < 1e-4 for v in values)

        assert count_39_2(second) == count_39_2(first) + 1  # the new value was read, not a stale cache


def test_train_records_pack_non_nullable_floats_and_eval_records_keep_the_serving_layout(write_spec, tmp_path):
    table = penguins_table().drop_null()
    directory = tmp_path / "dense"
    directory.mkdir()
    pq.write_table(table, directory / "part-0.parquet")
    floats = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
    spec = write_spec(
        {
            "data": {
                "source": str(directory / "*.parquet"),
                "features": {n: {"type": "float", "nullable": False} for n in floats},
            }
        }
    )
    result = _run(spec, str(directory / "*.parquet"), tmp_path / "pre")
    schema = json.loads(Path(result.schema).read_text())
    assert schema["train_packing"] == {"feature": "contrail:dense_float", "columns": floats}
    by_id = {r: i for i, r in enumerate(table.column("row_id").to_pylist())}
    for record in _records(result.train_files[0])[:20]:
        assert "bill_length_mm" not in record and "year" in record
        row = by_id[record["row_id"].bytes_list.value[0].decode()]
        want = [np.float32(table.column(n)[row].as_py()) for n in floats]
        assert list(record["contrail:dense_float"].float_list.value) == want
    for record in _records(result.eval_files[0])[:5]:
        assert "contrail:dense_float" not in record and set(floats) <= set(record)


@pytest.mark.parametrize(
    ("key", "streamed"),
    [("row_id", False), (None, False), ("row_id", True), (None, True)],
    ids=["key", "file-and-row", "key-small-batches-and-buckets", "file-and-row-small-batches-and-buckets"],
)
def test_fan_out_over_file_groups_gives_the_single_task_result_byte_for_byte(
    write_spec, tmp_path, monkeypatch, key, streamed
):
    if streamed:  # several batches per file, several shuffle buckets
        monkeypatch.setattr(preprocess, "BATCH_ROWS", 16)
        monkeypatch.setattr(spill, "BUCKET_ROWS", 40)
    table = penguins_table()
    directory = tmp_path / "files"
    directory.mkdir()
    for i, lo in enumerate(range(0, table.num_rows, 70)):
        pq.write_table(table.slice(lo, 70), directory / f"part-{i}.parquet")
    source = str(directory / "*.parquet")
    spec = write_spec({"data": {"source": source, "key": key, "shard_rows": 100}})
    single = _run(spec, source, tmp_path / "single" / "preprocess")

    args = preprocess.PreprocessArgs(str(spec), source, str(tmp_path / "fan" / "preprocess"))
    groups = preprocess.plan(args, 3)
    assert [len(g.files) for g in groups] == [2, 2, 1]
    parts = [preprocess.run_part(group).step_dir for group in groups]
    fanned = preprocess.run(dataclasses.replace(args, parts=parts))
    assert fanned.parts == 3 and fanned.fingerprint == single.fingerprint
    single_dir, fan_dir = Path(single.step_dir), Path(fanned.step_dir)
    names = sorted(p.name for p in single_dir.iterdir() if p.name != "manifest.json")
    assert names == sorted(p.name for p in fan_dir.iterdir() if p.name != "manifest.json")
    assert len([n for n in names if n.startswith("train-")]) > 1  # several shards, so order matters
    for name in names:
        assert (single_dir / name).read_bytes() == (fan_dir / name).read_bytes(), name
    assert preprocess.plan(args, 3) == []  # done: a retry of the DAG run has nothing to fan out
    assert not any(Path(p).exists() for p in parts)  # the reduce removed the intermediate parts


def test_reading_in_batches_and_shuffling_by_bucket_keeps_every_record_and_the_statistics(
    write_spec, penguins_dir, tmp_path, monkeypatch
):
    """Batches of 16 rows and buckets of about 40 train records: the same records (train in
    another order, eval in the same), the same counts and vocabularies, the same moments up to
    rounding, and a train order that is still a shuffle of the input."""
    spec = write_spec({"data": {"shard_rows": 1000}})
    source = str(penguins_dir / "penguins" / "*.parquet")
    whole = _run(spec, source, tmp_path / "whole")
    monkeypatch.setattr(preprocess, "BATCH_ROWS", 16)
    monkeypatch.setattr(spill, "BUCKET_ROWS", 40)
    streamed = _run(spec, source, tmp_path / "streamed")
    ids = lambda path: [r["row_id"].bytes_list.value[0] for r in _records(path)]  # noqa: E731
    assert sorted(ids(streamed.train_files[0])) == sorted(ids(whole.train_files[0]))
    assert ids(streamed.train_files[0]) != ids(whole.train_files[0])
    assert ids(streamed.eval_files[0]) == ids(whole.eval_files[0])
    order = [int(i.split(b"-")[-1]) for i in ids(streamed.train_files[0])]
    assert order != sorted(order) and sum(a < b for a, b in zip(order, order[1:])) < 0.7 * len(order)
    schema_w, schema_s = (json.loads(Path(r.schema).read_text()) for r in (whole, streamed))
    for fw, fs in zip(schema_w["features"], schema_s["features"], strict=True):
        assert fw.get("vocabulary") == fs.get("vocabulary")
        assert fw.get("mean", 0) == pytest.approx(fs.get("mean", 0), rel=1e-12)
        assert fw.get("std", 1) == pytest.approx(fs.get("std", 1), rel=1e-12)
    stats_w, stats_s = (json.loads(Path(r.stats).read_text()) for r in (whole, streamed))
    assert stats_w["label"] == stats_s["label"] and stats_w["rows"] == stats_s["rows"]


def test_a_bad_value_past_the_first_batch_is_named_by_its_row_in_the_file(write_spec, tmp_path, monkeypatch):
    monkeypatch.setattr(preprocess, "BATCH_ROWS", 16)
    table = penguins_table()
    years = table.column("year").to_pylist()
    years[100] = None  # `year` is not nullable; row 100 is in the seventh batch
    directory = tmp_path / "data"
    directory.mkdir()
    pq.write_table(
        table.set_column(table.schema.get_field_index("year"), "year", pa.array(years, pa.int64())),
        directory / "p.parquet",
    )
    spec = write_spec({"data": {"source": str(directory / "*.parquet")}})
    with pytest.raises(
        SchemaMismatchError, match=r"Feature 'year' in .*p\.parquet: expected no missing values.*the first at row 100"
    ):
        _run(spec, str(directory / "*.parquet"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_list_of_globs_is_read_as_one_source(write_spec, tmp_path):
    """A window of daily partitions, as a monthly retrain would list its last months: the union
    of the globs, each file once, in one order whatever the list's."""
    from contrail.demo import DAILY_DATES, write_penguins_daily

    rows = write_penguins_daily(tmp_path / "data")
    window = [str(tmp_path / "data" / "penguins_daily" / day / "*.parquet") for day in DAILY_DATES[:3]]
    spec = write_spec({"data": {"source": window}})
    result = _run(spec, window, tmp_path / "window")
    assert result.input_rows == sum(rows[day] for day in DAILY_DATES[:3])
    again = _run(spec, [window[2], window[0], window[1], window[0]], tmp_path / "shuffled")  # order, repeats
    assert again.input_rows == result.input_rows and again.fingerprint == result.fingerprint
    missing = [str(tmp_path / "data" / "nowhere" / "*.parquet"), str(tmp_path / "data" / "elsewhere" / "*.csv")]
    with pytest.raises(
        EmptyInputError,
        match=r"data\.source: expected at least one file, found none matching any of .*nowhere.*elsewhere",
    ):
        _run(spec, missing, tmp_path / "none")
