"""Compiled kernels (numba) for the record writer: `tf.train.Example`s from columns, and
TFRecord framing with CRC-32C, each record written in place.

The numpy encoder (`example_encoder`) is fast when every record has one width; mixed tables
(ints whose varints differ in length, strings, missing values) send it through Arrow joins of
per-column parts, which cost several passes over every byte. Here each record is written once:
a first pass sums every row's length from its values alone, a second writes every byte of
every record at its final place. Both passes walk rows, so a record's bytes are written
together and the working set is one row's values. The kernels release the GIL, so batches and
shards encode on every core from threads.

Numba compiles each kernel once per machine (`cache=True`: a few seconds the first time, read
back from the cache after that). Integer arithmetic stays in int64/uint64 throughout: mixing
signed and unsigned 64-bit values would make numba compute in float64.
"""

from __future__ import annotations

import platform

import llvmlite.binding
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

FLOAT, INT, BYTES = 0, 1, 2  # a column's kind: packed float32s, packed varints, one bytes value
_TAG = np.array([0x12, 0x1A, 0x0A], dtype=np.uint8)  # Feature's field for FloatList, Int64List, BytesList
_POLY = 0x82F63B78  # CRC-32C (Castagnoli), reflected
_SEVEN = np.uint64(7)
_LOW7 = np.uint64(0x7F)
_HIGH = np.uint64(0x80)
_ONE_BYTE = np.uint64(0x80)
# A map entry whose every length fits one byte: its header is the key part and 8 bytes, and
# the entry (key part + 6 + payload) is at most 127 bytes.
_SHORT_OVERHEAD = 8
_SHORT = 121
SLACK = 8  # bytes past the end of a buffer that word-at-a-time copies may touch
_V1, _V2, _V3, _V4, _V5, _V6, _V7, _V8, _V9 = (np.uint64(1 << (7 * k)) for k in range(1, 10))


def _crc_tables() -> np.ndarray:
    """Slicing-by-8 tables: `T[k][b]` is byte `b`'s contribution followed by k zero bytes."""
    table = np.arange(256, dtype=np.int64)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ _POLY, table >> 1)
    tables = np.empty((8, 256), dtype=np.int64)
    tables[0] = table
    for k in range(1, 8):
        tables[k] = table[tables[k - 1] & 0xFF] ^ (tables[k - 1] >> 8)
    return tables


CRC_TABLES = _crc_tables()

# SSE4.2's crc32 instruction (5 GB/s here); slicing-by-8 tables elsewhere (ARM, old x86).
HARDWARE_CRC = platform.machine() in ("x86_64", "AMD64") and bool(
    llvmlite.binding.get_host_cpu_features().get("sse4.2")
)


@intrinsic
def _load_u64(typingctx, array, index):
    """The 8 bytes of a uint8 array at `index` as a little-endian uint64 (one unaligned load)."""

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.load(builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(64).as_pointer()), align=1)

    return types.uint64(array, index), codegen


@intrinsic
def _store(typingctx, array, index, value):
    """Store `value` (a uint64 or a uint32) into a uint8 array at `index`, little-endian, unaligned."""

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        width = context.get_value_type(signature.args[2])
        builder.store(args[2], builder.bitcast(builder.gep(data, [args[1]]), width.as_pointer()), align=1)
        return context.get_dummy_value()

    return types.void(array, index, value), codegen


@intrinsic
def _crc_u64(typingctx, crc, value):
    """SSE4.2 `crc32` over 8 bytes (CRC-32C, reflected, without the final inversion)."""

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(i64, [i64, i64]), "llvm.x86.sse42.crc32.64.64"
        )
        return builder.call(fn, args)

    return types.uint64(types.uint64, types.uint64), codegen


@intrinsic
def _crc_u8(typingctx, crc, value):
    """SSE4.2 `crc32` over one byte."""

    def codegen(context, builder, signature, args):
        i32, i8 = ir.IntType(32), ir.IntType(8)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(i32, [i32, i8]), "llvm.x86.sse42.crc32.32.8"
        )
        result = builder.call(fn, [builder.trunc(args[0], i32), args[1]])
        return builder.zext(result, ir.IntType(64))

    return types.uint64(types.uint64, types.uint8), codegen


_jit = numba.njit(cache=True, nogil=True, boundscheck=False)
# Helpers are inlined at numba's level, so each kernel's row loop is optimized as one body.
# Keep loops out of the per-cell helpers: one loop in `_payload_size` (for int lists) made
# the whole row loop ~10x slower, measured; int lists go through the numpy encoder.
_inline = numba.njit(cache=True, nogil=True, boundscheck=False, inline="always")


