"""The trigger form: which params a run takes, their bounds, and what each one overrides.

Every model param of the spec, plus `max_steps`, `batch_size`, `force_promote` and a
`data_source` override, each with a type, a default, explicit bounds and a description, so
that the UI shows a validated form and the REST API answers 400 for a bad value. A number's
bounds are stated, never guessed: here for the reserved params, in the spec's
`model.param_bounds` for the model's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import Param

from contrail import config
from contrail.errors import SpecError
from contrail.spec import LoadedSpec

if TYPE_CHECKING:
    from airflow.sdk import Context

# Trigger params that are not model params; a model param cannot take one of these names.
TRAIN_PARAMS = ("max_steps", "batch_size")
RESERVED_PARAMS = (*TRAIN_PARAMS, "force_promote", "data_source", "max_trials")
MAX_STEPS_BOUNDS = {"minimum": 1, "maximum": 100_000_000}
BATCH_SIZE_BOUNDS = {"minimum": 1, "maximum": 1_048_576}
DATA_SOURCE_MAX_LENGTH = 1024


def trigger_params(loaded: LoadedSpec) -> dict[str, Param]:
    """The DAG's params: the trigger form."""
    spec = loaded.spec
    params = {}
    for name, value in spec.model.params.items():
        if name in RESERVED_PARAMS:
            raise SpecError(
                f"{loaded.path}: field 'model.params.{name}': expected a name other than the reserved "
                f"{', '.join(RESERVED_PARAMS)}, found {name!r}",
                path=str(loaded.path),
                field=f"model.params.{name}",
            )
        bounds = spec.model.param_bounds.get(name)
        schema = _json_schema(value, bounds.json_schema() if bounds else {})
        params[name] = Param(value, description=f"model.params.{name} passed to build_fn", **schema)
    params["max_steps"] = Param(
        spec.train.max_steps,
        type="integer",
        **MAX_STEPS_BOUNDS,
        description="train.max_steps: stop after this many training steps at the latest",
    )
    params["batch_size"] = Param(
        spec.train.batch_size,
        type="integer",
        **BATCH_SIZE_BOUNDS,
        description="train.batch_size: examples per training step",
    )
    if spec.tune is not None:
        params["max_trials"] = Param(
            spec.tune.max_trials,
            type="integer",
            minimum=1,
            maximum=1000,
            description="tune.max_trials: how many trials this run's search trains (a grid needs all its points)",
        )
    params["force_promote"] = Param(
        False, type="boolean", description="Promote the exported model even if it does not beat production"
    )
    params["data_source"] = Param(
        None,
        type=["null", "string"],
        maxLength=DATA_SOURCE_MAX_LENGTH,
        pattern=data_source_pattern(config.data_dir()),
        description=(
            f"Replace data.source for this run: a glob under the data folder ({config.data_dir()}), relative to it "
            "or absolute, with no '..' and no URI scheme; Airflow macros work"
        ),
    )
    return params


def data_source_pattern(root: Path) -> str:
    """The JSON-schema pattern of `data_source`, so that the trigger form and the REST API refuse a
    path out of the data folder before a run exists: empty, or a path relative to `root` or under
    it, with no `..` segment and no URI scheme. `resolve_source` checks again after the macros
    render. Written for both Python's `re` (the API) and JavaScript's (the form)."""
    under = "".join("\\" + c if c in "\\^$.*+?()[]{}|/" else c for c in str(root).rstrip("/")) + "\\/"
    no_dotdot = r"(?!.*(?:^|/)\.\.(?:/|$))"
    relative = r"(?!/)(?![A-Za-z][A-Za-z0-9+.-]*:/)"
    return rf"^$|^{no_dotdot}(?:{under}|file:\/\/{under}|{relative}).+$"


def _json_schema(value: Any, bounds: dict[str, float]) -> dict:
    """The JSON schema of a param with default `value`: its type, and `bounds` for numbers."""
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer", **bounds}
    if isinstance(value, float):
        return {"type": "number", **bounds}
    if isinstance(value, str):
        return {"type": "string"}
    items = _json_schema(value[0], bounds) if value else {"type": "number", **bounds}
    return {"type": "array", "items": items, "minItems": 1 if value else 0}


@dataclass(frozen=True)
class Overrides:
    """What a run's params change, split by where each applies."""

    model: dict[str, Any] = field(default_factory=dict)  # model.params for build_fn
    train: dict[str, Any] = field(default_factory=dict)  # train.max_steps, train.batch_size
    force_promote: bool = False
    data_source: str | None = None
    max_trials: int | None = None  # tune.max_trials, for a search


def overrides(params: dict[str, Any]) -> Overrides:
    """The run's params (`context["params"]`: the form's values, conf merged in) as overrides."""
    return Overrides(
        model={k: v for k, v in params.items() if k not in RESERVED_PARAMS},
        train={k: params[k] for k in TRAIN_PARAMS if k in params},
        force_promote=bool(params.get("force_promote", False)),
        data_source=params.get("data_source") or None,
        max_trials=params.get("max_trials"),
    )


def check_conf_keys(context: Context) -> None:
    """Airflow accepts any conf key; a misspelt override must fail loudly instead of being ignored."""
    conf = context["dag_run"].conf or {}
    # The DAG's declared params: context["params"] already has the conf keys merged in.
    allowed = sorted(context["dag"].params.keys())
    unknown = sorted(set(conf) - set(allowed))
    if unknown:
        raise SpecError(
            f"DAG {context['dag'].dag_id}: unknown conf key{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}; "
            f"expected only {', '.join(allowed)}",
            field="conf",
        )


def resolve_source(source: str | list[str], override: str | None) -> str | list[str]:
    """The spec's source, or the rendered `data_source` override confined to the data folder."""
    if not override:
        return source
    root = config.data_dir()
    if "://" in override and not override.startswith("file://"):
        raise SpecError(
            f"param 'data_source': expected a path under {root}, found the URI {override!r}", field="data_source"
        )
    path = Path(override.removeprefix("file://"))
    resolved = (path if path.is_absolute() else root / path).resolve()
    if ".." in path.parts or not resolved.is_relative_to(root):
        raise SpecError(f"param 'data_source': expected a path under {root}, found {override!r}", field="data_source")
    return str(resolved)
