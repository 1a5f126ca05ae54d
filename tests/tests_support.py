"""Helpers the test modules import (pytest puts this folder on sys.path)."""

from conftest import ROOT, airflow_env  # noqa: F401 - re-exported for test modules


def run_export(stages: dict, models_dir, run_key: str, step_dir, **extra) -> dict:
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


def slow_training(spec: dict) -> dict:
    """The spec with many short evaluation rounds and a small learning rate, so that a kill
    lands in the middle of training and early stopping still fires."""
    slow = {**spec, "model": {**spec["model"], "params": {**spec["model"]["params"], "learning_rate": 0.0005}}}
    slow["train"] = {
        **spec["train"],
        "eval_every_steps": 5,
        "early_stopping": {"monitor": "val_loss", "patience": 12, "min_delta": 0.0005},
    }
    return slow
