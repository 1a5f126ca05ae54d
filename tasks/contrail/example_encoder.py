"""Vectorized encoding of Arrow columns into serialized `tf.train.Example` protos.

Encoding one `tf.train.Example` per row through the protobuf API costs tens of microseconds a
row. Here the protobuf wire format is written directly with numpy, a column at a time:

    Example   = 0x0A len(Features) Features
    Features  = (0x0A len(Entry) Entry)*            one map entry per present feature
    Entry     = 0x0A len(key) key 0x12 len(Feature) Feature
    Feature   = 0x0A len(BytesList) BytesList  |  0x12 len(FloatList) FloatList
              | 0x1A len(Int64List) Int64List
    *List     = 0x0A len(payload) payload        packed floats/varints, or one bytes value

Each column's framing (tags and length varints, at most a few dozen bytes) becomes a padded 2-D
byte array, one row per record with a length per row. When every part has a fixed width the
records are one structured copy. Otherwise (varints of different sizes, strings, missing values)
the records are laid out back to back: each row's length is summed from its parts, and each part
is scattered once into its rows' places. Variable-length values (strings) never go through a
padded matrix: they are copied from Arrow's buffer (`Ragged`), so one long string does not widen
every record. A missing value is an absent map entry, as protobuf writes it. Map entries come in
column order; protobuf's own order may differ, which `tf.io.parse_example` does not mind.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from contrail import kernels

_FEATURE_TAG = {"bytes": 0x0A, "float": 0x12, "int": 0x1A}


@dataclass(frozen=True)
class Block:
    """Per-row byte strings, left-aligned in a padded matrix: row i is `data[i, :lengths[i]]`."""

    data: np.ndarray  # uint8 [rows, width]
    lengths: np.ndarray  # int64 [rows]

    @property
    def fixed(self) -> bool:
        return bool(self.lengths.size == 0 or (self.lengths == self.data.shape[1]).all())

    def absent(self, present: np.ndarray) -> Block:
        """The same bytes, with nothing in the rows where `present` is false."""
        return Block(self.data, np.where(present, self.lengths, 0))


@dataclass(frozen=True)
class Ragged:
    """Per-row byte strings in a flat buffer: row i is `data[starts[i] : starts[i] + lengths[i]]`."""

    data: np.ndarray  # uint8
    starts: np.ndarray  # int64 [rows]
    lengths: np.ndarray  # int64 [rows]

    fixed = False

    def absent(self, present: np.ndarray) -> Ragged:
        """The same bytes, with nothing in the rows where `present` is false."""
        return Ragged(self.data, self.starts, np.where(present, self.lengths, 0))


Part = Block | Ragged


@dataclass(frozen=True)
class Encoded:
    """Serialized records back to back in `data`, row i at `offsets[i]:offsets[i+1]`."""

    data: np.ndarray  # uint8
    offsets: np.ndarray  # int64 [rows + 1]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def records(self, rows: Sequence[int] | np.ndarray | None = None) -> Iterator[bytes]:
        buffer = self.data.tobytes()
        offsets = self.offsets.tolist()
        for i in range(len(self)) if rows is None else rows:
            yield buffer[offsets[i] : offsets[i + 1]]


def varint_block(values: np.ndarray) -> Block:
    """Protobuf varints of unsigned 64-bit values."""
    values = values.astype(np.uint64, copy=False)
    lengths = np.ones(len(values), dtype=np.int64)
    for shift in range(7, 64, 7):
        lengths += values >= np.uint64(1 << shift)
    width = int(lengths.max()) if len(values) else 1
    out = np.empty((len(values), width), dtype=np.uint8)
    rest = values.copy()
    for i in range(width):
        out[:, i] = (rest & np.uint64(0x7F)).astype(np.uint8) | ((i < lengths - 1).astype(np.uint8) << 7)
        rest >>= np.uint64(7)
    return Block(out, lengths)


def _const(n: int, prefix: bytes) -> Block:
    row = np.frombuffer(prefix, dtype=np.uint8)
    return Block(np.broadcast_to(row, (n, len(row))), np.full(n, len(row), dtype=np.int64))


def join(blocks: Sequence[Part]) -> Part:
    """Row-wise concatenation of parts: a `Block` when each has one width for every row, else
    `Ragged` (never a rows x longest-row matrix)."""
    n = len(blocks[0].lengths)
    if all(b.fixed for b in blocks):
        return _join_fixed(blocks, n)
    laid = _lay_out(blocks)
    return Ragged(laid.data, laid.offsets[:-1], np.diff(laid.offsets))


def _join_fixed(blocks: Sequence[Block], n: int) -> Block:
    """Blocks of one width each, row by row, as one matrix."""
    # Constant blocks (broadcast rows) go into one template row copied to every record;
    # the rest are written through a structured view, one item copy per row.
    width = sum(b.data.shape[1] for b in blocks)
    template = np.zeros(width, dtype=np.uint8)
    fields, at = [], 0
    for b in blocks:
        w = b.data.shape[1]
        if b.data.strides[0] == 0:
            template[at : at + w] = b.data[0] if n else 0
        elif w:
            fields.append((at, b))
        at += w
    data = np.empty((n, width), dtype=np.uint8)
    data[:] = template
    if fields:
        layout = np.dtype(
            {
                "names": [f"f{i}" for i in range(len(fields))],
                "formats": [f"V{b.data.shape[1]}" for _, b in fields],
                "offsets": [o for o, _ in fields],
                "itemsize": width,
            }
        )
        view = data.reshape(-1).view(layout)
        for i, (_, b) in enumerate(fields):
            view[f"f{i}"] = np.ascontiguousarray(b.data).view(f"V{b.data.shape[1]}").reshape(n)
    return Block(data, np.full(n, width, dtype=np.int64))


def _delimited(tag: int, body: Part) -> Part:
    """`tag varint(len(body)) body` for every row."""
    n = len(body.lengths)
    if body.fixed:  # one length for every row: the header is a constant
        return join([_const(n, bytes([tag]) + _varint(body.data.shape[1])), body])
    return join([_const(n, bytes([tag])), varint_block(body.lengths), body])


def _payload(kind: str, array: pa.Array) -> tuple[Part, np.ndarray]:
    """Each row's list payload, and which rows have a value."""
    n = len(array)
    present = np.asarray(pc.is_valid(array).to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_fixed_size_list(array.type):
        return _list_payload(kind, array, present), present
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        return _ragged_list_payload(kind, array), present
    if kind == "float":
        values = np.asarray(pc.fill_null(array.cast(pa.float32()), 0.0).to_numpy(zero_copy_only=False), dtype="<f4")
        present &= ~np.isnan(values)
        return Block(values.view(np.uint8).reshape(n, 4), np.full(n, 4, dtype=np.int64)), present
    if kind == "int":
        values = np.asarray(pc.fill_null(array.cast(pa.int64()), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
        return varint_block(values.view(np.uint64)), present
    binary = pc.fill_null(array.cast(pa.large_binary()), b"")
    offsets = np.frombuffer(binary.buffers()[1], dtype=np.int64)[binary.offset : binary.offset + n + 1]
    raw = binary.buffers()[2]
    raw = np.frombuffer(raw, dtype=np.uint8) if raw is not None else np.zeros(0, dtype=np.uint8)
    return Ragged(raw, offsets[:-1].astype(np.int64), np.diff(offsets).astype(np.int64)), present


def _list_payload(kind: str, array: pa.FixedSizeListArray, present: np.ndarray) -> Block:
    """A fixed-length list per row (a packed FloatList or Int64List). A missing list is an
    absent feature (its row's payload here is whatever the slot holds, and is left out); a missing
    item inside a list is not representable, so it is an error (NaN, a float, is fine)."""
    n, size = len(array), array.type.list_size
    items = array.values.slice(array.offset * size, n * size)  # every slot, a missing list's too
    if items.null_count:
        raise ValueError(f"a fixed-length list column cannot hold missing items ({array.type})")
    if kind == "float":
        values = np.asarray(items.cast(pa.float32()).to_numpy(zero_copy_only=False), dtype="<f4")
        return Block(values.view(np.uint8).reshape(n, 4 * size), np.full(n, 4 * size, dtype=np.int64))
    if kind == "int":
        values = np.asarray(items.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64).reshape(n, size)
        return join([varint_block(values[:, j].view(np.uint64)) for j in range(size)]) if size else _const(n, b"")
    raise ValueError(f"fixed-length lists of {kind} are not supported; use float or int")


def _ragged_list_payload(kind: str, array: pa.ListArray | pa.LargeListArray) -> Ragged:
    """A list of any length per row: packed varints (an Int64List's payload) or the BytesList's
    repeated `0x0A varint(len) value` items, laid out item by item in one buffer (one Arrow
    join over the items, never a rows x longest-list matrix), each row its items' span."""
    offsets = np.asarray(array.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
    first, last = int(offsets[0]), int(offsets[-1])
    if pc.list_flatten(array).null_count:  # in a list present (a missing list's span is left out)
        raise ValueError(f"a list column cannot hold missing items ({array.type})")
    # Every slot between the first and last offset, a missing list's too (filled: it is left out).
    items = pc.fill_null(array.values.slice(first, last - first), 0 if kind == "int" else b"")
    if kind == "int":
        values = np.asarray(items.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)
        item_parts = [varint_block(values.view(np.uint64))]
    elif kind == "bytes":
        value, value_offsets = binary_buffers(items.cast(pa.large_binary()))
        lengths = np.diff(value_offsets)
        item_parts = [_const(len(items), b"\x0a"), varint_block(lengths), Ragged(value, value_offsets[:-1], lengths)]
    else:
        raise ValueError(f"lists of any length hold int or bytes items, found {kind}; use float_list for floats")
    laid = _lay_out(item_parts)  # no items at all: no bytes, one offset
    starts, ends = laid.offsets[offsets[:-1] - first], laid.offsets[offsets[1:] - first]
    return Ragged(laid.data, starts, ends - starts)


def encode_feature(name: str, kind: str, array: pa.Array) -> list[Part]:
    """One map entry (`0x0A len entry`) per row, as parts to lay out in order; nothing where missing."""
    payload, present = _payload(kind, array)
    n = len(present)
    key = name.encode()
    key_part = bytes([0x0A]) + _varint(len(key)) + key
    if payload.fixed and present.all():
        # Every length is known up front: the whole entry is a constant header and the payload.
        width = payload.data.shape[1]
        list_ = bytes([0x0A]) + _varint(width)
        feature = bytes([_FEATURE_TAG[kind]]) + _varint(len(list_) + width) + list_
        inner = key_part + bytes([0x12]) + _varint(len(feature) + width) + feature
        header = bytes([0x0A]) + _varint(len(inner) + width) + inner
        return [_const(n, header), payload]
    if isinstance(payload, Ragged):  # a bytes value, or a list of any length
        items = pa.types.is_list(array.type) or pa.types.is_large_list(array.type)
        # A list of bytes is already the BytesList's body (its repeated values); a bytes value
        # and packed varints get the one length-delimited field around them.
        return _ragged_entry(key_part, _FEATURE_TAG[kind], payload, present, wrap=not (items and kind == "bytes"))
    feature = _delimited(_FEATURE_TAG[kind], _delimited(0x0A, payload))
    entry = _delimited(0x0A, join([_const(n, key_part), _delimited(0x12, feature)]))
    return [entry if present.all() else entry.absent(present)]


def _ragged_entry(key_part: bytes, tag: int, payload: Ragged, present: np.ndarray, wrap: bool = True) -> list[Part]:
    """A map entry whose value has a length of its own per row (a bytes value, a list of any
    length): the framing as one small padded block, computed from the lengths alone, then the
    value copied as it is. `wrap`: the list's body is `0x0A varint(len) payload` (one bytes
    value, or packed varints); otherwise the payload is the body itself (a BytesList's items)."""
    n = len(present)
    value = payload.lengths
    bytes_list = 1 + _varint_lengths(value) + value if wrap else value  # 0x0A varint(len) value
    feature = 1 + _varint_lengths(bytes_list) + bytes_list  # tag varint(len) BytesList
    entry = len(key_part) + 1 + _varint_lengths(feature) + feature  # key 0x12 varint(len) Feature
    header = join(
        [
            _const(n, b"\x0a"),
            varint_block(entry),
            _const(n, key_part + b"\x12"),
            varint_block(feature),
            _const(n, bytes([tag])),
            varint_block(bytes_list),
            *([_const(n, b"\x0a"), varint_block(value)] if wrap else []),
        ]
    )
    if present.all():
        return [header, payload]
    return [header.absent(present), payload.absent(present)]


def _varint_lengths(values: np.ndarray) -> np.ndarray:
    """How many bytes the varint of each (non-negative) value takes."""
    values = values.astype(np.uint64, copy=False)
    lengths = np.ones(len(values), dtype=np.int64)
    for shift in range(7, 64, 7):
        lengths += values >= np.uint64(1 << shift)
    return lengths


_varint = kernels.varint_bytes


def encode_table(columns: Sequence[tuple[str, str, pa.Array]]) -> Encoded:
    """Serialized `tf.train.Example`s, one per row, from (name, kind, array) columns.

    `kind` is "float" (float32 list), "int" (int64 list) or "bytes" (bytes list). A column is
    scalars (one value a row, absent where missing), a `FixedSizeList` (`k` values a row, as
    `tf.io.FixedLenFeature([k])` reads it), or, for ints and bytes, a `List` of any length per
    row (as `tf.io.RaggedFeature` reads it); a missing list is an absent feature, and items
    inside a list are never missing."""
    columns = [(name, kind, _one_array(array)) for name, kind, array in columns]
    if all(_compilable(kind, array) for _, kind, array in columns):
        return _encode_compiled(columns)
    return encode_table_numpy(columns)


def _compilable(kind: str, array: pa.Array) -> bool:
    """Scalars of every kind and fixed-length float lists go through the compiled kernels; lists
    of any length and fixed-length int lists through numpy (`encode_table_numpy`)."""
    if pa.types.is_fixed_size_list(array.type):
        return kind == "float"
    return not (pa.types.is_list(array.type) or pa.types.is_large_list(array.type))


def _encode_compiled(columns: Sequence[tuple[str, str, pa.Array]]) -> Encoded:
    """The columns as the kernels take them (`kernels.encode`): a presence row per column; float
    bits, ints and bytes values each in one buffer, with each column's place in it."""
    n, count = len(columns[0][2]), len(columns)
    kinds = np.array([_KERNEL_KIND[kind] for _, kind, _ in columns], dtype=np.int64)
    widths = np.ones(count, dtype=np.int64)
    present = np.empty((count, n), dtype=np.uint8)
    at = {kind: np.zeros(count, dtype=np.int64) for kind in ("float", "int", "bytes")}  # where each column is
    buffers: dict[str, list[np.ndarray]] = {"float": [], "int": [], "bytes": []}
    sizes = {"float": 0, "int": 0, "bytes": 0}
    offsets = []
    for c, (_, kind, array) in enumerate(columns):
        present[c] = pc.is_valid(array).to_numpy(zero_copy_only=False)
        if pa.types.is_fixed_size_list(array.type):  # a float list: NaN is a value, as in numpy's path
            widths[c] = array.type.list_size
            items = array.values.slice(array.offset * widths[c], n * widths[c])
            if items.null_count:
                raise ValueError(f"a fixed-length list column cannot hold missing items ({array.type})")
            values = np.asarray(items.cast(pa.float32()).to_numpy(zero_copy_only=False), "<f4").view(np.uint32)
        elif kind == "float":
            floats = np.asarray(pc.fill_null(array.cast(pa.float32()), 0.0).to_numpy(zero_copy_only=False), "<f4")
            present[c] &= ~np.isnan(floats)  # NaN is a missing value: an absent feature
            values = floats.view(np.uint32)
        elif kind == "int":
            values = np.asarray(pc.fill_null(array.cast(pa.int64()), 0).to_numpy(zero_copy_only=False), np.int64)
            values = values.view(np.uint64)
        else:
            values, spans = binary_buffers(array)
            offsets.append(spans + sizes["bytes"])
        at[kind][c] = len(offsets) - 1 if kind == "bytes" else sizes[kind]  # bytes: its row of `offsets`
        buffers[kind].append(values)
        sizes[kind] += len(values)
    data, offsets_out = kernels.encode(
        kinds,
        widths,
        [name.encode() for name, _, _ in columns],
        present,
        np.concatenate(buffers["float"]) if buffers["float"] else np.zeros(0, np.uint32),
        at["float"],
        np.concatenate(buffers["int"]) if buffers["int"] else np.zeros(0, np.uint64),
        at["int"],
        np.concatenate([*buffers["bytes"], np.zeros(kernels.SLACK, np.uint8)]),
        np.stack(offsets) if offsets else np.zeros((0, n + 1), np.int64),
        at["bytes"],
    )
    return Encoded(data, offsets_out)


_KERNEL_KIND = {"float": kernels.FLOAT, "int": kernels.INT, "bytes": kernels.BYTES}


def _one_array(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A column as one array: a chunked column's only chunk as it is, more chunks combined."""
    if not isinstance(array, pa.ChunkedArray):
        return array
    return array.chunk(0) if array.num_chunks == 1 else array.combine_chunks()


def encode_table_numpy(columns: Sequence[tuple[str, str, pa.Array]]) -> Encoded:
    """`encode_table` with numpy and Arrow alone: every column type (lists of any length too),
    and the reference the compiled kernels are tested against byte for byte."""
    n = len(columns[0][2])
    columns = [(name, kind, _one_array(array)) for name, kind, array in columns]
    parts = [part for column in columns for part in encode_feature(*column)]
    if all(p.fixed for p in parts):
        width = sum(p.data.shape[1] for p in parts)
        example = join([_const(n, bytes([0x0A]) + _varint(width)), *parts])
        offsets = np.concatenate([[0], np.cumsum(example.lengths)]).astype(np.int64)
        return Encoded(np.ascontiguousarray(example.data).reshape(-1), offsets)
    body = sum((p.lengths for p in parts), np.zeros(n, dtype=np.int64))
    return _lay_out([_const(n, b"\x0a"), varint_block(body), *parts])


def _lay_out(parts: Sequence[Part]) -> Encoded:
    """Each row's parts back to back, rows back to back: every part becomes an Arrow binary
    column (zero-copy where it can) and Arrow's `binary_join_element_wise` concatenates them
    row by row, in C++."""
    n = len(parts[0].lengths)
    if n == 0:
        return Encoded(np.zeros(0, dtype=np.uint8), np.zeros(1, dtype=np.int64))
    columns = [_as_binary(part, n) for part in parts]
    joined = pc.binary_join_element_wise(*columns, pa.scalar(b"", pa.large_binary()), null_handling="skip")
    return Encoded(*binary_buffers(joined))


def binary_array(data: np.ndarray, offsets: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """A large_binary Arrow array over numpy buffers, without a copy: row i is
    `data[offsets[i]:offsets[i + 1]]`, null where `valid` is false."""
    validity = None if valid is None or valid.all() else pa.array(valid).buffers()[1]
    return pa.LargeBinaryArray.from_buffers(
        pa.large_binary(),
        len(offsets) - 1,
        [validity, pa.py_buffer(np.asarray(offsets, dtype=np.int64)), pa.py_buffer(np.ascontiguousarray(data))],
    )


def binary_buffers(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A binary array's bytes and int64 offsets from zero (without a copy when it can): the
    inverse of `binary_array`."""
    array = array.cast(pa.large_binary())
    if array.offset or array.null_count:
        array = pa.concat_arrays([array])  # a compact copy, offsets from zero
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[: len(array) + 1]
    raw = array.buffers()[2]
    data = np.frombuffer(raw, dtype=np.uint8) if raw is not None else np.zeros(0, np.uint8)
    start = int(offsets[0])
    return data[start : int(offsets[-1])], offsets - start


def _as_binary(part: Part, n: int) -> pa.Array | pa.Scalar:
    """A part as a large_binary column (a scalar for a constant); a row without bytes may be null."""
    if isinstance(part, Ragged):
        offsets = np.append(part.starts, part.starts[-1] + part.lengths[-1]).astype(np.int64)
        spans = np.diff(offsets)
        if ((spans == part.lengths) | (part.lengths == 0)).all():  # the values' own buffer: no copy
            return binary_array(part.data, offsets, spans == part.lengths)
        out = np.empty(int(part.lengths.sum()), dtype=np.uint8)
        _copy_ragged(out, np.cumsum(part.lengths) - part.lengths, part)
        return _binary(out, part.lengths)
    width = part.data.shape[1]
    if part.fixed:
        if part.data.strides[0] == 0:  # a constant: the same bytes in every row
            return pa.scalar(bytes(np.asarray(part.data[0])) if n else b"", pa.large_binary())
        return _binary(np.ascontiguousarray(part.data).reshape(-1), np.full(n, width, dtype=np.int64))
    mask = np.arange(width)[None, :] < part.lengths[:, None]
    return _binary(np.asarray(part.data)[mask], part.lengths)


def _binary(data: np.ndarray, lengths: np.ndarray) -> pa.Array:
    return binary_array(data, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))


def _copy_ragged(out: np.ndarray, cursor: np.ndarray, part: Ragged) -> None:
    """`out[cursor[i] : cursor[i] + len_i] = part's row i`, for every row at once."""
    lengths = part.lengths
    total = int(lengths.sum())
    if not total:
        return
    # Each byte's position within its row: 0, 1, ... restarting at every row's first byte.
    within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[np.repeat(cursor, lengths) + within] = part.data[np.repeat(part.starts, lengths) + within]
