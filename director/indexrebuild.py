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
``inventory:<node id>`` while it works on that node: neither runs meanwhile (they find
their lease held and try later), and a rebuild waits for them likewise.  A blob that
level or drain moves meanwhile may be recorded on its old node as well: reads verify
every copy and fail over, and scrub or repair drops the stale location.

Resuming.  The node in progress and the last index id done on it (``node``, ``after``)
are saved in the job hash after every page with the run's counters, so Ctrl-C, a crash
or a lost lease cost at most the page in hand; the next invocation lists that node again
and carries on after ``after``.  Nodes are taken in id order.  One that cannot be listed,
or stops answering, is skipped and named (``skipped``): rebuild it alone with ``--node``
once it answers.

Node numbers.  The entries name nodes by registry number; after the registry itself was
lost, ``objmail index rebuild`` first registers again every object server that reports
the number it kept (:meth:`director.registry.Registry.reregister`), so the rebuilt
entries name the same numbers as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from director.background import BackgroundJob, PassControl, PassStats, throttle
from director.errors import DirectorError, LeaseHeld, LeaseLost
from director.gcwatch import GC_JOB
from director.jobstate import JobState, integer, number
from director.lease import Lease
from director.listing import Listing, index_verified
from director.memcache_client import NodeError
from director.nodes import Node, NodeState

if TYPE_CHECKING:
    from director.client import BlobClient
    from director.registry import RegistrySnapshot

#: Index entries handled per step (the cursor is saved after each).
REBUILD_PAGE = 256
#: Blob copies verified at the same time.
REBUILD_PARALLELISM = 8
#: Bad copies kept as examples.
EXAMPLES = 10
#: ``after`` of a node whose every entry is done (sorts after every index id).
NODE_DONE = "~"
#: Counters kept in the job hash while a run is in progress (totals of the run).
COUNTERS = ("items", "bytes", "keys", "indexed", "already", "item_keys", "bad", "orphans",
            "unreachable")
#: The job-hash fields of a run in progress (forgotten when it ends).
RUN_FIELDS = ("started_at", "node", "after", "skipped", *COUNTERS)


@dataclass
class RebuildStats(PassStats):
    """What a rebuild run did so far (resumed invocations included).  ``items`` counts
    index entries handled, ``bytes`` the stored bytes read to verify copies.

    :param node: the node in progress.
    :param nodes: nodes the run covers; ``nodes_done`` of them done.
    :param keys: keys listed on the nodes done (and the one in progress).
    :param indexed: blob copies verified and recorded.
    :param already: blob copies the index placed on their node already.
    :param item_keys: directord items recorded.
    :param bad: blob copies that did not verify (left unindexed).
    :param orphans: chunks whose blob's head is not on their node.
    :param unreachable: copies a node could not be asked about (the node was skipped).
    :param skipped: nodes not rebuilt (down, or could not be listed or asked).
    :param finished: the run went through every node and ended.
    """

    job: str = "index-rebuild"
    node: str = ""
    nodes: int = 0
    nodes_done: int = 0
    keys: int = 0
    indexed: int = 0
    already: int = 0
    item_keys: int = 0
    bad: int = 0
    orphans: int = 0
    unreachable: int = 0
    finished: bool = False
    skipped: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)


