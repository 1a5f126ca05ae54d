"""Step 4, export: a versioned SavedModel with two signatures, checked, then maybe promoted.

1. Rebuild the model from the schema, restore the selected checkpoint.
2. Save a SavedModel with `serving_default` (serialized `tf.Example`s) and `predict` (one
   tensor per raw feature). Both run the same in-graph preprocessing.
3. Check before publishing: both signatures agree with each other and with the in-memory model
   on the eval rows, and the directory loads and predicts the same in a fresh process.
4. Publish as `models/<next integer>/` with one rename; a rerun of the same Airflow run finds
   its version by `contrail.json` and never publishes a second one.
5. Bless: score candidate and production on the same eval rows, under a lock, and move
   `models/production.json` only if the candidate is better by `export.promote_if`.
"""

from __future__ import annotations

import contextlib
import fcntl
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contrail import artifacts, serving
from contrail.early_stopping import is_better
from contrail.errors import ExportError, InferenceError
from contrail.spec import load_spec, metric_mode

log = logging.getLogger(__name__)

STEP = "export"
PARITY_TOLERANCE = 1e-6
PARITY_ROWS = 10_000


@dataclass(frozen=True)
class ExportArgs:
    spec_path: str
    preprocess: dict
    train: dict
    best: dict  # the select_best step's XCom result
    step_dir: str
    models_dir: str
    run_key: str
    dag_id: str = ""
    run_id: str = ""
    params: dict = field(default_factory=dict)
    force_promote: bool = False


def run(args: ExportArgs) -> dict:
    started = time.time()
    loaded = load_spec(args.spec_path)
    params = {**loaded.spec.model.params, **args.params}
    step_dir, models_dir = Path(args.step_dir), Path(args.models_dir)
    fp = artifacts.fingerprint(
        {
            "step": STEP,
            "best": args.best["fingerprint"],
            "promote_if": loaded.spec.export.promote_if.model_dump(),
            "force_promote": args.force_promote,
        }
    )
    reused = artifacts.reusable_result(step_dir, fp)
    if reused is not None:
        return reused
    schema = artifacts.read_json(Path(args.preprocess["schema"]))
    eval_files = args.preprocess["eval_files"]
    compression = args.preprocess["compression"]

    from contrail import model as model_lib

    serialized = model_lib.read_serialized(eval_files, compression, limit=PARITY_ROWS)
    targets = model_lib.labels_from_serialized(serialized, schema)
    models_dir.mkdir(parents=True, exist_ok=True)
    version = _version_for_run(models_dir, args.run_key, fp)
    if version is None:
        version, parity = _export_new_version(args, loaded, params, schema, serialized, fp, models_dir)
    else:
        log.info("Run %s already published version %d; reusing it", args.run_key, version)
        parity = artifacts.read_json(models_dir / str(version) / serving.INFO_FILE)["parity"]

    candidate = serving.load_version_dir(models_dir / str(version), version)
    blessing = promote(
        models_dir,
        candidate,
        serialized,
        targets,
        loaded.spec.export.promote_if.model_dump(),
        force=args.force_promote,
        run_key=args.run_key,
    )
    with artifacts.staged_dir(step_dir) as staging:
        artifacts.write_json_atomic(staging / "blessing.json", blessing)
        result = {
            "step_dir": str(step_dir),
            "model_dir": str(models_dir / str(version)),
            "version": version,
            "promoted": blessing["promoted"],
            "blessing": blessing["decision"],
            "production_version": blessing["production_version"],
            "candidate_score": blessing["candidate_score"],
            "production_score": blessing["production_score"],
            "parity_max_abs_diff": parity["max_abs_diff"],
            "fingerprint": fp,
            "reused": False,
        }
        artifacts.write_manifest(
            staging,
            step=STEP,
            fingerprint_=fp,
            inputs={"best": args.best["fingerprint"]},
            outputs=artifacts.describe_outputs(staging, ["blessing.json"]),
            result={**result, "parity": parity},
            started=started,
        )
    log.info("Exported version %d: %s", version, blessing["reason"])
    return result


def _version_for_run(models_dir: Path, run_key: str, fp: str) -> int | None:
    """The version this run already published, found by its `contrail.json`."""
    for path in models_dir.iterdir():
        if not path.name.isdigit():
            continue
        info_path = path / serving.INFO_FILE
        try:
            info = artifacts.read_json(info_path)
        except (OSError, json.JSONDecodeError):
            continue
        if info.get("run_key") == run_key and info.get("fingerprint") == fp:
            return int(path.name)
    return None


