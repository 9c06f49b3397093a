"""memcached's item semantics, written once over a small transaction protocol.

Theory of operation
-------------------
A store (a *backend*: :mod:`objstore.lmdbstore` on disk, :mod:`objstore.memstore` in memory)
keeps records (:class:`~objstore.record.Record`) under keys.  This module says what each
memcached write means in terms of a few primitives of one write transaction (:class:`Txn`:
get, put, delete, iterate...); it knows nothing of LMDB.

Writes are :class:`WriteOp` objects.  A backend applies a batch of them inside one write
transaction (``apply_batch``), so each op reads and writes atomically: add/cas/incr/append
are atomic even across processes sharing an LMDB environment.  :meth:`BaseStore.write`
hands an op to the store's committer (:class:`~objstore.groupcommit.GroupCommitter` in the
daemon) or, without one, applies it at once in its own durable transaction; either way the
Deferred it returns fires with the op's :class:`Result` only once the write is durable, and
fails (never raises) when the store refuses it.

Liveness is decided here, not by backends: an item is dead once its exptime has passed or
when it was written at or before a ``flush_all`` cut-off that has passed (:func:`alive`).
Backends return records as stored; reads that meet a dead item report a miss and queue an
:class:`ExpireOp`, reads that meet a corrupt record report a miss and queue a
:class:`QuarantineOp`.
"""

from __future__ import annotations

import abc
import collections
import enum
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from twisted.internet import defer
from twisted.python import failure

from objstore.record import (
    BIT_STALE,
    BIT_WIN_SENT,
    CorruptRecord,
    Record,
    StorageError,
)
from runtime.slots import slot_setter

log = logging.getLogger(__name__)

#: memcached's REALTIME_MAXDELTA: larger exptimes are absolute unix times.
REALTIME_MAXDELTA: Final = 60 * 60 * 24 * 30
_U64: Final = 2**64 - 1


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


def alive(rec: Record, now: int, oldest_live: int) -> bool:
    """Whether ``rec`` is served at ``now``: not expired, and not written at or before a
    ``flush_all`` cut-off (``oldest_live``, 0 = none) that has passed.

    The read hot paths of the backends inline this test; keep them in step.
    """
    if rec.exptime and rec.exptime <= now:
        return False
    return not (oldest_live and oldest_live <= now and rec.mtime <= oldest_live)


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
    NO_SPACE = "no_space"  # the store is full
    FAILED = "failed"  # an unexpected error; logged


@dataclass(frozen=True, slots=True, init=False)
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
    #: for the sweep (ReapOp): keys examined.
    scanned: int = 0

    def __init__(self, outcome: Outcome, record: Record | None = None,
                 number: int | None = None, win: bytes = b"",
                 records: tuple[Record | None, ...] = (), scanned: int = 0) -> None:
        # One per write: see runtime.slots.
        _set_outcome(self, outcome)
        _set_record(self, record)
        _set_number(self, number)
        _set_win(self, win)
        _set_records(self, records)
        _set_scanned(self, scanned)


_set_outcome: Final = slot_setter(Result, "outcome")
_set_record: Final = slot_setter(Result, "record")
_set_number: Final = slot_setter(Result, "number")
_set_win: Final = slot_setter(Result, "win")
_set_records: Final = slot_setter(Result, "records")
_set_scanned: Final = slot_setter(Result, "scanned")


class Txn(Protocol):
    """One write transaction of a backend, as the item operations see it.

    Reads see the transaction's own earlier writes.  Records come back as stored, dead or
    alive: liveness is :func:`alive`'s business.

    :ivar now: the transaction's unix time (mtime of what it writes).
    :ivar max_item_size: the largest value append/prepend may produce.
    :ivar oldest_live: the ``flush_all`` cut-off, 0 for none.
    :ivar counters: the store's counters (``reclaimed`` is counted by the ops).
    """

    now: int
    max_item_size: int
    oldest_live: int
    counters: collections.Counter[str]

    def get(self, key: bytes, with_value: bool = True) -> Record | None:
        """The stored record, verified; None when absent.

        :raises CorruptRecord: the stored bytes fail verification.
        """

    def header(self, key: bytes) -> Record | None:
        """The stored record without its value, unverified; None when absent or not a
        record.  For ops that only need to know whether an item exists."""

    def iterate(self, start: bytes) -> Iterator[tuple[bytes, Record | None]]:
        """Keys >= ``start`` in order, each with its verified record without its value
        (None when corrupt).  Finish iterating before writing."""

    def put(self, key: bytes, value: bytes, flags: int, exptime: int, bits: int = 0,
            cas: int | None = None) -> Record:
        """Store a record (with the next CAS unique unless ``cas`` is given)."""

    def delete(self, key: bytes) -> bool:
        """Remove ``key``; False when it was absent."""

    def quarantine(self, key: bytes, reason: CorruptRecord | None) -> None:
        """Move the stored bytes of ``key`` aside: kept for inspection, never served.
        ``reason``: the corruption just found (logged and counted), or None when the read
        that found it already reported it."""

    def clear(self) -> None:
        """Drop every item (flush_all now)."""

    def set_oldest_live(self, at: int) -> None:
        """Set the ``flush_all`` cut-off."""


