"""TFRecord files of `tf.train.Example`: writing shards, counting and verifying them.

A missing value is an absent feature in the Example; readers fill it from the schema's
default (NaN for floats, the int64 minimum for ints, the empty string for strings), and the
in-graph preprocessing imputes it. TensorFlow is imported inside the functions that need it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contrail.errors import CorruptRecordError, translate

INT_MISSING = np.iinfo(np.int64).min  # the int64 a missing int feature is read back as
# The train split's non-nullable float features, packed into one fixed-length float list per
# record (schema.json's `train_packing` lists the columns, in order). Eval records do not pack.
PACKED_FEATURE = "contrail:dense_float"


@dataclass(frozen=True)
class EncodedColumn:
    """One column ready to encode: the Example feature name, its list kind and its values."""

    name: str
    kind: str  # "float", "int" or "bytes"
    values: list  # python scalars (or lists of them), None where missing


def encode_examples(columns: Sequence[EncodedColumn], rows: Sequence[int]) -> Iterator[bytes]:
    """Serialize the given rows of `columns` as `tf.train.Example` protos, one protobuf object a
    row: the reference encoder (about 100x slower than `example_encoder`), kept for tests and
    benchmarks."""
    from tensorflow.core.example import example_pb2, feature_pb2

    for i in rows:
        example = example_pb2.Example()
        feature_map = example.features.feature
        for column in columns:
            value = column.values[i]
            if value is None or (column.kind == "float" and isinstance(value, float) and math.isnan(value)):
                continue
            feature: feature_pb2.Feature = feature_map[column.name]
            values = value if isinstance(value, list) else [value]
            if column.kind == "float":
                feature.float_list.value.extend(values)
            elif column.kind == "int":
                feature.int64_list.value.extend(values)
            else:
                feature.bytes_list.value.extend(v.encode() if isinstance(v, str) else v for v in values)
            if not values:  # an empty list is a present feature with an empty list of its kind
                kind = {"float": "float_list", "int": "int64_list"}.get(column.kind, "bytes_list")
                getattr(feature, kind).SetInParent()
        yield example.SerializeToString()


def write_shard(path: Path, records: Iterable[bytes], *, compression: str) -> int:
    """Write serialized records to one TFRecord file; return how many were written."""
    import tensorflow as tf

    options = tf.io.TFRecordOptions(compression_type=_tf_compression(compression))
    count = 0
    with tf.io.TFRecordWriter(str(path), options) as writer:
        for record in records:
            writer.write(record)
            count += 1
    return count


def count_records(path: Path, *, compression: str) -> int:
    """Read a whole TFRecord file, checking every CRC, and count its records (in TF's C++ loop)."""
    import tensorflow as tf

    ds = tf.data.TFRecordDataset(str(path), compression_type=_tf_compression(compression), buffer_size=1 << 22)
    options = tf.data.Options()
    options.autotune.enabled = False  # with autotune, full passes stalled here for 5-10 s at a time
    ds = ds.with_options(options)
    try:
        # Per-record reduce steps cost ~6 us each; counting whole batches is ten times faster.
        counted = ds.batch(4096).reduce(tf.constant(0, tf.int64), lambda n, b: n + tf.size(b, out_type=tf.int64))
        return int(counted.numpy())
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as exc:
        raise translate(
            exc, CorruptRecordError, str(path), expected="a whole TFRecord file", found="corrupt data", path=str(path)
        ) from exc


def iter_serialized(files: Sequence[str], *, compression: str, batch_size: int = 4096) -> Iterator[np.ndarray]:
    """The records of `files`, in order, as numpy arrays of up to `batch_size` serialized
    records: a whole split streams through in memory for one batch. A corrupt file is named."""
    import tensorflow as tf

    for path in files:
        ds = tf.data.TFRecordDataset(str(path), compression_type=_tf_compression(compression), buffer_size=1 << 22)
        options = tf.data.Options()
        options.autotune.enabled = False
        try:
            for batch in ds.batch(batch_size).prefetch(1).with_options(options):
                yield batch.numpy()
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as exc:
            raise translate(
                exc,
                CorruptRecordError,
                str(path),
                expected="a whole TFRecord file",
                found="corrupt data",
                path=str(path),
            ) from exc


def verify_counts(files: Sequence[tuple[Path, int]], *, compression: str) -> None:
    """Check each shard holds the record count its manifest recorded.

    TFRecord readers return silently fewer records for a file cut at a record boundary or in a
    header, so comparing with the manifest is the only check that catches such a cut.
    """
    for path, expected in files:
        if not path.is_file():
            raise CorruptRecordError(f"{path}: expected a TFRecord shard with {expected} records, found no file")
        found = count_records(path, compression=compression)
        if found != expected:
            raise CorruptRecordError(
                f"{path}: expected {expected} records (from the preprocess manifest), found {found}"
            )


def _tf_compression(compression: str) -> str:
    return "GZIP" if compression == "gzip" else ""


def shard_names(split: str, n_shards: int, compression: str) -> list[str]:
    suffix = ".tfrecord.gz" if compression == "gzip" else ".tfrecord"
    return [f"{split}-{i:05d}-of-{n_shards:05d}{suffix}" for i in range(n_shards)]
