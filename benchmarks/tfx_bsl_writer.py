"""Parquet -> TFRecord with tfx-bsl's C++ encoder (RecordBatchToExamples), TFX's own path.

Runs in the benchmark-only environment (benchmarks/requirements-tfx-bsl.txt; `make
bench-tfx-bsl`), never in Contrail's: `benchmarks/run.py --tfx-bsl-python PATH` calls it so
that both writers are timed in the same run, on the same file.

    python benchmarks/tfx_bsl_writer.py INPUT.parquet OUTPUT_DIR REPEAT   # prints rows/s
"""

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf
from tfx_bsl.coders import example_coder


def convert(source: str, out: Path) -> int:
    table = pq.read_table(source)
    rows = 0
    with tf.io.TFRecordWriter(str(out)) as writer:
        for batch in table.to_batches(max_chunksize=65_536):
            # TFX's encoder takes list columns (one list per feature per row): wrap the scalars.
            lists = [_as_list(column) for column in batch.columns]
            batch = pa.RecordBatch.from_arrays(lists, names=batch.schema.names)
            for record in example_coder.RecordBatchToExamples(batch):
                writer.write(record)
            rows += batch.num_rows
    return rows


def _as_list(column: pa.Array) -> pa.Array:
    """A scalar column as TFX's list column: float64 as float32 and strings as bytes (its encoder
    takes neither doubles nor strings), a missing value as a missing list (an empty feature)."""
    if pa.types.is_floating(column.type):
        column = column.cast(pa.float32())
    elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = column.cast(pa.large_binary())
    valid = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    offsets = pa.array(np.concatenate([[0], np.cumsum(valid)]).astype(np.int32))
    return pa.ListArray.from_arrays(offsets, column.drop_null(), mask=pa.array(~valid) if not valid.all() else None)


def main() -> None:
    source, out_dir, repeat = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    out_dir.mkdir(parents=True, exist_ok=True)
    times = []
    for i in range(repeat):
        start = time.perf_counter()
        rows = convert(source, out_dir / f"tfx-bsl-{i}.tfrecord")
        times.append(time.perf_counter() - start)
    counted = sum(1 for _ in tf.data.TFRecordDataset(str(out_dir / "tfx-bsl-0.tfrecord")))
    assert counted == rows, (counted, rows)
    print(rows / statistics.median(times))


if __name__ == "__main__":
    main()
