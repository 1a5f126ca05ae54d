"""A real Airflow for tests: api-server, scheduler and dag-processor on loopback.

The processes run in their own sessions with their own AIRFLOW_HOME, database and ports, and
`stop()` ends each whole process group, so a test leaves nothing running. With
`database="postgres"` the cluster creates its own database on the machine's PostgreSQL
(POSTGRES_URL, default 127.0.0.1:5432 as postgres) and drops it on stop.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from tests_support import airflow_env, wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


POSTGRES_URL = os.environ.get("CONTRAIL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")


def _postgres(sql: str) -> None:
    import psycopg2

    connection = psycopg2.connect(f"{POSTGRES_URL}/postgres", connect_timeout=5)
    connection.autocommit = True
    try:
        connection.cursor().execute(sql)
    finally:
        connection.close()


class AirflowCluster:
    def __init__(
        self,
        home: Path,
        *,
        components=("api-server", "scheduler", "dag-processor"),
        database: str = "sqlite",
        **env: str,
    ):
        self.home = home
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.database = None
        if database == "postgres":
            self.database = f"contrail_test_{uuid.uuid4().hex[:12]}"
            env.setdefault(
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
                f"{POSTGRES_URL.replace('postgresql://', 'postgresql+psycopg2://')}/{self.database}",
            )
        self.env = airflow_env(
            home,
            AIRFLOW__API__PORT=str(self.port),
            AIRFLOW__API__HOST="127.0.0.1",
            AIRFLOW__API__BASE_URL=self.base,
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{self.base}/execution/",
            AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
            AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL="5",
            AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="1",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin,viewer:viewer",
            **env,
        )
        self.components = components
        self.procs: dict[str, subprocess.Popen] = {}
        self.broker_url: str | None = None
        self._token: str | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = 180) -> AirflowCluster:
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> AirflowCluster:
        # Known passwords for the test users: the simple auth manager keeps them in this file.
        Path(self.env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).write_text(
            json.dumps({"admin": "admin", "viewer": "viewer"})
        )
        if self.database:
            _postgres(f"CREATE DATABASE {self.database}")
        subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"], env=self.env, check=True, capture_output=True
        )
        (self.home / "logs").mkdir(exist_ok=True)
        for name in self.components:
            args = {"scheduler": ["scheduler", "--skip-serve-logs"], "triggerer": ["triggerer", "--skip-serve-logs"]}
            command = args.get(name, [name])
            if name == "api-server":
                command += ["--port", str(self.port), "--host", "127.0.0.1"]
            self.spawn(name, command)
        self._wait(
            lambda: httpx.get(f"{self.base}/api/v2/monitor/health", timeout=2).status_code == 200, timeout, "api-server"
        )
        return self

    def spawn(self, name: str, airflow_args: list[str], cwd: Path | None = None, **env: str) -> subprocess.Popen:
        """Start `airflow <airflow_args>` as component `name`, in its own process group."""
        log = (self.home / "logs" / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "airflow", *airflow_args],
            env={**self.env, **env},
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self.procs[name]

    def use_scaleout(self, broker_url: str) -> None:
        """Switch this cluster to the scale-out mode (CeleryExecutor on Redis) the way a user
        does: `CONTRAIL_MODE=scaleout` and two URLs, turned into Airflow settings by
        `contrail_airflow.mode`. The broker's Redis database is flushed now and on `stop()`."""
        from contrail_airflow.mode import airflow_settings

        self.env.update(
            airflow_settings(
                {
                    "CONTRAIL_MODE": "scaleout",
                    "CONTRAIL_DATABASE_URL": self.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
                    "CONTRAIL_BROKER_URL": broker_url,
                }
            )
        )
        self.broker_url = broker_url
        self._flush_broker()

    def start_worker(
        self, name: str, queues: str = "default", concurrency: int | None = None, cwd: Path | None = None, **env: str
    ) -> subprocess.Popen:
        """An `airflow celery worker` named `name` (its task instances' hostname, too)."""
        args = ["celery", "worker", "--queues", queues, "--celery-hostname", f"{name}@%h", "--skip-serve-logs"]
        if concurrency is not None:
            args += ["--concurrency", str(concurrency)]
        return self.spawn(name, args, cwd=cwd, CONTRAIL_WORKER_NAME=name, **env)

    def _flush_broker(self) -> None:
        if self.broker_url:
            import redis

            redis.Redis.from_url(self.broker_url).flushdb()

    def kill(self, name: str) -> None:
        """SIGKILL component `name` and every process it started, as a crash would."""
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.time() + 30
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()
        if self.database:
            _postgres(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")
            self.database = None
        self._flush_broker()

    def __enter__(self) -> AirflowCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def logs(self, name: str) -> str:
        return (self.home / "logs" / f"{name}.log").read_text(errors="replace")

    # -- REST ------------------------------------------------------------------------------
    def token(self, username: str = "admin", password: str = "admin") -> str:
        response = httpx.post(f"{self.base}/auth/token", json={"username": username, "password": password}, timeout=10)
        response.raise_for_status()
        return response.json()["access_token"]

    def api(self, method: str, path: str, *, user: str = "admin", **kwargs: Any) -> httpx.Response:
        if user == "admin":
            self._token = self._token or self.token()
            token = self._token
        else:
            token = self.token(user, user)
        return httpx.request(
            method, f"{self.base}/api/v2{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30, **kwargs
        )

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> None:
        self._wait(lambda: self.api("GET", f"/dags/{dag_id}").status_code == 200, timeout, f"DAG {dag_id} to be parsed")

    def trigger(self, dag_id: str, run_id: str, conf: dict | None = None, logical_date: str | None = None) -> dict:
        body = {"dag_run_id": run_id, "logical_date": logical_date, "conf": conf or {}}
        response = self.api("POST", f"/dags/{dag_id}/dagRuns", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}").json()["state"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600) -> str:
        return wait_until(
            lambda: (state := self.run_state(dag_id, run_id)) in ("success", "failed") and state,
            timeout,
            f"run {dag_id}/{run_id} to finish",
            interval=1,
            alive=self.check_alive,
            diagnose=lambda: self.logs("scheduler")[-3000:],
        )

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict]:
        body = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json()
        return {ti["task_id"]: ti for ti in body["task_instances"]}

    def task_tries(self, dag_id: str, run_id: str, task_id: str) -> list[dict]:
        body = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/tries").json()
        return body["task_instances"]

    # -- helpers ---------------------------------------------------------------------------
    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.logs(name)[-3000:]}")

    def _wait(self, ready, timeout: float, what: str) -> None:
        wait_until(
            ready, timeout, what, alive=self.check_alive, ignore=(httpx.HTTPError, KeyError, json.JSONDecodeError)
        )
