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
        #: Ids announced to a running gc (metrics, tests).
        self.announced = 0

    async def touch_ttl(self) -> int:
        """Seconds an announcement must live while gc runs; 0 when gc does not run."""
        now = self._clock()
        if now >= self._fresh_until:
            fields = await self._state.load()
            self._touch_ttl = integer(fields, "touch_ttl") if "active_since" in fields else 0
            # From the end of the read: the answer is at least as new as that.
            self._fresh_until = self._clock() + GC_FLAG_TTL
        return self._touch_ttl

    async def before_put(self, ids: Iterable[str]) -> None:
        """Call before looking up or uploading ``ids``: while gc runs, announce them."""
        ttl = await self.touch_ttl()
        if ttl:
            wanted = list(dict.fromkeys(ids))
            await self.index.touch_many(wanted, ttl)
            self.announced += len(wanted)
