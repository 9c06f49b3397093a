"""Repair: bring every blob back to ``replicas`` verified copies.

Theory of operation.  A repair pass (job ``repair``, one director at a time under its
lease) does two things:

1. **Sweep** part of the index for entries that look short of copies from the registry
   alone (:func:`director.planner.needs_repair`: a location on a removed or unknown node,
   or fewer than ``replicas`` locations on up nodes), and queue them.  The sweep checks
   ``repair_scan_buckets`` buckets per pass from a cursor saved in the job's state, so
   over successive passes it goes round the whole index; this is what finds the blobs of
   a node that was removed, or has been down for longer than ``repair_down_grace``,
   which nobody reads and nobody queued.
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

Down nodes are tracked in the job's state (``down:<node id>`` = first seen down): their
copies still count for ``repair_down_grace`` seconds, so a reboot does not set off a
re-replication of everything the node holds.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from director.background import BackgroundJob, PassControl, PassStats
from director.blobreader import Probe, VerifiedBlob
from director.copier import write_verified
from director.errors import KeyUnavailable
from director.index import SCAN_BUCKETS
from director.jobstate import JobState, number
from director.memcache_client import NodeError
from director.nodes import Node, NodeState
from director.placement import Placer
from director.planner import Health, Replica, down_waiting, needs_repair, plan_repair
from director.registry import RegistrySnapshot

log = logging.getLogger(__name__)

#: Seconds a claimed queue entry stays invisible to other repairers.
CLAIM_LEASE = 300.0
#: Blob ids kept as examples in the stats.
EXAMPLES = 5


@dataclass
class RepairStats(PassStats):
    """What a repair pass did.

    :param whole: queued blobs that had every copy already.
    :param repaired: blobs brought back to ``replicas`` copies.
    :param copies_made: new copies written to other nodes.
    :param rewritten: missing or corrupt copies written again in place.
    :param forgotten: locations dropped from the index (removed nodes, bad copies on
        draining nodes).
    :param unrepairable: blobs sent back to the queue with a delay (no good copy
        reachable, or too few nodes to copy to).
    :param corrupt: of the unrepairable, blobs with no copy that verifies and at least
        one that does not (corrupt or forged): reported, never copied.
    :param lost: blobs whose every replica answered that it does not hold them.
    :param gone: queued blobs the index no longer knows (collected).
    :param swept_buckets: index buckets the sweep checked.
    :param sweep_queued: entries the sweep found short of copies and queued.
    :param sweep_wrapped: the sweep reached the end of the index in this pass.
    :param backlog: queue entries left (due or not) after the pass.
    """

    job: str = "repair"
    claimed: int = 0
    whole: int = 0
    repaired: int = 0
    copies_made: int = 0
    rewritten: int = 0
    forgotten: int = 0
    unrepairable: int = 0
    corrupt: int = 0
    lost: int = 0
    gone: int = 0
    swept_buckets: int = 0
    sweep_queued: int = 0
    sweep_wrapped: bool = False
    backlog: int = 0
    examples: list[str] = field(default_factory=list)


class Repairer(BackgroundJob[RepairStats]):
    """The repair job of one director (see the module docstring)."""

    job = "repair"

    async def run_pass(self, control: PassControl) -> RepairStats:
        stats = RepairStats()
        queue = self.client.repair
        stats.total = await queue.backlog()
        snap = await self.client.snapshot(force=True)
        state = control.state(self)
        waiting = await self._track_down(state, snap)
        placer = snap.placer(self.client.policy)
        if await self._sweep(control, state, snap, waiting, stats):
            await self._drain_queue(control, snap, placer, waiting, stats)
        stats.backlog = await queue.backlog()
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
        """Check up to ``repair_scan_buckets`` buckets from the saved cursor; False when
        the pass was told to stop."""
        fields = await state.load()
        cursor = int(number(fields, "cursor"))
        if not 0 <= cursor < self.index.layout.buckets:
            cursor = 0
        left = self.dconf.repair_scan_buckets
        nodes = {n.number: n for n in snap.nodes}
        want = self.client.policy.replicas
        while left > 0:
            page = await self.index.scan(cursor, buckets=min(SCAN_BUCKETS, left))
            if any(n not in nodes for _bid, nums in page.entries for n in nums):
                # A node added since the snapshot is not a removed one: look again.
                nodes = {n.number: n for n in (await self.client.snapshot(force=True)).nodes}
            short = [bid for bid, nums in page.entries
                     if needs_repair(nums, nodes, want, waiting=waiting)]
            if short:
                stats.sweep_queued += await self.client.repair.add(short)
            stats.swept_buckets += page.buckets_done - cursor
            left -= page.buckets_done - cursor
            if page.next_cursor is None:  # round the whole index: start again next time
                await state.save({"cursor": 0, "swept_at": self.now()})
                stats.sweep_wrapped = True
                break
            cursor = page.next_cursor
            await state.save({"cursor": cursor})
            if not await control.checkpoint(stats):
                return False
        return True

    # -- queue --------------------------------------------------------------------------

    async def _drain_queue(self, control: PassControl, snap: RegistrySnapshot, placer: Placer,
                           waiting: frozenset[int], stats: RepairStats) -> None:
        queue = self.client.repair
        budget = self.dconf.repair_max_blobs
        while stats.claimed < budget:
            ids = await queue.claim(min(self.dconf.repair_batch, budget - stats.claimed),
                                    lease=CLAIM_LEASE)
            if not ids:
                return
            stats.claimed += len(ids)
            for i, bid in enumerate(ids):
                try:
                    await self.repair_blob(bid, snap, placer, waiting, stats)
                except NodeError as exc:  # a target failing in an unexpected way
                    log.warning("repair of %s failed: %s", bid, exc)
                    stats.errors += 1
                    await queue.retry_later([bid], self.dconf.repair_retry_delay)
                except KeyUnavailable:
                    # The keyring lacks a key: nothing here is known bad.  Hand every
                    # claimed blob back untouched and stop (a configuration error).
                    await queue.retry_later(ids[i:], 0.0)
                    raise
                stats.items += 1
                if not await control.checkpoint(stats):
                    # Hand the rest back at once: only the blob in hand was at stake.
                    rest = ids[i + 1:]
                    if rest:
                        await queue.retry_later(rest, 0.0)
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
            if node.state is NodeState.DOWN:
                return Replica(num, node, Health.DOWN)
            probes[num] = await self.client.reader.probe(bid, self.client.node_client(node))
            return Replica(num, node, probes[num].health)

        replicas = list(await asyncio.gather(*(look(n) for n in locations)))
        plan = plan_repair(replicas, placer.candidates(bid), self.client.policy.replicas,
                           waiting=waiting)
        unsure = any(r.number in waiting and r.health is Health.DOWN for r in replicas)
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
        if source is not None:
            fixed = await self._write_each(plan.rewrite, source, stats)
            made_nodes = await self._write_first(plan.targets, plan.need, source, stats)
            added = [n.number for n in made_nodes]
            made = len(added)
        if added or plan.forget:
            await self.index.update(bid, add=added, remove=plan.forget)
            stats.forgotten += len(plan.forget)
        stats.rewritten += fixed
        stats.copies_made += made
        if plan.counted + fixed + made >= self.client.policy.replicas \
                and fixed == len(plan.rewrite):
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