class IndexRebuild(BackgroundJob[RebuildStats]):
    """One rebuild run (see the module docstring).

    :param node_id: only this node's keys (default: every readable node's).
    :param rate: at most this many stored bytes read per second (None: no limit).
    :param sleep: how the rate limit waits (tests pass a faster one).
    :param page: index entries per step.
    """

    def __init__(self, client: BlobClient, *, node_id: str | None = None,
                 rate: float | None = None, sleep: Callable[[float], Any] = asyncio.sleep,
                 page: int = REBUILD_PAGE,
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], float] = time.time, token: str | None = None) -> None:
        super().__init__(client, clock=clock, now=now, token=token)
        if rate is not None and rate <= 0:
            raise ValueError(f"rebuild rate must be positive, got {rate}")
        self.node_id = node_id
        self.rate = rate
        self._sleep = sleep
        self.page = page
        self.job = f"index-rebuild:{node_id}" if node_id else "index-rebuild"

    def nodes(self, snap: RegistrySnapshot) -> list[Node]:
        """The nodes the run covers, in id order: the one asked for, or every node
        registered and not removed (down ones are skipped and named).

        :raises LookupError: the node asked for is not registered.
        """
        if self.node_id is not None:
            node = snap.get(self.node_id)
            if node is None:
                raise LookupError(f"no object server {self.node_id!r} is registered")
            return [node]
        return sorted((n for n in snap.nodes if n.state is not NodeState.REMOVED),
                      key=lambda n: n.id)

    async def run_pass(self, control: PassControl) -> RebuildStats:
        state = control.state(self)
        fields = await state.load()
        nodes = self.nodes(await self.client.snapshot(force=True))
        stats = RebuildStats(job=self.job, nodes=len(nodes))
        if "started_at" not in fields:
            fields = {"started_at": repr(self.now()), "node": "", "after": ""}
            await state.save(fields)
        for name in COUNTERS:
            setattr(stats, name, integer(fields, name))
        stats.skipped = [n for n in fields.get("skipped", "").split(",") if n]
        at, after = fields.get("node", ""), fields.get("after", "")
        guards = _Guards(self)
        await guards.take(GC_JOB)
        try:
            for node in nodes:
                resume = after if node.id == at else ""
                if node.id < at or resume == NODE_DONE or node.id in stats.skipped:
                    stats.nodes_done += 1
                    continue
                stats.node = node.id
                if not node.readable:
                    await self._skip(node, state, stats)
                elif not await self._rebuild(node, resume, control, state, stats, guards):
                    return stats
                stats.nodes_done += 1
        finally:
            await guards.release_all()
        await state.save({"last_finished": self.now(), "last_indexed": stats.indexed,
                          "last_bad": stats.bad, "last_skipped": ",".join(stats.skipped)})
        await state.forget(*RUN_FIELDS)
        stats.finished = True
        stats.node = ""
        await control.checkpoint(stats)
        stats.interrupted = False  # the run is over; nothing was cut short
        return stats

    async def _rebuild(self, node: Node, after: str, control: PassControl, state: JobState,
                       stats: RebuildStats, guards: _Guards) -> bool:
        """Rebuild one node's entries after ``after``; False when the pass must stop."""
        await guards.take(f"inventory:{node.id}")
        try:
            try:
                listing = Listing.of(await self.client.node_client(node).metadump())
            except (NodeError, OSError):
                await self._skip(node, state, stats)
                return True
            keys_before = stats.keys
            stats.keys += listing.keys
            todo = sorted(i for i in listing.index_ids() if i > after)
            stats.total = stats.items + len(todo)
            started, read = self.clock(), 0
            for at in range(0, len(todo), self.page):
                page = todo[at:at + self.page]
                got = await self._page(node, listing, page, stats)
                if got is None:
                    stats.keys = keys_before
                    await self._skip(node, state, stats)
                    return True
                read += got
                await state.save({"node": node.id, "after": page[-1],
                                  **self._counters(stats, keys_before)})
                if not await control.checkpoint(stats) or not await guards.keep(stats):
                    return False
                if not await throttle(control, stats, rate=self.rate, done=read,
                                      elapsed=lambda: self.clock() - started,
                                      sleep=self._sleep):
                    return False
            await state.save({"node": node.id, "after": NODE_DONE,
                              **self._counters(stats, stats.keys)})
            return True
        finally:
            await guards.release(f"inventory:{node.id}")

    async def _page(self, node: Node, listing: Listing, page: Sequence[str],
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

    async def _skip(self, node: Node, state: JobState, stats: RebuildStats) -> None:
        stats.skipped.append(node.id)
        stats.errors += 1
        await state.save({"node": node.id, "after": NODE_DONE,
                          "skipped": ",".join(stats.skipped),
                          **self._counters(stats, stats.keys)})

    @staticmethod
    def _counters(stats: RebuildStats, keys: int) -> dict[str, int]:
        """The counters to save; ``keys`` counts only listings of finished nodes (a
        resumed node is listed, and counted, again)."""
        return {**{name: getattr(stats, name) for name in COUNTERS}, "keys": keys}

    async def status(self) -> dict[str, Any]:
        """The job hash as an operator wants it (``objmail index rebuild --status``)."""
        fields = await JobState(self.runner, self.keys, self.job).load()
        text = ("node", "after", "skipped", "last_skipped")
        return {"running": "started_at" in fields,
                **{k: v if k in text else number(fields, k) for k, v in fields.items()}}


class _Guards:
    """Leases a rebuild holds beside its own (gc's, a node's inventory), with its token,
    so that the jobs that delete copies do not run meanwhile."""

    def __init__(self, job: IndexRebuild) -> None:
        self.job = job
        self.held: dict[str, Lease] = {}

    async def take(self, name: str) -> None:
        """:raises LeaseHeld: that job runs now."""
        job = self.job
        lease = Lease(job.runner, job.keys, name, ttl=job.dconf.lease_ttl, token=job.token,
                      clock=job.clock)
        if not await lease.acquire():
            raise LeaseHeld(name, await lease.holder())
        self.held[name] = lease

    async def keep(self, stats: PassStats) -> bool:
        """Renew every lease held; False (and ``stats.interrupted``) when one was lost."""
        try:
            for lease in self.held.values():
                await lease.keep()
        except LeaseLost:
            stats.interrupted = True
            return False
        return True

    async def release(self, name: str) -> None:
        lease = self.held.pop(name, None)
        if lease is not None:
            with contextlib.suppress(DirectorError):  # it runs out by itself
                await lease.release()

    async def release_all(self) -> None:
        for name in list(self.held):
            await self.release(name)
