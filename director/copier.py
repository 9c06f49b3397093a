"""Verified copies of a blob between object servers: what repair, drain and level share.

A blob is copied *as stored*: the head (the value under the blob id) and, for a chunked
blob, its chunks (``<id>/<n>``), with their flags, exactly as the object server holds
them, so a compressed or encrypted blob is never decoded and re-encoded on the way (a
director without the encryption key could not).  Before anything is copied the source's
bytes are verified as a read is: decoded per their flags and hashed against the id
(each chunk against the manifest, the total size against the manifest's).  Bad bytes
are never copied.

Writing puts the chunks first and the head last (a head that exists implies its chunks
do, as for a put), then checks every item on the target with a meta get returning its
size and flags (``mg <key> s f``): STORED already means committed and checksummed by
objstored, so the check proves presence without moving the bytes back.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

from director.codec import FLAG_MANIFEST, BlobCodec, CodecError, Manifest, blob_id, chunk_key
from director.memcache_client import NodeClient, NodeError
from director.planner import Health

#: Chunks of one blob read, written or checked at the same time.
PARALLELISM = 4


class CopyFailed(NodeError):
    """A target did not take a copy (refused, unreachable, or the check failed)."""


@dataclass(frozen=True)
class StoredItem:
    """One object-server item as stored: key, value bytes and flags."""

    key: bytes
    value: bytes
    flags: int


@dataclass(frozen=True)
class StoredBlob:
    """A blob as one object server stores it, verified.

    :param items: the chunks in order, then the head.
    :param size: bytes of content (what the id hashes).
    """

    blob_id: str
    items: tuple[StoredItem, ...]
    size: int

    @property
    def stored_bytes(self) -> int:
        """Bytes of stored values (what the copy transfers)."""
        return sum(len(i.value) for i in self.items)

    @property
    def keys(self) -> tuple[bytes, ...]:
        return tuple(i.key for i in self.items)


@dataclass(frozen=True)
class Probe:
    """What one replica of a blob was found to be; ``blob`` only when good."""

    health: Health
    blob: StoredBlob | None = None
    detail: str = ""


class _Missing(Exception):
    pass


async def read_verified(client: NodeClient, codec: BlobCodec, bid: str) -> StoredBlob:
    """The blob as ``client``'s server stores it, verified against its id.

    :raises LookupError: the server does not hold the blob (or one of its chunks).
    :raises CodecError: bytes that do not verify.
    :raises NodeError: the server could not be asked.
    """
    head = await client.get(bid.encode())
    if head is None:
        raise LookupError(f"{client.address}: does not hold {bid}")
    data = codec.decode(head.value, head.flags, bid)
    head_item = StoredItem(head.key, head.value, head.flags)
    if not head.flags & FLAG_MANIFEST:
        if blob_id(data) != bid:
            raise CodecError("content does not match its id")
        return StoredBlob(bid, (head_item,), len(data))
    manifest = Manifest.from_bytes(data)
    sem = asyncio.Semaphore(PARALLELISM)

    async def chunk(n: int, cid: str) -> tuple[StoredItem, int]:
        key = chunk_key(bid, n)
        async with sem:
            got = await client.get(key.encode())
        if got is None:
            raise LookupError(f"{client.address}: chunk {n} of {bid} is missing")
        plain = codec.decode(got.value, got.flags, key)
        if hashlib.sha256(plain).hexdigest() != cid:
            raise CodecError(f"chunk {n} does not match the manifest")
        return StoredItem(got.key, got.value, got.flags), len(plain)

    chunks = await asyncio.gather(*(chunk(n, c) for n, c in enumerate(manifest.chunk_ids)))
    total = sum(size for _item, size in chunks)
    if total != manifest.size:
        raise CodecError(f"chunks add up to {total} bytes, manifest says {manifest.size}")
    return StoredBlob(bid, (*(item for item, _s in chunks), head_item), total)


async def probe(client: NodeClient, codec: BlobCodec, bid: str) -> Probe:
    """Read and verify one replica; never raises for what the replica does."""
    try:
        return Probe(Health.GOOD, await read_verified(client, codec, bid))
    except LookupError as exc:
        return Probe(Health.MISSING, detail=str(exc))
    except CodecError as exc:
        return Probe(Health.CORRUPT, detail=str(exc))
    except (NodeError, OSError) as exc:
        return Probe(Health.UNREACHABLE, detail=str(exc) or type(exc).__name__)


async def write_verified(client: NodeClient, blob: StoredBlob) -> None:
    """Store ``blob``'s items on ``client``'s server (chunks, then the head), then check
    each is there with the size and flags written.

    :raises CopyFailed: a write was refused or the check failed.
    :raises NodeError: the server could not be reached.
    """
    *chunks, head = blob.items
    sem = asyncio.Semaphore(PARALLELISM)

    async def put(item: StoredItem) -> None:
        async with sem:
            if not await client.set(item.key, item.value, item.flags):
                raise CopyFailed(f"{client.address}: set {item.key.decode()} not stored")

    async def check(item: StoredItem) -> None:
        async with sem:
            reply = await client.meta(b"mg " + item.key + b" s f")
        if reply.code not in (b"HD", b"VA") or reply.flag("s") != b"%d" % len(item.value) \
                or reply.flag("f") != b"%d" % item.flags:
            raise CopyFailed(f"{client.address}: {item.key.decode()} reads back as "
                             f"{reply.code.decode()} {b' '.join(reply.flags).decode()}")

    if chunks:
        await asyncio.gather(*(put(c) for c in chunks))
    await put(head)
    await asyncio.gather(*(check(i) for i in blob.items))


async def delete_copy(client: NodeClient, keys: tuple[bytes, ...]) -> int:
    """Delete a copy's items, the head (last of ``keys``) first so that no head is ever
    left without its chunks; returns how many were there."""
    if not keys:
        return 0
    *chunks, head = keys
    deleted = int(await client.delete(head))
    for key in chunks:
        deleted += int(await client.delete(key))
    return deleted


async def stored_size(client: NodeClient, codec: BlobCodec, bid: str) -> int | None:
    """Bytes a blob occupies on a server (a chunked blob: its content size, from the
    manifest), or None when the server does not hold it."""
    reply = await client.meta(b"mg " + bid.encode() + b" s f")
    if reply.code not in (b"HD", b"VA"):
        return None
    size = int(reply.flag("s") or b"0")
    flags = int(reply.flag("f") or b"0")
    if not flags & FLAG_MANIFEST:
        return size
    head = await client.get(bid.encode())
    if head is None:
        return None
    try:
        return Manifest.from_bytes(codec.decode(head.value, head.flags, bid)).size
    except CodecError:
        return size
