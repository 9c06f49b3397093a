"""directord's command handler: memcached commands from plain clients, served by the blob
client's item operations.

:class:`ProxyHandler` plugs into :class:`objstore.server.ObjstoreProtocol` (the same
sans-IO parser and Twisted adapter objstored uses).  It speaks memcached's whole text
protocol for plain items: ``get``/``gets``/``gat``/``gats``, ``set``/``add``/``replace``/
``append``/``prepend``/``cas``, ``incr``/``decr``, ``delete``, ``touch``, the meta
commands ``mg``/``ms``/``md``/``ma``/``me``/``mn`` with their flags and modes,
``flush_all`` (only where ``director.flush_all_enabled`` allows it), ``stats`` (directord's
own counters), ``verbosity``, ``version`` and ``quit``.  ``lru_crawler`` is answered
``SERVER_ERROR lru_crawler not supported by directord`` (directord holds no items of its
own to list); an unknown command gets memcached's ``ERROR``.

Plain sets and gets take the fast paths: a set writes every replica in parallel, a get
reads the least busy one.  Every other write (and every meta get, so win tokens and
TTLs read as one object server keeps them) runs on the item's primary replica, which
applies it atomically, and is then copied to the others
(:meth:`director.client.BlobClient.write_item`; docs/director.md says how cas and incr
stay correct with replicas and failover).  The protocol adapter makes a connection's
commands take effect in the order sent (``serial_writes``).

Requests that reach Redis or object servers run as asyncio coroutines on the reactor's
loop (Twisted runs on the asyncio reactor) and come back to the protocol as Deferreds
(``Deferred.fromFuture``).  Their errors become memcached's words through the one
memcached error map, :func:`objstore.replies.error_reply`: an unreachable index or too few
object servers is ``SERVER_ERROR <why>``, a bug ``SERVER_ERROR internal error``.  A value
that would corrupt a blob is refused before any I/O, ``CLIENT_ERROR <why>``; what the
primary replica refused (``incr`` of a non-number) is answered in its words.

Blob ids are content addresses shared by many messages, so a key that is a blob id (64
lowercase hex digits) is guarded: a stored value must decode, per its flags
(:mod:`director.codec`), to content with that id; a value read is returned as stored
(a chunked blob's manifest) only once the whole content verified against the id
(:mod:`director.blobreader`); a blob already indexed is not uploaded again (a dedup
hit); blob ids are only set or added, never changed in place, never expire and are
deleted only by gc, which collects those no message references.  Every other key is
the client's own: it is indexed in the items' key space
(:meth:`director.index.LocationIndex.item_space`), which gc never sweeps, so it lives
until the client deletes it or it expires.  Keys of the form ``<blob id>/<n>`` are
reserved for chunks of large blobs.  Values of blob ids read through directord are
cached in memory (they never change); other keys' values are not, since another
directord may change them (their index entries may be: director/locationcache.py).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import resource
import struct
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

from twisted.internet import defer

from director.cache import MemoryCache
from director.client import BlobClient
from director.codec import FLAG_MANIFEST, CodecError, is_chunk_key
from director.config import DirectorConfig
from director.itemstate import Copy, ItemWrite
from director.keys import is_blob_id
from director.memcache_client import NodeRefused
from director.metrics import ProxyMetrics
from objstore import protocol as p
from objstore.replies import (
    DELETED,
    E_INTERNAL,
    EXISTS,
    NOT_FOUND,
    NOT_STORED,
    OK,
    RESET,
    STORED,
    TOUCHED,
    ErrorReply,
    MetaReply,
    Number,
    Reply,
    StatsReply,
    Status,
    Value,
    Values,
    VersionReply,
    error_reply,
    one_line,
)
from objstore.server import Answer, Pending
from objstore.stats import Counters, connection_rows
from runtime.errors import kind_of

log = logging.getLogger(__name__)

#: What ``version`` answers: the memcached protocol level, then who we are.
VERSION: Final = b"1.6.18-directord"

E_TOO_LARGE: Final = ErrorReply(b"SERVER_ERROR", b"object too large for cache")
E_CHUNK_KEY: Final = ErrorReply(b"CLIENT_ERROR", b"keys <blob id>/<n> are reserved for "
                                                 b"chunks of blobs")
E_BLOB_EXPIRY: Final = ErrorReply(b"CLIENT_ERROR", b"blob ids never expire (exptime must be 0)")
E_BLOB_DELETE: Final = ErrorReply(b"CLIENT_ERROR", b"blob ids are deleted by gc, not by "
                                                   b"clients")
E_BLOB_MANIFEST: Final = ErrorReply(b"CLIENT_ERROR", b"chunked blobs cannot be stored "
                                                     b"through directord")
E_BLOB_IMMUTABLE: Final = ErrorReply(b"CLIENT_ERROR", b"blob ids are immutable (set or add "
                                                      b"them whole)")
E_FLUSH_DISABLED: Final = ErrorReply(b"CLIENT_ERROR", b"flush_all not allowed")
_STORED: Final = Status(STORED)
_NOT_STORED: Final = Status(NOT_STORED)
_EXISTS: Final = Status(EXISTS)
_DELETED: Final = Status(DELETED)
_NOT_FOUND: Final = Status(NOT_FOUND)
_TOUCHED: Final = Status(TOUCHED)
_OK: Final = Status(OK)
_MN: Final = MetaReply(b"MN")
_EN: Final = MetaReply(b"EN")
_FLAGS: Final = struct.Struct(">I")
#: A meta reply's code as a classic storage command's status word.
_STORE_WORDS: Final = {b"HD": _STORED, b"NS": _NOT_STORED, b"EX": _EXISTS,
                       b"NF": _NOT_FOUND}

#: Return flags of mg that a blob id's verified read can answer (it never expires: t-1).
_MG_BLOB_RETURNS: Final = frozenset(b"bcfkOst")
#: ms/md flags the fast paths answer themselves (every other goes to the primary).
_ECHO_ONLY: Final = frozenset(b"bkO")
_MS_BLOB_RETURNS: Final = _ECHO_ONLY
_WRITES: Final = (p.Store, p.Delete, p.Touch, p.Arith, p.FlushAll, p.MetaSet, p.MetaDelete,
                  p.MetaArith, p.TooLarge)


def unsupported(name: bytes) -> ErrorReply:
    """The reply to a command directord does not proxy."""
    return ErrorReply(b"SERVER_ERROR", name + b" not supported by directord")


class ProxyHandler:
    """Turns memcached commands into blob-client item operations.

    :param client: the blob client (opened on the reactor's asyncio loop).
    :param metrics: where requests, errors, latency, dedup and cache hits are counted.
    :param cache_bytes: bound of the memory cache of blob-id values (0 = no cache).
    :param config: directord's settings (``flush_all_enabled``, what ``stats settings``
        shows).
    :param counters: memcached's counters for ``stats`` (the protocol adapter counts
        connections and bytes in the same object).
    :param clock: monotonic seconds, for latency.
    :param wall_clock: unix seconds, for ``stats``.
    """

    #: A write takes effect only when its replicas answered: it waits for every earlier
    #: command of its connection, so a connection's commands take effect in order.
    serial_writes = True

    def __init__(self, client: BlobClient, metrics: ProxyMetrics, *, cache_bytes: int = 0,
                 config: DirectorConfig | None = None, counters: Counters | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.metrics = metrics
        self.cache = MemoryCache(cache_bytes) if cache_bytes > 0 else None
        self.config = config or DirectorConfig()
        self.counters = counters or Counters()
        self.verbosity = 0
        self._clock = clock
        self._wall = wall_clock
        self._started = wall_clock()
        #: The open connections, for ``stats conns`` (set by whoever owns the factory).
        self.connections: Callable[[], list[tuple[str, str, int]]] | None = None
        self._dispatch: dict[type, Callable[[Any], Answer]] = {
            p.Get: self._get,
            p.Store: self._store,
            p.Delete: self._delete,
            p.Touch: self._touch,
            p.Arith: self._arith,
            p.MetaGet: self._mg,
            p.MetaSet: self._ms,
            p.MetaDelete: self._md,
            p.MetaArith: self._ma,
            p.MetaDebug: self._me,
            p.MetaNoop: lambda _cmd: self._immediate(b"mn", _MN),
            p.Version: lambda _cmd: self._immediate(b"version", VersionReply(VERSION)),
            p.Verbosity: self._verbosity,
            p.FlushAll: self._flush_all,
            p.Stats: self._stats,
            p.ProtocolError: self._protocol_error,
            p.TooLarge: self._too_large,
            p.Metadump: lambda _cmd: self._unsupported(b"lru_crawler"),
            p.Slabs: lambda _cmd: self._unsupported(b"slabs"),
        }

    @staticmethod
    def is_write(cmd: p.Command) -> bool:
        """Writes hold later commands of the same connection until they are done."""
        if isinstance(cmd, _WRITES):
            return True
        if isinstance(cmd, p.Get):
            return cmd.touch is not None
        if isinstance(cmd, p.MetaGet):
            f = cmd.flags
            return f.ttl is not None or f.vivify is not None or f.recache is not None
        return False

    def execute(self, cmd: p.Command) -> Answer:
        """Run one command (not Quit: the protocol handles that)."""
        return self._dispatch[type(cmd)](cmd)

    # -- plumbing -------------------------------------------------------------------------

    def _immediate(self, name: bytes, reply: Reply | None, error: str | None = None
                   ) -> Reply | None:
        self.metrics.observe(name.decode(), 0.0, error)
        return reply

    def _unsupported(self, name: bytes, noreply: bool = False) -> Reply | None:
        return self._immediate(name, None if noreply else unsupported(name), "unsupported")

    def _refuse(self, name: bytes, reply: ErrorReply, noreply: bool = False) -> Reply | None:
        return self._immediate(name, None if noreply else reply, "client")

    def _run(self, name: bytes, coro: Coroutine[Any, Any, Reply | None],
             noreply: bool = False) -> defer.Deferred[Reply | None]:
        """Run ``coro`` on the reactor's asyncio loop; its errors become replies."""
        return defer.Deferred.fromFuture(asyncio.ensure_future(
            self._guarded(name.decode(), coro, noreply)))

    async def _guarded(self, name: str, coro: Coroutine[Any, Any, Reply | None],
                       noreply: bool) -> Reply | None:
        start = self._clock()
        error = None
        try:
            reply = await coro
        except NodeRefused as exc:
            # The primary replica's own answer (incr of a non-number, an append past
            # the item size): the client's error, in memcached's words.
            reply = exc.reply
        except Exception as exc:
            if kind_of(exc) is None:
                log.exception("%s failed", name)
                error = "internal"
            reply = error_reply(exc)
        if isinstance(reply, ErrorReply) and error is None:
            error = "client" if reply.kind == b"CLIENT_ERROR" else "server"
        self.metrics.observe(name, self._clock() - start, error)
        return None if noreply else reply

    def _protocol_error(self, cmd: p.ProtocolError) -> Answer:
        kind, _, message = cmd.message.partition(b" ")
        return self._immediate(b"invalid", None if cmd.noreply else ErrorReply(kind, message),
                               "client")

    def _check_key(self, key: bytes, exptime: int) -> ErrorReply | None:
        """Refusals that need no I/O: reserved chunk keys, expiring blob ids."""
        if is_chunk_key(key):
            return E_CHUNK_KEY
        if exptime and is_blob_id(key):
            return E_BLOB_EXPIRY
        return None

    def _check_blob_value(self, key: bytes, value: bytes, flags: int) -> ErrorReply | None:
        """A value stored under a blob id must be that blob's content, encoded."""
        if flags & FLAG_MANIFEST:
            return E_BLOB_MANIFEST
        try:
            self.client.reader.check_value(key.decode("ascii"), value, flags)
        except CodecError as exc:
            return ErrorReply(b"CLIENT_ERROR", b"value does not match its blob id: "
                              + one_line(str(exc)))
        return None

    # -- cache of blob-id values ----------------------------------------------------------

    def _cached(self, key: bytes, *, read: bool = True) -> Value | None:
        """The cached value of blob id ``key``; ``read``: its value is going out (a read
        the temperature counts), not only its size or flags."""
        if self.cache is None or not is_blob_id(key):
            return None
        raw = self.cache.get(key.decode("ascii"))
        if raw is None:
            self.metrics.cache_misses += 1
            return None
        self.metrics.cache_hits += 1
        if read:  # a read the blob client never sees: its temperature counts it the same
            self.client.temperature.read(key.decode("ascii"))
        (flags,) = _FLAGS.unpack_from(raw)
        return Value(key, flags, raw[_FLAGS.size:])

    def _remember(self, key: bytes, value: bytes, flags: int) -> None:
        if self.cache is not None and is_blob_id(key):
            self.cache.put(key.decode("ascii"), _FLAGS.pack(flags) + value)

    # -- classic commands -----------------------------------------------------------------

    def _get(self, cmd: p.Get) -> Answer:
        c = self.counters
        c.cmd_get += len(cmd.keys)
        if cmd.touch is not None:
            return self._gat(cmd, cmd.touch)
        found: dict[bytes, Value] = {}
        todo: list[bytes] = []
        for key in dict.fromkeys(cmd.keys):
            hit = None if cmd.with_cas else self._cached(key)
            if hit is None:
                todo.append(key)
            else:
                found[key] = hit
        if not todo:
            c.get_hits += len(cmd.keys)
            return self._immediate(cmd.name, Values(tuple(found[k] for k in cmd.keys)))
        if not found and not any(is_blob_id(k) for k in todo):
            # Plain keys: read with every other read of this loop turn, answered by a
            # callback (no task, no future, no Deferred of its own: director/itemreads.py).
            # A read whose connection closed is still read; its reply is dropped.
            start = self._clock()
            name = cmd.name.decode()

            def then(result: dict[bytes, Value] | BaseException) -> Reply:
                reply: Reply
                error: str | None = None
                if isinstance(result, BaseException):
                    failed = self._read_failed(name, result)
                    error = "internal" if failed is E_INTERNAL else \
                        "client" if failed.kind == b"CLIENT_ERROR" else "server"
                    reply = failed
                else:
                    reply = self._values(cmd.keys, result, cmd.with_cas)
                self.metrics.observe(name, self._clock() - start, error)
                return reply

            answer: Pending[dict[bytes, Value] | BaseException] = Pending(then)
            self.client.item_reads.submit(todo, answer.complete)
            return answer
        return self._run(cmd.name, self._get_async(cmd.keys, todo, found, cmd.with_cas))

    @staticmethod
    def _read_failed(name: str, exc: BaseException) -> ErrorReply:
        """The reply to a read that failed, in memcached's words (as :meth:`_guarded`)."""
        if not isinstance(exc, Exception):
            exc = Exception(f"{name} cancelled")
        elif kind_of(exc) is None:
            log.error("%s failed", name, exc_info=exc)
        return error_reply(exc)

    async def _get_async(self, keys: tuple[bytes, ...], todo: list[bytes],
                         found: dict[bytes, Value], with_cas: bool) -> Reply:
        got = await self.client.get_items(todo, cas=with_cas)
        for key, item in got.items():
            self._remember(key, item.value, item.flags)
        found.update(got)
        return self._values(keys, found, with_cas)

    def _values(self, keys: tuple[bytes, ...], found: dict[bytes, Value],
                with_cas: bool) -> Values:
        """memcached answers a key as often as it was asked for, in request order."""
        out = tuple(Value(k, found[k].flags, found[k].value,
                          found[k].cas if with_cas else None)
                    for k in keys if k in found)
        self.counters.get_hits += len(out)
        self.counters.get_misses += len(keys) - len(out)
        return Values(out)

    def _gat(self, cmd: p.Get, exptime: int) -> Answer:
        self.counters.cmd_touch += len(cmd.keys)
        for key in cmd.keys:
            refusal = self._check_key(key, exptime)
            if refusal is not None:
                return self._refuse(cmd.name, refusal)

        async def gat() -> Reply:
            plain = [k for k in dict.fromkeys(cmd.keys) if not is_blob_id(k)]
            touched = await asyncio.gather(*(self.client.touch_item(k, exptime)
                                             for k in plain))
            self.counters.touch_hits += sum(touched)
            self.counters.touch_misses += len(touched) - sum(touched)
            got = await self.client.get_items(list(dict.fromkeys(cmd.keys)),
                                              cas=cmd.with_cas)
            return self._values(cmd.keys, got, cmd.with_cas)

        return self._run(cmd.name, gat())

    def _store(self, cmd: p.Store) -> Answer:
        self.counters.cmd_set += 1
        refusal = self._check_key(cmd.key, cmd.exptime)
        if refusal is None and is_blob_id(cmd.key):
            refusal = E_BLOB_IMMUTABLE if cmd.name not in (b"set", b"add") else \
                self._check_blob_value(cmd.key, cmd.value, cmd.flags)
        if refusal is not None:
            return self._refuse(cmd.name, refusal, cmd.noreply)
        if cmd.name in (b"set", b"add"):
            return self._run(cmd.name, self._store_async(cmd.key, cmd.value, cmd.flags,
                                                         cmd.exptime, cmd.name == b"add"),
                             cmd.noreply)
        return self._run(cmd.name, self._update_async(cmd), cmd.noreply)

    async def _store_async(self, key: bytes, value: bytes, flags: int, exptime: int,
                           only_new: bool) -> Reply:
        if is_blob_id(key):
            await self.client.gc_watch.before_put([key.decode("ascii")])
        if is_blob_id(key) and await self.client.exists(key.decode("ascii")):
            # Same id, same content: nothing to upload.
            self.metrics.dedup_hits += 1
            return _NOT_STORED if only_new else _STORED
        stored = await self.client.put_item(key, value, flags, exptime, only_new=only_new)
        if stored:
            self._remember(key, value, flags)
        return _STORED if stored else _NOT_STORED

    async def _update_async(self, cmd: p.Store) -> Reply:
        """replace, append, prepend and cas: on the item's primary replica."""
        name = cmd.name
        if name == b"cas":
            f = p.MetaFlags(client_flags=cmd.flags, ttl=cmd.exptime,
                            compare_cas=cmd.cas_unique)
            copy = Copy.VALUE
        elif name == b"replace":
            f = p.MetaFlags(client_flags=cmd.flags, ttl=cmd.exptime, mode=b"R")
            copy = Copy.VALUE
        else:  # append/prepend keep the item's flags and exptime, as memcached's do
            f = p.MetaFlags(mode=b"A" if name == b"append" else b"P")
            copy = Copy.READ
        reply = await self.client.write_item(cmd.key, ItemWrite(b"ms", f, cmd.value,
                                                                copy=copy))
        code = reply.code if reply is not None else b"NF" if name == b"cas" else b"NS"
        if name == b"cas":
            c = self.counters
            if code == b"HD":
                c.cas_hits += 1
            elif code == b"EX":
                c.cas_badval += 1
            elif code == b"NF":
                c.cas_misses += 1
        return _STORE_WORDS.get(code, E_INTERNAL)

    def _too_large(self, cmd: p.TooLarge) -> Answer:
        self.counters.store_too_large += 1
        reply = None if cmd.noreply else E_TOO_LARGE
        if cmd.name in (b"set", b"ms") and cmd.key and not is_blob_id(cmd.key) \
                and not is_chunk_key(cmd.key):
            # Like memcached: a failed set must not leave the old value readable.
            async def drop() -> Reply:
                await self.client.delete_item(cmd.key)
                return E_TOO_LARGE

            return self._run(cmd.name, drop(), cmd.noreply)
        return self._immediate(cmd.name, reply, "client")

    def _delete(self, cmd: p.Delete) -> Answer:
        if is_blob_id(cmd.key):
            return self._refuse(b"delete", E_BLOB_DELETE, cmd.noreply)
        if is_chunk_key(cmd.key):
            return self._refuse(b"delete", E_CHUNK_KEY, cmd.noreply)
        return self._run(b"delete", self._delete_async(cmd.key), cmd.noreply)

    async def _delete_async(self, key: bytes) -> Reply:
        if await self.client.delete_item(key):
            self.counters.delete_hits += 1
            return _DELETED
        self.counters.delete_misses += 1
        return _NOT_FOUND

    def _touch(self, cmd: p.Touch) -> Answer:
        self.counters.cmd_touch += 1
        refusal = self._check_key(cmd.key, cmd.exptime)
        if refusal is not None:
            return self._refuse(b"touch", refusal, cmd.noreply)
        return self._run(b"touch", self._touch_async(cmd.key, cmd.exptime), cmd.noreply)

    async def _touch_async(self, key: bytes, exptime: int) -> Reply:
        if await self.client.touch_item(key, exptime):
            self.counters.touch_hits += 1
            return _TOUCHED
        self.counters.touch_misses += 1
        return _NOT_FOUND

    def _arith(self, cmd: p.Arith) -> Answer:
        name = b"incr" if cmd.incr else b"decr"
        refusal = self._check_mutable(cmd.key)
        if refusal is not None:
            return self._refuse(name, refusal, cmd.noreply)

        async def arith() -> Reply:
            f = p.MetaFlags(mode=b"I" if cmd.incr else b"D", delta=cmd.delta, value=True)
            reply = await self.client.write_item(cmd.key, ItemWrite(b"ma", f, copy=Copy.READ))
            hit = reply is not None and reply.code == b"VA"
            c = self.counters
            if cmd.incr:
                c.incr_hits += hit
                c.incr_misses += not hit
            else:
                c.decr_hits += hit
                c.decr_misses += not hit
            if reply is None or reply.code == b"NF":
                return _NOT_FOUND
            if not hit or reply.value is None:
                return E_INTERNAL
            return Number(int(reply.value))

        return self._run(name, arith(), cmd.noreply)

    def _verbosity(self, cmd: p.Verbosity) -> Answer:
        self.verbosity = cmd.level
        return self._immediate(b"verbosity", None if cmd.noreply else _OK)

    def _flush_all(self, cmd: p.FlushAll) -> Answer:
        if not self.config.flush_all_enabled:
            # Refused even with noreply: silently keeping data would be worse.
            return self._refuse(b"flush_all", E_FLUSH_DISABLED)
        self.counters.cmd_flush += 1

        async def flush() -> Reply:
            await self.client.flush_items(cmd.delay)
            return _OK

        return self._run(b"flush_all", flush(), cmd.noreply)

    # -- stats ----------------------------------------------------------------------------

    def _stats(self, cmd: p.Stats) -> Answer:
        group = cmd.args[0] if cmd.args else b""
        if group == b"":
            reply: Reply = StatsReply(self._general_stats())
        elif group == b"settings":
            reply = StatsReply(self._settings_stats())
        elif group == b"reset":
            self.counters.reset()
            reply = Status(RESET)
        elif group == b"conns":
            reply = StatsReply(connection_rows(self.connections() if self.connections else []))
        elif group in (b"items", b"slabs", b"sizes"):
            reply = StatsReply(())  # directord holds no items, slabs or sizes of its own
        else:
            reply = ErrorReply(b"ERROR")
        return self._immediate(b"stats", reply)

    def _general_stats(self) -> tuple[tuple[bytes, bytes], ...]:
        now = self._wall()
        c = self.counters
        usage = resource.getrusage(resource.RUSAGE_SELF)
        client = self.client.stats
        rows: list[tuple[str, object]] = [
            ("pid", os.getpid()), ("uptime", int(now - self._started)), ("time", int(now)),
            ("version", VERSION.decode()), ("pointer_size", 64),
            ("rusage_user", f"{usage.ru_utime:.6f}"),
            ("rusage_system", f"{usage.ru_stime:.6f}"),
            ("max_connections", self.config.max_connections),
        ]
        for name in ("curr_connections", "total_connections", "rejected_connections",
                     "cmd_get", "cmd_set", "cmd_flush", "cmd_touch", "cmd_meta", "get_hits",
                     "get_misses", "get_expired", "get_flushed", "delete_misses",
                     "delete_hits", "incr_misses", "incr_hits", "decr_misses", "decr_hits",
                     "cas_misses", "cas_hits", "cas_badval", "touch_hits", "touch_misses",
                     "store_too_large", "store_no_memory", "bytes_read", "bytes_written",
                     "slow_readers_dropped", "idle_dropped"):
            rows.append((name, getattr(c, name)))
        rows += [
            ("accepting_conns", 1), ("threads", 1),
            ("item_puts", client.item_puts), ("item_gets", client.item_gets),
            # Batches of plain-item reads (director/itemreads.py): item_gets over this is
            # the keys a batch served, what its per-batch writes are shared by.
            ("item_read_batches", self.client.item_reads.batches),
            ("failovers", client.failovers), ("bad_replicas", client.bad_replicas),
            ("dedup_hits", self.metrics.dedup_hits), ("cache_hits", self.metrics.cache_hits),
            ("replicas", self.config.replicas), ("write_quorum", self.config.write_quorum),
        ]
        tracker = self.client.tracker
        if tracker is not None:  # the location cache of plain items (director/tracking.py)
            cache = tracker.cache
            cs = cache.stats
            rows += [
                ("location_cache_limit", cache.limit), ("location_cache_entries", len(cache)),
                ("location_cache_ready", int(cache.usable)),
                ("location_cache_hits", cs.hits), ("location_cache_misses", cs.misses),
                ("location_cache_invalidations", cs.invalidations),
                ("location_cache_flushes", cs.flushes),
                ("location_cache_evictions", cs.evictions),
                ("location_cache_fallbacks", cs.fallbacks),
                ("location_cache_raced", cs.raced),
                ("tracking_connections", tracker.connections),
                ("tracking_lost", tracker.stats.lost),
                ("tracking_topology_changes", tracker.stats.topology_changes),
            ]
        return tuple((k.encode(), str(v).encode()) for k, v in rows)

    def _settings_stats(self) -> tuple[tuple[bytes, bytes], ...]:
        cfg = self.config
        host, _, port = cfg.listen.rpartition(":")
        rows: list[tuple[str, object]] = [
            ("maxconns", cfg.max_connections), ("tcpport", port), ("udpport", 0),
            ("inter", host.strip("[]")), ("verbosity", self.verbosity), ("evictions", "off"),
            ("cas_enabled", "yes"), ("binding_protocol", "ascii"),
            ("item_size_max", cfg.max_item_size), ("max_line", cfg.max_line),
            ("max_pipeline", cfg.max_pipeline), ("max_reply_buffer", cfg.max_reply_buffer),
            ("idle_timeout", int(cfg.idle_timeout)),
            ("flush_enabled", "yes" if cfg.flush_all_enabled else "no"),
            ("replicas", cfg.replicas), ("write_quorum", cfg.write_quorum),
        ]
        return tuple((k.encode(), str(v).encode()) for k, v in rows)

    # -- meta commands --------------------------------------------------------------------

    @staticmethod
    def _echo(key: bytes, f: p.MetaFlags) -> list[bytes]:
        """The k, O and b flags a meta reply echoes, in request order."""
        out: list[bytes] = []
        for flag in f.returns:
            if flag == 0x6B:  # k
                out.append(b"k" + (base64.b64encode(key) if f.base64 else key))
                if f.base64:
                    out.append(b"b")
            elif flag == 0x4F:  # O
                out.append(b"O" + (f.opaque or b""))
        return out

    def _check_mutable(self, key: bytes) -> ErrorReply | None:
        """Keys no write but set, add (and gc's delete) may change: blob ids, chunks."""
        if is_blob_id(key):
            return E_BLOB_IMMUTABLE
        if is_chunk_key(key):
            return E_CHUNK_KEY
        return None

    def _quiet(self, f: p.MetaFlags, reply: MetaReply, hide: frozenset[bytes]) -> Reply | None:
        """``q``: the codes memcached leaves out for this command are not sent."""
        return None if f.quiet and reply.code in hide else reply

    def _mg(self, cmd: p.MetaGet) -> Answer:
        self.counters.cmd_get += 1
        self.counters.cmd_meta += 1
        f = cmd.flags
        if is_blob_id(cmd.key):
            return self._mg_blob(cmd)
        write = f.ttl is not None or f.vivify is not None or f.recache is not None
        if f.ttl is not None:
            self.counters.cmd_touch += 1

        async def mg() -> Reply | None:
            if write:
                reply = await self.client.write_item(cmd.key, ItemWrite(
                    b"mg", f, creates=f.vivify is not None,
                    copy=Copy.TOUCH if f.ttl is not None else Copy.NONE, new_cas=False))
            else:
                reply = await self.client.meta_get_item(cmd.key, f)
            if reply is None:
                reply = MetaReply(b"EN", tuple(self._echo(cmd.key, f)))
            if reply.code == b"EN":
                self.counters.get_misses += 1
            else:
                self.counters.get_hits += 1
            return self._quiet(f, reply, _MISS)

        return self._run(b"mg", mg())

    def _mg_blob(self, cmd: p.MetaGet) -> Answer:
        """mg of a blob id: the verified read (and the cache), flags it can answer."""
        f = cmd.flags
        refusal = self._meta_unsupported(b"mg", f, _MG_BLOB_RETURNS, (
            ("ttl", b"T"), ("vivify", b"N"), ("recache", b"R")))
        if refusal is not None:
            return refusal
        with_cas = 0x63 in f.returns  # c
        # Only an mg returning the value is a read: a size or flags check (mg <id> s) must
        # not make a blob look hot (and keep it on the fast tier).
        hit = None if with_cas else self._cached(cmd.key, read=f.value)
        if hit is not None:
            return self._immediate(b"mg", self._mg_reply(cmd, hit))
        return self._run(b"mg", self._mg_async(cmd, with_cas))

    def _meta_unsupported(self, name: bytes, f: p.MetaFlags, allowed: frozenset[int],
                          refused: tuple[tuple[str, bytes], ...]) -> Reply | None:
        """The error for flags a blob id cannot honour, or None when all are fine."""
        letters = [bytes((c,)) for c in f.returns if c not in allowed]
        letters += [letter for attr, letter in refused if getattr(f, attr) not in (None, False)]
        if not letters:
            return None
        return self._immediate(name, ErrorReply(
            b"CLIENT_ERROR", name + b" flag(s) " + b" ".join(letters)
            + b" not valid for a blob id"), "client")

    async def _mg_async(self, cmd: p.MetaGet, with_cas: bool) -> Reply | None:
        item = await self.client.get_item(cmd.key, cas=with_cas, read=cmd.flags.value)
        if item is not None:
            self._remember(cmd.key, item.value, item.flags)
        return self._mg_reply(cmd, item)

    def _mg_reply(self, cmd: p.MetaGet, item: Value | None) -> Reply | None:
        f = cmd.flags
        if item is None:
            return None if f.quiet else MetaReply(b"EN", tuple(self._echo(cmd.key, f)))
        flags: list[bytes] = []
        echo = iter(self._echo(cmd.key, f))
        for flag in f.returns:
            if flag in (0x6B, 0x4F):  # k, O (and the b that follows k)
                flags.append(next(echo))
                if flag == 0x6B and f.base64:
                    flags.append(next(echo))
            elif flag == 0x63:
                flags.append(b"c%d" % (item.cas or 0))
            elif flag == 0x66:
                flags.append(b"f%d" % item.flags)
            elif flag == 0x73:
                flags.append(b"s%d" % len(item.value))
            elif flag == 0x74:  # t: blob ids never expire
                flags.append(b"t-1")
        if f.value:
            return MetaReply(b"VA", tuple(flags), item.value)
        return MetaReply(b"HD", tuple(flags))

    def _ms(self, cmd: p.MetaSet) -> Answer:
        self.counters.cmd_set += 1
        self.counters.cmd_meta += 1
        f = cmd.flags
        flags, exptime = f.client_flags or 0, f.ttl or 0
        error = self._check_key(cmd.key, exptime)
        if error is None and is_blob_id(cmd.key):
            error = self._ms_blob_refusal(cmd)
        if error is not None:
            return self._refuse(b"ms", error)
        plain = (f.mode in (None, b"S") and f.compare_cas is None and not f.invalidate
                 and f.explicit_cas is None and all(c in _ECHO_ONLY for c in f.returns))
        if plain or is_blob_id(cmd.key):
            return self._run(b"ms", self._ms_plain(cmd, flags, exptime))
        mode = f.mode or b"S"
        creates = f.compare_cas is None and (mode in (b"S", b"E") or f.vivify is not None)
        copy = Copy.DROP if f.invalidate else Copy.READ if mode in (b"A", b"P") else Copy.VALUE

        async def ms() -> Reply | None:
            reply = await self.client.write_item(cmd.key, ItemWrite(
                b"ms", f, cmd.value, creates=creates, copy=copy))
            if reply is None:  # no such item: what memcached says for the mode
                code = b"NF" if f.compare_cas is not None else b"NS"
                reply = MetaReply(code, tuple(self._echo(cmd.key, f)))
            return self._quiet(f, reply, _DONE_QUIET)

        return self._run(b"ms", ms())

    def _ms_blob_refusal(self, cmd: p.MetaSet) -> ErrorReply | None:
        f = cmd.flags
        bad = [bytes((c,)) for c in f.returns if c not in _MS_BLOB_RETURNS]
        bad += [letter for attr, letter in (
            ("compare_cas", b"C"), ("explicit_cas", b"E"), ("invalidate", b"I"),
            ("vivify", b"N")) if getattr(f, attr) not in (None, False)]
        if f.mode not in (None, b"S", b"E"):
            return E_BLOB_IMMUTABLE
        if bad:
            return ErrorReply(b"CLIENT_ERROR", b"ms flag(s) " + b" ".join(bad)
                              + b" not valid for a blob id")
        return self._check_blob_value(cmd.key, cmd.value, f.client_flags or 0)

    async def _ms_plain(self, cmd: p.MetaSet, flags: int, exptime: int) -> Reply | None:
        f = cmd.flags
        status = await self._store_async(cmd.key, cmd.value, flags, exptime, f.mode == b"E")
        if status is _STORED:
            return None if f.quiet else MetaReply(b"HD", tuple(self._echo(cmd.key, f)))
        return MetaReply(b"NS", tuple(self._echo(cmd.key, f)))

    def _md(self, cmd: p.MetaDelete) -> Answer:
        self.counters.cmd_meta += 1
        f = cmd.flags
        if is_blob_id(cmd.key):
            return self._refuse(b"md", E_BLOB_DELETE)
        if is_chunk_key(cmd.key):
            return self._refuse(b"md", E_CHUNK_KEY)
        plain = (f.compare_cas is None and not f.invalidate and f.ttl is None
                 and not f.remove_value and all(c in _ECHO_ONLY for c in f.returns))

        async def md() -> Reply | None:
            if plain:
                found = await self.client.delete_item(cmd.key)
                reply = MetaReply(b"HD" if found else b"NF", tuple(self._echo(cmd.key, f)))
            else:
                got = await self.client.write_item(cmd.key, ItemWrite(
                    b"md", f, copy=Copy.DROP if f.invalidate or f.remove_value
                    else Copy.DELETE, new_cas=False))
                reply = got or MetaReply(b"NF", tuple(self._echo(cmd.key, f)))
            if reply.code == b"HD":
                self.counters.delete_hits += 1
            elif reply.code == b"NF":
                self.counters.delete_misses += 1
            return self._quiet(f, reply, _DONE_QUIET)

        return self._run(b"md", md())

    def _ma(self, cmd: p.MetaArith) -> Answer:
        self.counters.cmd_meta += 1
        f = cmd.flags
        refusal = self._check_mutable(cmd.key)
        if refusal is not None:
            return self._refuse(b"ma", refusal)

        async def ma() -> Reply | None:
            reply = await self.client.write_item(cmd.key, ItemWrite(
                b"ma", f, creates=f.vivify is not None, copy=Copy.READ))
            if reply is None:
                reply = MetaReply(b"NF", tuple(self._echo(cmd.key, f)))
            hit = reply.code in (b"HD", b"VA")
            c = self.counters
            if f.mode == b"D":
                c.decr_hits += hit
                c.decr_misses += reply.code == b"NF"
            else:
                c.incr_hits += hit
                c.incr_misses += reply.code == b"NF"
            return self._quiet(f, reply, _DONE_QUIET | {b"VA"})

        return self._run(b"ma", ma())

    def _me(self, cmd: p.MetaDebug) -> Answer:
        self.counters.cmd_meta += 1

        async def me() -> Reply:
            got = await self.client.debug_item(cmd.key, cmd.base64)
            return _EN if got is None else got

        return self._run(b"me", me())


#: Codes ``q`` hides: a meta get's miss; a write's success.
_MISS: Final = frozenset((b"EN",))
_DONE_QUIET: Final = frozenset((b"HD",))

