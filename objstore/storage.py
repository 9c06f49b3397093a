"""The object server's store: memcached items as checksummed records in LMDB.

Theory of operation
-------------------
One LMDB environment (a directory) holds three named databases: ``items`` (key -> record),
``meta`` (the CAS counter, byte count, delayed-flush time) and ``quarantine`` (records that
failed their checksum, kept for inspection and never served).

A record is a 32-byte header followed by the value::

    <B version=1><B bits (1=stale, 2=win token sent)><H 0><I client flags>
    <q exptime: absolute unix seconds, 0 = never><Q cas unique><I mtime><I crc32>

``crc32`` (zlib-ng's CRC-32, ~16x faster than the stdlib's here) covers the key, the first 28
header bytes and the value, so a flipped bit anywhere in the record is detected on read.

Reads run on the caller's thread in short read transactions and verify every record.  A
corrupt record is logged, counted, moved to ``quarantine`` and reported as a miss.  An expired
record reads as a miss and is removed lazily.

Writes are :class:`WriteOp` objects.  :meth:`Storage.submit` queues them for the
:class:`GroupCommitter` thread, which applies every op waiting (up to ``group_commit_max``) in
one write transaction, commits it, and hands all outcomes back together once the commit is on
disk (see :meth:`GroupCommitter.run` for how one fdatasync per batch suffices).  So an
outcome exists only once its write is durable, and concurrent writers share the fsync.
Each op reads and writes inside that transaction, which makes add/cas/incr/append atomic even
across processes sharing the environment (LMDB serialises writers with a file lock).
:meth:`Storage.execute` runs one op synchronously (tests, tools).
"""

from __future__ import annotations

import collections
import enum
import logging
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import lmdb
from zlib_ng import zlib_ng

from objstore.errors import CorruptRecord, StorageError

log = logging.getLogger(__name__)

HEADER: Final = struct.Struct("<BBHIqQII")
HEADER_SIZE: Final = HEADER.size  # 32
_PREFIX: Final = HEADER_SIZE - 4  # bytes of the header covered by the checksum
RECORD_VERSION: Final = 1
BIT_STALE: Final = 1
BIT_WIN_SENT: Final = 2
#: memcached's REALTIME_MAXDELTA: larger exptimes are absolute unix times.
REALTIME_MAXDELTA: Final = 60 * 60 * 24 * 30
CHECKSUM: Final = "crc32 (zlib-ng)"

_crc32 = zlib_ng.crc32
_U64: Final = 2**64 - 1
_META_CAS: Final = b"cas"
_META_BYTES: Final = b"used_bytes"
_META_OLDEST: Final = b"oldest_live"
_Q: Final = struct.Struct("<Q")


def checksum(key: bytes, prefix: bytes | memoryview, value: bytes | memoryview) -> int:
    """The record checksum: CRC-32 of key, header prefix and value."""
    return _crc32(value, _crc32(prefix, _crc32(key)))


def encode_record(key: bytes, value: bytes, flags: int, exptime: int, cas: int, mtime: int,
                  bits: int = 0) -> bytes:
    """Build the stored bytes of a record."""
    prefix = HEADER.pack(RECORD_VERSION, bits, 0, flags, exptime, cas, mtime, 0)[:_PREFIX]
    crc = checksum(key, prefix, value)
    return prefix + struct.pack("<I", crc) + value


@dataclass(frozen=True, slots=True)
class Record:
    """A live item as read from the store."""

    key: bytes
    value: bytes
    flags: int
    exptime: int  # absolute unix seconds, 0 = never
    cas: int
    mtime: int
    bits: int = 0

    @property
    def stale(self) -> bool:
        return bool(self.bits & BIT_STALE)

    @property
    def win_sent(self) -> bool:
        return bool(self.bits & BIT_WIN_SENT)

    @property
    def size(self) -> int:
        """Bytes the record occupies in the store (key + header + value)."""
        return len(self.key) + HEADER_SIZE + len(self.value)

    def ttl(self, now: int) -> int:
        """Seconds left, -1 for never (memcached's ``t`` flag)."""
        return -1 if self.exptime == 0 else max(self.exptime - now, 0)


