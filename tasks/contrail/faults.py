"""Failpoints: named places where a test can have this process killed, once.

A test that must show recovery from a crash at an exact point (between the training steps of
an evaluation round and its evaluation, or in the middle of a checkpoint write) creates an
empty file named after the point in `$CONTRAIL_FAILPOINTS_DIR`. The first process to reach the
point removes the file and sends itself SIGKILL: no cleanup, no exception handlers, exactly
like the OOM killer or a lost node. With the variable unset this is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def failpoint(name: str) -> None:
    directory = os.environ.get("CONTRAIL_FAILPOINTS_DIR")
    if not directory:
        return
    try:
        (Path(directory) / name).unlink()  # claiming the trigger is atomic: it fires once
    except FileNotFoundError:
        return
    os.kill(os.getpid(), signal.SIGKILL)
