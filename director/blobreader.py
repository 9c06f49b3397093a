"""A blob's stored form, and reading it back verified whole: the one module that knows it.

How a blob sits on an object server: one *head* item under the blob id, its value encoded
as its flags say (:mod:`director.codec`: compression, encryption).  A blob larger than an
object server's item size is stored as chunks under ``<id>/<n>`` and a head holding its
*manifest* (the total size and one id per chunk; flag ``0x4``).  :func:`stored_form`
makes these items for new content; :class:`BlobReader` reads them back.

Theory of operation.  Every path that reads a blob (the blob client's get and chunk
streaming, directord's get of a blob id, repair, drain, level, scrub) reads it here, and
every read ends the same way: the content is decoded per its flags and its id computed
(:class:`director.blobids.BlobIds`) and compared with the id asked for, **over the whole
content**.  A chunked blob's chunks are also checked one by one against the manifest as
they arrive (that says which chunk is bad, and lets a reader take a chunk from another
replica), but that alone proves nothing: a forged manifest lists the forged chunks' ids.
Nothing that fails is returned, so nothing unverified is served, cached or copied.

What a read returns, :class:`VerifiedBlob`, holds the blob's items exactly as the object
server stores them (value bytes and flags: what repair, drain and level copy, so a copy
is never re-encoded on the way) and, when asked for, the content.  Only this module
makes one, and :func:`director.copier.write_verified` takes nothing else: a copy is
always of bytes that verified against the id.

*Keys.*  A value sealed under a key id this process lacks raises
:class:`~director.errors.KeyUnavailable` when the installation has that key (the keyring
here is behind: a configuration problem, which no reader may count as a bad copy), and
:class:`CodecError` when it never had it (a forged label:
:meth:`director.keyregistry.KeyRegistry.known`).  :meth:`BlobReader.probe` lets
``KeyUnavailable`` through, so scrub and repair stop instead of queueing good copies.

Chunks are fetched :data:`PARALLELISM` at a time and hashed in order as they arrive, so a
copy or a scrub holds the stored bytes and one window of decoded chunks, never the
content twice.  :meth:`BlobReader.stream` releases a chunked blob's content chunk by
chunk without holding it whole: each chunk is released once it matched the manifest, and
the **last one only once the whole content verified**; a stream that fails instead (the
content does not match its id) must be discarded by its consumer, as for any read error.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from director.blobids import BlobIds, IdHasher
from director.codec import FLAG_MANIFEST, BlobCodec, CodecError, Manifest, chunk_key
from director.errors import BlobUnavailable, DirectorError, KeyUnavailable
from director.memcache_client import NodeClient, NodeError
from director.planner import Health
from objstore.replies import Value
from runtime import errors as kinds

#: Chunks of one blob fetched at the same time.
PARALLELISM = 4

#: Told about a chunk source that failed while another one was tried instead.
ChunkErrorHook = Callable[[NodeClient, Exception], None]


class NotHeld(DirectorError, kinds.Unavailable):
    """The object server answered that it does not hold the blob (or one of its chunks):
    another replica (or a repair) may serve it."""


@dataclass(frozen=True)
class StoredItem:
    """One object-server item as stored: key, value bytes and flags."""

    key: bytes
    value: bytes
    flags: int


@dataclass(frozen=True)
class VerifiedBlob:
    """A blob read back and verified whole against its id.

    :param items: its stored form: the chunks in order, then the head.
    :param size: bytes of content.
    :param content: the content, when the read asked for it.
    :param cas: the head's CAS unique, when the read asked for it.
    """

    blob_id: str
    items: tuple[StoredItem, ...]
    size: int
    content: bytes | None = None
    cas: int | None = None

    @property
    def head(self) -> StoredItem:
        return self.items[-1]

    @property
    def stored_bytes(self) -> int:
        """Bytes of stored values (what a copy transfers)."""
        return sum(len(i.value) for i in self.items)

    @property
    def keys(self) -> tuple[bytes, ...]:
        return tuple(i.key for i in self.items)


@dataclass(frozen=True)
class Probe:
    """What one replica of a blob was found to be; ``blob`` only when good."""

    health: Health
    blob: VerifiedBlob | None = None
    detail: str = ""


def stored_form(codec: BlobCodec, ids: BlobIds, bid: str, data: bytes,
                chunk_size: int) -> tuple[StoredItem, ...]:
    """The items that store ``data`` as blob ``bid``: its chunks (when larger than
    ``chunk_size``), then the head; what :class:`BlobReader` reads back."""
    if len(data) <= chunk_size:
        payload, flags = codec.encode(data, bid)
        return (StoredItem(bid.encode(), payload, flags),)
    items = []
    chunk_ids = []
    for n, start in enumerate(range(0, len(data), chunk_size)):
        chunk = data[start:start + chunk_size]
        chunk_ids.append(ids.id_of(chunk))
        key = chunk_key(bid, n)
        payload, flags = codec.encode(chunk, key)
        items.append(StoredItem(key.encode(), payload, flags))
    head, flags = codec.encode_manifest(Manifest(len(data), tuple(chunk_ids)), bid)
    return (*items, StoredItem(bid.encode(), head, flags))


class BlobReader:
    """Reads blobs from object servers and verifies them (see the module docstring).

    :param codec: decodes stored values (holds the keys, if any).
    :param ids: computes and checks blob ids.
    :param known_key: whether the installation has a key id (None: every key id is
        taken as the installation's, so a missing one is always a configuration error).
    """

    def __init__(self, codec: BlobCodec, ids: BlobIds, *,
                 known_key: Callable[[int], Awaitable[bool]] | None = None) -> None:
        self.codec = codec
        self.ids = ids
        self._known_key = known_key

    # -- whole reads --------------------------------------------------------------------

    async def read(self, bid: str, node: NodeClient, *,
                   chunk_sources: Sequence[NodeClient] = (),
                   on_chunk_error: ChunkErrorHook | None = None,
                   content: bool = True, cas: bool = False) -> VerifiedBlob:
        """Blob ``bid`` as ``node`` stores it, verified whole.

        :param chunk_sources: where chunks may come from, in order (default: ``node``
            alone); a chunk that one source lacks or holds bad is taken from the next,
            and ``on_chunk_error`` told.
        :param content: also return the content (else it is hashed and dropped).
        :param cas: also return the head's CAS unique.
        :raises NotHeld: ``node`` does not hold the blob (with a single chunk source:
            or one of its chunks).
        :raises CodecError: bytes that do not verify.
        :raises NodeError: ``node`` could not be asked.
        :raises BlobUnavailable: no chunk source could give some chunk (several sources).
        """
        head, plain = await self._head(bid, node, cas)
        if not head.flags & FLAG_MANIFEST:
            self.ids.verify(bid, plain)
            return VerifiedBlob(bid, (_item(head),), len(plain), plain if content else None,
                                head.cas)
        manifest = Manifest.from_bytes(plain)
        hasher: IdHasher | None = None
        items: list[StoredItem] = []
        parts: list[bytes] = []
        size = 0
        chunks = self._chunks(bid, manifest, chunk_sources or (node,), on_chunk_error)
        async with contextlib.aclosing(chunks):
            async for item, chunk in chunks:
                if hasher is None:
                    hasher = self.ids.hasher_like(manifest.chunk_ids[0], chunk)
                else:
                    hasher.update(chunk)
                size += len(chunk)
                items.append(item)
                if content:
                    parts.append(chunk)
        _check_size(size, manifest)
        if (hasher or self.ids.hasher()).hexdigest() != bid:
            raise CodecError("content does not match its id (a manifest and chunks that "
                             "agree with each other, not with the id)")
        return VerifiedBlob(bid, (*items, _item(head)), size,
                            b"".join(parts) if content else None, head.cas)

    async def probe(self, bid: str, node: NodeClient) -> Probe:
        """Read and verify the copy ``node`` holds; never raises for what it does."""
        try:
            return Probe(Health.GOOD, await self.read(bid, node, content=False))
        except NotHeld as exc:
            return Probe(Health.MISSING, detail=str(exc))
        except CodecError as exc:
            return Probe(Health.CORRUPT, detail=str(exc))
        except (NodeError, OSError) as exc:
            return Probe(Health.UNREACHABLE, detail=str(exc) or type(exc).__name__)

    def check_value(self, bid: str, value: bytes, flags: int) -> None:
        """Check a value offered for blob ``bid`` (a ``set`` through directord): it must
        decode, per its flags, to content whose id is ``bid``; a manifest is refused.

        :raises CodecError: it does not.
        """
        if flags & FLAG_MANIFEST:
            raise CodecError("a chunk manifest is not content")
        self.ids.verify(bid, self.codec.decode(value, flags, bid))

    # -- streaming ----------------------------------------------------------------------

    async def stream(self, bid: str, node: NodeClient, *,
                     chunk_sources: Sequence[NodeClient] = (),
                     on_chunk_error: ChunkErrorHook | None = None
                     ) -> AsyncGenerator[bytes, None]:
        """The content of ``bid`` from ``node`` in pieces, without holding it whole.

        Each piece is released once it verified against the manifest, the last one only
        once the whole content verified against ``bid``.  Errors are :meth:`read`'s; once
        a piece was released, an error means the pieces so far must be discarded.
        """
        head, plain = await self._head(bid, node, False)
        if not head.flags & FLAG_MANIFEST:
            self.ids.verify(bid, plain)
            yield plain
            return
        manifest = Manifest.from_bytes(plain)
        hasher: IdHasher | None = None
        size = 0
        held: bytes | None = None
        chunks = self._chunks(bid, manifest, chunk_sources or (node,), on_chunk_error)
        async with contextlib.aclosing(chunks):
            async for _item, chunk in chunks:
                if held is not None:
                    yield held
                if hasher is None:
                    hasher = self.ids.hasher_like(manifest.chunk_ids[0], chunk)
                else:
                    hasher.update(chunk)
                size += len(chunk)
                held = chunk
        _check_size(size, manifest)
        if (hasher or self.ids.hasher()).hexdigest() != bid:
            raise CodecError("content does not match its id (a manifest and chunks that "
                             "agree with each other, not with the id)")
        yield held if held is not None else b""  # one piece at least, even if empty

    # -- what a copy occupies -------------------------------------------------------------

    def chunk_keys(self, bid: str, head: bytes, flags: int) -> tuple[bytes, ...]:
        """The chunk keys a stored head (value and flags) names: none for a blob stored
        whole; not verified.

        :raises CodecError: a manifest that does not decode.
        """
        if not flags & FLAG_MANIFEST:
            return ()
        manifest = Manifest.from_bytes(self.codec.decode(head, flags, bid))
        return tuple(chunk_key(bid, n).encode() for n in range(len(manifest.chunk_ids)))

    async def stored_keys(self, bid: str, node: NodeClient) -> tuple[bytes, ...]:
        """The keys of ``node``'s copy of ``bid``: its chunks, then the head (a manifest
        that does not decode: the head alone); none when it holds no copy."""
        got = await node.get(bid.encode())
        if got is None:
            return ()
        try:
            chunks = self.chunk_keys(bid, got.value, got.flags)
        except CodecError:
            chunks = ()
        return (*chunks, got.key)

    async def stored_size(self, bid: str, node: NodeClient) -> int | None:
        """Bytes ``bid`` occupies on ``node`` (a chunked blob: its content size, from the
        manifest), or None when the node does not hold it; not verified."""
        reply = await node.meta(b"mg " + bid.encode() + b" s f")
        if reply.code not in (b"HD", b"VA"):
            return None
        size = int(reply.flag("s") or b"0")
        if not int(reply.flag("f") or b"0") & FLAG_MANIFEST:
            return size
        head = await node.get(bid.encode())
        if head is None:
            return None
        try:
            return Manifest.from_bytes(self.codec.decode(head.value, head.flags, bid)).size
        except CodecError:
            return size

    # -- plumbing -----------------------------------------------------------------------

    async def _head(self, bid: str, node: NodeClient, cas: bool) -> tuple[Value, bytes]:
        head = await node.get(bid.encode(), cas=cas)
        if head is None:
            raise NotHeld(f"{node.address}: does not hold {bid}")
        return head, await self.decode(head.value, head.flags, bid)

    async def decode(self, value: bytes, flags: int, key: str) -> bytes:
        """:meth:`BlobCodec.decode`, a missing key told apart from a forged label.

        :raises KeyUnavailable: the installation has the key, this keyring does not.
        :raises CodecError: bad bytes, or a key id the installation never had.
        """
        try:
            return self.codec.decode(value, flags, key)
        except KeyUnavailable as exc:
            if self._known_key is None or await self._known_key(exc.key_id):
                raise
            raise CodecError(f"sealed under key id {exc.key_id}, which this installation "
                             "never had (a forged or damaged value)") from None

    async def _chunks(self, bid: str, manifest: Manifest, sources: Sequence[NodeClient],
                      on_error: ChunkErrorHook | None
                      ) -> AsyncGenerator[tuple[StoredItem, bytes], None]:
        """Each chunk in order, as stored and decoded, checked against the manifest;
        up to :data:`PARALLELISM` fetched ahead."""
        count = len(manifest.chunk_ids)
        window: collections.deque[asyncio.Future[tuple[StoredItem, bytes]]] = \
            collections.deque()
        n = 0
        try:
            while n < count or window:
                while n < count and len(window) < PARALLELISM:
                    window.append(asyncio.ensure_future(
                        self._chunk(bid, n, manifest.chunk_ids[n], sources, on_error)))
                    n += 1
                yield await window.popleft()
        finally:
            for task in window:
                task.cancel()
            if window:  # collect them, so that no failure goes unretrieved
                await asyncio.gather(*window, return_exceptions=True)

    async def _chunk(self, bid: str, n: int, cid: str, sources: Sequence[NodeClient],
                     on_error: ChunkErrorHook | None) -> tuple[StoredItem, bytes]:
        key = chunk_key(bid, n)
        errors = []
        for source in sources:
            try:
                got = await source.get(key.encode())
                if got is None:
                    raise NotHeld(f"{source.address}: chunk {n} of {bid} is missing")
                plain = await self.decode(got.value, got.flags, key)
                if not self.ids.matches(cid, plain):
                    raise CodecError(f"chunk {n} does not match the manifest")
                return _item(got), plain
            except (NotHeld, CodecError, NodeError, OSError) as exc:
                if len(sources) == 1:
                    raise
                errors.append(f"{source.address}: {exc}")
                if on_error is not None:
                    on_error(source, exc)
        raise BlobUnavailable(f"blob {bid}: chunk {n} unreadable ({'; '.join(errors)})")


def _check_size(size: int, manifest: Manifest) -> None:
    if size != manifest.size:
        raise CodecError(f"chunks add up to {size} bytes, manifest says {manifest.size}")


def _item(got: Value) -> StoredItem:
    return StoredItem(got.key, got.value, got.flags)