def decode_record(key: bytes, raw: bytes | memoryview, with_value: bool = True) -> Record:
    """Parse and verify stored bytes.

    :raises CorruptRecord: wrong version, too short, or checksum mismatch.
    """
    if len(raw) < HEADER_SIZE:
        raise CorruptRecord(f"record of {len(raw)} bytes is shorter than its header")
    version, bits, _, flags, exptime, cas, mtime, crc = HEADER.unpack_from(raw)
    if version != RECORD_VERSION:
        raise CorruptRecord(f"unknown record version {version}")
    view = memoryview(raw)
    value = view[HEADER_SIZE:]
    if checksum(key, view[:_PREFIX], value) != crc:
        raise CorruptRecord("checksum mismatch")
    return Record(key, bytes(value) if with_value else b"", flags, exptime, cas, mtime, bits)


def absolute_exptime(exptime: int, now: int) -> int:
    """memcached's rule: 0 never, negative already expired, up to 30 days relative,
    beyond that a unix time."""
    if exptime == 0:
        return 0
    if exptime < 0:
        return 1  # the epoch's second second: always in the past
    if exptime <= REALTIME_MAXDELTA:
        return now + exptime
    return exptime


class Outcome(enum.Enum):
    STORED = "stored"
    NOT_STORED = "not_stored"
    EXISTS = "exists"
    NOT_FOUND = "not_found"
    DELETED = "deleted"
    TOUCHED = "touched"
    OK = "ok"
    NON_NUMERIC = "non_numeric"
    TOO_LARGE = "too_large"  # append/prepend would exceed the max item size
    NO_SPACE = "no_space"  # the LMDB map is full
    FAILED = "failed"  # an unexpected error; logged


@dataclass(frozen=True, slots=True)
class Result:
    """What a write op did.

    :param record: the record after the op (or the one that blocked it), when useful.
    :param number: incr/decr result.
    :param win: for mg: ``b"W"`` (you won the right to recache), ``b"Z"`` (someone else
        did), or ``b""``.
    """

    outcome: Outcome
    record: Record | None = None
    number: int | None = None
    win: bytes = b""
    records: tuple[Record | None, ...] = ()


class _Txn:
    """The context ops see inside a write transaction."""

    def __init__(self, storage: Storage, txn: lmdb.Transaction, now: int) -> None:
        self.storage = storage
        self.txn = txn
        self.now = now
        self._items = storage._items
        self._cas: int | None = None
        self._bytes_delta = 0
        self._oldest = storage._read_oldest(txn)
        self.max_item_size = storage.max_item_size

    def next_cas(self) -> int:
        if self._cas is None:
            raw = self.txn.get(_META_CAS, db=self.storage._meta)
            self._cas = _Q.unpack(raw)[0] if raw is not None else 0
        self._cas += 1
        return self._cas

    def raw(self, key: bytes) -> memoryview | None:
        return self.txn.get(key, db=self._items)  # type: ignore[return-value]

    def get(self, key: bytes) -> Record | None:
        """The live record under ``key``; expired, flushed and corrupt ones read as None."""
        raw = self.raw(key)
        if raw is None:
            return None
        try:
            rec = decode_record(key, raw)
        except CorruptRecord as exc:
            self.storage._note_corrupt(key, exc)
            self.quarantine(key, raw)
            return None
        if not self.storage._alive(rec, self.now, self._oldest):
            return None
        return rec

    def peek(self, key: bytes) -> Record | None:
        """Whether a live item exists, from its header alone (value neither copied nor
        verified): enough for set/add/replace, which never serve the old value."""
        raw = self.raw(key)
        if raw is None or len(raw) < HEADER_SIZE or raw[0] != RECORD_VERSION:
            return None
        _v, bits, _, flags, exptime, cas, mtime, _crc = HEADER.unpack_from(raw)
        rec = Record(key, b"", flags, exptime, cas, mtime, bits)
        return rec if self.storage._alive(rec, self.now, self._oldest) else None

    def put(self, key: bytes, value: bytes, flags: int, exptime: int, bits: int = 0,
            cas: int | None = None) -> Record:
        if cas is None:
            cas = self.next_cas()
        data = encode_record(key, value, flags, exptime, cas, self.now, bits)
        old = self.raw(key)
        self._bytes_delta += len(data) + len(key) - (len(old) + len(key) if old is not None else 0)
        self.txn.put(key, data, db=self._items)
        return Record(key, value, flags, exptime, cas, self.now, bits)

    def delete(self, key: bytes) -> bool:
        old = self.raw(key)
        if old is None:
            return False
        self._bytes_delta -= len(old) + len(key)
        self.txn.delete(key, db=self._items)
        return True

    def quarantine(self, key: bytes, raw: memoryview) -> None:
        self.txn.put(key, bytes(raw), db=self.storage._quarantine)
        self.delete(key)
        self.storage.counters["quarantined"] += 1

    def flush(self, at: int) -> None:
        if at <= 0:
            self.txn.drop(self._items, delete=False)
            self.txn.put(_META_BYTES, _Q.pack(0), db=self.storage._meta)
            self._bytes_delta = 0
            self.txn.delete(_META_OLDEST, db=self.storage._meta)
            self._oldest = 0
        else:
            self.txn.put(_META_OLDEST, _Q.pack(at), db=self.storage._meta)
            self._oldest = at

    def finish(self) -> None:
        meta = self.storage._meta
        if self._cas is not None:
            self.txn.put(_META_CAS, _Q.pack(self._cas), db=meta)
        if self._bytes_delta:
            raw = self.txn.get(_META_BYTES, db=meta)
            used = (_Q.unpack(raw)[0] if raw is not None else 0) + self._bytes_delta
            self.txn.put(_META_BYTES, _Q.pack(max(used, 0)), db=meta)


