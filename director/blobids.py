"""How a blob's id is computed from its content: the one place that knows.

A blob id is a content address: 64 lowercase hex digits computed from the content
alone, so identical content is one blob (dedup) and any reader can check what an object
server returned.  Today the id is the plain SHA-256 of the content.  Everything that
names or verifies content (puts, reads, copies, the chunk ids inside a manifest, the
disk cache) goes through one :class:`BlobIds`, so that making ids keyed (an HMAC under
the installation's secret, which an object-server operator cannot compute) changes this
module and the place that builds the object, nothing else.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from director.codec import CodecError


class IdHasher(Protocol):
    """An id computed piece by piece (``hashlib`` and ``hmac`` objects are ones)."""

    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


class BlobIds:
    """Names content by its id, and checks content against an id."""

    def id_of(self, content: bytes | memoryview) -> str:
        """The id of ``content``."""
        return hashlib.sha256(content).hexdigest()

    def hasher(self) -> IdHasher:
        """An incremental id: feed the content in order, then ``hexdigest()`` is
        :meth:`id_of` of the whole (for content read in chunks)."""
        return hashlib.sha256()

    def verify(self, bid: str, content: bytes | memoryview) -> None:
        """:raises CodecError: ``content`` is not the content of ``bid``."""
        if self.id_of(content) != bid:
            raise CodecError("content does not match its id")
