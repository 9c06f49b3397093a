"""The LMDB backend: memcached items as checksummed records on disk.

Theory of operation
-------------------
One LMDB environment (a directory) holds three named databases: ``items`` (key -> record,
in :mod:`objstore.record`'s format), ``meta`` (the CAS counter, byte count, delayed-flush
time, each a little-endian u64) and ``quarantine`` (records that failed their checksum,
kept for inspection and never served).

Reads run on the caller's thread in short read transactions and verify every record.  A
corrupt record is logged, counted, moved to ``quarantine`` and reported as a miss.  A dead
record (expired or flushed) reads as a miss and is removed lazily.

Writes are :class:`~objstore.items.WriteOp` objects applied by :meth:`LmdbStore.apply_batch`
in one write transaction (:class:`_LmdbTxn` implements :class:`~objstore.items.Txn`).  LMDB
serialises writers with a file lock, so ops are atomic even across processes sharing the
environment.  :meth:`LmdbStore.start` runs them through a
:class:`~objstore.groupcommit.GroupCommitter`.
"""

from __future__ import annotations

import collections
import logging
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final

import lmdb

from objstore.groupcommit import Deliver, GroupCommitter
from objstore.items import (
    BaseStore,
    ExpireOp,
    Outcome,
    QuarantineOp,
    Result,
    WriteOp,
    alive,
)
from objstore.record import (
    HEADER,
    HEADER_SIZE,
    PREFIX_SIZE,
    RECORD_VERSION,
    CorruptRecord,
    Record,
    crc32,
    decode_header,
    decode_record,
    encode_record,
)
from objstore.stats import count_commit

log = logging.getLogger(__name__)

_META_CAS: Final = b"cas"
_META_BYTES: Final = b"used_bytes"
_META_OLDEST: Final = b"oldest_live"
_Q: Final = struct.Struct("<Q")


def _read_u64(txn: lmdb.Transaction, key: bytes, db: lmdb._Database) -> int:
    raw = txn.get(key, db=db)
    return _Q.unpack(raw)[0] if raw is not None else 0


class _LmdbTxn:
    """One LMDB write transaction as the item ops see it (:class:`~objstore.items.Txn`).

    The CAS counter and byte count are read lazily and written back once by :meth:`finish`.
    """

    def __init__(self, txn: lmdb.Transaction, items: lmdb._Database, meta: lmdb._Database,
                 quarantine_db: lmdb._Database, now: int, max_item_size: int,
                 counters: collections.Counter[str],
                 report_corrupt: Callable[[bytes, CorruptRecord], None]) -> None:
        self.txn = txn
        self.now = now
        self.max_item_size = max_item_size
        self.counters = counters
        self._items = items
        self._meta = meta
        self._quarantine = quarantine_db
        self._report_corrupt = report_corrupt
        self._cas: int | None = None
        self._bytes_delta = 0
        self.oldest_live = _read_u64(txn, _META_OLDEST, meta)

    def _next_cas(self) -> int:
        if self._cas is None:
            self._cas = _read_u64(self.txn, _META_CAS, self._meta)
        self._cas += 1
        return self._cas

    def _raw(self, key: bytes) -> memoryview | None:
        return self.txn.get(key, db=self._items)  # type: ignore[return-value]

    def get(self, key: bytes, with_value: bool = True) -> Record | None:
        raw = self._raw(key)
        return None if raw is None else decode_record(key, raw, with_value)

    def header(self, key: bytes) -> Record | None:
        raw = self._raw(key)
        return None if raw is None else decode_header(key, raw)

    def iterate(self, start: bytes) -> Iterator[tuple[bytes, Record | None]]:
        cursor = self.txn.cursor(db=self._items)
        try:
            found = cursor.set_range(start) if start else cursor.first()
            while found:
                key = bytes(cursor.key())
                try:
                    rec: Record | None = decode_record(key, cursor.value(), with_value=False)
                except CorruptRecord:
                    rec = None
                yield key, rec
                found = cursor.next()
        finally:
            cursor.close()

    def put(self, key: bytes, value: bytes, flags: int, exptime: int, bits: int = 0,
            cas: int | None = None) -> Record:
        if cas is None:
            cas = self._next_cas()
        data = encode_record(key, value, flags, exptime, cas, self.now, bits)
        old = self._raw(key)
        self._bytes_delta += len(data) + len(key) - (len(old) + len(key) if old is not None else 0)
        self.txn.put(key, data, db=self._items)
        return Record(key, value, flags, exptime, cas, self.now, bits)

    def delete(self, key: bytes) -> bool:
        old = self._raw(key)
        if old is None:
            return False
        self._bytes_delta -= len(old) + len(key)
        self.txn.delete(key, db=self._items)
        return True

    def quarantine(self, key: bytes, reason: CorruptRecord | None) -> None:
        raw = self._raw(key)
        if raw is None:
            return
        if reason is not None:
            self._report_corrupt(key, reason)
        self.txn.put(key, bytes(raw), db=self._quarantine)
        self.delete(key)
        self.counters["quarantined"] += 1

    def clear(self) -> None:
        self.txn.drop(self._items, delete=False)
        self.txn.put(_META_BYTES, _Q.pack(0), db=self._meta)
        self._bytes_delta = 0
        self.txn.delete(_META_OLDEST, db=self._meta)
        self.oldest_live = 0

    def set_oldest_live(self, at: int) -> None:
        self.txn.put(_META_OLDEST, _Q.pack(at), db=self._meta)
        self.oldest_live = at

    def finish(self) -> None:
        """Write back the CAS counter and the byte count."""
        meta = self._meta
        if self._cas is not None:
            self.txn.put(_META_CAS, _Q.pack(self._cas), db=meta)
        if self._bytes_delta:
            used = _read_u64(self.txn, _META_BYTES, meta) + self._bytes_delta
            self.txn.put(_META_BYTES, _Q.pack(max(used, 0)), db=meta)


