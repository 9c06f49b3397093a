"""How a blob's id is computed from its content: the one place that knows.

A blob id is a content address: 64 lowercase hex digits computed from the content
alone, so identical content is one blob (dedup) and any reader can check what an object
server returned.  With a keyring (:mod:`director.keyring`) the id is
HMAC-SHA-256(id key, content): identical content is still one blob within the
installation, but an object-server operator, who has no id key, can neither compute the
id of a document nor learn the plain hash of what is stored.  Without one
(``director.allow_plaintext``) it is the plain SHA-256.

Everything that names or verifies content (puts, reads, copies, the chunk ids inside a
manifest, the disk cache) goes through one :class:`BlobIds`.

*Legacy ids.*  Blobs stored before the installation had a keyring are named by their
plain SHA-256, and keep that id (the index and every message reference it).  Verification
accepts either: content matches an id when its keyed id or its plain SHA-256 is the id.
That admits no forgery, since both need a preimage of the id; but a legacy id still lets
whoever sees it confirm a guessed file (docs/security.md, "Keys").  Naming is always
keyed, so a legacy blob is re-stored (under its keyed id) the next time its content is
delivered.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Protocol

from director.codec import CodecError


class IdHasher(Protocol):
    """An id computed piece by piece (``hashlib`` and ``hmac`` objects are ones)."""

    def update(self, data: bytes | memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...


class BlobIds:
    """Names content by its id, and checks content against an id.

    :param id_key: the keyring's id key (:attr:`director.keyring.Keyring.id_key`); None
        names content by its plain SHA-256 (an installation without a keyring).
    """

    def __init__(self, id_key: bytes | None = None) -> None:
        self.keyed = id_key is not None
        # An HMAC object with the key absorbed, copied per id: the key's two
        # compression-function calls are paid once, not per blob.
        self._base = hmac.new(id_key, digestmod=hashlib.sha256) if id_key is not None else None

    def id_of(self, content: bytes | memoryview) -> str:
        """The id of ``content``."""
        if self._base is None:
            return hashlib.sha256(content).hexdigest()
        h = self._base.copy()
        h.update(content)
        return h.hexdigest()

    def hasher(self) -> IdHasher:
        """An incremental id: feed the content in order, then ``hexdigest()`` is
        :meth:`id_of` of the whole (for content read in chunks)."""
        return hashlib.sha256() if self._base is None else self._base.copy()

    def matches(self, bid: str, content: bytes | memoryview) -> bool:
        """True when ``bid`` is the keyed id of ``content``, or its legacy (plain SHA-256)
        id: the latter computed only when the former does not match."""
        return self.id_of(content) == bid or (
            self.keyed and hashlib.sha256(content).hexdigest() == bid)

    def hasher_like(self, bid: str, content: bytes | memoryview) -> IdHasher:
        """An incremental id of the scheme that names ``content`` ``bid`` (keyed or legacy),
        fed with ``content`` already: a chunked blob's first chunk and its id in the
        manifest say how the whole blob was named.  Keyed when neither matches (the
        whole then fails to verify)."""
        h = self.hasher()
        h.update(content)
        if self.keyed and h.hexdigest() != bid:
            plain = hashlib.sha256(content)
            if plain.hexdigest() == bid:
                return plain
        return h

    def verify(self, bid: str, content: bytes | memoryview) -> None:
        """:raises CodecError: ``content`` is not the content of ``bid`` (keyed or legacy)."""
        if not self.matches(bid, content):
            raise CodecError("content does not match its id")
