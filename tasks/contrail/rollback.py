"""Rollback: point `production.json` back at an earlier (or any other) published version.

Under the pipeline's promotion lock, as a promotion is, so that a rollback and an export never
interleave their read-modify-write of `production.json`. The record is rewritten whole and
atomically (`artifacts.write_json_atomic`), in the same form a promotion writes: the target's
`version` and `path`, a `blessing` whose decision is `rolled_back`, and the history kept, with
one `rolled_back` entry appended.

Whatever reads `production.json` follows at once: batch inference without a version, the
next export's comparison, warm-starting. Nothing is scored: the target was checked when it
was published; here it must only still be there and load.

Without `to`, the target is the version that was production before the current one was
promoted (the `previous_version` of the newest history entry that promoted it, skipping
`rolled_back` entries, so that a second rollback goes further back rather than undoing the
first); with no such entry at all (a record written before the history existed), the
highest published version below the current one.
"""

from __future__ import annotations

import getpass
import logging
import socket
import time

from contrail import artifacts, blessing, serving
from contrail.errors import ExportError, InferenceError
from contrail.layout import ModelsLayout

log = logging.getLogger(__name__)

ROLLED_BACK = "rolled_back"


def rollback(models: ModelsLayout, to: int | None = None, *, reason_note: str | None = None) -> dict:
    """Make version `to` (default: the one production before the current one) production.

    Refuses, changing nothing, when there is no production record, when the target is not a
    published version folder, cannot be loaded, or is production already. Returns the new
    `production.json` record."""
    _require_production(models)
    with blessing.promotion_lock(models):
        current = _require_production(models)
        current_version = int(current["version"])
        target = to if to is not None else default_target(models, current)
        if target == current_version:
            raise ExportError(
                f"{models.production}: expected a version other than production to roll back to, found "
                f"v{target} is production already; nothing changed",
                path=str(models.production),
            )
        _check_target(models, target, current_version)
        now = time.time()
        by = _operator()
        change = _schema_change(models, current_version, target)
        reason = f"rolled back from production v{current_version} to v{target}"
        if reason_note:
            reason += f": {reason_note}"
        if change:
            reason += f"; the schema changes ({blessing.describe_change(change)})"
        prior = current.get("blessing") or {}
        record_blessing = {
            # The keys a promotion's blessing has, so that every reader of the record works as is.
            "decision": ROLLED_BACK,
            "promoted": True,
            "reason": reason,
            "metric": prior.get("metric"),
            "mode": prior.get("mode"),
            "candidate_version": target,
            "candidate_score": {},  # a rollback scores nothing
            "production_version": target,
            "previous_version": current_version,
            "production_score": None,
            "bootstrap": None,
            "slices": [],
            "thresholds": {},
            "eval_rows": 0,
            "compared_on": "nothing: a rollback restores a published version without scoring it",
            "schema_change": change,
            "note": reason_note,
            "run_key": "",
            "by": by,
            "time": now,
        }
        entry = {
            "decision": ROLLED_BACK,
            "candidate_version": target,
            "previous_version": current_version,
            "time": now,
            "by": by,
        }
        if reason_note:
            entry["note"] = reason_note
        record = {
            "version": target,
            "path": str(models.version(target).path),
            "blessing": record_blessing,
            "history": [*current.get("history", []), entry],
        }
        artifacts.write_json_atomic(models.production, record)
    log.info("%s: %s", models.production, reason)
    return record


def default_target(models: ModelsLayout, current: dict) -> int:
    """The version production held before the current one was promoted (see the module doc)."""
    current_version = int(current["version"])
    for entry in reversed(current.get("history") or []):
        if entry.get("decision") == ROLLED_BACK or entry.get("candidate_version") != current_version:
            continue
        if entry.get("previous_version") is not None:
            return int(entry["previous_version"])
        raise ExportError(
            f"{models.production}: expected an earlier production version to roll back to, found none: "
            f"v{current_version} was promoted as {entry.get('decision')} with no production before it; "
            f"name the version to roll back to (--to N); nothing changed",
            path=str(models.production),
        )
    below = [v for v in models.versions() if v < current_version]
    if not below:
        raise ExportError(
            f"{models.production}: expected an earlier version to roll back to, found no history entry that "
            f"promoted v{current_version} and no published version below it; nothing changed",
            path=str(models.production),
        )
    return below[-1]


def target_version(models: ModelsLayout, to: int | None) -> int:
    """The version a rollback would make production (`to`, or the default), from the records
    alone: for a caller that must fetch the version's folder first (a remote artifact root)."""
    current = _require_production(models)
    return to if to is not None else default_target(models, current)


def _require_production(models: ModelsLayout) -> dict:
    current = blessing.read_production(models.production)
    if current is None:
        raise ExportError(
            f"{models.production}: expected a production record to roll back from, found no file; "
            "nothing to roll back (no model of this pipeline was ever promoted)",
            path=str(models.production),
        )
    return current


def _check_target(models: ModelsLayout, target: int, current_version: int) -> None:
    folder = models.version(target).path
    published = models.versions()
    if target not in published:
        raise ExportError(
            f"{folder}: expected a published model version to roll back to, found no such version folder "
            f"(published: {', '.join(f'v{v}' for v in published) or 'none'}); production stays v{current_version}",
            path=str(folder),
        )
    try:
        serving.load_version_dir(folder, target)
    except InferenceError as exc:
        raise ExportError(
            f"{folder}: expected a model version that loads, found it does not ({exc}); "
            f"production stays v{current_version}",
            path=str(folder),
        ) from exc


def _schema_change(models: ModelsLayout, current_version: int, target: int) -> dict | None:
    """The features the rollback adds, removes or retypes for whatever scores with production."""
    try:
        before = artifacts.read_json(models.version(current_version).schema)
        after = artifacts.read_json(models.version(target).schema)
        return blessing.schema_change(before, after)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # the current version's folder is gone or damaged: nothing to compare with


def _operator() -> str:
    """Who rolled back: user@host, for the history."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name (a container's anonymous uid)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"