class WriteOp:
    """A change applied inside a write transaction; subclasses are frozen dataclasses."""

    __slots__ = ()

    def apply(self, tx: _Txn) -> Result:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class StoreOp(WriteOp):
    """set/add/replace/append/prepend/cas and ms.

    :param mode: ``b"set" b"add" b"replace" b"append" b"prepend"``.
    :param exptime: as the client sent it (relative or absolute); converted here.
    :param compare_cas: store only if the current CAS equals this (cas, ms C).
    :param explicit_cas: give the new record this CAS instead of the next one (ms E).
    :param invalidate: ms I: a CAS mismatch with an older CAS stores the value as stale.
    :param vivify: ms N: append/prepend on a miss creates the item with this exptime.
    """

    mode: bytes
    key: bytes
    value: bytes
    flags: int = 0
    exptime: int = 0
    compare_cas: int | None = None
    explicit_cas: int | None = None
    invalidate: bool = False
    vivify: int | None = None

    def apply(self, tx: _Txn) -> Result:
        mode = self.mode
        if self.compare_cas is None and mode in (b"set", b"add", b"replace"):
            if mode == b"set":
                # The hot path: nothing about the old item matters.
                rec = tx.put(self.key, self.value, self.flags,
                             absolute_exptime(self.exptime, tx.now), cas=self.explicit_cas)
                return Result(Outcome.STORED, rec)
            old = tx.peek(self.key)
        else:
            old = tx.get(self.key)
        bits = 0
        if self.compare_cas is not None:
            if old is None:
                return Result(Outcome.NOT_FOUND)
            if old.cas != self.compare_cas:
                if not (self.invalidate and self.compare_cas < old.cas):
                    return Result(Outcome.EXISTS, old)
                bits = BIT_STALE
        if mode == b"add":
            if old is not None:
                return Result(Outcome.NOT_STORED, old)
        elif mode in (b"replace", b"append", b"prepend"):
            if old is None:
                if mode == b"replace" or self.vivify is None:
                    return Result(Outcome.NOT_STORED)
                exptime = absolute_exptime(self.vivify, tx.now)
                return Result(Outcome.STORED, tx.put(self.key, self.value, self.flags, exptime,
                                                     cas=self.explicit_cas))
            if mode != b"replace":
                value = old.value + self.value if mode == b"append" else self.value + old.value
                if len(value) > tx.max_item_size:
                    return Result(Outcome.TOO_LARGE, old)
                # memcached keeps the old flags and exptime on append/prepend.
                return Result(Outcome.STORED, tx.put(self.key, value, old.flags, old.exptime,
                                                     old.bits & BIT_STALE,
                                                     cas=self.explicit_cas))
        exptime = absolute_exptime(self.exptime, tx.now)
        rec = tx.put(self.key, self.value, self.flags, exptime, bits, cas=self.explicit_cas)
        return Result(Outcome.STORED, rec)


