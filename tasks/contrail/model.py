"""The Keras model around the user's `build_fn`, and the tf.data input pipeline that feeds it.

The model takes *raw* named features, one tensor per spec feature, and holds all
preprocessing in its graph: imputation and normalization for numbers, vocabulary lookup with
an out-of-vocabulary bucket for strings. `build_fn(features, params)` receives the encoded
features (float tensors of shape [batch, width]) and returns a hidden tensor of shape
[batch, units]; Contrail adds the head and loss for the label's task.

Importing this module imports TensorFlow: only the train, export and inference steps do.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from contrail import layout
from contrail.errors import TrainingError, translate
from contrail.spec import LoadedSpec, TrainSpec
from contrail.tfrecord import INT_MISSING, PACKED_FEATURE

_DTYPES = {
    "float": tf.float32,
    "int": tf.int64,
    "string": tf.string,
    "float_list": tf.float32,
    "int_list": tf.int64,
    "string_list": tf.string,
}
# Lists of any length reach the model padded to the batch's longest list with these values (the
# `predict` signature takes them padded the same way): a missing list is all padding.
LIST_PADDING = {"int_list": int(INT_MISSING), "string_list": ""}


class NumericEncoder(keras.layers.Layer):
    """Impute missing values with the train mean, then standardize: raw [B] → [B, 1]."""

    def __init__(self, mean: float, std: float, is_int: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.mean, self.std, self.is_int = float(mean), float(std), is_int

    def call(self, x):
        if self.is_int:
            missing = ops.equal(x, INT_MISSING)
            x = ops.cast(x, "float32")
        else:
            x = ops.cast(x, "float32")
            missing = ops.logical_not(ops.isfinite(x))
        x = ops.where(missing, self.mean, x)
        return ops.expand_dims((x - self.mean) / self.std, -1)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std, "is_int": self.is_int}


class ImputeMissing(keras.layers.Layer):
    """A raw number [B] as float32, its missing values (NaN, or an int's missing marker) as `fill`."""

    def __init__(self, fill: float, is_int: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.fill, self.is_int = float(fill), is_int

    def call(self, x):
        missing = ops.equal(x, INT_MISSING) if self.is_int else None
        x = ops.cast(x, "float32")
        missing = missing if self.is_int else ops.logical_not(ops.isfinite(x))
        return ops.where(missing, self.fill, x)

    def get_config(self):
        return {**super().get_config(), "fill": self.fill, "is_int": self.is_int}


class VectorEncoder(keras.layers.Layer):
    """A float vector [B, L]: missing elements (NaN) → `fill`, then (x - shift) / scale."""

    def __init__(self, fill: float, shift: float, scale: float, **kwargs):
        super().__init__(**kwargs)
        self.fill, self.shift, self.scale = float(fill), float(shift), float(scale)

    def call(self, x):
        x = ops.cast(x, "float32")
        x = ops.where(ops.isfinite(x), x, self.fill)
        return (x - self.shift) / self.scale

    def get_config(self):
        return {**super().get_config(), "fill": self.fill, "shift": self.shift, "scale": self.scale}


class MeanOverItems(keras.layers.Layer):
    """An embedding bag's combiner: the mean of the item embeddings [B, T, D] whose index [B, T]
    is not padding (0), → [B, D]; a row with no items is zeros."""

    def call(self, embedded, index):
        present = ops.expand_dims(ops.cast(ops.greater(index, 0), embedded.dtype), -1)
        total = ops.sum(embedded * present, axis=1)
        return total / ops.maximum(ops.sum(present, axis=1), 1.0)


class LogEncoder(keras.layers.Layer):
    """sign(x)·log10(1 + |x|), standardized with its train moments; missing → the train mean: [B] → [B, 1]."""

    def __init__(self, mean: float, log_mean: float, log_std: float, is_int: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.mean, self.log_mean, self.log_std, self.is_int = float(mean), float(log_mean), float(log_std), is_int
        self.impute = ImputeMissing(mean, is_int)

    def call(self, x):
        x = self.impute(x)
        t = ops.sign(x) * ops.log(1.0 + ops.abs(x)) / math.log(10.0)
        return ops.expand_dims((t - self.log_mean) / self.log_std, -1)

    def get_config(self):
        return {
            **super().get_config(),
            "mean": self.mean,
            "log_mean": self.log_mean,
            "log_std": self.log_std,
            "is_int": self.is_int,
        }


def load_build_fn(loaded: LoadedSpec) -> Callable[[dict, dict], Any]:
    """Import `model.build_fn` (module:function), looking beside the spec first."""
    spec = loaded.spec.model
    where = f"{loaded.path.name}: model.build_fn={spec.build_fn!r}"
    local = loaded.model_dir / (spec.module.replace(".", "/") + ".py")
    try:
        if local.is_file():
            name = f"contrail_user_{loaded.spec.name}_{spec.module.replace('.', '_')}"
            module_spec = importlib.util.spec_from_file_location(name, local)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(spec.module)
    except Exception as exc:  # broad: any error in user code must name the spec that points at it
        raise translate(
            exc,
            TrainingError,
            f"{where}: cannot import module {spec.module!r}",
            path=str(local),
            field="model.build_fn",
        ) from exc
    fn = getattr(module, spec.function, None)
    if not callable(fn):
        raise TrainingError(f"{where}: expected a function {spec.function!r} in {module.__file__}, found none")
    return fn


def build_model(schema: dict, loaded: LoadedSpec, params: dict, build_fn: Callable | None = None) -> keras.Model:
    """The trainable model: raw named inputs → preprocessing → build_fn → task head."""
    build_fn = build_fn or load_build_fn(loaded)
    inputs, encoded = {}, {}
    for feature in schema["features"]:
        name, kind = feature["name"], feature["type"]
        shape = {"float_list": (feature.get("length"),), "int_list": (None,), "string_list": (None,)}.get(kind, ())
        inputs[name] = keras.Input(shape=shape, dtype=_DTYPES[kind].name, name=name)
        encoded[name] = encode_feature(feature, inputs[name])
    for cross in schema.get("crosses", ()):
        encoded[cross["name"]] = _encode_cross(cross, [inputs[n] for n in cross["features"]])
    where = f"{loaded.path.name}: model.build_fn={loaded.spec.model.build_fn!r}"
    try:
        hidden = build_fn(dict(encoded), dict(params))
    except Exception as exc:  # broad: user code can raise anything; say where it came from
        raise translate(exc, TrainingError, f"{where} raised", sep=" ", field="model.build_fn") from exc
    shape = getattr(hidden, "shape", None)
    if shape is None or len(shape) != 2:
        raise TrainingError(
            f"{where}: expected a Keras tensor of shape (batch, units), found "
            f"{type(hidden).__name__} with shape {tuple(shape) if shape is not None else None}"
        )
    outputs = _head(hidden, schema["label"])
    return keras.Model(inputs=inputs, outputs=outputs, name=loaded.spec.name.replace("-", "_"))


def encode_feature(feature: dict, raw):
    """A raw feature tensor [B] ([B, length] for a float_list) → what build_fn receives, by the
    schema's `encoding` (absent: one-hot over the vocabulary for strings, standardized for
    numbers, as before encodings)."""
    name, kind = feature["name"], feature["type"]
    encoding = feature.get("encoding") or {"kind": "one_hot" if kind == "string" else "normalized"}
    how, layer = encoding["kind"], f"encode_{name}"
    if kind == "float_list":  # [B, length]: missing → the train mean, then standardized (or not)
        std = feature["std"] if how == "normalized" else 1.0
        shift = feature["mean"] if how == "normalized" else 0.0
        return VectorEncoder(feature["mean"], shift, std, name=layer)(raw)
    if kind in LIST_PADDING:
        return _encode_items(feature, encoding, raw)
    if how in ("one_hot", "category", "embedding"):
        return _encode_lookup(feature, encoding, raw)
    if how in ("text", "hashed"):
        return _encode_tokens(feature, encoding, raw)
    is_int = kind == "int"
    if how == "discretized":
        value = ImputeMissing(feature["mean"], is_int=is_int, name=f"impute_{name}")(raw)
        index = keras.layers.Discretization(bin_boundaries=feature["boundaries"], name=f"bucket_{name}")(value)
        return keras.layers.CategoryEncoding(
            num_tokens=len(feature["boundaries"]) + 1, output_mode="one_hot", name=layer
        )(index)
    if how == "log":
        return LogEncoder(feature["mean"], feature["log_mean"], feature["log_std"], is_int=is_int, name=layer)(raw)
    if how == "none":
        return ops.expand_dims(ImputeMissing(feature["mean"], is_int=is_int, name=layer)(raw), -1)
    return NumericEncoder(feature["mean"], feature["std"], is_int=is_int, name=layer)(raw)


def _encode_lookup(feature: dict, encoding: dict, raw):
    """one_hot, category or embedding: a vocabulary lookup with an out-of-vocabulary index."""
    name, kind, layer = feature["name"], feature["type"], f"encode_{feature['name']}"
    vocabulary = feature["vocabulary"] or (["<none>"] if kind == "string" else [0])
    if kind == "string":
        lookup = keras.layers.StringLookup
    else:  # its OOV token is -1 by default, which a vocabulary of ints may well hold
        lookup = functools.partial(keras.layers.IntegerLookup, oov_token=int(INT_MISSING))
    if encoding["kind"] != "embedding":
        return lookup(vocabulary=vocabulary, num_oov_indices=1, output_mode="one_hot", name=layer)(raw)
    # Internal layers get prefixes of their own: `encode_<a>_index` could be feature a_index's.
    index = lookup(vocabulary=vocabulary, num_oov_indices=1, name=f"index_{name}")(raw)
    return _embed(index, len(vocabulary) + 1, encoding["dim"], layer)


def _encode_items(feature: dict, encoding: dict, raw):
    """An int_list or string_list [B, T] (padded with LIST_PADDING): multi-hot over the
    vocabulary of its items (one slot for items outside it), or an embedding bag (`embedding`:
    the mean of its items' embeddings, zeros for an empty list). Padding is never an item."""
    name, kind, layer = feature["name"], feature["type"], f"encode_{feature['name']}"
    pad = LIST_PADDING[kind]
    if kind == "string_list":
        vocabulary = [v for v in feature["vocabulary"] if v != pad] or ["<none>"]
        lookup = functools.partial(keras.layers.StringLookup, mask_token=pad)
    else:  # the OOV token only names the OOV slot; it must differ from the padding
        vocabulary = [v for v in feature["vocabulary"] if v not in (pad, pad + 1)] or [0]
        lookup = functools.partial(keras.layers.IntegerLookup, mask_token=pad, oov_token=pad + 1)
    if encoding["kind"] != "embedding":
        return lookup(vocabulary=vocabulary, num_oov_indices=1, output_mode="multi_hot", name=layer)(raw)
    index = lookup(vocabulary=vocabulary, num_oov_indices=1, name=f"index_{name}")(raw)  # 0 padding, 1 OOV
    embedded = keras.layers.Embedding(len(vocabulary) + 2, encoding["dim"], name=f"embed_{name}")(index)
    return MeanOverItems(name=layer)(embedded, index)


def _encode_tokens(feature: dict, encoding: dict, raw):
    """text (TextVectorization over the train vocabulary) or hashed (one-hot or embedded bins)."""
    name, layer = feature["name"], f"encode_{feature['name']}"
    if encoding["kind"] == "text":
        return keras.layers.TextVectorization(
            standardize="lower_and_strip_punctuation",
            split="whitespace",
            ngrams=encoding["ngrams"] if encoding["ngrams"] > 1 else None,
            output_mode=encoding["output"],
            output_sequence_length=encoding.get("sequence_length"),
            vocabulary=feature["vocabulary"],
            idf_weights=feature.get("idf") if encoding["output"] == "tf_idf" else None,
            name=layer,
        )(raw)
    index = keras.layers.Hashing(num_bins=encoding["bins"], name=f"hash_{name}")(raw)
    if "dim" in encoding:
        return _embed(index, encoding["bins"], encoding["dim"], layer)
    return keras.layers.CategoryEncoding(num_tokens=encoding["bins"], output_mode="one_hot", name=layer)(index)


def _embed(index, tokens: int, dim: int, name: str):
    """Indices [B] → an embedding [B, dim]."""
    return keras.layers.Embedding(tokens, dim, name=name)(index)


def _encode_cross(cross: dict, raws: list):
    """Two or more string or int features hashed together into `bins`: one-hot, or embedded with `dim`."""
    layer = f"cross_{cross['name']}"
    if "dim" in cross:
        index = keras.layers.HashedCrossing(num_bins=cross["bins"], name=f"crosshash_{cross['name']}")(tuple(raws))
        return _embed(index, cross["bins"], cross["dim"], layer)
    return keras.layers.HashedCrossing(num_bins=cross["bins"], output_mode="one_hot", name=layer)(tuple(raws))


def _head(hidden, label: dict):
    task = label["task"]
    if task == "multiclass":
        return keras.layers.Dense(len(label["classes"]), activation="softmax", name="head")(hidden)
    if task == "binary":
        return keras.layers.Dense(1, activation="sigmoid", name="head")(hidden)
    # Regression: predict the standardized target, and scale back inside the graph.
    z = keras.layers.Dense(1, name="head")(hidden)
    return keras.layers.Rescaling(scale=label["std"], offset=label["mean"], name="denormalize")(z)


def compile_model(model: keras.Model, label: dict, train: TrainSpec, params: dict, steps_per_execution: int) -> None:
    task = label["task"]
    learning_rate = float(params.get("learning_rate", 1e-3))
    optimizer = {
        "adam": keras.optimizers.Adam,
        "adamw": keras.optimizers.AdamW,
        "sgd": keras.optimizers.SGD,
        "rmsprop": keras.optimizers.RMSprop,
    }[train.optimizer](learning_rate=learning_rate)
    if task == "multiclass":
        loss = keras.losses.SparseCategoricalCrossentropy()
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    elif task == "binary":
        loss = keras.losses.BinaryCrossentropy()
        metrics = [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")]
    else:
        loss = keras.losses.MeanSquaredError()
        metrics = [keras.metrics.MeanAbsoluteError(name="mae"), keras.metrics.RootMeanSquaredError(name="rmse")]
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics, steps_per_execution=steps_per_execution)
    model.optimizer.build(model.trainable_variables)


def feature_parse_spec(schema: dict) -> dict[str, tf.io.FixedLenFeature | tf.io.RaggedFeature]:
    """How to parse the raw features out of a serialized `tf.Example` (lists of any length as
    ragged: `parse_examples` pads them)."""
    spec = {}
    for feature in schema["features"]:
        kind, nullable = feature["type"], feature["nullable"]
        if kind in LIST_PADDING:  # an absent list reads as an empty one
            spec[feature["name"]] = tf.io.RaggedFeature(_DTYPES[kind], row_splits_dtype=tf.int64)
            continue
        if kind == "float_list":  # a vector of `length` floats; a missing one reads as NaNs
            length = feature["length"]
            default = [math.nan] * length if nullable else None
            spec[feature["name"]] = tf.io.FixedLenFeature([length], tf.float32, default_value=default)
            continue
        default = {"float": math.nan, "int": int(INT_MISSING), "string": ""}[kind] if nullable else None
        spec[feature["name"]] = tf.io.FixedLenFeature([], _DTYPES[kind], default_value=default)
    return spec


def parse_examples(serialized, parse_spec: dict) -> dict:
    """`tf.io.parse_example`, with each ragged list padded to the batch's longest one (ints with
    the int64 minimum, strings with ""): the dense tensors the model and `predict` take."""
    parsed = tf.io.parse_example(serialized, parse_spec)
    for name, value in parsed.items():
        if isinstance(value, tf.RaggedTensor):
            pad = "" if value.dtype == tf.string else int(INT_MISSING)
            parsed[name] = value.to_tensor(default_value=pad)
    return parsed


def predict_signature(schema: dict) -> dict[str, tf.TensorSpec]:
    """The `predict` signature's inputs: [batch] per scalar feature, [batch, length] per
    float_list, [batch, longest list] per int_list or string_list (padded)."""
    shapes = {"float_list": lambda f: [None, f["length"]], "int_list": lambda f: [None, None]}
    shapes["string_list"] = shapes["int_list"]
    return {
        f["name"]: tf.TensorSpec(shapes.get(f["type"], lambda f: [None])(f), _DTYPES[f["type"]], name=f["name"])
        for f in schema["features"]
    }


def label_parse_spec(schema: dict) -> dict[str, tf.io.FixedLenFeature]:
    label = schema["label"]
    dtype = {"float": tf.float32, "int": tf.int64, "string": tf.string}[label["dtype"]]
    return {label["column"]: tf.io.FixedLenFeature([], dtype)}


def label_encoder(schema: dict) -> Callable[[tf.Tensor], tf.Tensor]:
    """Raw label → training target: class index for classification, float for regression.

    Class lookup is a comparison against the class list rather than a lookup table: a table is
    external state, and a tf.data iterator that captures one cannot be checkpointed.
    """
    label = schema["label"]
    if label["task"] == "regression":
        return lambda y: tf.cast(y, tf.float32)
    keys = tf.constant(label["classes"], dtype=tf.string if label["dtype"] == "string" else tf.int64)

    def encode(y):
        hits = tf.equal(tf.expand_dims(y, -1), keys)
        index = tf.where(tf.reduce_any(hits, axis=-1), tf.argmax(tf.cast(hits, tf.int32), axis=-1), -1)
        return tf.cast(index, tf.float32) if label["task"] == "binary" else index

    return encode


def make_dataset(
    files: Sequence[str],
    schema: dict,
    *,
    batch_size: int,
    compression: str,
    training: bool,
    shuffle_buffer: int = 10_000,
    seed: int | None = None,
    records: int | None = None,
    packed: Sequence[str] = (),
    class_weights: Sequence[float] | None = None,
) -> tf.data.Dataset:
    """Records → (raw features, target) batches, parsed a whole batch at a time.

    `packed` names the features stored together as `PACKED_FEATURE` (the train files of a
    spec with two or more non-nullable float features): parsing one list instead of k scalar
    features is most of what `parse_example` costs. Eval files keep one feature per column,
    the layout the serving signature reads.

    Training shuffles records when they fit in `shuffle_buffer`. Beyond that, per-record
    shuffling costs more than the model step (measured: 70k examples/s against 250k), so
    whole batches read from interleaved shards are shuffled instead; preprocess already wrote
    the rows in a seeded random order, so a batch is a random sample of the split.
    """
    parse = {**feature_parse_spec(schema), **label_parse_spec(schema)}
    if packed:  # the train files hold these float features as one list: one lookup, not k
        for name in packed:
            del parse[name]
        parse[PACKED_FEATURE] = tf.io.FixedLenFeature([len(packed)], tf.float32)
    label_column = schema["label"]["column"]
    encode_label = label_encoder(schema)
    weights = None if class_weights is None else tf.constant(class_weights, tf.float32)
    compression_type = "GZIP" if compression == "gzip" else ""
    if training and records is not None and records > shuffle_buffer:
        ds = tf.data.Dataset.from_tensor_slices(list(files)).shuffle(len(files), seed=seed).repeat()
        ds = ds.interleave(
            lambda f: tf.data.TFRecordDataset(f, compression_type=compression_type, buffer_size=1 << 20).batch(
                batch_size
            ),
            cycle_length=min(2, len(files)),
            num_parallel_calls=min(2, len(files)),
            deterministic=True,
        )
        ds = ds.shuffle(max(2, shuffle_buffer // batch_size), seed=seed, reshuffle_each_iteration=True)
    else:
        ds = tf.data.TFRecordDataset(
            list(files), compression_type=compression_type, num_parallel_reads=min(2, len(files))
        )
        if training:
            ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
        ds = ds.batch(batch_size, drop_remainder=False)

    def to_pair(serialized):
        parsed = parse_examples(serialized, parse)
        if packed:
            dense = parsed.pop(PACKED_FEATURE)
            parsed.update({name: dense[:, i] for i, name in enumerate(packed)})
        target = encode_label(parsed.pop(label_column))
        if weights is not None:  # train.class_weight: each example weighs its class's weight
            return parsed, target, tf.gather(weights, tf.cast(target, tf.int64))
        return parsed, target

    ds = ds.map(to_pair, num_parallel_calls=2, deterministic=True).prefetch(2)
    options = tf.data.Options()
    # Measured here (DESIGN.md §9): with autotune on, passes stalled for 5.12 s or 10.24 s.
    options.autotune.enabled = False
    options.deterministic = True
    return ds.with_options(options)


def read_serialized(files: Sequence[str], compression: str, limit: int | None = None) -> np.ndarray:
    """Serialized records from TFRecord files, as a numpy array of bytes."""
    ds = tf.data.TFRecordDataset(list(files), compression_type="GZIP" if compression == "gzip" else "")
    if limit is not None:
        ds = ds.take(limit)
    return np.array([r.numpy() for r in ds], dtype=object)


def raw_features_from_serialized(serialized: np.ndarray, schema: dict) -> dict[str, np.ndarray]:
    parsed = parse_examples(tf.constant(serialized, dtype=tf.string), feature_parse_spec(schema))
    return {k: v.numpy() for k, v in parsed.items()}


def features_from_serialized(serialized: np.ndarray, schema: dict, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The raw values of the features `names` (missing ones as the schema's defaults)."""
    if not names:
        return {}
    spec = {k: v for k, v in feature_parse_spec(schema).items() if k in names}
    parsed = parse_examples(tf.constant(serialized, dtype=tf.string), spec)
    return {k: v.numpy() for k, v in parsed.items()}


def labels_from_serialized(serialized: np.ndarray, schema: dict) -> np.ndarray:
    parsed = tf.io.parse_example(tf.constant(serialized, dtype=tf.string), label_parse_spec(schema))
    return label_encoder(schema)(parsed[schema["label"]["column"]]).numpy()


def distribution_strategy(name: str) -> tf.distribute.Strategy:
    """The spec's `train.strategy`. `mirrored` replicates over every GPU, or over every logical
    CPU when there is no GPU (so it can be exercised on a CPU-only machine)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    # Reads the cluster from TF_CONFIG; without it, a single worker.
    return tf.distribute.MultiWorkerMirroredStrategy()


def save_warm_start(model: keras.Model, directory: Path) -> None:
    """Save the weights, and the layout they fit, so a later run can warm-start from them."""
    directory.mkdir(parents=True, exist_ok=True)
    tf.train.Checkpoint(model=model).write(layout.checkpoint_prefix(directory))
    weights = [[w.path, list(w.shape)] for w in model.weights]
    (directory / layout.WARM_START_LAYOUT).write_text(json.dumps(weights))


def warm_start(model: keras.Model, version_dir: Path) -> None:
    """Load the weights a published version was exported with, if the architecture matches."""
    directory = layout.VersionDir(version_dir).warm_start
    try:
        saved = json.loads((directory / layout.WARM_START_LAYOUT).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        where, expected = str(directory), "warm-start weights in the model version"
        raise translate(exc, TrainingError, where, expected=expected, found="none", path=str(directory)) from exc
    ours = [[w.path, list(w.shape)] for w in model.weights]
    # Compare positions and shapes: Keras numbers layer names per process (dense, dense_1, ...).
    for i in range(max(len(saved), len(ours))):
        theirs = saved[i] if i < len(saved) else None
        mine = ours[i] if i < len(ours) else None
        if theirs is None or mine is None or theirs[1] != mine[1]:
            layer = (mine or theirs)[0].rsplit("/", 1)[0]
            raise TrainingError(
                f"warm start from {version_dir}: layer {layer!r} (weight {i}) differs: the production model has "
                f"{_describe(theirs)}, this model has {_describe(mine)}"
            )
    tf.train.Checkpoint(model=model).read(layout.checkpoint_prefix(directory)).expect_partial()


def _describe(entry: list | None) -> str:
    return "no such weight" if entry is None else f"{entry[0]} with shape {tuple(entry[1])}"


def set_seeds(seed: int, deterministic: bool) -> None:
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
