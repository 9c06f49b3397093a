"""The directors' background work: one resumable pass per job, and two ways to drive it.

Theory of operation.  Each job (repair, drain of one node, level) is a
:class:`BackgroundJob` whose :meth:`~BackgroundJob.run_pass` does a bounded amount of work
and returns its :class:`PassStats`.  A pass resumes from the job's persisted state
(:mod:`director.jobstate`: an index cursor, the repair queue's own leases) and saves it
after every page of work, so interrupting a pass (Ctrl-C, a crash, a lost lease, an item
limit) loses at most the item in hand.  Between items the pass calls
:meth:`PassControl.checkpoint`, which renews the job's lease, honours a stop request and
reports progress.

Two drivers run passes:

* :meth:`BackgroundJob.run_once` takes the job's lease (:mod:`director.lease`), runs one
  pass and releases it: the ``objmail`` commands and the tests use it;
* :meth:`BackgroundJob.run_forever` runs ``run_once`` every ``interval`` seconds on a
  Twisted ``LoopingCall`` driven by an injected clock (directord passes its reactor);
  ``LoopingCall`` waits for a pass to end before it schedules the next one, and a pass
  that fails is logged, never allowed to stop the loop.  Given the daemon's
  :class:`~runtime.metrics.JobMetrics`, the loop reports every pass (its end, duration,
  failure) and the pass its progress at each checkpoint: ``directord_job_*{job=...}``.

Several directors can run the same drivers: whoever takes a job's lease runs the pass;
the others find it held (:class:`~director.errors.LeaseHeld`) and try again next time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

from director.errors import DirectorError, LeaseHeld, LeaseLost
from director.jobstate import JobState
from director.lease import Lease, new_token

if TYPE_CHECKING:
    from director.client import BlobClient
    from runtime.metrics import JobMetrics, JobRecorder

log = logging.getLogger(__name__)


@dataclass
class PassStats:
    """What one pass did; each job adds its own counters.

    :param items: blobs (or moves) handled, successfully or not.
    :param total: items known to be waiting when the pass started, if known (progress).
    :param bytes: bytes copied between object servers.
    :param errors: items that failed and were left for a later pass.
    :param interrupted: the pass stopped early (stop request, item limit, lost lease).
    """

    job: str
    items: int = 0
    total: int | None = None
    bytes: int = 0
    errors: int = 0
    interrupted: bool = False
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


S = TypeVar("S", bound=PassStats)


async def throttle(control: PassControl, stats: PassStats, *, rate: float | None,
                   done: float, elapsed: Callable[[], float],
                   sleep: Callable[[float], Awaitable[Any]]) -> bool:
    """Wait until ``done`` units (bytes read) fit in ``rate`` per second of ``elapsed()``
    time, checking in between; False when the pass was told to stop."""
    if rate is None:
        return True
    while (ahead := done / rate - elapsed()) > 0:
        await sleep(min(ahead, 1.0))
        if not await control.checkpoint(stats):
            return False
    return True


class TokenBucket:
    """A rate limit: ``rate`` units per second on average, bursts up to ``burst``.

    :meth:`take` never refuses: it takes the units (running into debt if it must) and
    says how long to wait before going on, so an item larger than the burst (a big blob)
    passes and the items after it wait for it to be paid off.  Time is ``clock()``
    (monotonic seconds; a fake one in tests).

    :param rate: units per second; ``None`` or 0: no limit (:meth:`take` returns 0).
    :param burst: units that may go at once after a quiet spell (default: one second's).
    """

    def __init__(self, rate: float | None, *, clock: Callable[[], float],
                 burst: float | None = None) -> None:
        self.rate = rate or 0.0
        self.burst = burst if burst is not None else self.rate
        self._clock = clock
        self._tokens = self.burst
        self._at = clock()

    def take(self, amount: float) -> float:
        """Take ``amount`` units; returns the seconds to wait before using them."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= amount
        return max(0.0, -self._tokens / self.rate)


class RateLimiter:
    """A total rate and a rate per source (bytes/s moved by level or repair): each
    :meth:`take` waits for both.

    :param total: units per second, all sources together (None/0: no limit).
    :param per_source: units per second from any one source (None/0: no limit).
    """

    def __init__(self, total: float | None, per_source: float | None, *,
                 clock: Callable[[], float]) -> None:
        self._clock = clock
        self.total = TokenBucket(total, clock=clock)
        self.per_source_rate = per_source or 0.0
        self._sources: dict[str, TokenBucket] = {}

    @property
    def limited(self) -> bool:
        return self.total.rate > 0 or self.per_source_rate > 0

    def take(self, source: str, amount: float) -> float:
        """Take ``amount`` units from ``source``; the seconds to wait before moving them."""
        wait = self.total.take(amount)
        if self.per_source_rate > 0:
            bucket = self._sources.get(source)
            if bucket is None:
                bucket = self._sources[source] = TokenBucket(self.per_source_rate,
                                                             clock=self._clock)
            wait = max(wait, bucket.take(amount))
        return wait


class PassControl:
    """What a pass consults between items.

    :param lease: the job's lease, renewed at each checkpoint (None: not leased, for
        passes run directly by tests).
    :param max_items: stop after this many items (tests interrupt passes with it).
    :param stop: returns True when the pass should stop (an operator's Ctrl-C).
    :param progress: called with the stats at each checkpoint.
    """

    def __init__(self, *, lease: Lease | None = None, max_items: int | None = None,
                 stop: Callable[[], bool] | None = None,
                 progress: Callable[[PassStats], None] | None = None) -> None:
        self.lease = lease
        self.max_items = max_items
        self._stop = stop
        self._progress = progress
        self.lost = False

    async def checkpoint(self, stats: PassStats) -> bool:
        """True when the pass may go on to its next item; False to stop now (and
        ``stats.interrupted`` is set)."""
        if self._progress is not None:
            self._progress(stats)
        go_on = not (self._stop is not None and self._stop()) and not (
            self.max_items is not None and stats.items >= self.max_items)
        if go_on and self.lease is not None:
            try:
                await self.lease.keep()
            except LeaseLost as exc:
                log.warning("%s: %s; stopping the pass", stats.job, exc)
                self.lost = True
                go_on = False
        if not go_on:
            stats.interrupted = True
        return go_on

    def state(self, job: BackgroundJob[Any]) -> JobState:
        """The job's progress hash, written under this control's lease."""
        return JobState(job.runner, job.keys, job.job, lease=self.lease)


class BackgroundJob(ABC, Generic[S]):
    """A background job of one director.

    :param client: the director's blob client (index, registry, repair queue, object
        server connections, codec).
    :param clock: monotonic seconds (lease renewals, durations).
    :param now: wall-clock seconds (times saved in Redis).
    """

    #: The job's name: its lease and state keys.
    job: str

    def __init__(self, client: BlobClient, *, clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], float] = time.time, token: str | None = None) -> None:
        self.client = client
        self.dconf = client.dconf
        self.index = client.index
        self.runner = client.index.runner
        self.keys = client.index.keys
        self.clock = clock
        self.now = now
        self.token = token or new_token()

    @abstractmethod
    async def run_pass(self, control: PassControl) -> S:
        """Do one bounded, resumable pass of work."""

    def lease(self) -> Lease:
        return Lease(self.runner, self.keys, self.job, ttl=self.dconf.lease_ttl,
                     token=self.token, clock=self.clock)

    async def run_once(self, *, max_items: int | None = None,
                       stop: Callable[[], bool] | None = None,
                       progress: Callable[[PassStats], None] | None = None) -> S:
        """Take the job's lease, run one pass, give the lease back.

        :raises LeaseHeld: another director runs this job now.
        :raises LeaseLost: the lease ran out during the pass and another director took
            the job over (the pass stopped where it was; its successor resumes).
        """
        lease = self.lease()
        if not await lease.acquire():
            raise LeaseHeld(self.job, await lease.holder())
        started = self.clock()
        try:
            stats = await self.run_pass(PassControl(lease=lease, max_items=max_items,
                                                    stop=stop, progress=progress))
        finally:
            try:
                await lease.release()
            except DirectorError as exc:  # it runs out by itself
                log.warning("%s: could not release the lease: %s", self.job, exc)
        stats.seconds = round(self.clock() - started, 3)
        return stats

    def run_forever(self, clock: IReactorTime, interval: float,
                    jobs: JobMetrics | None = None) -> Loop:
        """Run :meth:`run_once` every ``interval`` seconds until the returned loop is
        stopped; the first pass starts after one interval.

        :param jobs: where the passes are reported (None: nowhere).
        """
        recorder = jobs.job(self.job) if jobs is not None else None

        async def once_logged() -> None:
            stats = await self.run_once(progress=None if recorder is None else (
                lambda s: recorder.progress(s.items, s.total)))
            if stats.items or stats.errors:
                log.info("%s: %s", self.job, stats)

        loop = Loop(clock, interval, self.job, once_logged, recorder)
        loop.start()
        return loop


