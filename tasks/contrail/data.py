"""Reading Parquet and CSV sources with pyarrow, and checking them against the spec.

Shared by preprocess (training data) and batch inference (data to score). Every check raises
a `DataError` subclass that names the file, the column, what was expected and what was found.
"""

from __future__ import annotations

import glob
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from contrail.errors import CorruptRecordError, EmptyInputError, SchemaMismatchError, translate, translating
from contrail.spec import FeatureSpec, LabelSpec

_ARROW_TYPE = {"float": pa.float64(), "int": pa.int64(), "string": pa.string()}


@dataclass(frozen=True)
class Column:
    """A column the step needs: its name, the role it plays, and the spec type it must have."""

    name: str
    role: str  # "feature", "label" or "key"
    type: str  # "float", "int", "string", or "label:<task>", "key"
    nullable: bool


def resolve_files(pattern: str, *, field: str) -> list[Path]:
    """Expand a local glob into a sorted list of files, or raise `EmptyInputError`."""
    pattern = pattern.removeprefix("file://")
    matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not matches:
        raise EmptyInputError(f"{field}: expected at least one file, found none matching {pattern!r}")
    return matches


def required_columns(features: Mapping[str, FeatureSpec], label: LabelSpec | None, key: str | None) -> list[Column]:
    columns = [Column(n, "feature", f.type, f.nullable) for n, f in features.items()]
    if label is not None:
        columns.append(Column(label.column, "label", f"label:{label.task}", False))
    if key is not None:
        columns.append(Column(key, "key", "key", False))
    return columns


def read_table(path: Path, fmt: str, columns: list[Column]) -> pa.Table:
    """Read only `columns` from one file, checked and cast to the spec's types."""
    names = [c.name for c in columns]
    if fmt == "parquet":
        table = _read_parquet(path, names)
    else:
        table = _read_csv(path, columns)
    return pa.table({c.name: _checked(table.column(c.name), c, path) for c in columns})


def _read_parquet(path: Path, names: list[str]) -> pa.Table:
    with translating(CorruptRecordError, str(path), expected="a readable Parquet file", path=str(path)):
        schema = pq.read_schema(path)
    missing = [n for n in names if n not in schema.names]
    if missing:
        raise SchemaMismatchError(
            f"{path}: expected column{'s' * (len(missing) > 1)} {', '.join(map(repr, missing))}, "
            f"found only {', '.join(map(repr, schema.names))}"
        )
    with translating(
        CorruptRecordError,
        f"{path}: Parquet data cannot be read back",
        path=str(path),
        catch=(pa.ArrowException, OSError),
    ):
        return pq.read_table(path, columns=names, page_checksum_verification=True)


def _read_csv(path: Path, columns: list[Column]) -> pa.Table:
    types = {c.name: _ARROW_TYPE[c.type] for c in columns if c.type in _ARROW_TYPE}
    try:
        header = pacsv.open_csv(path).schema.names
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            raise EmptyInputError(
                f"{path}: expected a CSV header and rows, found an empty file", path=str(path)
            ) from exc
        expected = "every row to have the header's fields" if "columns, got" in str(exc) else "a well-formed CSV file"
        raise translate(exc, SchemaMismatchError, str(path), expected=expected, path=str(path)) from exc
    missing = [c.name for c in columns if c.name not in header]
    if missing:
        raise SchemaMismatchError(
            f"{path}: expected column{'s' * (len(missing) > 1)} {', '.join(map(repr, missing))}, "
            f"found only {', '.join(map(repr, header))}"
        )
    try:
        return pacsv.read_csv(
            path,
            convert_options=pacsv.ConvertOptions(
                include_columns=[c.name for c in columns], column_types=types, strings_can_be_null=True
            ),
        )
    except pa.ArrowInvalid as exc:
        if "CSV conversion error" in str(exc):
            raise translate(
                exc, SchemaMismatchError, f"{path}: a value does not have its spec type", path=str(path)
            ) from exc
        expected = f"every row to have the header's fields ({len(header)})"
        raise translate(exc, SchemaMismatchError, str(path), expected=expected, path=str(path)) from exc


def _checked(array: pa.ChunkedArray, column: Column, path: Path) -> pa.ChunkedArray:
    """Cast one column to its spec type and enforce nullability, naming the first bad row."""
    what = f"{column.role.capitalize()} {column.name!r} in {path}"
    found = array.type
    if pa.types.is_dictionary(found):
        array = array.cast(found.value_type)
        found = array.type
    kind = column.type.removeprefix("label:")
    if pa.types.is_null(found):  # a column with no values at all (a header-only CSV, say)
        array = array.cast(
            {"float": pa.float64(), "regression": pa.float64(), "int": pa.int64()}.get(kind, pa.string())
        )
        found = array.type
    if kind in ("float", "regression"):
        if not (pa.types.is_floating(found) or pa.types.is_integer(found) or pa.types.is_decimal(found)):
            raise SchemaMismatchError(f"{what}: expected a float column, found {found}")
        array = array.cast(pa.float64())
    elif kind == "int":
        if not (pa.types.is_integer(found) or pa.types.is_boolean(found)):
            raise SchemaMismatchError(f"{what}: expected an int column, found {found}")
        array = array.cast(pa.int64())
    elif kind == "string":
        if not (pa.types.is_string(found) or pa.types.is_large_string(found)):
            raise SchemaMismatchError(f"{what}: expected a string column, found {found}")
        array = array.cast(pa.string())
    elif kind in ("binary", "multiclass"):
        if pa.types.is_boolean(found) or pa.types.is_integer(found):
            array = array.cast(pa.int64())
        elif pa.types.is_string(found) or pa.types.is_large_string(found):
            array = array.cast(pa.string())
        else:
            raise SchemaMismatchError(f"{what}: expected a string, int or bool class column, found {found}")
    elif kind == "key":
        array = array.cast(pa.string()) if not pa.types.is_string(found) else array
    if not column.nullable and array.null_count:
        row = _first_index(pc.is_null(array))
        raise SchemaMismatchError(
            f"{what}: expected no missing values (nullable: false), found {array.null_count} null(s), "
            f"the first at row {row}"
        )
    if not column.nullable and pa.types.is_floating(array.type):
        finite = pc.is_finite(array)
        bad = pc.invert(pc.fill_null(finite, True))
        if pc.any(bad).as_py():
            row = _first_index(bad)
            value = array[row].as_py()
            raise SchemaMismatchError(f"{what}: expected finite values (nullable: false), found {value} at row {row}")
    return array


def _first_index(mask: pa.ChunkedArray | pa.Array) -> int:
    flat = np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)
    return int(np.argmax(flat))


def float_values(array: pa.ChunkedArray) -> np.ndarray:
    """A float64 numpy view with nulls as NaN."""
    return np.asarray(pc.fill_null(array.cast(pa.float64()), math.nan).to_numpy(zero_copy_only=False), dtype=np.float64)
