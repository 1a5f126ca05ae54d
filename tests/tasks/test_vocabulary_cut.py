"""A vocabulary cut on purpose (`max_vocab_size`) is not drift; values never seen in train are."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contrail import inference, preprocess
from contrail.demo import penguins_table
from contrail.errors import UnknownCategoryError


def _run(spec, source, step_dir):
    return preprocess.run(preprocess.PreprocessArgs(str(spec), source, str(step_dir)))


def test_cut_values_are_counted_apart_and_do_not_fail_the_oov_check(write_spec, penguins_dir, tmp_path):
    # Three islands, a vocabulary of one: most eval values are outside it, none is unseen.
    spec = write_spec({"data": {"features": {"island": {"type": "string", "max_vocab_size": 1}}}})
    result = _run(spec, str(penguins_dir / "penguins" / "*.parquet"), tmp_path / "pre")
    island = json.loads(Path(result.stats).read_text())["features"]["island"]
    assert island["vocabulary_size"] == 1 and island["eval_unseen_count"] == 0
    assert island["eval_cut_count"] == island["eval_oov_count"] > 0
    assert island["eval_cut_fraction"] > 0.05  # would have failed max_oov_fraction before
    (schema_island,) = (f for f in json.loads(Path(result.schema).read_text())["features"] if f["name"] == "island")
    assert 0.3 < schema_island["cut_fraction"] < 0.8  # the train values the cut left out


def test_unseen_values_beyond_tolerance_still_fail_and_say_what_the_cut_was(write_spec, tmp_path):
    table = penguins_table()
    islands = [f"Island-{i}" if i % 3 == 0 else v for i, v in enumerate(table.column("island").to_pylist())]
    table = table.set_column(table.schema.get_field_index("island"), "island", pa.array(islands))
    (tmp_path / "data").mkdir()
    pq.write_table(table, tmp_path / "data" / "part-0.parquet")
    spec = write_spec({"data": {"features": {"island": {"type": "string", "max_vocab_size": 2}}}})
    with pytest.raises(
        UnknownCategoryError, match=r"never seen in the train split .* found \d+\.\d% .*max_vocab_size left out"
    ):
        _run(spec, str(tmp_path / "data" / "*.parquet"), tmp_path / "pre")


def test_scoring_allows_the_models_cut_but_not_more(tmp_path):
    features = {"island": {"name": "island", "type": "string", "vocabulary": ["Biscoe"], "cut_fraction": 0.5}}
    same = pa.table({"island": ["Biscoe", "Dream"] * 50})  # 50% outside: the cut's share
    inference._check_categories(same, features, 0.05, tmp_path / "same.parquet")
    drifted = pa.table({"island": ["Biscoe"] * 30 + ["Dream"] * 30 + ["Atlantis"] * 40})
    with pytest.raises(UnknownCategoryError, match=r"beyond the 50\.0% its max_vocab_size cut .* found 70\.0%"):
        inference._check_categories(drifted, features, 0.05, tmp_path / "drifted.parquet")
