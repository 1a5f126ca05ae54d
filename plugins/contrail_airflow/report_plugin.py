"""The run report inside Airflow: an extra link on the train and export tasks, and the endpoint
that serves `runs/<run_key>/report.html` behind Airflow's own auth.

    GET {api.base_url}/contrail/reports/{dag_id}/{run_id}

The endpoint asks the auth manager whether the caller may read that DAG's runs, from the
bearer token or the UI's session cookie, exactly as the REST API does; it reads only the file
the artifact layout names for that DAG and run, never a path from the request.
"""

from __future__ import annotations

import urllib.parse

from airflow.sdk import BaseOperatorLink

URL_PREFIX = "/contrail"


def report_url(dag_id: str, run_id: str) -> str:
    from airflow.configuration import conf

    base = conf.get("api", "base_url", fallback="").rstrip("/")
    return f"{base}{URL_PREFIX}/reports/{urllib.parse.quote(dag_id, safe='')}/{urllib.parse.quote(run_id, safe='')}"


class RunReportLink(BaseOperatorLink):
    """'Run report' on a task: the HTML report of the task's DAG run."""

    name = "Run report"

    def get_link(self, operator, *, ti_key) -> str:
        return report_url(ti_key.dag_id, ti_key.run_id)


class LazyApp:
    """An ASGI app that builds the FastAPI app on its first request: every Airflow process
    loads plugins, and only the api-server ever serves one."""

    def __init__(self) -> None:
        self._app = None

    async def __call__(self, scope, receive, send) -> None:
        if self._app is None:
            self._app = create_app()
        await self._app(scope, receive, send)


def create_app():
    from airflow.api_fastapi.core_api.security import DagAccessEntity, requires_access_dag
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import HTMLResponse

    from contrail import config, layout, storage
    from contrail.spec import is_valid_name

    app = FastAPI(title="Contrail run reports")

    @app.get(
        "/reports/{dag_id}/{run_id}",
        response_class=HTMLResponse,
        dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.RUN))],
    )
    def run_report(dag_id: str, run_id: str) -> HTMLResponse:
        if not is_valid_name(dag_id):
            raise HTTPException(404, f"no Contrail pipeline {dag_id!r}")
        rel = f"{layout.run_rel(dag_id, run_id)}/{layout.REPORT}"
        html = storage.read_text(config.artifact_location(), rel)
        if html is None:
            raise HTTPException(404, f"run {run_id!r} of {dag_id!r} has no report yet ({rel})")
        return HTMLResponse(html)

    return app
