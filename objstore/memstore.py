"""The in-memory backend: the same item semantics over a dict, with no durability.

It exists to prove the seam between :mod:`objstore.items` and a backend (Swift's
``mem_diskfile`` is the model) and to run the semantic unit tests of the items and the
command handler fast.  It never stands in for LMDB in system tests or in objstored.

Records are kept as :class:`~objstore.record.Record` objects, so nothing is ever corrupt
and nothing is quarantined.  A write transaction collects its changes in an overlay that
:meth:`MemStore.apply_batch` merges only when every op of the batch ran, so a failing op
leaves the store as it was (as an aborted LMDB transaction does).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from objstore.items import BaseStore, ExpireOp, Outcome, Result, WriteOp, alive
from objstore.record import CorruptRecord, Record
from objstore.stats import count_commit

log = logging.getLogger(__name__)

class _MemTxn:
    """One write transaction over a :class:`MemStore` (:class:`~objstore.items.Txn`)."""

    def __init__(self, store: MemStore, now: int) -> None:
        self.now = now
        self.max_item_size = store.max_item_size
        self.counters = store.counters
        self.oldest_live = store.oldest_live
        self.cas = store.cas
        self.cleared = False
        self.changes: dict[bytes, Record | None] = {}
        self._items = store.items

    def get(self, key: bytes, with_value: bool = True) -> Record | None:
        if key in self.changes:
            return self.changes[key]
        return None if self.cleared else self._items.get(key)

    def header(self, key: bytes) -> Record | None:
        return self.get(key)

    def iterate(self, start: bytes) -> Iterator[tuple[bytes, Record | None]]:
        keys = set(self.changes) if self.cleared else set(self._items) | set(self.changes)
        for key in sorted(keys):
            if key >= start:
                rec = self.get(key)
                if rec is not None:
                    yield key, rec

    def put(self, key: bytes, value: bytes, flags: int, exptime: int, bits: int = 0,
            cas: int | None = None) -> Record:
        if cas is None:
            self.cas += 1
            cas = self.cas
        rec = Record(key, value, flags, exptime, cas, self.now, bits)
        self.changes[key] = rec
        return rec

    def delete(self, key: bytes) -> bool:
        if self.get(key) is None:
            return False
        self.changes[key] = None  # deleted in this transaction
        return True

    def quarantine(self, key: bytes, reason: CorruptRecord | None) -> None:
        # Records in memory are never corrupt, so no read ever asks for this.
        raise AssertionError(f"quarantine of {key!r} in a memory store")

    def clear(self) -> None:
        self.cleared = True
        self.changes.clear()
        self.oldest_live = 0

    def set_oldest_live(self, at: int) -> None:
        self.oldest_live = at


class MemStore(BaseStore):
    """Items in a dict: the :class:`~objstore.items.ItemStore` of the fast tests.

    :param max_item_size: largest value append/prepend may produce.
    :param clock: unix time source.
    """

    def __init__(self, *, max_item_size: int, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.path = Path(":memory:")
        self.max_item_size = max_item_size
        self._clock = clock
        self.items: dict[bytes, Record] = {}
        self.oldest_live = 0
        self.cas = 0

    # -- reads ----------------------------------------------------------------------------

    def get_many(self, keys: Sequence[bytes]) -> list[Record | None]:
        """Live records of ``keys``; dead ones read as None and are queued for removal."""
        now = int(self._clock())
        out: list[Record | None] = []
        later: list[WriteOp] = []
        for key in keys:
            rec = self.items.get(key)
            if rec is not None and not alive(rec, now, self.oldest_live):
                self.counters["get_expired"] += 1
                later.append(ExpireOp(key, rec.cas))
                rec = None
            out.append(rec)
        for op in later:
            self.submit(op)
        return out

    def get_value(self, key: bytes) -> tuple[int, int, bytes] | None:
        rec = self.get(key)
        return None if rec is None else (rec.flags, rec.cas, rec.value)

    def scan(self, after: bytes = b"", limit: int = 1000) -> list[tuple[Record, int]]:
        now = int(self._clock())
        out: list[tuple[Record, int]] = []
        for key in sorted(self.items):
            if len(out) == limit:
                break
            rec = self.items[key]
            if key > after and alive(rec, now, self.oldest_live):
                out.append((Record(key, b"", rec.flags, rec.exptime, rec.cas, rec.mtime,
                                   rec.bits), rec.size))
        return out

    def info(self) -> dict[str, int]:
        """Items and bytes as LMDB counts them; the ``lmdb_*`` figures are 0."""
        figures = dict.fromkeys(("lmdb_map_size", "lmdb_page_size", "lmdb_used_pages",
                                 "lmdb_used_bytes", "lmdb_last_txnid", "lmdb_readers",
                                 "lmdb_max_readers", "lmdb_depth"), 0)
        figures.update(curr_items=len(self.items),
                       bytes=sum(rec.size for rec in self.items.values()),
                       quarantined_items=0)
        return figures

    # -- writes ---------------------------------------------------------------------------

    def apply_batch(self, ops: Sequence[WriteOp]) -> list[Result]:
        """Apply ops in one transaction; if one fails, each is retried alone."""
        tx = _MemTxn(self, int(self._clock()))
        try:
            results = [op.apply(tx) for op in ops]
        except Exception:
            if len(ops) == 1:
                log.exception("write op %r failed", ops[0])
                return [Result(Outcome.FAILED)]
            return [self.apply_batch([op])[0] for op in ops]
        if tx.cleared:
            self.items.clear()
        for key, rec in tx.changes.items():
            if rec is None:
                self.items.pop(key, None)
            else:
                self.items[key] = rec
        self.oldest_live = tx.oldest_live
        self.cas = tx.cas
        count_commit(self.counters, 0.0, len(ops))  # nothing to flush: no time to count
        return results

    def sync(self) -> None:
        """Nothing to flush: a memory store is never durable."""

    def close(self) -> None:
        self.close_committer()


__all__ = ["MemStore"]
