"""Level: move blobs until every node holds its capacity's share of the bytes, hot blobs
first, at a bounded rate.

Theory of operation.  A leveling pass (job ``level``, one director at a time) reads the
registry snapshot, takes the active nodes of the write tier that report a capacity (with
a storage hierarchy, :mod:`director.tiers`: each tier's nodes as a pool of its own, planned
the same way one after the other, so no move crosses tiers), and
compares each one's bytes with its *target*, its capacity's share of all the bytes (the
mean per node when capacities are equal; see :mod:`director.planner`).  When every node
is within ``level_tolerance`` of its target (relative: 0.10 = 10%) and no node is busy,
the pass ends at once.  Otherwise:

1. **Load.**  Each node's CPU and storage I/O from its report; one above the others'
   mean in consecutive passes (:func:`director.planner.busy_nodes`, streaks kept in the
   job's state) is *busy*.
2. **Candidates.**  For every node above its target, and every busy node: the hottest
   blobs by the frontends' read temperature (:mod:`director.temperature`: decayed
   counts of sampled reads, frontend cache hits included) that the index says it holds;
   and, when those do not add up to its excess, up to ``level_scan_entries`` more of its
   blobs from one index sweep serving every such node, resumed from a
   cursor in the job's state so successive passes offer different blobs.  Each
   candidate's size on the node is asked with a meta get (``mg <id> s f``; a chunked
   blob's size comes from its manifest).
3. **Plan.**  :func:`director.planner.plan_moves` (pure, seeded by the pass number): a
   busy node's hot blobs to the least loaded nodes, then bytes from the nodes furthest
   above their targets to those furthest below, hottest blobs first, within
   ``level_bytes_per_pass`` bytes, never lowering a blob's zone or site spread nor
   crowding a site beyond ``replicas_per_site`` (:mod:`director.sites`).
4. **Moves**, :data:`PARALLELISM` at a time, each paced by a token bucket
   (``level_rate`` bytes/s in total, ``level_source_rate`` from any one source): a
   verified copy (:mod:`director.copier`) to the target, one atomic index update (add the
   target, remove the source), then the source's copy is deleted.  A source whose copy
   turns out bad is skipped and the blob queued for repair.

The plan works on the load reports, which lag by up to ``objstore.report_interval``;
the next pass plans on fresh ones.  ``objmail level`` runs passes, waiting for new
reports in between, until the nodes are level; the background job runs one pass every
``level_interval``, so a pass cut short by its byte budget is continued by the next.
Each pass reports the bytes still to move (above the targets when it began), what it
moved, its rate and an estimate of the time left.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from director.background import BackgroundJob, PassControl, PassStats, RateLimiter
from director.copier import delete_copy, write_verified
from director.index import SCAN_BUCKETS
from director.jobstate import JobState, integer
from director.lease import Lease
from director.memcache_client import NodeError
from director.nodes import Node, NodeState
from director.placement import relative_loads
from director.planner import (
    BlobCandidate,
    Move,
    NodeLoad,
    NodeUsage,
    busy_nodes,
    plan_moves,
    usage,
)
from director.registry import RegistrySnapshot

if TYPE_CHECKING:
    from director.client import BlobClient

log = logging.getLogger(__name__)

#: Hottest blobs considered per source node.
HOT_KEYS = 100
#: Size queries in flight at once, per pass.
SIZE_PARALLELISM = 16
#: Index buckets read per round trip by the cold-blob sweep (empty buckets cost little;
#: round trips are what a sweep of a small index spends its time on).
COLD_SCAN_BUCKETS = 4 * SCAN_BUCKETS
#: Moves in flight at once (the rate limit paces them).
PARALLELISM = 4
#: Moves kept in a pass's stats (for ``--json``; the counters cover all of them).
KEPT_MOVES = 1000
#: Moves per debug log line (a pass can make thousands: one line each would flood the
#: log, one line for all of them made a 474 KB line).
MOVES_PER_LOG_LINE = 50


@dataclass(frozen=True)
class LevelPlan:
    """The inputs a pass planned on, and the plan.

    :param mean: the cluster-wide fraction of capacity used.
    :param spread: the largest deviation of a node's bytes from its target (relative).
    :param projected: each node's fraction of capacity used after the moves.
    :param deviations: each node's deviation from its target now; ``planned`` after the
        moves.
    :param to_move: bytes above the targets now: what leveling has left to move.
    :param busy: nodes whose CPU or I/O stays above the mean.
    """

    nodes: tuple[NodeUsage, ...]
    moves: tuple[Move, ...]
    mean: float
    spread: float
    projected: dict[str, float]
    tolerance: float
    deviations: dict[str, float] = field(default_factory=dict)
    planned: dict[str, float] = field(default_factory=dict)
    to_move: int = 0
    busy: tuple[str, ...] = ()

    @property
    def balanced(self) -> bool:
        return self.spread <= self.tolerance and not self.busy


@dataclass
class LevelStats(PassStats):
    """What a leveling pass did.

    :param mean: the cluster-wide fraction of capacity used.
    :param spread_before: the largest deviation from a target when the pass began
        (relative to the target: 0.14 = 14%).
    :param spread_planned: the largest deviation once the planned moves are done.
    :param balanced: every node was within tolerance already (and none busy).
    :param planned: moves planned; ``moved`` of them done (``hot_moved`` of hot blobs,
        ``busy_moved`` to take load off busy nodes).
    :param skipped: moves not done (bad source copy, target refused, blob collected).
    :param to_move: bytes above the targets when the pass began.
    :param planned_bytes: bytes of the planned moves; ``bytes`` of them moved.
    :param rate: bytes per second moved so far; ``eta`` seconds to move ``to_move`` at it.
    :param deviations: node id -> its deviation once the planned moves are done.
    :param moves: each move: blob, source, target, size, heat, done (the first
        :data:`KEPT_MOVES`; left out of the repr, which the background loop logs:
        :func:`log_pass` logs them in batches).
    """

    job: str = "level"
    mean: float = 0.0
    spread_before: float = 0.0
    spread_planned: float = 0.0
    tolerance: float = 0.0
    balanced: bool = False
    planned: int = 0
    moved: int = 0
    hot_moved: int = 0
    busy_moved: int = 0
    skipped: int = 0
    to_move: int = 0
    planned_bytes: int = 0
    rate: float = 0.0
    eta: float | None = None
    busy: list[str] = field(default_factory=list)
    deviations: dict[str, float] = field(default_factory=dict)
    moves: list[dict[str, Any]] = field(default_factory=list, repr=False)


def log_pass(stats: LevelStats) -> None:
    """One summary line at info level; the moves at debug level, in lines of at most
    :data:`MOVES_PER_LOG_LINE` moves."""
    if not stats.planned:
        return
    log.info("level: %d of %d planned move(s) done (%d hot, %d off busy nodes), %d skipped, "
             "%d bytes copied at %.0f bytes/s; deviation %.4f, %.4f once done; %d bytes "
             "were above the targets", stats.moved, stats.planned, stats.hot_moved,
             stats.busy_moved, stats.skipped, stats.bytes, stats.rate, stats.spread_before,
             stats.spread_planned, stats.to_move)
    if not log.isEnabledFor(logging.DEBUG):
        return
    for at in range(0, len(stats.moves), MOVES_PER_LOG_LINE):
        batch = stats.moves[at:at + MOVES_PER_LOG_LINE]
        log.debug("level: moves %d-%d of %d: %s", at + 1, at + len(batch), len(stats.moves),
                  "; ".join(f"{m['blob']} {m['source']}->{m['target']} {m['size']}B"
                            + ("" if m["done"] else " skipped") for m in batch))


class Leveler(BackgroundJob[LevelStats]):
    """The leveling job of one director (see the module docstring).

    :param tolerance: overrides ``director.level_tolerance``.
    :param rate: overrides ``director.level_rate`` (bytes/s, all sources; 0 = no limit).
    :param source_rate: overrides ``director.level_source_rate`` (bytes/s per source).
    :param sleep: how the rate limit waits (tests pass one driven by their clock).
    """

    job = "level"

    def __init__(self, client: BlobClient, *, tolerance: float | None = None,
                 rate: float | None = None, source_rate: float | None = None,
                 sleep: Callable[[float], Any] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], float] = time.time, token: str | None = None) -> None:
        super().__init__(client, clock=clock, now=now, token=token)
        self.tolerance = self.dconf.level_tolerance if tolerance is None else tolerance
        if not 0 < self.tolerance < 1:
            raise ValueError(f"tolerance must be between 0 and 1, got {self.tolerance}")
        self.rate = self.dconf.level_rate if rate is None else rate
        self.source_rate = self.dconf.level_source_rate if source_rate is None \
            else source_rate
        self._sleep = sleep

    async def plan(self, state: JobState | None = None) -> LevelPlan:
        """Gather the facts and plan one pass (no data moves: ``objmail level
        --dry-run`` prints this; it leaves the job's state alone)."""
        saving = state is not None and state.lease is not None
        state = state or JobState(self.runner, self.keys, self.job)
        snap = await self.client.snapshot(force=True)
        nodes = self._levelled(snap)
        fields = await state.load()
        tiers = self.client.policy.tiers
        # Where every registered node is (site, zone): copies on nodes not levelled here
        # count for the site and zone rules.
        places = {n.number: (n.site, n.zone) for n in snap.nodes if n.number}
        if tiers is None:
            return await self._plan_pool(nodes, state, fields, saving, places)
        # A storage hierarchy: each tier is levelled on its own; no move crosses tiers.
        return merge_plans([await self._plan_pool(pool, state, fields, saving, places)
                            for pool in tiers.pools(nodes)], self.tolerance)

    async def _plan_pool(self, nodes: Sequence[Node], state: JobState,
                         fields: dict[str, str], saving: bool,
                         places: Mapping[int, tuple[str, str]]) -> LevelPlan:
        """Plan the moves among ``nodes`` (all of them, or one tier's)."""
        usages = tuple(NodeUsage(n.id, n.number, n.zone,
                                 n.report.used_bytes if n.report else 0,
                                 n.report.capacity_bytes if n.report else 0, n.site)
                       for n in nodes)
        stat = usage(usages)
        used = {u.node_id: u.used for u in usages}
        loads = [NodeLoad(n.id, n.report.cpu_process, n.report.io_bps)
                 for n in nodes if n.report is not None]
        streaks = {n.id: integer(fields, f"busy:{n.id}") for n in nodes}
        busy, streaks_now = busy_nodes(loads, streaks)
        if saving:
            await state.save({f"busy:{n.id}": streaks_now.get(n.id, 0) for n in nodes})
        tolerance = self.tolerance

        def planned(moves: Sequence[Move]) -> LevelPlan:
            projected = dict(used)
            for m in moves:
                projected[m.source] -= m.size
                projected[m.target] += m.size
            after = usage([NodeUsage(u.node_id, u.number, u.zone, projected[u.node_id],
                                     u.capacity, u.site) for u in usages])
            return LevelPlan(usages, tuple(moves), stat.mean, stat.spread, after.fractions,
                             tolerance, stat.deviations, after.deviations,
                             stat.to_move(used), tuple(sorted(busy)))

        if stat.spread <= tolerance and not busy:
            return planned(())
        sources = [n for n in nodes if stat.deviations.get(n.id, 0.0) > 0 or n.id in busy]
        hot = await self._hot(sources)
        excess = {u.node_id: u.used - stat.targets.get(u.node_id, 0.0) for u in usages}
        cold: dict[str, list[BlobCandidate]] = {}
        if stat.spread > tolerance:
            short = [n for n in sources if excess[n.id] > 0
                     and sum(b.size for b in hot.get(n.id, ())) < excess[n.id]]
            if short:
                # One cursor per pool (a storage hierarchy levels each tier apart).
                key = "cursor" if self.client.policy.tiers is None \
                    else f"cursor:{short[0].tier}"
                cold, cursor = await self._cold(short, integer(fields, key), hot,
                                                lease=state.lease)
                if saving:  # a dry run leaves the cursor alone
                    await state.save({key: cursor})
        return planned(plan_moves(usages, hot, tolerance, self.dconf.level_bytes_per_pass,
                                  cold=cold, busy=busy, loads=load_ratios(loads),
                                  seed=integer(fields, "passes"),
                                  sites=self.client.policy.sites,
                                  places=places))

    async def run_pass(self, control: PassControl) -> LevelStats:
        stats = LevelStats()
        state = control.state(self)
        plan = await self.plan(state)
        stats.mean = round(plan.mean, 6)
        stats.spread_before = round(plan.spread, 6)
        stats.tolerance = plan.tolerance
        stats.balanced = plan.balanced
        stats.planned = stats.total = len(plan.moves)
        stats.to_move = plan.to_move
        stats.planned_bytes = sum(m.size for m in plan.moves)
        stats.busy = list(plan.busy)
        stats.deviations = {k: round(v, 4) for k, v in plan.planned.items()}
        spreads = [abs(d) for d in plan.planned.values()]
        stats.spread_planned = round(max(spreads), 6) if spreads else 0.0
        snap = await self.client.snapshot()
        limiter = RateLimiter(self.rate, self.source_rate, clock=self.clock)
        started = self.clock()
        moves = list(plan.moves)
        for first in range(0, len(moves), PARALLELISM):
            batch = moves[first:first + PARALLELISM]
            done = await asyncio.gather(*(self.move(m, snap, stats, limiter) for m in batch))
            for move, ok in zip(batch, done, strict=True):
                if len(stats.moves) < KEPT_MOVES:
                    stats.moves.append({"blob": move.blob_id, "source": move.source,
                                        "target": move.target, "size": move.size,
                                        "heat": move.heat, "busy": move.busy, "done": ok})
            stats.items += len(batch)
            elapsed = self.clock() - started
            stats.rate = round(stats.bytes / elapsed, 1) if elapsed > 0 else 0.0
            stats.eta = eta(stats.to_move - stats.bytes, stats.rate)
            if not await control.checkpoint(stats):
                break
        stats.eta = eta(stats.to_move - stats.bytes, stats.rate) if stats.bytes else None
        fields = await state.load()
        await state.save({"passes": integer(fields, "passes") + 1, "last_pass_at": self.now(),
                          "last_moved": stats.moved, "last_bytes": stats.bytes,
                          "spread": stats.spread_before, "to_move": stats.to_move})
        log_pass(stats)
        return stats

    async def move(self, move: Move, snap: RegistrySnapshot, stats: LevelStats,
                   limiter: RateLimiter | None = None) -> bool:
        """Carry out one planned move (after waiting for the rate limit); False when it
        was skipped."""
        src, dst = snap.get(move.source), snap.get(move.target)
        if src is None or dst is None or not src.readable or dst.state is not NodeState.ACTIVE:
            stats.skipped += 1
            return False
        if limiter is not None:
            wait = limiter.take(move.source, move.size)
            if wait > 0:
                await self._sleep(wait)
        found = await self.client.reader.probe(move.blob_id, self.client.node_client(src))
        if found.blob is None:
            log.warning("level: %s on %s is %s (%s); queued for repair", move.blob_id,
                        src.id, found.health.value, found.detail)
            await self.client.repair.add([move.blob_id])
            stats.skipped += 1
            return False
        blob = found.blob
        try:
            await write_verified(self.client.node_client(dst), blob)
        except (NodeError, OSError) as exc:
            log.warning("level: copy of %s to %s failed: %s", move.blob_id, dst.id, exc)
            stats.skipped += 1
            stats.errors += 1
            return False
        stats.bytes += blob.stored_bytes
        left = await self.index.update(move.blob_id, add=[dst.number], remove=[src.number])
        if not left:  # collected meanwhile: the copy is garbage too
            await self._delete(dst, blob.keys)
            stats.skipped += 1
            return False
        await self._delete(src, blob.keys)
        stats.moved += 1
        if move.heat > 0:
            stats.hot_moved += 1
        if move.busy:
            stats.busy_moved += 1
        return True

    # -- gathering ----------------------------------------------------------------------

    def _levelled(self, snap: RegistrySnapshot) -> list[Node]:
        policy = self.client.policy
        return [n for n in snap.nodes if policy.may_hold(n) and n.report is not None
                and n.report.capacity_bytes > 0]

    async def _hot(self, sources: Sequence[Node]) -> dict[str, list[BlobCandidate]]:
        """Each source's hottest blobs, with sizes: the blobs the frontends read most
        (the decayed counters of :mod:`director.temperature`, cache hits included) that
        the index says the source holds."""
        if not sources:
            return {}
        hottest = await self.client.heat.hottest(HOT_KEYS * len(sources))
        heat = dict(hottest)
        holders = await self.index.lookup(list(heat)) if heat else {}
        out: dict[str, list[BlobCandidate]] = {}
        for node in sources:
            mine = [(bid, holders[bid], h) for bid, h in hottest
                    if node.number in holders.get(bid, ())][:HOT_KEYS]
            out[node.id] = await self._sized(node, mine)
        return out

    async def _cold(self, nodes: Sequence[Node], cursor: int,
                    hot: Mapping[str, Sequence[BlobCandidate]], *,
                    lease: Lease | None = None
                    ) -> tuple[dict[str, list[BlobCandidate]], int]:
        """Up to ``level_scan_entries`` blobs of each of ``nodes`` from the index (hot
        ones left out), from ``cursor``; returns them and the cursor to resume from.

        One sweep serves every node: a node holding fewer blobs than that makes the
        sweep go round the whole index, and one round per node (Redis reads competing
        with the frontends' lookups) was most of a pass's time on a small index.  The
        job's ``lease`` is kept alive page by page: on a loaded machine a sweep of the
        whole index has outlasted the lease's TTL, and the pass then lost its lease
        before its first move.
        """
        total = self.index.layout.buckets
        if not 0 <= cursor < total:
            cursor = 0
        limit = self.dconf.level_scan_entries
        by_number = {n.number: n for n in nodes}
        skip = {n.id: {b.blob_id for b in hot.get(n.id, ())} for n in nodes}
        found: dict[str, list[tuple[str, tuple[int, ...], float]]] = {n.id: [] for n in nodes}
        scanned = 0
        while scanned < total and any(len(f) < limit for f in found.values()):
            step = min(COLD_SCAN_BUCKETS, total - scanned)
            page = await self.index.scan(cursor, buckets=step)
            for bid, nums in page.entries:
                for number in nums:
                    node = by_number.get(number)
                    if node is not None and len(found[node.id]) < limit \
                            and bid not in skip[node.id]:
                        found[node.id].append((bid, nums, 0.0))
            scanned += page.buckets_done - cursor
            cursor = page.next_cursor or 0
            if lease is not None:
                await lease.keep()
        sized = await asyncio.gather(*(self._sized(n, found[n.id]) for n in nodes))
        if lease is not None:
            await lease.keep()
        return {n.id: s for n, s in zip(nodes, sized, strict=True)}, cursor

    async def _sized(self, node: Node, blobs: Sequence[tuple[str, tuple[int, ...], float]]
                     ) -> list[BlobCandidate]:
        client = self.client.node_client(node)
        sem = asyncio.Semaphore(SIZE_PARALLELISM)

        async def one(bid: str, holders: tuple[int, ...], heat: float) -> BlobCandidate | None:
            async with sem:
                try:
                    size = await self.client.reader.stored_size(bid, client)
                except (NodeError, OSError):
                    return None
            if size is None:
                return None
            return BlobCandidate(bid, size, holders, heat)

        sized = await asyncio.gather(*(one(*b) for b in blobs))
        return [b for b in sized if b is not None]

    async def _delete(self, node: Node, keys: tuple[bytes, ...]) -> None:
        try:
            await delete_copy(self.client.node_client(node), keys)
        except (NodeError, OSError) as exc:
            log.warning("level: could not delete %s from %s: %s", keys[-1].decode(), node.id,
                        exc)


def merge_plans(plans: Sequence[LevelPlan], tolerance: float) -> LevelPlan:
    """One plan of several pools' (the tiers of a hierarchy): their moves one after the
    other, the largest spread, the cluster-wide fill."""
    if len(plans) == 1:
        return plans[0]
    nodes = tuple(u for p in plans for u in p.nodes)
    capacity = sum(u.capacity for u in nodes)
    merged: dict[str, dict[str, float]] = {"projected": {}, "deviations": {}, "planned": {}}
    for p in plans:
        merged["projected"].update(p.projected)
        merged["deviations"].update(p.deviations)
        merged["planned"].update(p.planned)
    return LevelPlan(nodes, tuple(m for p in plans for m in p.moves),
                     sum(u.used for u in nodes) / capacity if capacity else 0.0,
                     max((p.spread for p in plans), default=0.0), merged["projected"],
                     tolerance, merged["deviations"], merged["planned"],
                     sum(p.to_move for p in plans),
                     tuple(sorted(b for p in plans for b in p.busy)))


def load_ratios(loads: Sequence[NodeLoad]) -> dict[str, float]:
    """Each node's load relative to the mean: the larger of its CPU and its I/O over
    their means."""
    ratios = relative_loads([n.cpu for n in loads], [n.io for n in loads])
    return {n.node_id: r for n, r in zip(loads, ratios, strict=True)}


def eta(remaining: float, rate: float) -> float | None:
    """Seconds to move ``remaining`` bytes at ``rate`` bytes/s (None: no rate yet)."""
    if remaining <= 0:
        return 0.0
    return round(remaining / rate, 1) if rate > 0 else None
