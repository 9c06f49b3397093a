"""Group commit for deliveries: concurrent commits share one PostgreSQL transaction.

Theory of operation
-------------------
PostgreSQL's cost of a delivery is mostly per transaction (BEGIN, COMMIT and its WAL
flush): the same mail costs it less than half when committed 16 at a time (BENCHMARKS.md,
issue 13).  LMTP's deliveries arrive one per transaction, on many connections, so
:class:`GroupCommitter` (one per imapd process, shared by its LMTP connections) gathers the
commits that wait at the same moment into one transaction of
:meth:`metadata.delivery.Deliverer.commit_batch`.

There is no timer, as in :mod:`objstore.groupcommit`: a commit that finds a lane free runs
at once, alone, through the single-delivery path (:meth:`Deliverer.commit`: no added
latency when idle); commits that arrive while the lanes are busy wait, and when a lane's
commit finishes it takes everything waiting (up to ``max_batch``) as its next batch.  So
batches grow with the load, and only with it.

What holds for each delivery is what holds for a lone commit:

* its caller gets its :class:`~metadata.delivery.Delivered` (LMTP's 250) only after the
  transaction holding it committed;
* a batch that fails for any reason (one recipient's mailbox gone or over quota, a
  constraint, the gc fence, a deadlock) committed nothing, and each of its deliveries is
  then committed alone (concurrently, as they were before group commit) and answered by its
  own outcome;
* the gc fence is the batch transaction's last step, over all its blobs, from the oldest
  gc generation any of them read: a refusal fails the batch, and the retries fence each
  delivery alone, exactly as single commits do;
* deliveries to one mailbox in one batch get their UIDs in arrival order; one connection
  has at most one message in flight, so its order is unchanged;
* quotas are charged by the insert as before, per user (a user's several messages in one
  batch are charged together, and alone again on a retry).

A caller that goes away (cancelled) while waiting is dropped from its batch if the batch has
not started; once started, its delivery may still commit unacknowledged, as when a
connection drops after COMMIT and before the 250 (the MTA delivers again).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass

from metadata.delivery import Delivered, Deliverer, PreparedMessage
from metadata.records import User

log = logging.getLogger(__name__)

#: Deliveries per batch at most: the import's batch size (BENCHMARKS.md, issue 13), small
#: enough that mailbox rows stay locked for one short transaction.
MAX_BATCH = 16
#: Commits in flight at once per process.  One lane makes the largest batches; a second
#: keeps deliveries moving while one transaction waits for a mailbox lock (a long COPY
#: into an INBOX, say) without giving up batching under load.
LANES = 2


@dataclass
class _Waiting:
    user: User
    prepared: PreparedMessage
    mailbox: str
    mailbox_id: int
    future: asyncio.Future[Delivered]


class GroupCommitter:
    """Commits deliveries alone when idle, together in one transaction when they wait.

    :param deliverer: commits them (:meth:`Deliverer.commit`, :meth:`Deliverer.commit_batch`).
    """

    def __init__(self, deliverer: Deliverer, *, max_batch: int = MAX_BATCH,
                 lanes: int = LANES) -> None:
        self.deliverer = deliverer
        self.max_batch = max_batch
        self.lanes = lanes
        self._queue: collections.deque[_Waiting] = collections.deque()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Lanes running: counted down by the lane itself as it finds the queue empty (a
        #: done task's callbacks run later, when a new arrival must already see it gone).
        self._running = 0
        #: How many transactions carried n deliveries, by n (1: the single path, taken by a
        #: lone delivery and by each delivery of a failed batch; a failed batch counts too).
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        #: Batches that failed and were committed one delivery at a time.
        self.retried = 0

    @property
    def waiting(self) -> int:
        return len(self._queue)

    async def commit(self, user: User, prepared: PreparedMessage, *, mailbox: str,
                     mailbox_id: int) -> Delivered:
        """Commit ``prepared`` (its blobs stored) into ``user``'s mailbox, alone or with
        whatever else waits; returns once the transaction holding it committed.

        :raises: what :meth:`Deliverer.commit` raises for this delivery alone.
        """
        future: asyncio.Future[Delivered] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiting(user, prepared, mailbox, mailbox_id, future))
        if self._running < self.lanes:
            self._running += 1
            task = asyncio.ensure_future(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self) -> None:
        """One lane: commit what waits, batch after batch, until nothing does."""
        try:
            await self._lane()
        finally:
            self._running -= 1

    async def _lane(self) -> None:
        queue = self._queue
        while queue:
            batch: list[_Waiting] = []
            while queue and len(batch) < self.max_batch:
                one = queue.popleft()
                if not one.future.done():  # its caller went away: not started, dropped
                    batch.append(one)
            if not batch:
                continue
            try:
                await self._commit(batch)
            except BaseException:  # cancelled (shutdown): nobody is left waiting forever
                for one in batch:
                    if not one.future.done():
                        one.future.cancel()
                raise

    async def _commit(self, batch: list[_Waiting]) -> None:
        if len(batch) > 1:
            self.batch_sizes[len(batch)] += 1
            try:
                done = await self.deliverer.commit_batch(
                    [(w.user, w.prepared, w.mailbox, w.mailbox_id) for w in batch])
            except Exception as exc:
                # Nothing committed; whose failure it was is found by committing each alone.
                self.retried += 1
                log.info("a batch of %d deliveries failed (%s: %s); committing each alone",
                         len(batch), type(exc).__name__, exc)
            else:
                for one, delivered in zip(batch, done, strict=True):
                    if not one.future.done():
                        one.future.set_result(delivered)
                return
        # Alone, at once: one that waits for a lock (or fails) does not hold the others up.
        await asyncio.gather(*(self._alone(one) for one in batch))

    async def _alone(self, one: _Waiting) -> None:
        self.batch_sizes[1] += 1
        try:
            delivered = await self.deliverer.commit(one.user, one.prepared,
                                                    mailbox=one.mailbox,
                                                    mailbox_id=one.mailbox_id)
        except Exception as exc:
            if not one.future.done():
                one.future.set_exception(exc)
        else:
            if not one.future.done():
                one.future.set_result(delivered)


__all__ = ["LANES", "MAX_BATCH", "GroupCommitter"]
