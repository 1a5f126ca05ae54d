"""Load an exported Contrail model and predict on plain Python data.

    from contrail.serving import load_model
    model = load_model("artifacts/penguins")            # the production version
    model = load_model("artifacts/penguins", version=3)  # or a given one
    df = model.predict(pandas_df)                        # or a pyarrow Table, or a list of dicts

The model is a TensorFlow SavedModel in the TF Serving layout (`models/<version>/`). Its
`predict` signature takes one tensor per raw feature; its `serving_default` signature takes
serialized `tf.Example`s. Neither needs any code from this project to run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from contrail import artifacts
from contrail.data import float_values, list_matrix
from contrail.errors import InferenceError, translate, translating
from contrail.layout import ModelsLayout, PipelineLayout, VersionDir
from contrail.tfrecord import INT_MISSING


def signature_inputs(table: pa.Table, schema: dict, *, source: str = "input") -> dict[str, np.ndarray]:
    """Columns of `table` as the `predict` signature's inputs: missing values become NaN
    (floats), the int64 minimum (ints) or the empty string (strings)."""
    inputs = {}
    for feature in schema["features"]:
        name, kind = feature["name"], feature["type"]
        if name not in table.column_names:
            raise InferenceError(
                f"{source}: expected feature column {name!r}, found only {', '.join(map(repr, table.column_names))}"
            )
        column = table.column(name)
        if kind == "float_list":  # [rows, length]; a missing vector is a row of NaN
            inputs[name] = list_matrix(column, feature["length"]).astype(np.float32)
        elif kind in ("int_list", "string_list"):
            inputs[name] = ListColumn(column, kind, source, name)
        elif kind == "float":
            inputs[name] = float_values(column).astype(np.float32)
        elif kind == "int":
            values = column.to_pylist()
            inputs[name] = np.array([INT_MISSING if v is None else int(v) for v in values], dtype=np.int64)
        else:
            inputs[name] = np.array(["" if v is None else str(v) for v in column.to_pylist()], dtype=object)
    return inputs


@dataclass(frozen=True)
class ListColumn:
    """An int_list or string_list column for `predict`, padded a batch at a time (a slice gives
    [rows, longest list in the slice]), so one long list widens its own batch only."""

    column: pa.ChunkedArray | pa.Array
    kind: str
    source: str = "input"
    name: str = ""

    def __len__(self) -> int:
        return len(self.column)

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(len(self.column))
        return padded_lists(self.column.slice(start, stop - start), self.kind, f"{self.source}: feature {self.name!r}")


def padded_lists(column: pa.ChunkedArray | pa.Array, kind: str, what: str = "a list column") -> np.ndarray:
    """An int_list or string_list column as [rows, longest list], padded as `predict` takes it:
    the int64 minimum for ints, "" for strings (a missing list is a row of padding). An item
    itself missing is an error: it has no padding that is not also a value."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], pa.list_(pa.null()))
    if pa.types.is_null(column.type):  # no list at all
        column = pa.array([None] * len(column), pa.list_(pa.int64() if kind == "int_list" else pa.string()))
    if pc.list_flatten(column).null_count:
        raise InferenceError(f"{what}: expected every item of a list present, found a missing item")
    lengths = np.asarray(pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False), np.int64)
    items = pc.list_flatten(column)  # a null list's span, if any, is left out
    if kind == "int_list":
        out = np.full((len(lengths), int(lengths.max(initial=0))), INT_MISSING, dtype=np.int64)
        values = np.asarray(items.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)
    else:
        out = np.full((len(lengths), int(lengths.max(initial=0))), "", dtype=object)
        values = np.asarray(items.cast(pa.string()).to_numpy(zero_copy_only=False), dtype=object)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    out[rows, np.arange(len(values)) - np.repeat(np.cumsum(lengths) - lengths, lengths)] = values
    return out


