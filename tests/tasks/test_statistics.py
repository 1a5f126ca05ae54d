"""String statistics past the sketch's capacity: a Misra-Gries summary of bounded size that still
finds the frequent values, with its error stated in stats.json."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from contrail import statistics
from contrail.spec import DataSpec


def _spec(max_vocab_size: int) -> DataSpec:
    return DataSpec.model_validate(
        {
            "source": "x",
            "label": {"column": "y", "task": "binary"},
            "features": {"city": {"type": "string", "max_vocab_size": max_vocab_size}},
        }
    )


def _batches(seed: int, batches: int, rows: int):
    """A long tail of rare values, and ten frequent ones with shares 5%, 4.5%, ..., 0.5%."""
    rng = np.random.default_rng(seed)
    heavy = np.repeat(np.arange(10), (np.linspace(0.05, 0.005, 10) * rows).astype(int))
    for _ in range(batches):
        tail = rng.integers(0, 10**9, rows - len(heavy))
        values = np.concatenate([[f"hot-{h}" for h in heavy], [f"v{t}" for t in tail]])
        rng.shuffle(values)
        table = pa.table({"city": pa.array(values), "y": pa.array(rng.integers(0, 2, rows))})
        yield table, rng.random(rows) < 0.2


@pytest.mark.parametrize("capacity", [200, 10**9])
def test_the_frequent_values_survive_a_sketch_of_bounded_size(monkeypatch, capacity):
    monkeypatch.setattr(statistics, "SKETCH_MIN_CAPACITY", capacity)
    spec = _spec(max_vocab_size=10)
    parts = [statistics.file_partials(t, e, spec) for t, e in _batches(0, 8, 5000)]
    files = [statistics.combine_partials(parts[:4], spec), statistics.combine_partials(parts[4:], spec)]
    schema, stats = statistics.merge_partials(files, spec, "p")
    assert schema["features"][0]["vocabulary"] == [f"hot-{i}" for i in range(10)]
    feature = stats["features"]["city"]
    exact = {
        f"hot-{i}": sum(
            int(((t.column("city").to_numpy(zero_copy_only=False) == f"hot-{i}") & ~e).sum())
            for t, e in _batches(0, 8, 5000)
        )
        for i in range(10)
    }
    if capacity == 200:
        assert all(len(f["features"]["city"]["train_counts"]) <= 200 for f in files)
        bound = feature["sketch"]["train_max_undercount"]
        assert bound > 0 and feature["sketch"]["capacity"] == 200
        for value, count in feature["top_values"]:
            assert exact[value] - bound <= count <= exact[value]
        assert feature["eval_unseen_fraction"] > 0.5  # the tail: rare values are dropped, and unseen anyway
    else:
        assert "sketch" not in feature
        assert dict(feature["top_values"]) == exact
