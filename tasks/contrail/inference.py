"""Step 5, batch inference: Parquet or CSV in, predictions out as Parquet, by the SavedModel.

Scores with the production model (the one the blessing chose), one output part per input file,
exactly one output row per input row, each row carrying the model version that made it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from contrail import artifacts, data, drift, serving
from contrail.errors import InferenceError, UnknownCategoryError, translate
from contrail.layout import InferenceDir, ModelsLayout, expected_parts
from contrail.progress import Progress
from contrail.results import InferenceResult
from contrail.spec import load_spec
from contrail.step import StepRun

log = logging.getLogger(__name__)

STEP = "inference"
SLICE_ROWS = 65_536


@dataclass(frozen=True)
class InferenceArgs:
    spec_path: str
    source: str | list[str]  # the rendered inference.source: a glob, or a list of globs
    step_dir: str  # the step's folder, or with inference.parallelism > 1 this part's (InferenceDir.part)
    models_dir: str
    version: int | None = None  # None: the production version
    part: int = 0  # with inference.parallelism N, mapped task `part` scores files part, part+N, ...
    parts: int = 1


def run(args: InferenceArgs) -> InferenceResult:
    loaded = load_spec(args.spec_path)
    spec = loaded.spec
    out, models = InferenceDir(Path(args.step_dir)), ModelsLayout(Path(args.models_dir))
    version = args.version if args.version is not None else models.production_version()
    if version is None:
        raise InferenceError(
            f"{models.production}: expected a production model, found none (nothing was promoted yet; a first "
            "model outside export.promote_if.thresholds is published but not promoted)",
            path=str(models.production),
        )
    every = data.resolve_files(args.source, field=f"{loaded.path.name}: inference.source")
    numbered = list(enumerate(every))[args.part :: args.parts]
    files = [f for _, f in numbered]
    if not files:
        log.info("Part %d of %d: %d file(s) in all, none for this part", args.part, args.parts, len(every))
    inputs = data.fingerprints(files)
    fp = artifacts.fingerprint(
        {
            "step": STEP,
            "version": version,
            "inputs": inputs,
            "key": spec.data.key,
            "drift": None if spec.data.drift is None else spec.data.drift.model_dump(),
        }
    )
    step = StepRun(STEP, InferenceResult, out.path, fp, inputs)
    if (done := step.reusable()) is not None:
        return done

    model = serving.load_version_dir(models.version(version).path, version)
    schema = model.schema
    features = {f["name"]: f for f in schema["features"]}
    columns = data.required_columns(
        {n: spec.data.features[n] for n in features if n in spec.data.features}, None, spec.data.key
    )
    # By the model's encodings (not the spec's now), for the columns read.
    kinds = {n: _summary_kind(f) for n, f in features.items() if n in spec.data.features}
    summaries = []
    with step.staged() as staging:
        rows_in, outputs = 0, {}
        progress = _progress(files, spec.inference.format)
        for k, (i, path) in enumerate(numbered):
            table = data.read_table(path, spec.inference.format, columns)
            _check_categories(table, features, spec.data.max_oov_fraction, path)
            summaries = [drift.merge_summaries([*summaries, drift.summarize(table, kinds)])]
            pieces = []
            for offset in range(0, max(table.num_rows, 1), SLICE_ROWS):  # slices: steady progress in big files
                pieces.append(_score(model, table.slice(offset, SLICE_ROWS), schema, spec.inference.batch_size, path))
                if progress.unit == "rows":
                    progress.advance(min(SLICE_ROWS, table.num_rows - offset))
            predictions = pa.concat_tables(pieces)
            if spec.data.key is not None:
                predictions = predictions.add_column(0, spec.data.key, table.column(spec.data.key))
            if predictions.num_rows != table.num_rows:
                raise InferenceError(
                    f"{path}: expected {table.num_rows} prediction rows, found {predictions.num_rows}", path=str(path)
                )
            name = InferenceDir.predictions_name(i)
            pq.write_table(predictions, staging / name, write_page_checksum=True)
            outputs[name] = table.num_rows
            rows_in += table.num_rows
            if progress.unit == "bytes":
                progress.advance(path.size)
            log.info("Scored %s: %d rows (%d/%d files)", path.name, table.num_rows, k + 1, len(files))
        source = args.source if isinstance(args.source, str) else ", ".join(args.source)
        skew = _skew(summaries, models.version(version).path, spec, source)
        artifacts.write_json_atomic(InferenceDir(staging).skew, skew)
        result = InferenceResult(
            step_dir=str(out.path),
            fingerprint=fp,
            predictions=[str(out.path / n) for n in outputs],
            rows=rows_in,
            model_version=version,
        )
        step.commit(staging, result, [*outputs, out.skew.name], outputs)
    log.info("Wrote %d predictions with model version %d to %s", rows_in, version, out.path)
    return result


def _summary_kind(feature: dict) -> str:
    """How a feature of the model's schema is summarized for skew: by type, a text by its tokens."""
    encoding = feature.get("encoding") or {}
    return f"text:{encoding['ngrams']}" if encoding.get("kind") == "text" else feature["type"]


