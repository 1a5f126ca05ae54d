"""Reading Parquet and CSV sources with pyarrow, and checking them against the spec.

Shared by preprocess (training data) and batch inference (data to score). Every check raises
a `DataError` subclass that names the file, the column, what was expected and what was found.
"""

from __future__ import annotations

import glob
import hashlib
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from contrail import storage
from contrail.errors import (
    CorruptRecordError,
    EmptyInputError,
    SchemaMismatchError,
    StorageError,
    translate,
    translating,
)
from contrail.spec import FeatureSpec, LabelSpec

CSV_BLOCK_BYTES = 16 << 20
_ARROW_TYPE = {"float": pa.float64(), "int": pa.int64(), "string": pa.string()}


@dataclass(frozen=True)
class Column:
    """A column the step needs: its name, the role it plays, and the spec type it must have."""

    name: str
    role: str  # "feature", "label" or "key"
    type: str  # "float", "int", "string", "float_list", "int_list", "string_list", or "label:<task>", "key"
    nullable: bool
    length: int | None = None  # a float_list's


@dataclass(frozen=True, order=True)
class InputFile:
    """One file to read: a local path, or an object in a store (`s3://bucket/key`, `gs://...`),
    read with pyarrow through fsspec (`CONTRAIL_STORAGE_OPTIONS` and the store's usual
    credentials, as for a remote artifact root). Its text is its location, and errors name it."""

    location: str
    size: int
    # A remote object's content tag (S3's ETag, GCS's generation); None for a local file.
    tag: str | None = None

    def __str__(self) -> str:
        return self.location

    @property
    def name(self) -> str:
        return PurePosixPath(self.location.split("://", 1)[-1]).name

    @property
    def remote(self) -> bool:
        return storage.is_remote(self.location)

    @property
    def path(self) -> Path:
        """The local path (a local file only)."""
        return Path(self.location)

    def filesystem(self) -> tuple[pafs.FileSystem | None, str]:
        """What pyarrow reads this file with: (None, the path) for a local file, or the store's
        file system and the object's path on it."""
        if not self.remote:
            return None, self.location
        fs, path = storage.filesystem(self.location, what=self.location)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path

    def open(self) -> BinaryIO:
        fs, path = self.filesystem()
        # Compression is detected from the name (`.csv.gz`), as pyarrow does for a path.
        return pa.input_stream(path) if fs is None else fs.open_input_stream(path)


def input_file(location: str) -> InputFile:
    """The file at `location` (a path or a URI), as `resolve_files` would list it."""
    if not storage.is_remote(location):
        path = location.removeprefix("file://")
        return InputFile(path, os.stat(path).st_size)
    fs, path = storage.filesystem(location, what=location)
    with translating(StorageError, location, expected="an object that can be listed", path=location):
        return _remote(fs, path, fs.info(path))


def _remote(fs, path: str, info: dict) -> InputFile:
    tag = next((str(info[k]) for k in ("ETag", "etag", "generation", "md5Hash", "crc32c") if info.get(k)), None)
    return InputFile(fs.unstrip_protocol(path), int(info.get("size") or 0), tag)


def resolve_files(pattern: str | Sequence[str], *, field: str) -> list[InputFile]:
    """Expand a glob, local or on an object store (`s3://bucket/data/*.parquet`), or a list of
    globs read as one, into a sorted list of distinct files, or raise `EmptyInputError`."""
    if not isinstance(pattern, str):
        found = {f.location: f for p in pattern for f in _matches(p, field)}
        if not found:
            shown = ", ".join(map(repr, pattern))
            raise EmptyInputError(f"{field}: expected at least one file, found none matching any of {shown}")
        return sorted(found.values())
    matches = _matches(pattern, field)
    if not matches:
        raise EmptyInputError(f"{field}: expected at least one file, found none matching {pattern!r}")
    return matches


def _matches(pattern: str, field: str) -> list[InputFile]:
    if storage.is_remote(pattern):
        fs, path = storage.filesystem(pattern, what=field)
        with translating(StorageError, f"{field}: {pattern}", expected="a listable location", path=pattern):
            found = fs.glob(path, detail=True)
        matches = sorted(_remote(fs, p, info) for p, info in found.items() if info.get("type") == "file")
        bucket = path.split("/", 1)[0]
        if not matches and not fs.exists(bucket):
            raise StorageError(
                f"{field}: expected the bucket {bucket!r} of {pattern!r}, found no such bucket", path=pattern
            )
    else:
        pattern = pattern.removeprefix("file://")
        matches = sorted(
            InputFile(p, os.stat(p).st_size) for p in glob.glob(pattern, recursive=True) if Path(p).is_file()
        )
    return matches


