"""The location index in Redis Cluster: blob id -> numbers of the nodes holding it.

Layout (see :mod:`director.keys` and docs/redis-schema.md): blobs are spread over a
fixed number of bucket hashes, each small enough to stay listpack-encoded; the field
is the binary tail of the id and the value the sorted node numbers, ``b"3,7"``.
Node numbers map to node ids through :mod:`director.registry`.

Every method is a batch (grouped per bucket, pipelined per master) run by
:class:`~director.redisconn.ClusterRunner`, so a Redis failover costs a retry, not an
error, and writes are acknowledged only once a Redis replica holds them.  Merging
and removing node numbers are Lua scripts, atomic per bucket, so two directors
recording replicas of the same blob at once both get recorded.

Blob ids and directord's plain-key items (indexed under :func:`director.keys.item_index_id`)
live in two key spaces with the same layout: ``ix:<bucket>`` and ``ixi:<bucket>``
(:meth:`LocationIndex.item_space`).  gc sweeps the blobs' space only, so a plain item,
which no message references, is never collected.  An index created before the items' space
existed holds its items in the blobs' space; ``index_meta``'s ``items_keyspace`` field says
that every item is in its own space (set when the index is created, or by the migration
that moves the old ones, :mod:`director.itemmigration`), and gc runs only once it is there.

"Which blobs are on node N" is answered by scanning buckets and filtering
(:meth:`LocationIndex.iterate` with ``node=N``): a per-node set would cost as much
memory again per replica, and draining or repairing a node is rare work that can
afford a scan (the object server's ``lru_crawler metadump all`` inventory is the
other source).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from director.errors import IndexLayoutMismatch
from director.keys import (
    IndexLayout,
    Keyspace,
    check_blob_id,
    decode_nodes,
    encode_nodes,
)
from director.redisconn import (
    ClusterRunner,
    Command,
    LuaScript,
    RetryPolicy,
    chunked,
    new_cluster_client,
)
from runtime.secrets import NO_REDIS_AUTH, RedisAuth

#: ``index_meta`` field: every directord item is in the items' key space (its value says
#: since when: ``created`` with the index, or ``migrated <unix time>``).
ITEMS_KEYSPACE = "items_keyspace"

#: Commands per pipeline; each is one bucket's worth of fields.
BATCH_COMMANDS = 500
#: Buckets read per pipeline when scanning.
SCAN_BUCKETS = 256

# A script that finds every entry already as it would write it writes nothing, and a script
# that writes nothing is not replicated, so the WAIT after it returns at once (Redis waits
# for the connection's own last write).  The equal entry may be another writer's, not yet on
# a replica: a failover then would lose an entry this writer was told is durable.  So such a
# script writes a fence key of the same slot instead (its replication follows every earlier
# write of the slot, and WAIT then covers them): ``<prefix>fence:{<bucket key>}``, or
# ``<prefix>fence:<rest>`` when the prefix carries a hash tag.  It is outside ``ixi:``,
# the space the location cache tracks, so it invalidates nothing; one per bucket.
_FENCE = """
local function fence(key)
  local p = string.match(key, '^(.-)ixi?:') or ''
  local open = string.find(key, '{', 1, true)
  local close = open and string.find(key, '}', open + 1, true)
  if open and close and close > open + 1 and open <= #p then
    redis.call('SET', p .. 'fence:' .. string.sub(key, #p + 1), '1')
  elseif not open and not string.find(key, '}', 1, true) then
    redis.call('SET', p .. 'fence:{' .. key .. '}', '1')
  end
end
"""

# KEYS[1] = bucket; ARGV = field, numbers, field, numbers...  Merges the numbers into
# each field's list (sorted, unique) and returns the merged lists.
_ADD = LuaScript("objmail_index_add", _FENCE + """
local key = KEYS[1]
local wrote = false
local out = {}
for i = 1, #ARGV, 2 do
  local field = ARGV[i]
  local cur = redis.call('HGET', key, field)
  local seen, nums = {}, {}
  local function take(text)
    for n in string.gmatch(text, '%d+') do
      local v = tonumber(n)
      if not seen[v] then seen[v] = true; nums[#nums + 1] = v end
    end
  end
  if cur then take(cur) end
  take(ARGV[i + 1])
  table.sort(nums)
  local val = table.concat(nums, ',')
  if val ~= cur then redis.call('HSET', key, field, val); wrote = true end
  out[#out + 1] = val
end
if not wrote then fence(key) end
return out
""")

# KEYS[1] = bucket; ARGV = field, numbers, ...  Sets each field's list to the numbers
# given (a plain item written whole: its new copies are all that hold it) and returns each
# field's list before ('' = none), so the writer can delete the copies left out.
_REPLACE = LuaScript("objmail_index_replace", _FENCE + """
local key = KEYS[1]
local wrote = false
local out = {}
for i = 1, #ARGV, 2 do
  local cur = redis.call('HGET', key, ARGV[i])
  if cur ~= ARGV[i + 1] then redis.call('HSET', key, ARGV[i], ARGV[i + 1]); wrote = true end
  out[#out + 1] = cur or ''
end
if not wrote then fence(key) end
return out
""")

# KEYS[1] = bucket; ARGV[1] = keep_last ('1' keeps a field whose last number would go);
# then field, number pairs.  Returns each field's remaining list ('' = none left).
_REMOVE = LuaScript("objmail_index_remove", _FENCE + """
local key = KEYS[1]
local wrote = false
local keep_last = ARGV[1] == '1'
local out = {}
for i = 2, #ARGV, 2 do
  local field = ARGV[i]
  local gone = tonumber(ARGV[i + 1])
  local cur = redis.call('HGET', key, field)
  if not cur then
    out[#out + 1] = ''
  else
    local nums = {}
    for n in string.gmatch(cur, '%d+') do
      local v = tonumber(n)
      if v ~= gone then nums[#nums + 1] = v end
    end
    if #nums == 0 then
      if keep_last then out[#out + 1] = cur
      else redis.call('HDEL', key, field); wrote = true; out[#out + 1] = '' end
    else
      local val = table.concat(nums, ',')
      if val ~= cur then redis.call('HSET', key, field, val); wrote = true end
      out[#out + 1] = val
    end
  end
end
if not wrote then fence(key) end
return out
""")


# KEYS[1] = bucket; ARGV = field, numbers to add, numbers to remove, ... (comma lists,
# possibly empty).  Changes only entries that exist and never empties one: a blob gc
# dropped meanwhile stays dropped, and a blob keeps its last location.  Returns each
# field's list after the change ('' = no such entry).
_UPDATE = LuaScript("objmail_index_update", _FENCE + """
local key = KEYS[1]
local wrote = false
local out = {}
for i = 1, #ARGV, 3 do
  local field = ARGV[i]
  local cur = redis.call('HGET', key, field)
  if not cur then
    out[#out + 1] = ''
  else
    local gone, seen, nums = {}, {}, {}
    for n in string.gmatch(ARGV[i + 2], '%d+') do gone[tonumber(n)] = true end
    local function take(text)
      for n in string.gmatch(text, '%d+') do
        local v = tonumber(n)
        if not seen[v] and not gone[v] then seen[v] = true; nums[#nums + 1] = v end
      end
    end
    take(cur)
    take(ARGV[i + 1])
    if #nums == 0 then
      out[#out + 1] = cur
    else
      table.sort(nums)
      local val = table.concat(nums, ',')
      if val ~= cur then redis.call('HSET', key, field, val); wrote = true end
      out[#out + 1] = val
    end
  end
end
if not wrote then fence(key) end
return out
""")


# KEYS[1] = bucket, KEYS[2] = the bucket's gc touched set; ARGV = field, expected value,
# ...  Deletes each entry whose value is still the expected one and that no put announced
# since gc began (director/collector.py); returns 1 (deleted) or 0 for each field.
_COLLECT = LuaScript("objmail_index_collect", """
local out = {}
for i = 1, #ARGV, 2 do
  local field = ARGV[i]
  if redis.call('SISMEMBER', KEYS[2], field) == 1
      or redis.call('HGET', KEYS[1], field) ~= ARGV[i + 1] then
    out[#out + 1] = 0
  else
    redis.call('HDEL', KEYS[1], field)
    out[#out + 1] = 1
  end
end
return out
""")


@dataclass(frozen=True)
class ScanPage:
    """One step of a scan: entries of some buckets and where to resume."""

    entries: tuple[tuple[str, tuple[int, ...]], ...]
    #: Bucket to resume from; None when the scan is complete.
    next_cursor: int | None
    buckets_done: int


@dataclass(frozen=True)
class SoleCopies:
    """Blobs whose only recorded location is one node."""

    count: int
    examples: tuple[str, ...]


@dataclass(frozen=True)
class StripResult:
    """Outcome of removing a node number from every index entry."""

    #: Entries the node was taken out of (another node still holds them).
    removed: int
    #: Entries left alone because the node was their only location.
    kept_sole: int


class LocationIndex:
    """Async client of the location index; create with :meth:`open`.

    Node numbers are the registry's small integers (:attr:`director.nodes.Node.number`).
    """

    def __init__(self, runner: ClusterRunner, layout: IndexLayout,
                 keys: Keyspace | None = None, *, items: bool = False) -> None:
        self.runner = runner
        self.layout = layout
        self.keys = keys or Keyspace()
        #: This is the key space of directord's plain items, not of blobs.
        self.items = items
        self._bucket_key = self.keys.item_bucket if items else self.keys.index_bucket
        #: Told the bucket keys of every index write this object makes, whether it
        #: succeeded or not (directord's location cache forgets their entries at once,
        #: not only when Redis's invalidation arrives).
        self.on_write: Callable[[list[str]], None] | None = None
        runner.register(_ADD, _REMOVE, _UPDATE, _COLLECT, _REPLACE)

    def item_space(self) -> LocationIndex:
        """The same index over directord's plain items (same runner and layout)."""
        return LocationIndex(self.runner, self.layout, self.keys, items=True)

    @classmethod
    async def open(cls, addresses: Sequence[str], *, buckets: int,
                   keys: Keyspace | None = None, retry: RetryPolicy | None = None,
                   wait_replicas: int = 1, runner: ClusterRunner | None = None,
                   auth: RedisAuth = NO_REDIS_AUTH,
                   clock: Callable[[], float] = time.time) -> LocationIndex:
        """Connect and check that the index was created with ``buckets`` buckets.

        The first client to open an index records its bucket count in Redis; every
        later one must agree, since a different count would look every blob up in
        the wrong bucket.

        :raises IndexLayoutMismatch: Redis says another bucket count.
        :raises IndexUnavailable: Redis Cluster cannot be reached.
        """
        keys = keys or Keyspace()
        owned = runner is None
        if runner is None:
            runner = ClusterRunner(new_cluster_client(addresses, auth=auth), retry=retry,
                                   wait_replicas=wait_replicas)
        layout = IndexLayout(buckets)
        meta = keys.index_meta
        try:
            _buckets, created = await runner.run("index meta", [
                Command(meta, ("HSETNX", meta, "buckets", buckets)),
                Command(meta, ("HSETNX", meta, "created", repr(clock()))),
            ], durable=True)
            if int(created):
                # A new index: it records items in their own space from the start.  (An
                # index from before that space lacks the field until they are migrated.)
                await runner.run("index meta", [
                    Command(meta, ("HSETNX", meta, ITEMS_KEYSPACE, "created"))], durable=True)
            (stored,) = await runner.run("index meta", [Command(meta, ("HGET", meta, "buckets"))])
        except BaseException:
            if owned:
                await runner.aclose()
            raise
        if int(stored) != buckets:
            if owned:
                await runner.aclose()
            raise IndexLayoutMismatch(
                f"director.index_buckets is {buckets} but the index in Redis was created "
                f"with {int(stored)} buckets; set index_buckets = {int(stored)}")
        return cls(runner, layout, keys)

    async def aclose(self) -> None:
        """Close the connections (the runner's, shared with whoever else uses it)."""
        await self.runner.aclose()

    # -- the items' flush_all cut-off (director/itemstate.py) ----------------------------

    async def flush_cutoff(self) -> float:
        """When the last ``flush_all`` through directord cut items off (unix seconds;
        0 = never): items written before it read as missing once it has come."""
        meta = self.keys.index_meta
        (value,) = await self.runner.run("flush cut-off", [
            Command(meta, ("HGET", meta, "items_flushed_before"))])
        return float(value) if value else 0.0

    async def set_flush_cutoff(self, cutoff: float) -> None:
        meta = self.keys.index_meta
        await self.runner.run("flush cut-off", [
            Command(meta, ("HSET", meta, "items_flushed_before", repr(cutoff)))],
            durable=True)

    # -- the items' key space (director/itemmigration.py) ---------------------------------

    async def items_keyspace(self) -> str | None:
        """Since when every directord item is in the items' key space (``created``,
        ``migrated <unix time>``); None for an index from before that space whose items
        were not migrated yet."""
        meta = self.keys.index_meta
        (value,) = await self.runner.run("index meta", [
            Command(meta, ("HGET", meta, ITEMS_KEYSPACE))])
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    async def set_items_keyspace(self, since: str) -> None:
        meta = self.keys.index_meta
        await self.runner.run("index meta", [
            Command(meta, ("HSET", meta, ITEMS_KEYSPACE, since))], durable=True)

    async def add_absent(self, entries: Mapping[str, Iterable[int]]) -> set[str]:
        """Record each id's locations only where the index has no entry for it yet (one
        ``HSETNX`` each: an entry written meanwhile wins); the ids recorded."""
        ids = list(entries)
        commands = []
        for blob_id in ids:
            check_blob_id(blob_id)
            key = self._key(blob_id)
            commands.append(Command(key, ("HSETNX", key, self.layout.field_of(blob_id),
                                          encode_nodes(entries[blob_id]))))
        done: set[str] = set()
        offset = 0
        for chunk in chunked(commands, BATCH_COMMANDS):
            replies = await self._write("index add absent", chunk)
            done.update(i for i, r in zip(ids[offset:offset + len(chunk)], replies,
                                          strict=True) if int(r))
            offset += len(chunk)
        return done

    # -- reading ------------------------------------------------------------------------

    async def lookup(self, ids: Iterable[str]) -> dict[str, tuple[int, ...]]:
        """Node numbers for each id; ``()`` for an id the index does not know."""
        groups = self._group(ids)
        commands = [Command(key, ("HMGET", key, *fields))
                    for key, (fields, _ids) in groups.items()]
        found: dict[str, tuple[int, ...]] = {}
        flat = [(key, ids_) for key, (_f, ids_) in groups.items()]
        offset = 0
        for chunk in chunked(commands, BATCH_COMMANDS):
            replies = await self.runner.run("index lookup", chunk)
            for (_key, ids_), values in zip(flat[offset:offset + len(chunk)], replies,
                                            strict=True):
                for blob_id, value in zip(ids_, values, strict=True):
                    found[blob_id] = decode_nodes(value)
            offset += len(chunk)
        return found

    async def locations(self, blob_id: str) -> tuple[int, ...]:
        """Node numbers holding one blob (``()`` when unknown)."""
        return (await self.lookup([blob_id]))[blob_id]

    # -- writing ------------------------------------------------------------------------

    async def add_locations(self, blob_id: str, nodes: Iterable[int]) -> tuple[int, ...]:
        """Record that ``nodes`` hold ``blob_id`` (merged with what is known); returns
        every location now recorded.  Acknowledged once a Redis replica has it."""
        return (await self.add_many({blob_id: nodes}))[blob_id]

    async def add_many(self, entries: Mapping[str, Iterable[int]]
                       ) -> dict[str, tuple[int, ...]]:
        """:meth:`add_locations` for many blobs in few round trips."""
        by_key: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
        for blob_id, nodes in entries.items():
            check_blob_id(blob_id)
            by_key[self._key(blob_id)].append((blob_id, encode_nodes(nodes)))
        return await self._scripted(_ADD, by_key, prefix=())

    async def replace_many(self, entries: Mapping[str, Iterable[int]]
                           ) -> dict[str, tuple[int, ...]]:
        """Record that exactly ``nodes`` hold each id (a plain item written whole on
        them); returns the locations each had before (``()``: none).  Acknowledged once a
        Redis replica has it.  Not for blobs: their locations only grow and shrink by
        merges (:meth:`add_many`, :meth:`remove_many`)."""
        by_key: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
        for blob_id, nodes in entries.items():
            check_blob_id(blob_id)
            by_key[self._key(blob_id)].append((blob_id, encode_nodes(nodes)))
        return await self._scripted(_REPLACE, by_key, prefix=())

    async def remove_location(self, blob_id: str, node: int, *,
                              keep_last: bool = False) -> tuple[int, ...]:
        """Forget that ``node`` holds ``blob_id``; returns the locations left.

        :param keep_last: leave the entry alone when ``node`` is its only location
            (used when stripping a removed node, which must never lose a blob's last
            location); otherwise the entry goes with its last location.
        """
        return (await self.remove_many({blob_id: node}, keep_last=keep_last))[blob_id]

    async def remove_many(self, entries: Mapping[str, int], *,
                          keep_last: bool = False) -> dict[str, tuple[int, ...]]:
        by_key: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
        for blob_id, node in entries.items():
            check_blob_id(blob_id)
            by_key[self._key(blob_id)].append((blob_id, str(int(node)).encode()))
        return await self._scripted(_REMOVE, by_key, prefix=(b"1" if keep_last else b"0",))

    async def update(self, blob_id: str, *, add: Iterable[int] = (),
                     remove: Iterable[int] = ()) -> tuple[int, ...]:
        """Add and remove locations of a blob the index knows, in one atomic step.

        Used when background work moves or re-replicates a copy: an entry that is
        gone (gc deleted the blob meanwhile) is not brought back, and an entry is
        never left without a location (it keeps its old list instead).

        :returns: the locations now recorded; ``()`` when the index does not know it.
        """
        return (await self.update_many({blob_id: (add, remove)}))[blob_id]

    async def update_many(self, entries: Mapping[str, tuple[Iterable[int], Iterable[int]]]
                          ) -> dict[str, tuple[int, ...]]:
        """:meth:`update` for many blobs: id -> (numbers to add, numbers to remove)."""
        by_key: dict[str, list[tuple[str, bytes, bytes]]] = defaultdict(list)
        for blob_id, (add, remove) in entries.items():
            check_blob_id(blob_id)
            by_key[self._key(blob_id)].append((
                blob_id, ",".join(str(int(n)) for n in add).encode(),
                ",".join(str(int(n)) for n in remove).encode()))
        commands = []
        order = []
        for key, items in by_key.items():
            argv: list[bytes] = []
            for blob_id, plus, minus in items:
                argv += [self.layout.field_of(blob_id), plus, minus]
            commands.append(Command.script(_UPDATE, key, *argv))
            order.append(items)
        out: dict[str, tuple[int, ...]] = {}
        offset = 0
        for chunk in chunked(commands, BATCH_COMMANDS):
            replies = await self._write(_UPDATE.name, chunk)
            for items, values in zip(order[offset:offset + len(chunk)], replies, strict=True):
                for (blob_id, _p, _m), value in zip(items, values, strict=True):
                    out[blob_id] = decode_nodes(value)
            offset += len(chunk)
        return out

    async def delete(self, blob_id: str) -> bool:
        """Drop a blob from the index entirely (gc); True if it was there."""
        return await self.delete_many([blob_id]) == 1

    async def delete_many(self, ids: Iterable[str]) -> int:
        groups = self._group(ids)
        commands = [Command(key, ("HDEL", key, *fields)) for key, (fields, _i) in groups.items()]
        removed = 0
        for chunk in chunked(commands, BATCH_COMMANDS):
            removed += sum(int(r) for r in await self._write("index delete", chunk))
        return removed

    # -- gc (director/collector.py) -----------------------------------------------------

    async def touch_many(self, ids: Iterable[str], ttl: int) -> None:
        """Announce that ``ids`` are being put, so that a running gc keeps them; the
        announcements expire after ``ttl`` seconds."""
        commands = []
        for key, (fields, _ids) in self._group(ids).items():
            touched = self.keys.gc_touched(key)
            commands += [Command(touched, ("SADD", touched, *fields)),
                         Command(touched, ("EXPIRE", touched, int(ttl)))]
        for chunk in chunked(commands, BATCH_COMMANDS):
            await self.runner.run("gc touch", chunk, durable=True)

    async def collect_many(self, entries: Mapping[str, Iterable[int]]) -> set[str]:
        """Delete the entries whose locations are still exactly ``entries[id]`` and that
        no put announced (:meth:`touch_many`) meanwhile; the ids deleted."""
        by_key: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
        for blob_id, nodes in entries.items():
            check_blob_id(blob_id)
            by_key[self._key(blob_id)].append((blob_id, encode_nodes(nodes)))
        commands = []
        order = []
        for key, items in by_key.items():
            argv: list[bytes] = []
            for blob_id, value in items:
                argv += [self.layout.field_of(blob_id), value]
            commands.append(Command(key, ("EVALSHA", _COLLECT.sha, 2, key,
                                          self.keys.gc_touched(key), *argv)))
            order.append(items)
        deleted: set[str] = set()
        offset = 0
        for chunk in chunked(commands, BATCH_COMMANDS):
            replies = await self._write(_COLLECT.name, chunk)
            for items, flags in zip(order[offset:offset + len(chunk)], replies, strict=True):
                deleted.update(b for (b, _v), f in zip(items, flags, strict=True) if int(f))
            offset += len(chunk)
        return deleted

    async def forget_touched(self, start: int, end: int) -> None:
        """Drop the put announcements of buckets ``start .. end-1`` (gc swept them)."""
        keys = [self.keys.gc_touched(self._bucket_key(self.layout.bucket_name(b)))
                for b in range(start, end)]
        for chunk in chunked([Command(k, ("DEL", k)) for k in keys], BATCH_COMMANDS):
            await self.runner.run("gc forget", chunk, durable=True)

    # -- scanning -----------------------------------------------------------------------

    async def scan(self, cursor: int = 0, *, buckets: int = SCAN_BUCKETS,
                   node: int | None = None) -> ScanPage:
        """Entries of buckets ``cursor .. cursor+buckets-1``, optionally only those
        listing ``node``.  Resume with ``next_cursor``; a scan sees every blob that
        stays indexed throughout, in bucket order."""
        total = self.layout.buckets
        if not 0 <= cursor < total:
            raise ValueError(f"scan cursor {cursor} outside 0..{total - 1}")
        end = min(total, cursor + buckets)
        names = [self._bucket_key(self.layout.bucket_name(b)) for b in range(cursor, end)]
        replies = await self.runner.run(
            "index scan", [Command(k, ("HGETALL", k)) for k in names])
        entries = []
        for bucket, reply in zip(range(cursor, end), replies, strict=True):
            for field, value in _pairs(reply):
                nums = decode_nodes(value)
                if node is None or node in nums:
                    entries.append((self.layout.blob_id(bucket, field), nums))
        return ScanPage(tuple(entries), end if end < total else None, end)

    async def iterate(self, *, start: int = 0, node: int | None = None,
                      buckets: int = SCAN_BUCKETS) -> AsyncIterator[ScanPage]:
        """Every page of a full scan from bucket ``start`` (a saved ``next_cursor``)."""
        cursor: int | None = start
        while cursor is not None:
            page = await self.scan(cursor, buckets=buckets, node=node)
            yield page
            cursor = page.next_cursor

    async def count(self) -> int:
        """Blobs in the index (HLEN of every bucket: a full pass, for tools)."""
        total = 0
        names = [self._bucket_key(self.layout.bucket_name(b))
                 for b in range(self.layout.buckets)]
        for chunk in chunked([Command(k, ("HLEN", k)) for k in names], BATCH_COMMANDS * 4):
            total += sum(int(r) for r in await self.runner.run("index count", chunk))
        return total

    async def sole_copies(self, node: int, *, examples: int = 5,
                          progress: Callable[[int, int], None] | None = None) -> SoleCopies:
        """Blobs whose only location is ``node`` (what ``node remove`` refuses on)."""
        count = 0
        found: list[str] = []
        async for page in self.iterate(node=node):
            for blob_id, nums in page.entries:
                if nums == (node,):
                    count += 1
                    if len(found) < examples:
                        found.append(blob_id)
            if progress is not None:
                progress(page.buckets_done, self.layout.buckets)
        return SoleCopies(count, tuple(found))

    async def strip_node(self, node: int, *,
                         progress: Callable[[int, int], None] | None = None) -> StripResult:
        """Take ``node`` out of every entry that has another location too."""
        removed = kept = 0
        async for page in self.iterate(node=node):
            todo = {blob_id: node for blob_id, nums in page.entries if len(nums) > 1}
            kept += sum(1 for _b, nums in page.entries if nums == (node,))
            if todo:
                left = await self.remove_many(todo, keep_last=True)
                removed += sum(1 for nums in left.values() if node not in nums)
                kept += sum(1 for nums in left.values() if node in nums)
            if progress is not None:
                progress(page.buckets_done, self.layout.buckets)
        return StripResult(removed, kept)

    # -- internals ----------------------------------------------------------------------

    def bucket_key(self, blob_id: str) -> str:
        """The Redis key of the bucket that holds ``blob_id`` in this key space."""
        return self._bucket_key(self.layout.bucket_name(self.layout.bucket_of(blob_id)))

    _key = bucket_key

    async def _write(self, what: str, chunk: Sequence[Command]) -> list[Any]:
        """A durable batch of index writes; :attr:`on_write` hears of its keys."""
        try:
            return await self.runner.run(what, chunk, durable=True)
        finally:
            if self.on_write is not None:
                self.on_write([c.key for c in chunk])

    def _group(self, ids: Iterable[str]) -> dict[str, tuple[list[bytes], list[str]]]:
        groups: dict[str, tuple[list[bytes], list[str]]] = {}
        for blob_id in ids:
            check_blob_id(blob_id)
            key = self._key(blob_id)
            fields, members = groups.setdefault(key, ([], []))
            fields.append(self.layout.field_of(blob_id))
            members.append(blob_id)
        return groups

    async def _scripted(self, script: LuaScript, by_key: Mapping[str, list[tuple[str, bytes]]],
                        prefix: tuple[bytes, ...]) -> dict[str, tuple[int, ...]]:
        commands = []
        order = []
        for key, items in by_key.items():
            argv: list[bytes] = list(prefix)
            for blob_id, value in items:
                argv += [self.layout.field_of(blob_id), value]
            commands.append(Command.script(script, key, *argv))
            order.append(items)
        out: dict[str, tuple[int, ...]] = {}
        offset = 0
        for chunk in chunked(commands, BATCH_COMMANDS):
            replies = await self._write(script.name, chunk)
            for items, values in zip(order[offset:offset + len(chunk)], replies, strict=True):
                for (blob_id, _v), value in zip(items, values, strict=True):
                    out[blob_id] = decode_nodes(value)
            offset += len(chunk)
        return out


def _pairs(reply: Any) -> list[tuple[bytes, bytes]]:
    """HGETALL's reply as (field, value) pairs (a dict from redis-py, or a flat list)."""
    if isinstance(reply, dict):
        return list(reply.items())
    return list(zip(reply[0::2], reply[1::2], strict=True))
