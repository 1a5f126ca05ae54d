"""One answer to "where are the specs?", for the DAG factory, the CLI and lint alike."""

from __future__ import annotations

from pathlib import Path

from tests_support import spec_variant

from contrail import cli, config


def test_spec_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("CONTRAIL_SPEC_DIR", raising=False)
    monkeypatch.delenv("AIRFLOW__CORE__DAGS_FOLDER", raising=False)
    monkeypatch.setenv("CONTRAIL_HOME", str(tmp_path / "project"))
    assert config.spec_dir() == (tmp_path / "project").resolve() / "dags" / "pipelines"
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(tmp_path / "deployed-dags"))
    assert config.spec_dir() == (tmp_path / "deployed-dags").resolve() / "pipelines"
    monkeypatch.setenv("CONTRAIL_SPEC_DIR", str(tmp_path / "specs"))
    assert config.spec_dir() == (tmp_path / "specs").resolve()


def test_lint_checks_the_specs_in_contrail_spec_dir(tmp_path, monkeypatch, capsys):
    specs = tmp_path / "specs"
    spec_variant(specs, name="only_here")
    spec_variant(specs, {"train": {"eval_every_steps": 0}}, name="broken_here")
    monkeypatch.setenv("CONTRAIL_SPEC_DIR", str(specs))
    assert cli.main(["lint"]) == 1
    out, err = capsys.readouterr()
    assert f"{Path(specs) / 'only_here.yaml'}: ok" in out and "penguins.yaml" not in out
    assert "broken_here.yaml" in err and "train.eval_every_steps" in err
