"""Inventory: reconcile what an object server holds with what the index says it holds.

An object server's key list (``lru_crawler metadump all``) is compared with the index
entries that list the node (an index scan filtered by its number):

* an entry listing the node whose key the node does not have (a lost write, a wiped
  disk, a record quarantined as corrupt) is **queued for repair**, which rewrites it;
* a key the node holds but the index does not place there is **reported** (an
  *unindexed* key: a copy left by a delete that failed, a put that crashed before its
  index record, an item whose index entry was dropped).  Nothing is deleted: whether it
  is garbage is gc's decision, with the metadata store's references in hand.

Keys map to index entries as everywhere else: a blob id is its own entry, a chunk
``<id>/<n>`` belongs to its blob's entry, any other key (a directord item) to
:func:`director.keys.item_index_id` of the key.  A blob written between the key list and
the scan can look missing; repair then finds it whole, so the race costs a probe.

Each node is its own job, ``inventory:<node id>``, under its lease; ``objmail inventory``
runs it (directord does not: listing every key of a large node is heavy, so it is an
operator's decision).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from director.background import BackgroundJob, PassControl, PassStats
from director.codec import is_chunk_key
from director.keys import is_blob_id, item_index_id
from director.memcache_client import NodeError

if TYPE_CHECKING:
    from director.client import BlobClient

#: Ids kept as examples of each finding.
EXAMPLES = 5


@dataclass
class InventoryStats(PassStats):
    """What an inventory of one node found.

    :param keys: keys in the node's key list.
    :param indexed: index entries that list the node.
    :param missing: of those, entries whose key the node lacks (queued for repair).
    :param unindexed: keys the node holds that the index does not place there.
    """

    job: str = "inventory"
    node: str = ""
    keys: int = 0
    indexed: int = 0
    missing: int = 0
    unindexed: int = 0
    missing_examples: list[str] = field(default_factory=list)
    unindexed_examples: list[str] = field(default_factory=list)


class Inventory(BackgroundJob[InventoryStats]):
    """The inventory of one node (see the module docstring)."""

    def __init__(self, client: BlobClient, node_id: str, *,
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], float] = time.time, token: str | None = None) -> None:
        super().__init__(client, clock=clock, now=now, token=token)
        self.node_id = node_id
        self.job = f"inventory:{node_id}"

    async def run_pass(self, control: PassControl) -> InventoryStats:
        stats = InventoryStats(job=self.job, node=self.node_id)
        snap = await self.client.snapshot(force=True)
        node = snap.get(self.node_id)
        if node is None or not node.readable:
            stats.errors += 1
            return stats
        try:
            dump = await self.client.node_client(node).metadump()
        except (NodeError, OSError):
            stats.errors += 1
            return stats
        stats.keys = len(dump)
        # index id -> the key that stands for it on the node (for the report)
        held: dict[str, str] = {}
        for entry in dump:
            key = entry.key
            if is_chunk_key(key):
                index_id = key.split(b"/", 1)[0].decode()
            elif is_blob_id(key):
                index_id = key.decode()
            else:
                index_id = item_index_id(key)
            held.setdefault(index_id, key.decode("ascii", "backslashreplace"))
        listed: set[str] = set()
        async for page in self.index.iterate(node=node.number):
            listed.update(bid for bid, _nums in page.entries)
            stats.items = len(listed)
            if not await control.checkpoint(stats):
                return stats
        stats.indexed = len(listed)
        missing = sorted(listed - held.keys())
        unindexed = sorted(held[i] for i in held.keys() - listed)
        if missing:
            await self.client.repair.add(missing)
        stats.missing, stats.unindexed = len(missing), len(unindexed)
        stats.missing_examples = missing[:EXAMPLES]
        stats.unindexed_examples = unindexed[:EXAMPLES]
        await control.state(self).save({
            "checked_at": self.now(), "keys": stats.keys, "indexed": stats.indexed,
            "missing": stats.missing, "unindexed": stats.unindexed})
        return stats