def fingerprints(files: list[InputFile], cache_dir: Path | None = None) -> dict[str, dict]:
    """`{location: {"sha256" or "tag", "bytes"}}`: what says a file's content changed. Local
    files are hashed (once per change of their stat, with `cache_dir`); an object in a store
    is known by the tag the store keeps for its content, or hashed when the store keeps none."""
    from contrail import cache

    local = cache.content_fingerprints([f.path for f in files if not f.remote], cache_dir)
    out = {}
    for f in files:
        if not f.remote:
            out[f.location] = local[f.location]
        elif f.tag is not None:
            out[f.location] = {"tag": f.tag, "bytes": f.size}
        else:
            digest = hashlib.sha256()
            with f.open() as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
            out[f.location] = {"sha256": digest.hexdigest(), "bytes": f.size}
    return out


def required_columns(features: Mapping[str, FeatureSpec], label: LabelSpec | None, key: str | None) -> list[Column]:
    columns = [Column(n, "feature", f.type, f.nullable, f.length) for n, f in features.items()]
    if label is not None:
        columns.append(Column(label.column, "label", f"label:{label.task}", False))
    if key is not None:
        columns.append(Column(key, "key", "key", False))
    return columns


def read_table(path: InputFile, fmt: str, columns: list[Column]) -> pa.Table:
    """Read only `columns` from one file, checked and cast to the spec's types."""
    names = [c.name for c in columns]
    if fmt == "parquet":
        table = _read_parquet(path, names)
    else:
        table = _read_csv(path, columns)
    return pa.table({c.name: _checked(table.column(c.name), c, path) for c in columns})


def iter_tables(path: InputFile, fmt: str, columns: list[Column], batch_rows: int) -> Iterator[tuple[int, pa.Table]]:
    """Read `columns` of one file a batch of at most `batch_rows` rows at a time, each checked and
    cast as `read_table` does: `(offset of its first row, table)`. A file without rows gives one
    empty table. Memory is bounded by the batch (and a Parquet row group), not by the file."""
    names = [c.name for c in columns]
    batches = _parquet_batches(path, names, batch_rows) if fmt == "parquet" else _csv_batches(path, columns)
    offset, empty = 0, None
    for batch in batches:
        if batch.num_rows == 0:
            empty = batch
            continue
        yield offset, pa.table({c.name: _checked(batch.column(c.name), c, path, offset) for c in columns})
        offset += batch.num_rows
    if offset == 0:
        table = empty if empty is not None else pa.table({n: pa.array([], pa.null()) for n in names})
        yield 0, pa.table({c.name: _checked(table.column(c.name), c, path) for c in columns})


def _parquet_batches(path: InputFile, names: list[str], batch_rows: int) -> Iterator[pa.Table]:
    fs, where = _parquet_with_columns(path, names)
    with _parquet_read_errors(path):
        with pq.ParquetFile(where, filesystem=fs, page_checksum_verification=True) as parquet:
            if parquet.metadata.num_rows == 0:
                yield parquet.schema_arrow.empty_table().select(names)
            # A row group at a time: one iter_batches over the whole file kept ~100 MB of every
            # 1M rows it had read alive until the file closed (pyarrow 26, measured here).
            for group in range(parquet.num_row_groups):
                for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=[group], columns=names):
                    yield pa.Table.from_batches([batch])


def _csv_batches(path: InputFile, columns: list[Column]) -> Iterator[pa.Table]:
    header = _csv_header(path)
    _check_columns(path, [c.name for c in columns], header)
    try:
        with path.open() as handle:
            # Blocks of 16 MB: the label's and key's types are inferred from the first block.
            reader = pacsv.open_csv(
                handle,
                read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                convert_options=_csv_convert_options(columns),
            )
            yield reader.schema.empty_table()
            for batch in reader:
                yield pa.Table.from_batches([batch])
    except pa.ArrowInvalid as exc:
        raise _csv_read_error(exc, path, header) from exc


def _csv_convert_options(columns: list[Column]) -> pacsv.ConvertOptions:
    types = {c.name: _ARROW_TYPE[c.type] for c in columns if c.type in _ARROW_TYPE}
    return pacsv.ConvertOptions(include_columns=[c.name for c in columns], column_types=types, strings_can_be_null=True)


def _csv_read_error(exc: pa.ArrowInvalid, path: InputFile, header: list[str]) -> Exception:
    """A CSV row that does not convert or does not have the header's fields, as Contrail's error."""
    if "CSV conversion error" in str(exc):
        return translate(exc, SchemaMismatchError, f"{path}: a value does not have its spec type", path=str(path))
    expected = f"every row to have the header's fields ({len(header)})"
    return translate(exc, SchemaMismatchError, str(path), expected=expected, path=str(path))


