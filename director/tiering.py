"""The tier job: move blobs between the hot and cold layouts of the storage hierarchy.

Theory of operation.  With ``[[director.tiers]]`` configured (:mod:`director.tiers`),
every blob should have the *hot* layout (new blobs get it from placement) until it has
not been accessed for ``tier_cold_after`` seconds, then the *cold* one; a cold blob read
``tier_hot_reads`` times (decayed) is hot again.  Accesses and reads are what the
frontends report into the read temperature (:mod:`director.temperature`).  A pass (job
``tier``, one director at a time under its lease):

1. **Promotes**: the hottest blobs of the temperature (:data:`PROMOTE_SCAN` at most)
   whose decayed reads reach ``tier_hot_reads`` and whose copies are not in the hot
   layout.
2. **Demotes**: sweeps the index from a cursor saved in the job's state after every page
   (:data:`~director.index.SCAN_BUCKETS` buckets), so a pass cut short (Ctrl-C, the
   ``tier_max_blobs`` budget, a lost lease) resumes where it stopped; for each entry not
   in the cold layout, asks the temperature whether it is cold (one pipelined lookup per
   page) and moves it if so.  An entry in neither layout that is not cold (stored before
   the tiers were configured, e.g. two SSD copies) gets the hot one.  The sweep ends at the last bucket and the next pass starts
   again from the first.

Moving a blob to a layout (:meth:`Tierer.relayout`): the tiers that lack copies and those
holding too many are computed from the registry (a blob with a copy on a node that is
not up is left to repair); the blob is read from its fastest readable copy through
:class:`director.blobreader.BlobReader`, which verifies it whole (a blob with no good
copy is queued for repair); each missing copy is written to the tier's best placement
candidate (:func:`director.copier.write_verified`, checked on the target), paced by a
token bucket (``tier_rate`` bytes/s); only once every new copy is there is the index
updated in one atomic step (add the new, remove the surplus), and only then are the
surplus copies deleted.  A copy that cannot be made leaves the old ones in place (the new
ones that were made are indexed: no byte is ever without a location).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from director.background import BackgroundJob, PassControl, PassStats, RateLimiter
from director.copier import delete_copy, write_verified
from director.index import SCAN_BUCKETS
from director.jobstate import JobState, integer, number
from director.memcache_client import NodeError
from director.nodes import Node, NodeState
from director.placement import Placer
from director.planner import COUNTING, rank_targets
from director.registry import RegistrySnapshot
from director.temperature import Heat
from director.tiers import Layout, TierPolicy, is_cold, is_hot

if TYPE_CHECKING:
    from director.client import BlobClient

log = logging.getLogger(__name__)

#: Hottest blobs of the temperature looked at for promotion per pass.
PROMOTE_SCAN = 1000
#: Moves kept in a pass's stats (for ``--json``; the counters cover all of them).
KEPT_MOVES = 1000
#: Fields of a sweep in progress (``objmail tier --cancel`` forgets them).
RUN_FIELDS = ("cursor", "started_at")


@dataclass
class TierStats(PassStats):
    """What a tier pass did.

    :param promoted: hot blobs given the hot layout; ``demoted`` cold ones given the cold
        one; ``fixed`` blobs in neither layout and not cold given the hot one.
    :param checked: index entries the demotion sweep looked at.
    :param cold_found: of them, cold ones not in the cold layout (moved, or planned when
        ``dry_run``).
    :param skipped: blobs left as they were: a copy on a node that is not up, no node of
        a tier to copy to, or a copy that failed.
    :param bad: blobs with no copy that verifies (queued for repair).
    :param cursor: the sweep's next index bucket (0: it went round).
    :param finished: the sweep reached the last bucket.
    :param moves: blob, ``to`` (hot, cold), nodes ``added`` and ``removed``, ``done``.
    """

    job: str = "tier"
    dry_run: bool = False
    promoted: int = 0
    demoted: int = 0
    fixed: int = 0
    checked: int = 0
    cold_found: int = 0
    skipped: int = 0
    bad: int = 0
    cursor: int = 0
    buckets: int = 0
    finished: bool = False
    moves: list[dict[str, Any]] = field(default_factory=list, repr=False)


class Tierer(BackgroundJob[TierStats]):
    """The tier job of one director (see the module docstring).

    :param rate: overrides ``director.tier_rate`` (bytes/s; 0 = no limit).
    :param max_blobs: overrides ``director.tier_max_blobs`` (moves per pass).
    :param dry_run: plan and report the moves, change nothing (the cursor included).
    :param sleep: how the rate limit waits (tests pass one driven by their clock).
    """

    job = "tier"

    def __init__(self, client: BlobClient, *, rate: float | None = None,
                 max_blobs: int | None = None, dry_run: bool = False,
                 sleep: Callable[[float], Any] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], float] = time.time, token: str | None = None) -> None:
        super().__init__(client, clock=clock, now=now, token=token)
        self.rate = self.dconf.tier_rate if rate is None else rate
        self.max_blobs = self.dconf.tier_max_blobs if max_blobs is None else max_blobs
        self.dry_run = dry_run
        self._sleep = sleep

    @property
    def tiers(self) -> TierPolicy | None:
        return self.client.policy.tiers

    def cold(self, heat: Heat) -> bool:
        return is_cold(heat.accessed_before, heat.reads, self.now(),
                       cold_after=self.dconf.tier_cold_after,
                       hot_reads=self.dconf.tier_hot_reads)

    async def run_pass(self, control: PassControl) -> TierStats:
        stats = TierStats(dry_run=self.dry_run, buckets=self.index.layout.buckets)
        tiers = self.tiers
        if tiers is None or self.dconf.temperature_sample <= 0:
            # Without tiers nothing to do; without temperature nothing is known cold.
            stats.finished = True
            return stats
        state = control.state(self)
        fields = await state.load()
        snap = await self.client.snapshot(force=True)
        placer = snap.placer(self.client.policy)
        limiter = RateLimiter(self.rate, None, clock=self.clock)
        if not await self._promote(tiers, snap, placer, limiter, control, stats):
            return stats
        cursor = integer(fields, "cursor")
        if not 0 <= cursor < stats.buckets:
            cursor = 0
        if not self.dry_run and "started_at" not in fields:
            await state.save({"started_at": self.now()})
        while True:
            stats.cursor = cursor
            page = await self.index.scan(cursor, buckets=SCAN_BUCKETS)
            stats.checked += len(page.entries)
            wrong = [(bid, nums) for bid, nums in page.entries
                     if not self._in_layout(tiers, snap, nums, tiers.cold)]
            heat = await self.client.heat.lookup([bid for bid, _n in wrong])
            for bid, nums in wrong:
                if self.cold(heat[bid]):
                    stats.cold_found += 1
                    if await self.relayout(bid, nums, tiers.cold, "cold", snap, placer,
                                           limiter, stats):
                        stats.demoted += 1
                elif not self._in_layout(tiers, snap, nums, tiers.hot):
                    # In neither layout (stored before the tiers were configured, or
                    # left so by a failure) and not cold: the hot one.
                    if await self.relayout(bid, nums, tiers.hot, "hot", snap, placer,
                                           limiter, stats):
                        stats.fixed += 1
                else:
                    continue
                stats.items += 1
                if stats.promoted + stats.demoted + stats.fixed >= self.max_blobs \
                        or not await control.checkpoint(stats):
                    # This page again next time: what moved is in its layout by then.
                    stats.interrupted = True
                    if not self.dry_run and not control.lost:
                        await state.save({"cursor": cursor, "updated_at": self.now()})
                    return stats
            if page.next_cursor is None:
                stats.cursor = 0
                stats.finished = True
                if not self.dry_run:
                    await state.save({"cursor": 0, "last_finished": self.now(),
                                      "last_promoted": stats.promoted,
                                      "last_demoted": stats.demoted,
                                      "updated_at": self.now()})
                    await state.forget("started_at")
                return stats
            cursor = page.next_cursor
            if not self.dry_run:
                await state.save({"cursor": cursor, "updated_at": self.now()})
            if not await control.checkpoint(stats):
                stats.cursor = cursor
                return stats

    async def _promote(self, tiers: TierPolicy, snap: RegistrySnapshot, placer: Placer,
                       limiter: RateLimiter, control: PassControl, stats: TierStats) -> bool:
        """Give the hottest blobs the hot layout; False when the pass must stop."""
        hot = [bid for bid, reads in await self.client.heat.hottest(PROMOTE_SCAN)
               if is_hot(reads, hot_reads=self.dconf.tier_hot_reads)]
        if not hot:
            return True
        found = await self.index.lookup(hot)
        for bid in hot:
            nums = found.get(bid, ())
            if not nums or self._in_layout(tiers, snap, nums, tiers.hot):
                continue
            if await self.relayout(bid, nums, tiers.hot, "hot", snap, placer, limiter, stats):
                stats.promoted += 1
            stats.items += 1
            if stats.promoted >= self.max_blobs or not await control.checkpoint(stats):
                stats.interrupted = True
                return False
        return True

    @staticmethod
    def _in_layout(tiers: TierPolicy, snap: RegistrySnapshot, nums: Sequence[int],
                   layout: Layout) -> bool:
        nodes = [snap.by_number(n) for n in nums]
        return tiers.matches(tiers.counts(n for n in nodes if n is not None), layout)

    async def relayout(self, bid: str, nums: Sequence[int], layout: Layout, kind: str,
                       snap: RegistrySnapshot, placer: Placer, limiter: RateLimiter,
                       stats: TierStats) -> bool:
        """Give ``bid`` the copies ``layout`` wants (see the module docstring); True when
        it has them now (or would, in a dry run)."""
        tiers = self.tiers
        assert tiers is not None
        holders = [snap.by_number(n) for n in nums]
        if any(h is None or h.state not in COUNTING for h in holders):
            stats.skipped += 1  # a copy on a node that is not up: repair's business first
            return False
        held: list[Node] = [h for h in holders if h is not None]
        have = tiers.counts(held)
        needs = tiers.needs(have, layout)
        drop: list[Node] = []
        for tier, extra in tiers.surplus(have, layout).items():
            # Copies on draining nodes go first (they are leaving anyway).
            drop += sorted((h for h in held if h.tier == tier),
                           key=lambda h: h.state is NodeState.ACTIVE)[:extra]
        kept = [h for h in held if h not in drop]
        ranked = rank_targets(placer.candidates(bid), nums, kept)
        move: dict[str, Any] = {"blob": bid, "to": kind, "added": [],
                                "removed": [d.id for d in drop], "done": False}
        if len(stats.moves) < KEPT_MOVES:
            stats.moves.append(move)
        if self.dry_run:
            move["added"] = [n.id for tier, k in needs.items()
                             for n in [c for c in ranked if c.tier == tier][:k]]
            return True
        source = None
        for node in tiers.fastest_first([h for h in held if h.readable]):
            found = await self.client.reader.probe(bid, self.client.node_client(node))
            if found.blob is not None:
                source = found.blob
                break
        if source is None:
            log.warning("tier: no copy of %s verifies; queued for repair", bid)
            await self.client.repair.add([bid])
            stats.bad += 1
            return False
        added: list[Node] = []
        short = False
        for tier, want in needs.items():
            for target in (c for c in ranked if c.tier == tier):
                if want == 0:
                    break
                wait = limiter.take("tier", source.stored_bytes)
                if wait > 0:
                    await self._sleep(wait)
                try:
                    await write_verified(self.client.node_client(target), source)
                except (NodeError, OSError) as exc:
                    log.warning("tier: copy of %s to %s failed: %s", bid, target.id, exc)
                    stats.errors += 1
                    continue
                added.append(target)
                stats.bytes += source.stored_bytes
                want -= 1
            short = short or want > 0
        if short:
            # Keep every old copy; the new ones are good and indexed (never orphaned).
            if added:
                await self.index.update(bid, add=[a.number for a in added])
            stats.skipped += 1
            move["added"] = [a.id for a in added]
            move["removed"] = []
            return False
        left = await self.index.update(bid, add=[a.number for a in added],
                                       remove=[d.number for d in drop])
        if not left:  # collected meanwhile: the new copies are garbage too
            for node in added:
                await self._delete(node, source.keys)
            stats.skipped += 1
            return False
        # Indexed without them: only now may the surplus copies go.
        for node in drop:
            await self._delete(node, source.keys)
        move["added"] = [a.id for a in added]
        move["done"] = True
        return True

    async def _delete(self, node: Node, keys: tuple[bytes, ...]) -> None:
        try:
            await delete_copy(self.client.node_client(node), keys)
        except (NodeError, OSError) as exc:
            # Unindexed now: inventory --fix deletes it after the grace.
            log.warning("tier: could not delete %s from %s: %s", keys[-1].decode(), node.id,
                        exc)

    async def status(self, hottest: int = 10) -> dict[str, Any]:
        """The job hash, the hottest blobs and the temperature's size, as ``objmail tier
        --status`` shows them."""
        fields = await JobState(self.runner, self.keys, self.job).load()
        reads, seen = await self.client.heat.sizes()
        tiers = self.tiers
        return {
            "running": "started_at" in fields,
            **{k: integer(fields, k) if k == "cursor" else number(fields, k) for k in fields},
            "buckets": self.index.layout.buckets,
            "tiers": [] if tiers is None else [
                {"name": t.name, "rank": t.rank, "replicas": t.replicas,
                 "cold_replicas": t.cold_replicas} for t in tiers.tiers],
            "temperature": {"tracked_reads": reads, "tracked_seen": seen,
                            "hottest": [{"blob": b, "reads": round(r, 3)} for b, r in
                                        await self.client.heat.hottest(hottest)]},
        }
