"""Every section of `benchmarks/run.py` runs, on a few thousand rows, so that none rots unseen.

These check that the sections run and print their figures beside their baselines; the figures
themselves are measured at full size and recorded in BENCHMARKS.md.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from tests_support import ROOT

DATA_SECTIONS = ("encode", "write", "input", "train", "inference", "parse", "bootstrap", "quality", "stream")


def _run(tmp_path, sections, *extra, rows=4000):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--rows", str(rows), "--repeat", "1"]
        + ["--only", ",".join(sections), "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=1500,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())["results"], proc.stdout


def test_every_data_section_runs_and_reports_its_figures(tmp_path):
    results, stdout = _run(tmp_path, DATA_SECTIONS, "--stream-rows", "3000,6000")
    assert {r["section"] for r in results} == set(DATA_SECTIONS)
    for r in results:
        assert r["value"] > 0, r
        if "baseline" in r:
            assert r["baseline_value"] > 0 and r["ratio"] > 0, r
    assert "inference  best predict-signature ratio" in stdout


@pytest.mark.slow
def test_the_end_to_end_section_runs(tmp_path):
    # Its embedded mode (the baseline of the others): the section's code runs end to end. The
    # scale-out and S3 modes start the clusters test_scaleout and test_object_store already run.
    results, stdout = _run(tmp_path, ["e2e"], "--e2e-modes", "embedded")
    assert results == [] and re.search(r"e2e +embedded +penguins trigger -> success: [\d.]+ s", stdout), stdout
