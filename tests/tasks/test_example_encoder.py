"""The vectorized tf.Example encoder and TFRecord framer, checked against TensorFlow's own
reader (`tf.data.TFRecordDataset`, which checks every CRC) and `tf.io.parse_example` on random
tables."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from contrail import example_encoder, framing, kernels, tfrecord

MISSING_STRING = b"\x00<missing>"
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
FLOAT32 = st.floats(width=32, allow_nan=False, allow_infinity=True)


@st.composite
def tables(draw):
    n = draw(st.integers(min_value=1, max_value=40))
    floats = draw(st.lists(st.one_of(st.none(), FLOAT32), min_size=n, max_size=n))
    ints = draw(st.lists(st.one_of(st.none(), INT64), min_size=n, max_size=n))
    texts = draw(st.lists(st.one_of(st.none(), st.text(max_size=300)), min_size=n, max_size=n))
    name = draw(st.text(alphabet="abcdefghij_", min_size=1, max_size=150))
    return name, floats, ints, texts


def _write_and_read(encoded: example_encoder.Encoded, compression: str, rows=None) -> list[bytes]:
    """Frame and write the records as preprocess does, then read them back with TensorFlow."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shard.tfrecord"
        framing.write(path, framing.frame(encoded.data, encoded.offsets, rows), compression=compression)
        kind = "GZIP" if compression == "gzip" else ""
        return [r.numpy() for r in tf.data.TFRecordDataset(str(path), compression_type=kind)]


def _parse(records: list[bytes], name: str) -> dict[str, np.ndarray]:
    spec = {
        f"{name}_f": tf.io.FixedLenFeature([], tf.float32, default_value=math.nan),
        f"{name}_i": tf.io.FixedLenFeature([], tf.int64, default_value=tfrecord.INT_MISSING),
        f"{name}_s": tf.io.FixedLenFeature([], tf.string, default_value=MISSING_STRING),
    }
    parsed = tf.io.parse_example(tf.constant(records, dtype=tf.string), spec)
    return {k.rsplit("_", 1)[1]: v.numpy() for k, v in parsed.items()}


@settings(max_examples=60, deadline=None)
@given(tables(), st.sampled_from(["none", "gzip"]))
def test_round_trip_through_the_writer_and_parse_example(table, compression):
    name, floats, ints, texts = table
    columns = [
        (f"{name}_f", "float", pa.array(floats, pa.float32())),
        (f"{name}_i", "int", pa.array(ints, pa.int64())),
        (f"{name}_s", "bytes", pa.array(texts, pa.string())),
    ]
    encoded = example_encoder.encode_table(columns)
    records = _write_and_read(encoded, compression)
    assert records == list(encoded.records())
    parsed = _parse(records, name)
    want_f = np.array([math.nan if v is None else v for v in floats], dtype=np.float32)
    np.testing.assert_array_equal(parsed["f"], want_f)
    want_i = np.array([tfrecord.INT_MISSING if v is None else v for v in ints], dtype=np.int64)
    np.testing.assert_array_equal(parsed["i"], want_i)
    assert list(parsed["s"]) == [MISSING_STRING if v is None else v.encode() for v in texts]


@settings(max_examples=30, deadline=None)
@given(tables())
def test_same_features_as_the_protobuf_encoder(table):
    name, floats, ints, texts = table
    columns = [
        (f"{name}_f", "float", pa.array(floats, pa.float32())),
        (f"{name}_i", "int", pa.array(ints, pa.int64())),
        (f"{name}_s", "bytes", pa.array(texts, pa.string())),
    ]
    fast = [
        dict(tf.train.Example.FromString(r).features.feature) for r in example_encoder.encode_table(columns).records()
    ]
    reference = tfrecord.encode_examples(
        [tfrecord.EncodedColumn(n, k, a.to_pylist()) for n, k, a in columns], range(len(floats))
    )
    assert fast == [dict(tf.train.Example.FromString(r).features.feature) for r in reference]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.integers(1, 5), st.data())
