"""The Airflow Assets a Contrail pipeline publishes.

Identities are stable (`x-contrail://<pipeline>/...`), whatever the artifact root: the paths
travel in each event's `extra`. Preprocess updates the TFRecords asset on every success;
export updates the model asset only when it promotes, through an alias, so a DAG scheduled on
the model asset runs once per promotion and never for a candidate that lost.
"""

from __future__ import annotations

from airflow.sdk import Asset, AssetAlias


def tfrecords_asset(pipeline: str) -> Asset:
    return Asset(name=f"contrail.{pipeline}.tfrecords", uri=f"x-contrail://{pipeline}/tfrecords", group="contrail")


def model_asset(pipeline: str) -> Asset:
    return Asset(name=f"contrail.{pipeline}.model", uri=f"x-contrail://{pipeline}/model", group="contrail")


def promotion_alias(pipeline: str) -> AssetAlias:
    return AssetAlias(name=f"contrail.{pipeline}.promotion", group="contrail")


def inference_dag_id(pipeline: str) -> str:
    return f"{pipeline}_inference"
