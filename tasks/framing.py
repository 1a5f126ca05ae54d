"""TFRecord framing with numpy: many records framed at once, CRCs included.

A TFRecord file is, per record:

    uint64 length (little-endian) | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)

`tf.io.TFRecordWriter` frames one record per Python call (~3 us each). Here the CRC-32C of
every record is computed for many records at once over a byte matrix (records of equal length
together), using CRC's linearity: a lookup table per byte position, and positions that hold
the same byte in every record (most of a fixed-width Example) folded into one constant. The
file is assembled as one buffer and written with one call, compressed in zlib's gzip format
when asked (which is TF's GZIP). Readers check both CRCs of every record.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

_POLY = 0x82F63B78  # CRC-32C (Castagnoli), reflected
_BLOCK_ROWS = 1 << 16  # rows per pass: keeps the working vectors in cache


def _table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(_POLY), table >> 1).astype(np.uint32)
    return table


TABLE = _table()


def crc32c_scalar(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = int(TABLE[(crc ^ byte) & 0xFF]) ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def mask(crc: np.ndarray | int):
    """TFRecord's masked CRC: rotate right by 15 and add a constant, mod 2**32."""
    if isinstance(crc, int):
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    crc = crc.astype(np.uint64)
    return ((((crc >> np.uint64(15)) | (crc << np.uint64(17))) + np.uint64(0xA282EAD8)) & np.uint64(0xFFFFFFFF)).astype(
        np.uint32
    )


def _position_tables(length: int) -> np.ndarray:
    """`T[j, v]`: what byte value `v` at position `j` of a `length`-byte message adds (XOR) to
    its CRC-32C. CRC is affine over GF(2): crc(m) = crc(zeros) ^ XOR_j T[j, m[j]]."""
    tables = np.empty((length, 256), dtype=np.uint32)
    if length:
        tables[-1] = TABLE
        for j in range(length - 2, -1, -1):  # one more zero byte after position j
            after = tables[j + 1]
            tables[j] = TABLE[after & 0xFF] ^ (after >> 8)
    return tables


def crc32c_rows(matrix: np.ndarray) -> np.ndarray:
    """CRC-32C of each row of a uint8 matrix (all rows the same length).

    Byte positions where every row holds the same value (the Example's keys and tags: most of
    a fixed-width record) fold into one constant; each varying position costs one table
    lookup per row, with no dependency chain between positions."""
    rows, width = matrix.shape
    tables = _position_tables(width)
    zeros_crc = crc32c_scalar(bytes(width))
    if rows == 0:
        return np.empty(0, dtype=np.uint32)
    constant = matrix.min(axis=0) == matrix.max(axis=0)  # two streaming passes, no temporaries
    base = np.uint32(zeros_crc)
    for j in np.flatnonzero(constant):
        base ^= tables[j, matrix[0, j]]
    varying = np.flatnonzero(~constant)
    out = np.empty(rows, dtype=np.uint32)
    varying_tables = tables[varying]
    for start in range(0, rows, _BLOCK_ROWS):
        columns = np.ascontiguousarray(matrix[start : start + _BLOCK_ROWS, varying].T)  # a vector per position
        crc = np.full(columns.shape[1], base, dtype=np.uint32)
        for table, column in zip(varying_tables, columns):
            crc ^= table[column]
        out[start : start + columns.shape[1]] = crc
    return out


def frame(data: np.ndarray, offsets: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """The TFRecord bytes (uint8) of records `rows` (all, in order, when None) of a concatenated
    buffer: record i is `data[offsets[i]:offsets[i + 1]]`."""
    count = len(offsets) - 1
    everything = rows is None
    rows = np.arange(count) if rows is None else np.asarray(rows, dtype=np.int64)
    all_lengths = np.diff(offsets)
    lengths = all_lengths[rows]
    n = len(rows)
    if n == 0:
        return np.empty(0, dtype=np.uint8)
    if count and (all_lengths == all_lengths[0]).all() and offsets[0] == 0:
        # Fixed width (every record the same length): the records are the rows of one matrix.
        width = int(all_lengths[0])
        matrix = data[: count * width].reshape(count, width)
        return _frame_group(matrix if everything else matrix[rows], width).reshape(-1)
    out_offsets = np.concatenate([[0], np.cumsum(lengths + 16)]).astype(np.int64)
    out = np.empty(int(out_offsets[-1]), dtype=np.uint8)
    starts = offsets[:-1][rows]
    for length in np.unique(lengths):
        length = int(length)
        group = np.flatnonzero(lengths == length)
        for start in range(0, len(group), _BLOCK_ROWS):
            part = group[start : start + _BLOCK_ROWS]
            columns = np.arange(length)[None, :]
            framed = _frame_group(data[starts[part, None] + columns], length)
            out[out_offsets[part, None] + np.arange(length + 16)[None, :]] = framed
    return out


def _frame_group(payload: np.ndarray, length: int) -> np.ndarray:
    header = struct.pack("<Q", length)
    header += struct.pack("<I", mask(crc32c_scalar(header)))
    framed = np.empty((len(payload), length + 16), dtype=np.uint8)
    framed[:, :12] = np.frombuffer(header, dtype=np.uint8)
    framed[:, 12 : 12 + length] = payload
    framed[:, 12 + length :] = mask(crc32c_rows(payload)).astype("<u4").view(np.uint8).reshape(-1, 4)
    return framed


def write(path: Path, framed: np.ndarray, *, compression: str) -> None:
    """Write framed records to `path`, GZIP-compressed (TF's `GZIP` option) when asked."""
    buffer = memoryview(np.ascontiguousarray(framed))
    if compression == "gzip":
        buffer = gzip.compress(buffer, compresslevel=6, mtime=0)  # zlib releases the GIL
    with open(path, "wb") as handle:
        handle.write(buffer)
