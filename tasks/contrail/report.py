"""The run report: one self-contained HTML page per run, `runs/<run_key>/report.html`.

It is rebuilt from the run's committed artifacts after every step and at every evaluation, so
it is useful while training still runs (the page reloads itself until the run is complete).
Plots are inline SVG drawn here: the page loads nothing from the network, has no script, and
opens from disk, from the Airflow plugin, or from an e-mail attachment alike.

What it shows: every metric against the step (train and eval) with the early-stopping best, the
stopping point and the selected checkpoint marked; the stop reason, the patience and the best
value; the blessing with both models' scores; the data summary from stats.json; each step's
timing; the model version and the artifacts' paths.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contrail import artifacts, history, inference, layout
from contrail.layout import STEPS, RunLayout
from contrail.results import (
    ExportResult,
    PreprocessResult,
    SelectBestResult,
    StepResult,
    TrainResult,
)

log = logging.getLogger(__name__)

COLORS = {"train": "#4c78a8", "eval": "#e45756"}
# A search's trials, overlaid: one color each, in trial order (cycled past ten).
PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#eeca3b", "#b279a2", "#ff9da6", "#9d755d", "#bab0ac")


def _color(series: str) -> str:
    if series in COLORS:
        return COLORS[series]
    return PALETTE[int(series.rsplit("-", 1)[-1]) % len(PALETTE)] if series[-1:].isdigit() else "#888"


_RESULT_TYPES: dict[str, type[StepResult]] = {
    "preprocess": PreprocessResult,
    "train": TrainResult,
    "select_best": SelectBestResult,
    "export": ExportResult,
}


def write_report(run_dir: str | Path, spec: Any | None = None) -> Path | None:
    """Rebuild the report from what the run has committed so far. Never raises: a report is a
    view, and must not fail the step that refreshes it."""
    run = RunLayout(Path(run_dir))
    try:
        page = render(collect(run.path, spec))
        # A temporary name of its own: a search's trials refresh the same report side by side.
        tmp = run.report.with_name(f".{run.report.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(run.report)
        return run.report
    except Exception:  # broad: see the docstring
        log.warning("Could not write the run report under %s", run.path, exc_info=True)
        return None


def step_results(run: RunLayout) -> dict[str, StepResult | None]:
    """Each step's committed result (None for a step not committed yet), read from its manifest."""
    results: dict[str, StepResult | None] = {}
    for step, result_type in _RESULT_TYPES.items():
        manifest = artifacts.read_manifest(run.step(step))
        results[step] = result_type.from_xcom(manifest["result"], source=step) if manifest else None
    if results["train"] is None and run.select_best.best.is_file():  # a search: the chosen trial's
        trial = artifacts.read_json(run.select_best.best).get("trial")
        manifest = artifacts.read_manifest(run.trial(trial).path) if trial else None
        results["train"] = TrainResult.from_xcom(manifest["result"], source=trial) if manifest else None
    collected = inference.collect(run.inference.path)
    results["inference"] = collected[0] if collected else None
    return results


def trials(run: RunLayout) -> list[dict]:
    """A search's trials as far as they went: each one's plan entry and history, and from
    select_best (once it ran) its chosen value and how it stopped. Empty without a search."""
    plan_file = run.tune_plan / "plan.json"
    if not plan_file.is_file():
        return []
    plan = artifacts.read_json(plan_file)
    best_file = run.select_best.best
    chosen = artifacts.read_json(best_file) if best_file.is_file() else {}
    summaries = {t["trial"]: t for t in chosen.get("trials", [])}
    out = []
    for trial in plan["trials"]:
        folder = run.trial(trial["name"])
        manifest = artifacts.read_manifest(folder.path)
        out.append(
            {
                **trial,
                "history": history.read_history(folder.history) if folder.history.is_file() else [],
                "stop_reason": manifest["result"]["stop_reason"] if manifest else None,
                "summary": summaries.get(trial["name"]),
                "chosen": chosen.get("trial") == trial["name"],
                "objective": plan["objective"],
            }
        )
    return out


def latest_events(run: RunLayout) -> dict[str, dict]:
    """The newest event of each step: the latest execution's timing and whether it reused."""
    latest: dict[str, dict] = {}
    for event in artifacts.read_events(run.events):
        latest[event["step"]] = event
    return latest


