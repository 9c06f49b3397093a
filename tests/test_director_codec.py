"""Unit tests of the stored-value encoding: compression, encryption, manifests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from director.blobids import BlobIds
from director.codec import (
    FLAG_AESGCM,
    FLAG_MANIFEST,
    FLAG_SEALED,
    FLAG_ZLIB,
    KEY_ID_MASK,
    KEY_ID_SHIFT,
    SAMPLE_BYTES,
    SAMPLE_FROM,
    BlobCodec,
    CodecError,
    Manifest,
    chunk_key,
    is_chunk_key,
    key_id_of,
    load_key,
)
from director.errors import BadKeyFile, KeyUnavailable
from director.keyring import Keyring

blob_id = BlobIds().id_of
KEY = bytes(range(32))
RING = Keyring(bytes(range(1, 33)), {1: bytes(range(2, 34))}, 1)
TEXT = b"Subject: hello\r\n\r\n" + b"compressible text, " * 500
RANDOM = os.urandom(8192)


def test_compresses_only_what_shrinks() -> None:
    """Text is stored zlib-compressed; random bytes are stored as they are."""
    codec = BlobCodec(compression_level=1)
    packed, flags = codec.encode(TEXT, blob_id(TEXT))
    assert flags == FLAG_ZLIB and len(packed) < len(TEXT) // 4
    assert codec.decode(packed, flags, blob_id(TEXT)) == TEXT
    raw, flags = codec.encode(RANDOM, blob_id(RANDOM))
    assert flags == 0 and raw == RANDOM


def test_compression_off() -> None:
    """Level -1 never compresses."""
    assert BlobCodec(compression_level=-1).encode(TEXT, blob_id(TEXT)) == (TEXT, 0)


def test_encryption_roundtrip_and_binding_to_id() -> None:
    """Sealed values decode only with the keyring and only under their own object-server
    key; the key id rides in the flags; a codec without that key id says so
    (KeyUnavailable, a configuration problem) instead of calling the value bad."""
    codec = BlobCodec(1, RING)
    bid = blob_id(TEXT)
    stored, flags = codec.encode(TEXT, bid)
    assert flags == FLAG_ZLIB | FLAG_SEALED | 1 << KEY_ID_SHIFT and key_id_of(flags) == 1
    assert TEXT[:40] not in stored
    assert codec.decode(stored, flags, bid) == TEXT
    with pytest.raises(CodecError, match="decryption failed"):
        codec.decode(stored, flags, blob_id(b"other"))
    with pytest.raises(CodecError, match="decryption failed"):
        codec.decode(stored, flags, chunk_key(bid, 0))  # a head moved to a chunk's key
    with pytest.raises(KeyUnavailable, match="key id 1") as missing:
        BlobCodec(1).decode(stored, flags, bid)
    assert missing.value.key_id == 1
    with pytest.raises(CodecError, match="decryption failed"):
        BlobCodec(1, Keyring(bytes(32), {1: bytes(32)}, 1)).decode(stored, flags, bid)


def test_key_ids_coexist_and_relabelling_fails() -> None:
    """Values sealed under key 1 still open after key 2 became current; a value whose
    flags were relabelled with another key id of the keyring fails authentication."""
    grown, kid = RING.with_new_key(make_current=True)
    assert kid == 2
    bid = blob_id(TEXT)
    old, old_flags = BlobCodec(1, RING).encode(TEXT, bid)
    new, new_flags = BlobCodec(1, grown).encode(TEXT, bid)
    assert key_id_of(new_flags) == 2
    codec = BlobCodec(1, grown)
    assert codec.decode(old, old_flags, bid) == codec.decode(new, new_flags, bid) == TEXT
    relabelled = (old_flags & ~KEY_ID_MASK) | 2 << KEY_ID_SHIFT
    with pytest.raises(CodecError, match="decryption failed"):
        codec.decode(old, relabelled, bid)
    with pytest.raises(KeyUnavailable):
        BlobCodec(1, RING).decode(new, new_flags, bid)


def test_reseal_keeps_compression_and_moves_to_the_current_key() -> None:
    """reseal turns a plaintext, a legacy and an old-key value into one sealed under the
    current key with the same compression, decoding to the same bytes."""
    grown, _kid = RING.with_new_key(make_current=True)
    bid = blob_id(TEXT)
    sources = [BlobCodec(1).encode(TEXT, bid), BlobCodec(1, legacy_key=KEY).encode(TEXT, bid),
               BlobCodec(1, RING).encode(TEXT, bid)]
    codec = BlobCodec(1, grown, legacy_key=KEY)
    for value, flags in sources:
        again, again_flags = codec.reseal(value, flags, bid)
        assert again_flags == FLAG_ZLIB | FLAG_SEALED | 2 << KEY_ID_SHIFT
        assert codec.decode(again, again_flags, bid) == TEXT


def test_legacy_envelope_still_decodes() -> None:
    """Values written with the legacy encryption_key_file (flag 0x2) open with that key
    given as legacy_key; without it the codec reports key id 0 unavailable."""
    bid = blob_id(TEXT)
    stored, flags = BlobCodec(1, legacy_key=KEY).encode(TEXT, bid)
    assert flags == FLAG_ZLIB | FLAG_AESGCM and key_id_of(flags) == 0
    assert BlobCodec(1, RING, legacy_key=KEY).decode(stored, flags, bid) == TEXT
    with pytest.raises(KeyUnavailable, match="key id 0"):
        BlobCodec(1, RING).decode(stored, flags, bid)
    with pytest.raises(CodecError, match="decryption failed"):
        BlobCodec(1, legacy_key=bytes(32)).decode(stored, flags, bid)


def test_tampered_values_are_refused() -> None:
    """A flipped byte in an encrypted or compressed value is an error, never data."""
    bid = blob_id(TEXT)
    stored, flags = BlobCodec(1, RING).encode(TEXT, bid)
    bad = bytearray(stored)
    bad[20] ^= 1
    with pytest.raises(CodecError):
        BlobCodec(1, RING).decode(bytes(bad), flags, bid)
    packed, flags = BlobCodec(1).encode(TEXT, bid)
    with pytest.raises(CodecError):
        BlobCodec(1).decode(packed[:-10], flags, bid)


def test_unknown_flags_are_refused() -> None:
    """Flags this version does not know mean the value cannot be decoded safely."""
    for flags in (0x100, 1 << KEY_ID_SHIFT, FLAG_SEALED, FLAG_SEALED | FLAG_AESGCM
                  | 1 << KEY_ID_SHIFT):
        with pytest.raises(CodecError, match="unknown encoding flags"):
            BlobCodec(1, RING).decode(b"x" * 40, flags, blob_id(b"x"))


def test_manifest_roundtrip_and_validation() -> None:
    """A manifest lists chunk ids and the total size; junk is not a manifest."""
    ids = tuple(blob_id(bytes([i])) for i in range(3))
    manifest = Manifest(3_000_000, ids)
    assert Manifest.from_bytes(manifest.to_bytes()) == manifest
    codec = BlobCodec(1, RING)
    stored, flags = codec.encode_manifest(manifest, blob_id(b"whole"))
    assert flags & FLAG_MANIFEST
    assert Manifest.from_bytes(codec.decode(stored, flags, blob_id(b"whole"))) == manifest
    for junk in (b"", b"OMCH\x01", b"nope" * 10, manifest.to_bytes()[:-1]):
        with pytest.raises(CodecError):
            Manifest.from_bytes(junk)


def test_load_key(tmp_path: Path) -> None:
    """Keys load from raw 32 bytes or 64 hex digits; anything else is refused as a
    misconfiguration (BadKeyFile), not as corrupt data."""
    (tmp_path / "raw").write_bytes(KEY)
    (tmp_path / "hex").write_text(KEY.hex() + "\n")
    (tmp_path / "short").write_bytes(b"short")
    assert load_key(str(tmp_path / "raw")) == KEY
    assert load_key(str(tmp_path / "hex")) == KEY
    with pytest.raises(BadKeyFile, match="32-byte key"):
        load_key(str(tmp_path / "short"))


def test_chunk_keys_are_recognised() -> None:
    """Keys of the chunk form are recognised (directord reserves them); others are not."""
    bid = blob_id(b"x")
    assert is_chunk_key(chunk_key(bid, 0).encode()) and is_chunk_key(chunk_key(bid, 12).encode())
    assert not is_chunk_key(bid.encode())
    assert not is_chunk_key(b"photos/1")
    assert not is_chunk_key(chunk_key(bid, 1).encode() + b"x")


def test_large_blobs_are_compressed_only_if_a_sample_compresses() -> None:
    """A large blob whose middle does not compress is stored plain without deflating it
    whole; a large compressible one is compressed."""
    codec = BlobCodec(compression_level=1)
    big_text = TEXT * 20
    assert len(big_text) >= SAMPLE_FROM
    packed, flags = codec.encode(big_text, blob_id(big_text))
    assert flags == FLAG_ZLIB and codec.decode(packed, flags, blob_id(big_text)) == big_text
    # Compressible around a random middle: the sample decides, the blob stays plain.
    middle = os.urandom(2 * SAMPLE_BYTES)
    half = TEXT * 10
    mixed = half + middle + half
    assert codec.encode(mixed, blob_id(mixed)) == (mixed, 0)
