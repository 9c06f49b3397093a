"""Moving directord's items into their own key space: the upgrade of an index written
before ``ixi:`` existed (``objmail index migrate-items``).

Theory of operation.  Until the items' key space existed, directord recorded an item a
memcached client stored under a plain key in the *blobs'* buckets (``ix:<bucket>``), under
the same index id it has now (:func:`director.keys.item_index_id`).  Current directors
look items up in ``ixi:<bucket>`` only, so such an item reads as missing, and gc, which
sweeps the blobs' space and keeps only what messages reference, would collect its entry
(the copies stay on the nodes, unindexed).  To keep that from happening, gc refuses to run
(:class:`~director.errors.ItemsNotMigrated`) on an index whose ``index_meta`` lacks
``items_keyspace``: an index created by this release has it from the start, an older one
gets it when a migration run ends having covered every node.

The index alone cannot tell an old item entry from a blob's (both are 64 hex digits);
the object servers can, since they hold an item under its plain key.  So a run walks
every node's key list (:mod:`director.nodewalk`, as index rebuild does, under the same
guards: gc's lease for the whole run, ``inventory:<node>``'s while on a node) and, for
the items each node holds, a page at a time:

* an entry in the blobs' space is **moved**: its node numbers are written to the items'
  space where that has no entry yet (``HSETNX``), then the blobs'-space entry is
  deleted.  An entry the items' space already has was written by a client storing the
  key again since the upgrade: it wins (**superseded**), the old entry just goes;
* an entry only in the items' space is left alone (**already**: moved by an earlier run,
  or written since the upgrade);
* no entry anywhere is counted **unindexed** and left alone: gc collected the entry
  before the migration could move it (possible only with a release that had the items'
  space but not this guard), a put missed its quorum, or a delete failed.
  ``objmail index rebuild --node ID`` records such items again; ``objmail inventory``
  lists them.

Every step is idempotent (write-if-absent, then delete), so a run interrupted anywhere,
rerun or taken over by another director, ends in the same index.  It runs online:
directord keeps serving, and an old item reads again as soon as its entry moved.  Reads
no stored bytes: the cost is one key listing per node and two index lookups per item.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from director.listing import Listing
from director.nodes import Node
from director.nodewalk import WALK_FIELDS, NodeWalk, WalkStats

if TYPE_CHECKING:
    from director.client import BlobClient

#: The job (its lease and state hash).
MIGRATE_JOB = "items-migrate"
#: Items handled per step (the cursor is saved after each).
MIGRATE_PAGE = 512
#: Counters kept in the job hash while a run is in progress (totals of the run).
COUNTERS = ("items", "keys", "moved", "superseded", "already", "unindexed")
#: The job-hash fields of a run in progress (forgotten when it ends).
RUN_FIELDS = (*WALK_FIELDS, *COUNTERS)


@dataclass
class MigrateStats(WalkStats):
    """What a migration run did so far (resumed invocations included).  ``items``
    counts the item keys handled (an item held on two nodes counts twice).

    :param moved: entries moved from the blobs' key space to the items'.
    :param superseded: old entries dropped because the items' space had a newer one.
    :param already: items found in the items' space only.
    :param unindexed: items in neither space (left alone: ``objmail index rebuild``).
    :param complete: every directord item is in the items' space now (the run covered
        every node); gc may run.
    """

    job: str = MIGRATE_JOB
    moved: int = 0
    superseded: int = 0
    already: int = 0
    unindexed: int = 0
    complete: bool = False


class ItemMigration(NodeWalk[MigrateStats]):
    """One migration run (see the module docstring).

    :param node_id: only this node's items (the run then cannot mark the migration
        complete: a run over every node does).
    :param page: items per step.
    """

    job = MIGRATE_JOB
    counters = COUNTERS

    def __init__(self, client: BlobClient, *, node_id: str | None = None,
                 page: int = MIGRATE_PAGE, **kwargs: Any) -> None:
        if node_id is not None:
            self.job = f"{MIGRATE_JOB}:{node_id}"
        super().__init__(client, node_id=node_id, page=page, **kwargs)
        self.items_index = client.items

    def new_stats(self, nodes: int) -> MigrateStats:
        return MigrateStats(job=self.job, nodes=nodes)

    def entries(self, listing: Listing) -> set[str]:
        return set(listing.items)

    async def page(self, node: Node, listing: Listing, page: Sequence[str],
                   stats: MigrateStats) -> int | None:
        old = await self.index.lookup(page)
        new = await self.items_index.lookup(page)
        moving = {iid: nums for iid, nums in old.items() if nums}
        if moving:
            written = await self.items_index.add_absent(moving)
            await self.index.delete_many(moving)
            stats.moved += len(written)
            stats.superseded += len(moving) - len(written)
        stats.already += sum(1 for iid in page if iid not in moving and new[iid])
        stats.unindexed += sum(1 for iid in page if iid not in moving and not new[iid])
        stats.items += len(page)
        return 0

    async def before_finish(self, stats: MigrateStats) -> None:
        # A node skipped may hold items whose only entries are still in the blobs' space.
        if not stats.skipped and self.node_id is None:
            await self.index.set_items_keyspace(f"migrated {self.now()!r}")
            stats.complete = True

    def finished_fields(self, stats: MigrateStats) -> dict[str, str | int | float]:
        return {"last_moved": stats.moved, "last_unindexed": stats.unindexed}