def _csv_header(path: InputFile) -> list[str]:
    try:
        with path.open() as handle:
            return pacsv.open_csv(handle).schema.names
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            raise EmptyInputError(
                f"{path}: expected a CSV header and rows, found an empty file", path=str(path)
            ) from exc
        expected = "every row to have the header's fields" if "columns, got" in str(exc) else "a well-formed CSV file"
        raise translate(exc, SchemaMismatchError, str(path), expected=expected, path=str(path)) from exc


def _check_columns(path: InputFile, names: list[str], found: list[str]) -> None:
    missing = [n for n in names if n not in found]
    if missing:
        raise SchemaMismatchError(
            f"{path}: expected column{'s' * (len(missing) > 1)} {', '.join(map(repr, missing))}, "
            f"found only {', '.join(map(repr, found))}"
        )


def _read_parquet(path: InputFile, names: list[str]) -> pa.Table:
    fs, where = _parquet_with_columns(path, names)
    with _parquet_read_errors(path):
        return pq.read_table(where, columns=names, page_checksum_verification=True, filesystem=fs)


def _parquet_with_columns(path: InputFile, names: list[str]) -> tuple[pafs.FileSystem | None, str]:
    """Where pyarrow reads `path` from, once its footer is read and has every column of `names`."""
    fs, where = path.filesystem()
    with translating(CorruptRecordError, str(path), expected="a readable Parquet file", path=str(path)):
        schema = pq.read_schema(where, filesystem=fs)
    _check_columns(path, names, schema.names)
    return fs, where


def _parquet_read_errors(path: InputFile):
    return translating(
        CorruptRecordError,
        f"{path}: Parquet data cannot be read back",
        path=str(path),
        catch=(pa.ArrowException, OSError),
    )


def _read_csv(path: InputFile, columns: list[Column]) -> pa.Table:
    header = _csv_header(path)
    _check_columns(path, [c.name for c in columns], header)
    try:
        with path.open() as handle:
            return pacsv.read_csv(handle, convert_options=_csv_convert_options(columns))
    except pa.ArrowInvalid as exc:
        raise _csv_read_error(exc, path, header) from exc


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_decimal(t)


def _is_integral(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_boolean(t)


# Per spec kind: which Arrow types it accepts, what they are cast to, and how a mismatch reads.
_CASTS: dict[str, list[tuple[Callable[[pa.DataType], bool], pa.DataType]]] = {
    "float": [(_is_number, pa.float64())],
    "int": [(_is_integral, pa.int64())],
    "string": [(_is_text, pa.string())],
    "class": [(_is_text, pa.string()), (_is_integral, pa.int64())],
    "key": [(_is_text, pa.string()), (lambda t: True, pa.string())],
}
_EXPECTED = {"float": "a float", "int": "an int", "string": "a string", "class": "a string, int or bool class"}
_KINDS = {"regression": "float", "binary": "class", "multiclass": "class"}


def _checked(array: pa.ChunkedArray, column: Column, path: InputFile, offset: int = 0) -> pa.ChunkedArray:
    """Cast one column to its spec type and enforce nullability, naming the first bad row (`offset`:
    the file's row number of the array's first row)."""
    what = f"{column.role.capitalize()} {column.name!r} in {path}"
    if column.type == "float_list":
        return _checked_list(array, column, path, what, offset)
    if column.type in ("int_list", "string_list"):
        return _checked_ragged(array, column, path, what, offset)
    kind = column.type.removeprefix("label:")
    kind = _KINDS.get(kind, kind)
    if pa.types.is_dictionary(array.type):
        array = array.cast(array.type.value_type)
    if pa.types.is_null(array.type):  # a column with no values at all (a header-only CSV, say)
        array = array.cast(_CASTS[kind][0][1])
    target = next((t for accepts, t in _CASTS[kind] if accepts(array.type)), None)
    if target is None:
        raise SchemaMismatchError(f"{what}: expected {_EXPECTED[kind]} column, found {array.type}", path=str(path))
    array = array if array.type == target else array.cast(target)
    if not column.nullable:
        _check_present(array, what, path, offset)
    return array


def _checked_list(array: pa.ChunkedArray, column: Column, path: InputFile, what: str, offset: int) -> pa.ChunkedArray:
    """A float_list column: lists of numbers, each of the spec's length (null lists only when
    nullable), as list<float64>."""
    kind = array.type
    if not (
        (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind))
        and _is_number(kind.value_type)
    ):
        raise SchemaMismatchError(
            f"{what}: expected a list of {column.length} floats per row, found {kind}", path=str(path)
        )
    if pa.types.is_fixed_size_list(kind):
        array = array.cast(pa.list_(kind.value_type))
    array = array.cast(pa.list_(pa.float64()))
    lengths = pc.list_value_length(array)
    wrong = pc.fill_null(pc.not_equal(lengths, column.length), False)
    if pc.any(wrong).as_py():
        index = _first_index(wrong)
        raise SchemaMismatchError(
            f"{what}: expected {column.length} floats per row (length), found {lengths[index].as_py()} "
            f"at row {offset + index}",
            path=str(path),
        )
    if not column.nullable:
        _check_present(array, what, path, offset)
        flat = pc.list_flatten(array)
        if len(flat) and not pc.all(pc.is_finite(flat)).as_py():
            raise SchemaMismatchError(
                f"{what}: expected finite values (nullable: false), found NaN or infinity", path=str(path)
            )
    return array


