"""The model asset follows a rollback made outside Airflow (`contrail rollback`).

A promotion announces itself from the export task, through the task context. A rollback runs
in no task, so it registers its event in this Airflow's metadata database directly, with the
same call the REST API's `POST /assets/events` makes (`AssetManager.register_asset_change`,
as an API event: no source task): the event is recorded, and every unpaused DAG scheduled on
the asset (the pipeline's scoring DAG, `inference.on_promotion`) is queued to run.

`contrail.cli` imports this module only when Airflow is configured where it runs.
"""

from __future__ import annotations

import warnings
from typing import Any

from contrail_airflow.assets import model_asset


def announce_rollback(pipeline: str, extra: dict[str, Any]) -> tuple[bool, str]:
    """Add an event for `model_asset(pipeline)` with `extra`. Returns whether it was added,
    and a line that says what happened (or why not: no database, or no DAG declares the asset
    yet, so nothing is scheduled on it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Airflow's own, about its internals
        return _announce(pipeline, extra)


def _announce(pipeline: str, extra: dict[str, Any]) -> tuple[bool, str]:
    from airflow.assets.manager import asset_manager
    from airflow.models.asset import AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    asset = model_asset(pipeline)
    try:
        with create_session() as session:
            found = session.scalar(select(AssetModel).where(AssetModel.name == asset.name, AssetModel.uri == asset.uri))
            if found is None:
                return False, (
                    f"asset {asset.name} ({asset.uri}) is not in Airflow's metadata database (no parsed DAG "
                    "declares it), so nothing is scheduled on it: no event added"
                )
            event = asset_manager.register_asset_change(asset=found, extra=extra, source_is_api=True, session=session)
            if event is None:
                return False, f"asset {asset.name}: Airflow added no event"
            session.flush()
            event_id = event.id
    except SQLAlchemyError as exc:
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        return False, f"Airflow's metadata database cannot record an event for {asset.name} ({why})"
    return True, f"asset {asset.name}: event {event_id} added (version {extra.get('version')})"