@dataclass(frozen=True, slots=True)
class DeleteOp(WriteOp):
    """delete and md (``invalidate`` marks stale instead, ``exptime`` then updates TTL)."""

    key: bytes
    compare_cas: int | None = None
    invalidate: bool = False
    exptime: int | None = None

    def apply(self, tx: _Txn) -> Result:
        old = tx.get(self.key)
        if old is None:
            return Result(Outcome.NOT_FOUND)
        if self.compare_cas is not None and old.cas != self.compare_cas:
            return Result(Outcome.EXISTS, old)
        if self.invalidate:
            exptime = (old.exptime if self.exptime is None
                       else absolute_exptime(self.exptime, tx.now))
            rec = tx.put(self.key, old.value, old.flags, exptime, BIT_STALE)
            return Result(Outcome.DELETED, rec)
        tx.delete(self.key)
        return Result(Outcome.DELETED, old)


def _leading_number(value: bytes) -> int | None:
    """Parse like memcached's safe_strtoull: leading blanks, digits, then a blank or end."""
    text = value.lstrip(b" \t\r\n\v\f")
    i = 0
    while i < len(text) and 0x30 <= text[i] <= 0x39:
        i += 1
    if i == 0 or i > 20 or (i < len(text) and text[i] not in b" \t\r\n\v\f"):
        return None
    number = int(text[:i])
    return number if number <= _U64 else None


@dataclass(frozen=True, slots=True)
class ArithOp(WriteOp):
    """incr/decr and ma.

    :param vivify: ma N: on a miss create the item with value ``initial`` and this exptime.
    :param exptime: ma T: also set a new exptime.
    """

    key: bytes
    delta: int
    incr: bool = True
    compare_cas: int | None = None
    explicit_cas: int | None = None
    vivify: int | None = None
    initial: int = 0
    exptime: int | None = None

    def apply(self, tx: _Txn) -> Result:
        old = tx.get(self.key)
        if old is None:
            if self.vivify is None:
                return Result(Outcome.NOT_FOUND)
            exptime = absolute_exptime(self.vivify, tx.now)
            rec = tx.put(self.key, str(self.initial).encode(), 0, exptime,
                         cas=self.explicit_cas)
            return Result(Outcome.STORED, rec, self.initial)
        if self.compare_cas is not None and old.cas != self.compare_cas:
            return Result(Outcome.EXISTS, old)
        current = _leading_number(old.value)
        if current is None:
            return Result(Outcome.NON_NUMERIC, old)
        number = (current + self.delta) & _U64 if self.incr else max(current - self.delta, 0)
        text = str(number).encode()
        if len(text) < len(old.value):
            # memcached rewrites in place and pads with spaces when the number shrinks.
            text = text.ljust(len(old.value))
        exptime = old.exptime if self.exptime is None else absolute_exptime(self.exptime, tx.now)
        rec = tx.put(self.key, text, old.flags, exptime, old.bits & BIT_STALE,
                     cas=self.explicit_cas)
        return Result(Outcome.OK, rec, number)


@dataclass(frozen=True, slots=True)
class TouchOp(WriteOp):
    """touch, gat/gats (several keys) and mg T: set a new exptime, keep the CAS."""

    keys: tuple[bytes, ...]
    exptime: int

    def apply(self, tx: _Txn) -> Result:
        exptime = absolute_exptime(self.exptime, tx.now)
        out: list[Record | None] = []
        for key in self.keys:
            old = tx.get(key)
            if old is None:
                out.append(None)
                continue
            out.append(tx.put(key, old.value, old.flags, exptime, old.bits, cas=old.cas))
        found = any(r is not None for r in out)
        return Result(Outcome.TOUCHED if found else Outcome.NOT_FOUND,
                      out[0] if len(out) == 1 else None, records=tuple(out))


@dataclass(frozen=True, slots=True)
class MetaGetOp(WriteOp):
    """The write half of mg: T (new TTL), N (vivify on miss), R (recache) and the win token.

    memcached's anti-stampede rule: the first reader of a stale (or vivified, or
    soon-expiring under R) item gets ``W`` and should recompute; later readers get ``Z``.
    """

    key: bytes
    exptime: int | None = None
    vivify: int | None = None
    recache: int | None = None

    def apply(self, tx: _Txn) -> Result:
        rec = tx.get(self.key)
        if rec is None:
            if self.vivify is None:
                return Result(Outcome.NOT_FOUND)
            exptime = absolute_exptime(self.vivify, tx.now)
            return Result(Outcome.OK, tx.put(self.key, b"", 0, exptime, BIT_WIN_SENT), win=b"W")
        bits = rec.bits
        exptime = rec.exptime
        if self.exptime is not None:
            exptime = absolute_exptime(self.exptime, tx.now)
        win = b""
        wants_win = rec.stale or (self.recache is not None and rec.exptime != 0
                                  and rec.exptime - tx.now < self.recache)
        if rec.win_sent:
            win = b"Z"
        elif wants_win:
            win = b"W"
            bits |= BIT_WIN_SENT
        if bits != rec.bits or exptime != rec.exptime:
            rec = tx.put(self.key, rec.value, rec.flags, exptime, bits, cas=rec.cas)
        return Result(Outcome.OK, rec, win=win)