def _checked_ragged(array: pa.ChunkedArray, column: Column, path: InputFile, what: str, offset: int) -> pa.ChunkedArray:
    """An int_list or string_list column: lists of any length, each item present (a list may be
    empty; a null list only when nullable), as list<int64> or list<string>."""
    kind, item = array.type, column.type.removesuffix("_list")
    accepts, target = (_is_integral, pa.int64()) if item == "int" else (_is_text, pa.string())
    if pa.types.is_null(kind) or pa.types.is_null(getattr(kind, "value_type", None) or pa.int8()):
        # No list at all, or only empty ones (pandas writes list<null> then): nothing to check.
        array, kind = array.cast(pa.list_(target)), pa.list_(target)
    if pa.types.is_dictionary(getattr(kind, "value_type", None) or pa.null()):
        array = array.cast(pa.list_(kind.value_type.value_type))
        kind = array.type
    if not (
        (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind))
        and accepts(kind.value_type)
    ):
        raise SchemaMismatchError(f"{what}: expected a list of {item}s per row, found {kind}", path=str(path))
    array = array.cast(pa.list_(target))
    for chunk_offset, chunk in _chunks_with_offsets(array):
        if pc.list_flatten(chunk).null_count:  # the items of the lists present (a null list's span is no one's)
            row = offset + chunk_offset + int(np.argmax(_lists_with_missing_items(chunk)))
            raise SchemaMismatchError(
                f"{what}: expected every item of a list present, found a missing item at row {row} "
                "(leave the item out; a missing list is a null list)",
                path=str(path),
            )
    if not column.nullable:
        _check_present(array, what, path, offset)
    return array


def _lists_with_missing_items(chunk: pa.ListArray) -> np.ndarray:
    """Per row: whether its list (a present one) holds a missing item."""
    items = pc.list_flatten(chunk)
    rows = np.asarray(pc.list_parent_indices(chunk).to_numpy(zero_copy_only=False), dtype=np.int64)
    out = np.zeros(len(chunk), dtype=bool)
    out[rows[np.asarray(pc.is_null(items).to_numpy(zero_copy_only=False), dtype=bool)]] = True
    return out


def _chunks_with_offsets(array: pa.ChunkedArray):
    at = 0
    for chunk in array.chunks:
        yield at, chunk
        at += len(chunk)


def list_matrix(array: pa.ChunkedArray | pa.Array, length: int) -> np.ndarray:
    """A float_list column as a float64 [rows, length] matrix; a null list is a row of NaN."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks else pa.array([], pa.list_(pa.float64()))
    out = np.full((len(array), length), math.nan)
    present = np.asarray(pc.is_valid(array).to_numpy(zero_copy_only=False), dtype=bool)
    if present.any():
        values = pc.list_flatten(array.filter(pa.array(present))).cast(pa.float64())
        out[present] = float_values(pa.chunked_array([values])).reshape(-1, length)
    return out


def _check_present(array: pa.ChunkedArray, what: str, path: InputFile, offset: int = 0) -> None:
    """No nulls, and for floats no NaN or infinity: what `nullable: false` promises."""
    if array.null_count:
        row = offset + _first_index(pc.is_null(array))
        raise SchemaMismatchError(
            f"{what}: expected no missing values (nullable: false), found {array.null_count} null(s), "
            f"the first at row {row}",
            path=str(path),
        )
    if pa.types.is_floating(array.type):
        bad = pc.invert(pc.fill_null(pc.is_finite(array), True))
        if pc.any(bad).as_py():
            index = _first_index(bad)
            row = offset + index
            raise SchemaMismatchError(
                f"{what}: expected finite values (nullable: false), found {array[index].as_py()} at row {row}",
                path=str(path),
            )


def _first_index(mask: pa.ChunkedArray | pa.Array) -> int:
    flat = np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)
    return int(np.argmax(flat))


def float_values(array: pa.ChunkedArray) -> np.ndarray:
    """A float64 numpy view with nulls as NaN."""
    return np.asarray(pc.fill_null(array.cast(pa.float64()), math.nan).to_numpy(zero_copy_only=False), dtype=np.float64)
