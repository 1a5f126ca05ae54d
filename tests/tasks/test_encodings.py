"""Per-feature encodings, crosses and class weights (#15 items 1, 3, 4, 5) on real runs: what
build_fn receives for each encoding, a model that learns through them, an export whose parity
checks (both signatures, the in-memory model, a fresh process) cover every one of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from tests_support import run_export, run_steps, saved_model_check, write_spec

from contrail import artifacts
from contrail.spec import load_spec

ENCODINGS = {
    "city": {"type": "string", "encoding": {"embedding": {"dim": 8}}},
    "zone": {"type": "string", "encoding": "auto"},
    "hour": {"type": "int", "encoding": "category"},
    "code": {"type": "int", "encoding": {"hashed": {"bins": 64}}},
    "amount": {"type": "float", "nullable": True, "encoding": "log"},
    "score": {"type": "float", "encoding": {"discretized": {"bins": 8}}},
    "raw": {"type": "float", "encoding": "none"},
}


def _table(rows: int, seed: int, positive_share: float | None = None) -> pa.Table:
    rng = np.random.default_rng(seed)
    hour = rng.integers(0, 24, rows)
    city = rng.integers(0, 300, rows)
    amount = rng.lognormal(3, 1.5, rows)
    # The label depends on the hour as a category (office hours), on the city's group and on
    # the order of magnitude of the amount: what one-hot of 0..23 or a log sees, and a
    # standardized number does not.
    logit = 2.0 * ((hour >= 9) & (hour <= 17)) - 1.0 + 1.5 * (city % 3 == 0) + 0.8 * (np.log10(amount) - 1.3)
    if positive_share is not None:
        logit = logit - np.quantile(logit, 1 - positive_share) + rng.normal(0, 0.5, rows)
    label = (rng.random(rows) < 1 / (1 + np.exp(-2 * logit))).astype(np.int64)
    return pa.table(
        {
            "city": pa.array([f"city-{c:03d}" for c in city]),
            "zone": pa.array(np.array(["n", "s", "e", "w", "c"])[rng.integers(0, 5, rows)]),
            "hour": pa.array(hour),
            "code": pa.array(rng.integers(-(10**9), 10**9, rows)),
            "amount": pa.array(amount, mask=rng.random(rows) < 0.05),
            "score": pa.array(rng.normal(0, 1, rows)),
            "raw": pa.array(rng.normal(5, 2, rows)),
            "label": pa.array(label),
        }
    )


def _spec(directory: Path, source: Path, features: dict, **extra) -> Path:
    spec = {
        "name": "encoded",
        "data": {
            "source": str(source / "*.parquet"),
            "label": {"column": "label", "task": "binary"},
            "features": features,
            "split": {"eval_fraction": 0.25, "seed": 5},
            **extra.pop("data", {}),
        },
        "model": {"build_fn": "encoded_model:build", "params": {"hidden_units": [32, 16], "learning_rate": 0.005}},
        "train": {
            "batch_size": 128,
            "max_steps": 600,
            "eval_every_steps": 150,
            "early_stopping": None,
            "seed": 3,
            "deterministic": True,
            **extra.pop("train", {}),
        },
        "export": {"promote_if": {"metric": "val_auc"}},
    }
    return write_spec(directory, spec, "encoded_model")


def _pipeline(spec: Path, run: Path) -> dict:
    return run_steps(spec, yaml.safe_load(spec.read_text())["data"]["source"], run)


@pytest.fixture(scope="module")
def encoded(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("encodings")
    (base / "data").mkdir()
    pq.write_table(_table(8_000, seed=0), base / "data" / "part-0.parquet")
    crosses = [{"features": ["zone", "hour"], "bins": 32, "dim": 4}, {"features": ["zone", "city"], "bins": 16}]
    spec = _spec(base / "spec", base / "data", ENCODINGS, data={"crosses": crosses})
    plain = {name: {k: v for k, v in f.items() if k != "encoding"} for name, f in ENCODINGS.items()}
    return {
        "base": base,
        "encoded": _pipeline(spec, base / "runs" / "encoded"),
        "plain": _pipeline(_spec(base / "plain", base / "data", plain), base / "runs" / "plain"),
    }


def test_the_schema_carries_what_each_encoding_needs(encoded):
    schema = {f["name"]: f for f in artifacts.read_json(Path(encoded["encoded"]["preprocess"].schema))["features"]}
    assert schema["city"]["encoding"] == {"kind": "embedding", "dim": 8} and len(schema["city"]["vocabulary"]) == 300
    assert schema["zone"]["encoding"] == {"kind": "one_hot"}  # auto: 5 values is one-hot
    assert sorted(schema["hour"]["vocabulary"]) == list(range(24))  # ints as categories
    assert len(schema["score"]["boundaries"]) == 7  # 8 train quantile bins
    # The boundaries split the train values into about equal eighths (the grid's error is small).
    score = pq.read_table(encoded["base"] / "data").column("score").to_numpy()
    shares = np.bincount(np.searchsorted(schema["score"]["boundaries"], score), minlength=8) / len(score)
    assert np.all(np.abs(shares - 1 / 8) < 0.02)
    assert 1.0 < schema["amount"]["log_mean"] < 1.6 and schema["amount"]["log_std"] > 0.3
    plain = {f["name"]: f for f in artifacts.read_json(Path(encoded["plain"]["preprocess"].schema))["features"]}
    assert all("encoding" not in f for f in plain.values())  # default encodings: today's schema


def test_build_fn_receives_each_encoding_in_its_documented_shape(encoded):
    from contrail import model as model_lib

    loaded = load_spec(encoded["encoded"]["spec"])
    schema = artifacts.read_json(Path(encoded["encoded"]["preprocess"].schema))
    seen = {}

    def build(features, params):
        import keras

        seen.update({name: (tuple(t.shape), str(t.dtype)) for name, t in features.items()})
        return keras.layers.Concatenate()([features[n] for n in sorted(features)])

    model_lib.build_model(schema, loaded, loaded.spec.model.params, build_fn=build)
    assert seen == {
        "city": ((None, 8), "float32"),
        "zone": ((None, 6), "float32"),  # 5 values and the out-of-vocabulary slot
        "hour": ((None, 25), "float32"),
        "code": ((None, 64), "float32"),
        "amount": ((None, 1), "float32"),
        "score": ((None, 8), "float32"),
        "raw": ((None, 1), "float32"),
        "zone_x_hour": ((None, 4), "float32"),
        "zone_x_city": ((None, 16), "float32"),
    }


def test_the_right_encodings_learn_what_the_defaults_cannot(encoded):
    good, plain = encoded["encoded"]["best"].value, encoded["plain"]["best"].value  # val_loss
    history = artifacts.read_json(Path(encoded["encoded"]["best"].best_file))["metrics"]
    baseline = artifacts.read_json(Path(encoded["plain"]["best"].best_file))["metrics"]
    assert history["val_auc"] > 0.8 and history["val_auc"] > baseline["val_auc"] + 0.02, (history, baseline)
    assert good < plain


def test_export_checks_and_serves_every_encoding(encoded, tmp_path):
    result = run_export(encoded["encoded"], tmp_path / "models", "r1", tmp_path / "export")
    assert result.parity["max_abs_diff"] <= 1e-6 and result.parity["fresh_process"]
    report = saved_model_check(tmp_path / "models" / "1", encoded["encoded"]["preprocess"].eval_files)
    assert report["signatures"] == ["predict", "serving_default"] and report["max_abs_diff"] <= 1e-6


def test_balanced_class_weights_move_predictions_toward_the_rare_class(tmp_path):
    (tmp_path / "data").mkdir()
    pq.write_table(_table(6_000, seed=1, positive_share=0.1), tmp_path / "data" / "part-0.parquet")
    features = {"hour": ENCODINGS["hour"], "amount": ENCODINGS["amount"]}
    runs = {}
    for name, weight in (("plain", None), ("balanced", "balanced")):
        spec = _spec(tmp_path / name, tmp_path / "data", features, train={"class_weight": weight, "max_steps": 300})
        runs[name] = _pipeline(spec, tmp_path / "runs" / name)
    from contrail import model as model_lib

    def mean_positive(stages) -> float:
        models = tmp_path / f"models-{stages['spec'].parent.name}"
        run_export(stages, models, "r1", tmp_path / f"export-{stages['spec'].parent.name}")
        from contrail import serving

        loaded = serving.load_version_dir(models / "1", 1)
        serialized = model_lib.read_serialized(stages["preprocess"].eval_files, stages["preprocess"].compression)
        return float(loaded.predict_examples(serialized)["probabilities"][:, 1].mean())

    plain, balanced = mean_positive(runs["plain"]), mean_positive(runs["balanced"])
    assert plain < 0.2 and balanced > plain + 0.2, (plain, balanced)
