"""The mode switch: CONTRAIL_MODE=scaleout plus two URLs, and a fast, named, masked failure
when a service is not there."""

from __future__ import annotations

import subprocess
import time

import pytest
from airflow_cluster import free_port
from tests_support import ROOT

from contrail.errors import ContrailError, ServiceUnavailableError
from contrail_airflow.mode import airflow_settings, check_services, mask


def test_embedded_is_the_default_and_changes_nothing():
    assert airflow_settings({}) == {}


def test_scaleout_settings_come_from_the_two_urls():
    settings = airflow_settings(
        {
            "CONTRAIL_MODE": "scaleout",
            "CONTRAIL_DATABASE_URL": "postgresql+psycopg2://airflow:pw@db:5432/airflow",
            "CONTRAIL_BROKER_URL": "redis://redis:6379/0",
        }
    )
    assert settings == {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://airflow:pw@db:5432/airflow",
        "AIRFLOW__CELERY__BROKER_URL": "redis://redis:6379/0",
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+postgresql+psycopg2://airflow:pw@db:5432/airflow",
    }


def test_scaleout_without_urls_says_which_are_missing():
    with pytest.raises(ContrailError, match="expected CONTRAIL_DATABASE_URL and CONTRAIL_BROKER_URL"):
        airflow_settings({"CONTRAIL_MODE": "scaleout"})
    with pytest.raises(ContrailError, match="CONTRAIL_MODE: expected one of embedded, scaleout, found 'cluster'"):
        airflow_settings({"CONTRAIL_MODE": "cluster"})


def test_mask_hides_only_the_password():
    assert mask("postgresql://airflow:s3cret@db:5432/airflow") == "postgresql://airflow:***@db:5432/airflow"
    assert mask("redis://redis:6379/0") == "redis://redis:6379/0"


@pytest.mark.parametrize("service", ["postgres", "redis"])
def test_an_unreachable_service_fails_fast_named_and_masked(service):
    port = free_port()  # nothing listens here
    database = f"postgresql+psycopg2://airflow:s3cret@127.0.0.1:{port if service == 'postgres' else 5432}/postgres"
    broker = f"redis://:s3cret@127.0.0.1:{port if service == 'redis' else 6379}/13"
    settings = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database, "AIRFLOW__CELERY__BROKER_URL": broker}
    if service == "redis":  # the machine's PostgreSQL uses trust auth; reach it without a password
        settings["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
    started = time.monotonic()
    with pytest.raises(ServiceUnavailableError) as error:
        check_services(settings)
    assert time.monotonic() - started < 10
    message = str(error.value)
    name = {"postgres": "PostgreSQL (the metadata database)", "redis": "Redis (the Celery broker)"}[service]
    assert message.startswith(f"{name} at ") and f":{port}" in message
    assert "s3cret" not in message and ":***@" in message


def test_scripts_env_refuses_to_start_anything_when_a_service_is_down(tmp_path):
    port = free_port()
    env = {
        "PATH": f"{ROOT / '.venv' / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "AIRFLOW_HOME": str(tmp_path),
        "CONTRAIL_MODE": "scaleout",
        "CONTRAIL_DATABASE_URL": f"postgresql+psycopg2://airflow:s3cret@127.0.0.1:{port}/airflow",
        "CONTRAIL_BROKER_URL": "redis://127.0.0.1:6379/13",
    }
    marker = tmp_path / "ran"
    proc = subprocess.run(
        [str(ROOT / "scripts" / "env"), "touch", str(marker)], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1 and not marker.exists()
    assert (
        f"PostgreSQL (the metadata database) at postgresql+psycopg2://airflow:***@127.0.0.1:{port}/airflow"
        in proc.stderr
    )