class LmdbStore(BaseStore):
    """The LMDB store of one object server (one per process; processes may share a dir).

    :param path: directory of the LMDB environment (created if missing).
    :param map_size: LMDB map size in bytes (the most the store can hold).
    :param max_item_size: largest value append/prepend may produce.
    :param clock: unix time source (injected so tests control expiry).
    :param max_readers: LMDB reader slots (readers of all processes together).
    """

    def __init__(self, path: str | Path, *, map_size: int, max_item_size: int,
                 clock: Callable[[], float] = time.time, max_readers: int = 1024) -> None:
        super().__init__()
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.max_item_size = max_item_size
        self._clock = clock
        self._env = lmdb.open(str(self.path), map_size=map_size, max_dbs=4, sync=True,
                              metasync=False, readahead=False, meminit=False,
                              max_readers=max_readers, lock=True, subdir=True)
        self._items = self._env.open_db(b"items")
        self._meta = self._env.open_db(b"meta")
        self._quarantine = self._env.open_db(b"quarantine")

    @property
    def env(self) -> lmdb.Environment:
        return self._env

    def now(self) -> int:
        return int(self._clock())

    # -- reads ----------------------------------------------------------------------------

    def _report_corrupt(self, key: bytes, exc: CorruptRecord) -> None:
        self.counters["corrupt_reads"] += 1
        log.error("corrupt record for key %r in %s: %s; not served, quarantined",
                  key[:250], self.path, exc)

    def get_many(self, keys: Sequence[bytes]) -> list[Record | None]:
        """Read and verify several keys in one read transaction; misses are None.

        Dead items are queued for removal; corrupt ones for quarantine.
        """
        now = self.now()
        out: list[Record | None] = []
        later: list[WriteOp] = []
        with self._env.begin(db=self._items, buffers=True) as txn:
            oldest = _read_u64(txn, _META_OLDEST, self._meta)
            get = txn.get
            for key in keys:
                raw = get(key)
                if raw is None:
                    out.append(None)
                    continue
                try:
                    rec = decode_record(key, raw)
                except CorruptRecord as exc:
                    self._report_corrupt(key, exc)
                    later.append(QuarantineOp(key))
                    out.append(None)
                    continue
                # items.alive(), inlined: this loop serves multi-key gets.
                if (rec.exptime and rec.exptime <= now) or (
                        oldest and oldest <= now and rec.mtime <= oldest):
                    self.counters["get_expired"] += 1
                    later.append(ExpireOp(key, rec.cas))
                    out.append(None)
                    continue
                out.append(rec)
        for op in later:
            self.submit(op)
        return out

    def get_value(self, key: bytes) -> tuple[int, int, bytes] | None:
        """``(flags, cas, value)`` of a live, verified item, or None: :meth:`get` without
        building a :class:`Record` (the hot path of a plain get)."""
        with self._env.begin(db=self._items, buffers=True) as txn:
            raw = txn.get(key)
            if raw is None:
                return None
            if len(raw) < HEADER_SIZE or raw[0] != RECORD_VERSION:
                corrupt = True
            else:
                _v, _bits, _, flags, exptime, cas, mtime, crc = HEADER.unpack_from(raw)
                value = raw[HEADER_SIZE:]
                corrupt = crc32(value, crc32(raw[:PREFIX_SIZE], crc32(key))) != crc
            if not corrupt:
                now = int(self._clock())
                oldest_raw = txn.get(_META_OLDEST, db=self._meta)
                oldest = _Q.unpack(oldest_raw)[0] if oldest_raw is not None else 0
                # items.alive(), inlined.
                if not ((exptime and exptime <= now)
                        or (oldest and oldest <= now and mtime <= oldest)):
                    return flags, cas, bytes(value)
        # Rare paths: let get_many count, log and queue the clean-up.
        self.get_many((key,))
        return None

    def scan(self, after: bytes = b"", limit: int = 1000) -> list[tuple[Record, int]]:
        """Up to ``limit`` live records with keys > ``after`` in key order, each with the
        bytes it occupies; values are omitted (for metadump).

        Only the header is checked, not the value checksum: a scan lists, it does not serve.
        """
        now = self.now()
        out: list[tuple[Record, int]] = []
        with self._env.begin(db=self._items, buffers=True) as txn:
            oldest = _read_u64(txn, _META_OLDEST, self._meta)
            cursor = txn.cursor()
            found = cursor.set_range(after + b"\x00") if after else cursor.first()
            while found and len(out) < limit:
                raw = cursor.value()
                rec = decode_header(bytes(cursor.key()), raw)
                if rec is not None and alive(rec, now, oldest):
                    out.append((rec, len(rec.key) + len(raw)))
                found = cursor.next()
        return out

    def info(self) -> dict[str, int]:
        """Figures for stats: items, bytes, LMDB map and page use, readers."""
        env_info = self._env.info()
        with self._env.begin(buffers=True) as txn:
            items = txn.stat(self._items)
            quarantined = txn.stat(self._quarantine)["entries"]
            used = _read_u64(txn, _META_BYTES, self._meta)
        psize = items["psize"]
        return {
            "curr_items": items["entries"],
            "bytes": used,
            "quarantined_items": quarantined,
            "lmdb_map_size": env_info["map_size"],
            "lmdb_page_size": psize,
            "lmdb_used_pages": env_info["last_pgno"] + 1,
            "lmdb_used_bytes": (env_info["last_pgno"] + 1) * psize,
            "lmdb_last_txnid": env_info["last_txnid"],
            "lmdb_readers": env_info["num_readers"],
            "lmdb_max_readers": env_info["max_readers"],
            "lmdb_depth": items["depth"],
        }

    # -- writes ---------------------------------------------------------------------------

    def apply_batch(self, ops: Sequence[WriteOp]) -> list[Result]:
        """Apply ops in one write transaction and commit it (data pages fdatasync'd; the
        meta page is flushed by the next commit or by :meth:`sync`).

        When the map is full the batch is retried one op per transaction so only the ops
        that do not fit fail (with NO_SPACE).
        """
        return self.commit_queued(lambda: ops)[1]

    def commit_queued(self, take: Callable[[], Sequence[WriteOp]]
                      ) -> tuple[Sequence[WriteOp], list[Result], int]:
        """Wait for LMDB's write lock, *then* call ``take`` for the ops to apply, and commit
        them in one transaction: ``(ops, results, txnid)``.  ``txnid`` is the committed
        transaction's id, at least; 0 when ``take`` gave no ops.  (After a retry one op per
        transaction it is the newest id then, which may be another process's: waiting for a
        later commit than that is later than needed, never too early.)

        Taking the ops only once the lock is ours puts into this commit every op that
        arrived while another worker's commit (and its fsync) held the lock.  The wait
        releases the GIL.
        """
        txn = self._env.begin(write=True, buffers=True)
        ops: Sequence[WriteOp] = ()
        try:
            ops = take()
            if not ops:
                txn.abort()
                return ops, [], 0
            txnid = txn.id()
            tx = _LmdbTxn(txn, self._items, self._meta, self._quarantine, self.now(),
                          self.max_item_size, self.counters, self._report_corrupt)
            results = [op.apply(tx) for op in ops]
            tx.finish()
            committing = time.perf_counter()
            txn.commit()
        except lmdb.MapFullError:
            txn.abort()
            if len(ops) == 1:
                self.counters["store_no_memory"] += 1
                log.warning("LMDB map full in %s", self.path)
                return ops, [Result(Outcome.NO_SPACE)], self.last_txnid()
            return ops, [self.apply_batch([op])[0] for op in ops], self.last_txnid()
        except Exception:
            txn.abort()
            if len(ops) == 1:
                log.exception("write op %r failed", ops[0])
                return ops, [Result(Outcome.FAILED)], self.last_txnid()
            return ops, [self.apply_batch([op])[0] for op in ops], self.last_txnid()
        # The commit (pages written, fdatasync) is what every write of the batch waits on.
        count_commit(self.counters, time.perf_counter() - committing, len(ops))
        return ops, results, txnid

    def last_txnid(self) -> int:
        """The id of the newest transaction whose meta page is written (by any process).

        Its commit fdatasync'd the file after every earlier commit's meta page was written,
        so every older transaction is on disk (see GroupCommitter.run).
        """
        return int(self._env.info()["last_txnid"])

    def sync(self) -> None:
        """Flush the last commit's meta page (commits do not, see GroupCommitter.run)."""
        self._env.sync(True)

    def start(self, deliver: Deliver, group_commit_max: int = 256) -> GroupCommitter:
        """Start the group-commit thread; ``deliver`` receives each batch's outcomes."""
        committer = GroupCommitter(self, deliver, group_commit_max)
        committer.start()
        self.use_committer(committer)
        return committer

    def close(self) -> None:
        """Finish queued writes, stop the committer and close the environment."""
        self.close_committer()
        self._env.sync(True)
        self._env.close()


__all__ = ["LmdbStore"]
