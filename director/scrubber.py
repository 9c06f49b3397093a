"""Scrub: read every stored copy back and verify it, so bad copies are found before a
reader needs them.

Theory of operation.  Reads already verify what they get and report a bad replica, but
only for the replica they read first: a blob read rarely, or whose second copy is never
read, can rot (a bad disk sector, a quarantined record, an untrusted object server
handing back other bytes) until the day its good copy is lost too.  A scrub run (job
``scrub``, or ``scrub:<node id>`` for one node's copies) goes once round the index, a
page of buckets at a time from a cursor saved in its job hash, and for every location of
every entry reads the copy from that object server and verifies it as repair does
(:meth:`director.blobreader.BlobReader.probe`: decoded per its flags, each chunk checked
against the manifest and the whole content against the id, so a forged manifest with
matching chunks is found too).  A copy found corrupt or missing queues its blob for repair,
which rewrites it from a good copy; a node that cannot be asked is counted and left for
a later run (repair's down-node handling owns outages).  A copy sealed under a key this
keyring lacks is no finding: the run stops with
:class:`~director.errors.KeyUnavailable` (a configuration error) and the page in hand
queues nothing.  Scrub itself writes nothing to the object servers.

A run is resumable: the cursor and the counters so far live in the job hash, so Ctrl-C,
a crash or a lost lease cost at most the page in hand, and the next invocation carries
on with the totals intact.  ``rate`` caps the bytes read per second, so a scrub can run
beside live traffic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from director.background import BackgroundJob, PassControl, PassStats, throttle
from director.jobstate import JobState, integer, number
from director.planner import Health

if TYPE_CHECKING:
    from director.client import BlobClient

#: Index buckets per step (the cursor is saved after each).
SCRUB_PAGE_BUCKETS = 64
#: Blobs verified at the same time.
SCRUB_PARALLELISM = 8
#: Blob ids kept as examples of bad copies.
EXAMPLES = 10
#: Counters kept in the job hash while a run is in progress (totals of the run).
COUNTERS = ("items", "copies", "bytes", "corrupt", "missing", "unreachable", "queued")
#: The job-hash fields of a run in progress (forgotten when it ends).
RUN_FIELDS = ("started_at", "cursor", *COUNTERS)


@dataclass
class ScrubStats(PassStats):
    """What a scrub run found so far.  ``items`` counts index entries, ``bytes`` the
    stored bytes read and verified; both cover the whole run, resumed invocations
    included.

    :param copies: copies read and verified good.
    :param corrupt: copies whose bytes did not verify.
    :param missing: copies the object server said it does not hold.
    :param unreachable: copies on a node that could not be asked, or is not up.
    :param queued: blobs queued for repair because of a bad copy.
    :param finished: the run went round the whole index and ended.
    """

    job: str = "scrub"
    node: str = ""
    buckets_done: int = 0
    buckets: int = 0
    copies: int = 0
    corrupt: int = 0
    missing: int = 0
    unreachable: int = 0
    queued: int = 0
    finished: bool = False
    examples: list[str] = field(default_factory=list)


class Scrubber(BackgroundJob[ScrubStats]):
    """One scrub run (see the module docstring).

    :param node_id: only the copies on this node (default: every copy).
    :param rate: at most this many stored bytes read per second (None: no limit).
    :param sleep: how the rate limit waits (tests pass a faster one).
    """

    def __init__(self, client: BlobClient, *, node_id: str | None = None,
                 rate: float | None = None,
                 sleep: Callable[[float], Any] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], float] = time.time, token: str | None = None) -> None:
        super().__init__(client, clock=clock, now=now, token=token)
        if rate is not None and rate <= 0:
            raise ValueError(f"scrub rate must be positive, got {rate}")
        self.node_id = node_id
        self.rate = rate
        self._sleep = sleep
        self.job = f"scrub:{node_id}" if node_id else "scrub"

    async def run_pass(self, control: PassControl) -> ScrubStats:
        state = control.state(self)
        fields = await state.load()
        stats = ScrubStats(job=self.job, node=self.node_id or "",
                           buckets=self.index.layout.buckets)
        snap = await self.client.snapshot(force=True)
        only: int | None = None
        if self.node_id is not None:
            node = snap.get(self.node_id)
            if node is None:
                raise LookupError(f"no object server {self.node_id!r} is registered")
            only = node.number
        if "started_at" not in fields:
            fields = {"started_at": repr(self.now()), "cursor": "0"}
            await state.save(fields)
        for name in COUNTERS:
            setattr(stats, name, integer(fields, name))
        cursor: int | None = integer(fields, "cursor")
        stats.buckets_done = cursor or 0
        started, read_here = self.clock(), 0
        while cursor is not None and cursor < stats.buckets:
            page = await self.index.scan(cursor, buckets=SCRUB_PAGE_BUCKETS, node=only)
            read_here += await self._verify(dict(page.entries), only, stats)
            cursor = page.next_cursor
            stats.buckets_done = page.buckets_done
            await state.save({"cursor": stats.buckets if cursor is None else cursor,
                              **{name: getattr(stats, name) for name in COUNTERS}})
            if cursor is None:
                break
            if not await control.checkpoint(stats):
                return stats
            if not await self._throttle(control, stats, started, read_here):
                return stats
        await state.save({"last_finished": self.now(), "last_items": stats.items,
                          "last_bad": stats.corrupt + stats.missing})
        await state.forget(*RUN_FIELDS)
        stats.finished = True
        await control.checkpoint(stats)
        stats.interrupted = False  # the run is over; nothing was cut short
        return stats

    async def _verify(self, entries: Mapping[str, tuple[int, ...]], only: int | None,
                      stats: ScrubStats) -> int:
        """Verify the copies of one page's entries; returns the stored bytes read."""
        stats.items += len(entries)
        if not entries:
            return 0
        snap = await self.client.snapshot()
        sem = asyncio.Semaphore(SCRUB_PARALLELISM)
        read = 0

        async def one(bid: str, numbers: tuple[int, ...]) -> bool:
            nonlocal read
            bad = False
            for num in numbers if only is None else (only,):
                node = snap.by_number(num)
                if node is None or not node.readable:
                    stats.unreachable += 1
                    continue
                async with sem:
                    found = await self.client.reader.probe(bid, self.client.node_client(node))
                if found.health is Health.GOOD:
                    assert found.blob is not None
                    stats.copies += 1
                    read += found.blob.stored_bytes
                elif found.health is Health.UNREACHABLE:
                    stats.unreachable += 1
                else:  # a finding, not a failure of the scrub: repair rewrites it
                    bad = True
                    if found.health is Health.CORRUPT:
                        stats.corrupt += 1
                    else:
                        stats.missing += 1
            return bad

        verdicts = await asyncio.gather(*(one(b, n) for b, n in entries.items()))
        bad_ids = [b for b, bad in zip(entries, verdicts, strict=True) if bad]
        if bad_ids:
            await self.client.repair.add(bad_ids)
            stats.queued += len(bad_ids)
            room = EXAMPLES - len(stats.examples)
            stats.examples += sorted(bad_ids)[:max(room, 0)]
        stats.bytes += read
        return read

    async def _throttle(self, control: PassControl, stats: ScrubStats, started: float,
                        read: int) -> bool:
        """Wait until ``read`` bytes are within the rate; False when told to stop."""
        return await throttle(control, stats, rate=self.rate, done=read,
                              elapsed=lambda: self.clock() - started, sleep=self._sleep)

    async def status(self) -> dict[str, Any]:
        """The job hash as an operator wants it (``objmail scrub --status``)."""
        fields = await JobState(self.runner, self.keys, self.job).load()
        return {"running": "started_at" in fields,
                **{k: number(fields, k) if k != "cursor" else integer(fields, k)
                   for k in fields}}
