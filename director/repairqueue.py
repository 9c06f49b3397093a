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

*Priority.*  An entry has a priority: the copies its blob has left (0, 1, ... up to
``NORMAL - 1``) when the repairer's sweep found it short, else :data:`NORMAL` (a bad copy
a read found, a put short of replicas).  Claims take due entries of the most urgent
priority first, so after a node is lost the blobs down to their last copy are copied
before those that still have two.  The priority lives in the score: an entry of
priority ``p`` is scored ``due - (NORMAL - p) * BAND`` (:data:`BAND`, 2^34 s, is longer
than any unix time will be for centuries), so each priority owns its own band of scores,
due times keep their order within it, a NORMAL entry's score is its due time (as before
priorities existed), and retries and claims keep an entry in its band.

The entry says only *which* blob; the repairer works out what is missing from the
index and the registry (a corrupt replica is reported by also removing that node
from the blob's index entry).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Final

from director.keys import REPAIR_SHARDS, Keyspace, check_blob_id
from director.redisconn import ClusterRunner, Command, LuaScript

#: The priority of an entry whose blob's copies were not counted (the least urgent).
NORMAL: Final = 4
#: Width of a priority's band of scores, in seconds (see the module docstring).
BAND: Final = float(1 << 34)

# The band (NORMAL - priority) of a score, in Lua: due times are in [0, BAND).
_BAND_OF = f"local function band(s) return math.floor(({BAND:.0f} - 1 - s) / {BAND:.0f}) end"

# KEYS[1] = shard.  ARGV: now, lease_until, then (band, limit) pairs, most urgent first.
# Claims up to limit due entries of each band, keeping them in their band; returns
# band, id, band, id...
_CLAIM = LuaScript("objmail_repair_claim", f"""
local now, lease_until, width = tonumber(ARGV[1]), tonumber(ARGV[2]), {BAND:.0f}
local out = {{}}
for i = 3, #ARGV, 2 do
  local k, n = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], -k * width, now - k * width, 'LIMIT', 0, n)
  for _, id in ipairs(due) do
    redis.call('ZADD', KEYS[1], 'XX', lease_until - k * width, id)
    out[#out + 1] = k
    out[#out + 1] = id
  end
end
return out
""")

# KEYS[1] = shard.  ARGV: due, band, id...  Adds entries in the band, or moves queued ones
# up to it (a more urgent band; the earlier due time).  Returns how many were new.
_ADD = LuaScript("objmail_repair_add", f"""
{_BAND_OF}
local due, k, width = tonumber(ARGV[1]), tonumber(ARGV[2]), {BAND:.0f}
local added = 0
for i = 3, #ARGV do
  local cur = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if not cur then
    redis.call('ZADD', KEYS[1], due - k * width, ARGV[i])
    added = added + 1
  else
    local ck = band(tonumber(cur))
    if k > ck then
      redis.call('ZADD', KEYS[1], math.min(due, tonumber(cur) + ck * width) - k * width,
                 ARGV[i])
    end
  end
end
return added
""")

# KEYS[1] = shard.  ARGV: due, id...  Makes entries due at ``due``, each in its band
# (an entry not queued is added as NORMAL).
_RETRY = LuaScript("objmail_repair_retry", f"""
{_BAND_OF}
local due, width = tonumber(ARGV[1]), {BAND:.0f}
for i = 2, #ARGV do
  local cur = redis.call('ZSCORE', KEYS[1], ARGV[i])
  local k = 0
  if cur then k = band(tonumber(cur)) end
  redis.call('ZADD', KEYS[1], due - k * width, ARGV[i])
end
return 0
""")


def priority_of(copies_left: int) -> int:
    """The queue priority of a blob with ``copies_left`` counted copies."""
    return max(0, min(copies_left, NORMAL - 1))


class RepairQueue:
    """Async client of the repair queue (shares the index's :class:`ClusterRunner`)."""

    def __init__(self, runner: ClusterRunner, keys: Keyspace | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.runner = runner
        self.keys = keys or Keyspace()
        self._clock = clock
        self._next_shard = 0
        runner.register(_CLAIM, _ADD, _RETRY)

    def _shards(self) -> list[str]:
        return [self.keys.repair_shard(s) for s in range(REPAIR_SHARDS)]

    def _by_shard(self, ids: Iterable[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for blob_id in ids:
            key = self.keys.repair_shard(self.keys.repair_shard_of(check_blob_id(blob_id)))
            out.setdefault(key, []).append(blob_id)
        return out

    async def add(self, ids: Iterable[str], *, delay: float = 0.0,
                  priority: int = NORMAL) -> int:
        """Queue blobs for repair, due after ``delay`` seconds; returns how many were not
        queued already (an entry already queued keeps its earlier due time, and moves up
        to ``priority`` when that is more urgent: see :func:`priority_of`)."""
        if not 0 <= priority <= NORMAL:
            raise ValueError(f"repair priority must be 0..{NORMAL}, got {priority}")
        due = self._clock() + delay
        by_shard = self._by_shard(ids)
        if priority == NORMAL:
            commands = [Command(key, ("ZADD", key, "NX", repr(due), blob_id))
                        for key, blobs in by_shard.items() for blob_id in blobs]
        else:
            commands = [Command.script(_ADD, key, repr(due), NORMAL - priority, *blobs)
                        for key, blobs in by_shard.items()]
        replies = await self.runner.run("repair add", commands, durable=True)
        return sum(int(r) for r in replies)

    async def claim(self, limit: int, *, lease: float = 300.0) -> list[str]:
        """Up to ``limit`` due blob ids, most urgent priority first, leased for ``lease``
        seconds.

        Two round trips: count the due entries of every priority in every shard, then
        claim from each shard its share of ``limit`` (priority by priority; within one,
        handed out one at a time from a shard that rotates between calls, so no shard
        starves).
        """
        if limit < 1:
            return []
        now = self._clock()
        shards = self._shards()
        bands = range(NORMAL, -1, -1)  # most urgent first
        counts = [int(r) for r in await self.runner.run("repair count", [
            Command(key, ("ZCOUNT", key, repr(-k * BAND), repr(now - k * BAND)))
            for key in shards for k in bands])]
        due = [counts[i * len(bands):(i + 1) * len(bands)] for i in range(REPAIR_SHARDS)]
        share = [[0] * len(bands) for _ in range(REPAIR_SHARDS)]
        left = limit
        start = self._next_shard
        self._next_shard = (start + 1) % REPAIR_SHARDS
        for b in range(len(bands)):
            waiting = min(left, sum(d[b] for d in due))
            left -= waiting
            while waiting:
                for i in range(REPAIR_SHARDS):
                    shard = (start + i) % REPAIR_SHARDS
                    if waiting and share[shard][b] < due[shard][b]:
                        share[shard][b] += 1
                        waiting -= 1
        commands = []
        for i in range(REPAIR_SHARDS):
            pairs = [x for b, k in enumerate(bands) if share[i][b] for x in (k, share[i][b])]
            if pairs:
                commands.append(Command.script(_CLAIM, shards[i], repr(now), repr(now + lease),
                                               *pairs))
        replies = await self.runner.run("repair claim", commands, durable=True)
        claimed = [(int(reply[i]), reply[i + 1]) for reply in replies
                   for i in range(0, len(reply), 2)]
        claimed.sort(key=lambda p: -p[0])  # most urgent first, across shards (stable)
        return [m.decode() if isinstance(m, bytes) else str(m) for _k, m in claimed]

    async def retry_later(self, ids: Iterable[str], delay: float) -> None:
        """Make (claimed or new) entries due ``delay`` seconds from now, each keeping its
        priority: a blob that cannot be repaired yet goes back to the queue."""
        due = repr(self._clock() + delay)
        commands = [Command.script(_RETRY, key, due, *blobs)
                    for key, blobs in self._by_shard(ids).items()]
        await self.runner.run("repair retry", commands, durable=True)

    async def done(self, ids: Iterable[str]) -> int:
        """Remove repaired blobs from the queue; returns how many were queued."""
        commands = []
        for blob_id in ids:
            key = self.keys.repair_shard(self.keys.repair_shard_of(check_blob_id(blob_id)))
            commands.append(Command(key, ("ZREM", key, blob_id)))
        replies = await self.runner.run("repair done", commands, durable=True)
        return sum(int(r) for r in replies)

    async def backlog(self, *, urgent: bool = False) -> int:
        """Entries queued, due or leased (``urgent``: only those with a priority above
        NORMAL, i.e. found short of copies)."""
        replies = await self.runner.run("repair backlog", [
            Command(key, ("ZCOUNT", key, "-inf", "(0") if urgent else ("ZCARD", key))
            for key in self._shards()])
        return sum(int(r) for r in replies)
