"""Group commit over a real LMDB store: batching, acknowledgement only after the batch is
on disk, draining on stop, and refusal after stop through the Deferred."""

from __future__ import annotations

import queue
from collections.abc import Iterator, Sequence
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

    def apply_batch(self, ops: Sequence[WriteOp]) -> list[Result]:
        results = self.store.apply_batch(ops)
        self.events.append(("commit", [op.key for op in ops]))  # type: ignore[attr-defined]
        return results

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
