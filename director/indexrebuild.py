"""Index rebuild: the location index from what the object servers hold.

Theory of operation.  The location index is the directors' only map of which node holds
which blob; the nodes' own key lists are the truth it summarises.  When the index is lost
or damaged (a FLUSHALL of the Redis masters, a master lost with its replica), a rebuild
run (job ``index-rebuild``, or ``index-rebuild:<node id>`` for one node) lists each
readable node's keys (:class:`director.listing.Listing`) and goes through the index
entries they stand for, a page at a time in index-id order:

* a blob the index already places on the node is left alone (a rebuild over an intact
  index reads no blob);
* any other blob copy is read back and verified against its id with this installation's
  codec (:func:`director.listing.index_verified`, which ``objmail inventory --fix`` uses
  to adopt copies too), then recorded on the node; a copy that does not verify (corrupt,
  its chunks missing, another installation's key) is counted and left unindexed;
* chunks whose head is not on the node (*orphans*) are counted, never indexed;
* directord's plain items are recorded in the items' own key space.

Recording merges the node's number into what the index knows
(:meth:`~director.index.LocationIndex.add_many`), so a rebuild runs online: puts, repairs
and moves going on meanwhile record their own locations beside it.  Reads of a blob fail
while the index lacks its entry and work again once a node holding it has been rebuilt.
Under-replicated blobs found this way are left to repair's sweep.

Guarding deletes.  A copy is verified, then recorded a moment later; a delete in between
would leave an entry naming a copy that is gone, and a delivery deduplicating onto it
would reference nothing.  The deletes that could do that are gc's and ``inventory
--fix``'s, so a pass holds gc's lease for its whole length and the lease of
``inventory:<node id>`` while it works on that node (:class:`director.nodewalk.Guards`):
neither runs meanwhile (they find their lease held and try later), and a rebuild waits
for them likewise.  A blob that
level or drain moves meanwhile may be recorded on its old node as well: reads verify
every copy and fail over, and scrub or repair drops the stale location.

Resuming.  The walk over the nodes (:mod:`director.nodewalk`, shared with the items
migration) saves the node in progress and the last index id done on it after every page
with the run's counters, so Ctrl-C, a crash or a lost lease cost at most the page in
hand.  A node that cannot be listed, or stops answering, is skipped and named
(``skipped``): rebuild it alone with ``--node`` once it answers.

Node numbers.  The entries name nodes by registry number; after the registry itself was
lost, ``objmail index rebuild`` first registers again every object server that reports
the number it kept (:meth:`director.registry.Registry.reregister`), so the rebuilt
entries name the same numbers as before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from director.listing import Listing, index_verified
from director.nodes import Node
from director.nodewalk import NODE_DONE, WALK_FIELDS, NodeWalk, WalkStats

if TYPE_CHECKING:
    from director.client import BlobClient

__all__ = ["COUNTERS", "NODE_DONE", "REBUILD_PAGE", "RUN_FIELDS", "IndexRebuild",
           "RebuildStats"]

#: Index entries handled per step (the cursor is saved after each).
REBUILD_PAGE = 256
#: Blob copies verified at the same time.
REBUILD_PARALLELISM = 8
#: Bad copies kept as examples.
EXAMPLES = 10
#: Counters kept in the job hash while a run is in progress (totals of the run).
COUNTERS = ("items", "bytes", "keys", "indexed", "already", "item_keys", "bad", "orphans",
            "unreachable")
#: The job-hash fields of a run in progress (forgotten when it ends).
RUN_FIELDS = (*WALK_FIELDS, *COUNTERS)


@dataclass
class RebuildStats(WalkStats):
    """What a rebuild run did so far (resumed invocations included).  ``items`` counts
    index entries handled, ``bytes`` the stored bytes read to verify copies.

    :param indexed: blob copies verified and recorded.
    :param already: blob copies the index placed on their node already.
    :param item_keys: directord items recorded.
    :param bad: blob copies that did not verify (left unindexed).
    :param orphans: chunks whose blob's head is not on their node.
    :param unreachable: copies a node could not be asked about (the node was skipped).
    """

    job: str = "index-rebuild"
    indexed: int = 0
    already: int = 0
    item_keys: int = 0
    bad: int = 0
    orphans: int = 0
    unreachable: int = 0
    examples: list[str] = field(default_factory=list)


class IndexRebuild(NodeWalk[RebuildStats]):
    """One rebuild run (see the module docstring).

    :param node_id: only this node's keys (default: every readable node's).
    :param rate: at most this many stored bytes read per second (None: no limit).
    :param sleep: how the rate limit waits (tests pass a faster one).
    :param page: index entries per step.
    """

    counters = COUNTERS

    def __init__(self, client: BlobClient, *, node_id: str | None = None,
                 rate: float | None = None, sleep: Callable[[float], Any] = asyncio.sleep,
                 page: int = REBUILD_PAGE,
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], float] = time.time, token: str | None = None) -> None:
        self.job = f"index-rebuild:{node_id}" if node_id else "index-rebuild"
        super().__init__(client, node_id=node_id, rate=rate, sleep=sleep, page=page,
                         clock=clock, now=now, token=token)

    def new_stats(self, nodes: int) -> RebuildStats:
        return RebuildStats(job=self.job, nodes=nodes)

    def finished_fields(self, stats: RebuildStats) -> dict[str, str | int | float]:
        return {"last_indexed": stats.indexed, "last_bad": stats.bad}

    async def page(self, node: Node, listing: Listing, page: Sequence[str],
                   stats: RebuildStats) -> int | None:
        """Record one page of the node's entries; the stored bytes read, or None when
        the node could not be asked about some copy (nothing of the page is counted)."""
        heads, items = [], []
        orphans = 0
        for iid in page:
            held = listing.blobs.get(iid)
            if held is None:
                items.append(iid)
            elif held.head is None:
                orphans += len(held.chunks)
            else:
                heads.append(iid)
        known = await self.index.lookup(heads) if heads else {}
        todo = [b for b in heads if node.number not in known[b]]
        got = await index_verified(self.client, node, todo, parallelism=REBUILD_PARALLELISM)
        if got.unreachable:
            stats.unreachable += len(got.unreachable)
            return None
        if items:
            await self.client.items.add_many({iid: [node.number] for iid in items})
        stats.items += len(page)
        stats.orphans += orphans
        stats.already += len(heads) - len(todo)
        stats.indexed += len(got.indexed)
        stats.item_keys += len(items)
        stats.bad += len(got.bad)
        stats.bytes += got.bytes
        for bid, why in sorted(got.bad.items())[:max(EXAMPLES - len(stats.examples), 0)]:
            stats.examples.append(f"{node.id}: {bid} ({why})")
        return got.bytes
