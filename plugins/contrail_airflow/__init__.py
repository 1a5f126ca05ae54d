"""Contrail's Airflow layer: thin operators over the `contrail` steps."""
