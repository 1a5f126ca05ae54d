"""The demo pipeline, run through Airflow (dag.test with a stable run id), twice."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests_support import airflow_env, saved_model_check

from contrail import artifacts
from contrail.demo import write_penguins
from contrail.history import read_history
from contrail.layout import STEPS, PipelineLayout

pytestmark = pytest.mark.slow
RUN_ID = "manual__2026-01-01T00:00:00+00:00"


def run_pipeline(home: Path, *extra: str, date: str = "2026-01-01") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "contrail_airflow.run", "penguins", date, *extra],
        env=airflow_env(home),
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def demo(airflow_home) -> dict:
    write_penguins(airflow_home / "data")
    log_file = airflow_home / "logs" / "demo.log"
    first = run_pipeline(airflow_home, "--log-file", str(log_file))
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-5000:] + log_file.read_text()[-5000:]
    run = PipelineLayout(airflow_home / "artifacts", "penguins").run(RUN_ID)
    results = {s: artifacts.read_manifest(run.step(s))["result"] for s in STEPS}  # each step's XCom, as stored
    return {"home": airflow_home, "run": run, "results": results, "log": log_file.read_text(), "terminal": first.stdout}


def test_every_row_becomes_exactly_one_record(demo):
    pre = demo["results"]["preprocess"]
    manifest = artifacts.read_manifest(Path(pre["step_dir"]))
    counts = [o["records"] for o in manifest["outputs"] if "records" in o]
    assert sum(counts) == pre["train_records"] + pre["eval_records"] == pre["input_rows"] == 344


def test_training_evaluated_at_least_three_times_and_learned(demo):
    history = read_history(demo["results"]["train"]["history"])
    assert len(history) >= 3
    assert max(r["metrics"]["val_accuracy"] for r in history) >= 0.9
    assert "eval 1 | step 25/2000" in demo["log"] and "ETA" in demo["log"]


def test_selected_checkpoint_is_the_best_in_history(demo):
    history = read_history(demo["results"]["train"]["history"])
    best = demo["results"]["select_best"]
    winner = min(history, key=lambda r: (r["metrics"]["val_loss"], r["eval_index"]))
    assert best["eval_index"] == winner["eval_index"]
    assert Path(best["checkpoint_path"]).name == f"ckpt-{winner['eval_index']:05d}"


def test_saved_model_loads_in_a_fresh_process_with_agreeing_signatures(demo):
    export = demo["results"]["export"]
    assert (export["version"], export["decision"]) == (1, "first_model")
    assert export["candidate_score"]["val_accuracy"] >= 0.9
    report = saved_model_check(export["model_dir"], demo["results"]["preprocess"]["eval_files"])
    assert report["signatures"] == ["predict", "serving_default"]
    assert report["rows"] == demo["results"]["preprocess"]["eval_records"]
    assert report["max_abs_diff"] <= 1e-6


def test_predictions_have_one_row_per_input_row(demo):
    inference = demo["results"]["inference"]
    table = pa.concat_tables(pq.read_table(p) for p in inference["predictions"])
    assert table.num_rows == inference["rows"] == 344
    assert len(set(table.column("row_id").to_pylist())) == 344
    assert set(table.column("model_version").to_pylist()) == {1}


def test_second_run_skips_every_step_and_publishes_nothing(demo):
    models = PipelineLayout(demo["home"] / "artifacts", "penguins").models
    before = sorted(p.name for p in models.path.iterdir())
    production = models.production.read_bytes()
    second = run_pipeline(demo["home"])
    assert second.returncode == 0, second.stdout[-5000:] + second.stderr[-5000:]
    events = artifacts.read_events(demo["run"].events)
    latest = {e["step"]: e for e in events}
    assert all(latest[s]["reused"] for s in STEPS)
    assert len(events) == 10
    assert sorted(p.name for p in models.path.iterdir()) == before
    assert models.production.read_bytes() == production
    summary = subprocess.run(
        [sys.executable, "-m", "contrail.cli", "summary", "penguins", RUN_ID],
        env=airflow_env(demo["home"]),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "5/5 steps were already done" in summary.stdout
    data = json.loads((demo["home"] / "artifacts" / "demo-summary.json").read_text())
    assert data["idempotent_rerun"] is True and data["predictions"]["rows"] == 344
    assert set(data["step_seconds"]) == {"preprocess", "train", "select_best", "export", "inference"}


def test_unknown_conf_key_fails_the_run(demo):
    log_file = demo["home"] / "logs" / "bad.log"
    bad = run_pipeline(
        demo["home"], "--conf", json.dumps({"max_step": 5}), "--log-file", str(log_file), date="2026-01-02"
    )
    assert bad.returncode == 1
    # The terminal names the failed task, the error and where the whole log is.
    assert "preprocess           failed" in bad.stdout
    assert "error: " in bad.stdout and "unknown conf key 'max_step'" in bad.stdout
    assert f"full log: {log_file}" in bad.stdout and "unknown conf key 'max_step'" in log_file.read_text()


def test_the_terminal_shows_a_line_per_task_and_the_log_file_the_rest(demo):
    lines = demo["terminal"].strip().splitlines()
    assert lines[0] == "Run manual__2026-01-01T00:00:00+00:00: success" and len(lines) == 6, lines
    tasks = [line.split()[0] for line in lines[1:]]
    assert tasks == ["preprocess", "train", "select_best", "export", "batch_inference"]
    assert all(line.split()[1] == "success" for line in lines[1:])
    assert "344 rows -> " in lines[1] and "version 1: first_model" in lines[4]
    assert (
        "TaskInstance" not in demo["terminal"] and "TaskInstance" in demo["log"]
    )  # the runner's records went to the file


def _chromium(*args: str, user_data: Path) -> subprocess.CompletedProcess:
    """Debian's Chromium, headless, as this machine needs it (see scripts/install-browser)."""
    command = [
        shutil.which("chromium") or "/usr/bin/chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={user_data}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_the_run_report_renders_in_a_real_browser(demo, tmp_path):
    report = demo["run"].report
    assert report.is_file()
    assert "http://" not in report.read_text() and "https://" not in report.read_text()  # self-contained
    shot = tmp_path / "report.png"
    taken = _chromium("--window-size=1100,2600", f"--screenshot={shot}", report.as_uri(), user_data=tmp_path / "p1")
    assert shot.is_file() and shot.stat().st_size > 20_000, taken.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    dumped = _chromium("--dump-dom", report.as_uri(), user_data=tmp_path / "p2")
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = _parse(dumped.stdout)
    history = read_history(demo["results"]["train"]["history"])
    assert dom.count("svg#plot-loss circle.eval") == len(history)
    assert dom.count("svg#plot-loss circle.train") == len(history)
    assert sorted(dom.steps("svg#plot-loss circle.eval")) == [r["step"] for r in history]
    best = demo["results"]["select_best"]
    assert dom.marker_steps("selected") == {best["step"]}
    train = demo["results"]["train"]
    assert f"{train['best_value']:.6g} at evaluation {train['best_eval_index']}" in dom.text_of("best-value")
    assert dom.text_of("stop-reason") == train["stop_reason"]
    blessing = json.loads(demo["run"].export.blessing.read_text())
    assert dom.attribute("decision", "data-decision") == blessing["decision"]
    metric = blessing["metric"]
    assert dom.text_of("candidate-score") == f"{blessing['candidate_score'][metric]:.6g}"
    assert dom.text_of("model-version") == str(demo["results"]["export"]["version"])
    assert dom.attribute("status", "data-complete") == "true"


class _Dom(HTMLParser):
    """The few DOM queries the report test needs, over Chromium's serialized DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict, list[str]]] = []  # tag, attributes, open svg ids
        self.texts: dict[str, str] = {}
        self._svg: list[str] = []
        self._open: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "svg":
            self._svg.append(attrs.get("id", ""))
        self.elements.append((tag, attrs, list(self._svg)))
        if tag not in ("circle", "line", "rect", "meta", "br"):
            self._open.append((tag, attrs.get("id")))

    def handle_endtag(self, tag):
        if tag == "svg" and self._svg:
            self._svg.pop()
        while self._open:
            opened, _ = self._open.pop()
            if opened == tag:
                break

    def handle_data(self, data):
        for _, element_id in self._open:
            if element_id:
                self.texts[element_id] = self.texts.get(element_id, "") + data

    def _select(self, selector: str):
        svg, _, rest = selector.partition(" ")
        tag, cls = rest.split(".")
        svg_id = svg.split("#")[1]
        return [a for t, a, svgs in self.elements if t == tag and svg_id in svgs and cls in a.get("class", "").split()]

    def count(self, selector: str) -> int:
        return len(self._select(selector))

    def steps(self, selector: str) -> list[int]:
        return [int(a["data-step"]) for a in self._select(selector)]

    def marker_steps(self, kind: str) -> set[int]:
        return {int(a["data-step"]) for t, a, _ in self.elements if t == "line" and kind in a.get("class", "").split()}

    def text_of(self, element_id: str) -> str:
        return " ".join(self.texts.get(element_id, "").split())

    def attribute(self, element_id: str, name: str) -> str | None:
        return next((a.get(name) for _, a, _ in self.elements if a.get("id") == element_id), None)


def _parse(page: str) -> _Dom:
    dom = _Dom()
    dom.feed(page)
    return dom
