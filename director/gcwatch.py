"""What every put does for gc: keep a blob that is being stored from being collected.

gc (:mod:`director.collector`) first *announces* itself: it writes ``active_since`` and
``touch_ttl`` into its job hash (``<prefix>job:{gc}``), then waits its grace period
before it decides anything.  Every blob client reads that hash at most once per
:data:`GC_FLAG_TTL` seconds; while gc is announced, a put first adds the ids it is about
to look up or upload to the *touched* sets of their index buckets
(:meth:`~director.index.LocationIndex.touch_many`), and only then looks them up.  gc's
compare-and-delete script refuses to drop an entry that is touched, so a delivery that
dedups onto an old blob while gc runs keeps it, whether or not gc has seen the delivery's
reference yet.  A put that read the hash just before gc announced itself uses that stale
answer for at most :data:`GC_FLAG_TTL` seconds, which gc adds to its wait.

That covers deliveries that commit within gc's grace period.  One that waits longer (a
mailbox lock held for minutes, a stalled PostgreSQL) would otherwise commit a reference
to a blob gc collected meanwhile, since gc's mark reads only committed references.  So a
delivery is *fenced* too: each announcement bumps ``generation`` in the job hash; a
delivery reads it (:meth:`GcWatch.generation`) before its upload, and its commit
transaction calls :meth:`GcWatch.collected_since` as its last statement, after every lock
it waits for.  When no run was announced since the upload and none is running, nothing
can have been collected and the check costs nothing (the job hash read of this second).
Otherwise the ids are announced again (while a run is going on) and then looked up: an
id gone from the index was collected, and the delivery rolls back with a temporary
error.  An id still there stays: a running gc sees the announcement in its
compare-and-delete, and a later run waits its grace period after announcing, long after
this commit.  docs/director.md ("gc") walks through the interleavings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Final

from director.index import LocationIndex
from director.jobstate import JobState, integer

__all__ = ["GC_FLAG_MARGIN", "GC_FLAG_TTL", "GC_JOB", "GcWatch"]

#: The gc job's name (its lease and its state hash).
GC_JOB: Final = "gc"
#: Seconds a client trusts what it last read of gc's announcement.
GC_FLAG_TTL: Final = 1.0
#: Seconds gc adds to its wait for clock steps and the read's own round trip.
GC_FLAG_MARGIN: Final = 1.0


class GcWatch:
    """One blob client's view of whether gc runs, and its announcements of puts."""

    def __init__(self, index: LocationIndex, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.index = index
        self._state = JobState(index.runner, index.keys, GC_JOB)
        self._clock = clock
        self._fresh_until = float("-inf")
        self._touch_ttl = 0
        self._generation = 0
        #: Ids announced to a running gc (metrics, tests).
        self.announced = 0
        #: Commits that had to look their blobs up, and those refused (metrics, tests).
        self.fence_checks = 0
        self.fence_refusals = 0

    async def _refresh(self) -> None:
        if self._clock() >= self._fresh_until:
            fields = await self._state.load()
            self._touch_ttl = integer(fields, "touch_ttl") if "active_since" in fields else 0
            self._generation = integer(fields, "generation")
            # From the end of the read: the answer is at least as new as that.
            self._fresh_until = self._clock() + GC_FLAG_TTL

    async def touch_ttl(self) -> int:
        """Seconds an announcement must live while gc runs; 0 when gc does not run."""
        await self._refresh()
        return self._touch_ttl

    async def generation(self) -> int:
        """How many gc runs were ever announced (as of at most :data:`GC_FLAG_TTL` ago).

        A delivery reads it before its upload and hands it to :meth:`collected_since`.
        """
        await self._refresh()
        return self._generation

    async def before_put(self, ids: Iterable[str]) -> None:
        """Call before looking up or uploading ``ids``: while gc runs, announce them."""
        ttl = await self.touch_ttl()
        if ttl:
            wanted = list(dict.fromkeys(ids))
            await self.index.touch_many(wanted, ttl)
            self.announced += len(wanted)

    async def collected_since(self, ids: Iterable[str], generation: int) -> list[str]:
        """The members of ``ids`` that gc may have collected since ``generation`` was
        read and that the index no longer has; the rest are kept from now on.

        Called by a delivery's commit transaction as its last statement (the module
        docstring says why that order matters).  A ``generation`` never read (any value
        other than the current one, e.g. -1) always means a lookup.
        """
        ttl = await self.touch_ttl()
        if not ttl and generation == self._generation:
            return []  # no run announced since the upload, none running now
        wanted = list(dict.fromkeys(ids))
        self.fence_checks += 1
        if ttl:
            # Announce before the lookup, as a put does: a sweep that has not reached
            # these buckets yet will keep them.
            await self.index.touch_many(wanted, ttl)
        known = await self.index.lookup(wanted)
        gone = [bid for bid in wanted if not known.get(bid)]
        if gone:
            self.fence_refusals += 1
        return gone
