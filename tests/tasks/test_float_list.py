"""A fixed-length vector feature (#15 item 2, float_list): a vector computed elsewhere (an
embedding, say), read from a Parquet list column, written as one FloatList per record, served as
a [batch, length] tensor by `predict` and as a FloatList by `serving_default`."""

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


def _table(rows: int, seed: int, length: int = LENGTH) -> pa.Table:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(rows, length))
    weights = np.linspace(-1, 1, length)
    label = (vectors @ weights + 0.5 * rng.normal(size=rows) > 0).astype(np.int64)
    missing = rng.random(rows) < 0.05
    column = pa.array(
        [None if m else v.tolist() for v, m in zip(vectors, missing, strict=True)], pa.list_(pa.float64())
    )
    return pa.table(
        {
            "row_id": pa.array(np.arange(rows)),
            "vec": column,
            "x": pa.array(rng.normal(size=rows)),
            "label": pa.array(label),
        }
    )


def _spec(directory: Path, source: Path, **data) -> Path:
    spec = {
        "name": "vectors",
        "data": {
            "source": str(source / "*.parquet"),
            "key": "row_id",
            "label": {"column": "label", "task": "binary"},
            "features": {"vec": {"type": "float_list", "length": LENGTH, "nullable": True}, "x": {"type": "float"}},
            "split": {"eval_fraction": 0.25, "seed": 4},
            **data,
        },
        "model": {"build_fn": "vectors_model:build", "params": {"hidden_units": [16], "learning_rate": 0.01}},
        "train": {"batch_size": 64, "max_steps": 300, "eval_every_steps": 100, "early_stopping": None, "seed": 1},
        "export": {"promote_if": {"metric": "val_auc"}},
    }
    return write_spec(directory, spec, "vectors_model")


@pytest.fixture(scope="module")
def vectors(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("vectors")
    (base / "data").mkdir()
    pq.write_table(_table(3_000, seed=0), base / "data" / "part-0.parquet")
    spec = _spec(base / "spec", base / "data")
    return {"base": base, **run_steps(spec, str(base / "data" / "*.parquet"), base / "run")}


def test_build_fn_receives_the_vector_standardized(vectors):
    from contrail import model as model_lib

    schema = artifacts.read_json(Path(vectors["preprocess"].schema))
    (vec,) = [f for f in schema["features"] if f["name"] == "vec"]
    assert vec["length"] == LENGTH and abs(vec["mean"]) < 0.05 and abs(vec["std"] - 1) < 0.05
    loaded = load_spec(vectors["spec"])
    seen = {}

    def build(features, params):
        import keras

        seen.update({n: (tuple(t.shape), str(t.dtype)) for n, t in features.items()})
        return keras.layers.Concatenate()([features["vec"], features["x"]])

    model_lib.build_model(schema, loaded, loaded.spec.model.params, build_fn=build)
    assert seen == {"vec": ((None, LENGTH), "float32"), "x": ((None, 1), "float32")}


def test_a_model_learns_from_vectors_and_serves_them(vectors, tmp_path):
    assert artifacts.read_json(Path(vectors["best"].best_file))["metrics"]["val_auc"] > 0.85
    models = tmp_path / "models"
    result = run_export(vectors, models, "r1", tmp_path / "export")
    assert result.parity["max_abs_diff"] <= 1e-6 and result.parity["fresh_process"]
    script = textwrap.dedent(
        f"""
        import json, math, tensorflow as tf
        model = tf.saved_model.load({str(models / "1")!r})
        vec = [[0.5] * {LENGTH}, [math.nan] * {LENGTH}]  # the second: a missing vector
        raw = model.signatures["predict"](vec=tf.constant(vec, tf.float32), x=tf.constant([0.1, 0.1]))
        def example(values):
            feature = {{"x": tf.train.Feature(float_list=tf.train.FloatList(value=[0.1]))}}
            if values is not None:
                feature["vec"] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
            return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
        served = model.signatures["serving_default"](examples=tf.constant([example([0.5] * {LENGTH}), example(None)]))
        print(json.dumps([raw["probabilities"].numpy()[:, 1].tolist(), served["probabilities"].numpy()[:, 1].tolist()]))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300)
    raw, served = yaml.safe_load(out.stdout.strip().splitlines()[-1])
    assert raw == pytest.approx(served, abs=1e-6)
    (tmp_path / "score").mkdir()
    pq.write_table(_table(500, seed=9).drop_columns(["label"]), tmp_path / "score" / "part-0.parquet")
    scored = inference.run(
        inference.InferenceArgs(
            str(vectors["spec"]), str(tmp_path / "score" / "*.parquet"), str(tmp_path / "inf"), str(models)
        )
    )
    assert pq.read_table(scored.predictions[0]).num_rows == 500


def test_a_vector_of_the_wrong_length_is_named(tmp_path):
    (tmp_path / "data").mkdir()
    table = _table(200, seed=2)
    vectors = table.column("vec").to_pylist()
    vectors[37] = [1.0, 2.0, 3.0]
    table = table.set_column(1, "vec", pa.array(vectors, pa.list_(pa.float64())))
    pq.write_table(table, tmp_path / "data" / "part-0.parquet")
    spec = _spec(tmp_path / "spec", tmp_path / "data")
    with pytest.raises(
        SchemaMismatchError,
        match=r"Feature 'vec' in \S+part-0\.parquet: expected 8 floats per row \(length\), found 3 at row 37",
    ):
        preprocess.run(
            preprocess.PreprocessArgs(str(spec), str(tmp_path / "data" / "*.parquet"), str(tmp_path / "pre"))
        )


def test_float_list_needs_parquet(tmp_path):
    spec = _spec(tmp_path / "spec", tmp_path / "data", format="csv")
    with pytest.raises(SpecError, match=r"expected Parquet for float_list features \(vec\), found format csv"):
        load_spec(spec)