def _live(tx: Txn, key: bytes) -> Record | None:
    """The record an op may act on: verified and alive; a corrupt one is quarantined."""
    try:
        rec = tx.get(key)
    except CorruptRecord as exc:
        tx.quarantine(key, exc)
        return None
    if rec is None or not alive(rec, tx.now, tx.oldest_live):
        return None
    return rec


class WriteOp:
    """A change applied inside a write transaction; subclasses are frozen dataclasses."""

    __slots__ = ()

    def apply(self, tx: Txn) -> Result:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True, slots=True, init=False)
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

    def __init__(self, mode: bytes, key: bytes, value: bytes, flags: int = 0,
                 exptime: int = 0, compare_cas: int | None = None,
                 explicit_cas: int | None = None, invalidate: bool = False,
                 vivify: int | None = None) -> None:
        # One per set: see runtime.slots.
        _set_mode(self, mode)
        _set_key(self, key)
        _set_value(self, value)
        _set_flags(self, flags)
        _set_exptime(self, exptime)
        _set_compare_cas(self, compare_cas)
        _set_explicit_cas(self, explicit_cas)
        _set_invalidate(self, invalidate)
        _set_vivify(self, vivify)

    def apply(self, tx: Txn) -> Result:
        mode = self.mode
        if self.compare_cas is None and mode in (b"set", b"add", b"replace"):
            if mode == b"set":
                # The hot path: nothing about the old item matters.
                exptime = self.exptime
                rec = tx.put(self.key, self.value, self.flags,
                             absolute_exptime(exptime, tx.now) if exptime else 0,
                             cas=self.explicit_cas)
                return Result(Outcome.STORED, rec)
            # add/replace never serve the old value: its header says whether it lives.
            old = tx.header(self.key)
            if old is not None and not alive(old, tx.now, tx.oldest_live):
                old = None
        else:
            old = _live(tx, self.key)
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


_set_mode: Final = slot_setter(StoreOp, "mode")
_set_key: Final = slot_setter(StoreOp, "key")
_set_value: Final = slot_setter(StoreOp, "value")
_set_flags: Final = slot_setter(StoreOp, "flags")
_set_exptime: Final = slot_setter(StoreOp, "exptime")
_set_compare_cas: Final = slot_setter(StoreOp, "compare_cas")
_set_explicit_cas: Final = slot_setter(StoreOp, "explicit_cas")
_set_invalidate: Final = slot_setter(StoreOp, "invalidate")
_set_vivify: Final = slot_setter(StoreOp, "vivify")


@dataclass(frozen=True, slots=True)
class DeleteOp(WriteOp):
    """delete and md (``invalidate`` marks stale instead, ``exptime`` then updates TTL)."""

    key: bytes
    compare_cas: int | None = None
    invalidate: bool = False
    exptime: int | None = None

    def apply(self, tx: Txn) -> Result:
        old = _live(tx, self.key)
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

    def apply(self, tx: Txn) -> Result:
        old = _live(tx, self.key)
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

    def apply(self, tx: Txn) -> Result:
        exptime = absolute_exptime(self.exptime, tx.now)
        out: list[Record | None] = []
        for key in self.keys:
            old = _live(tx, key)
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

    def apply(self, tx: Txn) -> Result:
        rec = _live(tx, self.key)
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

    def apply(self, tx: Txn) -> Result:
        if self.delay <= 0:
            tx.clear()
        else:
            tx.set_oldest_live(absolute_exptime(self.delay, tx.now))
        return Result(Outcome.OK)


