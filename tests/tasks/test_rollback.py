"""`contrail rollback` on a real pair of exported versions: v1 (the first model), then v2
promoted by force. production.json moves back under the promotion lock, keeps its history,
and batch inference and the model asset follow it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests_support import airflow_env, run_export, spec_variant

from contrail import blessing, cli, inference, rollback
from contrail.errors import ExportError
from contrail.layout import PipelineLayout


@pytest.fixture(scope="module")
def published(penguins_run, tmp_path_factory) -> Path:
    """An artifact root whose penguins pipeline published v1 (first model) and v2 (forced), once
    for the module. Tests work on their own copy (`root`)."""
    root = tmp_path_factory.mktemp("rollback") / "artifacts"
    pipeline = PipelineLayout(root, "penguins")
    for key, force in (("r1", False), ("r2", True)):
        result = run_export(
            penguins_run,
            pipeline.models.path,
            key,
            pipeline.run_by_key(key).export.path,
            dag_id="penguins",
            run_id=f"manual__{key}",
            force_promote=force,
        )
        assert result.promoted and result.production_version == result.version
    return root


@pytest.fixture
def root(published, tmp_path) -> Path:
    return Path(shutil.copytree(published, tmp_path / "artifacts"))


def _models(root: Path):
    return PipelineLayout(root, "penguins").models


def _production(root: Path) -> dict:
    return json.loads(_models(root).production.read_text())


@pytest.fixture
def no_airflow(monkeypatch, tmp_path, penguins_run):
    """The CLI's environment with no Airflow configured (so no asset event), the test's specs."""
    for name in ("AIRFLOW_HOME", "AIRFLOW_CONFIG", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CONTRAIL_SPEC_DIR", str(penguins_run["spec"].parent))


def test_the_pair_as_published(published):
    production = _production(published)
    assert production["version"] == 2 and _models(published).versions() == [1, 2]
    assert [h["decision"] for h in production["history"]] == ["first_model", "forced"]


def test_rollback_makes_the_previous_version_production_and_keeps_the_history(root):
    models = _models(root)
    record = rollback.rollback(models, reason_note="v2 mislabels Gentoo")
    assert record == _production(root)
    assert (record["version"], record["path"]) == (1, str(models.version(1).path))
    blessing = record["blessing"]
    assert (blessing["decision"], blessing["promoted"]) == ("rolled_back", True)
    assert (blessing["production_version"], blessing["previous_version"], blessing["candidate_version"]) == (1, 2, 1)
    assert blessing["reason"] == "rolled back from production v2 to v1: v2 mislabels Gentoo"
    assert blessing["metric"] == "val_accuracy" and blessing["schema_change"] is None
    history = record["history"]
    assert [h["decision"] for h in history] == ["first_model", "forced", "rolled_back"]
    assert [(h["candidate_version"], h["previous_version"]) for h in history] == [(1, None), (2, 1), (1, 2)]
    assert history[-1]["time"] == blessing["time"] >= history[-2]["time"]
    assert history[-1]["note"] == "v2 mislabels Gentoo" and "@" in history[-1]["by"]
    assert models.production_version() == 1
    # Nothing is left behind but production.json: the versions stay, no temporary file.
    assert sorted(p.name for p in models.path.iterdir()) == [".promotion.lock", "1", "2", "production.json"]

    # A second rollback goes further back, not back to v2: v1 was the first model.
    before = models.production.read_bytes()
    with pytest.raises(ExportError, match=r"v1 was promoted as first_model with no production before it"):
        rollback.rollback(models)
    assert models.production.read_bytes() == before


def test_a_rollback_waits_for_a_promotion_in_progress(root):
    models = _models(root)
    done = threading.Event()
    with blessing.promotion_lock(models):  # as an export holds it while it blesses
        thread = threading.Thread(target=lambda: (rollback.rollback(models), done.set()))
        thread.start()
        assert not done.wait(0.5) and models.production_version() == 2
    thread.join(60)
    assert done.is_set() and models.production_version() == 1


def test_batch_inference_follows_production(root, penguins_run, penguins_dir):
    rollback.rollback(_models(root))
    step = PipelineLayout(root, "penguins").run_by_key("after-rollback").inference
    result = inference.run(
        inference.InferenceArgs(
            str(penguins_run["spec"]),
            str(penguins_dir / "penguins_to_score" / "*.parquet"),
            str(step.path),
            str(_models(root).path),
        )
    )
    table = pa.concat_tables(pq.read_table(p) for p in result.predictions)
    assert result.model_version == 1 and table.num_rows == 344
    assert set(table.column("model_version").to_pylist()) == {1}


def test_cli_rolls_back_and_to_moves_it_forward_again(root, no_airflow, capsys):
    assert cli.main(["rollback", "penguins", "--artifact-root", str(root)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == ["penguins: production v2 -> v1 (rolled_back)"]
    assert "no model asset event: Airflow is not configured here" in err and "Production is v1" in err
    assert _production(root)["version"] == 1

    assert cli.main(["rollback", "penguins", "--to", "2", "--artifact-root", str(root), "--no-asset-event"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == ["penguins: production v1 -> v2 (rolled_back)"]
    assert "no model asset event: --no-asset-event" in err
    production = _production(root)
    assert production["version"] == 2 and production["path"] == str(_models(root).version(2).path)
    assert [(h["decision"], h["candidate_version"], h["previous_version"]) for h in production["history"]] == [
        ("first_model", 1, None),
        ("forced", 2, 1),
        ("rolled_back", 1, 2),
        ("rolled_back", 2, 1),
    ]


def test_cli_finds_the_root_from_the_environment(root, no_airflow, monkeypatch, capsys):
    monkeypatch.setenv("CONTRAIL_ARTIFACT_ROOT", str(root))
    assert cli.main(["rollback", "penguins", "--to", "1", "--no-asset-event"]) == 0
    assert capsys.readouterr().out == "penguins: production v2 -> v1 (rolled_back)\n"


def _damaged_v3(models) -> None:
    """A version folder with its record but no SavedModel: published, and unloadable."""
    (models.path / "3").mkdir()
    shutil.copy(models.version(1).info, models.version(3).info)
    shutil.copy(models.version(1).schema, models.version(3).schema)


@pytest.mark.parametrize(
    ("to", "message"),
    [
        (2, r"production\.json: expected a version other than production to roll back to, found v2 is production"),
        (
            7,
            r"models/7: expected a published model version to roll back to, found no such version folder "
            r"\(published: v1, v2, v3\); production stays v2",
        ),
        (
            3,
            r"models/3: expected a model version that loads, found it does not \(.*saved_model\.pb.*\); "
            r"production stays v2",
        ),
    ],
    ids=["already-production", "not-published", "does-not-load"],
)
def test_refusals_change_nothing(root, to, message, no_airflow, capsys):
    models = _models(root)
    _damaged_v3(models)
    before = models.production.read_bytes()
    with pytest.raises(ExportError, match=message):
        rollback.rollback(models, to)
    assert models.production.read_bytes() == before
    # The CLI: a nonzero exit, the same message, and still nothing changed.
    assert cli.main(["rollback", "penguins", "--to", str(to), "--artifact-root", str(root)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("contrail: ") and re.search(message, err)
    assert models.production.read_bytes() == before


def test_nothing_to_roll_back(tmp_path, no_airflow, capsys):
    models = _models(tmp_path)
    models.path.mkdir(parents=True)
    with pytest.raises(
        ExportError, match=r"production\.json: expected a production record to roll back from, found no"
    ):
        rollback.rollback(models)
    assert not models.production.exists()
    # A mistyped pipeline name lists the pipelines there are.
    assert cli.main(["rollback", "pengiuns", "--artifact-root", str(tmp_path)]) == 2
    assert "unknown pipeline 'pengiuns': expected one of penguins" in capsys.readouterr().err


def test_without_history_the_highest_version_below_goes_back(root):
    models = _models(root)
    record = _production(root)
    del record["history"]
    models.production.write_text(json.dumps(record))
    assert rollback.rollback(models)["version"] == 1


def test_a_remote_artifact_root(published, s3, no_airflow, capsys):
    bucket = s3.new_bucket()
    fs, remote = s3.filesystem(), f"s3://{bucket}/root"
    for path in published.rglob("*"):  # as the tasks push it: records name the remote root
        if path.is_file() and not path.name.startswith("."):
            data = path.read_bytes()
            data = data.replace(str(published).encode(), remote.encode()) if path.suffix == ".json" else data
            fs.pipe(f"{bucket}/root/{path.relative_to(published)}", data)
    production = f"{bucket}/root/penguins/models/production.json"
    assert cli.main(["rollback", "penguins", "--artifact-root", remote, "--no-asset-event"]) == 0
    assert capsys.readouterr().out == "penguins: production v2 -> v1 (rolled_back)\n"
    record = json.loads(fs.cat(production))
    assert (record["version"], record["path"]) == (1, f"{remote}/penguins/models/1")
    assert [h["decision"] for h in record["history"]] == ["first_model", "forced", "rolled_back"]
    before = fs.cat(production)
    assert cli.main(["rollback", "penguins", "--to", "7", "--artifact-root", remote]) == 2
    assert "expected a published model version to roll back to" in capsys.readouterr().err
    assert fs.cat(production) == before


# Run in a process with its own Airflow home: unpause the scoring DAG if the DAGs were parsed, roll
# back through the CLI, and report the model asset's events and the runs they queued.
_ANNOUNCE = """
import json, sys
from sqlalchemy import select
from airflow.models.asset import AssetDagRunQueue, AssetEvent
from airflow.models.dag import DagModel
from airflow.utils.session import create_session
from contrail import cli
with create_session() as session:
    for dag in session.scalars(select(DagModel).where(DagModel.dag_id == "penguins_inference")):
        dag.is_paused = False
