from __future__ import annotations

import re

import pytest
from tests_support import PIPELINES

from contrail.errors import SpecError
from contrail.spec import load_spec


def test_every_shipped_spec_is_valid():
    for path in sorted(PIPELINES.glob("*.yaml")):
        loaded = load_spec(path)
        assert loaded.spec.name == path.stem


def test_defaults_fill_what_the_spec_leaves_out(write_spec):
    loaded = load_spec(write_spec({"train": {"early_stopping": {"monitor": "val_accuracy"}}}))
    es = loaded.spec.train.early_stopping
    assert (es.monitor, es.mode, es.min_delta) == ("val_accuracy", "min", 0.001)
    assert loaded.spec.data.split.eval_fraction == 0.25


def test_hash_changes_with_content(write_spec):
    a = load_spec(write_spec()).spec.hash()
    b = load_spec(write_spec({"train": {"max_steps": 7}})).spec.hash()
    assert a != b


class TestSpecInvalid:
    @pytest.mark.parametrize(
        ("changes", "pattern"),
        [
            pytest.param(
                {"train": {"batch_size": "big"}},
                r"field 'train\.batch_size': expected a valid integer.*found 'big'",
                id="wrong-type",
            ),
            pytest.param(
                {"train": {"patiense": 3}}, r"field 'train\.patiense': expected no such field", id="unknown-field"
            ),
            pytest.param(
                {"data": {"format": "xlsx"}},
                r"field 'data\.format': expected 'parquet' or 'csv', found 'xlsx'",
                id="bad-choice",
            ),
            pytest.param(
                {"data": {"label": {"column": "species", "task": "ranking"}}},
                r"field 'data\.label\.task': expected 'binary', 'multiclass' or 'regression'",
                id="bad-task",
            ),
            pytest.param(
                {"train": {"early_stopping": {"monitor": "val_mae"}}},
                r"train\.early_stopping\.monitor: expected one of .*val_accuracy.*found 'val_mae'",
                id="metric-not-for-task",
            ),
            pytest.param(
                {"model": {"build_fn": "no_such_module_anywhere:build"}},
                r"field 'model\.build_fn': expected an importable module, found no module 'no_such_module_anywhere'",
                id="missing-build-fn-module",
            ),
            pytest.param(
                {"data": {"features": {"bill length": {"type": "float"}, "<script>": {"type": "string"}}}},
                r"field 'data\.features': expected feature names of letters, digits and '_'.*"
                r"found 'bill length', '<script>'",
                id="feature-name-not-a-signature-input",
            ),
            pytest.param(
                {"schedule": {"assets": ["not a uri"]}},
                r"field 'schedule': expected a cron string, or \{assets: \[URI, \.\.\.\], cron: optional\}.*"
                r"at assets\.0: String should match pattern .*found 'not a uri'",
                id="bad-asset-uri",
            ),
            pytest.param(
                {"export": {"promote_if": {"thresholds": {"val_auc": {"min": 0.7}}}}},
                r"export\.promote_if\.thresholds\.val_auc: expected an evaluation metric \(val_loss, val_accuracy\)",
                id="gate-on-a-metric-the-task-lacks",
            ),
            pytest.param(
                {"export": {"promote_if": {"thresholds": {"val_loss": {}}}}},
                r"field 'export\.promote_if\.thresholds\.val_loss': .*expected min, max or both, found neither",
                id="gate-without-a-bound",
            ),
            pytest.param(
                {"evaluate": {"metrics": ["precision"]}},
                r"evaluate\.metrics: expected metrics of a multiclass label \(per_class_recall, log_loss\), "
                r"found 'precision'",
                id="metric-of-another-task",
            ),
            pytest.param(
                {"evaluate": {"slices": ["island", ["island", "bill_length_mm"]]}},
                r"evaluate\.slices: expected string or int features of data\.features, "
                r"found 'bill_length_mm' \(a float feature\)",
                id="slice-on-a-float",
            ),
            pytest.param(
                {"export": {"promote_if": {"max_slice_regression": 0.02}}},
                r"export\.promote_if\.max_slice_regression: expected evaluate\.slices to check, found none",
                id="slice-gate-without-slices",
            ),
            pytest.param(
                {"data": {"drift": {"per_feature": {"bill_width_mm": 0.2}}}},
                r"field 'data': .*drift\.per_feature: expected features of data\.features, found bill_width_mm",
                id="drift-threshold-of-an-unknown-feature",
            ),
            pytest.param(
                {"data": {"features": {"bill_length_mm": {"type": "float", "encoding": "one_hot"}}}},
                r"field 'data\.features\.bill_length_mm': .*encoding: expected one of normalized, discretized, "
                r"log, none for a float feature, found 'one_hot'",
                id="encoding-that-does-not-fit-the-type",
            ),
            pytest.param(
                {"data": {"features": {"island": {"type": "string", "encoding": {"embedding": {"dim": 0}}}}}},
                r"field 'data\.features\.island\.encoding\.dim': expected greater than 0.*found 0",
                id="embedding-dim-of-zero",
            ),
            pytest.param(
                {"data": {"features": {"year": {"type": "int", "encoding": {"discretized": {"bins": 1}}}}}},
                r"field 'data\.features\.year\.encoding\.bins': expected greater than or equal to 2.*found 1",
                id="one-bin",
            ),
            pytest.param(
                {"data": {"crosses": [{"features": ["island", "bill_length_mm"], "bins": 16}]}},
                r"field 'data\.crosses': expected string or int features of data\.features, "
                r"found 'bill_length_mm' \(a float feature\)",
                id="cross-over-a-number",
            ),
            pytest.param(
                {"data": {"features": {"island": {"type": "string", "encoding": {"embedding": 8}}}}},
                r"field 'data\.features\.island\.encoding': expected \{embedding: \{setting: value\}\}.*found \{'embedding': 8\}",
                id="encoding-settings-not-a-mapping",
            ),
            pytest.param(
                {
                    "data": {
                        "crosses": [
                            {"features": ["island", "sex"], "bins": 8},
                            {"features": ["island", "sex"], "bins": 16},
                        ]
                    }
                },
                r"field 'data\.crosses': expected each cross once, found 'island_x_sex' twice",
                id="the-same-cross-twice",
            ),
            pytest.param(
                {"data": {"features": {"bill_length_mm": {"type": "float_list"}}}},
                r"field 'data\.features\.bill_length_mm': .*expected a length for a float_list feature, found none",
                id="float-list-without-a-length",
            ),
            pytest.param(
                {"train": {"class_weight": {"Adelie": 0}}},
                r"field 'train\.class_weight.*expected greater than 0",
                id="class-weight-of-zero",
            ),
            pytest.param(
                {"export": {"promote_if": {"confidence": 1.0}}},
                r"field 'export\.promote_if\.confidence': expected less than 1",
                id="confidence-of-one",
            ),
            pytest.param(
                {"data": {"split": {"eval_fraction": 1.5}}},
                r"field 'data\.split\.eval_fraction': expected less than 1.*found 1\.5",
                id="out-of-range",
            ),
        ],
    )
    def test_error_names_file_line_field_expected_and_found(self, write_spec, changes, pattern):
        path = write_spec(changes)
        with pytest.raises(SpecError, match=pattern) as info:
            load_spec(path)
        assert re.search(rf"{re.escape(str(path))}:\d+", str(info.value)), "the error must name the file and line"

    def test_missing_required_field(self, write_spec):
        path = write_spec()
        path.write_text(path.read_text().replace("  label:", "  labels:"))
        with pytest.raises(SpecError, match=r"field 'data\.label': expected a value, found nothing"):
            load_spec(path)

    def test_line_number_points_at_the_field(self, write_spec):
        path = write_spec({"train": {"batch_size": -3}})
        line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "batch_size" in text)
        with pytest.raises(SpecError, match=rf"{re.escape(path.name)}:{line}: field 'train\.batch_size'"):
            load_spec(path)

    def test_not_yaml(self, tmp_path):
        path = tmp_path / "broken.yaml"
        path.write_text("name: broken\ndata: [unclosed\n")
        with pytest.raises(SpecError, match=r"broken\.yaml:\d+: not valid YAML"):
            load_spec(path)

    def test_name_must_match_file(self, write_spec):
        path = write_spec()
        renamed = path.with_name("other.yaml")
        path.rename(renamed)
        with pytest.raises(SpecError, match=r"field 'name': expected the file name 'other'.*found 'penguins'"):
            load_spec(renamed)
