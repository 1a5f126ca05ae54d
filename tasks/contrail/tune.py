"""Hyperparameter search as an Airflow fan-out (`tune:` in the spec).

    preprocess >> tune_plan >> train (mapped, one task per trial) >> select_best >> export

`tune_plan` draws the trials from the spec's space, seeded: random or halving sample it, grid
walks it. The same spec and max_trials give the same plan, so a retry or a rerun trains the same
trials; a changed spec gives a new plan, with a rung board of its own.
Each trial trains in its own folder (`train/trial-NNN`) with the ordinary train step: its own
checkpoints, history and lease, so a killed trial resumes as any training does. `select_best`
takes the best evaluation of every trial by the objective and exports the best trial's.

Halving is asynchronous successive halving without pausing (trials are tasks that hold a
worker slot, so none waits for the others): at rung k, after `min_evaluations` × eta^k
evaluations, a trial records its objective on the plan's rung board, then stops unless it is in
the best ⌊n/eta⌋ of the n trials that have reached that rung so far (with fewer than eta there,
it goes on: too few to rank, which favours the first trials to arrive). Each decision is recorded beside the value, first writer wins,
so a retried trial that reaches the rung again reads the decision it made before.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contrail import artifacts
from contrail.errors import SpecError, TrainingError
from contrail.results import StepResult
from contrail.spec import SearchDimension, TuneSpec, load_spec, metric_mode
from contrail.step import StepRun

log = logging.getLogger(__name__)

STEP = "tune_plan"
PLAN = "plan.json"
RUNGS = "rungs"  # under the run's train folder: one folder per rung, one record per trial


def trial_name(index: int) -> str:
    return f"trial-{index:03d}"


def sample(tune: TuneSpec, max_trials: int | None = None) -> list[dict]:
    """The trials, in order: {"index", "name", "params" (model.params), "train" (train settings)}.

    Random and halving draw each trial from one seeded stream, dimension by dimension in the
    space's order, so the first k trials are the same whatever `max_trials` is. Grid takes every
    point of the space (the spec checks that they fit in max_trials)."""
    count = tune.max_trials if max_trials is None else max_trials
    names = list(tune.space)
    if tune.algorithm == "grid":
        points = list(itertools.product(*(tune.space[n].grid() for n in names)))
        if len(points) > count:
            raise SpecError(
                f"tune: expected a grid of at most max_trials ({count}) points, found {len(points)}; raise "
                "max_trials or use algorithm: random",
                field="tune.max_trials",
            )
        draws = [dict(zip(names, point, strict=True)) for point in points]
    else:
        draws = _distinct_draws(tune, names, count)
    trials = []
    for index, draw in enumerate(draws):
        params = {k: v for k, v in draw.items() if not k.startswith("train.")}
        train = {k.removeprefix("train."): v for k, v in draw.items() if k.startswith("train.")}
        trials.append({"index": index, "name": trial_name(index), "params": params, "train": train})
    return trials


def _distinct_draws(tune: TuneSpec, names: list[str], count: int, attempts: int = 100) -> list[dict]:
    """`count` draws, none repeating an earlier one (a small space of choices would repeat
    itself): a repeat is drawn again, up to `attempts` times; a space with fewer points than
    `count` gives all it has."""
    rng = np.random.default_rng(tune.seed)
    draws, seen = [], set()
    while len(draws) < count:
        for _ in range(attempts):
            draw = {n: _draw(tune.space[n], rng) for n in names}
            key = json.dumps(draw, sort_keys=True)
            if key not in seen:
                break
        else:
            log.warning("tune: the space has no point left that no trial has; %d trial(s), not %d", len(draws), count)
            return draws
        seen.add(key)
        draws.append(draw)
    return draws


def _draw(dimension: SearchDimension, rng: np.random.Generator) -> Any:
    if dimension.kind == "choice":
        return dimension.values[int(rng.integers(len(dimension.values)))]
    low, high = float(dimension.low), float(dimension.high)
    if dimension.kind == "int":
        if dimension.scale == "log":  # uniform in log over [low, high + 1), floored: each int its share
            return int(min(high, math.floor(math.exp(rng.uniform(math.log(low), math.log(high + 1))))))
        return int(rng.integers(int(low), int(high) + 1))
    if dimension.scale == "log":
        return float(f"{math.exp(rng.uniform(math.log(low), math.log(high))):.6g}")
    return float(f"{rng.uniform(low, high):.6g}")


# -- the plan step ------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class TunePlanResult(StepResult):
    plan_file: str
    trials: list  # the trials, as `sample` gives them

    @property
    def plan_id(self) -> str:
        """This plan's name for its rung board's folder: a changed plan never reads another's."""
        return self.fingerprint[:16]

    def mapped(self) -> list[dict]:
        """One mapping per trial, for the train task's `expand`: the trial and its plan's id."""
        return [{**t, "plan": self.plan_id} for t in self.trials]