@dataclass(frozen=True, slots=True)
class FlushOp(WriteOp):
    """flush_all: now (delay 0) drops every item; later sets a cut-off time."""

    delay: int = 0

    def apply(self, tx: _Txn) -> Result:
        at = 0 if self.delay <= 0 else absolute_exptime(self.delay, tx.now)
        tx.flush(at)
        return Result(Outcome.OK)


@dataclass(frozen=True, slots=True)
class ExpireOp(WriteOp):
    """Remove an item found expired by a read, unless it was rewritten since."""

    key: bytes
    cas: int

    def apply(self, tx: _Txn) -> Result:
        raw = tx.raw(self.key)
        if raw is None:
            return Result(Outcome.NOT_FOUND)
        try:
            rec = decode_record(self.key, raw, with_value=False)
        except CorruptRecord:
            return Result(Outcome.NOT_FOUND)
        if rec.cas != self.cas or tx.storage._alive(rec, tx.now, tx._oldest):
            return Result(Outcome.NOT_STORED)
        tx.delete(self.key)
        tx.storage.counters["reclaimed"] += 1
        return Result(Outcome.DELETED)


@dataclass(frozen=True, slots=True)
class QuarantineOp(WriteOp):
    """Move a record that failed its checksum out of ``items``."""

    key: bytes

    def apply(self, tx: _Txn) -> Result:
        raw = tx.raw(self.key)
        if raw is None:
            return Result(Outcome.NOT_FOUND)
        try:
            decode_record(self.key, raw, with_value=True)
        except CorruptRecord:
            tx.quarantine(self.key, raw)  # already counted and logged by the read
            return Result(Outcome.OK)
        return Result(Outcome.NOT_STORED)  # rewritten since: nothing to do


@dataclass(frozen=True, slots=True)
class ReapOp(WriteOp):
    """Delete up to ``limit`` expired items after ``start`` (a resumable sweep)."""

    start: bytes = b""
    limit: int = 1000

    def apply(self, tx: _Txn) -> Result:
        cursor = tx.txn.cursor(db=tx.storage._items)
        found = cursor.set_range(self.start) if self.start else cursor.first()
        expired: list[bytes] = []
        last = b""
        seen = 0
        while found and seen < self.limit:
            key = bytes(cursor.key())
            last = key
            seen += 1
            try:
                rec = decode_record(key, cursor.value(), with_value=False)
            except CorruptRecord:
                found = cursor.next()
                continue
            if not tx.storage._alive(rec, tx.now, tx._oldest):
                expired.append(key)
            found = cursor.next()
        for key in expired:
            tx.delete(key)
        tx.storage.counters["reclaimed"] += len(expired)
        # number = how many were removed; record.key = where to resume (b"" = wrapped).
        resume = last + b"\x00" if found else b""
        return Result(Outcome.OK, Record(resume, b"", 0, 0, 0, 0), len(expired))


Callback = Callable[[Result], None]
Deliver = Callable[[list[tuple[Callback, Result]]], None]


class Committer(Protocol):
    """What :meth:`Storage.submit` hands writes to."""

    def submit(self, op: WriteOp, callback: Callback | None) -> None: ...

    def stop(self) -> None: ...


