"""The record format: round trip, corruption detection, and bytes written by the first
encoder (the on-disk format of existing LMDB stores) still reading the same."""

from __future__ import annotations

import pytest

from objstore.record import (
    BIT_STALE,
    BIT_WIN_SENT,
    HEADER_SIZE,
    CorruptRecord,
    Record,
    decode_header,
    decode_record,
    encode_record,
)

#: Records as the original ``objstore/storage.py`` encoder wrote them (captured from it
#: before the split): (key, stored bytes in hex, the record they hold).
OLD_RECORDS = [
    (b"key",
     "01010000070000007b0000000000000009000000000000006400000026c6b98f76616c7565",
     Record(b"key", b"value", 7, 123, 9, 100, BIT_STALE)),
    (b"k\x00\xff",
     "01020000ffffffff0000000000000000ffffffffffffffff00d2496ba466c93b"
     + bytes(range(256)).hex(),
     Record(b"k\x00\xff", bytes(range(256)), 0xFFFFFFFF, 0, 2**64 - 1, 1_800_000_000,
            BIT_WIN_SENT)),
    (b"empty",
     "0100000000000000f4d3496b00000000010000000000000000d2496b03cdd491",
     Record(b"empty", b"", 0, 1_800_000_500, 1, 1_800_000_000, 0)),
]


def test_record_round_trip_and_checksum() -> None:
    """A record decodes to what was encoded; any flipped byte is detected."""
    raw = encode_record(b"key", b"value", 7, 123, 9, 100, BIT_STALE)
    assert len(raw) == HEADER_SIZE + 5
    rec = decode_record(b"key", raw)
    assert (rec.value, rec.flags, rec.exptime, rec.cas, rec.mtime, rec.stale) == (
        b"value", 7, 123, 9, 100, True)
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x01
        with pytest.raises(CorruptRecord):
            decode_record(b"key", bytes(bad))
    with pytest.raises(CorruptRecord):
        decode_record(b"other", raw)  # the key is covered too
    with pytest.raises(CorruptRecord):
        decode_record(b"key", raw[:10])


@pytest.mark.parametrize(("key", "stored", "record"), OLD_RECORDS,
                         ids=[r[0].decode("latin-1") for r in OLD_RECORDS])
def test_records_of_the_first_encoder_read_and_encode_identically(
        key: bytes, stored: str, record: Record) -> None:
    """Bytes the original encoder wrote decode to the same record, and encoding that record
    gives the same bytes: the on-disk format is unchanged."""
    raw = bytes.fromhex(stored)
    assert decode_record(key, raw) == record
    assert encode_record(key, record.value, record.flags, record.exptime, record.cas,
                         record.mtime, record.bits) == raw


def test_decode_without_value_still_verifies() -> None:
    """with_value=False skips copying the value but not checking it."""
    raw = bytearray(encode_record(b"k", b"payload", 1, 0, 2, 3))
    assert decode_record(b"k", bytes(raw), with_value=False) == Record(b"k", b"", 1, 0, 2, 3)
    raw[-1] ^= 0x40
    with pytest.raises(CorruptRecord):
        decode_record(b"k", bytes(raw), with_value=False)


def test_decode_header_reads_fields_without_verifying() -> None:
    """decode_header returns the header fields even when the value is damaged, and None for
    bytes that are not a record (too short, unknown version)."""
    raw = bytearray(encode_record(b"k", b"payload", 5, 60, 7, 9, BIT_STALE))
    raw[-1] ^= 0x40
    assert decode_header(b"k", bytes(raw)) == Record(b"k", b"", 5, 60, 7, 9, BIT_STALE)
    assert decode_header(b"k", bytes(raw[:HEADER_SIZE - 1])) is None
    raw[0] = 2
    assert decode_header(b"k", bytes(raw)) is None


def test_record_size_and_ttl() -> None:
    """size counts key, header and value; ttl is -1 for never and never negative."""
    rec = Record(b"abc", b"12345", 0, 1_000, 1, 0)
    assert rec.size == 3 + HEADER_SIZE + 5
    assert (rec.ttl(990), rec.ttl(2_000)) == (10, 0)
    assert Record(b"k", b"", 0, 0, 1, 0).ttl(5) == -1
