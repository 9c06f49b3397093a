"""Read temperature: how often and how lately each blob is read, where reads happen.

Theory of operation.  The object servers see only the reads that miss every frontend
cache, so their heat says little about what users read.  The frontends (imapd's and
directord's blob client, directord's own cache hits included) therefore report reads
themselves: :class:`ReadSampler` counts a sample of them (``temperature_sample``, each
sampled read weighing ``1 / sample`` so the counts stay unbiased) in a dict, and a task
on the event loop flushes the dict every ``temperature_flush_interval`` seconds as one
pipelined batch, off the read path: a fetch only ever pays a dict update.  Writes are
recorded too, as accesses without reads, so a new blob is not taken for a cold one.

In Redis (:class:`TemperatureStore`; key layout in docs/redis-schema.md) the blobs are
spread over :data:`director.keys.HEAT_SHARDS` shards by their first byte, each under a
hash tag of its own so the shards spread over the cluster's slots.  A shard holds:

* ``reads``, a sorted set of *forward-decayed* counts: a read at time ``t`` adds
  ``2 ** ((t - landmark) / half_life)`` to its blob's score, so every score decays with
  the configured half-life without anything rewriting it: the decayed count now is
  ``score * 2 ** (-(now - landmark) / half_life)``, and the order of the scores is
  the order of the decayed counts.  The landmark is stored in the shard's ``meta``
  hash; a write that finds it more than :data:`RESCALE_HALF_LIVES` half-lives old
  rescales the shard's scores to a new landmark (lazily, by that write, at most
  ``temperature_keep`` entries: no sweeping job), so scores stay far inside a
  double's range;
* ``seen``, a sorted set of last-access times (sampled reads and writes);
* both trimmed to ``temperature_keep`` entries by every write: ``reads`` keeps the
  hottest, ``seen`` the most recently accessed; the latest time trimmed from ``seen``
  is kept as the shard's ``floor`` (first set to the shard's creation: of the time
  before, nothing is known), so "not accessed since T" stays decidable for a blob not
  listed (it was last accessed no later than the floor).

Memory is thus bounded by ``HEAT_SHARDS * temperature_keep`` entries per set, whatever
the number of blobs.  The decay math (:func:`decay_factor`, :func:`forward_weight`) is
pure and takes the time as an argument; the sampler and the store take injected clocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from director.config import DirectorConfig
from director.errors import DirectorError
from director.keys import HEAT_SHARDS, Keyspace
from director.redisconn import ClusterRunner, Command, LuaScript

log = logging.getLogger(__name__)

#: A shard's scores are rescaled to a new landmark once it is this many half-lives old
#: (2 ** 32 is far inside a double's range, and a rescale costs one pass over the
#: shard's entries once per 32 half-lives).
RESCALE_HALF_LIVES = 32
#: Scores rescaled below this are dropped (they decayed to nothing).
NEGLIGIBLE = 1e-6

# KEYS: reads, seen, meta (one shard, one slot).  ARGV: now, half-life, keep, then
# id, weight pairs (weight 0: an access that is not a read, e.g. a write).
_RECORD = LuaScript("objmail_heat_record", f"""
local now = tonumber(ARGV[1])
local half = tonumber(ARGV[2])
local keep = tonumber(ARGV[3])
local function num(x) return string.format('%.17g', x) end
local landmark = tonumber(redis.call('HGET', KEYS[3], 'landmark'))
if landmark == nil or now - landmark > {RESCALE_HALF_LIVES} * half then
  if landmark ~= nil then
    local f = 2 ^ ((landmark - now) / half)
    local all = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
    for i = 1, #all, 2 do
      local v = tonumber(all[i + 1]) * f
      if v < {NEGLIGIBLE} then redis.call('ZREM', KEYS[1], all[i])
      else redis.call('ZADD', KEYS[1], num(v), all[i]) end
    end
  end
  if landmark == nil then
    -- A new shard: nothing before now is known, so no blob counts as unread before it.
    redis.call('HSETNX', KEYS[3], 'floor', num(now))
  end
  landmark = now
  redis.call('HSET', KEYS[3], 'landmark', num(now))
