"""Unit tests of key names and the index encoding (pure, no Redis)."""

from __future__ import annotations

import hashlib

import pytest

from director.keys import (
    IndexLayout,
    InvalidBlobId,
    Keyspace,
    bucket_bits,
    check_blob_id,
    check_node_id,
    decode_nodes,
    encode_nodes,
    is_blob_id,
    item_index_id,
)
from runtime.nodekeys import report_key

IDS = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(2000)]


@pytest.mark.parametrize("buckets", [16, 256, 4096, 65536, 1 << 18, 1 << 22, 1 << 28])
def test_bucket_and_field_rebuild_the_id(buckets: int) -> None:
    """For every allowed bucket count, (bucket, field) gives back the exact id."""
    layout = IndexLayout(buckets)
    for blob_id in IDS:
        bucket = layout.bucket_of(blob_id)
        assert 0 <= bucket < buckets
        assert layout.blob_id(bucket, layout.field_of(blob_id)) == blob_id


@pytest.mark.parametrize(("buckets", "digits", "field_bytes"),
                         [(4096, 3, 31), (65536, 4, 30), (1 << 20, 5, 30), (1 << 24, 6, 29)])
def test_bucket_name_is_the_id_prefix_when_bits_fill_hex_digits(
        buckets: int, digits: int, field_bytes: int) -> None:
    """With a multiple of 4 bits the bucket name is the id's first hex digits, and the
    field keeps only the bytes the name does not fully hold."""
    layout = IndexLayout(buckets)
    for blob_id in IDS[:200]:
        assert layout.bucket_name(layout.bucket_of(blob_id)) == blob_id[:digits]
        assert len(layout.field_of(blob_id)) == field_bytes


def test_odd_bit_counts_round_the_last_digit_down() -> None:
    """With 2^18 buckets the name is 5 hex digits, the last with its low 2 bits zero."""
    layout = IndexLayout(1 << 18)
    blob_id = "abcdef" + "0" * 58
    assert layout.bucket_name(layout.bucket_of(blob_id)) == "abcdc"


def test_bucket_names_are_distinct_per_bucket() -> None:
    """No two buckets share a name (so no two share a Redis key)."""
    layout = IndexLayout(1 << 10)
    names = {layout.bucket_name(b) for b in range(layout.buckets)}
    assert len(names) == layout.buckets


def test_ids_spread_evenly_over_buckets() -> None:
    """SHA-256 ids fill 16 buckets within 12% of the mean."""
    layout = IndexLayout(16)
    ids = [hashlib.sha256(b"spread %d" % i).hexdigest() for i in range(20_000)]
    counts = [0] * 16
    for blob_id in ids:
        counts[layout.bucket_of(blob_id)] += 1
    mean = len(ids) / 16
    assert max(counts) < 1.12 * mean and min(counts) > 0.88 * mean


@pytest.mark.parametrize("bad", [0, 3, 8, 100, 1 << 29, -16])
def test_bucket_count_must_be_a_power_of_two_in_range(bad: int) -> None:
    """Bucket counts that are not powers of two from 16 to 2^28 are refused."""
    with pytest.raises(ValueError, match="power of two"):
        bucket_bits(bad)


def test_node_lists_encode_sorted_unique_and_compact() -> None:
    """Node numbers are stored sorted, deduplicated, comma-separated ASCII."""
    assert encode_nodes([11, 3, 3]) == b"3,11"
    assert decode_nodes(b"3,11") == (3, 11)
    assert decode_nodes("7") == (7,)
    assert decode_nodes(None) == ()
    assert decode_nodes(b"") == ()
    with pytest.raises(ValueError):
        encode_nodes([])
    with pytest.raises(ValueError):
        encode_nodes([0])


@pytest.mark.parametrize("bad", ["", "ABCDEF" + "0" * 58, "0" * 63, "0" * 65, "g" * 64,
                                 " " + "0" * 63])
def test_blob_ids_are_64_lowercase_hex(bad: str) -> None:
    """Anything but 64 lowercase hex digits is not a blob id."""
    with pytest.raises(InvalidBlobId):
        check_blob_id(bad)
    assert check_blob_id(IDS[0]) == IDS[0]


@pytest.mark.parametrize("bad", ["", "a{b}", "a b", "x\n", "x" * 201])
def test_node_ids_refuse_braces_and_blanks(bad: str) -> None:
    """A node id with braces (hash tags) or blanks is refused, as objstored refuses it."""
    with pytest.raises(ValueError):
        check_node_id(bad)
    assert check_node_id("objstored-1") == "objstored-1"


def test_report_keys_match_what_objstored_writes() -> None:
    """The registry reads reports exactly where objstore.reporter writes them."""
    keys = Keyspace()
    assert keys.report("obj-1a2b") == report_key("obj-1a2b")
    assert keys.report_node_id(report_key("obj-1a2b")) == "obj-1a2b"
    assert keys.report_node_id("objmail:ix:abcd") is None


def test_registry_keys_share_one_hash_tag() -> None:
    """Every registry key carries the {reg} tag, so one script can touch them all."""
    keys = Keyspace("t:")
    for key in (keys.node("n1"), keys.node_numbers, keys.next_number):
        assert "{reg}" in key and key.startswith("t:")


def test_repair_shards_follow_the_first_hex_digit() -> None:
    """Repair entries spread over 16 shards named by the id's first hex digit."""
    keys = Keyspace()
    assert keys.repair_shard(keys.repair_shard_of("f" + "0" * 63)) == "objmail:repair:f"
    assert {keys.repair_shard_of(i) for i in IDS} == set(range(16))


def test_report_keys_follow_the_installation_prefix() -> None:
    """Under a private prefix the registry reads reports where objstored writes them."""
    keys = Keyspace("t9:")
    assert keys.report("n1") == report_key("n1", "t9:") == "t9:node:{n1}:report"
    assert keys.report_pattern == "t9:node:{*}:report"
    assert keys.report_node_id(report_key("n1", "t9:")) == "n1"
    assert keys.report_node_id(report_key("n1")) is None


def test_item_index_ids() -> None:
    """A blob id is its own index id; any other key maps to the SHA-256 of a fixed prefix
    and the key, which is a valid, different blob id."""
    bid = hashlib.sha256(b"content").hexdigest()
    assert is_blob_id(bid.encode()) and item_index_id(bid.encode()) == bid
    assert item_index_id(b"user:42") == hashlib.sha256(b"objmail-item:user:42").hexdigest()
    assert check_blob_id(item_index_id(b"user:42"))
    upper = bid.upper().encode()
    assert not is_blob_id(upper) and item_index_id(upper) != bid
    assert not is_blob_id(bid.encode() + b"/0")
