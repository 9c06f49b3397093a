"""How a blob's bytes are stored on object servers: compression, encryption, chunking.

The memcached flags field of every stored value says how it is encoded, so any
reader (the blob client, directord, a plain memcached client with the keys) knows
how to decode it without asking anyone:

==============  =================================================================
flag bits       meaning
==============  =================================================================
``0x1``         zlib stream (written with zlib-ng); applied before encryption
``0x2``         legacy AES-256-GCM (``director.encryption_key_file``, before
                keyrings): ``nonce (12) || ciphertext || tag (16)`` under the raw
                key, the blob id as associated data; read, never written when a
                keyring is configured
``0x4``         chunk manifest: the blob was larger than an object server's item
                size; the value lists its chunks, stored under ``<id>/<n>``
``0x8``         sealed: AES-256-GCM under keyring key id ``flags >> 16`` (see below)
``0xffff0000``  with ``0x8``: the key id (1..65535) that sealed the value
==============  =================================================================

*Sealed values* (:mod:`director.keyring`).  The key of one blob is
HMAC-SHA-256(encryption key, blob id): derived from the id alone, since a reader knows
only the id, and, the id being keyed, equivalent to a key derived from the content.  The
value is ``nonce (12, random) || ciphertext || tag (16)``; the associated data is the
object-server key of the item (the blob id, or ``<id>/<n>`` for a chunk) and the key id,
so a value moved to another key or relabelled with another key id fails to decrypt.
The key id sits in the flags rather than in the value so that ``mg <key> f`` tells
which key sealed a value without reading it (``objmail keys status``, rotation), and
it is authenticated all the same.  A value sealed under a key id this keyring lacks
raises :class:`~director.errors.KeyUnavailable`, never :class:`CodecError`: a missing
key is a configuration problem, not corruption.

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

import hashlib
import hmac
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from zlib_ng import zlib_ng

from director.errors import BadKeyFile, DirectorError, KeyUnavailable
from runtime import errors as kinds

if TYPE_CHECKING:
    from director.keyring import Keyring

FLAG_ZLIB = 0x1
FLAG_AESGCM = 0x2
FLAG_MANIFEST = 0x4
FLAG_SEALED = 0x8
KNOWN_FLAGS = FLAG_ZLIB | FLAG_AESGCM | FLAG_MANIFEST | FLAG_SEALED
#: Where a sealed value's key id sits in its flags.
KEY_ID_SHIFT = 16
KEY_ID_MASK = 0xFFFF << KEY_ID_SHIFT
#: The key id of legacy (``FLAG_AESGCM``) values: the ``encryption_key_file`` key.
LEGACY_KEY_ID = 0

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


class CodecError(DirectorError, kinds.Corruption):
    """Stored bytes cannot be decoded: corrupt or forged value, or unknown flags (a
    missing key is :class:`~director.errors.KeyUnavailable`, not this)."""


def key_id_of(flags: int) -> int | None:
    """The key id a stored value was encrypted under (:data:`LEGACY_KEY_ID` for the
    legacy envelope), or None for a value stored in plaintext."""
    if flags & FLAG_SEALED:
        return (flags & KEY_ID_MASK) >> KEY_ID_SHIFT
    if flags & FLAG_AESGCM:
        return LEGACY_KEY_ID
    return None


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
    """Read a 32-byte AES key from a file (raw, or 64 hex digits): the legacy
    ``director.encryption_key_file``."""
    with open(path, "rb") as f:
        raw = f.read().strip()
    if len(raw) == 64:
        try:
            return bytes.fromhex(raw.decode())
        except (UnicodeDecodeError, ValueError):
            pass
    if len(raw) == 32:
        return raw
    raise BadKeyFile(f"{path}: expected a 32-byte key (raw or 64 hex digits)")


class BlobCodec:
    """Encode and decode stored values.

    :param compression_level: zlib level 0-9, or -1 for no compression.
    :param keyring: seals new values under its current key and opens values sealed
        under any of its keys; None writes plaintext (or the legacy envelope).
    :param legacy_key: the 32-byte key of ``director.encryption_key_file``: opens legacy
        values; without a keyring it also writes them (the behaviour before keyrings).
    :param random_bytes: source of nonces (injected for tests).
    """

    def __init__(self, compression_level: int = 1, keyring: Keyring | None = None, *,
                 legacy_key: bytes | None = None,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self.compression_level = compression_level
        self.keyring = keyring
        self._random = random_bytes
        self._legacy: AESGCM | None = None
        if legacy_key is not None:
            if len(legacy_key) != 32:
                raise BadKeyFile("the encryption key must be 32 bytes (AES-256)")
            self._legacy = AESGCM(legacy_key)
        # Per key id: an HMAC object with the encryption key absorbed, copied per blob.
        self._blob_keys = {kid: hmac.new(key, digestmod=hashlib.sha256)
                           for kid, key in keyring.keys.items()} if keyring else {}

    @property
    def current_key_id(self) -> int | None:
        """The key id new values are sealed with (:data:`LEGACY_KEY_ID` when only a
        legacy key is set); None when they are stored in plaintext."""
        if self.keyring is not None:
            return self.keyring.current
        return LEGACY_KEY_ID if self._legacy is not None else None

    @property
    def overhead(self) -> int:
        """Bytes encoding may add to a value that does not compress."""
        return NONCE_BYTES + TAG_BYTES if self.current_key_id is not None else 0

    def encode(self, data: bytes, key: str) -> tuple[bytes, int]:
        """The stored form of ``data`` under object-server key ``key`` (the blob id, or
        a chunk's key), and its flags."""
        flags = 0
        payload = data
        if self.compression_level >= 0 and len(data) >= 64 and self._worth_trying(data):
            packed = zlib_ng.compress(data, self.compression_level)
            if len(packed) <= len(data) - (len(data) >> 4):
                payload, flags = packed, FLAG_ZLIB
        return self.seal(payload, flags, key)

    def seal(self, payload: bytes, flags: int, key: str) -> tuple[bytes, int]:
        """Encrypt an encoded (maybe compressed) payload with the current key; ``flags``
        are its encoding flags so far.  Plaintext when there is no key to seal with."""
        if self.keyring is not None:
            kid = self.keyring.current
            nonce = self._random(NONCE_BYTES)
            sealed = self._blob_aead(kid, key).encrypt(nonce, payload, _aad(key, kid))
            return nonce + sealed, flags | FLAG_SEALED | kid << KEY_ID_SHIFT
        if self._legacy is not None:
            nonce = self._random(NONCE_BYTES)
            sealed = self._legacy.encrypt(nonce, payload, key.split("/", 1)[0].encode())
            return nonce + sealed, flags | FLAG_AESGCM
        return payload, flags

    def reseal(self, payload: bytes, flags: int, key: str) -> tuple[bytes, int]:
        """A stored value (plaintext, legacy or sealed under any key) sealed again under
        the current key, its compression kept: what key rotation writes.

        :raises CodecError, KeyUnavailable: as :meth:`decode`.
        """
        inner = self.unseal(payload, flags, key)
        return self.seal(inner, flags & (FLAG_ZLIB | FLAG_MANIFEST), key)

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
        :raises CodecError: unknown flags, failed authentication or inflate.
        :raises KeyUnavailable: encrypted under a key this codec does not hold.
        """
        data = self.unseal(payload, flags, key)
        if flags & FLAG_ZLIB:
            try:
                data = zlib_ng.decompress(data)
            except zlib_ng.error as exc:  # type: ignore[misc]  # stubs miss its base class
                raise CodecError(f"corrupt compressed value: {exc}") from None
        return data

    def unseal(self, payload: bytes, flags: int, key: str) -> bytes:
        """A stored value decrypted (still compressed when FLAG_ZLIB).

        :raises CodecError, KeyUnavailable: as :meth:`decode`.
        """
        sealed = flags & FLAG_SEALED
        if flags & ~(KNOWN_FLAGS | KEY_ID_MASK) or bool(sealed) != bool(flags & KEY_ID_MASK) \
                or (sealed and flags & FLAG_AESGCM):
            raise CodecError(f"unknown encoding flags {flags:#x}")
        if not flags & (FLAG_SEALED | FLAG_AESGCM):
            return payload
        if sealed:
            kid = (flags & KEY_ID_MASK) >> KEY_ID_SHIFT
            if kid not in self._blob_keys:
                raise KeyUnavailable(kid, "no keyring is configured" if self.keyring is None
                                     else "the keyring has no such key")
            aead, aad = self._blob_aead(kid, key), _aad(key, kid)
        else:
            if self._legacy is None:
                raise KeyUnavailable(LEGACY_KEY_ID, "director.encryption_key_file is not set")
            aead, aad = self._legacy, key.split("/", 1)[0].encode()
        try:
            return aead.decrypt(payload[:NONCE_BYTES], payload[NONCE_BYTES:], aad)
        except InvalidTag:
            raise CodecError("decryption failed (tampered value, or stored under another "
                             "key)") from None

    def _blob_aead(self, kid: int, key: str) -> AESGCM:
        """The AEAD of one blob: its key is HMAC(encryption key ``kid``, blob id)."""
        mac = self._blob_keys[kid].copy()
        mac.update(key.split("/", 1)[0].encode())
        return AESGCM(mac.digest())


def _aad(key: str, kid: int) -> bytes:
    """Associated data of a sealed value: its object-server key and its key id."""
    return key.encode() + b"\0" + kid.to_bytes(2, "big")