class Loop:
    """Calls ``work`` (a coroutine function, run on the asyncio loop the reactor shares)
    every ``interval`` seconds on a ``LoopingCall`` driven by ``clock``.

    A run that finds the job's lease held is skipped quietly; one that fails is logged;
    neither stops the loop.  :meth:`stop` also cancels a run in progress, whose
    ``finally`` clauses still release its lease.

    :param recorder: told of each run: its start, then its success, its failure (an
        error, or a lease lost midway), or that it did not run (lease held elsewhere,
        cancelled).
    """

    def __init__(self, clock: IReactorTime, interval: float, name: str,
                 work: Callable[[], Awaitable[object]],
                 recorder: JobRecorder | None = None) -> None:
        if interval <= 0:
            raise ValueError(f"{name}: interval must be positive, got {interval}")
        self.clock = clock
        self.interval = interval
        self.name = name
        self._work = work
        self.recorder = recorder
        self.runs = 0
        self.failures = 0
        self._task: asyncio.Task[None] | None = None
        self._call = task.LoopingCall(self._tick)
        self._call.clock = clock

    @property
    def running(self) -> bool:
        return bool(self._call.running)

    def start(self) -> None:
        done = self._call.start(self.interval, now=False)
        done.addErrback(lambda f: log.error("%s: loop ended: %s", self.name,
                                            f.getErrorMessage()))

    async def stop(self) -> None:
        if self._call.running:
            self._call.stop()
        running = self._task
        if running is not None and not running.done():
            running.cancel()
            await running

    def _tick(self) -> defer.Deferred[None]:
        self._task = asyncio.ensure_future(self._guarded())
        return defer.Deferred.fromFuture(self._task)

    async def _guarded(self) -> None:
        self.runs += 1
        recorder = self.recorder
        if recorder is not None:
            recorder.started()
        try:
            await self._work()
        except LeaseHeld as exc:
            log.debug("%s", exc)
            if recorder is not None:
                recorder.abandoned()
        except LeaseLost as exc:
            log.warning("%s: %s; another director carries on", self.name, exc)
            if recorder is not None:
                recorder.failed()
        except asyncio.CancelledError:
            # Only stop() cancels: the task is this loop's own and ends here.
            log.info("%s: pass cancelled (stopping)", self.name)
            if recorder is not None:
                recorder.abandoned()
        except Exception:
            self.failures += 1
            log.exception("%s: background pass failed; retrying in %gs", self.name,
                          self.interval)
            if recorder is not None:
                recorder.failed()
        else:
            if recorder is not None:
                recorder.succeeded()