@dataclass(frozen=True, slots=True)
class ExpireOp(WriteOp):
    """Remove an item found expired by a read, unless it was rewritten since."""

    key: bytes
    cas: int

    def apply(self, tx: Txn) -> Result:
        try:
            rec = tx.get(self.key, with_value=False)
        except CorruptRecord:
            return Result(Outcome.NOT_FOUND)
        if rec is None:
            return Result(Outcome.NOT_FOUND)
        if rec.cas != self.cas or alive(rec, tx.now, tx.oldest_live):
            return Result(Outcome.NOT_STORED)
        tx.delete(self.key)
        tx.counters["reclaimed"] += 1
        return Result(Outcome.DELETED)


@dataclass(frozen=True, slots=True)
class QuarantineOp(WriteOp):
    """Move a record that failed its checksum out of the items."""

    key: bytes

    def apply(self, tx: Txn) -> Result:
        try:
            rec = tx.get(self.key, with_value=False)
        except CorruptRecord:
            tx.quarantine(self.key, None)  # already counted and logged by the read
            return Result(Outcome.OK)
        if rec is None:
            return Result(Outcome.NOT_FOUND)
        return Result(Outcome.NOT_STORED)  # rewritten since: nothing to do


@dataclass(frozen=True, slots=True)
class ReapOp(WriteOp):
    """Delete up to ``limit`` expired items from ``start`` on (a resumable sweep).

    The result's ``number`` is how many were removed, ``scanned`` how many keys were
    examined, ``record.key`` where to resume (b"" once the sweep wrapped around).
    """

    start: bytes = b""
    limit: int = 1000

    def apply(self, tx: Txn) -> Result:
        now = tx.now
        oldest = tx.oldest_live
        expired: list[bytes] = []
        last = b""
        more = False
        scanned = 0
        entries = tx.iterate(self.start)
        for key, rec in entries:
            if scanned == self.limit:
                more = True
                break
            last = key
            scanned += 1
            if rec is not None and not alive(rec, now, oldest):
                expired.append(key)
        del entries  # done iterating before writing
        for key in expired:
            tx.delete(key)
        tx.counters["reclaimed"] += len(expired)
        resume = last + b"\x00" if more else b""
        return Result(Outcome.OK, Record(resume, b"", 0, 0, 0, 0), len(expired),
                      scanned=scanned)


Callback = Callable[[Result], None]
#: What a refused write (the store is shutting down) is answered with.
_REFUSED: Final = Result(Outcome.FAILED)


class Committer(Protocol):
    """Where a store sends its writes (see :meth:`BaseStore.use_committer`)."""

    def enqueue(self, op: WriteOp, done: Callback) -> None:
        """Queue ``op``: ``done`` is called with its result once the write is durable.

        :raises StorageError: the op is refused (the committer was stopped).
        """

    def stop(self) -> None:
        """Commit what is queued, then refuse further ops."""


class ItemStore(Protocol):
    """What the command handler needs of a store; backends: ``lmdbstore``, ``memstore``."""

    #: Where the data lives (stats show it).
    path: Path
    #: The store's own counts: corrupt_reads, get_expired, reclaimed, commits...
    counters: collections.Counter[str]

    def get_value(self, key: bytes) -> tuple[int, int, bytes] | None:
        """``(flags, cas, value)`` of a live item, or None (the plain get's fast path)."""

    def get_many(self, keys: Sequence[bytes]) -> list[Record | None]:
        """Live records of ``keys``, None for misses (expired and corrupt included)."""

    def get(self, key: bytes) -> Record | None:
        """The live record of ``key`` or None."""

    def scan(self, after: bytes = b"", limit: int = 1000) -> list[tuple[Record, int]]:
        """Up to ``limit`` live records (without values) with keys > ``after``, in key
        order, each with the bytes it occupies."""

    def info(self) -> dict[str, int]:
        """Figures for stats: curr_items, bytes, quarantined_items and the ``lmdb_*``
        figures (zero when the backend has none)."""

    def write(self, op: WriteOp) -> defer.Deferred[Result]:
        """Apply ``op`` durably; the Deferred fails (never raises) on a refusal."""

    def enqueue(self, op: WriteOp, done: Callback) -> None:
        """Apply ``op`` durably and call ``done`` with its result (a refusal: with
        :attr:`Outcome.FAILED`, logged); never raises for a refusal.  Without a Deferred:
        the command handler's writes."""


