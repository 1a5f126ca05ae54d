"""The evaluation history (`history.jsonl`, one record per evaluation) and the best record in it.

Train writes it, select_best chooses from it, the report draws it: each reads it here.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from contrail.spec import EarlyStoppingSpec, metric_mode


def read_history(path: str | Path) -> list[dict]:
    with Path(path).open() as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_history(path: Path, history: list[dict]) -> None:
    """Replace `path` with `history`, atomically (a reader sees the old file or the new one)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}.tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in history))
    os.replace(tmp, path)


def best_record(history: list[dict], es: EarlyStoppingSpec) -> dict:
    """The evaluation with the best `monitor` value outright; the earliest on a tie."""
    sign = 1 if metric_mode(es.monitor, es.mode) == "min" else -1
    return min(history, key=lambda r: (sign * r["metrics"][es.monitor], r["eval_index"]))


def halving_stop(history: list[dict]) -> dict | None:
    """A search trial's halving decision that stopped it (recorded in its evaluation), or None."""
    return next((r["halving"] for r in history if r.get("halving", {}).get("decision") == "stop"), None)
