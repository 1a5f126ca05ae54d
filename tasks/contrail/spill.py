"""Serialized records on their way to TFRecord shards, on disk instead of in memory.

Preprocess reads its input a batch at a time. Each train record goes to one of `buckets` spill
files, chosen by a seeded hash of the row (its key, or its file and position); eval records go
to one spill file in input order. Once every file is read, each bucket is loaded alone, put in
a seeded random order, and streamed into the shards. So the train split is written in a random
order that depends only on the data and the seed, while memory holds a few buckets (about
`BUCKET_ROWS` records each: the one being read, and those the shards in flight still frame
from) and no copy of them, however many rows there are.

A spill folder is a part of the work: one task writes a single folder; the fan-out's parts each
write one (committed with the part), and the reduce streams bucket k of every part, in part
order, which is bucket k of the single folder. With one bucket, the order is the seeded
permutation of the whole split, as it was when the split was held in memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from contrail import framing, split, tfrecord
from contrail.errors import ArtifactError
from contrail.example_encoder import binary_buffers

BUCKET_ROWS = 250_000  # about this many train records per bucket: what the shuffle holds at once
_SCHEMA = pa.schema([("record", pa.large_binary())])


def bucket_count(estimated_train_rows: int) -> int:
    return max(1, math.ceil(estimated_train_rows / BUCKET_ROWS))


def bucket_name(bucket: int) -> str:
    return f"train-{bucket:05d}.arrow"


EVAL_NAME = "eval.arrow"


class SpillWriter:
    """Appends a part's records to its spill folder: train records by bucket, eval in order."""

    def __init__(self, folder: Path, buckets: int, seed: int) -> None:
        self.folder, self.buckets, self.seed = folder, buckets, seed
        folder.mkdir(parents=True, exist_ok=True)
        self._writers: dict[str, ipc.RecordBatchStreamWriter] = {}
        self.train = self.eval = 0

    def add(self, train: pa.Array, identities: np.ndarray, evals: pa.Array) -> None:
        """One batch's records: `train` with `identities` (their rows' 64-bit hashes), and `evals`."""
        if len(evals):
            self._append(EVAL_NAME, evals)
            self.eval += len(evals)
        if not len(train):
            return
        self.train += len(train)
        if self.buckets == 1:
            self._append(bucket_name(0), train)
            return
        buckets = (identities % np.uint64(self.buckets)).astype(np.int64)
        order = np.argsort(buckets, kind="stable")  # input order within each bucket
        starts = np.searchsorted(buckets[order], np.arange(self.buckets + 1))
        for bucket in np.flatnonzero(np.diff(starts)):
            self._append(bucket_name(int(bucket)), train.take(pa.array(order[starts[bucket] : starts[bucket + 1]])))

    def _append(self, name: str, records: pa.Array) -> None:
        writer = self._writers.get(name)
        if writer is None:
            writer = self._writers[name] = ipc.new_stream(self.folder / name, _SCHEMA)
        writer.write_batch(pa.record_batch([records.cast(pa.large_binary())], schema=_SCHEMA))

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def row_identities(
    rows: pa.Table, file_name: str, offset: int, key: str | None, seed: int, taken: np.ndarray
) -> np.ndarray:
    """The shuffle hash of each of `rows`: the rows of a batch where `taken` is true, the batch's
    first row being row `offset` of its file. A hash of the row's key, or of its file name and
    position, and the seed, with a prefix other than the split's so that the bucket is
    independent of the side."""
    prefix = f"shuffle\x1f{seed}\x1f"
    if key is not None:
        return split._row_hashes(prefix.encode(), rows.column(key))
    positions = pa.array(offset + np.flatnonzero(taken).astype(np.int64))
    return split._row_hashes(f"{prefix}{file_name}\x1f".encode(), positions)