@_inline
def _varint_size(value: np.uint64) -> np.int64:
    # Branch-free: wide-range ints have varints of unpredictable sizes, and a loop mispredicts.
    return (
        1
        + np.int64(value >= _V1)
        + np.int64(value >= _V2)
        + np.int64(value >= _V3)
        + np.int64(value >= _V4)
        + np.int64(value >= _V5)
        + np.int64(value >= _V6)
        + np.int64(value >= _V7)
        + np.int64(value >= _V8)
        + np.int64(value >= _V9)
    )


@_inline
def _copy(out, at, source, first, count):
    """`out[at:at + count] = source[first:first + count]`, 8 bytes at a time."""
    k = 0
    while k + 8 <= count:
        _store(out, at + k, _load_u64(source, first + k))
        k += 8
    while k < count:
        out[at + k] = source[first + k]
        k += 1


@_inline
def _copy_over(out, at, source, first, count):
    """`_copy` in whole words: writes up to 7 bytes past `at + count` (and reads as far past
    `first + count`), so both buffers have 8 bytes of slack, and whatever is written next
    overwrites the excess."""
    k = 0
    while k < count:
        _store(out, at + k, _load_u64(source, first + k))
        k += 8


@_inline
def _put_varint_over(out, at, value: np.uint64) -> np.int64:
    """`_put_varint` as one 8-byte store for values below 2**56 (writes up to 7 bytes of excess,
    as `_copy_over`): no loop whose length depends on the value."""
    if value >= _V8:
        return _put_varint(out, at, value)
    size = _varint_size(value)
    word = (
        (value & _LOW7)
        | ((value << np.uint64(1)) & np.uint64(0x7F00))
        | ((value << np.uint64(2)) & np.uint64(0x7F0000))
        | ((value << np.uint64(3)) & np.uint64(0x7F000000))
        | ((value << np.uint64(4)) & np.uint64(0x7F00000000))
        | ((value << np.uint64(5)) & np.uint64(0x7F0000000000))
        | ((value << np.uint64(6)) & np.uint64(0x7F000000000000))
        | ((value << np.uint64(7)) & np.uint64(0x7F00000000000000))
    )
    continued = (np.uint64(1) << np.uint64(8 * (size - 1))) - np.uint64(1)
    _store(out, at, word | (np.uint64(0x8080808080808080) & continued))
    return at + size


@_inline
def _put_varint(out: np.ndarray, at: np.int64, value: np.uint64) -> np.int64:
    while value >= _ONE_BYTE:
        out[at] = np.uint8((value & _LOW7) | _HIGH)
        value >>= _SEVEN
        at += 1
    out[at] = np.uint8(value)
    return at + 1


@_inline
def _payload_size(kind, width, ints, ints_at, offsets, bytes_row, row) -> np.int64:
    # No loop in here: an inner loop in this per-cell function made LLVM compile the whole
    # row loop ~30x slower (measured). Ints are scalars; float lists have one size.
    if kind == FLOAT:
        return 4 * width
    if kind == INT:
        return _varint_size(ints[ints_at + row])
    return offsets[bytes_row, row + 1] - offsets[bytes_row, row]


@_inline
def _entry_size(key_size, payload) -> np.int64:
    """The map entry's size, its own tag and length included, around a list payload of `payload` bytes."""
    values = 1 + _varint_size(np.uint64(payload)) + payload  # 0x0A varint(P) payload: the *List
    feature = 1 + _varint_size(np.uint64(values)) + values  # tag varint(len) *List: the Feature
    entry = key_size + 1 + _varint_size(np.uint64(feature)) + feature  # key, 0x12 varint(len) Feature
    return 1 + _varint_size(np.uint64(entry)) + entry


@_jit
def encode_lengths(kinds, widths, headers, present, ints, ints_at, offsets, bytes_rows, bodies, lengths):
    """Pass 1: each record's body length (its map entries) into `bodies`, and its whole length
    into `lengths` (int64 [rows] each). The arguments are `encode_records`'s; see there."""
    columns, rows = present.shape
    for row in range(rows):
        body = 0
        for c in range(columns):
            if present[c, row]:
                payload = _payload_size(kinds[c], widths[c], ints, ints_at[c], offsets, bytes_rows[c], row)
                key_part = headers[c + 1] - headers[c] - _SHORT_OVERHEAD
                if payload <= _SHORT - key_part:  # every length below is one byte
                    body += key_part + _SHORT_OVERHEAD + payload
                else:
                    body += _entry_size(key_part, payload)
        bodies[row] = body
        lengths[row] = 1 + _varint_size(np.uint64(body)) + body


