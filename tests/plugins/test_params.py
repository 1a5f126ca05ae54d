"""The trigger form: types from the defaults, bounds only where stated."""

from __future__ import annotations

import pytest
from tests_support import spec_variant

from contrail.errors import SpecError
from contrail.spec import load_spec
from contrail_airflow.params import overrides, trigger_params


def _schemas(tmp_path, changes: dict) -> dict[str, dict]:
    params = trigger_params(load_spec(spec_variant(tmp_path, changes)))
    return {name: param.schema for name, param in params.items()}


def test_bounds_come_from_the_spec_and_nowhere_else(tmp_path):
    schemas = _schemas(
        tmp_path,
        {
            "model": {
                "params": {"hidden_units": [32, 16], "learning_rate": 0.003, "dropout": 0.0, "depth": 2},
                "param_bounds": {
                    "hidden_units": {"minimum": 1, "maximum": 1024},
                    "dropout": {"maximum": 0.9},
                    "learning_rate": None,  # the shipped spec's bound, removed
                },
            }
        },
    )
    assert schemas["hidden_units"]["items"] == {"type": "integer", "minimum": 1, "maximum": 1024}
    assert schemas["dropout"] == {"type": "number", "maximum": 0.9}
    assert schemas["learning_rate"] == {"type": "number"}  # no bounds given: none guessed
    assert schemas["depth"] == {"type": "integer"}
    assert (schemas["max_steps"]["minimum"], schemas["batch_size"]["minimum"]) == (1, 1)


@pytest.mark.parametrize(
    "bounds, pattern",
    [
        pytest.param(
            {"momentum": {"minimum": 0}}, r"param_bounds\.momentum: expected the name of a model param", id="unknown"
        ),
        pytest.param(
            {"learning_rate": {"minimum": 0.01}}, r"expected bounds that admit the default 0\.003", id="default-out"
        ),
        pytest.param({"learning_rate": {"minimum": "low"}}, r"param_bounds\.learning_rate\.minimum", id="not-a-number"),
    ],
)
def test_bad_bounds_are_spec_errors(tmp_path, bounds, pattern):
    with pytest.raises(SpecError, match=pattern):
        load_spec(spec_variant(tmp_path, {"model": {"param_bounds": bounds}}))


def test_overrides_split_the_params_by_where_they_apply():
    split = overrides({"max_steps": 10, "batch_size": 8, "force_promote": True, "data_source": None, "lr": 0.1})
    assert split.model == {"lr": 0.1} and split.train == {"max_steps": 10, "batch_size": 8}
    assert split.force_promote is True and split.data_source is None


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("", True),
        ("penguins/*.parquet", True),
        ("daily/{{ ds }}/*.parquet", True),
        ("{root}/penguins/*.parquet", True),
        ("file://{root}/penguins/x.parquet", True),
        ("../etc/passwd", False),
        ("penguins/../../etc/passwd", False),
        ("..", False),
        ("/etc/passwd", False),
        ("{root}x/sibling.parquet", False),  # a sibling folder whose name starts like the data folder
        ("file:///etc/passwd", False),
        ("s3://bucket/data.parquet", False),
    ],
)
def test_the_data_source_param_admits_only_paths_in_the_data_folder(tmp_path, monkeypatch, value, accepted):
    import jsonschema

    root = tmp_path / "data.d"
    monkeypatch.setenv("CONTRAIL_DATA_DIR", str(root))
    schema = _schemas(tmp_path, {})["data_source"]
    value = value.replace("{root}", str(root))
    valid = jsonschema.Draft7Validator(schema).is_valid(value)
    assert valid is accepted, (value, schema["pattern"])
    assert jsonschema.Draft7Validator(schema).is_valid(None)
