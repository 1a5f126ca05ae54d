"""The train/eval split: a pure function of each row's key (or its file and position) and the seed.

A row is in eval when the 64-bit hash of `seed 0x1F key` (or `seed 0x1F file 0x1F row`) falls
below `eval_fraction * 2**64`, so a row lands on the same side on every run, in any task, in any
file order. Hashed for a whole column at once: FNV-1a over the bytes, one byte position at a
time, then the splitmix64 finalizer to spread the bits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from contrail.spec import DataSpec

if TYPE_CHECKING:
    from contrail.data import InputFile


def split_mask(table: pa.Table, origins: list[tuple[InputFile, int]], spec: DataSpec, *, offset: int = 0) -> np.ndarray:
    """True for eval rows. A row's side depends only on its key (or file name and row) and the
    seed: the 64-bit hash of `seed 0x1F key` (or `seed 0x1F file 0x1F row`) below
    `eval_fraction * 2**64`. `offset`: the file's row number of the table's first row (a batch of
    a file read in batches; one origin then). Hashed for all rows at once: FNV-1a over the bytes, one byte
    position at a time, then the splitmix64 finalizer to spread the bits."""
    seed = spec.split.seed
    if spec.key is not None:
        hashes = [_row_hashes(f"{seed}\x1f".encode(), table.column(spec.key))]
    else:
        hashes = [
            _row_hashes(f"{seed}\x1f{path.name}\x1f".encode(), pa.array(np.arange(offset, offset + n, dtype=np.int64)))
            for path, n in origins
        ]
    joined = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    return joined < np.uint64(min(int(spec.split.eval_fraction * 2**64), 2**64 - 1))


_FNV_PRIME = np.uint64(0x100000001B3)


def _row_hashes(prefix: bytes, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    text = pc.cast(values, pa.large_string()).cast(pa.large_binary())
    text = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
    n = len(text)
    start = 0xCBF29CE484222325
    for byte in prefix:
        start = ((start ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    hashes = np.full(n, start, dtype=np.uint64)
    if n:
        offsets = np.frombuffer(text.buffers()[1], dtype=np.int64)[text.offset : text.offset + n + 1]
        raw = text.buffers()[2]
        data = np.frombuffer(raw, dtype=np.uint8) if raw is not None else np.zeros(0, np.uint8)
        lengths = np.diff(offsets)
        with np.errstate(over="ignore"):
            for j in range(int(lengths.max())):
                active = np.flatnonzero(lengths > j)
                byte = data[offsets[active] + j].astype(np.uint64)
                hashes[active] = (hashes[active] ^ byte) * _FNV_PRIME
    return _splitmix64(hashes)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))
