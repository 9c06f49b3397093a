"""Group commit: one writer thread, one durable transaction per batch of queued writes.

Theory of operation
-------------------
The reactor thread queues write ops (:meth:`GroupCommitter.submit`, which returns a
Deferred).  The committer thread takes every op waiting (up to ``max_batch``), applies them
in one write transaction of the store, commits it, and hands all their outcomes back
together once the commit is on disk, through ``deliver`` (the daemon passes a function that
runs them on the reactor thread).  So a result exists only once its write is durable, and
concurrent writers share the fsync.  :meth:`GroupCommitter.run` explains why one fdatasync
per batch suffices.
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

    def apply_batch(self, ops: Sequence[WriteOp]) -> list[Result]:
        """Apply and commit ``ops`` in one transaction (its meta page may stay unflushed
        until the next commit or :meth:`sync`)."""

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
        self.batches = 0
        self.largest_batch = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, op: WriteOp) -> defer.Deferred[Result]:
        """Queue ``op``; the Deferred fires (through ``deliver``) once it is durable, or has
        already failed with :class:`ShuttingDown` after :meth:`stop`."""
        d: defer.Deferred[Result] = defer.Deferred()
        with self._cond:
            if self._stopping:
                return defer.fail(ShuttingDown("the store is shutting down"))
            self._queue.append((op, d.callback))
            self._cond.notify()
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
        but only writes its meta page.  That meta page reaches the disk with the *next*
        commit's fdatasync (same file) or with an explicit ``sync()`` when nothing else is
        queued.  So a batch's outcomes are delivered after the following commit or sync:
        one fsync per batch under load instead of two, and STORED still means on disk.
        """
        queue = self._queue
        store = self._store
        unsynced: list[tuple[Callback, Result]] = []
        while True:
            with self._cond:
                while not queue and not self._stopping and not unsynced:
                    self._cond.wait()
                if not queue and self._stopping and not unsynced:
                    return
                batch = [queue.popleft() for _ in range(min(len(queue), self._max_batch))]
            if not batch:
                store.sync()
                self._hand_over(unsynced)
                unsynced = []
                continue
            commits = store.counters["commits"]
            results = store.apply_batch([op for op, _ in batch])
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(batch))
            if unsynced and store.counters["commits"] == commits:
                store.sync()  # nothing was committed, so nothing flushed the old meta
            self._hand_over(unsynced)
            unsynced = [(cb, res) for (_, cb), res in zip(batch, results, strict=True)]

    def _hand_over(self, done: list[tuple[Callback, Result]]) -> None:
        if done:
            try:
                self._deliver(done)
            except Exception:  # the reactor may be gone during shutdown
                log.exception("delivering %d write outcomes failed", len(done))


__all__ = ["BatchStore", "Deliver", "GroupCommitter", "ShuttingDown"]
