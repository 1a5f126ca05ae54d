"""Integrity of published TFRecords: the counts in the manifest catch what readers miss."""

from __future__ import annotations

import struct

import pytest

from contrail import example_encoder, tfrecord
from contrail.demo import penguins_table
from contrail.errors import CorruptRecordError


@pytest.fixture
def shard(tmp_path):
    table = penguins_table().drop_null()
    columns = [("bill_length_mm", "float", table.column("bill_length_mm")), ("island", "bytes", table.column("island"))]
    path = tmp_path / "train-00000-of-00001.tfrecord"
    records = list(example_encoder.encode_table(columns).records(range(table.num_rows)))
    assert tfrecord.write_shard(path, records, compression="none") == len(records)
    return path, records


def _record_offsets(data: bytes) -> list[int]:
    """Where each record's 12-byte header starts (length u64, masked crc32c of the length)."""
    offsets, at = [], 0
    while at < len(data):
        offsets.append(at)
        (length,) = struct.unpack("<Q", data[at : at + 8])
        at += 12 + length + 4
    return offsets


def test_an_intact_shard_matches_its_manifest_count(shard):
    path, records = shard
    tfrecord.verify_counts([(path, len(records))], compression="none")


def test_a_cut_at_a_record_boundary_is_caught_by_the_count(shard):
    path, records = shard
    data = path.read_bytes()
    path.write_bytes(data[: _record_offsets(data)[-2]])  # readers see a valid, shorter file
    assert tfrecord.count_records(path, compression="none") == len(records) - 2
    with pytest.raises(
        CorruptRecordError, match=rf"{path.name}: expected {len(records)} records .*found {len(records) - 2}"
    ):
        tfrecord.verify_counts([(path, len(records))], compression="none")


def test_a_cut_inside_a_record_header_is_caught(shard):
    path, records = shard
    data = path.read_bytes()
    path.write_bytes(data[: _record_offsets(data)[-1] + 5])  # 5 bytes into the last header
    with pytest.raises(CorruptRecordError, match=rf"{path.name}: expected {len(records)} records"):
        tfrecord.verify_counts([(path, len(records))], compression="none")


def test_a_flipped_byte_fails_the_crc(shard):
    path, records = shard
    data = bytearray(path.read_bytes())
    data[_record_offsets(bytes(data))[3] + 12 + 4] ^= 0x01  # inside the fourth record's payload
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptRecordError, match=rf"{path.name}: expected a whole TFRecord file, found corrupt data"):
        tfrecord.verify_counts([(path, len(records))], compression="none")
