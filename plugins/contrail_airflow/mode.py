"""The two ways to run Contrail's Airflow, switched by one setting: `CONTRAIL_MODE`.

- `embedded` (the default): SQLite next to the project and the LocalExecutor, from
  `airflow.cfg`. One person, one machine, no services to run.
- `scaleout`: PostgreSQL for the metadata database and the CeleryExecutor on Redis, so that a
  scheduler, an api-server and any number of workers on any number of hosts share one state.
  The URLs come from the environment: `CONTRAIL_DATABASE_URL` (a SQLAlchemy URL,
  `postgresql+psycopg2://user:password@host:5432/airflow`) and `CONTRAIL_BROKER_URL`
  (`redis://host:6379/0`).

`scripts/env` applies the mode before every command, and refuses to start anything when a
service is unreachable: the error names the service and its URL, with the password masked.

    python -m contrail_airflow.mode exports   # the shell exports for the current mode
    python -m contrail_airflow.mode check     # check the services, print what was reached
"""

from __future__ import annotations

import os
import shlex
import sys
import urllib.parse
from collections.abc import Mapping

from contrail.errors import ConfigError, ContrailError, ServiceUnavailableError

EMBEDDED, SCALEOUT = "embedded", "scaleout"
MODES = (EMBEDDED, SCALEOUT)


def current_mode(environ: Mapping[str, str] = os.environ) -> str:
    mode = environ.get("CONTRAIL_MODE", "") or EMBEDDED
    if mode not in MODES:
        raise ConfigError(f"CONTRAIL_MODE: expected one of {', '.join(MODES)}, found {mode!r}", field="CONTRAIL_MODE")
    return mode


def airflow_settings(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The Airflow settings (as environment variables) that the current mode implies."""
    if current_mode(environ) == EMBEDDED:
        return {}
    urls = {name: environ.get(name, "") for name in ("CONTRAIL_DATABASE_URL", "CONTRAIL_BROKER_URL")}
    missing = [name for name, url in urls.items() if not url]
    if missing:
        raise ConfigError(
            f"CONTRAIL_MODE=scaleout: expected {' and '.join(missing)} in the environment, found "
            f"{'it' if len(missing) == 1 else 'them'} unset (see README, 'Scale-out mode')"
        )
    database, broker = urls["CONTRAIL_DATABASE_URL"], urls["CONTRAIL_BROKER_URL"]
    if not database.startswith("postgresql"):
        raise ConfigError(
            f"CONTRAIL_DATABASE_URL: expected a postgresql:// or postgresql+psycopg2:// URL, found {mask(database)!r}",
            field="CONTRAIL_DATABASE_URL",
        )
    if not broker.startswith(("redis://", "rediss://")):
        raise ConfigError(
            f"CONTRAIL_BROKER_URL: expected a redis:// URL, found {mask(broker)!r}", field="CONTRAIL_BROKER_URL"
        )
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database,
        "AIRFLOW__CELERY__BROKER_URL": broker,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + database,
    }


def mask(url: str) -> str:
    """`url` with its password replaced by `***`."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def check_services(settings: Mapping[str, str], timeout: float = 3.0) -> list[str]:
    """Connect to each service the settings name; raise `ServiceUnavailableError` on the first
    that does not answer within `timeout` seconds. Returns what was reached, masked."""
    reached = []
    database = settings.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "")
    if database.startswith("postgresql"):
        import psycopg2

        dsn = "postgresql://" + database.split("://", 1)[1]
        try:
            psycopg2.connect(dsn, connect_timeout=max(1, int(timeout))).close()
        except psycopg2.Error as exc:
            raise ServiceUnavailableError(
                f"PostgreSQL (the metadata database) at {mask(database)} is unreachable: {str(exc).strip()}"
            ) from None
        reached.append(f"PostgreSQL at {mask(database)}")
    broker = settings.get("AIRFLOW__CELERY__BROKER_URL", "")
    if broker.startswith(("redis://", "rediss://")):
        import redis

        try:
            redis.Redis.from_url(broker, socket_connect_timeout=timeout, socket_timeout=timeout).ping()
        except redis.RedisError as exc:
            raise ServiceUnavailableError(
                f"Redis (the Celery broker) at {mask(broker)} is unreachable: {exc}"
            ) from None
        reached.append(f"Redis at {mask(broker)}")
    return reached


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv not in (["exports"], ["check"]):
        print("usage: python -m contrail_airflow.mode {exports|check}", file=sys.stderr)
        return 2
    try:
        settings = airflow_settings()
        reached = check_services(settings)
    except ContrailError as exc:
        print(f"contrail: {exc}", file=sys.stderr)
        return 1
    if argv == ["exports"]:
        for name, value in settings.items():
            print(f"export {name}={shlex.quote(value)}")
    else:
        print(f"mode {current_mode()}: " + ("; ".join(reached) or "SQLite and the LocalExecutor (airflow.cfg)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
