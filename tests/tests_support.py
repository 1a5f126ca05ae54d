"""Helpers the test modules import (pytest puts this folder on sys.path); `conftest.py` builds its
fixtures from them, never the other way round.

- `spec_variant`: the one way to write a spec for a test (a shipped spec with changes);
  `write_spec` for a spec of a test's own data, beside the shipped MLP.
- `run_steps`: preprocess, train and select_best of a spec: what the later steps take.
- `wait_until`: the one poll loop.
- `airflow_env`: the environment of an Airflow process with its own home.
- `saved_model_check`: load an exported model in a fresh process, with TensorFlow alone.
- `task_context`: what Airflow hands an operator's `execute()`, for operator tests.
- `readme_commands`: the README's shell commands, for the tests that run them as written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import yaml

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = ROOT / "dags" / "pipelines"

T = TypeVar("T")

# Many short evaluation rounds, so that a kill after the third lands in the middle of training,
# and early stopping still fires: about 40 evaluations, 9 s of training on penguins (it was 268
# evaluations and a minute, with a smaller learning rate, for each of the kill tests' trainings).
SLOW_TRAINING = {
    "train": {"eval_every_steps": 5, "early_stopping": {"monitor": "val_loss", "patience": 5, "min_delta": 0.003}},
}


def deep_update(base: dict, changes: dict) -> dict:
    """`base` with `changes` merged in, mappings key by key (in place; returns `base`)."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def spec_variant(
    directory: Path,
    changes: dict | None = None,
    *,
    name: str | None = None,
    base: str = "penguins",
    data_dir: Path | None = None,
) -> Path:
    """Write the shipped spec `base` with `changes` merged in (a value of None removes a field)
    as `<directory>/<name>.yaml`, beside a copy of its model module; returns the spec's path.

    With `data_dir`, the data and inference sources point at the demo data written there
    (absolute paths, for steps run without Airflow); without it they keep `{{ data_dir }}`.
    """
    spec = yaml.safe_load((PIPELINES / f"{base}.yaml").read_text())
    if data_dir is not None:
        spec["data"]["source"] = str(data_dir / base / "*.parquet")
        spec["inference"]["source"] = str(data_dir / f"{base}_to_score" / "*.parquet")
    spec = _drop_nones(deep_update(spec, {"name": name or base, **(changes or {})}))
    directory.mkdir(parents=True, exist_ok=True)
    module = spec["model"]["build_fn"].split(":", 1)[0]
    if (PIPELINES / f"{module}.py").is_file():
        shutil.copy(PIPELINES / f"{module}.py", directory / f"{module}.py")
    path = directory / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def write_spec(directory: Path, spec: dict, module: str) -> Path:
    """`spec` (a test's own data, not a shipped pipeline's) as `<directory>/<name>.yaml`, beside
    the shipped MLP (`penguins_model.py`) copied as `<module>.py`; returns the spec's path."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(PIPELINES / "penguins_model.py", directory / f"{module}.py")
    path = directory / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_steps(spec: Path, source: str, run: Path, **train_overrides: Any) -> dict:
    """Preprocess `source`, train and select_best under `run/<step>`, as a DAG run would: the
    stages export and the other later steps take (`spec`, `preprocess`, `train`, `best`)."""
    from contrail import preprocess, select_best, train

    pre = preprocess.run(preprocess.PreprocessArgs(str(spec), source, str(run / "preprocess")))
    trained = train.run(train.TrainArgs(str(spec), pre, str(run / "train"), train_overrides=train_overrides))
    best = select_best.run(select_best.SelectBestArgs(str(spec), trained, str(run / "select_best")))
    return {"spec": spec, "preprocess": pre, "train": trained, "best": best}


def _drop_nones(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _drop_nones(v) for k, v in node.items() if v is not None}
    return node


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = 0.5,
    alive: Callable[[], None] | None = None,
    ignore: tuple[type[BaseException], ...] = (),
    diagnose: Callable[[], str] | None = None,
) -> T:
    """Poll `predicate` until it returns something truthy, and return that.

    `alive` is called each round and raises if what is being waited on has died; exceptions
    in `ignore` count as "not yet". On timeout, raise `TimeoutError` naming `what`, the last
    ignored error and what `diagnose` says (a log tail, say).
    """
    deadline = time.time() + timeout
    last: BaseException | None = None
    while time.time() < deadline:
        if alive is not None:
            alive()
        try:
            if value := predicate():
                return value
        except ignore as exc:
            last = exc
        time.sleep(interval)
    detail = f" (last error: {last})" if last else ""
    raise TimeoutError(f"waited {timeout}s for {what}{detail}" + (f"\n{diagnose()}" if diagnose else ""))


def airflow_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment for an Airflow process with its own home, database, artifacts and data."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CONTRAIL"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW_CONFIG=str(ROOT / "airflow.cfg"),
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(ROOT / "plugins"),
        AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(home / "logs"),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(home / "passwords.json"),
        AIRFLOW__API_AUTH__JWT_SECRET="contrail-tests-only-secret-0123456789abcdef",
        CONTRAIL_HOME=str(ROOT),
        CONTRAIL_ARTIFACT_ROOT=str(home / "artifacts"),
        CONTRAIL_DATA_DIR=str(home / "data"),
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
        PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    )
    env.update(extra)
    return env


def readme_commands() -> list[str]:
    """Every shell command in the README's `bash` code blocks, in order: one string per command,
    line continuations joined, comments and blank lines left out."""
    commands, block, pending = [], False, ""
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            block = line.strip() == "```bash"
            continue
        if not block:
            continue
        line = pending + line.strip()
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        pending = ""
        command = line.split("  #", 1)[0].strip()
        if command and not command.startswith("#"):
            commands.append(command)
    return commands


def saved_model_check(model_dir: str | Path, eval_files: Sequence[str]) -> dict:
    """Load the SavedModel in a fresh process with TensorFlow alone (`tests/saved_model_check.py`)
    and return its report: signatures, `predict` inputs, rows, the signatures' largest difference."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "saved_model_check.py"), str(model_dir), json.dumps(list(eval_files))],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


