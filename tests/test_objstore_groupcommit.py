"""Group commit over a real LMDB store: batching, acknowledgement only after the batch is
on disk, draining on stop, and refusal after stop through the Deferred."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from objstore.groupcommit import GroupCommitter, ShuttingDown
from objstore.items import Callback, Outcome, Result, StoreOp, WriteOp
from objstore.lmdbstore import LmdbStore
from tests.objstore_harness import MIB, FakeClock

Batch = list[tuple[Callback, Result]]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LmdbStore]:
    s = LmdbStore(tmp_path / "db", map_size=64 * MIB, max_item_size=MIB, clock=FakeClock())
    yield s
    s.close()


def run_delivered(batches: queue.Queue[Batch], count: int) -> None:
    """Run ``count`` delivered callbacks on this thread, as the reactor would."""
    while count > 0:
        batch = batches.get(timeout=30)
        for callback, result in batch:
            callback(result)
        count -= len(batch)


def test_group_commit_batches_concurrent_writes(store: LmdbStore) -> None:
    """Writes submitted together are committed in few transactions, each acknowledged once
    durable, in submission order."""
    batches: queue.Queue[Batch] = queue.Queue()
    committer = store.start(batches.put, group_commit_max=64)
    delivered: list[tuple[int, Result]] = []
    n = 500
    for i in range(n):
        d = store.write(StoreOp(b"set", b"k%d" % i, b"v%d" % i))
        d.addCallback(lambda res, i: delivered.append((i, res)), i)
    run_delivered(batches, n)
    assert [i for i, _ in delivered] == list(range(n))
    assert all(res.outcome is Outcome.STORED for _, res in delivered)
    assert committer.batches < n / 4
    assert committer.largest_batch <= 64
    store.close_committer()
    assert store.get(b"k499").value == b"v499"  # type: ignore[union-attr]


class _Recording:
    """The real store, with each commit and sync noted in order (on the committer thread)."""

    def __init__(self, store: LmdbStore, events: list[tuple[str, list[bytes]]]) -> None:
        self.store = store
        self.counters = store.counters
        self.events = events

    def commit_queued(self, take: Callable[[], Sequence[WriteOp]]
                      ) -> tuple[Sequence[WriteOp], list[Result], int]:
        ops, results, txnid = self.store.commit_queued(take)
        if ops:
            self.events.append(("commit", [op.key for op in ops]))  # type: ignore[attr-defined]
        return ops, results, txnid

    def last_txnid(self) -> int:
        return self.store.last_txnid()

    def sync(self) -> None:
        self.store.sync()
        self.events.append(("sync", []))


def test_outcomes_wait_for_the_next_commit_or_a_sync(store: LmdbStore) -> None:
    """A batch's outcomes are handed over only after a later commit or an explicit sync
    has flushed its meta page: STORED means on disk, with one fsync per batch."""
    events: list[tuple[str, list[bytes]]] = []
    batches: queue.Queue[Batch] = queue.Queue()

    def deliver(batch: Batch) -> None:
        events.append(("deliver", [res.record.key for _, res in batch  # type: ignore[union-attr]
                                   ]))
        batches.put(batch)

    committer = GroupCommitter(_Recording(store, events), deliver, 16)
    keys = [b"k%d" % i for i in range(100)]
    for key in keys[:50]:
        committer.submit(StoreOp(b"set", key, b"v"))
    committer.start()
    for key in keys[50:]:
        committer.submit(StoreOp(b"set", key, b"v"))
    committer.stop()
    delivered: list[bytes] = []
    for at, (kind, batch_keys) in enumerate(events):
        if kind != "deliver":
            continue
        delivered += batch_keys
        committed = max(i for i, e in enumerate(events[:at])
                        if e[0] == "commit" and batch_keys[0] in e[1])
        assert any(kind in ("commit", "sync") for kind, _ in events[committed + 1:at]), events
    assert sorted(delivered) == sorted(keys)
    run_delivered(batches, len(keys))


def test_ops_arriving_while_the_write_lock_is_held_join_one_commit(store: LmdbStore) -> None:
    """The committer takes its batch only once LMDB's write lock is its own, so every op
    queued while another writer held the lock goes into one commit."""
    batches: queue.Queue[Batch] = queue.Queue()
    committer = store.start(batches.put, group_commit_max=256)
    holding, release = threading.Event(), threading.Event()

    def other_writer() -> None:
        with store.env.begin(write=True):  # another worker's commit, in effect
            holding.set()
            release.wait(30)

    other = threading.Thread(target=other_writer)
    other.start()
    holding.wait(30)
    for i in range(50):
        store.submit(StoreOp(b"set", b"k%d" % i, b"v"))
    release.set()
    other.join()
    run_delivered(batches, 50)
    assert (committer.batches, committer.largest_batch) == (1, 50)
    store.close_committer()


def _commit_elsewhere(path: Path) -> None:
    """One write transaction by another process on the same environment."""
    subprocess.run([sys.executable, "-c", (
        "import lmdb, sys; env = lmdb.open(sys.argv[1], max_dbs=4, metasync=False); "
        "db = env.open_db(b'other'); "
        "txn = env.begin(write=True, db=db); txn.put(b'k', b'v'); txn.commit()"),
        str(path)], check=True, timeout=60)


class _OtherProcessCommits(_Recording):
    """The first time the committer looks for a later commit, another process makes one."""

    def last_txnid(self) -> int:
        if not any(kind == "other" for kind, _ in self.events):
            _commit_elsewhere(self.store.path)
            self.events.append(("other", []))
        return self.store.last_txnid()


@pytest.mark.system
def test_a_later_commit_by_another_process_makes_a_batch_durable(store: LmdbStore) -> None:
    """With nothing queued, a batch whose commit another process's later commit has passed
    is acknowledged without a sync of its own (that commit's fdatasync covered it); one
    that nobody passed waits for an explicit sync."""
    events: list[tuple[str, list[bytes]]] = []
    batches: queue.Queue[Batch] = queue.Queue()

    def deliver(batch: Batch) -> None:
        events.append(("deliver", [res.record.key for _, res in batch  # type: ignore[union-attr]
                                   ]))
        batches.put(batch)

    committer = GroupCommitter(_OtherProcessCommits(store, events), deliver, 16)
    committer.start()
    committer.submit(StoreOp(b"set", b"a", b"v"))
    run_delivered(batches, 1)
    assert [kind for kind, _ in events] == ["commit", "other", "deliver"]
    assert (committer.syncs, committer.synced_by_others) == (0, 1)
    committer.submit(StoreOp(b"set", b"b", b"v"))
    run_delivered(batches, 1)
    assert [kind for kind, _ in events[3:]] == ["commit", "sync", "deliver"]
    assert (committer.syncs, committer.synced_by_others) == (1, 1)
    committer.stop()
    assert store.get(b"a") is not None and store.get(b"b") is not None


def test_stop_commits_what_is_queued(store: LmdbStore) -> None:
    """stop() commits and acknowledges every op queued before it, then ends the thread."""
    batches: queue.Queue[Batch] = queue.Queue()
    committer = GroupCommitter(store, batches.put, 8)
    outcomes: list[Outcome] = []
    for i in range(20):
        committer.submit(StoreOp(b"set", b"k%d" % i, b"v")).addCallback(
            lambda res: outcomes.append(res.outcome))
    committer.start()
    committer.stop()
    assert not committer.is_alive()
    run_delivered(batches, 20)
    assert outcomes == [Outcome.STORED] * 20
    assert store.info()["curr_items"] == 20


def test_submit_after_stop_fails_through_the_deferred(store: LmdbStore) -> None:
    """An op submitted after stop() is refused by a failed Deferred, never by raising, and
    is not applied."""
    committer = GroupCommitter(store, lambda batch: None, 8)
    committer.start()
    committer.stop()
    d = committer.submit(StoreOp(b"set", b"late", b"v"))
    errors: list[type[BaseException]] = []
    d.addErrback(lambda f: errors.append(f.trap(ShuttingDown)))
    assert errors == [ShuttingDown]
    assert store.get(b"late") is None
