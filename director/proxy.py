"""directord's command handler: memcached commands from plain clients, served by the blob
client's item operations.

:class:`ProxyHandler` plugs into :class:`objstore.server.ObjstoreProtocol` (the same
sans-IO parser and Twisted adapter objstored uses).  Supported: ``get``/``gets`` (several
keys), ``set``, ``add``, ``delete``, ``touch``, the meta commands ``mg``/``ms``/``md`` (and
``mn``, which quiet-mode clients send to flush), ``version`` and ``quit``.  Every other
command is answered ``SERVER_ERROR <cmd> not supported by directord``; an unknown one gets
memcached's ``ERROR``.

Requests that reach Redis or object servers run as asyncio coroutines on the reactor's
loop (Twisted runs on the asyncio reactor) and come back to the protocol as Deferreds
(``Deferred.fromFuture``).  This module is the one boundary where the director's
exceptions become memcached's words: an unreachable index or too few object servers
is ``SERVER_ERROR <why>``, a value that would corrupt a blob is ``CLIENT_ERROR <why>``.

Blob ids are content addresses shared by many messages, so a key that is a blob id (64
lowercase hex digits) is guarded: a stored value must decode, per its flags
(:mod:`director.codec`), to content with that id; a value read is returned as stored
(a chunked blob's manifest) only once the whole content verified against the id
(:mod:`director.blobreader`); a blob already indexed is not uploaded again (a dedup
hit); blob ids never expire and are deleted only by gc, which collects those no message
references.  Every other key is the client's own: it is indexed in the items' key space
(:meth:`director.index.LocationIndex.item_space`), which gc never sweeps, so it lives
until the client deletes it or it expires.  Keys of
the form ``<blob id>/<n>`` are reserved for chunks of large blobs.  Values of blob ids
read through directord are cached in memory (they never change); other keys are not,
since another directord may change them.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import struct
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

from twisted.internet import defer

from director.cache import MemoryCache
from director.client import BlobClient
from director.codec import FLAG_MANIFEST, CodecError, is_chunk_key
from director.errors import DirectorError
from director.keys import is_blob_id
from director.metrics import ProxyMetrics
from objstore import protocol as p
from objstore.replies import (
    DELETED,
    NOT_FOUND,
    NOT_STORED,
    STORED,
    TOUCHED,
    ErrorReply,
    MetaReply,
    Reply,
    Status,
    Value,
    Values,
    VersionReply,
)
from objstore.server import Answer

log = logging.getLogger(__name__)

#: What ``version`` answers: the memcached protocol level, then who we are.
VERSION: Final = b"1.6.18-directord"

E_TOO_LARGE: Final = ErrorReply(b"SERVER_ERROR", b"object too large for cache")
E_INTERNAL: Final = ErrorReply(b"SERVER_ERROR", b"internal error")
E_CHUNK_KEY: Final = ErrorReply(b"CLIENT_ERROR", b"keys <blob id>/<n> are reserved for "
                                                 b"chunks of blobs")
E_BLOB_EXPIRY: Final = ErrorReply(b"CLIENT_ERROR", b"blob ids never expire (exptime must be 0)")
E_BLOB_DELETE: Final = ErrorReply(b"CLIENT_ERROR", b"blob ids are deleted by gc, not by "
                                                   b"clients")
E_BLOB_MANIFEST: Final = ErrorReply(b"CLIENT_ERROR", b"chunked blobs cannot be stored "
                                                     b"through directord")
_STORED: Final = Status(STORED)
_NOT_STORED: Final = Status(NOT_STORED)
_DELETED: Final = Status(DELETED)
_NOT_FOUND: Final = Status(NOT_FOUND)
_TOUCHED: Final = Status(TOUCHED)
_MN: Final = MetaReply(b"MN")
_FLAGS: Final = struct.Struct(">I")

#: Return flags of mg that directord can answer (t, h, l need the object server's item
#: metadata, which a proxied read does not carry).
_MG_RETURNS: Final = frozenset(b"bcfkOs")
_MS_RETURNS: Final = frozenset(b"bkO")
_MD_RETURNS: Final = frozenset(b"bkO")


def unsupported(name: bytes) -> ErrorReply:
    """The reply to a command directord does not proxy."""
    return ErrorReply(b"SERVER_ERROR", name + b" not supported by directord")


class ProxyHandler:
    """Turns memcached commands into blob-client item operations.

    :param client: the blob client (opened on the reactor's asyncio loop).
    :param metrics: where requests, errors, latency, dedup and cache hits are counted.
    :param cache_bytes: bound of the memory cache of blob-id values (0 = no cache).
    :param clock: monotonic seconds, for latency.
    """

    def __init__(self, client: BlobClient, metrics: ProxyMetrics, *, cache_bytes: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.metrics = metrics
        self.cache = MemoryCache(cache_bytes) if cache_bytes > 0 else None
        self._clock = clock
        self._dispatch: dict[type, Callable[[Any], Answer]] = {
            p.Get: self._get,
            p.Store: self._store,
            p.Delete: self._delete,
            p.Touch: self._touch,
            p.MetaGet: self._mg,
            p.MetaSet: self._ms,
            p.MetaDelete: self._md,
            p.MetaNoop: lambda _cmd: self._immediate(b"mn", _MN),
            p.Version: lambda _cmd: self._immediate(b"version", VersionReply(VERSION)),
            p.ProtocolError: self._protocol_error,
            p.TooLarge: self._too_large,
            p.Arith: lambda cmd: self._unsupported(b"incr" if cmd.incr else b"decr",
                                                   cmd.noreply),
            p.FlushAll: lambda cmd: self._unsupported(b"flush_all", cmd.noreply),
            p.Verbosity: lambda cmd: self._unsupported(b"verbosity", cmd.noreply),
            p.Stats: lambda _cmd: self._unsupported(b"stats"),
            p.Metadump: lambda _cmd: self._unsupported(b"lru_crawler"),
            p.MetaArith: lambda _cmd: self._unsupported(b"ma"),
            p.MetaDebug: lambda _cmd: self._unsupported(b"me"),
        }

    #: A write takes effect only when its replicas answered: it waits for every earlier
    #: command of its connection, so a connection's commands take effect in order.
    serial_writes = True

    @staticmethod
    def is_write(cmd: p.Command) -> bool:
        """Writes hold later reads of the same connection until they are done."""
        return isinstance(cmd, p.Store | p.Delete | p.Touch | p.MetaSet | p.MetaDelete
                          | p.TooLarge)

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
        except DirectorError as exc:
            error = "server"
            reply = ErrorReply(b"SERVER_ERROR", _one_line(str(exc)))
        except Exception:
            log.exception("%s failed", name)
            error = "internal"
            reply = E_INTERNAL
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
                              + _one_line(str(exc)))
        return None

    # -- cache of blob-id values ----------------------------------------------------------

    def _cached(self, key: bytes) -> Value | None:
        if self.cache is None or not is_blob_id(key):
            return None
        raw = self.cache.get(key.decode("ascii"))
        if raw is None:
            self.metrics.cache_misses += 1
            return None
        self.metrics.cache_hits += 1
        (flags,) = _FLAGS.unpack_from(raw)
        return Value(key, flags, raw[_FLAGS.size:])

    def _remember(self, key: bytes, value: bytes, flags: int) -> None:
        if self.cache is not None and is_blob_id(key):
            self.cache.put(key.decode("ascii"), _FLAGS.pack(flags) + value)

    # -- classic commands -----------------------------------------------------------------

    def _get(self, cmd: p.Get) -> Answer:
        if cmd.touch is not None:
            return self._unsupported(cmd.name)
        found: dict[bytes, Value] = {}
        todo: list[bytes] = []
        for key in dict.fromkeys(cmd.keys):
            hit = None if cmd.with_cas else self._cached(key)
            if hit is None:
                todo.append(key)
            else:
                found[key] = hit
        if not todo:
            return self._immediate(cmd.name, Values(tuple(found[k] for k in cmd.keys)))
        return self._run(cmd.name, self._get_async(cmd.keys, todo, found, cmd.with_cas))

    async def _get_async(self, keys: tuple[bytes, ...], todo: list[bytes],
                         found: dict[bytes, Value], with_cas: bool) -> Reply:
        got = await self.client.get_items(todo, cas=with_cas)
        for key, item in got.items():
            self._remember(key, item.value, item.flags)
        found.update(got)
        # memcached answers a key as often as it was asked for, in request order.
        return Values(tuple(Value(k, found[k].flags, found[k].value,
                                  found[k].cas if with_cas else None)
                            for k in keys if k in found))

    def _store(self, cmd: p.Store) -> Answer:
        if cmd.name not in (b"set", b"add"):
            return self._unsupported(cmd.name, cmd.noreply)
        refusal = self._check_key(cmd.key, cmd.exptime)
        if refusal is None and is_blob_id(cmd.key):
            refusal = self._check_blob_value(cmd.key, cmd.value, cmd.flags)
        if refusal is not None:
            return self._refuse(cmd.name, refusal, cmd.noreply)
        return self._run(cmd.name, self._store_async(cmd.key, cmd.value, cmd.flags,
                                                     cmd.exptime, cmd.name == b"add"),
                         cmd.noreply)

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

    def _too_large(self, cmd: p.TooLarge) -> Answer:
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
        return _DELETED if await self.client.delete_item(key) else _NOT_FOUND

    def _touch(self, cmd: p.Touch) -> Answer:
        refusal = self._check_key(cmd.key, cmd.exptime)
        if refusal is not None:
            return self._refuse(b"touch", refusal, cmd.noreply)
        return self._run(b"touch", self._touch_async(cmd.key, cmd.exptime), cmd.noreply)

    async def _touch_async(self, key: bytes, exptime: int) -> Reply:
        return _TOUCHED if await self.client.touch_item(key, exptime) else _NOT_FOUND

    # -- meta commands --------------------------------------------------------------------

    def _meta_unsupported(self, name: bytes, f: p.MetaFlags, allowed: frozenset[int],
                          refused: tuple[tuple[str, bytes], ...]) -> Reply | None:
        """The error for flags directord cannot honour, or None when all are fine."""
        letters = [bytes((c,)) for c in f.returns if c not in allowed]
        letters += [letter for attr, letter in refused if getattr(f, attr) not in (None, False)]
        if not letters:
            return None
        return self._immediate(name, ErrorReply(
            b"SERVER_ERROR", name + b" flag(s) " + b" ".join(letters)
            + b" not supported by directord"), "unsupported")

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

    def _mg(self, cmd: p.MetaGet) -> Answer:
        f = cmd.flags
        refusal = self._meta_unsupported(b"mg", f, _MG_RETURNS, (
            ("ttl", b"T"), ("vivify", b"N"), ("recache", b"R")))
        if refusal is not None:
            return refusal
        with_cas = 0x63 in f.returns  # c
        hit = None if with_cas else self._cached(cmd.key)
        if hit is not None:
            return self._immediate(b"mg", self._mg_reply(cmd, hit))
        return self._run(b"mg", self._mg_async(cmd, with_cas))

    async def _mg_async(self, cmd: p.MetaGet, with_cas: bool) -> Reply | None:
        item = await self.client.get_item(cmd.key, cas=with_cas)
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
        if f.value:
            return MetaReply(b"VA", tuple(flags), item.value)
        return MetaReply(b"HD", tuple(flags))

    def _ms(self, cmd: p.MetaSet) -> Answer:
        f = cmd.flags
        if f.mode not in (None, b"S", b"E"):
            return self._immediate(b"ms", ErrorReply(
                b"SERVER_ERROR", b"ms mode " + f.mode + b" not supported by directord"),
                "unsupported")
        refusal = self._meta_unsupported(b"ms", f, _MS_RETURNS, (
            ("compare_cas", b"C"), ("explicit_cas", b"E"), ("invalidate", b"I"),
            ("vivify", b"N")))
        if refusal is not None:
            return refusal
        flags, exptime = f.client_flags or 0, f.ttl or 0
        error = self._check_key(cmd.key, exptime)
        if error is None and is_blob_id(cmd.key):
            error = self._check_blob_value(cmd.key, cmd.value, flags)
        if error is not None:
            return self._refuse(b"ms", error)
        return self._run(b"ms", self._ms_async(cmd, flags, exptime))

    async def _ms_async(self, cmd: p.MetaSet, flags: int, exptime: int) -> Reply | None:
        f = cmd.flags
        status = await self._store_async(cmd.key, cmd.value, flags, exptime, f.mode == b"E")
        if status is _STORED:
            return None if f.quiet else MetaReply(b"HD", tuple(self._echo(cmd.key, f)))
        return MetaReply(b"NS", tuple(self._echo(cmd.key, f)))

    def _md(self, cmd: p.MetaDelete) -> Answer:
        f = cmd.flags
        refusal = self._meta_unsupported(b"md", f, _MD_RETURNS, (
            ("compare_cas", b"C"), ("explicit_cas", b"E"), ("invalidate", b"I"),
            ("ttl", b"T"), ("remove_value", b"x")))
        if refusal is not None:
            return refusal
        if is_blob_id(cmd.key):
            return self._refuse(b"md", E_BLOB_DELETE)
        if is_chunk_key(cmd.key):
            return self._refuse(b"md", E_CHUNK_KEY)
        return self._run(b"md", self._md_async(cmd))

    async def _md_async(self, cmd: p.MetaDelete) -> Reply | None:
        f = cmd.flags
        if await self.client.delete_item(cmd.key):
            return None if f.quiet else MetaReply(b"HD", tuple(self._echo(cmd.key, f)))
        return MetaReply(b"NF", tuple(self._echo(cmd.key, f)))


def _one_line(text: str) -> bytes:
    """A message fit for a memcached error line: one line, printable, bounded."""
    flat = " ".join(text.split())
    return flat.encode("ascii", "replace")[:1000]