end
local g = 2 ^ ((now - landmark) / half)
for i = 4, #ARGV, 2 do
  local w = tonumber(ARGV[i + 1])
  if w > 0 then redis.call('ZINCRBY', KEYS[1], num(w * g), ARGV[i]) end
  redis.call('ZADD', KEYS[2], 'GT', num(now), ARGV[i])
end
local n = redis.call('ZCARD', KEYS[1])
if n > keep then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - keep - 1) end
n = redis.call('ZCARD', KEYS[2])
if n > keep then
  local gone = redis.call('ZRANGE', KEYS[2], n - keep - 1, n - keep - 1, 'WITHSCORES')
  local floor = tonumber(redis.call('HGET', KEYS[3], 'floor')) or 0
  if tonumber(gone[2]) > floor then redis.call('HSET', KEYS[3], 'floor', gone[2]) end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, n - keep - 1)
end
return 1
""")


def decay_factor(now: float, landmark: float, half_life: float) -> float:
    """What a forward-decayed score relative to ``landmark`` is multiplied by to give
    the decayed count at ``now``."""
    return float(2.0 ** (-(now - landmark) / half_life))


def forward_weight(at: float, landmark: float, half_life: float) -> float:
    """What one read at time ``at`` adds to a score relative to ``landmark``."""
    return float(2.0 ** ((at - landmark) / half_life))


@dataclass(frozen=True)
class Heat:
    """One blob's temperature.

    :param reads: decayed read count now (an estimate when reads are sampled).
    :param last_access: unix time of its last recorded access (sampled read or write);
        None when the blob is not listed (never recorded, or trimmed).
    :param floor: the blob's shard's floor: a blob not listed was last accessed no later
        than this (the latest time trimmed, or when the shard began: an installation
        that turns temperature on finds no blob unread for longer than that).
    """

    reads: float = 0.0
    last_access: float | None = None
    floor: float = 0.0

    @property
    def accessed_before(self) -> float:
        """An upper bound of the time of its last access."""
        return self.last_access if self.last_access is not None else self.floor


@dataclass(frozen=True)
class TemperatureSettings:
    """The ``temperature_*`` keys of ``[director]``."""

    half_life: float = 3600.0
    keep: int = 2048
    sample: float = 1.0
    flush_interval: float = 1.0
    max_pending: int = 65536

    @classmethod
    def from_config(cls, dconf: DirectorConfig) -> TemperatureSettings:
        return cls(dconf.temperature_half_life, dconf.temperature_keep,
                   dconf.temperature_sample, dconf.temperature_flush_interval,
                   dconf.temperature_max_pending)


class TemperatureStore:
    """The decayed counters in Redis (see the module docstring).

    :param clock: unix seconds (the time recorded and decayed to).
    """

    def __init__(self, runner: ClusterRunner, keys: Keyspace,
                 settings: TemperatureSettings | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.runner = runner
        self.keys = keys
        self.settings = settings or TemperatureSettings()
        self.clock = clock
        runner.register(_RECORD)

    def _shard_keys(self, shard: int) -> tuple[str, str, str]:
        k = self.keys
        return k.heat(shard), k.heat_seen(shard), k.heat_meta(shard)

    async def record(self, accesses: Mapping[str, float]) -> None:
        """Add ``accesses`` (blob id -> reads, 0 for an access that is no read) at the
        clock's time: one script call per shard, one pipelined batch (not acknowledged
        by replicas: temperature is advice, a failover losing a second of it is fine)."""
        if not accesses:
            return
        by_shard: dict[int, list[str]] = defaultdict(list)
        for bid, weight in accesses.items():
            by_shard[self.keys.heat_shard_of(bid)] += [bid, repr(float(weight))]
        s = self.settings
        now = repr(float(self.clock()))
        cmds = []
        for shard, argv in sorted(by_shard.items()):
            reads, seen, meta = self._shard_keys(shard)
            cmds.append(Command(reads, ("EVALSHA", _RECORD.sha, 3, reads, seen, meta, now,
                                        repr(float(s.half_life)), s.keep, *argv)))
        await self.runner.run("temperature record", cmds)

    async def _metas(self, shards: Iterable[int]) -> dict[int, tuple[float, float]]:
        """Each shard's (landmark, floor); a shard never written has (now, now): nothing
        is known of its blobs, so none counts as unread for any time."""
        shards = sorted(set(shards))
        replies = await self.runner.run("temperature meta", [
            Command(self.keys.heat_meta(i), ("HMGET", self.keys.heat_meta(i), "landmark",
                                             "floor")) for i in shards])
        now = self.clock()
        return {i: (_float(r[0], now), _float(r[1], now))
                for i, r in zip(shards, replies, strict=True)}

    async def hottest(self, limit: int) -> list[tuple[str, float]]:
        """The ``limit`` blobs with the most decayed reads now, hottest first: blob id ->
        decayed reads (never more than ``limit`` per shard are read)."""
        if limit <= 0:
            return []
        shards = range(HEAT_SHARDS)
        metas = await self._metas(shards)
        replies = await self.runner.run("temperature hottest", [
            Command(self.keys.heat(i), ("ZREVRANGE", self.keys.heat(i), 0, limit - 1,
                                        "WITHSCORES")) for i in shards])
        now = self.clock()
        half = self.settings.half_life
        out: list[tuple[str, float]] = []
        for shard, reply in zip(shards, replies, strict=True):
            factor = decay_factor(now, metas[shard][0], half)
            out += [(bid, score * factor) for bid, score in _scored(reply)]
        out.sort(key=lambda p: (-p[1], p[0]))
        return out[:limit]

    async def lookup(self, ids: Iterable[str]) -> dict[str, Heat]:
        """Each blob's :class:`Heat` now."""
        ids = list(dict.fromkeys(ids))
        if not ids:
            return {}
        shards = {bid: self.keys.heat_shard_of(bid) for bid in ids}
        metas = await self._metas(shards.values())
        cmds = []
        for bid in ids:
            reads, seen, _meta = self._shard_keys(shards[bid])
            cmds += [Command(reads, ("ZSCORE", reads, bid)),
                     Command(seen, ("ZSCORE", seen, bid))]
        replies = await self.runner.run("temperature lookup", cmds)
        now = self.clock()
        half = self.settings.half_life
        out = {}
        for at, bid in enumerate(ids):
            landmark, floor = metas[shards[bid]]
            score, seen_at = replies[2 * at], replies[2 * at + 1]
            out[bid] = Heat(_float(score, 0.0) * decay_factor(now, landmark, half),
                            None if seen_at is None else _float(seen_at, 0.0), floor)
        return out

    async def sizes(self) -> tuple[int, int]:
        """Entries held in all the shards' ``reads`` and ``seen`` sets (memory check)."""
        shards = range(HEAT_SHARDS)
        replies = await self.runner.run("temperature size", [
            Command(key, ("ZCARD", key)) for i in shards
            for key in (self.keys.heat(i), self.keys.heat_seen(i))])
        return sum(int(r) for r in replies[0::2]), sum(int(r) for r in replies[1::2])