@_jit
def encode_records(
    kinds,
    widths,
    template,
    headers,
    present,
    floats,
    floats_at,
    ints,
    ints_at,
    data,
    offsets,
    bytes_rows,
    bodies,
    starts,
    out,
):
    """Pass 2: write every record into `out` at `starts[row]` (uint8; from `encode_lengths`).

    Column c (in map order) has `kinds[c]` (FLOAT, INT, BYTES) and `widths[c]` values a row
    (1 but for float lists), and is written in row r when `present[c, r]`. Its map entry's
    header is `template[headers[c]:headers[c + 1]]`: `0x0A len key_part 0x12 len tag len 0x0A
    len`, where `key_part` is `0x0A varint(len(name)) name`; the lengths (one byte each) are
    filled in per row. FLOAT values are `floats[floats_at[c] + r * width + j]` (uint32 bits),
    an INT value is `ints[ints_at[c] + r]` (uint64: an int64's two's complement), a BYTES value
    is `data[offsets[bytes_rows[c], r]:offsets[bytes_rows[c], r + 1]]`."""
    columns, rows = present.shape
    for row in range(rows):
        at = _put_varint(out, starts[row] + 1, np.uint64(bodies[row]))
        out[starts[row]] = 0x0A
        for c in range(columns):
            if not present[c, row]:
                continue
            kind, width = kinds[c], widths[c]
            payload = _payload_size(kind, width, ints, ints_at[c], offsets, bytes_rows[c], row)
            first, last = headers[c], headers[c + 1]
            key_part = last - first - _SHORT_OVERHEAD
            if payload <= _SHORT - key_part:  # the template, its four lengths filled in
                _copy_over(out, at, template, first, last - first)
                out[at + 1] = np.uint8(key_part + 6 + payload)
                at += key_part + 2
                out[at + 1] = np.uint8(payload + 4)
                out[at + 3] = np.uint8(payload + 2)
                out[at + 5] = np.uint8(payload)
                at += 6
            else:  # long values: every length a varint
                values = 1 + _varint_size(np.uint64(payload)) + payload
                feature = 1 + _varint_size(np.uint64(values)) + values
                entry = key_part + 1 + _varint_size(np.uint64(feature)) + feature
                out[at] = 0x0A
                at = _put_varint(out, at + 1, np.uint64(entry))
                for k in range(first + 2, first + 2 + key_part):
                    out[at] = template[k]
                    at += 1
                out[at] = 0x12
                at = _put_varint(out, at + 1, np.uint64(feature))
                out[at] = _TAG[kind]
                at = _put_varint(out, at + 1, np.uint64(values))
                out[at] = 0x0A
                at = _put_varint(out, at + 1, np.uint64(payload))
            if kind == FLOAT:
                base = floats_at[c] + row * width
                for j in range(width):
                    _store(out, at, floats[base + j])
                    at += 4
            elif kind == INT:
                at = _put_varint_over(out, at, ints[ints_at[c] + row])
            else:
                _copy_over(out, at, data, offsets[bytes_rows[c], row], payload)
                at += payload


@_inline
def _crc32c_tables(data, start, length, tables) -> np.int64:
    crc = np.int64(0xFFFFFFFF)
    i = start
    end = start + length
    while i + 8 <= end:
        low = crc ^ (
            np.int64(data[i])
            | (np.int64(data[i + 1]) << 8)
            | (np.int64(data[i + 2]) << 16)
            | (np.int64(data[i + 3]) << 24)
        )
        crc = (
            tables[7, low & 0xFF]
            ^ tables[6, (low >> 8) & 0xFF]
            ^ tables[5, (low >> 16) & 0xFF]
            ^ tables[4, (low >> 24) & 0xFF]
            ^ tables[3, np.int64(data[i + 4])]
            ^ tables[2, np.int64(data[i + 5])]
            ^ tables[1, np.int64(data[i + 6])]
            ^ tables[0, np.int64(data[i + 7])]
        )
        i += 8
    while i < end:
        crc = tables[0, (crc ^ np.int64(data[i])) & 0xFF] ^ (crc >> 8)
        i += 1
    return crc ^ 0xFFFFFFFF


