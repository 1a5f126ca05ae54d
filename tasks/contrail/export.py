"""Step 4, export: a versioned SavedModel with two signatures, checked, then maybe promoted.

1. Rebuild the model from the schema, restore the selected checkpoint.
2. Save a SavedModel with `serving_default` (serialized `tf.Example`s) and `predict` (one
   tensor per raw feature). Both run the same in-graph preprocessing.
3. Check before publishing: both signatures agree with each other and with the in-memory model
   on a seeded sample of the eval rows (`PARITY_ROWS`, stratified by label), and the directory
   loads and predicts the same in a fresh process.
4. Publish as `models/<next integer>/` with one rename; a rerun of the same Airflow run finds
   its version by `contrail.json` and never publishes a second one.
5. Bless (`contrail.blessing`): score candidate and production on the whole eval split, under a
   lock, and move `models/production.json` only if the candidate is better by `export.promote_if`
   (with `confidence`, by the lower bound of a paired bootstrap) and passes its gates.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contrail import __version__, artifacts, blessing, evaluation, layout, serving, tfrecord
from contrail.errors import ExportError, translating
from contrail.layout import ExportDir, ModelsLayout, VersionDir
from contrail.results import ExportResult, PreprocessResult, SelectBestResult, TrainResult
from contrail.spec import load_spec
from contrail.step import StepRun

log = logging.getLogger(__name__)

STEP = "export"
PARITY_TOLERANCE = 1e-6
PARITY_ROWS = 10_000  # the parity checks' sample; the blessing scores every eval row


@dataclass(frozen=True)
class ExportArgs:
    spec_path: str
    preprocess: PreprocessResult
    train: TrainResult
    best: SelectBestResult
    step_dir: str
    models_dir: str
    run_key: str
    dag_id: str = ""
    run_id: str = ""
    params: dict = field(default_factory=dict)
    force_promote: bool = False


def run(args: ExportArgs) -> ExportResult:
    loaded = load_spec(args.spec_path)
    params = {**loaded.spec.model.params, **args.params, **args.best.params}  # a search's: the best trial's
    out, models = ExportDir(Path(args.step_dir)), ModelsLayout(Path(args.models_dir))
    fp = artifacts.fingerprint(
        {
            "step": STEP,
            "best": args.best.fingerprint,
            "promote_if": loaded.spec.export.promote_if.model_dump(),
            "evaluate": loaded.spec.evaluate.model_dump(),
            "force_promote": args.force_promote,
        }
    )
    step = StepRun(STEP, ExportResult, out.path, fp, {"best": args.best.fingerprint})
    if (done := step.reusable()) is not None:
        return done
    schema = artifacts.read_json(Path(args.preprocess.schema))

    files, compression = args.preprocess.eval_files, args.preprocess.compression

    def eval_batches() -> Iterator[np.ndarray]:
        return tfrecord.iter_serialized(files, compression=compression)

    # The blessing scores the whole eval split; the parity checks a seeded sample of it, each
    # label class (a regression's label decile) in its share.
    slice_features = sorted({name for key in loaded.spec.evaluate.slice_keys() for name in key})
    targets, columns = _labels_and_columns(eval_batches(), schema, slice_features)
    sample = evaluation.stratified_sample(targets, schema["label"]["task"], PARITY_ROWS, loaded.spec.train.seed)
    serialized = _rows(eval_batches(), sample)
    models.path.mkdir(parents=True, exist_ok=True)
    # The version this run already published from the same checkpoint and params (a retry, or a
    # rerun with other promotion settings): published once, blessed again.
    version = next(
        (
            v
            for v, info in models.versions_of_run(args.run_key)
            if info.get("checkpoint") == str(Path(args.best.checkpoint_path)) and info.get("params") == params
        ),
        None,
    )
    if version is None:
        version, parity = _export_new_version(args, loaded, params, schema, serialized, fp, models)
    else:
        log.info("Run %s already published version %d; reusing it", args.run_key, version)
        parity = artifacts.read_json(models.version(version).info)["parity"]

    candidate = serving.load_version_dir(models.version(version).path, version)
    record = blessing.promote(
        models,
        candidate,
        blessing.EvalSplit(eval_batches, targets, columns),
        loaded.spec.export.promote_if.model_dump(),
        evaluate={**loaded.spec.evaluate.model_dump(), "slices": loaded.spec.evaluate.slice_keys()},
        force=args.force_promote,
        run_key=args.run_key,
    )
    with step.staged() as staging:
        artifacts.write_json_atomic(ExportDir(staging).blessing, record)
        result = ExportResult(
            step_dir=str(out.path),
            fingerprint=fp,
            model_dir=str(models.version(version).path),
            version=version,
            promoted=record["promoted"],
            decision=record["decision"],
            production_version=record["production_version"],
            candidate_score=record["candidate_score"],
            production_score=record["production_score"],
            parity=parity,
        )
        step.commit(staging, result, [out.blessing.name])
    log.info("Exported version %d: %s", version, record["reason"])
    return result


def _export_new_version(args, loaded, params, schema, serialized, fp, models: ModelsLayout) -> tuple[int, dict]:
    import keras
    import tensorflow as tf

    from contrail import model as model_lib

    keras.utils.set_random_seed(loaded.spec.train.seed)
    model = model_lib.build_model(schema, loaded, params)
    checkpoint = Path(args.best.checkpoint_path)
    with translating(
        ExportError,
        str(checkpoint),
        expected="a selected checkpoint that restores",
        path=str(checkpoint),
        catch=(tf.errors.NotFoundError, tf.errors.DataLossError, ValueError),
    ):
        tf.train.Checkpoint(model=model).read(layout.checkpoint_prefix(checkpoint)).expect_partial()

    staging = VersionDir(models.staging(uuid.uuid4().hex[:8]))
    try:
        write_saved_model(model, schema, staging.path)
        artifacts.write_json_atomic(staging.schema, schema)
        # The version keeps its training statistics: later runs measure drift and skew against them.
        shutil.copyfile(args.preprocess.stats, staging.stats)
        model_lib.save_warm_start(model, staging.warm_start)
        reference = _keras_outputs(model, model_lib.raw_features_from_serialized(serialized, schema), schema)
        parity = check_parity(staging.path, serialized, schema, reference)
        parity.update(check_fresh_process(staging.path, serialized, reference))
        info = {
            "pipeline": loaded.spec.name,
            "run_key": args.run_key,
            "dag_id": args.dag_id,
            "run_id": args.run_id,
            "fingerprint": fp,
            "spec_hash": loaded.spec.hash(),
            "data_fingerprint": args.preprocess.fingerprint,
            "checkpoint": str(checkpoint),
            "selected": {
                "eval_index": args.best.eval_index,
                "step": args.best.step,
                "monitor": args.best.monitor,
                "value": args.best.value,
            },
            "metrics": _selected_metrics(args.best),
            "params": params,
            **({"trial": args.best.trial, "train_settings": args.best.train_settings} if args.best.trial else {}),
            "parity": parity,
            "created": time.time(),
            "libraries": _library_versions(),
            "signatures": signature_description(schema),
        }
        artifacts.write_json_atomic(staging.info, info)
        version = _publish(staging.path, models)
    except BaseException:
        shutil.rmtree(staging.path, ignore_errors=True)
        raise
    return version, parity


def write_saved_model(model, schema: dict, path: Path) -> None:
    """Save `model` with the `serving_default` and `predict` signatures generated from `schema`."""
    import keras
    import tensorflow as tf

    from contrail import model as model_lib

    parse_spec = model_lib.feature_parse_spec(schema)
    label = schema["label"]
    classes = tf.constant([str(c) for c in label.get("classes", [])], dtype=tf.string)

    def outputs(features):
        raw = model(features, training=False)
        if label["task"] == "regression":
            return {"value": tf.reshape(raw, [-1])}
        if label["task"] == "binary":
            positive = tf.reshape(raw, [-1, 1])
            probabilities = tf.concat([1.0 - positive, positive], axis=1)
        else:
            probabilities = raw
        index = tf.argmax(probabilities, axis=1)
        return {"probabilities": probabilities, "class_index": index, "class_label": tf.gather(classes, index)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        lambda examples: outputs(model_lib.parse_examples(examples, parse_spec)),
        input_signature=[tf.TensorSpec([None], tf.string, name="examples")],
    )
    archive.add_endpoint(
        "predict",
        outputs,
        input_signature=[model_lib.predict_signature(schema)],
    )
    with contextlib.redirect_stdout(_LogWriter()):
        archive.write_out(str(path), verbose=False)


class _LogWriter:
    def write(self, text: str) -> None:
        if text.strip():
            log.debug("%s", text.rstrip())

    def flush(self) -> None:
        pass


def signature_description(schema: dict) -> dict:
    inputs = {
        f["name"]: {
            "dtype": {
                "float": "float32",
                "int": "int64",
                "string": "string",
                "float_list": f"float32 [batch, {f.get('length')}]",
                "int_list": "int64 [batch, longest list], padded with -9223372036854775808",
                "string_list": 'string [batch, longest list], padded with ""',
            }[f["type"]],
            "nullable": f["nullable"],
        }
        for f in schema["features"]
    }
    if schema["label"]["task"] == "regression":
        outputs = {"value": "float32 [batch]"}
    else:
        outputs = {
            "probabilities": "float32 [batch, classes]",
            "class_index": "int64 [batch]",
            "class_label": "string [batch]",
        }
    return {
        "serving_default": {"inputs": {"examples": "string [batch] of serialized tf.Example"}, "outputs": outputs},
        "predict": {"inputs": inputs, "outputs": outputs},
    }


def _keras_outputs(model, raw: dict, schema: dict) -> dict[str, np.ndarray]:
    import tensorflow as tf

    n = len(next(iter(raw.values())))
    out = np.concatenate(
        [
            model({k: tf.constant(v[i : i + 4096]) for k, v in raw.items()}, training=False).numpy()
            for i in range(0, n, 4096)
        ]
    )
    return serving.head_outputs(out, schema["label"]["task"])


def _compare(name: str, got: dict, want: dict, what: str) -> float:
    worst = 0.0
    for key, expected in want.items():
        if key not in got:
            raise ExportError(f"{what}: expected output {key!r}, found only {sorted(got)}")
        if expected.dtype.kind in "iu":
            mismatches = int(np.sum(got[key] != expected))
            if mismatches:
                raise ExportError(f"{what}: output {key!r} differs from {name} on {mismatches} rows")
            continue
        # 1e-6 absolute for values up to 1 (probabilities), relative beyond: float32 itself
        # resolves only ~4e-6 at 32.0, so a regression output in miles per gallon needs the scale.
        got_, want_ = got[key].astype(np.float64), expected.astype(np.float64)
        scaled = np.abs(got_ - want_) / np.maximum(1.0, np.abs(want_))
        diff = float(np.max(scaled)) if expected.size else 0.0
        if not diff <= PARITY_TOLERANCE:
            raise ExportError(
                f"{what}: output {key!r} differs from {name} by {diff:.3g} (relative beyond 1.0), "
                f"expected at most {PARITY_TOLERANCE}"
            )
        worst = max(worst, diff)
    return worst


def check_parity(path: Path, serialized: np.ndarray, schema: dict, reference: dict) -> dict:
    """Both signatures, and the in-memory model, agree on the eval rows."""
    from contrail import model as model_lib

    loaded = serving.load_version_dir(path, 0, published=False)
    by_examples = loaded.predict_examples(serialized)
    by_tensors = loaded.predict_arrays(model_lib.raw_features_from_serialized(serialized, schema))
    diff = _compare(
        "serving_default", by_tensors, {k: by_examples[k] for k in reference}, f"{path}: signature 'predict'"
    )
    diff = max(diff, _compare("the in-memory model", by_examples, reference, f"{path}: signature 'serving_default'"))
    return {"rows": int(len(serialized)), "max_abs_diff": diff, "tolerance": PARITY_TOLERANCE}


def check_fresh_process(path: Path, serialized: np.ndarray, reference: dict) -> dict:
    """Load the SavedModel in a new Python process and compare its outputs with ours."""
    with tempfile.TemporaryDirectory() as tmp:
        out, sample = Path(tmp) / "outputs.npz", Path(tmp) / "sample.tfrecord"
        tfrecord.write_shard(sample, serialized, compression="none")
        command = [
            sys.executable,
            "-m",
            "contrail.verify_export",
            str(path),
            out.as_posix(),
            json.dumps({"files": [sample.as_posix()], "compression": "none", "limit": None}),
        ]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        if proc.returncode != 0:
            raise ExportError(
                f"{path}: the SavedModel failed to load and predict in a fresh process "
                f"(exit {proc.returncode}): {proc.stderr.strip()[-2000:]}",
                path=str(path),
            )
        with np.load(out) as fresh:
            got = {k: fresh[k] for k in fresh.files}
    diff = _compare("the in-memory model", got, reference, f"{path}: reloaded in a fresh process")
    return {"fresh_process": True, "fresh_process_max_abs_diff": diff}


def _labels_and_columns(
    batches: Iterator[np.ndarray], schema: dict, names: Sequence[str]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The encoded labels of a split streamed in batches, and the raw values of `names`."""
    from contrail import model as model_lib

    targets, columns = [], {name: [] for name in names}
    for batch in batches:
        targets.append(model_lib.labels_from_serialized(batch, schema))
        for name, values in model_lib.features_from_serialized(batch, schema, names).items():
            columns[name].append(values)
    return np.concatenate(targets), {name: np.concatenate(parts) for name, parts in columns.items()}