def collect(run_dir: Path, spec: Any | None = None) -> dict:
    """Everything the report shows, read from the run's artifacts (all optional)."""
    run = RunLayout(Path(run_dir))
    results = step_results(run)
    events = artifacts.read_events(run.events)
    latest = latest_events(run)
    early = getattr(getattr(spec, "train", None), "early_stopping", None)
    searched = trials(run)
    chosen = next((t for t in searched if t["chosen"]), None)
    # A search: the chosen trial's training is the run's (step_results took its result).
    train_history = run.trial(chosen["name"]).history if chosen is not None else run.train.history
    return {
        "trials": searched,
        "pipeline": run.pipeline,
        "run_key": run.key,
        "run_id": events[-1]["run_id"] if events else run.key,
        "run_dir": str(run.path),
        "results": results,
        "history": history.read_history(train_history) if train_history.is_file() else [],
        "stats": artifacts.read_json(run.preprocess.stats) if run.preprocess.stats.is_file() else None,
        "blessing": artifacts.read_json(run.export.blessing) if run.export.blessing.is_file() else None,
        "drift": artifacts.read_json(run.preprocess.drift) if run.preprocess.drift.is_file() else None,
        "skew": _skews(run),
        "timings": {step: e["seconds"] for step, e in latest.items()},
        "reused": {step: e.get("reused", False) for step, e in latest.items()},
        "early_stopping": early.model_dump() if early is not None else None,
        "max_steps": getattr(getattr(spec, "train", None), "max_steps", None),
        "complete": all(results[s] for s in STEPS),
        "generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


# -- rendering ------------------------------------------------------------------------------
def render(info: dict) -> str:
    results = info["results"]
    done = [s for s in STEPS if results.get(s)]
    status = "complete" if info["complete"] else f"in progress ({', '.join(done) or 'no step'} done)"
    refresh = "" if info["complete"] else '<meta http-equiv="refresh" content="15">'
    sections = [
        _trials(info.get("trials") or []),
        _training(info),
        _plots(info),
        _blessing(info["blessing"]),
        _data(info["stats"], results.get("preprocess")),
        _drift(info.get("drift"), info.get("skew")),
        _timings(info),
        _artifacts(info),
    ]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{refresh}
<title>Contrail run report: {_e(info["pipeline"])} / {_e(info["run_id"])}</title>
<style>{CSS}</style></head>
<body>
<header><h1>{_e(info["pipeline"])} <span class="run">run {_e(info["run_id"])}</span></h1>
<p id="status" data-complete="{str(info["complete"]).lower()}">Status: {_e(status)}.
Generated {_e(info["generated"])}{"" if info["complete"] else "; this page reloads every 15 s"}.</p></header>
{"".join(sections)}
</body></html>
"""


def _training(info: dict) -> str:
    train, best, history = info["results"].get("train"), info["results"].get("select_best"), info["history"]
    if not history:
        return '<section id="training"><h2>Training</h2><p>No evaluation yet.</p></section>'
    last = history[-1]
    early = info["early_stopping"] or {}
    monitor = early.get("monitor") or (train.monitor if train else None) or "val_loss"
    rows = [
        ("Stop reason", train.stop_reason if train else "still training", "stop-reason"),
        (
            "Evaluations",
            f"{len(history)} (step {last['step']}" + (f" of {info['max_steps']})" if info["max_steps"] else ")"),
            "evaluations",
        ),
        ("Monitored metric", f"{monitor} ({early.get('mode', 'auto')})", "monitor"),
        (
            "Patience",
            f"{early.get('patience', '-')} evaluations, min_delta {early.get('min_delta', 0)}; "
            f"used {last['wait']} at the last evaluation",
            "patience",
        ),
        ("Early-stopping best", f"{_num(last['best'])} at evaluation {last['best_eval_index']}", "best-value"),
    ]
    if best:
        rows.append(
            (
                "Selected checkpoint",
                f"evaluation {best.eval_index} (step {best.step}), {best.monitor} = {_num(best.value)}",
                "selected",
            )
        )
    return '<section id="training"><h2>Training</h2>' + _table(rows) + "</section>"


def _plots(info: dict) -> str:
    history = info["history"]
    if not history:
        return ""
    best = info["results"].get("select_best")
    train = info["results"].get("train")
    marks = []
    if best:
        marks.append(("selected", best.step, f"selected (eval {best.eval_index})"))
    es_best = history[-1]["best_eval_index"]
    es_step = next((r["step"] for r in history if r["eval_index"] == es_best), None)
    if es_step is not None and (not best or es_step != best.step):
        marks.append(("es-best", es_step, f"early-stopping best (eval {es_best})"))
    if train and train.stop_reason == "early_stopping":
        marks.append(("early-stop", history[-1]["step"], f"early stop (eval {history[-1]['eval_index']})"))
    names = sorted({k.removeprefix("val_") for r in history for k in r["metrics"]})
    charts = []
    for name in names:
        series = {
            "train": [(r["step"], r["metrics"][name]) for r in history if name in r["metrics"]],
            "eval": [(r["step"], r["metrics"][f"val_{name}"]) for r in history if f"val_{name}" in r["metrics"]],
        }
        charts.append(_chart(name, series, marks))
    return '<section id="plots"><h2>Metrics by step</h2>' + "".join(charts) + "</section>"


def _trials(searched: list[dict]) -> str:
    """A search: every trial's params, objective, evaluations and how it stopped (halving's rung
    and rank), the chosen one marked; and the objective's curves of all trials overlaid."""
    if not searched:
        return ""
    goal = searched[0]["objective"]
    metric, sign = goal["metric"], (1 if goal["mode"] == "max" else -1)
    rows = []
    for t in searched:
        values = [r["metrics"][metric] for r in t["history"] if metric in r["metrics"]]
        best = max(values, key=lambda v: sign * v) if values else None
        halted = history.halving_stop(t["history"])
        stop = t["stop_reason"] or ("training" if t["history"] else "waiting")
        if halted:
            stop = f"halving at rung {halted['rung']} (evaluation {halted['eval_index']}): rank {halted['rank']} of {halted['of']}, best {halted['keep']} went on"
        settings = {**t["params"], **{f"train.{k}": v for k, v in t["train"].items()}}
        rows.append(
            f'<tr class="trial{" chosen" if t["chosen"] else ""}" data-trial="{_e(t["name"])}">'
            f"<td>{_e(t['name'])}{' (chosen)' if t['chosen'] else ''}</td>"
            f"<td>{_e(', '.join(f'{k}={v}' for k, v in settings.items()))}</td>"
            f'<td class="objective">{_num(best)}</td><td>{len(t["history"])}</td><td>{_e(stop)}</td></tr>'
        )
    table = (
        f'<table class="trials"><thead><tr><th>trial</th><th>params</th><th>best {_e(metric)}</th>'
        "<th>evaluations</th><th>stopped</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )
    series = {
        t["name"]: [(r["step"], r["metrics"][metric]) for r in t["history"] if metric in r["metrics"]] for t in searched
    }
    chart = _chart(metric, series, [])
    return (
        f'<section id="trials"><h2>Search: {len(searched)} trials, objective {_e(metric)} ({_e(goal["mode"])})</h2>'
        f"{table}{chart}</section>"
    )


@dataclass(frozen=True)
class _Frame:
    """A chart's drawing area and the data ranges it maps onto it."""

    x0: float
    x1: float
    y0: float
    y1: float
    width: int = 640
    height: int = 260
    left: int = 64
    right: int = 16
    top: int = 16
    bottom: int = 40

    def sx(self, x: float) -> float:
        return self.left + (x - self.x0) / (self.x1 - self.x0) * (self.width - self.left - self.right)

    def sy(self, y: float) -> float:
        return self.top + (self.y1 - y) / (self.y1 - self.y0) * (self.height - self.top - self.bottom)


def _chart(name: str, series: dict[str, list[tuple[int, float]]], marks: list) -> str:
    points = [p for s in series.values() for p in s if math.isfinite(p[1])]
    if not points:
        return ""
    xs, ys = [p[0] for p in points] + [m[1] for m in marks], [p[1] for p in points]
    y0, y1 = min(ys), max(ys)
    if y0 == y1:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = (y1 - y0) * 0.05
    f = _Frame(min(0, *xs), max(xs) or 1, y0 - pad, y1 + pad)
    parts = [
        f'<svg id="plot-{_e(name)}" class="plot" data-metric="{_e(name)}" viewBox="0 0 {f.width} {f.height}" '
        f'width="{f.width}" height="{f.height}" role="img" aria-label="{_e(name)} by step">',
        *_axes(f),
    ]
    for cls, step, label in marks:
        x = f.sx(step)
        parts.append(
            f'<line class="marker {cls}" data-step="{step}" x1="{x:.1f}" x2="{x:.1f}" y1="{f.top}" '
            f'y2="{f.height - f.bottom}"><title>{_e(label)}</title></line>'
        )
    for split, values in series.items():
        parts += _series(f, name, split, [(s, v) for s, v in values if math.isfinite(v)])
    parts.append("</svg>")
    labels = {"eval": f"eval (val_{name})", "train": "train"}
    legend = " ".join(
        f'<span class="key" style="--c:{_color(s)}">{_e(labels.get(s, s))}</span>' for s in series if series[s]
    )
    legend += "".join(f' <span class="key mark {cls}">{_e(label)}</span>' for cls, _, label in marks)
    return f'<figure><figcaption>{_e(name)}</figcaption>{"".join(parts)}<div class="legend">{legend}</div></figure>'


def _axes(f: _Frame) -> list[str]:
    """The frame, five value grid lines with their ticks, five step ticks and the axis label."""
    parts = [
        f'<rect x="{f.left}" y="{f.top}" width="{f.width - f.left - f.right}" height="{f.height - f.top - f.bottom}" '
        'class="frame"/>'
    ]
    for i in range(5):
        value = f.y0 + (f.y1 - f.y0) * i / 4
        y = f.sy(value)
        parts.append(f'<line x1="{f.left}" x2="{f.width - f.right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{f.left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{_num(value, 3)}</text>')
    for i in range(5):
        step = f.x0 + (f.x1 - f.x0) * i / 4
        parts.append(
            f'<text x="{f.sx(step):.1f}" y="{f.height - f.bottom + 16}" class="tick" text-anchor="middle">{step:,.0f}</text>'
        )
    parts.append(
        f'<text x="{(f.left + f.width - f.right) / 2}" y="{f.height - 6}" class="axis" text-anchor="middle">step</text>'
    )
    return parts


def _series(f: _Frame, name: str, split: str, finite: list[tuple[int, float]]) -> list[str]:
    """One split's line and its points, each point titled with its value."""
    if not finite:
        return []
    path = " ".join(f"{f.sx(s):.1f},{f.sy(v):.1f}" for s, v in finite)
    parts = [f'<polyline class="line {split}" points="{path}" stroke="{_color(split)}"/>']
    for s, v in finite:
        parts.append(
            f'<circle class="point {split}" cx="{f.sx(s):.1f}" cy="{f.sy(v):.1f}" r="3" fill="{_color(split)}" '
            f'data-step="{s}" data-value="{v!r}"><title>{split} {_e(name)} at step {s}: {_num(v)}</title></circle>'
        )
    return parts


def _blessing(blessing: dict | None) -> str:
    if not blessing:
        return '<section id="blessing"><h2>Promotion</h2><p>Not exported yet.</p></section>'
    metric = blessing["metric"]
    candidate = (blessing.get("candidate_score") or {}).get(metric)
    production = (blessing.get("production_score") or {}).get(metric)
    rows = [
        (
            "Decision",
            f'<b id="decision" data-decision="{_e(blessing["decision"])}">{_e(blessing["decision"])}</b> '
            f"({'promoted' if blessing['promoted'] else 'not promoted'})",
            None,
        ),
        ("Reason", _e(blessing.get("reason", "")), None),
        ("Compared on", _e(blessing.get("compared_on", "")), None),
        (
            f"Candidate v{blessing['candidate_version']} {_e(metric)}",
            f'<span id="candidate-score">{_num(candidate)}</span>',
            None,
        ),
        (
            f"Production{' v' + str(blessing['previous_version']) if blessing.get('previous_version') else ''} {_e(metric)}",
            f'<span id="production-score">{_num(production)}</span>',
            None,
        ),
        (
            "Production version now",
            "none: nothing promoted yet"
            if blessing["production_version"] is None
            else str(blessing["production_version"]),
            None,
        ),
    ]
    if bootstrap := blessing.get("bootstrap"):
        rows.append(
            (
                f"Improvement, {bootstrap['confidence']:.0%} bounds",
                f'<span id="bootstrap">{_num(bootstrap["improvement"])} '
                f"[{_num(bootstrap['lower'])}, {_num(bootstrap['upper'])}]</span> "
                f"({bootstrap['samples']:,} paired resamples, seed {bootstrap['seed']})",
                None,
            )
        )
    for metric, gate in sorted((blessing.get("thresholds") or {}).items()):
        bounds = ", ".join(f"{k} {_num(v)}" for k, v in gate.items() if v is not None)
        value = (blessing.get("candidate_score") or {}).get(metric)
        rows.append((f"Gate {_e(metric)}", f"{bounds}: candidate {_num(value)}", None))
    if blessing.get("schema_change"):
        rows.append(("Schema change", _e(json.dumps(blessing["schema_change"])), None))
    return (
        '<section id="blessing"><h2>Promotion</h2>'
        + _table(rows, escape=False)
        + _metric_table(blessing)
        + _slice_table(blessing)
        + "</section>"
    )


def _metric_table(blessing: dict) -> str:
    """Every metric the blessing computed, for both models."""
    candidate, production = blessing.get("candidate_score") or {}, blessing.get("production_score") or {}
    body = "".join(
        f"<tr><td>{_e(name)}</td><td>{_num(value)}</td><td>{_num(production.get(name))}</td></tr>"
        for name, value in candidate.items()
    )
    return (
        '<table id="metrics"><thead><tr><th>metric (whole eval split)</th><th>candidate</th><th>production</th>'
        f"</tr></thead><tbody>{body}</tbody></table>"
    )


def _slice_table(blessing: dict) -> str:
    """Per slice: rows, both models' promote metric, and how much worse the candidate is."""
    slices = blessing.get("slices") or []
    if not slices:
        return ""
    metric = blessing["metric"]
    body = "".join(
        f"<tr><td>{_e(s['name'])}</td><td>{s['rows']:,}</td>"
        f"<td>{_num((s.get('candidate') or {}).get(metric))}</td>"
        f"<td>{_num((s.get('production') or {}).get(metric))}</td>"
        f"<td>{_num(s.get('regression'))}</td></tr>"
        for s in slices
    )
    return (
        f'<table id="slices"><thead><tr><th>slice</th><th>rows</th><th>candidate {_e(metric)}</th>'
        f"<th>production {_e(metric)}</th><th>regression</th></tr></thead><tbody>{body}</tbody></table>"
    )


VIOLATED = ' class="violated"'


def _skews(run: RunLayout) -> list[dict]:
    """Batch inference's skew records: the step's, or with inference.parallelism each part's
    (each part measures the files it scores)."""
    if run.inference.skew.is_file():
        return [artifacts.read_json(run.inference.skew)]
    return [
        {**artifacts.read_json(p.skew), "title": f"Skew of {p.path.name}"}
        for p in run.inference.parts()
        if p.skew.is_file()
    ]


def _drift(drift: dict | None, skews: list[dict] | None) -> str:
    """Per feature, the distance of this run's data (drift) and of the scored data (skew) from
    the model's training data, with the threshold when `data.drift` sets one."""
    parts = []
    for record in [drift, *(skews or [])]:
        if not record:
            continue
        rows = "".join(
            f"<tr{VIOLATED if f['violated'] else ''}><td>{_e(name)}</td><td>{_e(f['measure'])}</td>"
            f"<td>{_num(f['distance'], 4)}</td><td>{_num(f['threshold'])}</td>"
            f"<td>{'yes' if f['violated'] else ''}</td></tr>"
            for name, f in record["features"].items()
        )
        parts.append(
            f"<h3>{_e(record.get('title', record['check'].capitalize()))} against "
            f"{_e(record['baseline'] or record.get('note', ''))}</h3>"
            f'<table id="{_e(record["check"])}"><thead><tr><th>feature</th><th>measure</th><th>distance</th>'
            f"<th>threshold</th><th>beyond</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    if not parts:
        return ""
    return '<section id="drift"><h2>Drift and skew</h2>' + "".join(parts) + "</section>"


def _data(stats: dict | None, preprocess: PreprocessResult | None) -> str:
    if not stats or not preprocess:
        return '<section id="data"><h2>Data</h2><p>Not preprocessed yet.</p></section>'
    head = _table(
        [
            ("Input rows", f"{preprocess.input_rows:,}", "input-rows"),
            ("Train / eval records", f"{preprocess.train_records:,} / {preprocess.eval_records:,}", "split"),
            ("Eval share", f"{preprocess.eval_records / max(preprocess.input_rows, 1):.1%}", None),
        ]
    )
    rows = []
    for name, feature in stats["features"].items():
        vocab = feature.get("vocabulary_size")
        oov, unseen = feature.get("eval_oov_fraction"), feature.get("eval_unseen_fraction")
        rows.append(
            "<tr>"
            f"<td>{_e(name)}</td><td>{_e(feature['type'])}</td><td>{feature['count']:,}</td>"
            f"<td>{feature['missing']:,}</td>"
            f"<td>{_num(feature.get('min'))}</td><td>{_num(feature.get('max'))}</td><td>{_num(feature.get('mean'))}</td>"
            f"<td>{'' if vocab is None else vocab}</td><td>{'' if oov is None else f'{oov:.1%}'}</td>"
            f"<td>{'' if unseen is None else f'{unseen:.1%}'}</td>"
            f"<td>{_top_values(feature.get('top_values'))}</td>"
            "</tr>"
        )
    table = (
        '<table class="features"><thead><tr><th>feature</th><th>type</th><th>count</th><th>missing</th>'
        "<th>min</th><th>max</th><th>mean</th><th>vocabulary</th><th>eval OOV</th><th>never in train</th><th>top values</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )
    return f'<section id="data"><h2>Data</h2>{head}{table}</section>'


def _top_values(top: list | None, shown: int = 3) -> str:
    """The most frequent train values with their counts; values are data, so always escaped."""
    return ", ".join(f"{_e(value)} ({count:,})" for value, count in (top or [])[:shown])


def _timings(info: dict) -> str:
    rows = [
        (step, f"{info['timings'][step]:.1f} s" + (" (reused)" if info["reused"].get(step) else ""), f"time-{step}")
        for step in STEPS
        if step in info["timings"]
    ]
    return (
        '<section id="timings"><h2>Step timings</h2>'
        + (_table(rows) if rows else "<p>No step done.</p>")
        + "</section>"
    )


def _artifacts(info: dict) -> str:
    results = info["results"]
    export, preprocess, train = results.get("export"), results.get("preprocess"), results.get("train")
    best, inference = results.get("select_best"), results.get("inference")
    rows = [("Run folder", info["run_dir"], None)]
    if export:
        rows.insert(0, ("Model version", f'<span id="model-version">{export.version}</span>', None))
        rows.append(("SavedModel", _e(export.model_dir), None))
    if preprocess:
        rows.append(("TFRecords", _e(preprocess.step_dir), None))
    if train:
        rows.append(("Checkpoints", _e(train.checkpoint_dir), None))
        rows.append(("TensorBoard", _e(str(layout.TrainDir(Path(train.step_dir)).tensorboard)), None))
    if best:
        rows.append(("Selected checkpoint", _e(best.checkpoint_path), None))
    if inference:
        rows.append(("Predictions", f"{inference.rows:,} rows in {_e(inference.step_dir)}", None))
    return '<section id="artifacts"><h2>Model and artifacts</h2>' + _table(rows, escape=False) + "</section>"


def _table(rows: list[tuple[str, str, str | None]], escape: bool = True) -> str:
    body = "".join(
        f"<tr><th>{_e(k) if escape else k}</th><td{f' id={chr(34)}{i}{chr(34)}' if i else ''}>{_e(v) if escape else v}</td></tr>"
        for k, v, i in rows
    )
    return f'<table class="kv">{body}</table>'


def _num(value: Any, digits: int = 6) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}" if isinstance(value, float) else f"{value:,}"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1000px;color:#222;padding:0 16px}
h1{font-size:22px;margin:0}h1 .run{font-weight:400;color:#666;font-size:16px}h2{font-size:17px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}th,td{padding:3px 10px;text-align:left;vertical-align:top;border-bottom:1px solid #eee}
table.kv th{color:#555;font-weight:500;white-space:nowrap}table.features td:nth-child(n+3){text-align:right;font-variant-numeric:tabular-nums}
figure{margin:12px 0 20px}figcaption{font-weight:600;margin-bottom:4px}
svg .frame{fill:#fcfcfc;stroke:#ccc}svg .grid{stroke:#eee}svg .tick,svg .axis{font-size:11px;fill:#666}
svg .line{fill:none;stroke-width:1.8}svg .marker{stroke-width:1.5;stroke-dasharray:5 4}
svg .marker.selected{stroke:#2ca02c}svg .marker.es-best{stroke:#9467bd}svg .marker.early-stop{stroke:#ff7f0e}
.legend{font-size:12px;color:#444}.key{margin-right:14px}.key:before{content:"";display:inline-block;width:12px;height:3px;background:var(--c,#999);margin-right:5px;vertical-align:middle}
.key.mark.selected:before{background:#2ca02c}.key.mark.es-best:before{background:#9467bd}.key.mark.early-stop:before{background:#ff7f0e}
#status{color:#555}
"""