def test_fixed_length_lists_round_trip(rows, size, data):
    floats = data.draw(st.lists(st.floats(width=32, allow_nan=False), min_size=rows * size, max_size=rows * size))
    ints = data.draw(st.lists(INT64, min_size=rows * size, max_size=rows * size))
    columns = [
        ("f", "float", pa.FixedSizeListArray.from_arrays(pa.array(floats, pa.float32()), size)),
        ("i", "int", pa.FixedSizeListArray.from_arrays(pa.array(ints, pa.int64()), size)),
    ]
    records = _write_and_read(example_encoder.encode_table(columns), "none")
    spec = {"f": tf.io.FixedLenFeature([size], tf.float32), "i": tf.io.FixedLenFeature([size], tf.int64)}
    parsed = tf.io.parse_example(tf.constant(records, dtype=tf.string), spec)
    np.testing.assert_array_equal(parsed["f"].numpy(), np.array(floats, np.float32).reshape(rows, size))
    np.testing.assert_array_equal(parsed["i"].numpy(), np.array(ints, np.int64).reshape(rows, size))


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_fixed_width_records_in_any_order_are_valid_tfrecords(compression):
    rng = np.random.default_rng(0)
    columns = [(f"x{i}", "float", pa.array(rng.standard_normal(1000), pa.float32())) for i in range(20)]
    columns.append(("label", "int", pa.array(rng.integers(0, 2, 1000))))
    encoded = example_encoder.encode_table(columns)
    rows = rng.permutation(1000)[:700]
    assert _write_and_read(encoded, compression, rows) == list(encoded.records(rows))


def test_the_framer_writes_what_tensorflows_writer_writes(tmp_path):
    columns = [
        ("s", "bytes", pa.array(["a", "", None, "ünïcode", "x" * 300])),
        ("f", "float", pa.array([1.5, None, 2, 3, 4], pa.float32())),
    ]
    encoded = example_encoder.encode_table(columns)
    ours, theirs = tmp_path / "ours.tfrecord", tmp_path / "theirs.tfrecord"
    framing.write(ours, framing.frame(encoded.data, encoded.offsets), compression="none")
    tfrecord.write_shard(theirs, encoded.records(), compression="none")
    assert ours.read_bytes() == theirs.read_bytes()  # byte for byte, CRCs included


def _bitwise_crc32c(data: bytes) -> int:
    """CRC-32C one bit at a time, straight from the definition (reflected polynomial 0x82F63B78)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=0, max_size=100), st.integers(0, 7))
def test_both_crc32c_paths_match_the_bitwise_definition(data, skip):
    """The hardware instruction (where this CPU has it) and the slicing-by-8 tables (every other
    CPU), at every alignment and tail length."""
    view = np.frombuffer(data, dtype=np.uint8)[min(skip, len(data)) :]
    want = _bitwise_crc32c(view.tobytes())
    assert kernels.crc32c(view) == want
    assert kernels.crc32c(view, hardware=False) == want
    assert framing.crc32c(b"123456789") == 0xE3069283  # the published CRC-32C check value


@st.composite
def wide_tables(draw):
    """Every scalar kind with nulls, NaNs, negative and 10-byte varints, strings on both sides of
    the short-entry limit (a one-byte length), names long enough to need a two-byte length, and
    a fixed-length float list: the compiled encoder's every branch."""
    n = draw(st.integers(min_value=1, max_value=25))
    name = draw(st.text(alphabet="ab_", min_size=1, max_size=140))
    size = draw(st.integers(1, 40))  # 40 floats: a 160-byte payload, past the short limit
    floats = st.one_of(st.none(), st.floats(width=32))  # NaN too: an absent feature
    return [
        (f"{name}f", "float", pa.array(draw(st.lists(floats, min_size=n, max_size=n)), pa.float32())),
        ("i", "int", pa.array(draw(st.lists(st.one_of(st.none(), INT64), min_size=n, max_size=n)), pa.int64())),
        ("s", "bytes", pa.array(draw(st.lists(st.one_of(st.none(), st.binary(max_size=200)), min_size=n, max_size=n)))),
        (
            "l",
            "float",
            pa.FixedSizeListArray.from_arrays(
                pa.array(draw(st.lists(st.floats(width=32), min_size=n * size, max_size=n * size)), pa.float32()),
                size,
            ),
        ),
        ("k", "bytes", pa.array(draw(st.lists(st.text(max_size=8), min_size=n, max_size=n)), pa.string())),
    ]