code = cli.main(sys.argv[1:])
with create_session() as session:
    events = [(e.asset.name, e.extra) for e in session.scalars(select(AssetEvent))]
    queued = sorted(q.target_dag_id for q in session.scalars(select(AssetDagRunQueue)))
print(json.dumps({"code": code, "events": events, "queued": queued}))
"""


def test_the_model_asset_follows_a_rollback(root, penguins_run, penguins_dir, tmp_path):
    home = tmp_path / "airflow"
    specs = tmp_path / "pipelines"
    spec_variant(specs, {"inference": {"on_promotion": True}}, data_dir=penguins_dir)
    env = airflow_env(home, CONTRAIL_ARTIFACT_ROOT=str(root), CONTRAIL_SPEC_DIR=str(specs))

    def run(*argv: str) -> subprocess.CompletedProcess:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    def rollback_in_airflow(*args: str) -> tuple[dict, subprocess.CompletedProcess]:
        done = run(sys.executable, "-c", _ANNOUNCE, "rollback", "penguins", *args)
        return json.loads(done.stdout.strip().splitlines()[-1]), done

    run(sys.executable, "-m", "airflow", "db", "migrate")
    first, done = rollback_in_airflow()
    assert first == {"code": 0, "events": [], "queued": []}
    assert "penguins: production v2 -> v1 (rolled_back)" in done.stdout.splitlines()
    assert "no model asset event: asset contrail.penguins.model (x-contrail://penguins/model) is not in" in done.stderr

    run(sys.executable, "-m", "airflow", "dags", "reserialize")  # the scoring DAG, scheduled on the asset
    second, done = rollback_in_airflow("--to", "2")
    assert second["code"] == 0 and second["queued"] == ["penguins_inference"]
    ((name, extra),) = second["events"]
    assert name == "contrail.penguins.model"
    assert extra == {
        "version": 2,
        "model_dir": str(_models(root).version(2).path),
        "previous_version": 1,
        "decision": "rolled_back",
        "by": _production(root)["blessing"]["by"],
    }
    assert "asset contrail.penguins.model: event 1 added (version 2)" in done.stdout
