"""Contrail: a YAML spec and a build_fn become an Airflow pipeline that trains TensorFlow models.

This package (the `tasks/contrail/` folder) holds the steps as pure Python, with no Airflow import:
`preprocess`, `train`, `select_best`, `export` and `inference`, plus what they share.
"""

__version__ = "0.1.0"
