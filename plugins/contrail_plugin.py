"""Registers Contrail with Airflow: the 'Run report' extra link and the app that serves reports."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from contrail_airflow.report_plugin import URL_PREFIX, LazyApp, RunReportLink


class ContrailPlugin(AirflowPlugin):
    name = "contrail"
    operator_extra_links = [RunReportLink()]
    fastapi_apps = [{"app": LazyApp(), "url_prefix": URL_PREFIX, "name": "Contrail run reports"}]