class Storage:
    """The LMDB store of one object server (one per process; processes may share a dir).

    :param path: directory of the LMDB environment (created if missing).
    :param map_size: LMDB map size in bytes (the most the store can hold).
    :param max_item_size: largest value append/prepend may produce.
    :param clock: unix time source (injected so tests control expiry).
    :param max_readers: LMDB reader slots (readers of all processes together).
    """

    def __init__(self, path: str | Path, *, map_size: int, max_item_size: int,
                 clock: Callable[[], float] = time.time, max_readers: int = 1024) -> None:
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
        self.counters: collections.Counter[str] = collections.Counter()
        self._committer: Committer | None = None

    @property
    def env(self) -> lmdb.Environment:
        return self._env

    def now(self) -> int:
        return int(self._clock())

    # -- reads ----------------------------------------------------------------------------

    def _read_oldest(self, txn: lmdb.Transaction) -> int:
        raw = txn.get(_META_OLDEST, db=self._meta)
        return _Q.unpack(raw)[0] if raw is not None else 0

    @staticmethod
    def _alive(rec: Record, now: int, oldest: int) -> bool:
        if rec.exptime and rec.exptime <= now:
            return False
        return not (oldest and oldest <= now and rec.mtime <= oldest)

    def _note_corrupt(self, key: bytes, exc: CorruptRecord) -> None:
        self.counters["corrupt_reads"] += 1
        log.error("corrupt record for key %r in %s: %s; not served, quarantined",
                  key[:250], self.path, exc)

    def get_many(self, keys: Sequence[bytes]) -> list[Record | None]:
        """Read and verify several keys in one read transaction; misses are None.

        Expired items are queued for removal; corrupt ones for quarantine.
        """
        now = self.now()
        out: list[Record | None] = []
        later: list[WriteOp] = []
        with self._env.begin(db=self._items, buffers=True) as txn:
            oldest = self._read_oldest(txn)
            get = txn.get
            for key in keys:
                raw = get(key)
                if raw is None:
                    out.append(None)
                    continue
                try:
                    rec = decode_record(key, raw)
                except CorruptRecord as exc:
                    self._note_corrupt(key, exc)
                    later.append(QuarantineOp(key))
                    out.append(None)
                    continue
                if (rec.exptime and rec.exptime <= now) or (
                        oldest and oldest <= now and rec.mtime <= oldest):
                    self.counters["get_expired"] += 1
                    later.append(ExpireOp(key, rec.cas))
                    out.append(None)
                    continue
                out.append(rec)
        for op in later:
            self.submit(op, None)
        return out

    def get(self, key: bytes) -> Record | None:
        return self.get_many((key,))[0]

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
                corrupt = _crc32(value, _crc32(raw[:_PREFIX], _crc32(key))) != crc
            if not corrupt:
                now = int(self._clock())
                oldest_raw = txn.get(_META_OLDEST, db=self._meta)
                oldest = _Q.unpack(oldest_raw)[0] if oldest_raw is not None else 0
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
            oldest = self._read_oldest(txn)
            cursor = txn.cursor()
            found = cursor.set_range(after + b"\x00") if after else cursor.first()
            while found and len(out) < limit:
                raw = cursor.value()
                if len(raw) >= HEADER_SIZE and raw[0] == RECORD_VERSION:
                    key = bytes(cursor.key())
                    _v, bits, _, flags, exptime, cas, mtime, _crc = HEADER.unpack_from(raw)
                    rec = Record(key, b"", flags, exptime, cas, mtime, bits)
                    if self._alive(rec, now, oldest):
                        out.append((rec, len(key) + len(raw)))
                found = cursor.next()
        return out

    def info(self) -> dict[str, int]:
        """Figures for stats: items, bytes, LMDB map and page use, readers."""
        env_info = self._env.info()
        with self._env.begin(buffers=True) as txn:
            items = txn.stat(self._items)
            quarantined = txn.stat(self._quarantine)["entries"]
            raw = txn.get(_META_BYTES, db=self._meta)
            used = _Q.unpack(raw)[0] if raw is not None else 0
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
        now = self.now()
        try:
            with self._env.begin(write=True, buffers=True) as txn:
                tx = _Txn(self, txn, now)
                results = [op.apply(tx) for op in ops]
                tx.finish()
            self.counters["commits"] += 1
            self.counters["committed_ops"] += len(ops)
            return results
        except lmdb.MapFullError:
            if len(ops) == 1:
                self.counters["store_no_memory"] += 1
                log.warning("LMDB map full in %s", self.path)
                return [Result(Outcome.NO_SPACE)]
            return [self.apply_batch([op])[0] for op in ops]
        except Exception:
            if len(ops) == 1:
                log.exception("write op %r failed", ops[0])
                return [Result(Outcome.FAILED)]
            return [self.apply_batch([op])[0] for op in ops]

    def execute(self, op: WriteOp) -> Result:
        """Apply one op synchronously in its own durable transaction."""
        result = self.apply_batch([op])[0]
        self.sync()
        return result

    def sync(self) -> None:
        """Flush the last commit's meta page (commits do not, see GroupCommitter.run)."""
        self._env.sync(True)

    def start(self, deliver: Deliver, group_commit_max: int = 256) -> GroupCommitter:
        """Start the group-commit thread; ``deliver`` receives each batch's outcomes."""
        committer = GroupCommitter(self, deliver, group_commit_max)
        committer.start()
        self._committer = committer
        return committer

    def use_committer(self, committer: Committer | None) -> None:
        """Route :meth:`submit` through ``committer`` (None: apply inline).  Tests use this
        to hold writes pending and release them at a chosen moment."""
        self._committer = committer

    def submit(self, op: WriteOp, callback: Callback | None) -> None:
        """Queue ``op``; ``callback(result)`` is delivered once the write is durable.

        Without a running committer (tests, tools) the op runs at once.
        """
        if self._committer is None:
            result = self.execute(op)
            if callback is not None:
                callback(result)
            return
        self._committer.submit(op, callback)

    def close_committer(self) -> None:
        """Commit what is queued and stop the committer thread; later writes run inline."""
        committer, self._committer = self._committer, None
        if committer is not None:
            committer.stop()

    def close(self) -> None:
        """Finish queued writes, stop the committer and close the environment."""
        self.close_committer()
        self._env.sync(True)
        self._env.close()


