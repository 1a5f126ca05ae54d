"""The Airflow Assets a Contrail pipeline publishes.

Identities are stable (`x-contrail://<pipeline>/...`), whatever the artifact root: the paths
travel in each event's `extra`. An event announces a real change, once: preprocess updates
the TFRecords asset when a run publishes new output, export updates the model asset when it
promotes, each through an alias (`emit_once`), so a DAG scheduled on the model asset runs once
per promotion, never for a candidate that lost, and never again for a rerun that reused it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, AssetAlias

if TYPE_CHECKING:
    from airflow.sdk import Context

# How many of an asset's newest events `emit_once` looks through. Exports of a pipeline run one
# at a time, and a rerun comes after its own run's event, so the duplicate, if any, is recent.
RECENT_EVENTS = 200


def tfrecords_asset(pipeline: str) -> Asset:
    return Asset(name=f"contrail.{pipeline}.tfrecords", uri=f"x-contrail://{pipeline}/tfrecords", group="contrail")


def model_asset(pipeline: str) -> Asset:
    return Asset(name=f"contrail.{pipeline}.model", uri=f"x-contrail://{pipeline}/model", group="contrail")


def promotion_alias(pipeline: str) -> AssetAlias:
    return AssetAlias(name=f"contrail.{pipeline}.promotion", group="contrail")


def tfrecords_alias(pipeline: str) -> AssetAlias:
    return AssetAlias(name=f"contrail.{pipeline}.tfrecords-output", group="contrail")


def emit_once(context: Context, alias: AssetAlias, asset: Asset, extra: dict[str, Any], key: Sequence[str]) -> bool:
    """Add an event for `asset` through `alias`, unless one of its recent events already has the
    same values for the `key` fields (a rerun that reused its output, or a retry after the event
    was recorded). A retry after a crash between the change and the event finds none, and emits.

    The task must list `asset` among its inlets (that is how it reads the asset's events).
    """
    recent = context["inlet_events"][asset].ascending(False).limit(RECENT_EVENTS)
    if any(all((event.extra or {}).get(k) == extra[k] for k in key) for event in recent):
        return False
    context["outlet_events"][alias].add(asset, extra=extra)
    return True


def inference_dag_id(pipeline: str) -> str:
    return f"{pipeline}_inference"