@dataclass
class LoadedModel:
    """A loaded SavedModel version with its schema."""

    path: Path
    version: int
    schema: dict
    info: dict
    _module: Any

    @property
    def predict_fn(self):
        return self._module.signatures["predict"]

    @property
    def examples_fn(self):
        return self._module.signatures["serving_default"]

    def predict_arrays(self, inputs: Mapping[str, np.ndarray], batch_size: int = 4096) -> dict[str, np.ndarray]:
        """Run the `predict` signature over numpy inputs, in batches."""
        import tensorflow as tf

        n = len(next(iter(inputs.values()))) if inputs else 0
        chunks: dict[str, list[np.ndarray]] = {}
        for start in range(0, n, batch_size):
            batch = {k: tf.constant(v[start : start + batch_size]) for k, v in inputs.items()}
            for key, value in self.predict_fn(**batch).items():
                chunks.setdefault(key, []).append(value.numpy())
        return {k: np.concatenate(v) for k, v in chunks.items()}

    def predict_examples(self, serialized: np.ndarray, batch_size: int = 4096) -> dict[str, np.ndarray]:
        """Run the `serving_default` signature over serialized `tf.Example`s, in batches."""
        return self.predict_batches(
            serialized[start : start + batch_size] for start in range(0, len(serialized), batch_size)
        )

    def predict_batches(self, batches: Iterable[np.ndarray]) -> dict[str, np.ndarray]:
        """Run the `serving_default` signature over batches of serialized `tf.Example`s (a split
        streamed from its files): memory holds the outputs and one batch, not the records."""
        import tensorflow as tf

        chunks: dict[str, list[np.ndarray]] = {}
        for batch in batches:
            for key, value in self.examples_fn(examples=tf.constant(batch, dtype=tf.string)).items():
                chunks.setdefault(key, []).append(value.numpy())
        return {k: np.concatenate(v) for k, v in chunks.items()}

    def predict(self, data: Any, batch_size: int = 4096):
        """Predict on a pandas DataFrame, a pyarrow Table, a list of dicts or a dict of lists.

        Returns a pandas DataFrame with one row per input row.
        """
        table = _as_table(data)
        outputs = self.predict_arrays(signature_inputs(table, self.schema), batch_size=batch_size)
        return prediction_table(outputs, self.schema, self.version).to_pandas()


def _as_table(data: Any) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, Mapping):
        return pa.table(dict(data))
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        return pa.Table.from_pylist(list(data))
    try:
        return pa.Table.from_pandas(data, preserve_index=False)
    except (TypeError, pa.ArrowException) as exc:
        expected = "a pandas DataFrame, a pyarrow Table, a list of dicts or a dict of lists"
        raise translate(exc, InferenceError, "predict", expected=expected, found=type(data).__name__) from exc


def prediction_table(outputs: Mapping[str, np.ndarray], schema: dict, version: int) -> pa.Table:
    """Signature outputs as columns: class, index and probabilities, or the value."""
    n = len(next(iter(outputs.values())))
    columns: dict[str, Any] = {}
    if schema["label"]["task"] == "regression":
        columns["prediction"] = pa.array(outputs["value"].astype(np.float64))
    else:
        columns["predicted_class"] = pa.array([v.decode() for v in outputs["class_label"]])
        columns["predicted_index"] = pa.array(outputs["class_index"].astype(np.int64))
        probabilities = outputs["probabilities"].astype(np.float32)
        columns["probabilities"] = pa.FixedSizeListArray.from_arrays(
            pa.array(probabilities.reshape(-1)), probabilities.shape[1]
        )
    columns["model_version"] = pa.array(np.full(n, version, dtype=np.int64))
    return pa.table(columns)


def load_model(pipeline_dir: str | Path, version: int | None = None, *, models_dir: Path | None = None) -> LoadedModel:
    """Load the production model of a pipeline (or `version`), checking it is complete."""
    pipeline_dir = Path(pipeline_dir)
    models = (
        ModelsLayout(Path(models_dir)) if models_dir else PipelineLayout(pipeline_dir.parent, pipeline_dir.name).models
    )
    if version is None:
        version = models.production_version()
        if version is None:
            raise InferenceError(
                f"{models.production}: expected a production model, found none; run the pipeline's export step first",
                path=str(models.production),
            )
    return load_version_dir(models.version(version).path, int(version))


def load_version_dir(path: Path, version: int, *, published: bool = True) -> LoadedModel:
    """Load one version folder; `published=False` for a staged export not yet given its record."""
    import tensorflow as tf

    folder = VersionDir(path)
    for required in (folder.saved_model, folder.schema, *((folder.info,) if published else ())):
        if not required.is_file():
            raise InferenceError(
                f"{path}: expected a complete model version with {required.name}, found it missing", path=str(path)
            )
    # broad: TF raises many types for a damaged SavedModel
    with translating(InferenceError, f"{path}: the SavedModel cannot be loaded", path=str(path)):
        module = tf.saved_model.load(str(path))
    return LoadedModel(
        path=path,
        version=version,
        schema=artifacts.read_json(folder.schema),
        info=artifacts.read_json(folder.info) if published else {},
        _module=module,
    )


def head_outputs(raw: np.ndarray, task: str) -> dict[str, np.ndarray]:
    """The Keras head's output as the signatures name it: probabilities (two columns for a
    binary task) and class index, or the regression value."""
    if task == "regression":
        return {"value": raw.reshape(-1)}
    probabilities = np.concatenate([1.0 - raw.reshape(-1, 1), raw.reshape(-1, 1)], axis=1) if task == "binary" else raw
    return {"probabilities": probabilities, "class_index": probabilities.argmax(axis=1)}
