"""Executes parsed memcached commands against the store and builds the replies.

Reads run at once on the reactor thread.  Writes go to the store's group-commit queue and
come back as a :class:`~objstore.server.Pending` that the commit completes, with the reply
(or None for ``noreply``/quiet), once the write is durable.  :meth:`Handler.is_write` tells the
protocol which commands are writes, so it can keep a connection's reads behind its own
pending writes (memcached's read-your-writes order on one connection).

This is the one place where store outcomes become memcached's words.
"""

from __future__ import annotations

import base64
import logging
import os
import resource
import time
from collections.abc import Callable, Iterator
from typing import Final

from objstore import protocol as p
from objstore.config import ObjstoreConfig
from objstore.items import (
    ArithOp,
    DeleteOp,
    FlushOp,
    ItemStore,
    MetaGetOp,
    Outcome,
    Result,
    StoreOp,
    TouchOp,
    WriteOp,
)
from objstore.record import Record
from objstore.replies import (
    DELETED,
    EXISTS,
    NOT_FOUND,
    NOT_STORED,
    OK,
    RESET,
    STORED,
    TOUCHED,
    ErrorReply,
    MetaDebugReply,
    MetadumpEntry,
    MetaReply,
    Number,
    Reply,
    StatsReply,
    Status,
    Value,
    Values,
    VersionReply,
    format_metadump_line,
)
from objstore.server import Answer, Pending
from objstore.stats import OP_INDEX, OTHER, Counters, HotKeys, connection_rows

#: What ``version`` answers: memcached's protocol level, then who we are.
VERSION: Final = b"1.6.18-objstore"

E_TOO_LARGE: Final = ErrorReply(b"SERVER_ERROR", b"object too large for cache")
E_NO_MEMORY: Final = ErrorReply(b"SERVER_ERROR", b"out of memory storing object")
E_FAILED: Final = ErrorReply(b"SERVER_ERROR", b"storage failure")
E_NON_NUMERIC: Final = ErrorReply(b"CLIENT_ERROR",
                                  b"cannot increment or decrement non-numeric value")
E_FLUSH_DISABLED: Final = ErrorReply(b"CLIENT_ERROR", b"flush_all not allowed")
E_BADCLASS: Final = ErrorReply(b"BADCLASS", b"invalid class id")
E_DETAIL_USAGE: Final = ErrorReply(b"CLIENT_ERROR", b"usage: stats detail on|off|dump")
_STORED: Final = Status(STORED)
_NOT_STORED: Final = Status(NOT_STORED)
_EXISTS: Final = Status(EXISTS)
_NOT_FOUND: Final = Status(NOT_FOUND)
_DELETED: Final = Status(DELETED)
_TOUCHED: Final = Status(TOUCHED)
_OK: Final = Status(OK)
_EMPTY: Final = Values(())
_CRLF_END: Final = b"\r\nEND\r\n"
_MN: Final = MetaReply(b"MN")

_STORE_OUTCOMES: Final[dict[Outcome, Reply]] = {
    Outcome.STORED: _STORED,
    Outcome.NOT_STORED: _NOT_STORED,
    Outcome.EXISTS: _EXISTS,
    Outcome.NOT_FOUND: _NOT_FOUND,
    Outcome.TOO_LARGE: E_NO_MEMORY,
    Outcome.NO_SPACE: E_NO_MEMORY,
    Outcome.FAILED: E_FAILED,
}
_META_CODES: Final[dict[Outcome, bytes]] = {
    Outcome.STORED: b"HD",
    Outcome.OK: b"HD",
    Outcome.DELETED: b"HD",
    Outcome.TOUCHED: b"HD",
    Outcome.NOT_STORED: b"NS",
    Outcome.EXISTS: b"EX",
    Outcome.NOT_FOUND: b"NF",
}
_WRITES: Final = (p.Store, p.Delete, p.Arith, p.Touch, p.FlushAll, p.MetaSet, p.MetaDelete,
                  p.MetaArith, p.TooLarge)

_META_NAMES: Final = frozenset((b"mg", b"ms", b"md", b"ma", b"mn", b"me"))

