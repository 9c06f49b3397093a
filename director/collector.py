"""gc: delete the blobs that no message references any more.

Theory of operation.  Deletion in metadata decides nothing globally (EXPUNGE and
``user del`` drop their own reference rows; docs/metadata.md), so gc marks and sweeps.
One gc run (job ``gc``, one director at a time, resumable) goes:

1. **Announce.**  The run writes ``active_since``, ``guard_until`` and ``touch_ttl`` into
   its job hash.  From then on every put announces the ids it stores before it looks
   them up (:mod:`director.gcwatch`).
2. **Guard.**  It waits until ``guard_until``: the grace period (``director.gc_grace``,
   at least ``director.gc_min_grace``; longer than a delivery normally takes from its
   first upload to its commit) plus how long a client may act on a stale reading of the
   announcement.  Nearly every delivery that started before the announcement has
   committed its references, or failed, by then; a slower one is fenced (below).
3. **Sweep.**  Bucket by bucket from a saved cursor: the entries of a page of index
   buckets are the candidates; the :class:`ReferenceChecker` keeps those some message uses
   now (**mark**); for each of the others, every holder's CAS unique of the blob's head
   and chunks is read, then one script per bucket drops the index entries that still
   list the same nodes and that no put announced (:meth:`LocationIndex.collect_many`),
   and only then are the copies deleted, each with ``md <key> C<cas>``.

Why this is safe: a put that dedups onto a candidate announced it before its lookup, so
the script keeps the entry; one whose lookup came after the entry was dropped uploads
the blob again, and its new copies carry new CAS uniques, so the conditional deletes
leave them alone.  A delivery whose reference the mark could not see either finished its
put within the guard (then its commit came before the mark) or announced it.  A
node that cannot be asked keeps its blobs in the index for the next run.  Announcements
of a bucket are dropped once the bucket is swept, and expire on their own
(``touch_ttl``).

A delivery that takes longer than the grace period from its upload to its commit (it
waited minutes for a mailbox lock) is not protected by the guard: its reference is not
committed when the mark looks.  Each announcement therefore bumps ``generation`` in the
job hash, and a delivery's commit transaction re-checks its blobs when a run was
announced since its upload (:meth:`director.gcwatch.GcWatch.collected_since`): a blob
this run collected is gone from the index, and the delivery rolls back with a temporary
error instead of committing a reference to nothing.

The index is the list of what exists: a copy an object server holds without an index
entry (a crash between upload and indexing, a node that was unreachable when gc deleted)
is reclaimed by ``objmail inventory --fix`` (:mod:`director.inventory`), not by gc.

gc treats PostgreSQL as the only owner of blobs: a blob stored through directord under
its blob id and referenced by no message is collected like an orphan.  directord's
plain-key items live in their own index key space, which gc never scans.  An index from
before that key space may still hold items among the blobs: gc refuses to run on it
(:class:`~director.errors.ItemsNotMigrated`) until ``objmail index migrate-items``
(:mod:`director.itemmigration`) has moved them.

The metadata store is reached through :class:`ReferenceChecker` (``objmail gc`` wires
:class:`metadata.references.References` to it): the director does not import metadata.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from director.background import BackgroundJob, PassControl, PassStats
from director.codec import FLAG_MANIFEST, CodecError
from director.errors import ItemsNotMigrated
from director.gcwatch import GC_FLAG_MARGIN, GC_FLAG_TTL, GC_JOB
from director.jobstate import JobState, integer, number
from director.memcache_client import NodeError
from director.nodes import Node

if TYPE_CHECKING:
    from director.client import BlobClient

log = logging.getLogger(__name__)

#: Index buckets per sweep step (one mark query, one script per bucket).
GC_PAGE_BUCKETS = 64
#: Blobs whose copies are examined or deleted at the same time.
GC_PARALLELISM = 16
#: Unreferenced blob ids kept as examples in the stats.
EXAMPLES = 10
#: The job-hash fields of a run in progress (forgotten when it ends).
RUN_FIELDS = ("active_since", "guard_until", "touch_ttl", "cursor")

__all__ = ["RUN_FIELDS", "Collector", "GcStats", "ReferenceChecker", "Survey"]


class ReferenceChecker(Protocol):
    """Which blob ids some message references now (the metadata store answers)."""

    async def referenced(self, blob_ids: Iterable[str]) -> set[str]:
        """The members of ``blob_ids`` that at least one committed message references."""
        ...


@dataclass
class GcStats(PassStats):
    """What one gc pass did.  ``items`` counts the index entries examined.

    :param phase: ``guard`` (waiting out the grace period), ``sweep``, ``done``.
    :param guard_left: seconds of the guard still to wait when the pass stopped.
    :param buckets_done: index buckets swept so far in this run (of ``buckets``).
    :param referenced: entries kept because some message references them.
    :param collected: blobs deleted from the index (their copies then deleted).
    :param kept: unreferenced entries kept: a put announced them, their locations
        changed meanwhile, or a holder could not be asked; the next run sees them again.
    :param copies_deleted: object-server items (heads and chunks) deleted.
    :param copies_kept: items left because they were rewritten meanwhile (a new put).
    :param finished: the run swept the whole index and ended.
    """

    job: str = GC_JOB
    phase: str = "guard"
    guard_left: float = 0.0
    buckets_done: int = 0
    buckets: int = 0
    referenced: int = 0
    collected: int = 0
    kept: int = 0
    copies_deleted: int = 0
    copies_kept: int = 0
    finished: bool = False
    examples: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Survey:
    """A dry run: what gc would consider collecting now."""

    entries: int
    unreferenced: int
    examples: tuple[str, ...]


@dataclass(frozen=True)
class _Doomed:
    """One unreferenced blob and the CAS uniques of its items on each holder."""

    blob_id: str
    numbers: tuple[int, ...]
    items: tuple[tuple[Node, tuple[tuple[bytes, int], ...]], ...]


class Collector(BackgroundJob[GcStats]):
    """The gc job of one director (see the module docstring).

    :param references: which blobs messages reference (the metadata store's view).
    :param grace: seconds to wait after announcing (``director.gc_grace`` by default);
        at least ``director.gc_min_grace``.
    :param sleep: how the guard waits (tests pass a faster one).
    :raises ValueError: ``grace`` is below ``director.gc_min_grace``.
    """

    job = GC_JOB

    def __init__(self, client: BlobClient, references: ReferenceChecker, *,
                 grace: float | None = None,
                 sleep: Callable[[float], Any] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], float] = time.time, token: str | None = None) -> None:
        super().__init__(client, clock=clock, now=now, token=token)
        self.references = references
        self.grace = self.dconf.gc_grace if grace is None else grace
        if self.grace < self.dconf.gc_min_grace:
            raise ValueError(f"gc grace of {self.grace:g} s is below the minimum of "
                             f"{self.dconf.gc_min_grace:g} s (director.gc_min_grace)")
        self._sleep = sleep

    # -- a run --------------------------------------------------------------------------

    async def run_pass(self, control: PassControl) -> GcStats:
        if await self.index.items_keyspace() is None:
            # directord's items may still sit in the blobs' key space, which gc sweeps.
            raise ItemsNotMigrated(
                "this index was created before directord's items had a key space of their "
                "own; run `objmail index migrate-items` first (gc would collect them)")
        state = control.state(self)
        fields = await state.load()
        stats = GcStats(buckets=self.index.layout.buckets)
        if "active_since" not in fields:
            fields = await self._announce(state, integer(fields, "generation"))
        guard_until = number(fields, "guard_until")
        while (left := guard_until - self.now()) > 0:
            stats.guard_left = round(left, 1)
            if not await control.checkpoint(stats):
                return stats
            await self._sleep(min(left, 1.0))
        stats.guard_left = 0.0
        stats.phase = "sweep"
        cursor: int | None = integer(fields, "cursor")
        stats.buckets_done = cursor or 0
        while cursor is not None and cursor < stats.buckets:
            page = await self.index.scan(cursor, buckets=GC_PAGE_BUCKETS)
            await self._sweep(dict(page.entries), stats)
            await self.index.forget_touched(cursor, page.buckets_done)
            cursor = page.next_cursor
            stats.buckets_done = page.buckets_done
            await state.save({"cursor": stats.buckets if cursor is None else cursor})
            if cursor is not None and not await control.checkpoint(stats):
                return stats
        await state.save({"last_finished": self.now()})
        await state.forget(*RUN_FIELDS)
        stats.phase = "done"
        stats.finished = True
        await control.checkpoint(stats)
        stats.interrupted = False  # the run is over; nothing was cut short
        return stats

    async def _announce(self, state: JobState, generation: int) -> dict[str, str]:
        now = self.now()
        fields: dict[str, str | int | float] = {
            # Deliveries that uploaded before this announcement re-check their blobs
            # when they commit (director/gcwatch.py).
            "generation": generation + 1,
            "active_since": now,
            "guard_until": now + self.grace + GC_FLAG_TTL + GC_FLAG_MARGIN,
            # An announcement must outlive the deliveries it protects (they commit
            # within the grace period), with room to spare.
            "touch_ttl": int(2 * self.grace) + 600,
            "cursor": 0,
        }
        await state.save(fields)
        log.info("gc: announced; collecting from %.0f s from now", self.grace)
        return {k: v if isinstance(v, str) else repr(v) for k, v in fields.items()}

    async def _sweep(self, entries: Mapping[str, tuple[int, ...]], stats: GcStats) -> None:
        stats.items += len(entries)
        if not entries:
            return
        live = await self.references.referenced(entries)
        stats.referenced += len(live)
        unreferenced = {b: nums for b, nums in entries.items() if b not in live}
        if not unreferenced:
            return
        snap = await self.client.snapshot()
        sem = asyncio.Semaphore(GC_PARALLELISM)

        async def examine(bid: str, nums: tuple[int, ...]) -> _Doomed | None:
            async with sem:
                return await self._examine(bid, nums, snap.resolve(nums))

        found = await asyncio.gather(*(examine(b, n) for b, n in unreferenced.items()))
        doomed = {d.blob_id: d for d in found if d is not None}
        collected = await self.index.collect_many({b: d.numbers for b, d in doomed.items()})
        stats.kept += len(unreferenced) - len(collected)

        async def delete(d: _Doomed) -> None:
            async with sem:
                await self._delete_copies(d, stats)

        await asyncio.gather(*(delete(doomed[b]) for b in sorted(collected)))
        stats.collected += len(collected)
        room = EXAMPLES - len(stats.examples)
        if room > 0:
            stats.examples += sorted(collected)[:room]

    async def _examine(self, bid: str, numbers: tuple[int, ...],
                       nodes: list[Node]) -> _Doomed | None:
        """Every holder's items of ``bid`` with their CAS uniques; None when a holder
        could not be asked (the blob waits for the next run)."""
        items: list[tuple[Node, tuple[tuple[bytes, int], ...]]] = []
        for node in nodes:
            client = self.client.node_client(node)
            head = bid.encode()
            try:
                reply = await client.meta(b"mg " + head + b" c f")
                if reply.code not in (b"HD", b"VA"):
                    items.append((node, ()))  # holds no copy: nothing to delete there
                    continue
                found = [(head, int(reply.flag("c") or 0))]
                if int(reply.flag("f") or 0) & FLAG_MANIFEST:
                    got = await client.get(head)
                    chunks = (self.client.reader.chunk_keys(bid, got.value, got.flags)
                              if got is not None else ())
                    for key in chunks:
                        chunk = await client.meta(b"mg " + key + b" c")
                        if chunk.code in (b"HD", b"VA"):
                            found.append((key, int(chunk.flag("c") or 0)))
            except (NodeError, OSError, CodecError, ValueError) as exc:
                log.warning("gc: %s on %s not examined (%s); kept for the next run",
                            bid, node.id, exc)
                return None
            items.append((node, tuple(found)))
        return _Doomed(bid, numbers, tuple(items))

    async def _delete_copies(self, doomed: _Doomed, stats: GcStats) -> None:
        """Delete each item if it is still the one examined (the head first, so that a
        head never outlives its chunks)."""
        for node, items in doomed.items:
            client = self.client.node_client(node)
            for key, cas in items:
                try:
                    reply = await client.meta(b"md " + key + b" C%d" % cas)
                except (NodeError, OSError) as exc:
                    log.warning("gc: could not delete %r on %s (%s); inventory will find "
                                "it", key, node.id, exc)
                    stats.errors += 1
                    continue
                if reply.code == b"HD":
                    stats.copies_deleted += 1
                elif reply.code == b"EX":
                    stats.copies_kept += 1
        self.client.cache.memory.discard(doomed.blob_id)
        if self.client.cache.disk is not None:
            self.client.cache.disk.discard(doomed.blob_id)

    # -- a dry run ----------------------------------------------------------------------

    async def survey(self, progress: Callable[[int, int], None] | None = None) -> Survey:
        """What is unreferenced now, without announcing, waiting or deleting anything
        (and without the lease: a run may be going on)."""
        entries = unreferenced = 0
        examples: list[str] = []
        async for page in self.index.iterate(buckets=GC_PAGE_BUCKETS):
            ids = [b for b, _n in page.entries]
            live = await self.references.referenced(ids)
            entries += len(ids)
            dead = sorted(b for b in ids if b not in live)
            unreferenced += len(dead)
            examples += dead[:max(0, EXAMPLES - len(examples))]
            if progress is not None:
                progress(page.buckets_done, self.index.layout.buckets)
        return Survey(entries, unreferenced, tuple(examples))

    async def status(self) -> dict[str, Any]:
        """The job hash as an operator wants it (``objmail gc --status``)."""
        return dict(await JobState(self.runner, self.keys, self.job).load())