@dataclass
class SamplerStats:
    """Counters for metrics and tests."""

    #: Reads seen, and those sampled into the pending batch.
    reads: int = 0
    sampled: int = 0
    #: Accesses dropped because the pending batch was full.
    dropped: int = 0
    #: Batches flushed, their entries, and batches Redis refused (their counts lost).
    flushes: int = 0
    flushed: int = 0
    failures: int = 0


class ReadSampler:
    """The frontend's side: samples reads into a pending batch that a task on the event
    loop flushes to the :class:`TemperatureStore` every ``flush_interval`` seconds.

    :meth:`read` and :meth:`wrote` never wait and never fail: they only update a dict
    (and start the flush task when none runs).  :meth:`flush` sends the batch now
    (tests call it instead of waiting); :meth:`aclose` sends what is left.

    :param store: None: temperature is off (everything is a no-op).
    :param rng: decides which reads are sampled.
    :param sleep: how the flush task waits (tests may pass one of their own).
    """

    def __init__(self, store: TemperatureStore | None,
                 settings: TemperatureSettings | None = None, *,
                 rng: random.Random | None = None,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self.store = store
        self.settings = settings or (store.settings if store else TemperatureSettings())
        self.stats = SamplerStats()
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._pending: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        #: The flush task is sending a batch (not sleeping): aclose waits for it.
        self._sending = False
        self._closed = False
        sample = self.settings.sample
        #: What a sampled read counts (0: temperature off).
        self._weight = 1.0 / sample if store is not None and sample > 0 else 0.0
        self._max_pending = self.settings.max_pending

    @property
    def enabled(self) -> bool:
        return self._weight > 0

    def read(self, bid: str) -> None:
        """One read of ``bid`` (served from a cache or not).  On every fetch's path, so
        kept to a few dict and attribute operations."""
        weight = self._weight
        if not weight:
            return
        stats = self.stats
        stats.reads += 1
        # weight = 1 / sample: a read is sampled with probability 1 / weight.
        if weight > 1.0 and self._rng.random() * weight >= 1.0:
            return
        if self._add(bid, weight):
            stats.sampled += 1

    def wrote(self, bid: str) -> None:
        """``bid`` was stored (or found stored): an access, not a read."""
        if self._weight:
            self._add(bid, 0.0)

    def _add(self, bid: str, weight: float) -> bool:
        pending = self._pending
        had = pending.get(bid)
        if had is not None:
            pending[bid] = had + weight
            return True
        if len(pending) >= self._max_pending:
            self.stats.dropped += 1
            return False
        pending[bid] = weight
        if self._task is None and not self._closed:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a synchronous caller): flushed on close
                return True
            self._task = loop.create_task(self._run())
        return True

    async def _run(self) -> None:
        try:
            while self._pending and not self._closed:
                await self._sleep(self.settings.flush_interval)
                self._sending = True
                try:
                    await self.flush()
                finally:
                    self._sending = False
        finally:
            self._task = None

    async def flush(self) -> None:
        """Send the pending batch now."""
        if not self._pending or self.store is None:
            return
        batch, self._pending = self._pending, {}
        try:
            await self.store.record(batch)
        except DirectorError as exc:
            self.stats.failures += 1
            # Once per failed batch (at most one per flush interval): no flood.
            log.warning("temperature: %d access(es) not recorded: %s", len(batch), exc)
            return
        self.stats.flushes += 1
        self.stats.flushed += len(batch)

    async def aclose(self) -> None:
        """Stop the flush task and send what is pending.  A batch being sent is waited
        for, not cancelled: it was taken out of the pending dict, so cancelling its send
        would lose its reads (a client closed right after its reads, on a slow Redis)."""
        self._closed = True
        task = self._task
        if task is not None and not task.done():
            if not self._sending:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.flush()


def _float(value: Any, default: float) -> float:
    if value is None:
        return default
    try:
        return float(value.decode() if isinstance(value, bytes) else value)
    except ValueError:
        return default


def _scored(reply: Any) -> list[tuple[str, float]]:
    if reply and isinstance(reply[0], list | tuple):
        pairs = reply
    else:
        pairs = list(zip(reply[0::2], reply[1::2], strict=True))
    return [(k.decode() if isinstance(k, bytes) else str(k), float(v)) for k, v in pairs]
