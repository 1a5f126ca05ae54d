from __future__ import annotations

import logging

from contrail import progress
from contrail.progress import Progress


def test_progress_logs_on_a_steady_rhythm_with_remaining_rate_and_eta(monkeypatch, caplog):
    clock = iter([0.0, 1.0, 5.0, 10.5, 12.0, 20.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    log = logging.getLogger("test.progress")
    with caplog.at_level(logging.INFO, logger="test.progress"):
        ticks = Progress(log, "scoring", 1000, unit="rows", every=10)  # t=0
        ticks.advance(100)  # t=1: not yet due
        ticks.advance(100)  # t=5: not yet due
        ticks.advance(300)  # t=10.5: due
        ticks.advance(100)  # t=12: not due
        ticks.advance(400)  # t=20: done
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "scoring: 500/1,000 rows (50%), 500 to go, 48 rows/s, ETA 10s",
        "scoring: 1,000/1,000 rows (100%), 0 to go, 50 rows/s, ETA 0s",
    ]


def test_progress_can_stay_quiet_at_the_end(monkeypatch, caplog):
    monkeypatch.setattr(progress.time, "monotonic", lambda: 0.0)
    with caplog.at_level(logging.INFO):
        Progress(logging.getLogger("q"), "round", 10, unit="steps", log_at_end=False).advance(10)
    assert caplog.records == []