def _skew(summaries: list[dict], version_dir: Path, spec, where: str) -> dict:
    """The scored data against the scoring model's training statistics (`data.drift`)."""
    baseline = drift.model_stats(version_dir)
    return drift.compare(
        summaries[0] if summaries else {},
        None if baseline is None else baseline["features"],
        None if spec.data.drift is None else spec.data.drift.model_dump(),
        what="skew",
        against=f"model v{version_dir.name}'s training data"
        if baseline is not None
        else f"model v{version_dir.name} keeps no statistics (exported before versions kept them)",
        where=where or str(version_dir),
    )


def _progress(files: list[data.InputFile], fmt: str) -> Progress:
    """Rows when the total is known up front (Parquet footers), else bytes."""
    if fmt == "parquet":
        try:
            total = sum(
                pq.read_metadata(where, filesystem=fs).num_rows for fs, where in (f.filesystem() for f in files)
            )
            return Progress(log, "inference: scoring", total, unit="rows")
        except (OSError, pa.ArrowException):
            pass  # read_table reports a broken file properly
    return Progress(log, "inference: scoring", sum(f.size for f in files), unit="bytes")


def collect(step_dir: Path) -> tuple[InferenceResult, float] | None:
    """The inference result of a run and its seconds: the step's manifest, or with
    `inference.parallelism` > 1 the parts' manifests combined. None until every part has committed."""
    out = InferenceDir(step_dir)
    manifest = artifacts.read_manifest(out.path)
    if manifest is not None:
        return InferenceResult.from_xcom(manifest["result"], source=str(out.manifest)), manifest["timings"]["seconds"]
    parts = out.parts()
    if not parts:
        return None
    manifests = [m for m in (artifacts.read_manifest(p.path) for p in parts) if m is not None]
    if len(manifests) != expected_parts(parts[0].path):
        return None
    results = [InferenceResult.from_xcom(m["result"], source=str(out.path)) for m in manifests]
    combined = InferenceResult(
        step_dir=str(out.path),
        fingerprint=artifacts.fingerprint({"parts": [r.fingerprint for r in results]}),
        predictions=sorted(p for r in results for p in r.predictions),
        rows=sum(r.rows for r in results),
        model_version=results[0].model_version,
        parts=len(results),
        reused=all(r.reused for r in results),
    )
    return combined, max(m["timings"]["seconds"] for m in manifests)  # the parts run side by side


def _score(
    model: serving.LoadedModel, table: pa.Table, schema: dict, batch_size: int, path: data.InputFile
) -> pa.Table:
    inputs = serving.signature_inputs(table, schema, source=str(path))
    try:
        outputs = model.predict_arrays(inputs, batch_size=batch_size)
    except Exception as exc:  # broad: TF raises its own error types; name the rows that failed
        raise translate(
            exc, InferenceError, f"{path}: the model could not score rows of this file", path=str(path)
        ) from exc
    values = outputs.get("value", outputs.get("probabilities"))
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        raise InferenceError(
            f"{path}: expected a finite prediction for every row, found {int(bad.sum())} non-finite, "
            f"the first at row {row}",
            path=str(path),
        )
    return serving.prediction_table(outputs, schema, model.version)


def _check_categories(table: pa.Table, features: dict, tolerance: float, path: data.InputFile) -> None:
    """Values outside the model's vocabulary beyond what its cut (`max_vocab_size`) left out of
    the train split, by more than `tolerance`: the data being scored drifted from the train data.

    The model keeps its vocabulary, not every train value, so the cut's share is the train
    split's (`cut_fraction` in the schema), an estimate of the share it has here."""
    for name, feature in features.items():
        kind = feature["type"]
        if kind not in ("string", "string_list", "int_list") or (feature.get("encoding") or {}).get("kind") in (
            "hashed",
            "text",
        ):
            continue  # hashed: any value gets a bin; text: new words are what text has
        known = set(feature["vocabulary"])
        column = table.column(name) if kind == "string" else pc.list_flatten(table.column(name))
        values = [v for v in column.to_pylist() if v not in (None, "")]  # a list's items
        unknown = [v for v in values if v not in known]
        share, cut = (len(unknown) / len(values) if values else 0.0), feature.get("cut_fraction", 0.0)
        if share - cut > tolerance:
            raise UnknownCategoryError(
                f"Feature {name!r} in {path}: expected at most {tolerance:.1%} values outside the model's "
                f"vocabulary beyond the {cut:.1%} its max_vocab_size cut (data.max_oov_fraction), found "
                f"{share:.1%}, e.g. {unknown[0]!r}",
                path=str(path),
                field=f"data.features.{name}",
            )
