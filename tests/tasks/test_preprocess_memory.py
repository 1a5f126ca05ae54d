"""Preprocess's memory does not grow with the table: the whole step, in a child process as a task
runs it, on 200k and on 2M rows of a table with floats, nulls, wide ints, strings of 10 and
100k values and a key. Its peak RSS on 2M rows stays within a constant of its peak on 200k
(holding the records, as preprocess once did, added about 1.2 KB per row)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests_support import ROOT, spec_variant

pytestmark = pytest.mark.slow

_CHILD = """
import json, resource, sys
from contrail import preprocess
result = preprocess.run(preprocess.PreprocessArgs(sys.argv[1], sys.argv[2], sys.argv[3]))
print(json.dumps({"rows": result.input_rows, "train": result.train_records, "eval": result.eval_records,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _write(path, rows: int, chunk: int = 500_000) -> None:
    rng = np.random.default_rng(0)
    cities = pa.array([f"city-{j:06d}" for j in range(100_000)])
    writer = None
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        table = pa.table(
            {
                "key": pa.array(np.arange(start, start + n, dtype=np.int64) * 7919),
                "x": pa.array(rng.normal(size=n)),
                "y": pa.array(rng.normal(size=n) * 1e6, mask=rng.random(n) < 0.1),
                "count": pa.array(rng.integers(-(10**12), 10**12, n)),
                "color": pa.array(rng.choice(["red", "green", "blue", "cyan", "teal"], n)),
                "city": cities.take(pa.array(rng.integers(0, 100_000, n))),
                "label": pa.array((rng.random(n) < 0.3).astype(np.int64)),
            }
        )
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=131_072)
    writer.close()


def _preprocess(tmp_path, rows: int) -> dict:
    data = tmp_path / f"data-{rows}"
    data.mkdir()
    _write(data / "part-0.parquet", rows)
    source = str(data / "*.parquet")
    features = {
        "x": {"type": "float"},
        "y": {"type": "float", "nullable": True},
        "count": {"type": "int"},
        "color": {"type": "string"},
        "city": {"type": "string"},
    }
    spec = spec_variant(
        tmp_path / f"spec-{rows}",
        {
            "data": {
                "source": source,
                "key": "key",
                "label": {"column": "label", "task": "binary"},
                "features": features,
                "max_oov_fraction": 1.0,
            }
        },
        name="wide",
    )
    _drop_penguin_features(spec, features)
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(spec), source, str(tmp_path / f"out-{rows}")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _drop_penguin_features(spec_path, features: dict) -> None:
    """spec_variant merges into the penguins spec: keep only this table's features."""
    import yaml

    spec = yaml.safe_load(spec_path.read_text())
    spec["data"]["features"] = features
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))


def test_peak_memory_on_2m_rows_stays_within_a_constant_of_200k(tmp_path):
    small, large = _preprocess(tmp_path, 200_000), _preprocess(tmp_path, 2_000_000)
    assert large["rows"] == 2_000_000 and large["train"] + large["eval"] == 2_000_000
    # 1.8M more rows: holding their records alone would be ~500 MB more.
    assert large["peak_mb"] < small["peak_mb"] + 300, (small, large)
    assert large["peak_mb"] < 1500, large
