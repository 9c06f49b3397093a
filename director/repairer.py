"""Repair: bring every blob back to ``replicas`` verified copies.

Theory of operation.  A repair pass (job ``repair``, one director at a time under its
lease) does two things:

1. **Sweep** part of the index for entries that look short of copies from the registry
   alone (:func:`director.planner.copies_left`: a location on a removed or unknown node,
   or fewer than ``replicas`` locations on up nodes), and queue them with the priority
   of the copies they have left (:mod:`director.repairqueue`: blobs down to their last
   copy are repaired first).  The sweep checks ``repair_scan_buckets`` buckets per pass
   from a cursor saved in the job's state, so over successive passes it goes round the
   whole index; this is what finds the blobs of a node that was removed, declared dead,
   or has been down for longer than ``repair_down_grace``, which nobody reads and nobody
   queued.  When such a node is *lost* (:func:`director.planner.lost_nodes`) and no sweep
   has gone round since, the sweep goes round the whole index at once
   (:data:`FULL_SWEEP_FACTOR` times the buckets per pass, resumed next pass if that is
   not all), so a lost node's blobs are queued within a pass or two, not after
   ``buckets / repair_scan_buckets`` passes.
2. **Repair** blobs from the queue (:mod:`director.repairqueue`: claimed with a lease, so
   a director that dies mid-way loses nothing).  For each blob every location is probed
   (read and verified whole, :meth:`director.blobreader.BlobReader.probe`), the pure planner
   (:func:`director.planner.plan_repair`) says what to do, and it is done: missing or
   corrupt copies on active nodes are written again in place, new copies go to
   placement candidates that do not hold the blob, the index entry is updated (new
   locations added, those on removed nodes or draining nodes without a good copy
   dropped: :meth:`director.index.LocationIndex.update`, which never resurrects a blob
   gc collected meanwhile), and the entry leaves the queue.  A blob with no good copy
   reachable now, or not enough nodes to copy to, goes back with ``repair_retry_delay``;
   one whose every replica answered "not here" is lost (or an item stored through
   directord, which the queue cannot name) and is reported, not retried.  Only a copy
   that verified is ever written: when copies disagree the verified one wins, and a
   blob whose copies all fail to verify is reported corrupt and left as it is (a forged
   copy is never propagated over a missing one).  A copy sealed under a key this keyring
   lacks (:class:`~director.errors.KeyUnavailable`) stops the pass with every claimed
   blob handed back: a configuration problem is never taken for damage.

Down nodes are tracked in the job's state (``down:<node id>`` = first seen down, which
is as soon as its load report is late: :attr:`director.nodes.LoadReport.stale`): their
copies still count for ``repair_down_grace`` seconds, so a reboot does not set off a
re-replication of everything the node holds.  A node the operator declared gone
(``objmail node dead``) gets no grace: its copies are lost at once.

Copies are made at ``repair_rate`` bytes/s at most (a token bucket), so re-replication
leaves room for mail; a blob that lost a copy on a node declared dead is copied at full
speed (the operator said the redundancy is gone).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from director.background import BackgroundJob, PassControl, PassStats, RateLimiter
from director.blobreader import Probe, VerifiedBlob
from director.copier import delete_copy, write_verified
from director.errors import KeyUnavailable
from director.index import SCAN_BUCKETS
from director.jobstate import JobState, integer, number
from director.memcache_client import NodeError
from director.nodes import Node, NodeState
from director.placement import Placer
from director.planner import (
    Health,
    Replica,
    copies_left,
    down_waiting,
    lost_nodes,
    plan_repair,
)
from director.registry import RegistrySnapshot
from director.repairqueue import priority_of
from director.tiers import is_cold

if TYPE_CHECKING:
    from director.client import BlobClient

log = logging.getLogger(__name__)

#: Seconds a claimed queue entry stays invisible to other repairers.
CLAIM_LEASE = 300.0
#: Blob ids kept as examples in the stats.
EXAMPLES = 5
#: After a node is lost, a pass sweeps this many times ``repair_scan_buckets``.
FULL_SWEEP_FACTOR = 16
#: Blobs repaired at the same time.
PARALLELISM = 16


@dataclass
class RepairStats(PassStats):
    """What a repair pass did.

    :param whole: queued blobs that had every copy already.
    :param repaired: blobs brought back to ``replicas`` copies.
    :param copies_made: new copies written to other nodes.
    :param rewritten: missing or corrupt copies written again in place.
    :param forgotten: locations dropped from the index (removed nodes, bad copies on
        draining nodes).
    :param dropped: surplus copies deleted from a site crowded beyond
        ``replicas_per_site`` once the blob had its copy in the site that lacked it.
    :param unrepairable: blobs sent back to the queue with a delay (no good copy
        reachable, or too few nodes to copy to).
    :param corrupt: of the unrepairable, blobs with no copy that verifies and at least
        one that does not (corrupt or forged): reported, never copied.
    :param lost: blobs whose every replica answered that it does not hold them.
    :param gone: queued blobs the index no longer knows (collected).
    :param swept_buckets: index buckets the sweep checked.
    :param sweep_queued: entries the sweep found short of copies and queued;
        ``sweep_last_copy`` of them down to one copy (or none) and queued first.
    :param sweep_wrapped: the sweep reached the end of the index in this pass.
    :param full_sweep_left: buckets the whole-index sweep for lost nodes still has to
        check (0: none in progress).
    :param lost: ids of nodes whose copies no longer count (dead, removed, down past
        the grace).
    :param backlog: queue entries left (due or not) after the pass; ``urgent`` of them
        found short of copies.
    """

    job: str = "repair"
    claimed: int = 0
    whole: int = 0
    repaired: int = 0
    copies_made: int = 0
    rewritten: int = 0
    forgotten: int = 0
    dropped: int = 0
    unrepairable: int = 0
    corrupt: int = 0
    lost: int = 0
    gone: int = 0
    swept_buckets: int = 0
    sweep_queued: int = 0
    sweep_last_copy: int = 0
    sweep_wrapped: bool = False
    full_sweep_left: int = 0
    lost_nodes: list[str] = field(default_factory=list)
    backlog: int = 0
    urgent: int = 0
    examples: list[str] = field(default_factory=list)


class Repairer(BackgroundJob[RepairStats]):
    """The repair job of one director (see the module docstring).

    :param rate: overrides ``director.repair_rate`` (bytes/s copied; 0 = no limit).
    :param sleep: how the rate limit waits (tests pass one driven by their clock).
    """

    job = "repair"

    def __init__(self, client: BlobClient, *, rate: float | None = None,
                 sleep: Callable[[float], Any] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], float] = time.time, token: str | None = None) -> None:
        super().__init__(client, clock=clock, now=now, token=token)
        self.rate = self.dconf.repair_rate if rate is None else rate
        self._sleep = sleep
        self._limiter = RateLimiter(self.rate, None, clock=clock)

    async def run_pass(self, control: PassControl) -> RepairStats:
        stats = RepairStats()
        queue = self.client.repair
        stats.total = await queue.backlog()
        snap = await self.client.snapshot(force=True)
        state = control.state(self)
        waiting = await self._track_down(state, snap)
        stats.lost_nodes = sorted(lost_nodes(snap.nodes, waiting))
        placer = snap.placer(self.client.policy)
        if await self._sweep(control, state, snap, waiting, stats):
            await self._drain_queue(control, snap, placer, waiting, stats)
        stats.backlog = await queue.backlog()
        stats.urgent = await queue.backlog(urgent=True)
        return stats

    # -- down nodes ---------------------------------------------------------------------

    async def _track_down(self, state: JobState, snap: RegistrySnapshot) -> frozenset[int]:
        """Record when each node was first seen down; the numbers still within grace."""
        fields = await state.load()
        now = self.now()
        since: dict[str, float] = {}
        changes: dict[str, str | float] = {}
        forget = []
        for node in snap.nodes:
            key = f"down:{node.id}"
            if node.state is NodeState.DOWN:
                since[node.id] = number(fields, key, now)
                if key not in fields:
                    changes[key] = now
            elif key in fields:
                forget.append(key)
        if changes:
            await state.save(changes)
        if forget:
            await state.forget(*forget)
        return down_waiting(snap.nodes, since, now, self.dconf.repair_down_grace)

    # -- sweep --------------------------------------------------------------------------

    async def _sweep(self, control: PassControl, state: JobState, snap: RegistrySnapshot,
                     waiting: frozenset[int], stats: RepairStats) -> bool:
        """Check up to ``repair_scan_buckets`` buckets from the saved cursor (the whole
        index when a node was lost since the last sweep round: see the module
        docstring); False when the pass was told to stop."""
        fields = await state.load()
        total = self.index.layout.buckets
        cursor = int(number(fields, "cursor"))
        if not 0 <= cursor < total:
            cursor = 0
        # Nodes lost since the last whole-index round start a new one.
        lost = set(stats.lost_nodes)
        swept = {i for i in str(fields.get("lost_swept", "")).split(",") if i} & lost
        full_for = {i for i in str(fields.get("full_for", "")).split(",") if i}
        full_left = integer(fields, "full_left")
        if lost - swept - full_for:
            full_for |= lost - swept
            full_left = total
            log.warning("repair: node(s) %s lost; sweeping the whole index for their "
                        "blobs", ", ".join(sorted(lost - swept)))
            await state.save({"full_for": ",".join(sorted(full_for)), "full_left": full_left,
                              "lost_swept": ",".join(sorted(swept))})
        full = full_left > 0
        left = min(full_left, self.dconf.repair_scan_buckets * FULL_SWEEP_FACTOR) if full \
            else self.dconf.repair_scan_buckets
        nodes = {n.number: n for n in snap.nodes}
        policy = self.client.policy
        want = policy.min_copies
        owed = snap.placer(policy).sites
        while left > 0:
            page = await self.index.scan(cursor, buckets=min(SCAN_BUCKETS, left))
            if any(n not in nodes for _bid, nums in page.entries for n in nums):
                # A node added since the snapshot is not a removed one: look again.
                nodes = {n.number: n for n in (await self.client.snapshot(force=True)).nodes}
            by_priority: dict[int, list[str]] = defaultdict(list)
            for bid, nums in page.entries:
                copies = copies_left(nums, nodes, want, waiting=waiting,
                                     tiers=policy.tiers, sites=policy.sites, owed=owed)
                if copies is not None:
                    by_priority[priority_of(copies)].append(bid)
            for priority, short in sorted(by_priority.items()):
                queued = await self.client.repair.add(short, priority=priority)
                stats.sweep_queued += queued
                if priority <= 1:
                    stats.sweep_last_copy += queued
            done = page.buckets_done - cursor
            stats.swept_buckets += done
            left -= done
            progress: dict[str, str | float] = {}
            if full:
                full_left = max(0, full_left - done)
                progress["full_left"] = full_left
                if not full_left:
                    progress["lost_swept"] = ",".join(sorted(swept | (full_for & lost)))
            if page.next_cursor is None:  # round the whole index: start again from 0
                progress.update(cursor=0, swept_at=self.now())
                stats.sweep_wrapped = True
                cursor = 0
                if not full:
                    await state.save(progress)
                    break
            else:
                cursor = page.next_cursor
                progress["cursor"] = cursor
            await state.save(progress)
            if full and not full_left:
                await state.forget("full_for")
                log.info("repair: whole-index sweep for lost node(s) %s done",
                         ", ".join(sorted(full_for)))
                break
            if not await control.checkpoint(stats):
                stats.full_sweep_left = full_left
                return False
        stats.full_sweep_left = full_left
        return True

    # -- queue --------------------------------------------------------------------------

    async def _drain_queue(self, control: PassControl, snap: RegistrySnapshot, placer: Placer,
                           waiting: frozenset[int], stats: RepairStats) -> None:
        """Repair claimed blobs, :data:`PARALLELISM` at a time (a blob's repair is a few
        round trips; one at a time leaves the disks and the network idle), until the
        queue has nothing due or ``repair_max_blobs`` were claimed."""
        queue = self.client.repair
        budget = self.dconf.repair_max_blobs
        while stats.claimed < budget:
            ids = await queue.claim(min(self.dconf.repair_batch, budget - stats.claimed),
                                    lease=CLAIM_LEASE)
            if not ids:
                return
            stats.claimed += len(ids)
            todo = iter(ids)
            stop = asyncio.Event()
            results = await asyncio.gather(
                *(self._worker(todo, stop, control, snap, placer, waiting, stats)
                  for _ in range(min(PARALLELISM, len(ids)))), return_exceptions=True)
            if stop.is_set():
                # Hand the rest back at once: only the blobs in hand were at stake.
                rest = list(todo)
                if rest:
                    await queue.retry_later(rest, 0.0)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            if stop.is_set():
                return

    async def _worker(self, todo: Iterator[str], stop: asyncio.Event, control: PassControl,
                      snap: RegistrySnapshot, placer: Placer, waiting: frozenset[int],
                      stats: RepairStats) -> None:
        """Repair blobs from ``todo`` (shared with the other workers) until it runs out
        or the pass is told to stop (then ``stop`` is set)."""
        for bid in todo:
            try:
                await self.repair_blob(bid, snap, placer, waiting, stats)
            except NodeError as exc:  # a target failing in an unexpected way
                log.warning("repair of %s failed: %s", bid, exc)
                stats.errors += 1
                await self.client.repair.retry_later([bid], self.dconf.repair_retry_delay)
            except KeyUnavailable:
                # The keyring lacks a key: nothing here is known bad.  Hand the blob back
                # untouched, stop every worker (the rest go back too) and fail the pass:
                # a configuration error.
                stop.set()
                await self.client.repair.retry_later([bid], 0.0)
                raise
            stats.items += 1
            if stop.is_set() or not await control.checkpoint(stats):
                stop.set()
                return

    async def repair_blob(self, bid: str, snap: RegistrySnapshot, placer: Placer,
                          waiting: frozenset[int], stats: RepairStats) -> None:
        """Probe, plan and repair one blob, then settle its queue entry."""
        queue = self.client.repair
        locations = await self.index.locations(bid)
        if not locations:
            stats.gone += 1
            await queue.done([bid])
            return
        if any(snap.by_number(n) is None for n in locations):
            # A node added since the pass began must not be taken for a removed one.
            snap = await self.client.snapshot(force=True)
        probes: dict[int, Probe] = {}

        async def look(num: int) -> Replica:
            node = snap.by_number(num)
            if node is None or node.state is NodeState.REMOVED:
                return Replica(num, node, Health.GONE)
            if node.state in (NodeState.DOWN, NodeState.DEAD):
                return Replica(num, node, Health.DOWN)
            probes[num] = await self.client.reader.probe(bid, self.client.node_client(node))
            return Replica(num, node, probes[num].health)

        replicas = list(await asyncio.gather(*(look(n) for n in locations)))
        # A copy lost on a node the operator declared dead is replaced at full speed.
        urgent = any(r.node is not None and r.node.state is NodeState.DEAD for r in replicas)
        policy = self.client.policy
        layout = await self._layout(bid) if policy.tiers is not None else None
        plan = plan_repair(replicas, placer.candidates(bid), policy.replicas,
                           waiting=waiting, tiers=policy.tiers, layout=layout,
                           sites=policy.sites, owed=placer.sites)
        # A copy counted on trust, or one a site that is down is owed: look again later.
        unsure = any(r.number in waiting and r.health is Health.DOWN for r in replicas) \
            or plan.unplaced
        if plan.whole:
            stats.whole += 1
            if unsure:  # a down node's copy counted on trust: look again later
                await queue.retry_later([bid], self.dconf.repair_retry_delay)
            else:
                await queue.done([bid])
            return
        source = next((probes[n].blob for n in plan.sources if probes[n].blob), None)
        if source is None:
            source = await self._last_resort(bid, replicas, probes)
        if source is None and (plan.need or plan.rewrite):
            if probes and all(p.health is Health.MISSING for p in probes.values()) \
                    and not unsure:
                stats.lost += 1
                log.error("blob %s: every replica (%s) answered that it does not hold it: "
                          "lost, or an item stored through directord", bid,
                          ", ".join(str(n) for n in locations))
                await queue.done([bid])
            else:
                bad = {n: p.detail for n, p in probes.items() if p.health is Health.CORRUPT}
                if bad:
                    stats.corrupt += 1
                    log.error("blob %s: no copy verifies; not copying any (corrupt: %s)",
                              bid, "; ".join(f"node {n}: {d}" for n, d in bad.items()))
                stats.unrepairable += 1
                await queue.retry_later([bid], self.dconf.repair_retry_delay)
            if len(stats.examples) < EXAMPLES:
                stats.examples.append(bid)
            return
        fixed = made = 0
        added: list[int] = []
        if source is not None and not urgent:
            wait = self._limiter.take("repair", source.stored_bytes
                                      * (plan.need + len(plan.rewrite)))
            if wait > 0:
                await self._sleep(wait)
        if source is not None:
            fixed = await self._write_each(plan.rewrite, source, stats)
            made_nodes = await self._write_first(plan.targets, plan.need, source, stats)
            added = [n.number for n in made_nodes]
            made = len(added)
        if added or plan.forget:
            await self.index.update(bid, add=added, remove=plan.forget)
            stats.forgotten += len(plan.forget)
        drop = plan.surplus[:plan.drops(made, fixed)]
        if drop and source is not None:
            await self._drop(bid, drop, source, stats)
        stats.rewritten += fixed
        stats.copies_made += made
        if made >= plan.need and fixed == len(plan.rewrite):
            stats.repaired += 1
            if unsure:
                await queue.retry_later([bid], self.dconf.repair_retry_delay)
            else:
                await queue.done([bid])
        else:
            stats.unrepairable += 1
            if len(stats.examples) < EXAMPLES:
                stats.examples.append(bid)
            await queue.retry_later([bid], self.dconf.repair_retry_delay)

    async def _layout(self, bid: str) -> dict[str, int]:
        """The tier layout ``bid`` should have: cold once its read temperature says it
        was not accessed for ``tier_cold_after`` (as the tier job decides), else hot."""
        tiers = self.client.policy.tiers
        assert tiers is not None
        if self.dconf.temperature_sample <= 0:  # no temperature: nothing is known cold
            return tiers.hot
        heat = (await self.client.heat.lookup([bid]))[bid]
        return tiers.layout(cold=is_cold(heat.accessed_before, heat.reads, self.now(),
                                         cold_after=self.dconf.tier_cold_after,
                                         hot_reads=self.dconf.tier_hot_reads))

    async def _last_resort(self, bid: str, replicas: list[Replica],
                           probes: dict[int, Probe]) -> VerifiedBlob | None:
        """A removed node that still serves may hold the only good copy: read it."""
        for r in replicas:
            if r.health is Health.GONE and r.node is not None:
                found = await self.client.reader.probe(bid, self.client.node_client(r.node))
                if found.blob is not None:
                    probes[r.number] = found
                    return found.blob
        return None

    async def _drop(self, bid: str, nodes: Sequence[Node], source: VerifiedBlob,
                    stats: RepairStats) -> None:
        """Drop copies a crowded site holds beyond the site rule (the blob has its copies
        elsewhere now): out of the index first, so reads stop going there, then off the
        object servers."""
        await self.index.update(bid, remove=[n.number for n in nodes])
        for node in nodes:
            try:
                await delete_copy(self.client.node_client(node), source.keys)
            except (NodeError, OSError) as exc:  # unindexed: inventory finds it later
                log.warning("repair: could not delete surplus copy of %s from %s: %s",
                            bid, node.id, exc)
        stats.dropped += len(nodes)

    async def _write_each(self, nodes: tuple[Node, ...], source: VerifiedBlob,
                          stats: RepairStats) -> int:
        ok = 0
        for node in nodes:
            if await self._write(node, source, stats):
                ok += 1
        return ok

    async def _write_first(self, targets: tuple[Node, ...], need: int, source: VerifiedBlob,
                           stats: RepairStats) -> list[Node]:
        made: list[Node] = []
        for node in targets:
            if len(made) >= need:
                break
            if await self._write(node, source, stats):
                made.append(node)
        return made

    async def _write(self, node: Node, source: VerifiedBlob, stats: RepairStats) -> bool:
        try:
            await write_verified(self.client.node_client(node), source)
        except (NodeError, OSError) as exc:
            log.warning("repair: copy of %s to %s failed: %s", source.blob_id, node.id, exc)
            return False
        stats.bytes += source.stored_bytes
        return True
