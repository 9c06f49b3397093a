"""Inventory: reconcile what an object server holds with what the index says it holds.

An object server's key list (``lru_crawler metadump all``) is compared with the index
entries that list the node (an index scan of both key spaces, blobs and directord's
plain items, filtered by its number):

* an entry listing the node whose key the node does not have (a lost write, a wiped
  disk, a record quarantined as corrupt) is **queued for repair**, which rewrites it;
* a key the node holds but the index does not place there is **reported** (an
  *unindexed* key: a copy left by a delete that failed, a put that missed its quorum or
  crashed before its index record, an index write a Redis failover lost).

Keys map to index entries as everywhere else (:class:`director.listing.Listing`): a blob
id is its own entry, a chunk ``<id>/<n>`` belongs to its blob's entry, any other key (a
directord item) to :func:`director.keys.item_index_id` of the key.  A blob written between the key list and
the scan can look missing; repair then finds it whole, so the race costs a probe.

**Fixing** (``objmail inventory --fix``, :class:`Reclaim`).  Without it nothing is
deleted.  With it, each unindexed *blob* (its head and chunks on the node, grouped by
blob id) whose youngest key was last written more than the grace period ago
(``director.gc_grace``: no put in flight is that old) is decided with the metadata
store's references in hand (:class:`~director.collector.ReferenceChecker`):

* referenced by some message and listed nowhere in the index (an index write that was
  lost): the copy is verified and **adopted** (its location recorded, as ``objmail index
  rebuild`` does: :func:`director.listing.index_verified`), and queued for repair,
  which makes the other copies;
* referenced, listed elsewhere with fewer than ``replicas`` locations, on a node that
  takes new blobs: verified and adopted too; on a draining node it is left until repair
  has filled the blob's copies elsewhere;
* referenced and fully replicated elsewhere, or referenced by nothing: the copy is
  **deleted**, head first, each key with ``md <key> C<cas>`` (the CAS unique of the key
  list), so a put or a copy that rewrote it meanwhile keeps its new bytes.

Only keys of this installation are deleted: a head must verify against its id with this
installation's codec (with encryption, only its own key decrypts it), and orphan chunks
(no head on the node) must decode with it; anything else is counted ``foreign`` and
left alone, as are directord's plain items, which no message references.  A head that
does not verify is never deleted (nor adopted): it may be another installation's.

The fix resumes: the blob ids are handled in order, a page at a time, and the last id
done is saved in the job hash (``fix_cursor``), so Ctrl-C or a lost lease costs at most
the page in hand; ``rate`` caps the stored bytes read per second.

Each node is its own job, ``inventory:<node id>``, under its lease; ``objmail inventory``
runs it (directord does not: listing every key of a large node is heavy, and the fix
needs PostgreSQL, which the director does not reach).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from director.background import BackgroundJob, PassControl, PassStats, throttle
from director.codec import CodecError
from director.collector import ReferenceChecker
from director.jobstate import JobState
from director.listing import HeldBlob, Listing, index_verified
from director.memcache_client import NodeError
from director.nodes import Node, NodeState
from director.planner import Health

if TYPE_CHECKING:
    from director.client import BlobClient

log = logging.getLogger(__name__)

#: Ids kept as examples of each finding.
EXAMPLES = 5
#: Unindexed blobs decided per step (one reference query, one index lookup).
FIX_PAGE = 128
#: Unindexed blobs examined at the same time.
FIX_PARALLELISM = 8
#: The job-hash fields of a fix in progress (forgotten when it ends).
FIX_FIELDS = ("fix_cursor",)


@dataclass(frozen=True)
class Reclaim:
    """How ``objmail inventory --fix`` reclaims unindexed copies.

    :param references: which blobs messages reference (the metadata store's view).
    :param grace: seconds since a key's last write before it may be deleted or adopted.
    :param rate: at most this many stored bytes read per second (None: no limit).
    :param sleep: how the rate limit waits (tests pass a faster one).
    """

    references: ReferenceChecker
    grace: float
    rate: float | None = None
    sleep: Callable[[float], Any] = asyncio.sleep

    def __post_init__(self) -> None:
        if self.rate is not None and self.rate <= 0:
            raise ValueError(f"inventory rate must be positive, got {self.rate}")


@dataclass
class InventoryStats(PassStats):
    """What an inventory of one node found (and, with a fix, did).

    :param keys: keys in the node's key list.
    :param indexed: index entries that list the node.
    :param missing: of those, entries whose key the node lacks (queued for repair).
    :param unindexed: keys the node holds that the index does not place there.
    :param young: unindexed blobs last written within the grace period (left for now).
    :param reclaimed: unindexed blobs whose copies on the node were deleted.
    :param copies_deleted: keys deleted (heads and chunks).
    :param adopted: unindexed blobs some message references, verified and indexed.
    :param kept: referenced unindexed blobs left (a draining node's copy of a blob not
        yet fully replicated elsewhere, or a copy that does not verify).
    :param foreign: unindexed keys this installation cannot verify (left alone).
    :param fixed: the fix went through every unindexed blob of the node.
    """

    job: str = "inventory"
    node: str = ""
    keys: int = 0
    indexed: int = 0
    missing: int = 0
    unindexed: int = 0
    young: int = 0
    reclaimed: int = 0
    copies_deleted: int = 0
    adopted: int = 0
    kept: int = 0
    foreign: int = 0
    fixed: bool = False
    missing_examples: list[str] = field(default_factory=list)
    unindexed_examples: list[str] = field(default_factory=list)
    reclaimed_examples: list[str] = field(default_factory=list)


class Inventory(BackgroundJob[InventoryStats]):
    """The inventory of one node (see the module docstring).

    :param fix: reclaim unindexed copies too (None: only report them).
    """

    def __init__(self, client: BlobClient, node_id: str, *, fix: Reclaim | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], float] = time.time, token: str | None = None) -> None:
        super().__init__(client, clock=clock, now=now, token=token)
        self.node_id = node_id
        self.fix = fix
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
        listing = Listing.of(dump)
        stats.keys = listing.keys
        held = listing.index_ids()
        listed: set[str] = set()
        for space in (self.index, self.client.items):
            async for page in space.iterate(node=node.number):
                listed.update(bid for bid, _nums in page.entries)
                stats.items = len(listed)
                if not await control.checkpoint(stats):
                    return stats
        stats.indexed = len(listed)
        missing = sorted(listed - held)
        unindexed = sorted(listing.key_of(i) for i in held - listed)
        if missing:
            await self.client.repair.add(missing)
        stats.missing, stats.unindexed = len(missing), len(unindexed)
        stats.missing_examples = missing[:EXAMPLES]
        stats.unindexed_examples = unindexed[:EXAMPLES]
        state = control.state(self)
        await state.save({
            "checked_at": self.now(), "keys": stats.keys, "indexed": stats.indexed,
            "missing": stats.missing, "unindexed": stats.unindexed})
        if self.fix is not None and unindexed:
            await self._reclaim(self.fix, node, listing, listed, control, state, stats)
        elif self.fix is not None:
            stats.fixed = True
        return stats

    # -- the fix ------------------------------------------------------------------------

    async def _reclaim(self, fix: Reclaim, node: Node, listing: Listing,
                       listed: set[str], control: PassControl, state: JobState,
                       stats: InventoryStats) -> None:
        groups = {bid: held for bid, held in listing.blobs.items() if bid not in listed}
        cursor = (await state.load()).get("fix_cursor", "")
        cutoff = self.now() - fix.grace
        todo = sorted(b for b in groups if b > cursor)
        for bid in todo:
            if groups[bid].written > cutoff:
                stats.young += 1
        ready = [b for b in todo if groups[b].written <= cutoff]
        started, read = self.clock(), 0
        for at in range(0, len(ready), FIX_PAGE):
            page = ready[at:at + FIX_PAGE]
            read += await self._decide(fix, node, {b: groups[b] for b in page}, stats)
            await state.save({"fix_cursor": page[-1]})
            if at + FIX_PAGE < len(ready):
                if not await control.checkpoint(stats):
                    return
                if not await throttle(control, stats, rate=fix.rate, done=read,
                                      elapsed=lambda: self.clock() - started,
                                      sleep=fix.sleep):
                    return
        await state.forget(*FIX_FIELDS)
        stats.fixed = True

    async def _decide(self, fix: Reclaim, node: Node, page: dict[str, HeldBlob],
                      stats: InventoryStats) -> int:
        """Adopt, delete or leave each unindexed blob of one page; the bytes read."""
        live = await fix.references.referenced(page)
        where = await self.index.lookup(page)
        takes_blobs = node.state is NodeState.ACTIVE
        adoptable: list[str] = []
        others: list[str] = []
        for bid in page:
            elsewhere = [n for n in where.get(bid, ()) if n != node.number]
            if bid in live and len(elsewhere) < self.client.policy.replicas:
                if elsewhere and not takes_blobs:
                    stats.kept += 1  # repair fills the copies elsewhere first
                else:
                    adoptable.append(bid)
            else:
                others.append(bid)
        sem = asyncio.Semaphore(FIX_PARALLELISM)
        read = 0

        async def reclaim(bid: str) -> None:
            nonlocal read
            async with sem:
                ours, size = await self._ours(bid, page[bid], node)
            read += size
            if ours is None:
                stats.errors += 1
            elif not ours:
                stats.foreign += len(page[bid].entries)
            else:
                await self._delete(bid, page[bid], node, stats)

        adopted = await index_verified(self.client, node, adoptable,
                                       parallelism=FIX_PARALLELISM)
        await asyncio.gather(*(reclaim(b) for b in others))
        read += adopted.bytes
        stats.errors += len(adopted.unreachable)
        for bid, why in adopted.bad.items():
            stats.kept += 1
            log.warning("inventory %s: unindexed copy of referenced blob %s does not "
                        "verify (%s); left alone", self.node_id, bid, why)
        if adopted.indexed:
            await self.client.repair.add(adopted.indexed)  # the other copies
            stats.adopted += len(adopted.indexed)
        return read

    async def _ours(self, bid: str, found: HeldBlob, node: Node) -> tuple[bool | None, int]:
        """Whether the copy is this installation's (None: the node could not be asked),
        and the stored bytes read to tell."""
        client = self.client.node_client(node)
        if found.head is not None:
            seen = await self.client.reader.probe(bid, client)
            if seen.health is Health.UNREACHABLE:
                return None, 0
            return seen.blob is not None, seen.blob.stored_bytes if seen.blob else 0
        first = found.chunks[0].key
        try:
            got = await client.get(first)
        except (NodeError, OSError):
            return None, 0
        if got is None:
            return True, 0  # gone meanwhile: the conditional deletes find nothing
        try:
            await self.client.reader.decode(got.value, got.flags, first.decode())
        except CodecError:
            return False, len(got.value)
        return True, len(got.value)

    async def _delete(self, bid: str, found: HeldBlob, node: Node,
                      stats: InventoryStats) -> None:
        client = self.client.node_client(node)
        deleted = 0
        for entry in found.entries:
            try:
                reply = await client.meta(b"md " + entry.key + b" C%d" % entry.cas)
            except (NodeError, OSError) as exc:
                log.warning("inventory %s: could not delete %r (%s)", self.node_id,
                            entry.key, exc)
                stats.errors += 1
                return
            if reply.code == b"HD":
                deleted += 1
            elif reply.code == b"EX" and entry is found.head:
                return  # rewritten since the listing: a put or a copy owns it now
        if deleted:
            stats.copies_deleted += deleted
            stats.reclaimed += 1
            if len(stats.reclaimed_examples) < EXAMPLES:
                stats.reclaimed_examples.append(bid)