#: Lines per chunk of a metadump stream.
METADUMP_BATCH: Final = 1000
#: Keys remembered as read since their last write, for mg's ``h`` (memcached's fetched
#: bit); past this many the oldest are forgotten (and answer h0 again).
FETCHED_KEYS: Final = 65536

Outcome_ = Reply | None

log = logging.getLogger(__name__)


def _write_failed(outcome: Outcome) -> Reply:
    """The error for a write that did not happen (store full, failed, refused)."""
    return _STORE_OUTCOMES.get(outcome, E_FAILED)




class Handler:
    """Turns commands into replies.

    :param storage: the store (any :class:`~objstore.items.ItemStore` backend).
    :param config: this server's section of the config.
    :param counters: this process's counters.
    :param hot: hot-key tracker fed by reads.
    :param node_totals: returns the node-wide counters (all workers) for ``stats``.
    :param clock: unix time source.
    """

    def __init__(self, storage: ItemStore, config: ObjstoreConfig, counters: Counters,
                 hot: HotKeys, node_totals: Callable[[], dict[str, int]],
                 clock: Callable[[], float] = time.time, node_id: str = "") -> None:
        self.storage = storage
        self.config = config
        self.counters = counters
        self.hot = hot
        self._node_totals = node_totals
        self._clock = clock
        self._started = clock()
        self.node_id = node_id
        self.verbosity = 0
        self.detail_enabled = False
        #: Keys read since their last write (insertion-ordered, bounded): mg's ``h``.
        self._fetched: dict[bytes, None] = {}
        #: The completions of set/add/replace/append/prepend, bound once.
        self._set_done = self._stored
        self._set_quiet_done = self._stored_quietly
        #: The open connections, for ``stats conns`` (set by whoever owns the factory).
        self.connections: Callable[[], list[tuple[str, str, int]]] | None = None
        self._dispatch: dict[type, Callable[..., Answer]] = {
            p.Get: self._get,
            p.Store: self._store,
            p.Delete: self._delete,
            p.Arith: self._arith,
            p.Touch: self._touch,
            p.Version: self._version,
            p.Verbosity: self._verbosity,
            p.FlushAll: self._flush_all,
            p.Stats: self._stats,
            p.Slabs: self._slabs,
            p.Metadump: self._metadump,
            p.MetaGet: self._mg,
            p.MetaSet: self._ms,
            p.MetaDelete: self._md,
            p.MetaArith: self._ma,
            p.MetaDebug: self._me,
            p.MetaNoop: self._mn,
            p.ProtocolError: self._protocol_error,
            p.TooLarge: self._too_large,
        }

    #: Writes take effect in the store in the order they are executed (the group commit
    #: applies them in queue order): a later write need not wait for an earlier one.
    serial_writes = False

    @staticmethod
    def is_write(cmd: p.Command) -> bool:
        """True for commands answered only after a durable write."""
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

    # -- helpers --------------------------------------------------------------------------

    def _count(self, name: bytes) -> None:
        self.counters.ops[OP_INDEX.get(name, OTHER)] += 1
        if name in _META_NAMES:
            self.counters.cmd_meta += 1

    def _write(self, op: WriteOp, then: Callable[[Result], Reply | None]) -> Pending[Result]:
        """Queue ``op``; the answer is ``then``'s reply to its result, once durable (a
        refused write gets :attr:`Outcome.FAILED`)."""
        pending: Pending[Result] = Pending(then)
        self.storage.enqueue(op, pending.complete)
        return pending

    def _now(self) -> int:
        return int(self._clock())

    def _fetch(self, key: bytes) -> None:
        """Remember that ``key`` was read (mg's ``h``)."""
        fetched = self._fetched
        fetched[key] = None
        if len(fetched) > FETCHED_KEYS:
            del fetched[next(iter(fetched))]

    # -- classic commands -----------------------------------------------------------------

    def _get(self, cmd: p.Get) -> Answer:
        c = self.counters
        keys = cmd.keys
        self._count(cmd.name)
        c.cmd_get += len(keys)
        if cmd.touch is not None:
            c.cmd_touch += len(keys)
            with_cas = cmd.with_cas
            if not keys:
                return _EMPTY

            def touched(res: Result) -> Reply:
                if res.outcome not in (Outcome.TOUCHED, Outcome.NOT_FOUND):
                    return _write_failed(res.outcome)
                records = res.records
                return self._values(keys, records, with_cas, touch=True)

            return self._write(TouchOp(keys, cmd.touch), touched)
        if len(keys) == 1:
            # The common case, kept short: no Record, no Value, the reply's bytes directly.
            key = keys[0]
            found = self.storage.get_value(key)
            if found is None:
                c.get_misses += 1
                return _EMPTY
            c.get_hits += 1
            self.hot.hit(key)
            self._fetch(key)
            flags, cas, value = found
            if cmd.with_cas:
                head = b"VALUE %s %d %d %d\r\n" % (key, flags, len(value), cas)
            else:
                head = b"VALUE %s %d %d\r\n" % (key, flags, len(value))
            return [head, value, _CRLF_END]
        return self._values(keys, self.storage.get_many(keys), cmd.with_cas, touch=False)

    def _values(self, keys: tuple[bytes, ...], records: tuple[Record | None, ...] | list[
            Record | None], with_cas: bool, touch: bool) -> Values:
        c = self.counters
        items = []
        hot = self.hot
        for key, rec in zip(keys, records, strict=True):
            if rec is None:
                c.get_misses += 1
                if touch:
                    c.touch_misses += 1
                continue
            c.get_hits += 1
            if touch:
                c.touch_hits += 1
            hot.hit(key)
            self._fetch(key)
            items.append(Value(key, rec.flags, rec.value, rec.cas if with_cas else None))
        return Values(tuple(items))

    def _store(self, cmd: p.Store) -> Answer:
        c = self.counters
        name = cmd.name
        c.ops[OP_INDEX.get(name, OTHER)] += 1
        c.cmd_set += 1
        key = cmd.key
        fetched = self._fetched
        if key in fetched:
            del fetched[key]
        is_cas = name == b"cas"
        noreply = cmd.noreply
        if not is_cas:
            # The hot path (set, add, ...): no closure, one shared completion.
            op = StoreOp(name, key, cmd.value, cmd.flags, cmd.exptime)
            pending: Pending[Result] = Pending(self._set_quiet_done if noreply
                                               else self._set_done)
            self.storage.enqueue(op, pending.complete)
            return pending
        op = StoreOp(b"set", key, cmd.value, cmd.flags, cmd.exptime,
                     compare_cas=cmd.cas_unique)

        def done(res: Result) -> Reply | None:
            outcome = res.outcome
            if is_cas:
                if outcome is Outcome.STORED:
                    c.cas_hits += 1
                elif outcome is Outcome.EXISTS:
                    c.cas_badval += 1
                elif outcome is Outcome.NOT_FOUND:
                    c.cas_misses += 1
            if outcome in (Outcome.TOO_LARGE, Outcome.NO_SPACE):
                c.store_no_memory += 1
            return None if noreply else _STORE_OUTCOMES[outcome]

        return self._write(op, done)

    def _stored(self, res: Result) -> Reply | None:
        """The reply to a set/add/replace/append/prepend (not cas)."""
        outcome = res.outcome
        if outcome is Outcome.STORED:
            return _STORED
        if outcome in (Outcome.TOO_LARGE, Outcome.NO_SPACE):
            self.counters.store_no_memory += 1
        return _STORE_OUTCOMES[outcome]

    def _stored_quietly(self, res: Result) -> None:
        """:meth:`_stored` for ``noreply``: counts, answers nothing."""
        self._stored(res)

    def _too_large(self, cmd: p.TooLarge) -> Answer:
        self.counters.store_too_large += 1
        self._count(cmd.name)
        reply = None if cmd.noreply else E_TOO_LARGE
        if cmd.name in (b"set", b"ms") and cmd.key:
            # Like memcached: a failed set must not leave the old value readable.
            return self._write(DeleteOp(cmd.key), lambda _res: reply)
        return reply

    def _delete(self, cmd: p.Delete) -> Answer:
        c = self.counters
        self._count(b"delete")
        self._fetched.pop(cmd.key, None)

        def done(res: Result) -> Reply | None:
            if res.outcome is Outcome.DELETED:
                c.delete_hits += 1
                reply: Reply = _DELETED
            elif res.outcome is Outcome.NOT_FOUND:
                c.delete_misses += 1
                reply = _NOT_FOUND
            else:
                reply = E_FAILED
            return None if cmd.noreply else reply

        return self._write(DeleteOp(cmd.key), done)

    def _arith(self, cmd: p.Arith) -> Answer:
        c = self.counters
        self._count(b"incr" if cmd.incr else b"decr")

        def done(res: Result) -> Reply | None:
            outcome = res.outcome
            if outcome is Outcome.OK:
                if cmd.incr:
                    c.incr_hits += 1
                else:
                    c.decr_hits += 1
                assert res.number is not None
                reply: Reply = Number(res.number)
            elif outcome is Outcome.NOT_FOUND:
                if cmd.incr:
                    c.incr_misses += 1
                else:
                    c.decr_misses += 1
                reply = _NOT_FOUND
            elif outcome is Outcome.NON_NUMERIC:
                reply = E_NON_NUMERIC
            else:
                reply = _STORE_OUTCOMES.get(outcome, E_FAILED)
            return None if cmd.noreply else reply

        return self._write(ArithOp(cmd.key, cmd.delta, cmd.incr), done)

    def _touch(self, cmd: p.Touch) -> Answer:
        c = self.counters
        self._count(b"touch")
        c.cmd_touch += 1

        def done(res: Result) -> Reply | None:
            if res.outcome is Outcome.TOUCHED:
                c.touch_hits += 1
                reply: Reply = _TOUCHED
            elif res.outcome is Outcome.NOT_FOUND:
                c.touch_misses += 1
                reply = _NOT_FOUND
            else:
                reply = _write_failed(res.outcome)
            return None if cmd.noreply else reply

        return self._write(TouchOp((cmd.key,), cmd.exptime), done)

    def _version(self, cmd: p.Version) -> Answer:
        self._count(b"version")
        return VersionReply(VERSION)

    def _verbosity(self, cmd: p.Verbosity) -> Answer:
        self._count(b"verbosity")
        self.verbosity = cmd.level
        return None if cmd.noreply else _OK

    def _flush_all(self, cmd: p.FlushAll) -> Answer:
        self._count(b"flush_all")
        if not self.config.flush_all_enabled:
            # Refused even with noreply: silently keeping data would be worse.
            return E_FLUSH_DISABLED
        self.counters.cmd_flush += 1
        return self._write(FlushOp(cmd.delay), lambda res: None if cmd.noreply else (
            _OK if res.outcome is Outcome.OK else _write_failed(res.outcome)))

    def _protocol_error(self, cmd: p.ProtocolError) -> Answer:
        if cmd.noreply:
            return None
        kind, _, message = cmd.message.partition(b" ")
        return ErrorReply(kind, message)

    # -- stats ----------------------------------------------------------------------------

    def _stats(self, cmd: p.Stats) -> Answer:
        self._count(b"stats")
        group = cmd.args[0] if cmd.args else b""
        if group == b"":
            return StatsReply(self._general_stats())
        if group == b"settings":
            return StatsReply(self._settings_stats())
        if group == b"items":
            info = self.storage.info()
            age = self._now() - int(self._started)
            items = [
                ("number", info["curr_items"]), ("number_hot", 0), ("number_warm", 0),
                ("number_cold", info["curr_items"]), ("age_hot", 0), ("age_warm", 0),
                ("age", age), ("mem_requested", info["bytes"]), ("evicted", 0),
                ("evicted_nonzero", 0), ("evicted_time", 0), ("outofmemory",
                                                              self.counters.store_no_memory),
                ("tailrepairs", 0), ("reclaimed", self.storage.counters["reclaimed"]),
                ("expired_unfetched", 0), ("evicted_unfetched", 0), ("evicted_active", 0),
                ("crawler_reclaimed", 0), ("crawler_items_checked", 0),
            ]
            return StatsReply(tuple((b"items:1:%s" % k.encode(), str(v).encode())
                                    for k, v in items))
        if group == b"slabs":
            info = self.storage.info()
            n = info["curr_items"]
            chunk = info["bytes"] // n if n else 0
            slabs = [
                ("1:chunk_size", chunk), ("1:chunks_per_page", 1),
                ("1:total_pages", info["lmdb_used_pages"]), ("1:total_chunks", n),
                ("1:used_chunks", n), ("1:free_chunks", 0), ("1:free_chunks_end", 0),
                ("1:get_hits", self.counters.get_hits), ("1:cmd_set", self.counters.cmd_set),
                ("active_slabs", 1 if n else 0), ("total_malloced", info["lmdb_used_bytes"]),
            ]
            return StatsReply(tuple((k.encode(), str(v).encode()) for k, v in slabs))
        if group == b"reset":
            self.counters.reset()
            return Status(RESET)
        if group == b"detail":
            # Per-prefix statistics are not kept: on/off are remembered, dump is empty.
            what = cmd.args[1] if len(cmd.args) > 1 else b""
            if what in (b"on", b"off"):
                self.detail_enabled = what == b"on"
                return _OK
            if what == b"dump":
                return StatsReply(())
            return E_DETAIL_USAGE
        if group == b"sizes":
            return StatsReply(((b"sizes_status", b"disabled"),))
        if group == b"conns":
            return StatsReply(connection_rows(self.connections() if self.connections else []))
        return ErrorReply(b"ERROR")

    def _slabs(self, cmd: p.Slabs) -> Answer:
        """``slabs automove 0|1|2`` is accepted (the store has no slabs to move);
        ``slabs reassign`` has nothing to give, as memcached says of an empty class."""
        self._count(b"other")
        args = cmd.args
        if args[0] == b"automove" and len(args) == 2 and args[1] in (b"0", b"1", b"2"):
            return _OK
        if args[0] == b"reassign" and len(args) == 3:
            return ErrorReply(b"NOSPARE", b"source class has no spare pages")
        return ErrorReply(b"ERROR")

    def sync_storage_counters(self) -> None:
        """Copy the store's own counts into this process's counters (which workers share)."""
        sc = self.storage.counters
        self.counters.corrupt_reads = sc["corrupt_reads"]
        self.counters.get_expired = sc["get_expired"]
        self.counters.sync_store(sc)

    def _general_stats(self) -> tuple[tuple[bytes, bytes], ...]:
        now = self._clock()
        self.sync_storage_counters()
        totals = self._node_totals()
        info = self.storage.info()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cfg = self.config
        capacity = cfg.capacity_bytes or cfg.map_size
        sc = self.storage.counters
        rows: list[tuple[str, object]] = [
            ("pid", os.getpid()), ("uptime", int(now - self._started)), ("time", int(now)),
            ("version", VERSION.decode()), ("pointer_size", 64),
            ("rusage_user", f"{usage.ru_utime:.6f}"),
            ("rusage_system", f"{usage.ru_stime:.6f}"),
            ("max_connections", cfg.max_connections),
        ]
        for name in ("curr_connections", "total_connections", "rejected_connections",
                     "cmd_get", "cmd_set", "cmd_flush", "cmd_touch", "cmd_meta", "get_hits",
                     "get_misses"):
            rows.append((name, totals[name]))
        for name in ("get_expired", "get_flushed", "delete_misses", "delete_hits", "incr_misses",
                     "incr_hits", "decr_misses", "decr_hits", "cas_misses", "cas_hits",
                     "cas_badval", "touch_hits", "touch_misses", "store_too_large",
                     "store_no_memory", "bytes_read", "bytes_written"):
            rows.append((name, totals[name]))
        rows += [
            ("auth_cmds", totals["auth_cmds"]), ("auth_errors", totals["auth_errors"]),
            ("limit_maxbytes", capacity), ("accepting_conns", 1), ("threads", cfg.workers),
            ("curr_items", info["curr_items"]), ("total_items", totals["cmd_set"]),
            ("bytes", info["bytes"]), ("evictions", 0), ("reclaimed", sc["reclaimed"]),
            ("corrupt_reads", totals["corrupt_reads"]),
            ("quarantined_items", info["quarantined_items"]),
            ("slow_readers_dropped", totals["slow_readers_dropped"]),
            ("idle_dropped", totals["idle_dropped"]),
            ("group_commits", sc["commits"]), ("group_committed_ops", sc["committed_ops"]),
            ("group_syncs", sc["syncs"]), ("group_synced_by_others", sc["synced_by_others"]),
            ("lmdb_map_size", info["lmdb_map_size"]),
            ("lmdb_page_size", info["lmdb_page_size"]),
            ("lmdb_used_pages", info["lmdb_used_pages"]),
            ("lmdb_used_bytes", info["lmdb_used_bytes"]),
            ("lmdb_readers", info["lmdb_readers"]),
            ("lmdb_max_readers", info["lmdb_max_readers"]),
            ("lmdb_depth", info["lmdb_depth"]),
            ("lmdb_last_txnid", info["lmdb_last_txnid"]),
            ("node_id", self.node_id or "-"), ("zone", cfg.zone), ("tier", cfg.tier),
        ]
        return tuple((k.encode(), str(v).encode()) for k, v in rows)

    def _settings_stats(self) -> tuple[tuple[bytes, bytes], ...]:
        cfg = self.config
        host, _, port = cfg.listen.rpartition(":")
        rows: list[tuple[str, object]] = [
            ("maxbytes", cfg.capacity_bytes or cfg.map_size), ("maxconns", cfg.max_connections),
            ("tcpport", port), ("udpport", 0), ("inter", host.strip("[]")),
            ("verbosity", self.verbosity), ("oldest", 0), ("evictions", "off"),
            ("domain_socket", "NULL"), ("umask", 700), ("growth_factor", "1.25"),
            ("chunk_size", 48), ("num_threads", cfg.workers), ("stat_key_prefix", ":"),
            ("detail_enabled", "yes" if self.detail_enabled else "no"),
            ("reqs_per_event", 20), ("cas_enabled", "yes"),
            ("tcp_backlog", 1024), ("binding_protocol", "ascii"), ("auth_enabled_sasl", "no"),
            ("auth_enabled_ascii", cfg.auth_file or "no"),
            ("item_size_max", cfg.max_item_size), ("maxconns_fast", "yes"),
            ("slab_reassign", "no"), ("slab_automove", 0), ("lru_crawler", "no"),
            ("flush_enabled", "yes" if cfg.flush_all_enabled else "no"),
            ("dump_enabled", "yes"), ("idle_timeout", int(cfg.idle_timeout)),
            ("max_line", cfg.max_line), ("group_commit_max", cfg.group_commit_max),
            ("lmdb_path", str(self.storage.path)), ("checksum", "crc32"),
            ("lmdb_map_size", cfg.map_size),
        ]
        return tuple((k.encode(), str(v).encode()) for k, v in rows)

    def _metadump(self, cmd: p.Metadump) -> Answer:
        self._count(b"metadump")
        which = cmd.which
        if which not in (b"all", b"hash") and not which.isdigit():
            return E_BADCLASS
        if which.isdigit() and which != b"1":
            return _EMPTY  # only slab class 1 exists: every other class is empty
        return self._metadump_chunks()

    def _metadump_chunks(self) -> Iterator[bytes]:
        """Stream the dump in batches, each from a fresh short read transaction, so a big
        store neither pins old LMDB pages nor builds the whole listing in memory."""
        after = b""
        while True:
            batch = self.storage.scan(after, METADUMP_BATCH)
            if not batch:
                break
            yield b"".join(
                format_metadump_line(MetadumpEntry(rec.key, rec.exptime or -1, rec.mtime,
                                                   rec.cas, False, 1, size))
                for rec, size in batch)
            after = batch[-1][0].key
            if len(batch) < METADUMP_BATCH:
                break
        yield b"END\r\n"

    # -- meta commands --------------------------------------------------------------------

    def _meta_flags(self, key: bytes, f: p.MetaFlags, rec: Record | None,
                    size: int | None = None, zero_cas: bool = False) -> list[bytes]:
        """The returned flags, in the order the request listed them (``zero_cas``: a
        miss still answers ``c0``, as memcached's ms does)."""
        out: list[bytes] = []
        now = self._now()
        for flag in f.returns:
            if flag == 0x6B:  # k
                if f.base64:
                    out.append(b"k" + base64.b64encode(key))
                    out.append(b"b")
                else:
                    out.append(b"k" + key)
            elif flag == 0x4F:  # O
                out.append(b"O" + (f.opaque or b""))
            elif rec is None:
                if flag == 0x63 and zero_cas:
                    out.append(b"c0")
                continue  # a miss echoes only k, O and b
            elif flag == 0x63:  # c
                out.append(b"c%d" % rec.cas)
            elif flag == 0x66:  # f
                out.append(b"f%d" % rec.flags)
            elif flag == 0x73:  # s
                out.append(b"s%d" % (len(rec.value) if size is None else size))
            elif flag == 0x74:  # t
                out.append(b"t%d" % rec.ttl(now))
            elif flag == 0x68:  # h: read before, since its last write (this process)
                out.append(b"h1" if key in self._fetched else b"h0")
            elif flag == 0x6C:  # l: seconds since the last write or touch
                out.append(b"l%d" % max(now - rec.mtime, 0))
        return out

    def _mg(self, cmd: p.MetaGet) -> Answer:
        c = self.counters
        self._count(b"mg")
        c.cmd_get += 1
        f = cmd.flags
        key = cmd.key
        if f.ttl is not None or f.vivify is not None or f.recache is not None:
            if f.ttl is not None:
                c.cmd_touch += 1
            op = MetaGetOp(key, f.ttl, f.vivify, f.recache)
            return self._write(op, lambda res: self._mg_written(cmd, res))
        rec = self.storage.get(key)
        if rec is not None and rec.stale and not rec.win_sent:
            # The first reader of a stale item wins the right to recache: a write.
            op = MetaGetOp(key)
            return self._write(op, lambda res: self._mg_written(cmd, res))
        win = b"Z" if rec is not None and rec.win_sent else b""
        return self._mg_reply(cmd, rec, win)

    def _mg_written(self, cmd: p.MetaGet, res: Result) -> Reply | None:
        if res.outcome not in (Outcome.OK, Outcome.NOT_FOUND):
            return _write_failed(res.outcome)
        return self._mg_reply(cmd, res.record, res.win)

    def _mg_reply(self, cmd: p.MetaGet, rec: Record | None, win: bytes) -> Reply | None:
        c = self.counters
        f = cmd.flags
        if rec is None:
            c.get_misses += 1
            if f.quiet:
                return None
            return MetaReply(b"EN", tuple(self._meta_flags(cmd.key, f, None)))
        c.get_hits += 1
        if f.value:
            # A read of the value; a size or presence probe (the leveler's sizes, a
            # copy's check) is no read and must not make a cold blob look hot.
            self.hot.hit(cmd.key)
        flags = self._meta_flags(cmd.key, f, rec)
        self._fetch(cmd.key)
        if win == b"W":
            if rec.stale:
                flags.append(b"X")
            flags.append(b"W")
        elif win == b"Z":
            flags.append(b"Z")
            if rec.stale:
                flags.append(b"X")
        elif rec.stale:
            flags.append(b"X")
        if f.value:
            return MetaReply(b"VA", tuple(flags), rec.value)
        return MetaReply(b"HD", tuple(flags))

    def _ms(self, cmd: p.MetaSet) -> Answer:
        c = self.counters
        self._count(b"ms")
        c.cmd_set += 1
        self._fetched.pop(cmd.key, None)
        f = cmd.flags
        mode = {None: b"set", b"S": b"set", b"E": b"add", b"A": b"append", b"P": b"prepend",
                b"R": b"replace"}[f.mode]
        op = StoreOp(mode, cmd.key, cmd.value, f.client_flags or 0, f.ttl or 0,
                     compare_cas=f.compare_cas, explicit_cas=f.explicit_cas,
                     invalidate=f.invalidate, vivify=f.vivify)

        def done(res: Result) -> Reply | None:
            outcome = res.outcome
            code = _META_CODES.get(outcome)
            if code is None:
                c.store_no_memory += 1
                return _STORE_OUTCOMES.get(outcome, E_FAILED)
            if code == b"HD" and f.quiet:
                return None
            rec = res.record if outcome is Outcome.STORED else None
            # memcached answers c0 for the cas of a set that did not happen.
            return MetaReply(code, tuple(self._meta_flags(cmd.key, f, rec, zero_cas=True)))

        return self._write(op, done)

    def _md(self, cmd: p.MetaDelete) -> Answer:
        c = self.counters
        self._count(b"md")
        self._fetched.pop(cmd.key, None)
        f = cmd.flags
        if f.remove_value:
            op: WriteOp = StoreOp(b"replace", cmd.key, b"", 0, 0, compare_cas=f.compare_cas)
        else:
            op = DeleteOp(cmd.key, f.compare_cas, f.invalidate, f.ttl)

        def done(res: Result) -> Reply | None:
            code = _META_CODES.get(res.outcome, b"")
            if not code:
                return E_FAILED
            if code == b"HD":
                c.delete_hits += 1
                if f.quiet:
                    return None
            elif code == b"NF":
                c.delete_misses += 1
            return MetaReply(code, tuple(self._meta_flags(cmd.key, f, None)))

        return self._write(op, done)

    def _ma(self, cmd: p.MetaArith) -> Answer:
        c = self.counters
        self._count(b"ma")
        f = cmd.flags
        incr = f.mode != b"D"
        op = ArithOp(cmd.key, 1 if f.delta is None else f.delta, incr,
                     compare_cas=f.compare_cas, explicit_cas=f.explicit_cas, vivify=f.vivify,
                     initial=f.initial or 0, exptime=f.ttl)

        def done(res: Result) -> Reply | None:
            outcome = res.outcome
            if outcome in (Outcome.OK, Outcome.STORED):
                if incr:
                    c.incr_hits += 1
                else:
                    c.decr_hits += 1
                if f.quiet:
                    return None
                flags = tuple(self._meta_flags(cmd.key, f, res.record))
                if f.value:
                    return MetaReply(b"VA", flags, str(res.number).encode())
                return MetaReply(b"HD", flags)
            if outcome is Outcome.NON_NUMERIC:
                return E_NON_NUMERIC
            if outcome is Outcome.NOT_FOUND:
                if incr:
                    c.incr_misses += 1
                else:
                    c.decr_misses += 1
            code = _META_CODES.get(outcome)
            if code is None:
                return _STORE_OUTCOMES.get(outcome, E_FAILED)
            return MetaReply(code, tuple(self._meta_flags(cmd.key, f, None)))

        return self._write(op, done)

    def _me(self, cmd: p.MetaDebug) -> Answer:
        self._count(b"me")
        rec = self.storage.get(cmd.key)
        if rec is None:
            return MetaReply(b"EN")
        now = self._now()
        key = base64.b64encode(cmd.key) if cmd.base64 else cmd.key
        fields = (
            (b"exp", b"%d" % (rec.exptime - now if rec.exptime else -1)),
            (b"la", b"%d" % max(now - rec.mtime, 0)),
            (b"cas", b"%d" % rec.cas),
            (b"fetch", b"no"),
            (b"cls", b"1"),
            (b"size", b"%d" % rec.size),
        )
        return MetaDebugReply(key, fields)

    def _mn(self, cmd: p.MetaNoop) -> Answer:
        self._count(b"mn")
        return _MN