def _rows(batches: Iterator[np.ndarray], indices: np.ndarray) -> np.ndarray:
    """The records at sorted `indices` of a split streamed in batches."""
    chosen, offset = [], 0
    for batch in batches:
        lo, hi = np.searchsorted(indices, [offset, offset + len(batch)])
        chosen.append(batch[indices[lo:hi] - offset])
        offset += len(batch)
    return np.concatenate(chosen) if chosen else np.array([], dtype=object)


def _publish(staging: Path, models: ModelsLayout) -> int:
    """Rename `staging` to the next free integer version. A concurrent export that takes the
    same number makes our rename fail (the target is not empty), and we try the next one."""
    for _ in range(1000):
        version = max(models.versions(), default=0) + 1
        try:
            os.rename(staging, models.version(version).path)
        except OSError:
            continue
        return version
    raise ExportError(f"{models.path}: could not find a free version number to publish to", path=str(models.path))


def _selected_metrics(best: SelectBestResult) -> dict:
    """Train and eval metrics of the selected evaluation, from select_best's best.json."""
    try:
        return artifacts.read_json(Path(best.best_file))["metrics"]
    except (OSError, KeyError, json.JSONDecodeError):
        return {best.monitor: best.value}


def _library_versions() -> dict:
    import keras
    import pyarrow
    import tensorflow as tf

    return {
        "contrail": __version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "pyarrow": pyarrow.__version__,
        "python": platform.python_version(),
    }