def _export_new_version(args, loaded, params, schema, serialized, fp, models_dir) -> tuple[int, dict]:
    import keras
    import tensorflow as tf

    from contrail import model as model_lib

    keras.utils.set_random_seed(loaded.spec.train.seed)
    model = model_lib.build_model(schema, loaded, params)
    checkpoint = Path(args.best["checkpoint"])
    try:
        tf.train.Checkpoint(model=model).read(model_lib.checkpoint_path(checkpoint)).expect_partial()
    except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as exc:
        raise ExportError(f"{checkpoint}: cannot restore the selected checkpoint: {exc}") from exc

    staging = models_dir / f".staging-{uuid.uuid4().hex[:8]}"
    try:
        write_saved_model(model, schema, staging)
        artifacts.write_json_atomic(staging / serving.SCHEMA_FILE, schema)
        model_lib.save_warm_start(model, staging / model_lib.WARM_START_DIR)
        reference = _keras_outputs(model, model_lib.raw_features_from_serialized(serialized, schema), schema)
        parity = check_parity(staging, serialized, schema, reference)
        parity.update(check_fresh_process(staging, args.preprocess, reference))
        info = {
            "pipeline": loaded.spec.name,
            "run_key": args.run_key,
            "dag_id": args.dag_id,
            "run_id": args.run_id,
            "fingerprint": fp,
            "spec_hash": loaded.spec.hash(),
            "data_fingerprint": args.preprocess["fingerprint"],
            "checkpoint": str(checkpoint),
            "selected": {k: args.best[k] for k in ("eval_index", "step", "monitor", "value")},
            "metrics": _selected_metrics(args.best),
            "params": params,
            "parity": parity,
            "created": time.time(),
            "libraries": _library_versions(),
            "signatures": signature_description(schema),
        }
        artifacts.write_json_atomic(staging / serving.INFO_FILE, info)
        version = _publish(staging, models_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
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
        lambda examples: outputs(tf.io.parse_example(examples, parse_spec)),
        input_signature=[tf.TensorSpec([None], tf.string, name="examples")],
    )
    archive.add_endpoint(
        "predict",
        outputs,
        input_signature=[{n: tf.TensorSpec([None], f.dtype, name=n) for n, f in parse_spec.items()}],
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
            "dtype": {"float": "float32", "int": "int64", "string": "string"}[f["type"]],
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
    from contrail.model import head_outputs

    return head_outputs(out, schema["label"]["task"])


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


def check_fresh_process(path: Path, preprocess: dict, reference: dict) -> dict:
    """Load the SavedModel in a new Python process and compare its outputs with ours."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "outputs.npz"
        command = [
            sys.executable,
            "-m",
            "contrail.verify_export",
            str(path),
            out.as_posix(),
            json.dumps(
                {"files": preprocess["eval_files"], "compression": preprocess["compression"], "limit": PARITY_ROWS}
            ),
        ]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        if proc.returncode != 0:
            raise ExportError(
                f"{path}: the SavedModel failed to load and predict in a fresh process "
                f"(exit {proc.returncode}): {proc.stderr.strip()[-2000:]}"
            )
        with np.load(out) as fresh:
            got = {k: fresh[k] for k in fresh.files}
    diff = _compare("the in-memory model", got, reference, f"{path}: reloaded in a fresh process")
    return {"fresh_process": True, "fresh_process_max_abs_diff": diff}


def _publish(staging: Path, models_dir: Path) -> int:
    """Rename `staging` to the next free integer version. A concurrent export that takes the
    same number makes our rename fail (the target is not empty), and we try the next one."""
    for _ in range(1000):
        existing = [int(p.name) for p in models_dir.iterdir() if p.name.isdigit()]
        version = max(existing, default=0) + 1
        try:
            os.rename(staging, models_dir / str(version))
        except OSError:
            continue
        return version
    raise ExportError(f"{models_dir}: could not find a free version number to publish to")


@contextlib.contextmanager
def promotion_lock(models_dir: Path):
    """Serialize promotions of one pipeline across processes (and, on NFS, across hosts)."""
    lock_path = models_dir / ".promotion.lock"
    with lock_path.open("a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def promote(
    models_dir: Path,
    candidate: serving.LoadedModel,
    serialized: np.ndarray,
    targets: np.ndarray,
    rule: dict,
    *,
    force: bool = False,
    run_key: str = "",
) -> dict:
    """Bless the candidate if it beats production on the same eval rows; always say why."""
    task = candidate.schema["label"]["task"]
    metric = rule["metric"]
    mode = metric_mode(metric, rule["mode"])
    with promotion_lock(models_dir):
        production_path = models_dir / "production.json"
        current = _read_production(production_path)
        if current is not None and int(current["version"]) == candidate.version:
            log.info("Version %d is already production", candidate.version)
            return {**current["blessing"], "promoted": True}
        candidate_score = serving.score(candidate.predict_examples(serialized), targets, task)
        production_score, note, schema_change = None, None, None
        if current is not None:
            production_dir = models_dir / str(current["version"])
            try:
                production = serving.load_version_dir(production_dir, int(current["version"]))
            except InferenceError as exc:
                if not force:
                    raise ExportError(
                        f"{production_dir}: the production model named by {production_path} cannot be loaded, "
                        f"so the candidate v{candidate.version} cannot be compared and nothing was promoted "
                        f"({exc}). Restore that version, or trigger with force_promote."
                    ) from exc
                production = None
                note = f"the production model at {production_dir} cannot be loaded"
            if production is not None:
                schema_change = _schema_change(production.schema, candidate.schema)
                try:
                    production_score = serving.score(production.predict_examples(serialized), targets, task)
                except Exception as exc:  # broad: TF raises its own types when the schema changed shape
                    note = f"production v{current['version']} cannot score this run's eval data ({type(exc).__name__})"
        value = candidate_score[metric]
        if force:
            decision, promoted = "forced", True
            reason = f"forced by the force_promote param ({metric}={value:.6g})"
        elif current is None:
            decision, promoted = "first_model", True
            reason = f"first model for this pipeline ({metric}={value:.6g})"
        elif production_score is None:
            decision, promoted = "better", True
            reason = f"{note}; promoting the candidate ({metric}={value:.6g})"
        elif is_better(value, production_score[metric], mode, rule["min_improvement"]):
            decision, promoted = "better", True
            reason = (
                f"{metric} {value:.6g} beats production v{current['version']} {production_score[metric]:.6g} "
                f"({mode}, min_improvement={rule['min_improvement']})"
            )
        else:
            decision, promoted = "not_better", False
            reason = (
                f"{metric} {value:.6g} does not beat production v{current['version']} "
                f"{production_score[metric]:.6g} ({mode}, min_improvement={rule['min_improvement']})"
            )
        if schema_change:
            reason += (
                f"; the schema changed ({_describe_change(schema_change)}), so both were scored on this run's eval data"
            )
        blessing = {
            "decision": decision,
            "promoted": promoted,
            "reason": reason,
            "metric": metric,
            "mode": mode,
            "candidate_version": candidate.version,
            "candidate_score": candidate_score,
            "production_version": candidate.version if promoted else int(current["version"]),
            "previous_version": int(current["version"]) if current else None,
            "production_score": production_score,
            "eval_rows": int(len(targets)),
            "compared_on": f"the eval split of run {run_key} ({len(targets)} rows), scored by both models",
            "schema_change": schema_change,
            "note": note,
            "run_key": run_key,
            "time": time.time(),
        }
        if promoted:
            record = {
                "version": candidate.version,
                "path": str(models_dir / str(candidate.version)),
                "blessing": blessing,
                "history": [
                    *(current or {}).get("history", []),
                    {k: blessing[k] for k in ("decision", "candidate_version", "previous_version", "time")},
                ],
            }
            artifacts.write_json_atomic(production_path, record)
        return blessing


def _selected_metrics(best: dict) -> dict:
    """Train and eval metrics of the selected evaluation, from select_best's best.json."""
    try:
        return artifacts.read_json(Path(best["best"]))["metrics"]
    except (OSError, KeyError, json.JSONDecodeError):
        return {best["monitor"]: best["value"]}


def _read_production(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        record = artifacts.read_json(path)
        int(record["version"])
        return record
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ExportError(
            f"{path}: expected a production record with an integer 'version', found an unreadable file "
            f"({type(exc).__name__}: {exc}); nothing was promoted"
        ) from exc


def _schema_change(old: dict, new: dict) -> dict | None:
    """Features added, removed or retyped between the production model and the candidate."""
    before = {f["name"]: f["type"] for f in old["features"]}
    after = {f["name"]: f["type"] for f in new["features"]}
    change = {
        "added": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
        "retyped": sorted(n for n in set(before) & set(after) if before[n] != after[n]),
    }
    return change if any(change.values()) else None


def _describe_change(change: dict) -> str:
    parts = [f"{kind} {', '.join(names)}" for kind, names in change.items() if names]
    return "; ".join(parts)


def _library_versions() -> dict:
    import keras
    import pyarrow
    import tensorflow as tf

    from contrail import __version__

    return {
        "contrail": __version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "pyarrow": pyarrow.__version__,
        "python": platform.python_version(),
    }
