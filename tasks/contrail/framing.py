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

import contextlib
import gzip
import os
import struct
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

_POLY = 0x82F63B78  # CRC-32C (Castagnoli), reflected
_BLOCK_ROWS = 1 << 14  # rows per pass: keeps the working set (~6 MB for 365-byte records) in cache
# zlib level 1: measured here on mixed-type train records, 62 MB/s and 0.336 of the size, against
# level 6's 26 MB/s and 0.295. Shards are written once and read a few times; level 6 made
# compression half of the preprocess step's time.
GZIP_LEVEL = 1


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
        out = np.empty((n, width + 16), dtype=np.uint8)
        for start in range(0, n, _BLOCK_ROWS):  # in blocks: the temporaries stay in cache
            block = matrix[start : start + _BLOCK_ROWS] if everything else matrix[rows[start : start + _BLOCK_ROWS]]
            out[start : start + len(block)] = _frame_group(block, width)
        return out.reshape(-1)
    starts = offsets[:-1][rows]
    return np.concatenate(
        [
            _frame_ragged(data, starts[i : i + _BLOCK_ROWS], lengths[i : i + _BLOCK_ROWS])
            for i in range(0, n, _BLOCK_ROWS)
        ]
    )


def _frame_ragged(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Frame records of any lengths: headers, payloads and CRCs scattered into one buffer."""
    n = len(lengths)
    out_offsets = np.concatenate([[0], np.cumsum(lengths + 16)]).astype(np.int64)
    out = np.empty(int(out_offsets[-1]), dtype=np.uint8)
    at = out_offsets[:-1]
    header = lengths.astype("<u8").view(np.uint8).reshape(n, 8)
    out[at[:, None] + np.arange(8)] = header
    out[at[:, None] + np.arange(8, 12)] = _crc_bytes(crc32c_rows(header))
    total = int(lengths.sum())
    if total:  # each byte's position within its record: 0, 1, ... restarting at every record
        within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[np.repeat(at + 12, lengths) + within] = data[np.repeat(starts, lengths) + within]
    out[(at + 12 + lengths)[:, None] + np.arange(4)] = _crc_bytes(crc32c_ragged(data, starts, lengths))
    return out


def _crc_bytes(crc: np.ndarray) -> np.ndarray:
    return mask(crc).astype("<u4").view(np.uint8).reshape(-1, 4)


def _zeros_state(length: int) -> int:
    """CRC-32C's register after `length` zero bytes from its initial value (no final XOR)."""
    while len(_ZEROS) <= length:
        state = _ZEROS[-1]
        _ZEROS.append(int(TABLE[state & 0xFF]) ^ (state >> 8))
    return _ZEROS[length]


_ZEROS = [0xFFFFFFFF]


def crc32c_ragged(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """CRC-32C of records of different lengths, vectorized like `crc32c_rows`.

    Leading zero bytes leave CRC's register at zero, so a record right-aligned in a row of
    zeros of width W has the linear part (crc ^ crc(zeros)) of the record itself. Records are
    taken in order of length, a block at a time, so a block's width is close to its records'
    lengths; then crc(m) = crc_W(padded) ^ Z[W] ^ Z[len(m)], with Z[n] the register after n
    zero bytes."""
    n = len(lengths)
    out = np.empty(n, dtype=np.uint32)
    order = np.argsort(lengths, kind="stable")
    for i in range(0, n, _BLOCK_ROWS):
        rows = order[i : i + _BLOCK_ROWS]
        width = int(lengths[rows[-1]])
        pad = width - lengths[rows]
        position = np.arange(width)[None, :] - pad[:, None]
        valid = position >= 0
        matrix = np.where(valid, data[starts[rows, None] + np.where(valid, position, 0)], 0).astype(np.uint8)
        zeros = np.array([_zeros_state(int(k)) for k in range(int(lengths[rows[0]]), width + 1)], dtype=np.uint32)
        out[rows] = crc32c_rows(matrix) ^ np.uint32(_zeros_state(width)) ^ zeros[lengths[rows] - lengths[rows[0]]]
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
    with _open(path, compression) as handle:
        handle.write(memoryview(np.ascontiguousarray(framed)))


def write_records(path: Path, data: np.ndarray, offsets: np.ndarray, *, compression: str) -> int:
    """Frame and write every record of a concatenated buffer to `path`; return the count.

    Fixed-width records stream out a block of rows at a time, so the framed file never sits
    whole in memory; other records are framed in one buffer."""
    count = len(offsets) - 1
    lengths = np.diff(offsets)
    if not count or offsets[0] != 0 or not (lengths == lengths[0]).all():
        write(path, frame(data, offsets), compression=compression)
        return count
    width = int(lengths[0])
    matrix = data[: count * width].reshape(count, width)
    with _open(path, compression) as handle:
        for start in range(0, count, _BLOCK_ROWS):
            handle.write(memoryview(_frame_group(matrix[start : start + _BLOCK_ROWS], width)))
    return count


@contextlib.contextmanager
def _open(path: Path, compression: str) -> Iterator[Any]:
    # zlib's gzip format is what TF's GZIP option reads; zlib releases the GIL while it works.
    with open(path, "wb") as raw:
        if compression == "gzip":
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0) as compressed:
                yield compressed
        else:
            yield raw


def write_shards(jobs: Sequence[tuple[Path, Any]], *, compression: str) -> Iterator[tuple[Path, int]]:
    """Write each `(path, records)` job, where `records` is an encoded batch (anything with
    `data` and `offsets`, as `example_encoder.Encoded`) or a function returning one, called in
    the worker thread so that encoding runs in parallel too. Shards are independent and numpy
    and zlib release the GIL, so threads use every core. Yields `(path, records written)` in
    job order."""

    def one(job: tuple[Path, Any]) -> tuple[Path, int]:
        path, records = job
        encoded = records() if callable(records) else records
        return path, write_records(path, encoded.data, encoded.offsets, compression=compression)

    workers = max(1, min(len(jobs), os.cpu_count() or 1, 8))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(one, jobs)
