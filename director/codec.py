"""How a blob's bytes are stored on object servers: compression, encryption, chunking.

The memcached flags field of every stored value says how it is encoded, so any
reader (the blob client, directord, a plain memcached client with the key) knows
how to decode it without asking anyone:

==========  =====================================================================
flag bit    meaning
==========  =====================================================================
``0x1``     zlib stream (written with zlib-ng); applied before encryption
``0x2``     AES-256-GCM: ``nonce (12 bytes) || ciphertext || tag (16 bytes)``;
            the blob id is the associated data, so a value moved to another key
            fails to decrypt
``0x4``     chunk manifest: the blob was larger than an object server's item
            size; the value lists its chunks, stored under ``<id>/<n>``
==========  =====================================================================

Compression is skipped when it does not save at least 1/16 of the size (already
compressed attachments, JPEGs, ZIPs), so reading them costs no inflate.  For blobs of
:data:`SAMPLE_FROM` bytes and more, a :data:`SAMPLE_BYTES` sample from the middle is
compressed first and the whole only if the sample shrinks: trying to deflate a 256 KiB
JPEG costs about 5 ms of CPU, the sample 0.2 ms (a blob whose middle does not compress
but whose rest would is stored plain: a missed saving, never a wrong value).

The blob id is computed from the plain content (:mod:`director.blobids`); reading a
blob back and verifying it whole is :mod:`director.blobreader`'s work.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

from zlib_ng import zlib_ng

FLAG_ZLIB = 0x1
FLAG_AESGCM = 0x2
FLAG_MANIFEST = 0x4
KNOWN_FLAGS = FLAG_ZLIB | FLAG_AESGCM | FLAG_MANIFEST

NONCE_BYTES = 12
TAG_BYTES = 16
#: Room left in an object-server item for the encryption envelope and slack.
ENVELOPE_SLACK = 1024
#: Blobs at least this large are compressed only if a sample of them compresses.
SAMPLE_FROM = 64 * 1024
#: Size of that sample.
SAMPLE_BYTES = 16 * 1024

_MANIFEST_MAGIC = b"OMCH\x01"
_MANIFEST_HEAD = struct.Struct(">5sQI")  # magic, total size, chunk count


class CodecError(ValueError):
    """Stored bytes cannot be decoded: wrong key, corrupt value or unknown flags."""


def chunk_key(blob_id_: str, index: int) -> str:
    """The object-server key of chunk ``index`` of a chunked blob."""
    return f"{blob_id_}/{index}"


_CHUNK_KEY = re.compile(rb"[0-9a-f]{64}/[0-9]+")


def is_chunk_key(key: bytes) -> bool:
    """True for a key of the :func:`chunk_key` form (reserved for chunks of blobs)."""
    return _CHUNK_KEY.fullmatch(key) is not None


@dataclass(frozen=True)
class Manifest:
    """The chunks of a blob stored in pieces."""

    size: int
    chunk_ids: tuple[str, ...]

    def to_bytes(self) -> bytes:
        head = _MANIFEST_HEAD.pack(_MANIFEST_MAGIC, self.size, len(self.chunk_ids))
        return head + b"".join(bytes.fromhex(c) for c in self.chunk_ids)

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        try:
            magic, size, count = _MANIFEST_HEAD.unpack_from(data)
        except struct.error:
            raise CodecError("chunk manifest is truncated") from None
        body = data[_MANIFEST_HEAD.size:]
        if magic != _MANIFEST_MAGIC or len(body) != 32 * count:
            raise CodecError("not a chunk manifest")
        return cls(size, tuple(body[i:i + 32].hex() for i in range(0, len(body), 32)))


def load_key(path: str) -> bytes:
    """Read a 32-byte AES key from a file (raw, or 64 hex digits)."""
    with open(path, "rb") as f:
        raw = f.read().strip()
    if len(raw) == 64:
        try:
            return bytes.fromhex(raw.decode())
        except (UnicodeDecodeError, ValueError):
            pass
    if len(raw) == 32:
        return raw
    raise CodecError(f"{path}: expected a 32-byte key (raw or 64 hex digits)")


class BlobCodec:
    """Encode and decode stored values.

    :param compression_level: zlib level 0-9, or -1 for no compression.
    :param key: 32-byte AES-256-GCM key, or None for no encryption.
    :param random_bytes: source of nonces (injected for tests).
    """

    def __init__(self, compression_level: int = 1, key: bytes | None = None,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self.compression_level = compression_level
        self._random = random_bytes
        self._aead = None
        if key is not None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            if len(key) != 32:
                raise CodecError("the encryption key must be 32 bytes (AES-256)")
            self._aead = AESGCM(key)

    @property
    def overhead(self) -> int:
        """Bytes encoding may add to a value that does not compress."""
        return NONCE_BYTES + TAG_BYTES if self._aead is not None else 0

    def encode(self, data: bytes, blob_id_: str) -> tuple[bytes, int]:
        """The stored form of ``data`` and its flags."""
        flags = 0
        payload = data
        if self.compression_level >= 0 and len(data) >= 64 and self._worth_trying(data):
            packed = zlib_ng.compress(data, self.compression_level)
            if len(packed) <= len(data) - (len(data) >> 4):
                payload, flags = packed, FLAG_ZLIB
        if self._aead is not None:
            nonce = self._random(NONCE_BYTES)
            payload = nonce + self._aead.encrypt(nonce, payload, blob_id_.encode())
            flags |= FLAG_AESGCM
        return payload, flags

    def _worth_trying(self, data: bytes) -> bool:
        """False when a sample from the middle of a large blob does not compress."""
        if len(data) < SAMPLE_FROM:
            return True
        start = (len(data) - SAMPLE_BYTES) // 2
        packed = zlib_ng.compress(data[start:start + SAMPLE_BYTES], self.compression_level)
        return len(packed) <= SAMPLE_BYTES - (SAMPLE_BYTES >> 4)

    def encode_manifest(self, manifest: Manifest, blob_id_: str) -> tuple[bytes, int]:
        payload, flags = self.encode(manifest.to_bytes(), blob_id_)
        return payload, flags | FLAG_MANIFEST

    def decode(self, payload: bytes, flags: int, key: str) -> bytes:
        """The plain bytes of a stored value (a manifest's bytes when FLAG_MANIFEST).

        :param key: the object-server key the value was stored under (AEAD data).
        :raises CodecError: unknown flags, missing key, failed authentication or inflate.
        """
        if flags & ~KNOWN_FLAGS:
            raise CodecError(f"unknown encoding flags {flags:#x}")
        data = payload
        if flags & FLAG_AESGCM:
            if self._aead is None:
                raise CodecError("value is encrypted but no encryption key is configured")
            from cryptography.exceptions import InvalidTag

            try:
                data = self._aead.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:],
                                          key.split("/", 1)[0].encode())
            except InvalidTag:
                raise CodecError("decryption failed (wrong key or tampered value)") from None
        if flags & FLAG_ZLIB:
            try:
                data = zlib_ng.decompress(data)
            except zlib_ng.error as exc:  # type: ignore[misc]  # stubs miss its base class
                raise CodecError(f"corrupt compressed value: {exc}") from None
        return data
