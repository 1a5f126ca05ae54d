"""Helpers the test modules import (pytest puts this folder on sys.path)."""

from conftest import ROOT, airflow_env  # noqa: F401 - re-exported for test modules
