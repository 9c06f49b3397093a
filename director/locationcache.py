"""directord's cache of plain items' index entries, kept exact by Redis's invalidations.

Theory of operation.  A plain ``get`` through directord costs an index lookup in Redis
Cluster (redis-py's cluster pipeline, a write to and a read from each master) before the
read from an object server.  :class:`LocationCache` keeps the entries read (index id ->
node numbers) in a bounded LRU, so a key read again skips Redis.  A cached entry is only
right as long as nobody changed it; the one who tells is Redis itself: every directord
holds a connection to every node of the cluster with ``CLIENT TRACKING on BCAST PREFIX
<prefix>ixi:`` (:mod:`director.tracking`), and each node sends it the name of every
items' bucket a command changed.  This module is the pure half (no I/O): the LRU, the
bucket -> entries map an invalidation uses, the bookkeeping that keeps a lookup racing
an invalidation from caching what it read, and a RESP3 reader for what the tracking
connections receive.

**The race.**  A lookup is sent to Redis on another connection than the invalidations
arrive on, so a lookup that Redis answered *before* a write can reach directord *after*
that write's invalidation.  Caching it would keep the old entry for good.  So a lookup
takes a :class:`Ticket` before it is sent (:meth:`LocationCache.begin`, naming its
buckets), every invalidation of a bucket with lookups in flight is recorded with a
sequence number, and :meth:`LocationCache.finish` caches only the entries whose bucket
no invalidation touched since the ticket was taken, and none at all after a
:meth:`~LocationCache.flush` or while the cache is not :attr:`~LocationCache.usable`.

**Usable.**  The tracking side sets :attr:`LocationCache.usable`: true only while a
tracking connection to every node of the cluster is up.  Turning it off flushes the
cache (invalidations may have been lost with the connection), and a lookup that began
while it was off is never cached.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from director.errors import DirectorError
from runtime import errors as kinds


@dataclass
class CacheStats:
    """Counters for directord's ``stats``."""

    hits: int = 0
    misses: int = 0
    #: Entries dropped because Redis (or this process's own write) changed their bucket.
    invalidations: int = 0
    #: Whole-cache flushes (a tracking connection lost, the topology changed...).
    flushes: int = 0
    evictions: int = 0
    #: Keys whose cached location missed on every replica and were looked up again.
    fallbacks: int = 0
    #: Lookups not cached because an invalidation or flush raced them.
    raced: int = 0


class Ticket:
    """A lookup in flight: its buckets and the sequence number it started at."""

    __slots__ = ("buckets", "start", "valid")

    def __init__(self, buckets: tuple[str, ...], start: int, valid: bool) -> None:
        self.buckets = buckets
        self.start = start
        self.valid = valid


class LocationCache:
    """A bounded LRU of index id -> node numbers, invalidated by bucket key.

    :param limit: entries kept at most (least recently used go first).
    """

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        self.limit = limit
        self.stats = CacheStats()
        #: Set by the tracking side: every node's tracking connection is up.
        self._usable = False
        #: index id -> (node numbers, bucket key), least recently used first.
        self._entries: OrderedDict[str, tuple[tuple[int, ...], str]] = OrderedDict()
        self._by_bucket: dict[str, set[str]] = {}
        #: Bumped by every invalidation and flush; tickets compare against it.
        self._seq = 0
        self._flushed_at = 0
        #: bucket -> lookups in flight; bucket -> seq of its last invalidation meanwhile.
        self._reading: dict[str, int] = {}
        self._invalidated_at: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def usable(self) -> bool:
        return self._usable

    @usable.setter
    def usable(self, value: bool) -> None:
        if self._usable and not value:
            self.flush()
        self._usable = value

    # -- reads ---------------------------------------------------------------------------

    def get(self, index_id: str) -> tuple[int, ...] | None:
        """The cached node numbers of ``index_id`` (None: not cached, or not usable)."""
        if not self._usable:
            return None
        entry = self._entries.get(index_id)
        if entry is None:
            self.stats.misses += 1
            return None
        self._entries.move_to_end(index_id)
        self.stats.hits += 1
        return entry[0]

    def begin(self, buckets: Iterable[str]) -> Ticket:
        """Take a ticket before sending a lookup of entries in ``buckets``."""
        names = tuple(dict.fromkeys(buckets))
        reading = self._reading
        for bucket in names:
            reading[bucket] = reading.get(bucket, 0) + 1
        return Ticket(names, self._seq, self._usable)

    def finish(self, ticket: Ticket, found: Mapping[str, tuple[tuple[int, ...], str]]) -> None:
        """The lookup of ``ticket`` answered ``found`` (index id -> (numbers, bucket));
        cache what no invalidation raced.  Call it whether the lookup succeeded or not
        (with ``{}`` when it failed)."""
        reading, touched = self._reading, self._invalidated_at
        cache = ticket.valid and self._usable and self._flushed_at <= ticket.start
        if cache:
            for index_id, (numbers, bucket) in found.items():
                if not numbers:
                    continue
                if touched.get(bucket, -1) > ticket.start:
                    self.stats.raced += 1
                    continue
                self._put(index_id, numbers, bucket)
        elif found:
            self.stats.raced += 1
        for bucket in ticket.buckets:
            left = reading[bucket] - 1
            if left:
                reading[bucket] = left
            else:
                del reading[bucket]
                touched.pop(bucket, None)

    def _put(self, index_id: str, numbers: tuple[int, ...], bucket: str) -> None:
        entries = self._entries
        old = entries.get(index_id)
        if old is not None and old[1] != bucket:  # cannot happen: one id, one bucket
            self._unlink(index_id, old[1])
        entries[index_id] = (numbers, bucket)
        entries.move_to_end(index_id)
        self._by_bucket.setdefault(bucket, set()).add(index_id)
        while len(entries) > self.limit:
            gone, (_n, gone_bucket) = entries.popitem(last=False)
            self._unlink(gone, gone_bucket)
            self.stats.evictions += 1

    def _unlink(self, index_id: str, bucket: str) -> None:
        members = self._by_bucket.get(bucket)
        if members is not None:
            members.discard(index_id)
            if not members:
                del self._by_bucket[bucket]

    # -- invalidation --------------------------------------------------------------------

    def invalidate(self, buckets: Iterable[str]) -> None:
        """Redis (or this process) changed ``buckets``: forget their entries, and keep
        lookups in flight on them from caching what they read."""
        self._seq += 1
        seq = self._seq
        reading = self._reading
        for bucket in buckets:
            if bucket in reading:
                self._invalidated_at[bucket] = seq
            members = self._by_bucket.pop(bucket, None)
            if members:
                for index_id in members:
                    del self._entries[index_id]
                self.stats.invalidations += len(members)

    def drop(self, index_id: str) -> None:
        """Forget one entry (its location missed: it is looked up again)."""
        entry = self._entries.pop(index_id, None)
        if entry is not None:
            self._unlink(index_id, entry[1])

    def flush(self) -> None:
        """Forget everything; lookups in flight cache nothing."""
        self._seq += 1
        self._flushed_at = self._seq
        self._entries.clear()
        self._by_bucket.clear()
        self.stats.flushes += 1


