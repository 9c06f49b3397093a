"""A node's key list, grouped the way the location index records it, and the verified
indexing of the copies it names: what inventory and index rebuild share.

An object server's keys (``lru_crawler metadump all``) map to index entries as
everywhere else: a blob id is its own entry (a blob's *head*: its content, or the
manifest of a chunked blob), a chunk ``<id>/<n>`` belongs to its blob's entry and is
never an entry of its own, any other key is an item directord stored for a memcached
client, indexed in the items' own key space under :func:`director.keys.item_index_id`.

A blob copy goes into the index only once it has been read back from the node and
verified whole against its id with this installation's codec
(:meth:`director.blobreader.BlobReader.probe`, the directors' one verified reader):
another installation's key, a corrupt record or a head whose chunks are missing is
never indexed.  Items carry no id to check them against;
they are recorded as they are listed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from director.blobreader import Probe
from director.codec import is_chunk_key
from director.keys import is_blob_id, item_index_id
from director.planner import Health
from objstore.replies import MetadumpEntry

if TYPE_CHECKING:
    from director.client import BlobClient
    from director.nodes import Node


def index_id(key: bytes) -> str:
    """The index entry an object-server key belongs to."""
    if is_chunk_key(key):
        return key.split(b"/", 1)[0].decode()
    if is_blob_id(key):
        return key.decode()
    return item_index_id(key)


@dataclass
class HeldBlob:
    """One blob's keys on a node: its head (None: only chunks are there) and chunks."""

    head: MetadumpEntry | None = None
    chunks: list[MetadumpEntry] = field(default_factory=list)

    @property
    def entries(self) -> list[MetadumpEntry]:
        """Head first: a head never outlives its chunks while they are deleted."""
        return ([self.head] if self.head is not None else []) + self.chunks

    @property
    def written(self) -> int:
        """When the youngest of its keys was last written (unix seconds)."""
        return max(e.la for e in self.entries)


@dataclass
class Listing:
    """A node's keys by index entry.

    :param keys: keys listed.
    :param blobs: blob id -> the blob's keys on the node.
    :param items: index id (in the items' key space) -> the item's key.
    """

    keys: int = 0
    blobs: dict[str, HeldBlob] = field(default_factory=dict)
    items: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def of(cls, dump: Iterable[MetadumpEntry]) -> Listing:
        listing = cls()
        for entry in dump:
            listing.keys += 1
            key = entry.key
            if is_blob_id(key):
                listing.blobs.setdefault(key.decode(), HeldBlob()).head = entry
            elif is_chunk_key(key):
                bid = key.split(b"/", 1)[0].decode()
                listing.blobs.setdefault(bid, HeldBlob()).chunks.append(entry)
            else:
                listing.items[item_index_id(key)] = key
        return listing

    def index_ids(self) -> set[str]:
        """Every index entry the node's keys stand for (blobs' and items' alike)."""
        return set(self.blobs) | set(self.items)

    def key_of(self, iid: str) -> str:
        """A key that stands for index entry ``iid`` on the node (for reports)."""
        held = self.blobs.get(iid)
        if held is not None:
            key = held.head.key if held.head is not None else held.chunks[0].key
        else:
            key = self.items[iid]
        return key.decode("ascii", "backslashreplace")


@dataclass
class Verified:
    """What :func:`index_verified` found and did.

    :param indexed: blobs whose copy verified and is now recorded on the node.
    :param bad: blob id -> what was wrong with the copy (corrupt, missing, not ours).
    :param unreachable: blobs the node could not be asked about.
    :param bytes: stored bytes read.
    """

    indexed: list[str] = field(default_factory=list)
    bad: dict[str, str] = field(default_factory=dict)
    unreachable: list[str] = field(default_factory=list)
    bytes: int = 0


async def verify_copies(client: BlobClient, node: Node, bids: Sequence[str], *,
                        parallelism: int) -> dict[str, Probe]:
    """Read back and verify the node's copy of each blob, ``parallelism`` at a time."""
    conn = client.node_client(node)
    sem = asyncio.Semaphore(parallelism)

    async def one(bid: str) -> Probe:
        async with sem:
            return await client.reader.probe(bid, conn)

    return dict(zip(bids, await asyncio.gather(*(one(b) for b in bids)), strict=True))


async def index_verified(client: BlobClient, node: Node, bids: Sequence[str], *,
                         parallelism: int) -> Verified:
    """Verify the node's copy of each blob and record those that verify as held there
    (merged with the locations the index knows, so writes going on meanwhile keep
    theirs)."""
    out = Verified()
    for bid, seen in (await verify_copies(client, node, bids,
                                          parallelism=parallelism)).items():
        if seen.blob is not None:
            out.indexed.append(bid)
            out.bytes += seen.blob.stored_bytes
        elif seen.health is Health.UNREACHABLE:
            out.unreachable.append(bid)
        else:
            out.bad[bid] = f"{seen.health.value}: {seen.detail}"
    if out.indexed:
        await client.index.add_many({bid: [node.number] for bid in out.indexed})
    return out
