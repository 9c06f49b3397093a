"""Group commit: one writer thread, one durable transaction per batch of queued writes.

Theory of operation
-------------------
The reactor thread queues write ops, each with the plain function to call with its result
(:meth:`GroupCommitter.enqueue`; :meth:`GroupCommitter.submit` wraps it in a Deferred for
callers that want one).  The committer thread waits for the store's write lock (other worker processes
may hold it), then takes every op waiting (up to ``max_batch``), applies them in one write
transaction of the store, commits it, and hands all their outcomes back together once the
commit is on disk, through ``deliver`` (the daemon passes a function that runs them on the
reactor thread).  So a result exists only once its write is durable, and concurrent writers
share the fsync.  There is no timer: a batch is whatever arrived while the previous commit
(of this worker or another) ran.  :meth:`GroupCommitter.run` explains why one fdatasync per
batch suffices.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from twisted.internet import defer

from objstore.errors import StorageError
from objstore.items import Callback, Result, WriteOp
from runtime import errors as kinds

log = logging.getLogger(__name__)

#: Receives a batch's ``(callback, result)`` pairs once the batch is durable.
Deliver = Callable[[list[tuple[Callback, Result]]], None]


class ShuttingDown(StorageError, kinds.Unavailable):
    """A write arrived after the committer was told to stop."""


class BatchStore(Protocol):
    """What the committer needs of a store."""

    #: ``commits`` counts the write transactions committed.
    counters: collections.Counter[str]

    def commit_queued(self, take: Callable[[], Sequence[WriteOp]]
                      ) -> tuple[Sequence[WriteOp], list[Result], int]:
        """Wait for the write lock, then apply and commit the ops ``take`` returns in one
        transaction (its meta page may stay unflushed until a later commit or
        :meth:`sync`): the ops, their results and the transaction id (0: no ops)."""

    def last_txnid(self) -> int:
        """The newest transaction whose meta page is written, by any process."""

    def sync(self) -> None:
        """Flush the last commit completely."""


class GroupCommitter(threading.Thread):
    """The writer thread: drains the queue in batches, one durable transaction each."""

    def __init__(self, store: BatchStore, deliver: Deliver, max_batch: int) -> None:
        super().__init__(name="objstore-group-commit", daemon=True)
        self._store = store
        self._deliver = deliver
        self._max_batch = max_batch
        self._queue: collections.deque[tuple[WriteOp, Callback]] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._taken: Sequence[tuple[WriteOp, Callback]] = []
        #: Commits made; the most ops one carried; explicit syncs; and batches another
        #: process's later commit made durable (no sync of our own needed).
        self.batches = 0
        self.largest_batch = 0
        self.syncs = 0
        self.synced_by_others = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    def enqueue(self, op: WriteOp, done: Callback) -> None:
        """Queue ``op``; ``done`` is called with its result (through ``deliver``, once per
        batch for all its ops) once it is durable.  No Deferred: a durable write's
        completion is one plain call, the hot path of every set.

        :raises ShuttingDown: after :meth:`stop`.
        """
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the store is shutting down")
            queue = self._queue
            if not queue:
                # The thread waits only while the queue is empty (it looks under this
                # lock), so only the first op of a batch has to wake it; notify() is
                # not free (Python code, a deque per call).
                self._cond.notify()
            queue.append((op, done))

    def submit(self, op: WriteOp) -> defer.Deferred[Result]:
        """:meth:`enqueue` with a Deferred: it fires (through ``deliver``) once ``op`` is
        durable, or has already failed with :class:`ShuttingDown` after :meth:`stop`."""
        d: defer.Deferred[Result] = defer.Deferred()
        try:
            self.enqueue(op, d.callback)
        except ShuttingDown:
            return defer.fail()
        return d

    def stop(self, timeout: float | None = 30.0) -> None:
        """Commit what is queued, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self.join(timeout)

    def run(self) -> None:
        """Commit batches; acknowledge each once its commit is certainly on disk.

        The LMDB environment runs with MDB_NOMETASYNC: a commit fdatasync()s its data pages
        (and with them every page of the file written before) and then only writes its meta
        page.  So transaction T is on disk once any later transaction's meta page is
        written, by this process or another sharing the environment: that commit's
        fdatasync ran after T's meta page was written (LMDB's write lock orders them).
        A batch's outcomes are therefore delivered after the next commit, or, when nothing
        is queued, at once if another worker's commit has passed it, or else after an
        explicit ``sync()``: one fsync per batch under load instead of two, and STORED
        still means on disk.
        """
        store = self._store
        unsynced: list[tuple[Callback, Result]] = []
        unsynced_txnid = 0
        while True:
            with self._cond:
                while not self._queue and not self._stopping and not unsynced:
                    self._cond.wait()
                if not self._queue and self._stopping and not unsynced:
                    return
                idle = not self._queue
            if idle:
                # No lock needed to look: waiting for another worker's commit would tie
                # our replies to its CPU time too; a sync needs none.
                if store.last_txnid() > unsynced_txnid:
                    self.synced_by_others += 1  # a later commit's fdatasync covered ours
                    store.counters["synced_by_others"] += 1
                else:
                    store.sync()
                    self.syncs += 1
                    store.counters["syncs"] += 1
                self._hand_over(unsynced)
                unsynced = []
                continue
            self._taken = []
            ops, results, txnid = store.commit_queued(self._take)
            if not ops:
                continue
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(ops))
            if unsynced and txnid <= unsynced_txnid:
                store.sync()  # nothing was committed, so nothing flushed the old meta
            self._hand_over(unsynced)
            unsynced = [(cb, res) for (_, cb), res in zip(self._taken, results, strict=True)]
            unsynced_txnid = txnid

    def _take(self) -> list[WriteOp]:
        """The ops queued now (up to ``max_batch``); called with the write lock held."""
        with self._cond:
            queue = self._queue
            if len(queue) <= self._max_batch:
                # All of it: swap the deque, so the lock (which enqueue() waits for on
                # the reactor thread) is held for no loop.
                self._queue = collections.deque()
                taken: collections.deque[tuple[WriteOp, Callback]] | list[
                    tuple[WriteOp, Callback]] = queue
            else:
                taken = [queue.popleft() for _ in range(self._max_batch)]
        self._taken = taken
        return [op for op, _ in taken]

    def _hand_over(self, done: list[tuple[Callback, Result]]) -> None:
        if done:
            try:
                self._deliver(done)
            except Exception:  # the reactor may be gone during shutdown
                log.exception("delivering %d write outcomes failed", len(done))


__all__ = ["BatchStore", "Deliver", "GroupCommitter", "ShuttingDown"]