# -- RESP3, as the tracking connections receive it -------------------------------------------

class NeedData:
    """The reader holds no complete message yet."""


NEED_DATA: Final = NeedData()


@dataclass(frozen=True)
class Push:
    """A RESP3 push message (``>``): ``invalidate`` and its keys."""

    items: tuple[object, ...]


@dataclass(frozen=True)
class RespError:
    """An error reply (``-`` or ``!``)."""

    message: bytes


class RespProtocolError(DirectorError, kinds.Unavailable):
    """The peer sent something that is not RESP3 (the tracking connection is dropped)."""


#: Bytes the reader buffers for one message at most (an invalidation of many keys is
#: far below; anything larger is not what a tracking connection receives).
MAX_MESSAGE: Final = 64 * 1024 * 1024

_AGGREGATES: Final = frozenset(b"*>~%|")


class RespReader:
    """A sans-IO RESP3 reader: :meth:`feed` bytes, :meth:`next` messages.

    Understands every RESP3 type; aggregates become tuples (maps: flat key, value
    tuples), blob strings ``bytes``, nulls None, errors :class:`RespError`, pushes
    :class:`Push`.  Attributes (``|``) are read and dropped.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data
        if len(self._buf) > MAX_MESSAGE:
            raise RespProtocolError(f"message over {MAX_MESSAGE} bytes")

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete message."""
        return len(self._buf) - self._pos

    def next(self) -> object:
        """The next complete message, or :data:`NEED_DATA`."""
        try:
            value, end = self._parse(self._pos)
        except _Incomplete:
            return NEED_DATA
        self._pos = end
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        return value

    def _line(self, pos: int) -> tuple[bytes, int]:
        end = self._buf.find(b"\r\n", pos)
        if end < 0:
            raise _Incomplete()
        return bytes(self._buf[pos:end]), end + 2

    def _parse(self, pos: int) -> tuple[object, int]:
        buf = self._buf
        if pos >= len(buf):
            raise _Incomplete()
        kind = buf[pos]
        line, pos = self._line(pos + 1)
        if kind in (0x2B, 0x3A, 0x2C, 0x23, 0x28):  # + : , # (
            if kind == 0x3A:
                return int(line), pos
            return line, pos
        if kind == 0x5F:  # _
            return None, pos
        if kind == 0x2D:  # -
            return RespError(line), pos
        if kind in (0x24, 0x21, 0x3D):  # $ ! =
            size = int(line)
            if size < 0:
                return None, pos
            if len(buf) < pos + size + 2:
                raise _Incomplete()
            data = bytes(buf[pos:pos + size])
            if kind == 0x21:
                return RespError(data), pos + size + 2
            if kind == 0x3D:
                data = data[4:]  # "txt:" or "mkd:"
            return data, pos + size + 2
        if kind in _AGGREGATES:
            count = int(line)
            if count < 0:
                return None, pos
            if kind in (0x25, 0x7C):  # % |
                count *= 2
            items = []
            for _ in range(count):
                item, pos = self._parse(pos)
                items.append(item)
            if kind == 0x7C:  # an attribute precedes the reply it describes
                return self._parse(pos)
            if kind == 0x3E:
                return Push(tuple(items)), pos
            return tuple(items), pos
        raise RespProtocolError(f"unknown RESP3 type byte {bytes((kind,))!r}")


class _Incomplete(Exception):
    pass


def encode_command(*args: bytes | str | int) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)