@settings(max_examples=150, deadline=None)
@given(wide_tables(), st.integers(0, 5))
def test_the_compiled_encoder_writes_the_numpy_encoders_bytes(columns, start):
    """Byte for byte, on sliced arrays too (offsets that do not start at zero)."""
    start = min(start, len(columns[0][2]) - 1)
    columns = [(name, kind, array.slice(start)) for name, kind, array in columns]
    assert all(example_encoder._compilable(kind, array) for _, kind, array in columns)
    compiled, numpy = example_encoder.encode_table(columns), example_encoder.encode_table_numpy(columns)
    assert compiled.offsets.tolist() == numpy.offsets.tolist()
    assert compiled.data.tobytes() == numpy.data.tobytes()


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**31, 2**63 - 1, -1, -(2**63)])
def test_varints(value):
    block = example_encoder.varint_block(np.array([value], dtype=np.int64).view(np.uint64))
    encoded = bytes(block.data[0, : block.lengths[0]])
    feature = tf.train.Feature(int64_list=tf.train.Int64List(value=[value])).SerializeToString()
    assert feature.endswith(encoded)


@pytest.mark.parametrize(
    "columns",
    [
        pytest.param([("f", "float", pa.array([], pa.float64()))], id="fixed-width"),
        pytest.param(
            [("i", "int", pa.array([], pa.int64())), ("s", "bytes", pa.array([], pa.string()))], id="variable"
        ),
    ],
)
def test_an_empty_table_encodes_to_no_records(columns):
    encoded = example_encoder.encode_table(columns)
    assert len(encoded) == 0 and encoded.offsets.tolist() == [0] and encoded.data.size == 0


@st.composite
def list_tables(draw):
    """Lists of any length (int_list and string_list): missing lists, empty lists, varints of
    every width and strings of many lengths in one column, so no record has a fixed width."""
    n = draw(st.integers(min_value=1, max_value=30))
    ints = draw(st.lists(st.one_of(st.none(), st.lists(INT64, max_size=6)), min_size=n, max_size=n))
    texts = draw(st.lists(st.one_of(st.none(), st.lists(st.text(max_size=200), max_size=5)), min_size=n, max_size=n))
    return ints, texts


@settings(max_examples=50, deadline=None)
@given(list_tables(), st.sampled_from(["none", "gzip"]), st.integers(0, 3), st.sampled_from([pa.list_, pa.large_list]))
def test_lists_of_any_length_round_trip_through_ragged_parsing(table, compression, start, list_type):
    ints, texts = table
    start = min(start, len(ints) - 1)  # a slice: lists whose offsets do not start at zero
    int_array = pa.array(ints, list_type(pa.int64())).slice(start)
    text_array = pa.array(texts, list_type(pa.string())).slice(start)
    columns = [("il", "int", int_array), ("sl", "bytes", text_array), ("x", "float", pa.array([1.0] * len(int_array)))]
    encoded = example_encoder.encode_table(columns)
    records = _write_and_read(encoded, compression)
    assert records == list(encoded.records())
    spec = {"il": tf.io.RaggedFeature(tf.int64), "sl": tf.io.RaggedFeature(tf.string)}
    parsed = tf.io.parse_example(tf.constant(records, dtype=tf.string), spec)
    assert parsed["il"].to_list() == [v or [] for v in ints[start:]]  # a missing list reads as empty
    assert parsed["sl"].to_list() == [[t.encode() for t in v or []] for v in texts[start:]]
    reference = tfrecord.encode_examples(
        [tfrecord.EncodedColumn(n, k, a.to_pylist()) for n, k, a in columns], range(len(int_array))
    )
    fast = [dict(tf.train.Example.FromString(r).features.feature) for r in records]
    assert fast == [dict(tf.train.Example.FromString(r).features.feature) for r in reference]


def test_a_missing_list_whose_span_holds_items_is_left_out():
    """Arrow lets a null list keep a span of values (here a null and a wide int): they are no
    row's items, so the record leaves the feature out and the other rows keep every bit."""
    values = pa.array([2**62 + 1, None, 2**63 - 1, 3], pa.int64())
    ints = pa.ListArray.from_arrays(pa.array([0, 1, 3, 4], pa.int32()), values, mask=pa.array([False, True, False]))
    texts = pa.ListArray.from_arrays(
        pa.array([0, 1, 3, 4], pa.int32()), pa.array(["a", None, "zz", "b"]), mask=pa.array([False, True, False])
    )
    records = _write_and_read(example_encoder.encode_table([("il", "int", ints), ("sl", "bytes", texts)]), "none")
    spec = {"il": tf.io.RaggedFeature(tf.int64), "sl": tf.io.RaggedFeature(tf.string)}
    parsed = tf.io.parse_example(tf.constant(records, dtype=tf.string), spec)
    assert parsed["il"].to_list() == [[2**62 + 1], [], [3]]
    assert parsed["sl"].to_list() == [[b"a"], [], [b"b"]]
    assert "il" not in tf.train.Example.FromString(records[1]).features.feature
