"""One error tree, and one place foreign errors become Contrail's."""

from __future__ import annotations

import json

import pytest

from contrail import errors
from contrail.errors import ContrailError, CorruptRecordError, SpecError, translate, translating


def test_every_error_class_is_under_the_base_and_drawn_in_the_docstring():
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)]
    assert all(issubclass(c, ContrailError) for c in classes)
    for cls in classes:
        assert cls.__name__ in errors.__doc__, cls.__name__


def test_translate_names_where_expected_and_found_and_keeps_the_cause():
    try:
        json.loads("{nope")
    except ValueError as exc:
        error = translate(exc, CorruptRecordError, "/d/stats.json", expected="JSON", path="/d/stats.json")
    assert str(error).startswith("/d/stats.json: expected JSON, found: JSONDecodeError: Expecting property name")
    assert error.path == "/d/stats.json" and error.field is None


def test_translating_passes_contrail_errors_through_untouched():
    original = SpecError("spec.yaml: field 'x': expected y, found z", path="spec.yaml", field="x")
    with pytest.raises(SpecError) as caught, translating(CorruptRecordError, "elsewhere"):
        raise original
    assert caught.value is original


def test_translating_wraps_only_what_it_is_told_to_catch():
    with pytest.raises(
        CorruptRecordError, match=r"f\.parquet: expected a readable file, found bad bytes \(OSError: x\)"
    ):
        with translating(CorruptRecordError, "f.parquet", expected="a readable file", found="bad bytes", catch=OSError):
            raise OSError("x")
    with pytest.raises(KeyError), translating(CorruptRecordError, "f.parquet", catch=OSError):
        raise KeyError("not caught")