@dataclass(frozen=True)
class TunePlanArgs:
    spec_path: str
    step_dir: str
    max_trials: int | None = None  # the trigger form's override of tune.max_trials


def plan(args: TunePlanArgs) -> TunePlanResult:
    loaded = load_spec(args.spec_path, check_build_fn=False)
    tune = _tune(loaded.spec.tune, loaded.path)
    trials = sample(tune, args.max_trials)
    fp = artifacts.fingerprint({"step": STEP, "tune": tune.model_dump(), "trials": trials})
    step = StepRun(STEP, TunePlanResult, Path(args.step_dir), fp, {})
    if (done := step.reusable()) is not None:
        return done
    with step.staged() as staging:
        artifacts.write_json_atomic(
            staging / PLAN,
            {
                "algorithm": tune.algorithm,
                "objective": objective(tune),
                "seed": tune.seed,
                "halving": tune.halving.model_dump() if tune.algorithm == "halving" else None,
                "trials": trials,
            },
        )
        result = TunePlanResult(
            step_dir=args.step_dir, fingerprint=fp, plan_file=str(Path(args.step_dir) / PLAN), trials=trials
        )
        step.commit(staging, result, [PLAN])
    log.info("Planned %d %s trial(s) over %s", len(trials), tune.algorithm, ", ".join(tune.space))
    return result


def _tune(tune: TuneSpec | None, path: Path) -> TuneSpec:
    if tune is None:
        raise SpecError(f"{path}: field 'tune': expected a search to plan, found none", path=str(path), field="tune")
    return tune


def objective(tune: TuneSpec) -> dict:
    return {"metric": tune.objective.metric, "mode": metric_mode(tune.objective.metric, tune.objective.mode)}


# -- halving ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Halving:
    """One trial's view of the run's rung board."""

    board: Path  # <run>/train/rungs
    trial: str
    metric: str
    mode: str
    eta: int
    min_evaluations: int

    @classmethod
    def for_trial(cls, trial: dict, tune: TuneSpec) -> Halving | None:
        if tune.algorithm != "halving":
            return None
        goal = objective(tune)
        return cls(
            Path(trial["board"]),
            trial["name"],
            goal["metric"],
            goal["mode"],
            tune.halving.eta,
            tune.halving.min_evaluations,
        )

    def rung(self, eval_index: int) -> int | None:
        """Which rung evaluation `eval_index` is (0, 1, ...), or None."""
        ratio = eval_index / self.min_evaluations
        if ratio < 1 or not ratio.is_integer():
            return None
        k = round(math.log(ratio, self.eta))
        return k if self.min_evaluations * self.eta**k == eval_index else None

    def decide(self, eval_index: int, metrics: dict) -> dict | None:
        """At a rung: record this trial's objective, and whether it goes on. None between rungs."""
        k = self.rung(eval_index)
        if k is None:
            return None
        folder = self.board / f"rung-{k}"
        folder.mkdir(parents=True, exist_ok=True)
        if self.metric not in metrics:
            raise TrainingError(
                f"tune.objective: {self.metric!r} is not a metric this model reports; expected one of "
                f"{', '.join(sorted(metrics))}",
                field="tune.objective",
            )
        _create_once(folder / f"{self.trial}.json", {"trial": self.trial, "value": metrics[self.metric]})
        decision_file = folder / f"{self.trial}.decision.json"
        if decision_file.is_file():  # decided before this attempt: the same decision
            return artifacts.read_json(decision_file)
        peers = {
            p.name.removesuffix(".json"): artifacts.read_json(p)["value"]
            for p in sorted(folder.glob("trial-*.json"))
            if not p.name.endswith(".decision.json")
        }
        ranked = sorted(peers, key=lambda t: (-peers[t] if self.mode == "max" else peers[t], t))
        keep = len(ranked) // self.eta
        rank = ranked.index(self.trial)
        goes_on = len(ranked) < self.eta or rank < keep
        decision = {
            "rung": k,
            "eval_index": eval_index,
            "value": peers[self.trial],
            "rank": rank + 1,
            "of": len(ranked),
            "keep": keep,
            "decision": "continue" if goes_on else "stop",
        }
        return _create_once(decision_file, decision)


def _create_once(path: Path, payload: dict) -> dict:
    """Write `payload` at `path` unless a record is there already (written whole, then linked:
    the first writer wins); return the record that stands."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, sort_keys=True)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return artifacts.read_json(path)
        return payload
    finally:
        os.unlink(tmp)


# -- choosing across trials ---------------------------------------------------------------------
def best_trial(choices: list[dict], mode: str) -> dict:
    """The trial whose chosen evaluation is best by the objective; the lowest index on a tie."""
    if not choices:
        raise TrainingError("tune: expected at least one trained trial to choose from, found none")
    return min(choices, key=lambda c: (-c["value"] if mode == "max" else c["value"], c["trial_index"]))
