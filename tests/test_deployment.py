"""The deployment files, checked as far as a machine without a Docker engine allows: the
compose file's structure and contracts, and the image definition's inputs. (The compose file
was also checked with `docker-compose config`; see README, 'Deploying'.)"""

from __future__ import annotations

import re

import yaml
from tests_support import ROOT

from contrail_airflow.mode import airflow_settings

COMPOSE = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
AIRFLOW = ["airflow-init", "api-server", "scheduler", "dag-processor", "triggerer", "worker", "worker-gpu"]


def test_every_component_is_there_with_a_health_check():
    assert set(SERVICES) == {"postgres", "redis", *AIRFLOW}
    for name in ("postgres", "redis", "api-server", "scheduler", "dag-processor", "triggerer", "worker"):
        assert SERVICES[name]["healthcheck"]["test"], name
    for name in AIRFLOW:
        depends = SERVICES[name]["depends_on"]
        assert depends["postgres"]["condition"] == depends["redis"]["condition"] == "service_healthy", name


def test_airflow_services_share_one_image_the_scaleout_mode_and_the_artifact_volume():
    for name in AIRFLOW:
        service = SERVICES[name]
        assert service["image"] == "${CONTRAIL_IMAGE:-contrail:latest}", name
        env = service["environment"]
        assert env["CONTRAIL_MODE"] == "scaleout"
        # The shared volume unless the deployment names an object store.
        assert env["CONTRAIL_ARTIFACT_ROOT"] == "${CONTRAIL_ARTIFACT_ROOT:-file:///shared/artifacts}"
        assert {"CONTRAIL_STORAGE_OPTIONS", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"} <= set(
            env
        )
        assert "artifacts:/shared/artifacts" in service["volumes"] and "data:/shared/data" in service["volumes"]
        settings = airflow_settings(env)
        assert settings["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert "@postgres:5432/" in settings["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        assert settings["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:6379/")
    assert {"artifacts", "data", "logs", "postgres", "redis"} <= set(COMPOSE["volumes"])


def test_secrets_come_from_the_environment_and_are_required():
    text = (ROOT / "docker" / "compose.yaml").read_text()
    for secret in ("POSTGRES_PASSWORD", "AIRFLOW_JWT_SECRET"):
        assert f"${{{secret}:?" in text, secret
    assert not re.search(r"PASSWORD:\s*[\"']?\w", text.replace("${POSTGRES_PASSWORD", ""))
    assert "/docker/.env" in (ROOT / ".gitignore").read_text()


def test_workers_consume_the_queues_specs_route_to():
    assert SERVICES["worker"]["command"][:4] == ["celery", "worker", "--queues", "default"]
    assert SERVICES["worker-gpu"]["command"][:4] == ["celery", "worker", "--queues", "training"]
    assert SERVICES["worker-gpu"]["profiles"] == ["gpu"]


def test_the_image_installs_the_pinned_set_and_every_file_it_copies_exists():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "pip install -r requirements.lock" in dockerfile
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    assert '"/opt/contrail/scripts/env", "airflow"' in dockerfile
    lock = (ROOT / "requirements.lock").read_text()
    for pin in ("apache-airflow==", "tensorflow_cpu==", "psycopg2-binary==", "asyncpg==", "redis==", "celery=="):
        assert pin in lock, pin