class GroupCommitter(threading.Thread):
    """The writer thread: drains the queue in batches, one durable transaction each."""

    def __init__(self, storage: Storage, deliver: Deliver, max_batch: int) -> None:
        super().__init__(name="objstore-group-commit", daemon=True)
        self._storage = storage
        self._deliver = deliver
        self._max_batch = max_batch
        self._queue: collections.deque[tuple[WriteOp, Callback | None]] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.batches = 0
        self.largest_batch = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    def use_committer(self, committer: Committer | None) -> None:
        """Route :meth:`submit` through ``committer`` (None: apply inline).  Tests use this
        to hold writes pending and release them at a chosen moment."""
        self._committer = committer

    def submit(self, op: WriteOp, callback: Callback | None) -> None:
        with self._cond:
            if self._stopping:
                raise StorageError("the store is shutting down")
            self._queue.append((op, callback))
            self._cond.notify()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Commit what is queued, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self.join(timeout)

    def run(self) -> None:
        """Commit batches; acknowledge each once its commit is certainly on disk.

        The environment runs with MDB_NOMETASYNC: a commit fdatasync()s its data pages but
        only writes its meta page.  That meta page reaches the disk with the *next* commit's
        fdatasync (same file) or with an explicit :meth:`Storage.sync` when nothing else is
        queued.  So a batch's outcomes are delivered after the following commit or sync:
        one fsync per batch under load instead of two, and STORED still means on disk.
        """
        queue = self._queue
        storage = self._storage
        unsynced: list[tuple[Callback, Result]] = []
        while True:
            with self._cond:
                while not queue and not self._stopping and not unsynced:
                    self._cond.wait()
                if not queue and self._stopping and not unsynced:
                    return
                batch = [queue.popleft() for _ in range(min(len(queue), self._max_batch))]
            if not batch:
                storage.sync()
                self._hand_over(unsynced)
                unsynced = []
                continue
            commits = storage.counters["commits"]
            results = storage.apply_batch([op for op, _ in batch])
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(batch))
            if unsynced and storage.counters["commits"] == commits:
                storage.sync()  # nothing was committed, so nothing flushed the old meta
            self._hand_over(unsynced)
            unsynced = [(cb, res) for (_, cb), res in zip(batch, results, strict=True)
                        if cb is not None]

    def _hand_over(self, done: list[tuple[Callback, Result]]) -> None:
        if done:
            try:
                self._deliver(done)
            except Exception:  # the reactor may be gone during shutdown
                log.exception("delivering %d write outcomes failed", len(done))


__all__ = [
    "CHECKSUM",
    "HEADER_SIZE",
    "ArithOp",
    "CorruptRecord",
    "DeleteOp",
    "ExpireOp",
    "FlushOp",
    "GroupCommitter",
    "MetaGetOp",
    "Outcome",
    "QuarantineOp",
    "ReapOp",
    "Record",
    "Result",
    "Storage",
    "StorageError",
    "StoreOp",
    "TouchOp",
    "WriteOp",
    "absolute_exptime",
    "decode_record",
    "encode_record",
]

