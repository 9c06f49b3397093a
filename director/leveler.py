"""Level: move blobs from the fullest nodes to the emptiest, hot blobs first.

Theory of operation.  A leveling pass (job ``level``, one director at a time) reads the
registry snapshot, takes the active nodes of the write tier that report a capacity, and
compares each one's used fraction with the cluster's (total used / total capacity).
When every node is within ``level_tolerance`` of it, the pass ends at once.  Otherwise:

1. **Candidates.**  For every node fuller than the mean: its hottest keys from its load
   report (a chunk key stands for its blob), which the index confirms it holds; and,
   when those do not add up to its excess, up to ``level_scan_entries`` more of its
   blobs from an index scan filtered by its number, resumed from a per-node cursor in
   the job's state so successive passes offer different blobs.  Each candidate's size
   on the node is asked with a meta get (``mg <id> s f``; a chunked blob's size comes
   from its manifest).
2. **Plan.**  :func:`director.planner.plan_moves` (pure, seeded by the pass number)
   orders the moves: fullest source to emptiest target, hottest blobs first, within
   ``level_bytes_per_pass`` bytes, never lowering a blob's zone spread.
3. **Moves.**  Each move is a verified copy (:mod:`director.copier`) to the target, one
   atomic index update (add the target, remove the source), then the source's copy is
   deleted.  A source whose copy turns out bad is skipped and the blob queued for repair.

The plan works on the load reports, which lag by up to ``objstore.report_interval``;
the next pass plans on fresh ones.  ``objmail level`` without ``--once`` runs passes,
waiting for new reports in between, until the nodes are level.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from director.background import BackgroundJob, PassControl, PassStats
from director.copier import delete_copy, write_verified
from director.index import SCAN_BUCKETS
from director.jobstate import JobState, integer
from director.keys import is_blob_id
from director.memcache_client import NodeError
from director.nodes import Node, NodeState
from director.planner import BlobCandidate, Move, NodeUsage, plan_moves, usage
from director.registry import RegistrySnapshot

log = logging.getLogger(__name__)

#: Hottest keys read per node from its report.
HOT_KEYS = 100
#: Size queries in flight at once, per pass.
SIZE_PARALLELISM = 16
#: Moves per debug log line (a pass can make thousands: one line each would flood the
#: log, one line for all of them made a 474 KB line).
MOVES_PER_LOG_LINE = 50


@dataclass(frozen=True)
class LevelPlan:
    """The inputs a pass planned on, and the plan."""

    nodes: tuple[NodeUsage, ...]
    moves: tuple[Move, ...]
    mean: float
    spread: float
    #: Usage each node would have after the moves.
    projected: dict[str, float]
    tolerance: float

    @property
    def balanced(self) -> bool:
        return self.spread <= self.tolerance


@dataclass
class LevelStats(PassStats):
    """What a leveling pass did.

    :param mean: the cluster-wide fraction of capacity used.
    :param spread_before: the largest deviation from it when the pass began.
    :param spread_planned: the largest deviation once the planned moves are done.
    :param balanced: every node was within tolerance already.
    :param planned: moves planned; ``moved`` of them done (``hot_moved`` of hot blobs).
    :param skipped: moves not done (bad source copy, target refused, blob collected).
    :param moves: each move: blob, source, target, size, heat, done (left out of the
        repr, which the background loop logs: :func:`log_pass` logs them in batches).
    """

    job: str = "level"
    mean: float = 0.0
    spread_before: float = 0.0
    spread_planned: float = 0.0
    balanced: bool = False
    planned: int = 0
    moved: int = 0
    hot_moved: int = 0
    skipped: int = 0
    moves: list[dict[str, Any]] = field(default_factory=list, repr=False)


def log_pass(stats: LevelStats) -> None:
    """One summary line at info level; the moves at debug level, in lines of at most
    :data:`MOVES_PER_LOG_LINE` moves."""
    if not stats.planned:
        return
    log.info("level: %d of %d planned move(s) done (%d hot), %d skipped, %d bytes copied; "
             "spread %.4f, %.4f once done", stats.moved, stats.planned, stats.hot_moved,
             stats.skipped, stats.bytes, stats.spread_before, stats.spread_planned)
    if not log.isEnabledFor(logging.DEBUG):
        return
    for at in range(0, len(stats.moves), MOVES_PER_LOG_LINE):
        batch = stats.moves[at:at + MOVES_PER_LOG_LINE]
        log.debug("level: moves %d-%d of %d: %s", at + 1, at + len(batch), len(stats.moves),
                  "; ".join(f"{m['blob']} {m['source']}->{m['target']} {m['size']}B"
                            + ("" if m["done"] else " skipped") for m in batch))


class Leveler(BackgroundJob[LevelStats]):
    """The leveling job of one director (see the module docstring)."""

    job = "level"

    async def plan(self, state: JobState | None = None) -> LevelPlan:
        """Gather the facts and plan one pass (no data moves: ``objmail level
        --dry-run`` prints this)."""
        state = state or JobState(self.runner, self.keys, self.job)
        snap = await self.client.snapshot(force=True)
        nodes = self._levelled(snap)
        usages = tuple(NodeUsage(n.id, n.number, n.zone,
                                 n.report.used_bytes if n.report else 0,
                                 n.report.capacity_bytes if n.report else 0) for n in nodes)
        stat = usage(usages)
        tolerance = self.dconf.level_tolerance
        if stat.spread <= tolerance:
            return LevelPlan(usages, (), stat.mean, stat.spread, stat.fractions, tolerance)
        fields = await state.load()
        sources = [n for n in nodes if stat.fractions.get(n.id, 0.0) > stat.mean]
        hot = await self._hot(sources)
        excess = {u.node_id: u.used - stat.mean * u.capacity for u in usages}
        cold: dict[str, list[BlobCandidate]] = {}
        cursors: dict[str, int] = {}
        for node in sources:
            if sum(b.size for b in hot.get(node.id, ())) < excess[node.id]:
                cold[node.id], cursors[node.id] = await self._cold(
                    node, integer(fields, f"cursor:{node.id}"), hot.get(node.id, ()))
        if cursors and state.lease is not None:  # a dry run leaves the cursors alone
            await state.save({f"cursor:{k}": v for k, v in cursors.items()})
        seed = integer(fields, "passes")
        moves = plan_moves(usages, hot, tolerance, self.dconf.level_bytes_per_pass,
                           cold=cold, seed=seed)
        projected = {u.node_id: u.used for u in usages}
        for m in moves:
            projected[m.source] -= m.size
            projected[m.target] += m.size
        after = usage([NodeUsage(u.node_id, u.number, u.zone, projected[u.node_id],
                                 u.capacity) for u in usages])
        return LevelPlan(usages, tuple(moves), stat.mean, stat.spread, after.fractions,
                         tolerance)

    async def run_pass(self, control: PassControl) -> LevelStats:
        stats = LevelStats()
        state = control.state(self)
        plan = await self.plan(state)
        stats.mean = round(plan.mean, 6)
        stats.spread_before = round(plan.spread, 6)
        stats.balanced = plan.balanced
        stats.planned = stats.total = len(plan.moves)
        if plan.moves:
            after = [abs(f - plan.mean) for f in plan.projected.values()]
            stats.spread_planned = round(max(after), 6) if after else 0.0
        else:
            stats.spread_planned = stats.spread_before
        snap = await self.client.snapshot()
        for move in plan.moves:
            done = await self.move(move, snap, stats)
            stats.moves.append({"blob": move.blob_id, "source": move.source,
                                "target": move.target, "size": move.size,
                                "heat": move.heat, "done": done})
            stats.items += 1
            if not await control.checkpoint(stats):
                break
        fields = await state.load()
        await state.save({"passes": integer(fields, "passes") + 1, "last_pass_at": self.now(),
                          "last_moved": stats.moved, "last_bytes": stats.bytes,
                          "spread": stats.spread_before})
        log_pass(stats)
        return stats

    async def move(self, move: Move, snap: RegistrySnapshot, stats: LevelStats) -> bool:
        """Carry out one planned move; False when it was skipped."""
        src, dst = snap.get(move.source), snap.get(move.target)
        if src is None or dst is None or not src.readable or dst.state is not NodeState.ACTIVE:
            stats.skipped += 1
            return False
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
        return True

    # -- gathering ----------------------------------------------------------------------

    def _levelled(self, snap: RegistrySnapshot) -> list[Node]:
        policy = self.client.policy
        return [n for n in snap.nodes if policy.may_hold(n) and n.report is not None
                and n.report.capacity_bytes > 0]

    async def _hot(self, sources: Sequence[Node]) -> dict[str, list[BlobCandidate]]:
        """Each source's hottest blobs that the index confirms it holds, with sizes."""
        if not sources:
            return {}
        reported = await self.client.registry.hot([n.id for n in sources], HOT_KEYS)
        heat: dict[str, dict[str, float]] = {}
        for node in sources:
            per: dict[str, float] = defaultdict(float)
            for key, score in reported.get(node.id, ()):
                bid = key.split("/", 1)[0]  # a chunk's heat is its blob's
                if is_blob_id(bid.encode()):
                    per[bid] += score
            heat[node.id] = per
        ids = {bid for per in heat.values() for bid in per}
        holders = await self.index.lookup(ids) if ids else {}
        out: dict[str, list[BlobCandidate]] = {}
        for node in sources:
            mine = [(bid, h) for bid, h in heat[node.id].items()
                    if node.number in holders.get(bid, ())]
            out[node.id] = await self._sized(node, [(b, holders[b], h) for b, h in mine])
        return out

    async def _cold(self, node: Node, cursor: int, hot: Sequence[BlobCandidate]
                    ) -> tuple[list[BlobCandidate], int]:
        """Up to ``level_scan_entries`` of the node's blobs from the index, from
        ``cursor``; returns them and the cursor to resume from."""
        if not 0 <= cursor < self.index.layout.buckets:
            cursor = 0
        skip = {b.blob_id for b in hot}
        found: list[tuple[str, tuple[int, ...], float]] = []
        total = self.index.layout.buckets
        scanned = 0
        while len(found) < self.dconf.level_scan_entries and scanned < total:
            step = min(SCAN_BUCKETS, total - scanned)
            page = await self.index.scan(cursor, buckets=step, node=node.number)
            found += [(bid, nums, 0.0) for bid, nums in page.entries if bid not in skip]
            scanned += page.buckets_done - cursor
            cursor = page.next_cursor or 0
        found = found[:self.dconf.level_scan_entries]
        return await self._sized(node, found), cursor

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
