"""List features (#15 item 2): a fixed-length vector (`float_list`: an embedding computed
elsewhere, say) and lists of any length (`int_list`, `string_list`: tags, codes), read from
Parquet list columns, written as one FloatList, Int64List or BytesList per record, and served by
`predict` (a [batch, length] vector; lists padded to the longest with the int64 minimum or "")
and by `serving_default` (tf.Example lists). One table holds all three, so one pipeline trains,
exports and serves them together."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from tests_support import run_export, run_steps, write_spec

from contrail import artifacts, inference, preprocess
from contrail.errors import SchemaMismatchError, SpecError
from contrail.spec import load_spec

LENGTH = 8
TAGS = ["red", "blue", "green", "amber", "teal", "plum", "sand", "rose", "jade", "onyx", "ruby", "gold"]
EMBED_DIM = 4


def _table(rows: int, seed: int, length: int = LENGTH) -> pa.Table:
    """A vector, a list of 0-4 tags (5% missing), a list of 0-5 codes out of 0-99 (some of them
    wide varints), and a float. The label depends on all three lists."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(rows, length))
    tags = [list(rng.choice(TAGS, size=rng.integers(0, 5), replace=False)) for _ in range(rows)]
    codes = [
        [int(c) * 10**9 if c % 3 == 0 else int(c) for c in rng.integers(0, 100, rng.integers(0, 6))]
        for _ in range(rows)
    ]
    signal = (
        vectors @ np.linspace(-1, 1, length)
        + np.array([1.5 * ("red" in t) - 1.5 * ("blue" in t) for t in tags])
        + np.array([1.5 * (7 in c) - 1.5 * (11 in c) for c in codes])
    )
    label = (signal + 0.5 * rng.normal(size=rows) > 0).astype(np.int64)
    missing = rng.random(rows) < 0.05
    vec = pa.array([None if m else v.tolist() for v, m in zip(vectors, missing, strict=True)], pa.list_(pa.float64()))
    missing_tags = rng.random(rows) < 0.05
    return pa.table(
        {
            "row_id": pa.array(np.arange(rows)),
            "vec": vec,
            "tags": pa.array(
                [None if m else t for t, m in zip(tags, missing_tags, strict=True)], pa.list_(pa.string())
            ),
            "codes": pa.array(codes, pa.list_(pa.int64())),
            # The same lists again, each with the other encoding (as large lists, which Parquet also holds).
            "tags_bag": pa.array(
                [None if m else t for t, m in zip(tags, missing_tags, strict=True)], pa.large_list(pa.string())
            ),
            "codes_hot": pa.array(codes, pa.large_list(pa.int64())),
            "x": pa.array(rng.normal(size=rows)),
            "label": pa.array(label),
        }
    )


def _spec(directory: Path, source: Path, **data) -> Path:
    spec = {
        "name": "lists",
        "data": {
            "source": str(source / "*.parquet"),
            "key": "row_id",
            "label": {"column": "label", "task": "binary"},
            "features": {
                "vec": {"type": "float_list", "length": LENGTH, "nullable": True},
                "tags": {"type": "string_list", "nullable": True},
                "codes": {"type": "int_list", "encoding": {"embedding": {"dim": EMBED_DIM}}},
                "tags_bag": {"type": "string_list", "nullable": True, "encoding": {"embedding": {"dim": EMBED_DIM}}},
                "codes_hot": {"type": "int_list", "encoding": "multi_hot"},
                "x": {"type": "float"},
            },
            "split": {"eval_fraction": 0.25, "seed": 4},
            **data,
        },
        "model": {"build_fn": "lists_model:build", "params": {"hidden_units": [16], "learning_rate": 0.01}},
        "train": {"batch_size": 64, "max_steps": 300, "eval_every_steps": 100, "early_stopping": None, "seed": 1},
        "export": {"promote_if": {"metric": "val_auc"}},
    }
    return write_spec(directory, spec, "lists_model")