@dataclass(frozen=True)
class Chunk:
    """Records in the order to write them: record `rows[i]` of a buffer, where record j is
    `data[offsets[j]:offsets[j + 1]]`. A bucket's shuffle is a permutation of its rows, never a
    copy of its records, and framing reads them in that order (`framing.write_chunks`)."""

    data: np.ndarray  # uint8
    offsets: np.ndarray  # int64
    rows: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.rows)

    def slice(self, start: int, stop: int | None = None) -> Chunk:
        return Chunk(self.data, self.offsets, self.rows[start:stop])

    @classmethod
    def of(cls, records: pa.Array, rows: np.ndarray | None = None) -> Chunk:
        data, offsets = binary_buffers(records)
        return cls(data, offsets, np.arange(len(records), dtype=np.int64) if rows is None else rows)


def _read(paths: Sequence[Path]) -> pa.Array:
    """Every record of the spill files `paths` (missing ones are empty), in order."""
    chunks = []
    for path in paths:
        if path.exists():
            with pa.OSFile(str(path)) as file, ipc.open_stream(file) as reader:  # not memory-mapped
                chunks += [batch.column(0) for batch in reader]
    return pa.concat_arrays(chunks) if chunks else pa.array([], pa.large_binary())


def train_order(folders: Sequence[Path], buckets: int, seed: int) -> Iterator[Chunk]:
    """The train records, bucket by bucket, each bucket in its seeded random order."""
    for bucket in range(buckets):
        records = _read([f / bucket_name(bucket) for f in folders])
        rng = np.random.default_rng(seed if buckets == 1 else [seed, bucket])
        yield Chunk.of(records, rng.permutation(len(records)).astype(np.int64))


def eval_order(folders: Sequence[Path]) -> Iterator[Chunk]:
    """The eval records in input order, a spill batch at a time."""
    for folder in folders:
        path = folder / EVAL_NAME
        if path.exists():
            # Read into memory, batch by batch: a path is memory-mapped, and every page the
            # framing touched would stay resident until the reader closed (the whole eval split).
            with pa.OSFile(str(path)) as file, ipc.open_stream(file) as reader:
                for batch in reader:
                    yield Chunk.of(batch.column(0))


def write_shards(
    staging: Path, split_name: str, chunks: Iterator[Chunk], total: int, shard_rows: int, compression: str
) -> Iterator[tuple[str, int]]:
    """Stream `total` records from `chunks` into `ceil(total / shard_rows)` shards of near-equal
    size; yields `(shard name, records)` in shard order as each is written. A full shard is
    framed and written on a thread while the next one fills (the framing kernel and the
    compressor release the GIL); at most two shards are written at once, and a third fills, each holding its
    chunks' buffers (a bucket, or a spill batch), never a copy of its records."""
    n_shards = max(1, math.ceil(total / shard_rows))
    names = tfrecord.shard_names(split_name, n_shards, compression)
    sizes = np.diff(np.linspace(0, total, n_shards + 1).astype(int))
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending: list[Future] = []
        index, parts, held = 0, [], 0
        for chunk in chunks:
            while len(chunk):
                if index == n_shards:
                    raise ArtifactError(f"{staging}: expected {total} {split_name} records, found more")
                take = min(len(chunk), int(sizes[index]) - held)
                parts.append(chunk.slice(0, take))
                held += take
                chunk = chunk.slice(take)
                if held == sizes[index]:
                    pending.append(pool.submit(_write_one, staging / names[index], parts, compression))
                    index, parts, held = index + 1, [], 0
                    if len(pending) > 1:
                        yield pending.pop(0).result()
        if index < n_shards:
            raise ArtifactError(
                f"{staging}: expected {total} {split_name} records, found {int(sizes[:index].sum()) + held}"
            )
        for future in pending:
            yield future.result()


def _write_one(path: Path, parts: list[Chunk], compression: str) -> tuple[str, int]:
    return path.name, framing.write_chunks(path, [(p.data, p.offsets, p.rows) for p in parts], compression=compression)
