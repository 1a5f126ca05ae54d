"""Hyperparameter search (#17): the seeded plan, the spec's checks, halving's recorded decisions,
and a whole search on penguins run as the DAG runs it: a plan, one train per trial in its own
folder, select_best across the trials, and the export of the best trial's model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from tests_support import run_export

from contrail import artifacts, layout, preprocess, select_best, train, tune
from contrail.errors import SpecError
from contrail.history import read_history
from contrail.spec import TuneSpec, load_spec

SPACE = {
    "hidden_units": {"choice": [[8], [32, 16]]},
    "learning_rate": {"float": [0.001, 0.03], "scale": "log"},
    "train.batch_size": {"choice": [16, 32]},
}
SEARCH = {
    "space": SPACE,
    "objective": "val_accuracy",
    "max_trials": 4,
    "seed": 3,
    "algorithm": "halving",
    "halving": {"eta": 2, "min_evaluations": 1},
}


def test_the_plan_is_seeded_and_a_shorter_search_is_its_prefix():
    spec = TuneSpec.model_validate({**SEARCH, "max_trials": 8, "algorithm": "random"})
    trials = tune.sample(spec)
    assert trials == tune.sample(spec) and len(trials) == 8
    assert tune.sample(spec, max_trials=3) == trials[:3]
    assert tune.sample(TuneSpec.model_validate({**SEARCH, "seed": 4})) != trials[:4]
    for trial in trials:
        assert trial["params"]["hidden_units"] in ([8], [32, 16]) and 0.001 <= trial["params"]["learning_rate"] <= 0.03
        assert trial["train"] == {"batch_size": trial["train"]["batch_size"]} and trial["train"]["batch_size"] in (
            16,
            32,
        )
    assert len({t["params"]["learning_rate"] for t in trials}) == 8  # a continuous draw per trial


def test_a_grid_walks_every_point_once():
    spec = TuneSpec.model_validate(
        {"space": {"units": {"int": [1, 3]}, "act": {"choice": ["relu", "tanh"]}}, "objective": "val_loss"}
        | {"algorithm": "grid", "max_trials": 6}
    )
    points = [(t["params"]["units"], t["params"]["act"]) for t in tune.sample(spec)]
    assert sorted(points) == sorted((u, a) for u in (1, 2, 3) for a in ("relu", "tanh"))
    with pytest.raises(SpecError, match=r"expected a grid of at most max_trials \(4\) points, found 6"):
        tune.sample(spec, max_trials=4)  # the trigger form's override


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"space": {}}, r"tune\.space.*expected at least one param to search over, found an empty space"),
        (
            {"space": {"units": {"choice": [8, 16]}}},
            r"tune\.space\.units: expected a key of model\.params .*found 'units', which build_fn never receives",
        ),
        ({"max_trials": 0}, r"tune\.max_trials.*greater than or equal to 1"),
        (
            {"objective": "val_auc"},
            r"tune\.objective: expected an evaluation metric of a multiclass label \(val_loss, val_accuracy\), "
            r"found 'val_auc'",
        ),
        (
            {"algorithm": "grid", "space": {"hidden_units": {"choice": [[8], [16], [32]]}, "dropout": {"int": [0, 1]}}},
            r"expected a grid of at most max_trials \(4\) points, found 6; .*use algorithm: random",
        ),
        ({"algorithm": "grid"}, r"expected choice or int dimensions for algorithm: grid, found float ranges"),
        ({"space": {"train.seed": {"int": [1, 3]}}}, r"tune\.space\.train\.seed: expected one of train\.batch_size"),
        (
            {"space": {"train.optimizer": {"choice": ["adam", "lion"]}}},
            r"tune\.space\.train\.optimizer: expected values train\.optimizer accepts, found 'lion'",
        ),
        ({"space": {"learning_rate": {"float": [0.0, 0.1], "scale": "log"}}}, r"expected low > 0 for scale: log"),
        ({"space": {"learning_rate": {"float": [0.1]}}}, r"expected \{float: \[low, high\]\}"),
    ],
)
def test_a_bad_search_is_a_spec_error(write_spec, change, expected):
    path = write_spec({"tune": {**SEARCH, **change}})
    with pytest.raises(SpecError, match=expected):
        load_spec(path)


def test_halving_decisions_are_recorded_and_kept(tmp_path):
    def halving(name: str) -> tune.Halving:
        return tune.Halving(tmp_path / "rungs", name, "val_accuracy", "max", eta=2, min_evaluations=2)

    assert [halving("t").rung(i) for i in range(1, 10)] == [None, 0, None, 1, None, None, None, 2, None]
    assert halving("trial-000").decide(1, {"val_accuracy": 0.5}) is None  # not a rung
    first = halving("trial-000").decide(2, {"val_accuracy": 0.5})
    assert first["decision"] == "continue" and first["of"] == 1  # alone at the rung: too few to rank
    worse = halving("trial-001").decide(2, {"val_accuracy": 0.4})
    assert (worse["decision"], worse["rank"], worse["of"], worse["keep"]) == ("stop", 2, 2, 1)
    better = halving("trial-002").decide(2, {"val_accuracy": 0.9})
    assert (better["decision"], better["rank"], better["of"]) == ("continue", 1, 3)
    # A retry reaching the rung again, with another value and better peers since: the same decision.
    assert halving("trial-001").decide(2, {"val_accuracy": 0.99}) == worse
    assert artifacts.read_json(tmp_path / "rungs" / "rung-0" / "trial-001.json")["value"] == 0.4


@pytest.fixture(scope="module")
def search(tmp_path_factory, penguins_dir) -> dict:
    """A halving search of 4 trials on penguins, each trial trained as its mapped task would be."""
    from tests_support import spec_variant

    base = tmp_path_factory.mktemp("search")
    # keep_checkpoints 1: retention must keep each trial's best by the objective (val_accuracy)
    # besides its best val_loss and its last, or select_best finds the chosen checkpoint gone.
    train_settings = {"max_steps": 100, "eval_every_steps": 25, "early_stopping": None, "keep_checkpoints": 1}
    changes = {"tune": SEARCH, "train": train_settings}
    spec = spec_variant(base / "pipelines", changes, data_dir=penguins_dir)
    run = layout.RunLayout(base / "artifacts" / "penguins" / "runs" / "r1")
    pre = preprocess.run(
        preprocess.PreprocessArgs(str(spec), str(penguins_dir / "penguins" / "*.parquet"), str(run.preprocess.path))
    )
    planned = tune.plan(tune.TunePlanArgs(str(spec), str(run.tune_plan)))
    board = run.rungs / planned.plan_id  # as the train operator places it
    trials = [
        train.TrainArgs(str(spec), pre, str(run.trial(t["name"]).path), trial={**t, "board": str(board)})
        for t in planned.mapped()
    ]
    results = [train.run(args) for args in trials]
    best = select_best.run(select_best.SelectBestArgs(str(spec), results, str(run.select_best.path), planned.trials))
    return {
        "spec": spec,
        "run": run,
        "preprocess": pre,
        "plan": planned,
        "board": board,
        "trials": trials,
        "results": results,
        "best": best,
    }


def test_each_trial_trains_in_its_own_folder_with_its_own_settings(search):
    plan = artifacts.read_json(Path(search["plan"].plan_file))
    assert [t["name"] for t in plan["trials"]] == ["trial-000", "trial-001", "trial-002", "trial-003"]
    assert plan["objective"] == {"metric": "val_accuracy", "mode": "max"}
    assert tune.plan(tune.TunePlanArgs(str(search["spec"]), str(search["run"].tune_plan))).reused
    for trial, result in zip(plan["trials"], search["results"], strict=True):
        assert Path(result.step_dir) == search["run"].path / "train" / trial["name"]
        assert artifacts.read_manifest(Path(result.step_dir)) is not None
        assert read_history(result.history)[0]["step"] == 25
    assert len({r.fingerprint for r in search["results"]}) == 4  # each trial's own params and settings
    assert not (search["run"].path / "train" / "report.html").exists()  # trials refresh the run's report


def test_halving_stops_the_trials_that_rank_low_at_a_rung(search):
    halted = [r for r in search["results"] if r.stop_reason == "halving"]
    assert halted, [r.stop_reason for r in search["results"]]
    for result in halted:
        last = read_history(result.history)[-1]
        assert last["halving"]["decision"] == "stop" and last["halving"]["rank"] > last["halving"]["keep"]
        assert result.evaluations < 4
    assert search["results"][0].stop_reason != "halving"  # the first to reach each rung is never ranked alone
    assert sorted(p.name for p in search["board"].iterdir()) == ["rung-0", "rung-1", "rung-2"]  # evaluations 1, 2, 4
    assert search["board"].parent == search["run"].rungs and search["board"].name == search["plan"].plan_id


def test_a_retried_trial_reaches_the_same_decision(search):
    """A trial that halving stopped, retried after losing its commit and every checkpoint (a
    crash before its first one survived): it trains again to the rung, where a better peer has
    arrived since, which would stop it on a fresh ranking too; it reads the decision it made
    before instead, and stops at the same place with the same record."""
    index = next(i for i, r in enumerate(search["results"]) if r.stop_reason == "halving")
    before = search["results"][index]
    decision = read_history(before.history)[-1]["halving"]
    (Path(before.step_dir) / layout.MANIFEST).unlink()
    shutil.rmtree(Path(before.step_dir) / "checkpoints")
    rung = search["board"] / f"rung-{decision['rung']}"
    (rung / "trial-999.json").write_text('{"trial": "trial-999", "value": 2.0}')  # a peer better than any
    try:
        again = train.run(search["trials"][index])
    finally:
        (rung / "trial-999.json").unlink()
    assert again.stop_reason == "halving" and again.evaluations == before.evaluations
    assert read_history(again.history)[-1]["halving"] == decision


def test_the_best_trial_is_chosen_and_exported_with_its_own_params(search, tmp_path):
    best = artifacts.read_json(Path(search["best"].best_file))
    values = {t["trial"]: t["value"] for t in best["trials"]}
    for result in search["results"]:
        history = read_history(result.history)
        assert values[Path(result.step_dir).name] == max(r["metrics"]["val_accuracy"] for r in history)
    assert search["best"].value == max(values.values()) and search["best"].trial == best["trial"]
    chosen = next(t for t in search["plan"].trials if t["name"] == best["trial"])
    assert search["best"].params == chosen["params"] and search["best"].train_settings == chosen["train"]
    assert Path(search["best"].checkpoint_path).is_relative_to(search["run"].path / "train" / best["trial"])
    stopped = [t for t in best["trials"] if t["stop_reason"] == "halving"]
    assert stopped and all(t["halving"]["decision"] == "stop" for t in stopped)
    # Export builds the chosen trial's architecture: its checkpoint would not load into another.
    stages = {"spec": search["spec"], "preprocess": search["preprocess"], "best": search["best"]}
    stages["train"] = next(r for r in search["results"] if Path(r.step_dir).name == best["trial"])
    result = run_export(stages, tmp_path / "models", "r1", tmp_path / "export")
    assert result.version == 1 and result.parity["fresh_process"]
    info = artifacts.read_json(Path(result.model_dir) / layout.MODEL_INFO)
    assert info["params"]["hidden_units"] == chosen["params"]["hidden_units"] and info["trial"] == best["trial"]


def test_planning_without_a_search_is_a_spec_error(write_spec, tmp_path):
    spec = write_spec()
    assert "tune" not in yaml.safe_load(spec.read_text())
    with pytest.raises(SpecError, match=r"field 'tune': expected a search to plan, found none"):
        tune.plan(tune.TunePlanArgs(str(spec), str(tmp_path / "plan")))
    assert not (tmp_path / "plan").exists()


def test_the_report_compares_the_trials(search):
    from contrail.report import write_report

    page = write_report(search["run"].path, load_spec(search["spec"]).spec).read_text()
    best = artifacts.read_json(Path(search["best"].best_file))
    assert page.count('<tr class="trial') == 4
    assert f'<tr class="trial chosen" data-trial="{best["trial"]}">' in page
    for trial in search["plan"].trials:
        assert f"learning_rate={trial['params']['learning_rate']}" in page
        assert f'class="line {trial["name"]}"' in page  # its curve, overlaid with the others'
    assert page.count("halving at rung") == sum(r.stop_reason == "halving" for r in search["results"])
    assert 'id="plot-val_accuracy"' in page and "Selected checkpoint" in page


def test_random_draws_do_not_repeat_and_a_small_space_gives_what_it_has():
    small = TuneSpec.model_validate(
        {"space": {"units": {"choice": [8, 16]}, "act": {"choice": ["relu", "tanh"]}}, "objective": "val_loss"}
        | {"max_trials": 10, "algorithm": "random"}
    )
    points = [(t["params"]["units"], t["params"]["act"]) for t in tune.sample(small)]
    assert sorted(points) == sorted((u, a) for u in (8, 16) for a in ("relu", "tanh"))  # 4 points, each once
