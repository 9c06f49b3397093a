"""Drain: empty a ``draining`` node onto the others, then report it empty.

Theory of operation.  Each draining node has its own job, ``drain:<node id>`` (its own
lease and state), so several nodes drain in parallel on different directors.  A drain
*sweep* goes once through the index, filtered by the node's number
(:meth:`director.index.LocationIndex.scan` with ``node=``), from a cursor saved in the
job's state after every page; a pass moves at most ``drain_max_blobs`` blobs, and the
next pass resumes the sweep.  An interrupted pass saves the cursor of the page it was
in: the blobs it had moved no longer list the node, so the page's rescan skips them and
only the blob in hand is at stake.

Moving one blob: read it from the draining node and verify it (a node that is down, or
whose copy is bad, is replaced as the source by another verified replica); copy it to
the first placement candidates that do not hold it (one copy, more if the blob is short
of copies elsewhere: :func:`director.planner.plan_drain`); the copy is checked on the
target; then, in one atomic index update, the new location is added and the draining
node's removed; last, the copy is deleted from the draining node.  A reader that looked
the blob up just before finds the draining node's copy gone and fails over to another.
When the draining node lacks the blob (or holds bad bytes), another verified replica is
the source, so the blob still ends with its full count of copies; when no replica
verifies, the draining node's location is dropped if others exist (the blob is queued
for repair), and when it was the only location the blob is lost and left listed
(``objmail node remove`` will refuse).

Items stored through directord under plain keys are indexed (in the items' key space)
under a hash of their key, which cannot be turned back into the key; at the start of each
sweep the node's key list (``lru_crawler metadump all``) names them, and each one the
index places on the node is copied with its flags and expiry, like a blob.

At the end of a sweep a confirming scan counts the entries still listing the node (blobs
and items), and the node's key list counts the keys it still holds (``keys_left``;
expired items aside): a copy no index entry names (a delete that failed, a put that
missed its quorum) is still on the disk the operator is about to pull, so the node is
**empty** (``empty_at`` in the job's state) only when both are zero; ``objmail node
remove`` then succeeds.  Unindexed keys are not the drain's to judge (that needs the
metadata store's references): ``objmail inventory --fix`` reclaims them once older than
the gc grace period.  A node that is down cannot be listed, so only its entries count.
Leftovers are retried by a new sweep after ``repair_retry_delay`` seconds.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from director.background import BackgroundJob, PassControl, PassStats
from director.blobreader import VerifiedBlob
from director.codec import is_chunk_key
from director.copier import delete_copy, write_verified
from director.errors import LeaseHeld
from director.index import SCAN_BUCKETS
from director.itemstate import ItemState
from director.jobstate import JobState, integer, number
from director.keys import is_blob_id, item_index_id
from director.memcache_client import NodeClient, NodeError
from director.nodes import Node, NodeState
from director.placement import Placer
from director.planner import COUNTING, Health, plan_drain
from director.registry import RegistrySnapshot

if TYPE_CHECKING:
    from director.client import BlobClient

log = logging.getLogger(__name__)

#: Blob ids kept as examples of what could not be moved.
EXAMPLES = 5


@dataclass
class DrainStats(PassStats):
    """What a drain pass did for one node.

    :param moved: blobs copied elsewhere and taken off the node.
    :param items_moved: directord items (plain keys) moved.
    :param dropped: locations dropped because the node lacked the blob or held bad
        bytes and no other copy verified either (queued for repair).
    :param lost: blobs listed only on the node, which lacks them.
    :param cursor: index bucket the sweep resumes from (0 after a complete sweep).
    :param buckets: buckets in the index (the sweep's length).
    :param remaining: entries still listing the node after a complete sweep.
    :param keys_left: keys the node still holds after a complete sweep (None: it could
        not be listed).
    :param empty: the index lists nothing on the node any more, and it holds no key.
    :param draining: the node was draining (False: activated again, removed, unknown;
        the pass did nothing).
    """

    job: str = "drain"
    node: str = ""
    draining: bool = False
    moved: int = 0
    items_moved: int = 0
    dropped: int = 0
    lost: int = 0
    cursor: int = 0
    buckets: int = 0
    remaining: int | None = None
    keys_left: int | None = None
    empty: bool = False
    examples: list[str] = field(default_factory=list)


class Drainer(BackgroundJob[DrainStats]):
    """Drains one node (``node_id``); see the module docstring."""

    def __init__(self, client: BlobClient, node_id: str, *,
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], float] = time.time, token: str | None = None) -> None:
        super().__init__(client, clock=clock, now=now, token=token)
        self.node_id = node_id
        self.job = f"drain:{node_id}"

    async def progress(self) -> DrainStats:
        """The drain's saved progress, as any director (or operator) can read it."""
        fields = await JobState(self.runner, self.keys, self.job).load()
        stats = DrainStats(job=self.job, node=self.node_id,
                           buckets=self.index.layout.buckets,
                           cursor=integer(fields, "cursor"),
                           moved=integer(fields, "moved"), bytes=integer(fields, "bytes"))
        stats.empty = "empty_at" in fields
        stats.draining = True
        if "remaining" in fields:
            stats.remaining = integer(fields, "remaining")
        if "keys_left" in fields:
            stats.keys_left = integer(fields, "keys_left")
        return stats

    async def run_pass(self, control: PassControl) -> DrainStats:
        stats = DrainStats(job=self.job, node=self.node_id, buckets=self.index.layout.buckets)
        snap = await self.client.snapshot(force=True)
        node = snap.get(self.node_id)
        if node is None or node.admin_state is not NodeState.DRAINING:
            return stats  # not (or no longer) draining: nothing to do
        stats.draining = True
        state = control.state(self)
        fields = await state.load()
        now = self.now()
        stats.total = node.report.items if node.report is not None else None
        if "empty_at" in fields:
            # Emptied earlier; while it waits for `node remove`, look again now and then
            # for a blob that arrived since (a put in flight when the drain began).
            stats.empty = True
            if now - number(fields, "empty_at") >= self.dconf.repair_retry_delay:
                stats.empty = await self._confirm_empty(node, stats)
                if stats.empty:
                    await state.save({"empty_at": now})
                else:
                    await state.forget("empty_at")
            return stats
        if (integer(fields, "remaining") or integer(fields, "keys_left")) and \
                now - number(fields, "swept_at") < self.dconf.repair_retry_delay:
            stats.remaining = integer(fields, "remaining")
            stats.keys_left = integer(fields, "keys_left")
            stats.cursor = integer(fields, "cursor")
            stats.examples = [e for e in fields.get("examples", "").split(",") if e]
            return stats  # leftovers from the last sweep: wait before trying them again
        placer = snap.placer(self.client.policy)
        cursor = integer(fields, "cursor")
        if not 0 <= cursor < self.index.layout.buckets:
            cursor = 0
        stats.cursor = cursor
        totals = {"moved": integer(fields, "moved"), "bytes": integer(fields, "bytes")}
        if cursor == 0 and "items_done" not in fields:
            await self._move_items(node, snap, placer, stats)
            await state.save({"items_done": 1, "started_at": number(fields, "started_at", now)})
        limit = self.dconf.drain_max_blobs
        while True:
            page = await self.index.scan(cursor, buckets=SCAN_BUCKETS, node=node.number)
            for bid, nums in page.entries:
                before = stats.moved, stats.bytes
                await self.move_blob(bid, nums, node, snap, placer, stats)
                stats.items += 1
                totals["moved"] += stats.moved - before[0]
                totals["bytes"] += stats.bytes - before[1]
                if stats.items >= limit or not await control.checkpoint(stats):
                    stats.interrupted = True
                    if not control.lost:  # else the new holder's cursor stands
                        await state.save({"cursor": cursor, **totals,
                                          "updated_at": self.now()})
                    return stats
            if page.next_cursor is not None:
                cursor = page.next_cursor
                stats.cursor = cursor
                await state.save({"cursor": cursor, **totals, "updated_at": self.now()})
                if not await control.checkpoint(stats):
                    return stats
                continue
            # The sweep is complete: is anything still listed on the node?
            stats.cursor = 0
            stats.empty = await self._confirm_empty(node, stats)
            done: dict[str, str | int | float] = {
                "cursor": 0, **totals, "swept_at": self.now(),
                "remaining": stats.remaining or 0, "keys_left": stats.keys_left or 0,
                "updated_at": self.now(),
                "examples": ",".join(stats.examples)}
            if stats.empty:
                done["empty_at"] = self.now()
                log.info("drain of %s: empty (moved %d blobs, %d bytes in all)",
                         self.node_id, totals["moved"], totals["bytes"])
            await state.save(done)
            await state.forget("items_done")
            return stats

    async def _confirm_empty(self, node: Node, stats: DrainStats) -> bool:
        """True when no entry of either key space lists the node and it holds no key."""
        left = 0
        for space in (self.index, self.client.items):
            async for page in space.iterate(node=node.number):
                left += len(page.entries)
                for bid, _nums in page.entries:
                    if len(stats.examples) < EXAMPLES and bid not in stats.examples:
                        stats.examples.append(bid)
        stats.remaining = left
        stats.keys_left = await self._keys_left(node, stats)
        if stats.keys_left is None:
            return left == 0 and not node.readable
        return left == 0 and stats.keys_left == 0

    async def _keys_left(self, node: Node, stats: DrainStats) -> int | None:
        """Keys the node still holds (expired items aside); None when it cannot be
        listed (down, or the listing failed: then it does not count as empty)."""
        if not node.readable:
            return None
        try:
            dump = await self.client.node_client(node).metadump()
        except (NodeError, OSError) as exc:
            log.warning("drain %s: could not list its keys (%s)", self.node_id, exc)
            stats.errors += 1
            return None
        now = time.time()
        held = [e.key for e in dump if not 0 < e.exp <= now]
        for key in held[:EXAMPLES - len(stats.examples)]:
            stats.examples.append(key.decode("ascii", "backslashreplace"))
        return len(held)

    # -- blobs --------------------------------------------------------------------------

    async def move_blob(self, bid: str, nums: tuple[int, ...], node: Node,
                        snap: RegistrySnapshot, placer: Placer, stats: DrainStats) -> None:
        """Move one blob off the draining ``node`` (see the module docstring)."""
        here = None
        if node.readable:
            here = await self.client.reader.probe(bid, self.client.node_client(node))
        source: VerifiedBlob | None = here.blob if here is not None else None
        others = [n for n in snap.resolve([x for x in nums if x != node.number])
                  if n.state in COUNTING]
        if source is None:
            for other in others:
                found = await self.client.reader.probe(bid, self.client.node_client(other))
                if found.blob is not None:
                    source = found.blob
                    break
        if source is None:
            answered = here is not None and here.health in (Health.MISSING, Health.CORRUPT)
            if answered and others:
                # The node has nothing worth keeping; the other copies are repair's job.
                await self.index.update(bid, remove=[node.number])
                await self.client.repair.add([bid])
                stats.dropped += 1
            elif answered:
                stats.lost += 1
                self._example(stats, bid)
            else:
                stats.errors += 1
                self._example(stats, bid)
            return
        policy = self.client.policy
        plan = plan_drain(nums, node.number, {n.number: n for n in snap.nodes},
                          placer.candidates(bid), policy.min_copies, tiers=policy.tiers,
                          sites=policy.sites)
        made: list[int] = []
        for target in plan.targets:
            if len(made) >= plan.need:
                break
            try:
                await write_verified(self.client.node_client(target), source)
            except (NodeError, OSError) as exc:
                log.warning("drain %s: copy of %s to %s failed: %s", self.node_id, bid,
                            target.id, exc)
                continue
            made.append(target.number)
            stats.bytes += source.stored_bytes
        if not made:
            stats.errors += 1
            self._example(stats, bid)
            return
        left = await self.index.update(bid, add=made, remove=[node.number])
        if not left:
            # gc collected the blob meanwhile: the new copies are garbage too.
            for number_ in made:
                target_node = snap.by_number(number_)
                if target_node is not None:
                    await self._delete(target_node, source.keys)
        if node.readable and here is not None and here.health is not Health.UNREACHABLE:
            await self._delete(node, source.keys)
        if len(others) + len(made) < policy.min_copies:
            await self.client.repair.add([bid])
        stats.moved += 1

    async def _delete(self, node: Node, keys: tuple[bytes, ...]) -> None:
        try:
            await delete_copy(self.client.node_client(node), keys)
        except (NodeError, OSError) as exc:
            # Not indexed there any more, so never read; inventory finds it.
            log.warning("drain %s: could not delete %s from %s: %s", self.node_id,
                        keys[-1].decode(), node.id, exc)

    # -- directord items ----------------------------------------------------------------

    async def _move_items(self, node: Node, snap: RegistrySnapshot, placer: Placer,
                          stats: DrainStats) -> None:
        """Move the plain-key items the index places on the node (named by its key list)."""
        if not node.readable:
            return
        source = self.client.node_client(node)
        try:
            dump = await source.metadump()
        except (NodeError, OSError) as exc:
            log.warning("drain %s: no key list (%s); items are tried next sweep",
                        self.node_id, exc)
            stats.errors += 1
            return
        entries = {e.key: e for e in dump if not is_blob_id(e.key) and not is_chunk_key(e.key)}
        if not entries:
            return
        ids = {key: item_index_id(key) for key in entries}
        where = await self.client.items.lookup(set(ids.values()))
        now = time.time()
        for key, entry in entries.items():
            nums = where.get(ids[key], ())
            if node.number not in nums:
                continue
            await self._move_item(source, key, entry.exp, ids[key], nums, node, snap, placer,
                                  stats, now)

    async def _move_item(self, source: NodeClient, key: bytes, exp: int, index_id: str,
                         nums: tuple[int, ...], node: Node, snap: RegistrySnapshot,
                         placer: Placer, stats: DrainStats, now: float) -> None:
        got = await source.get(key, cas=True)
        if got is None or 0 < exp <= now:  # gone or expired meanwhile
            if len(nums) > 1:
                await self.client.items.update(index_id, remove=[node.number])
            return
        plan = plan_drain(nums, node.number, {n.number: n for n in snap.nodes},
                          placer.candidates(index_id), self.client.policy.replicas,
                          sites=self.client.policy.sites)
        made: list[int] = []
        for target in plan.targets:
            if len(made) >= plan.need:
                break
            try:
                # The copy keeps the item's cas unique, as every copy of it does.
                copy = ItemState(got.value, got.flags, max(exp, 0), got.cas or 0)
                reply = await self.client.node_client(target).meta(copy.ms_line(key), got.value)
                if reply.code == b"HD":
                    made.append(target.number)
            except (NodeError, OSError) as exc:
                log.warning("drain %s: copy of item %r to %s failed: %s", self.node_id, key,
                            target.id, exc)
        if not made:
            stats.errors += 1
            return
        await self.client.items.update(index_id, add=made, remove=[node.number])
        with contextlib.suppress(NodeError, OSError):  # unindexed there now: never read
            await source.delete(key)
        stats.items_moved += 1
        stats.bytes += len(got.value) * len(made)

    @staticmethod
    def _example(stats: DrainStats, bid: str) -> None:
        if len(stats.examples) < EXAMPLES:
            stats.examples.append(bid)


async def drain_all(client: BlobClient, *, token: str | None = None,
                    clock: Callable[[], float] = time.monotonic,
                    progress: Callable[[int, int | None], None] | None = None,
                    ) -> list[DrainStats]:
    """One pass for every draining node whose lease is free (directord's drain tick).

    :param progress: told the blobs handled so far over all the nodes, and how many
        they held when their pass began (when every node reported it).
    """
    snap = await client.snapshot(force=True)
    out: list[DrainStats] = []

    def report(stats: PassStats) -> None:
        if progress is not None:
            done = [*out, stats]
            totals = [s.total for s in done]
            progress(sum(s.items for s in done),
                     None if None in totals else sum(t or 0 for t in totals))

    for node in snap.nodes:
        if node.admin_state is not NodeState.DRAINING:
            continue
        try:
            out.append(await Drainer(client, node.id, token=token, clock=clock).run_once(
                progress=report))
        except LeaseHeld as exc:
            log.debug("%s", exc)
    return out
