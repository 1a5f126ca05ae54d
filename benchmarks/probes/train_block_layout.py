"""A one-off probe (#18 item 9): CPU per example of the training input pipeline at batch 1024,
for today's packed train records against two block layouts of B rows per record.

    scripts/env python benchmarks/probes/train_block_layout.py WORK_DIR [a b c raw_a]

a      today's layout: one record per row, the 20 floats packed into one list
b      B serialized row records per record, in one bytes list, parsed twice
c      B rows per record, the floats as one list of B x 20 values, the label as a list of B
raw_a  today's records read and batched, not parsed (the reader's ceiling)

Not part of `benchmarks/run.py`: layouts b and c are not something Contrail writes.
"""

import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import tensorflow as tf

from contrail import example_encoder

N, K, BATCH = 1_000_000, 20, 1024
B = int(os.environ.get("B", "64"))


def write(path: Path, records) -> None:
    with tf.io.TFRecordWriter(str(path)) as w:
        for r in records:
            w.write(r)


def example(feature: dict) -> bytes:
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def build(work: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, K)).astype(np.float32)
    y = rng.integers(0, 2, N)
    cols = [
        ("contrail:dense_float", "float", pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), K)),
        ("label", "int", pa.array(y)),
    ]
    enc = example_encoder.encode_table(cols)
    recs = [bytes(enc.data[enc.offsets[i] : enc.offsets[i + 1]]) for i in range(N)]
    for s in range(4):
        lo, hi = s * N // 4, (s + 1) * N // 4
        rows, xs, ys = recs[lo:hi], x[lo:hi], y[lo:hi]
        write(work / f"a-{s}", rows)
        bytes_list = [
            example({"rows": tf.train.Feature(bytes_list=tf.train.BytesList(value=rows[i : i + B]))})
            for i in range(0, len(rows), B)
        ]
        write(work / f"b-{s}", bytes_list)
        columns = [
            example(
                {
                    "dense": tf.train.Feature(float_list=tf.train.FloatList(value=xs[i : i + B].reshape(-1))),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=ys[i : i + B])),
                }
            )
            for i in range(0, len(rows), B)
        ]
        write(work / f"c-{s}", columns)


def main(work: Path, names: list[str]) -> None:
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "a-0").exists():
        build(work)
    options = tf.data.Options()
    options.autotune.enabled = False

    def base(prefix: str, per: int) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices([str(work / f"{prefix}-{s}") for s in range(4)])
        ds = ds.interleave(
            lambda f: tf.data.TFRecordDataset(f, buffer_size=1 << 20).batch(per),
            cycle_length=2,
            num_parallel_calls=2,
            deterministic=True,
        )
        return ds.shuffle(10, seed=1)

    spec = {
        "contrail:dense_float": tf.io.FixedLenFeature([K], tf.float32),
        "label": tf.io.FixedLenFeature([], tf.int64),
    }

    def parse_a(s):
        p = tf.io.parse_example(s, spec)
        dense = p["contrail:dense_float"]
        return {f"x{i}": dense[:, i] for i in range(K)}, tf.cast(p["label"], tf.float32)

    def parse_b(s):
        return parse_a(tf.io.parse_example(s, {"rows": tf.io.RaggedFeature(tf.string)})["rows"].flat_values)

    def parse_c(s):
        p = tf.io.parse_example(s, {"dense": tf.io.RaggedFeature(tf.float32), "label": tf.io.RaggedFeature(tf.int64)})
        dense = tf.reshape(p["dense"].flat_values, [-1, K])
        return {f"x{i}": dense[:, i] for i in range(K)}, tf.cast(p["label"].flat_values, tf.float32)

    cases = {
        "a": lambda: base("a", BATCH).map(parse_a, num_parallel_calls=2, deterministic=True).prefetch(2),
        "b": lambda: base("b", BATCH // B).map(parse_b, num_parallel_calls=2, deterministic=True).prefetch(2),
        "c": lambda: base("c", BATCH // B).map(parse_c, num_parallel_calls=2, deterministic=True).prefetch(2),
        "raw_a": lambda: base("a", BATCH),
    }
    for name in names or cases:
        ds = cases[name]().with_options(options)
        for _ in range(2):
            wall, cpu, n = time.perf_counter(), time.process_time(), 0
            for item in ds:
                n += int((item[1] if isinstance(item, tuple) else item).shape[0])
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(f"{name:6s} {n / wall:>12,.0f} ex/s   cpu {cpu / n * 1e6:.2f} us/ex", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
