"""Copies of a blob between object servers: what repair, drain and level share.

A copy is of a :class:`director.blobreader.VerifiedBlob`, the only thing
:func:`write_verified` takes: the blob's items exactly as the source object server
stores them (the head under the blob id and, for a chunked blob, its chunks ``<id>/<n>``,
with their flags), read back by :class:`director.blobreader.BlobReader` and verified
whole against the id first.  Bytes that did not verify are never copied.

Writing puts the chunks first and the head last (a head that exists implies its chunks
do, as for a put), then checks every item on the target with a meta get returning its
size and flags (``mg <key> s f``): STORED already means committed and checksummed by
objstored, so the check proves presence without moving the bytes back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from director.blobreader import StoredItem, VerifiedBlob
from director.memcache_client import NodeClient, NodeError

#: Items of one blob written or checked at the same time.
PARALLELISM = 4


class CopyFailed(NodeError):
    """A target did not take a copy (refused, unreachable, or the check failed)."""


async def write_items(client: NodeClient, items: Sequence[StoredItem]) -> None:
    """Store a blob's items on ``client``'s server: the chunks, then the head (the last
    item), so that a head that exists implies its chunks do.

    :raises CopyFailed: a write was refused.
    :raises NodeError: the server could not be reached.
    """
    *chunks, head = items
    sem = asyncio.Semaphore(PARALLELISM)

    async def put(item: StoredItem) -> None:
        async with sem:
            if not await client.set(item.key, item.value, item.flags):
                raise CopyFailed(f"{client.address}: set {item.key.decode()} not stored")

    if chunks:
        await asyncio.gather(*(put(c) for c in chunks))
    await put(head)


async def write_verified(client: NodeClient, blob: VerifiedBlob) -> None:
    """Store ``blob``'s items on ``client``'s server (:func:`write_items`), then check
    each is there with the size and flags written.

    :raises CopyFailed: a write was refused or the check failed.
    :raises NodeError: the server could not be reached.
    """
    await write_items(client, blob.items)
    sem = asyncio.Semaphore(PARALLELISM)

    async def check(item: StoredItem) -> None:
        async with sem:
            reply = await client.meta(b"mg " + item.key + b" s f")
        if reply.code not in (b"HD", b"VA") or reply.flag("s") != b"%d" % len(item.value) \
                or reply.flag("f") != b"%d" % item.flags:
            raise CopyFailed(f"{client.address}: {item.key.decode()} reads back as "
                             f"{reply.code.decode()} {b' '.join(reply.flags).decode()}")

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
