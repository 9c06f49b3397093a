"""The under-replication queue: blobs known to miss replicas, waiting for the repairer.

Whoever notices a blob with too few copies (a put that reached ``write_quorum`` but
not ``replicas``; a get that found a replica missing or corrupt) enqueues its id.
The queue is 16 sorted sets (``objmail:repair:0`` .. ``:f``, by the id's first hex
digit, so the load spreads over the masters); member = blob id, score = unix time
from which it may be taken.  A sorted set deduplicates: a blob reported a thousand
times is one entry.

Taking work is a lease, not a pop: :meth:`RepairQueue.claim` pushes the claimed
entries' scores ``lease`` seconds into the future in the same Lua script, and the
repairer calls :meth:`RepairQueue.done` when a blob is whole again.  A repairer that
dies mid-way loses nothing: its entries come due again when the lease runs out, and
several directors can share the queue without any further coordination.

The entry says only *which* blob; the repairer works out what is missing from the
index and the registry (a corrupt replica is reported by also removing that node
from the blob's index entry).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from director.keys import REPAIR_SHARDS, Keyspace, check_blob_id
from director.redisconn import ClusterRunner, Command, LuaScript

# KEYS[1] = shard.  ARGV: now, lease_until, limit.  Claims up to limit due entries.
_CLAIM = LuaScript("objmail_repair_claim", """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', ARGV[2], id) end
return due
""")


class RepairQueue:
    """Async client of the repair queue (shares the index's :class:`ClusterRunner`)."""

    def __init__(self, runner: ClusterRunner, keys: Keyspace | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.runner = runner
        self.keys = keys or Keyspace()
        self._clock = clock
        self._next_shard = 0
        runner.register(_CLAIM)

    def _shards(self) -> list[str]:
        return [self.keys.repair_shard(s) for s in range(REPAIR_SHARDS)]

    async def add(self, ids: Iterable[str], *, delay: float = 0.0) -> int:
        """Queue blobs for repair, due after ``delay`` seconds; returns how many were not
        queued already (an entry already queued keeps its earlier due time)."""
        due = repr(self._clock() + delay)
        commands = []
        for blob_id in ids:
            check_blob_id(blob_id)
            key = self.keys.repair_shard(self.keys.repair_shard_of(blob_id))
            commands.append(Command(key, ("ZADD", key, "NX", due, blob_id)))
        replies = await self.runner.run("repair add", commands, durable=True)
        return sum(int(r) for r in replies)

    async def claim(self, limit: int, *, lease: float = 300.0) -> list[str]:
        """Up to ``limit`` due blob ids, leased for ``lease`` seconds.

        Two round trips: count the due entries of every shard, then claim from each
        its share of ``limit`` (handed out one at a time from a shard that rotates
        between calls, so no shard starves).
        """
        if limit < 1:
            return []
        now = self._clock()
        shards = self._shards()
        due = [int(r) for r in await self.runner.run("repair count", [
            Command(key, ("ZCOUNT", key, "-inf", repr(now))) for key in shards])]
        share = [0] * REPAIR_SHARDS
        left = min(limit, sum(due))
        start = self._next_shard
        self._next_shard = (start + 1) % REPAIR_SHARDS
        while left:
            for i in range(REPAIR_SHARDS):
                shard = (start + i) % REPAIR_SHARDS
                if left and share[shard] < due[shard]:
                    share[shard] += 1
                    left -= 1
        commands = [Command.script(_CLAIM, shards[i], repr(now), repr(now + lease), share[i])
                    for i in range(REPAIR_SHARDS) if share[i]]
        replies = await self.runner.run("repair claim", commands, durable=True)
        return [m.decode() if isinstance(m, bytes) else str(m)
                for reply in replies for m in reply]

    async def retry_later(self, ids: Iterable[str], delay: float) -> None:
        """Make (claimed or new) entries due ``delay`` seconds from now: a blob that
        cannot be repaired yet goes back to the queue."""
        due = repr(self._clock() + delay)
        commands = []
        for blob_id in ids:
            key = self.keys.repair_shard(self.keys.repair_shard_of(check_blob_id(blob_id)))
            commands.append(Command(key, ("ZADD", key, due, blob_id)))
        await self.runner.run("repair retry", commands, durable=True)

    async def done(self, ids: Iterable[str]) -> int:
        """Remove repaired blobs from the queue; returns how many were queued."""
        commands = []
        for blob_id in ids:
            key = self.keys.repair_shard(self.keys.repair_shard_of(check_blob_id(blob_id)))
            commands.append(Command(key, ("ZREM", key, blob_id)))
        replies = await self.runner.run("repair done", commands, durable=True)
        return sum(int(r) for r in replies)

    async def backlog(self) -> int:
        """Entries queued, due or leased."""
        replies = await self.runner.run("repair backlog", [
            Command(key, ("ZCARD", key)) for key in self._shards()])
        return sum(int(r) for r in replies)