@pytest.fixture(scope="module")
def lists(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("lists")
    (base / "data").mkdir()
    pq.write_table(_table(3_000, seed=0), base / "data" / "part-0.parquet")
    spec = _spec(base / "spec", base / "data")
    return {"base": base, **run_steps(spec, str(base / "data" / "*.parquet"), base / "run")}


def test_build_fn_receives_each_list_encoded(lists):
    from contrail import model as model_lib

    schema = artifacts.read_json(Path(lists["preprocess"].schema))
    features = {f["name"]: f for f in schema["features"]}
    vec, tags, codes = features["vec"], features["tags"], features["codes"]
    assert vec["length"] == LENGTH and abs(vec["mean"]) < 0.05 and abs(vec["std"] - 1) < 0.05
    assert sorted(tags["vocabulary"]) == sorted(TAGS)  # the items of the train split's lists
    assert 7 in codes["vocabulary"] and 3 * 10**9 in codes["vocabulary"] and len(codes["vocabulary"]) == 100
    stats = artifacts.read_json(Path(lists["preprocess"].stats))["features"]
    assert stats["tags"]["missing"] > 0 and stats["tags"]["eval_oov_count"] == 0
    loaded = load_spec(lists["spec"])
    seen = {}

    def build(features, params):
        import keras

        seen.update({n: (tuple(t.shape), str(t.dtype)) for n, t in features.items()})
        return keras.layers.Concatenate()(list(features.values()))

    model_lib.build_model(schema, loaded, loaded.spec.model.params, build_fn=build)
    assert seen == {
        "vec": ((None, LENGTH), "float32"),
        "tags": ((None, len(TAGS) + 1), "float32"),  # multi-hot, one slot for items outside the vocabulary
        "codes": ((None, EMBED_DIM), "float32"),  # the mean of the codes' embeddings
        "tags_bag": ((None, EMBED_DIM), "float32"),
        "codes_hot": ((None, 100 + 1), "float32"),
        "x": ((None, 1), "float32"),
    }


def test_a_model_learns_from_lists_and_serves_them(lists, tmp_path):
    assert artifacts.read_json(Path(lists["best"].best_file))["metrics"]["val_auc"] > 0.85
    models = tmp_path / "models"
    result = run_export(lists, models, "r1", tmp_path / "export")
    assert result.parity["max_abs_diff"] <= 1e-6 and result.parity["fresh_process"]
    # A fresh process: `predict` with padded inputs against `serving_default` with tf.Example lists,
    # for a full row, a row with every list missing or empty, and rows that differ only in a tag.
    script = textwrap.dedent(
        f"""
        import json, math, tensorflow as tf
        model = tf.saved_model.load({str(models / "1")!r})
        PAD = -2**63
        rows = [
            ([0.5] * {LENGTH}, ["red", "teal"], [7, 3000000000]),
            (None, None, []),
            ([0.0] * {LENGTH}, ["red"], [1]),
            ([0.0] * {LENGTH}, ["blue"], [1]),
        ]
        width_t, width_c = max(len(t or []) for _, t, _ in rows), max(len(c) for _, _, c in rows)
        tags = tf.constant([(t or []) + [""] * (width_t - len(t or [])) for _, t, _ in rows], tf.string)
        codes = tf.constant([c + [PAD] * (width_c - len(c)) for _, _, c in rows], tf.int64)
        raw = model.signatures["predict"](
            vec=tf.constant([v or [math.nan] * {LENGTH} for v, _, _ in rows], tf.float32),
            tags=tags, tags_bag=tags, codes=codes, codes_hot=codes,
            x=tf.constant([0.1] * len(rows)),
        )
        def example(vec, tags, codes):
            feature = {{
                "x": tf.train.Feature(float_list=tf.train.FloatList(value=[0.1])),
                "codes": tf.train.Feature(int64_list=tf.train.Int64List(value=codes)),
                "codes_hot": tf.train.Feature(int64_list=tf.train.Int64List(value=codes)),
            }}
            if vec is not None:
                feature["vec"] = tf.train.Feature(float_list=tf.train.FloatList(value=vec))
            if tags is not None:
                for name in ("tags", "tags_bag"):
                    feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[t.encode() for t in tags]))
            return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
        served = model.signatures["serving_default"](examples=tf.constant([example(*r) for r in rows]))
        print(json.dumps([raw["probabilities"].numpy()[:, 1].tolist(), served["probabilities"].numpy()[:, 1].tolist()]))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300)
    raw, served = yaml.safe_load(out.stdout.strip().splitlines()[-1])
    assert raw == pytest.approx(served, abs=1e-6)
    assert raw[2] > raw[3] + 0.2  # "red" pushes towards the positive class, "blue" away from it
    (tmp_path / "score").mkdir()
    pq.write_table(_table(500, seed=9).drop_columns(["label"]), tmp_path / "score" / "part-0.parquet")
    scored = inference.run(
        inference.InferenceArgs(
            str(lists["spec"]), str(tmp_path / "score" / "*.parquet"), str(tmp_path / "inf"), str(models)
        )
    )
    assert pq.read_table(scored.predictions[0]).num_rows == 500


def _preprocess_error(tmp_path: Path, column: str, values: list, type_: pa.DataType | None = None) -> str:
    (tmp_path / "data").mkdir()
    table = _table(200, seed=2)
    table = table.set_column(table.schema.get_field_index(column), column, pa.array(values, type_))
    pq.write_table(table, tmp_path / "data" / "part-0.parquet")
    spec = _spec(tmp_path / "spec", tmp_path / "data")
    with pytest.raises(SchemaMismatchError) as raised:
        preprocess.run(
            preprocess.PreprocessArgs(str(spec), str(tmp_path / "data" / "*.parquet"), str(tmp_path / "pre"))
        )
    return str(raised.value)


def test_a_vector_of_the_wrong_length_is_named(tmp_path):
    vectors = _table(200, seed=2).column("vec").to_pylist()
    vectors[37] = [1.0, 2.0, 3.0]
    message = _preprocess_error(tmp_path, "vec", vectors, pa.list_(pa.float64()))
    assert "Feature 'vec' in " in message and "part-0.parquet" in message
    assert "expected 8 floats per row (length), found 3 at row 37" in message


def test_a_missing_item_inside_a_list_is_named(tmp_path):
    codes = _table(200, seed=2).column("codes").to_pylist()
    codes[41] = [5, None, 6]
    message = _preprocess_error(tmp_path, "codes", codes, pa.list_(pa.int64()))
    assert "Feature 'codes' in " in message and "part-0.parquet" in message
    assert "expected every item of a list present, found a missing item at row 41" in message


def test_a_list_of_the_wrong_type_is_named(tmp_path):
    message = _preprocess_error(tmp_path, "tags", [[1, 2]] * 200, pa.list_(pa.int64()))
    assert (
        "Feature 'tags' in " in message and "expected a list of strings per row, found list<element: int64>" in message
    )


def test_a_missing_list_of_a_non_nullable_feature_is_named(tmp_path):
    codes = _table(200, seed=2).column("codes").to_pylist()
    codes[12] = None
    message = _preprocess_error(tmp_path, "codes", codes, pa.list_(pa.int64()))
    assert "Feature 'codes' in " in message and "expected no missing values (nullable: false)" in message
    assert "the first at row 12" in message


@pytest.mark.parametrize(
    ("feature", "expected"),
    [
        ({"type": "string_list", "encoding": "one_hot"}, "expected one of multi_hot, embedding for a string_list"),
        ({"type": "int_list", "encoding": {"embedding": {"dim": 0}}}, "dim.*greater than 0"),
        ({"type": "string", "encoding": "multi_hot"}, "expected one of one_hot, .* for a string feature"),
        ({"type": "int_list", "length": 3}, "expected length only with float_list, found it with int_list"),
    ],
)
def test_list_encodings_are_checked(tmp_path, feature, expected):
    spec = yaml.safe_load(_spec(tmp_path / "spec", tmp_path / "data").read_text())
    spec["data"]["features"]["codes"] = feature
    path = write_spec(tmp_path / "spec", spec, "lists_model")
    with pytest.raises(SpecError, match=rf"data\.features\.codes.*{expected}"):
        load_spec(path)


def test_list_features_need_parquet(tmp_path):
    spec = _spec(tmp_path / "spec", tmp_path / "data", format="csv")
    with pytest.raises(
        SpecError, match=r"expected Parquet for list features \(vec, tags, codes, tags_bag, codes_hot\)"
    ):
        load_spec(spec)


def test_a_cross_or_a_slice_over_a_list_is_a_spec_error(tmp_path):
    spec = yaml.safe_load(_spec(tmp_path / "spec", tmp_path / "data").read_text())
    spec["data"]["crosses"] = [{"features": ["tags", "codes"], "bins": 16}]
    path = write_spec(tmp_path / "cross", spec, "lists_model")
    with pytest.raises(
        SpecError, match=r"expected string or int features of data\.features, found 'tags' \(a string_list feature\)"
    ):
        load_spec(path)
    del spec["data"]["crosses"]
    spec["evaluate"] = {"slices": ["codes"]}
    path = write_spec(tmp_path / "slice", spec, "lists_model")
    with pytest.raises(
        SpecError, match=r"evaluate\.slices: expected string or int features .*'codes' \(a int_list feature\)"
    ):
        load_spec(path)