class _RecordedEvents:
    """The asset events Airflow would hand `context["inlet_events"][asset]`: what was emitted."""

    def __init__(self, outlets: Any) -> None:
        self.outlets = outlets

    def __getitem__(self, asset):
        emitted = [
            SimpleNamespace(extra=e.extra)
            for alias in list(self.outlets)
            for e in self.outlets[alias].asset_alias_events
            if e.dest_asset_key.uri == asset.uri
        ]
        return SimpleNamespace(ascending=lambda _: SimpleNamespace(limit=lambda _: emitted[::-1]))


def task_context(
    params: dict | None = None, conf: dict | None = None, run_id: str = "manual__2026-01-01T00:00:00+00:00"
):
    """The context the task runner gives `execute()`, for a run of `penguins`: params (with
    `params` changed), conf, the DAG's declared params, and real asset event accessors."""
    from airflow.sdk.execution_time.context import OutletEventAccessors

    params = {"max_steps": 100, "batch_size": 32, "force_promote": False, "data_source": None, **(params or {})}
    outlets = OutletEventAccessors()  # what the task runner gives execute()
    return {
        "run_id": run_id,
        "params": params,
        "dag_run": SimpleNamespace(conf=conf or {}),
        "dag": SimpleNamespace(dag_id="penguins", params=dict.fromkeys(params)),
        "ti": SimpleNamespace(try_number=1),
        "outlet_events": outlets,
        "inlet_events": _RecordedEvents(outlets),
    }


def run_export(stages: dict, models_dir, run_key: str, step_dir, **extra):
    """Run the export step on the outputs of the earlier steps (`spec`, `preprocess`, `train`,
    `best`, as the `penguins_run` fixture holds them)."""
    from contrail import export

    return export.run(
        export.ExportArgs(
            spec_path=str(stages["spec"]),
            preprocess=stages["preprocess"],
            train=stages["train"],
            best=stages["best"],
            step_dir=str(step_dir),
            models_dir=str(models_dir),
            run_key=run_key,
            **extra,
        )
    )
