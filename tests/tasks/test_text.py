"""A text column (#15 item 2, text): TextVectorization in the graph, its vocabulary and
document frequencies from the train split, tokenized by pyarrow exactly as the layer tokenizes.
Trained, exported with its parity checks, and served from a fresh process."""

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

from contrail import artifacts, preprocess, text
from contrail.errors import EmptyInputError
from contrail.spec import load_spec

GOOD = ["great", "lovely", "superb", "tasty", "friendly", "fresh"]
BAD = ["awful", "cold", "rude", "stale", "bland", "slow"]
FILLER = ["the", "food", "was", "and", "service", "place", "very", "quite", "our", "table", "really"]


def _reviews(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, rows)
    texts = []
    for y in label:
        words = list(rng.choice(FILLER, rng.integers(4, 10)))
        cue = GOOD if y else BAD
        for _ in range(rng.integers(1, 3)):  # one or two cue words, sometimes from the other side
            words.insert(int(rng.integers(0, len(words))), str(rng.choice(cue if rng.random() < 0.85 else GOOD + BAD)))
        sentence = " ".join(words)
        texts.append(sentence.capitalize() + rng.choice([".", "!", "!!", ","]))
    return pa.table({"review": pa.array(texts), "stars": pa.array(rng.integers(1, 6, rows)), "label": pa.array(label)})


def _spec(directory: Path, source: Path, encoding: dict) -> Path:
    spec = {
        "name": "reviews",
        "data": {
            "source": str(source / "*.parquet"),
            "label": {"column": "label", "task": "binary"},
            "features": {"review": {"type": "string", "encoding": encoding}, "stars": {"type": "int"}},
            "split": {"eval_fraction": 0.25, "seed": 2},
        },
        "model": {"build_fn": "reviews_model:build", "params": {"hidden_units": [16], "learning_rate": 0.01}},
        "train": {"batch_size": 64, "max_steps": 300, "eval_every_steps": 100, "early_stopping": None, "seed": 1},
        "export": {"promote_if": {"metric": "val_auc"}},
    }
    return write_spec(directory, spec, "reviews_model")


@pytest.fixture(scope="module")
def reviews(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("text")
    (base / "data").mkdir()
    pq.write_table(_reviews(3_000, seed=0), base / "data" / "part-0.parquet")
    spec = _spec(base / "spec", base / "data", {"text": {"ngrams": 2, "output": "tf_idf", "max_tokens": 500}})
    return {"base": base, **run_steps(spec, str(base / "data" / "*.parquet"), base / "run")}


def test_pyarrow_tokenizes_as_the_layer_does():
    import keras

    texts = ["Great food, GREAT service!", "the place... was 'cold'", "a  b\tc", "École ÜBER über école"]
    sample = pa.array([*texts, "", None])
    layer = keras.layers.TextVectorization(ngrams=2, output_mode="multi_hot")
    layer.adapt(texts)
    tokens, _ = text.tokens(sample, 2)
    assert set(tokens.to_pylist()) == set(layer.get_vocabulary()[1:])


def test_the_schema_holds_the_train_vocabulary_and_idf(reviews):
    (review,) = [
        f for f in artifacts.read_json(Path(reviews["preprocess"].schema))["features"] if f["name"] == "review"
    ]
    assert review["encoding"] == {"kind": "text", "max_tokens": 500, "ngrams": 2, "output": "tf_idf"}
    assert set(GOOD + BAD + FILLER) <= set(review["vocabulary"]) and "the food" in review["vocabulary"]
    assert len(review["vocabulary"]) <= 500 and len(review["idf"]) == len(review["vocabulary"])
    assert review["idf"][review["vocabulary"].index("great")] > review["idf"][review["vocabulary"].index("the")]


def test_build_fn_receives_each_text_output(reviews, tmp_path):
    from contrail import model as model_lib

    schema = artifacts.read_json(Path(reviews["preprocess"].schema))
    loaded = load_spec(reviews["spec"])
    vocabulary = len(schema["features"][0]["vocabulary"])
    for encoding, shape, dtype in (
        ({"kind": "text", "max_tokens": 500, "ngrams": 2, "output": "tf_idf"}, (None, vocabulary + 1), "float32"),
        ({"kind": "text", "max_tokens": 500, "ngrams": 1, "output": "multi_hot"}, (None, vocabulary + 1), "float32"),
        ({"kind": "text", "max_tokens": 500, "ngrams": 1, "output": "int", "sequence_length": 12}, (None, 12), "int64"),
    ):
        variant = {**schema, "features": [{**schema["features"][0], "encoding": encoding}, schema["features"][1]]}
        seen = {}

        def build(features, params, seen=seen):
            import keras

            seen.update({n: (tuple(t.shape), str(t.dtype)) for n, t in features.items()})
            return keras.layers.Dense(4)(features["stars"])

        model_lib.build_model(variant, loaded, loaded.spec.model.params, build_fn=build)
        assert seen["review"] == (shape, dtype), encoding


def test_a_model_learns_from_text_and_serves_it_from_a_fresh_process(reviews, tmp_path):
    assert artifacts.read_json(Path(reviews["best"].best_file))["metrics"]["val_auc"] > 0.9
    result = run_export(reviews, tmp_path / "models", "r1", tmp_path / "export")
    assert result.parity["max_abs_diff"] <= 1e-6 and result.parity["fresh_process"]
    script = textwrap.dedent(
        f"""
        import json, tensorflow as tf
        model = tf.saved_model.load({str(tmp_path / "models" / "1")!r})
        raw = model.signatures["predict"](
            review=tf.constant(["Superb and friendly!", "Rude, stale and cold."]), stars=tf.constant([3, 3], tf.int64)
        )
        def example(review):
            return tf.train.Example(features=tf.train.Features(feature={{
                "review": tf.train.Feature(bytes_list=tf.train.BytesList(value=[review.encode()])),
                "stars": tf.train.Feature(int64_list=tf.train.Int64List(value=[3])),
            }})).SerializeToString()
        served = model.signatures["serving_default"](
            examples=tf.constant([example("Superb and friendly!"), example("Rude, stale and cold.")])
        )
        print(json.dumps([raw["probabilities"].numpy()[:, 1].tolist(), served["probabilities"].numpy()[:, 1].tolist()]))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300)
    raw, served = yaml.safe_load(out.stdout.strip().splitlines()[-1])
    assert raw == pytest.approx(served, abs=1e-6)
    assert raw[0] > 0.8 > 0.2 > raw[1]


def test_a_text_feature_with_no_tokens_in_train_is_named(tmp_path):
    (tmp_path / "data").mkdir()
    table = pa.table(
        {"review": pa.array(["!!", "...", ""] * 40), "stars": pa.array([1, 2, 3] * 40), "label": pa.array([0, 1] * 60)}
    )
    pq.write_table(table, tmp_path / "data" / "part-0.parquet")
    spec = _spec(tmp_path / "spec", tmp_path / "data", "text")
    with pytest.raises(
        EmptyInputError, match=r"Feature 'review': expected tokens in the train split for a text encoding"
    ) as info:
        preprocess.run(
            preprocess.PreprocessArgs(str(spec), str(tmp_path / "data" / "*.parquet"), str(tmp_path / "pre"))
        )
    assert info.value.field == "data.features.review"
