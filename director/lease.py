"""Job leases in Redis: at most one director runs a given background job at a time.

Several directors may run (every directord, plus an operator's ``objmail repair``); each
background job (``repair``, ``level``, ``drain:<node id>``) is guarded by one lease key,
``<prefix>lease:{<job>}``, holding a token that names its holder (host, pid and a random
part).  Taking it is ``SET key token NX PX ttl``; renewing and releasing check the token
first, so a director whose lease ran out (it stalled for longer than the TTL and another
took over) can neither extend nor delete the new holder's lease.  All three are Lua
scripts, hence atomic, and idempotent for their holder, which matters because a batch is
retried as a whole through Redis failovers: a retried acquire that had in fact succeeded
finds its own token and still succeeds.

A lease is renewed while the job works (:meth:`Lease.keep`, called between items); a
holder that crashes loses it after ``ttl`` seconds, then any director may take the job
over and resume it from the job's persisted cursor (:mod:`director.jobstate`).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable

from director.errors import LeaseLost
from director.keys import Keyspace
from director.redisconn import ClusterRunner, Command, LuaScript

# KEYS[1] = lease.  ARGV: token, ttl ms.  1 when the caller holds it afterwards.
_ACQUIRE = LuaScript("objmail_lease_acquire", """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
""")

# KEYS[1] = lease.  ARGV: token, ttl ms.  1 when renewed, 0 when someone else holds it
# (or nobody: it ran out).
_RENEW = LuaScript("objmail_lease_renew", """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
""")

# KEYS[1] = lease.  ARGV: token.  Deletes it only for its holder.
_RELEASE = LuaScript("objmail_lease_release", """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""")

SCRIPTS = (_ACQUIRE, _RENEW, _RELEASE)


def new_token() -> str:
    """A holder token an operator can read: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class Lease:
    """One job's lease, as seen by one would-be holder.

    :param ttl: seconds the lease lives without renewal; a crashed holder blocks the job
        for at most this long.
    :param clock: monotonic seconds, injected; decides when :meth:`keep` renews.
    """

    def __init__(self, runner: ClusterRunner, keys: Keyspace, job: str, *, ttl: float,
                 token: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if ttl <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl}")
        self.runner = runner
        self.job = job
        self.key = keys.lease(job)
        self.ttl = ttl
        self.token = token or new_token()
        self._clock = clock
        self._renewed_at: float | None = None
        runner.register(*SCRIPTS)

    @property
    def held(self) -> bool:
        """True between a successful :meth:`acquire` and :meth:`release` (as far as this
        holder knows: it may have run out while the holder stalled)."""
        return self._renewed_at is not None

    async def acquire(self) -> bool:
        """Take the lease if it is free (or already ours); True when held."""
        (got,) = await self.runner.run(f"lease {self.job}", [Command.script(
            _ACQUIRE, self.key, self.token, self._ttl_ms)], durable=True)
        if int(got):
            self._renewed_at = self._clock()
            return True
        self._renewed_at = None
        return False

    async def renew(self) -> None:
        """Push the expiry ``ttl`` seconds ahead.

        :raises LeaseLost: the lease ran out and is free or held by another director.
        """
        (ok,) = await self.runner.run(f"lease {self.job}", [Command.script(
            _RENEW, self.key, self.token, self._ttl_ms)], durable=True)
        if not int(ok):
            self._renewed_at = None
            raise LeaseLost(f"lease on job {self.job} was lost (held longer than "
                            f"{self.ttl:g}s without renewal?)")
        self._renewed_at = self._clock()

    async def keep(self) -> None:
        """Renew when a third of the TTL has passed since the last renewal: cheap enough
        to call after every item of a pass.

        :raises LeaseLost: as :meth:`renew`; also when it was never acquired.
        """
        if self._renewed_at is None:
            raise LeaseLost(f"lease on job {self.job} is not held")
        if self._clock() - self._renewed_at >= self.ttl / 3:
            await self.renew()

    async def release(self) -> bool:
        """Give the lease up (only if still ours); True when it was ours."""
        self._renewed_at = None
        (n,) = await self.runner.run(f"lease {self.job}", [Command.script(
            _RELEASE, self.key, self.token)], durable=True)
        return bool(int(n))

    async def holder(self) -> str | None:
        """The token of whoever holds the lease now, or None."""
        (value,) = await self.runner.run(f"lease {self.job}", [Command(
            self.key, ("GET", self.key))])
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.ttl * 1000))