class BaseStore(abc.ABC):
    """What every backend shares: routing writes inline or to a committer.

    Subclasses implement the reads, :meth:`apply_batch` and :meth:`sync`.
    """

    path: Path

    def __init__(self) -> None:
        self.counters: collections.Counter[str] = collections.Counter()
        self._committer: Committer | None = None

    @abc.abstractmethod
    def get_value(self, key: bytes) -> tuple[int, int, bytes] | None:
        """See :meth:`ItemStore.get_value`."""

    @abc.abstractmethod
    def get_many(self, keys: Sequence[bytes]) -> list[Record | None]:
        """See :meth:`ItemStore.get_many`."""

    @abc.abstractmethod
    def scan(self, after: bytes = b"", limit: int = 1000) -> list[tuple[Record, int]]:
        """See :meth:`ItemStore.scan`."""

    @abc.abstractmethod
    def info(self) -> dict[str, int]:
        """See :meth:`ItemStore.info`."""

    @abc.abstractmethod
    def apply_batch(self, ops: Sequence[WriteOp]) -> list[Result]:
        """Apply ``ops`` in one write transaction and commit it; never raises (a failed op
        gets :attr:`Outcome.FAILED`)."""

    @abc.abstractmethod
    def sync(self) -> None:
        """Make every commit so far durable."""

    def commit_queued(self, take: Callable[[], Sequence[WriteOp]]
                      ) -> tuple[Sequence[WriteOp], list[Result], int]:
        """Apply the ops ``take`` returns in one transaction, taking them once no other
        writer can commit (what :class:`~objstore.groupcommit.GroupCommitter` calls):
        the ops, their results and the transaction's id (0: no ops).  This default
        suits a store with no other writer; LMDB's waits for its write lock."""
        ops = take()
        if not ops:
            return ops, [], 0
        results = self.apply_batch(ops)
        return ops, results, self.last_txnid()

    def last_txnid(self) -> int:
        """The id of the newest committed transaction (here: commits made)."""
        return self.counters["commits"]

    @abc.abstractmethod
    def close(self) -> None:
        """Commit what is queued, stop the committer and release the store."""

    def get(self, key: bytes) -> Record | None:
        return self.get_many((key,))[0]

    def execute(self, op: WriteOp) -> Result:
        """Apply one op synchronously in its own durable transaction (tests, tools)."""
        result = self.apply_batch([op])[0]
        self.sync()
        return result

    def write(self, op: WriteOp) -> defer.Deferred[Result]:
        """Apply ``op`` durably: through the committer, or at once without one.  The
        Deferred fires once the write is durable and fails, never raises, on a refusal."""
        committer = self._committer
        if committer is not None:
            d: defer.Deferred[Result] = defer.Deferred()
            try:
                committer.enqueue(op, d.callback)
            except StorageError:
                return defer.fail()
            return d
        try:
            result = self.execute(op)
        except Exception:
            return defer.fail()
        return defer.succeed(result)

    def enqueue(self, op: WriteOp, done: Callback) -> None:
        """See :meth:`ItemStore.enqueue`.  Without a committer ``done`` runs before this
        returns."""
        committer = self._committer
        if committer is not None:
            try:
                committer.enqueue(op, done)
            except StorageError as exc:
                log.error("write %r refused: %s", op, exc)
                done(_REFUSED)
            return
        try:
            result = self.execute(op)
        except StorageError as exc:
            log.error("write %r refused: %s", op, exc)
            result = _REFUSED
        done(result)

    def submit(self, op: WriteOp, callback: Callback | None = None) -> None:
        """:meth:`write` for callers that want a callback (or nothing) and no Deferred;
        a refusal is logged."""
        self.write(op).addCallbacks(callback or _ignore, _log_refused, errbackArgs=(op,))

    def use_committer(self, committer: Committer | None) -> None:
        """Route :meth:`write` through ``committer`` (None: apply inline).  Tests use this
        to hold writes pending and release them at a chosen moment."""
        self._committer = committer

    def close_committer(self) -> None:
        """Commit what is queued and stop the committer; later writes run inline."""
        committer, self._committer = self._committer, None
        if committer is not None:
            committer.stop()


def _ignore(_result: Result) -> None:
    pass


def _log_refused(reason: failure.Failure, op: WriteOp) -> None:
    log.error("write %r refused: %s", op, reason.getErrorMessage())


__all__ = [
    "REALTIME_MAXDELTA",
    "ArithOp",
    "BaseStore",
    "Callback",
    "Committer",
    "DeleteOp",
    "ExpireOp",
    "FlushOp",
    "ItemStore",
    "MetaGetOp",
    "Outcome",
    "QuarantineOp",
    "ReapOp",
    "Result",
    "StoreOp",
    "TouchOp",
    "Txn",
    "WriteOp",
    "absolute_exptime",
    "alive",
]