@_inline
def _crc32c_sse42(data, start, length, tables) -> np.int64:
    crc = np.uint64(0xFFFFFFFF)
    i = start
    end = start + length
    while i + 8 <= end:
        crc = _crc_u64(crc, _load_u64(data, i))
        i += 8
    while i < end:
        crc = _crc_u8(crc, data[i])
        i += 1
    return np.int64(crc) ^ 0xFFFFFFFF


_crc32c = _crc32c_sse42 if HARDWARE_CRC else _crc32c_tables


@_inline
def _masked(crc) -> np.int64:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


@_inline
def _put_u32(out, at, value):
    for k in range(4):
        out[at + k] = np.uint8((value >> (8 * k)) & 0xFF)


@_jit
def frame_records(data, offsets, rows, tables, out):
    """TFRecord framing of records `rows` of `data` (record i at `offsets[i]:offsets[i + 1]`),
    back to back into `out`: `uint64 length | masked crc(length) | record | masked crc(record)`.
    `out` holds `sum(lengths) + 16 * len(rows)` bytes."""
    at = 0
    for r in range(rows.shape[0]):
        i = rows[r]
        start = offsets[i]
        length = offsets[i + 1] - start
        for k in range(8):
            out[at + k] = np.uint8((length >> (8 * k)) & 0xFF)
        _put_u32(out, at + 8, _masked(_crc32c(out, at, 8, tables)))
        at += 12
        _copy(out, at, data, start, length)
        _put_u32(out, at + length, _masked(_crc32c(data, start, length, tables)))
        at += length + 4


def encode(kinds, widths, names, present, floats, floats_at, ints, ints_at, data, offsets, bytes_rows):
    """Serialized `tf.train.Example`s, as `(data, offsets)`: record i is `data[offsets[i]:offsets[i + 1]]`.

    Column c is named `names[c]` (bytes), has `kinds[c]` (FLOAT, INT, BYTES) and `widths[c]`
    values a row, and is present in row r where `present[c, r]`; its values are laid out as
    `encode_records` says. `data` ends with `SLACK` spare bytes."""
    count, n = present.shape
    parts = [
        b"\x0a\x00\x0a" + varint_bytes(len(name)) + name + b"\x12\x00" + bytes([_TAG[kinds[c]]]) + b"\x00\x0a\x00"
        for c, name in enumerate(names)
    ]
    headers = np.zeros(count + 1, dtype=np.int64)
    headers[1:] = np.cumsum([len(p) for p in parts])
    template = np.frombuffer(b"".join(parts) + bytes(SLACK), dtype=np.uint8)
    bodies = np.empty(n, dtype=np.int64)
    lengths = np.empty(n, dtype=np.int64)
    encode_lengths(kinds, widths, headers, present, ints, ints_at, offsets, bytes_rows, bodies, lengths)
    starts = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    out = np.empty(int(starts[-1]) + SLACK, dtype=np.uint8)
    columns = (kinds, widths, template, headers, present, floats, floats_at, ints, ints_at, data, offsets, bytes_rows)
    encode_records(*columns, bodies, starts, out)
    return out[: int(starts[-1])], starts


def varint_bytes(value: int) -> bytes:
    """The protobuf varint of a non-negative int."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def frame(data, offsets, rows=None):
    """The TFRecord bytes of records `rows` (every record, in order, when None) of `data`,
    record i at `offsets[i]:offsets[i + 1]`."""
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    rows = np.arange(len(offsets) - 1, dtype=np.int64) if rows is None else np.ascontiguousarray(rows, dtype=np.int64)
    size = int((offsets[rows + 1] - offsets[rows]).sum()) + 16 * len(rows)
    out = np.empty(size, dtype=np.uint8)
    frame_records(np.ascontiguousarray(data, dtype=np.uint8), offsets, rows, CRC_TABLES, out)
    return out


@_jit
def _crc32c_of(data, tables) -> np.int64:
    return _crc32c(data, 0, data.shape[0], tables)


@_jit
def _crc32c_tables_of(data, tables) -> np.int64:
    return _crc32c_tables(data, 0, data.shape[0], tables)


def crc32c(data: np.ndarray, *, hardware: bool = True) -> int:
    """CRC-32C of a uint8 array: by the kernels' own choice, or (`hardware=False`) by the
    slicing-by-8 tables, which the tests check against the hardware instruction."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    return int((_crc32c_of if hardware else _crc32c_tables_of)(data, CRC_TABLES))
