"""A background job's persisted progress: one Redis hash per job.

``<prefix>job:{<job>}`` holds what a pass needs to resume where the last one stopped
(the index bucket to scan next, counters of the current sweep, times), and what an
operator or ``objmail node drain --wait`` shows as progress.  Any director may read it;
writes are *fenced* by the job's lease (:mod:`director.lease`): a Lua script checks the
lease token before writing, so a director that lost its lease mid-pass cannot move the
cursor under the new holder.  The lease key and the job hash share the hash tag
``{<job>}``, so the script sees both in one slot.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from director.errors import LeaseLost
from director.keys import Keyspace
from director.lease import Lease
from director.redisconn import ClusterRunner, Command, LuaScript

# KEYS: lease, job.  ARGV: token ('' = no lease), field, value, ...  0 when the lease
# is held by someone else (nothing written).
_SAVE = LuaScript("objmail_job_save", """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if #ARGV > 1 then redis.call('HSET', KEYS[2], unpack(ARGV, 2)) end
return 1
""")

Scalar = str | int | float


class JobState:
    """Read and write one job's progress hash.

    :param lease: when given, every write is fenced by it (refused once it is lost).
    """

    def __init__(self, runner: ClusterRunner, keys: Keyspace, job: str, *,
                 lease: Lease | None = None) -> None:
        self.runner = runner
        self.job = job
        self.key = keys.job(job)
        self.lease_key = keys.lease(job)
        self.lease = lease
        runner.register(_SAVE)

    async def load(self) -> dict[str, str]:
        """Every field (empty when the job never ran)."""
        (reply,) = await self.runner.run(f"job {self.job}", [Command(
            self.key, ("HGETALL", self.key))])
        return {_text(k): _text(v) for k, v in _pairs(reply)}

    async def save(self, fields: Mapping[str, Scalar]) -> None:
        """Write ``fields`` (numbers as ``repr``) if this director still holds the lease.

        :raises LeaseLost: another director holds the job's lease now.
        """
        token = self.lease.token if self.lease is not None else ""
        argv: list[str] = [token]
        for name, value in fields.items():
            argv += [name, value if isinstance(value, str) else repr(value)]
        (ok,) = await self.runner.run(f"job {self.job}", [Command(
            self.key, ("EVALSHA", _SAVE.sha, 2, self.lease_key, self.key, *argv))],
            durable=True)
        if not int(ok):
            raise LeaseLost(f"lease on job {self.job} is held by another director; "
                            "progress not saved")

    async def forget(self, *fields: str) -> None:
        """Delete some fields (not fenced: used for what any director may clear)."""
        if fields:
            await self.runner.run(f"job {self.job}", [Command(
                self.key, ("HDEL", self.key, *fields))], durable=True)

    async def clear(self) -> None:
        """Delete the whole hash (the job is over, e.g. a drained node was removed)."""
        await self.runner.run(f"job {self.job}", [Command(self.key, ("DEL", self.key))],
                              durable=True)


def number(fields: Mapping[str, str], name: str, default: float = 0.0) -> float:
    """A numeric field of a loaded hash (``default`` when absent or damaged)."""
    try:
        return float(fields[name])
    except (KeyError, ValueError):
        return default


def integer(fields: Mapping[str, str], name: str, default: int = 0) -> int:
    return int(number(fields, name, default))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(reply: Any) -> list[tuple[Any, Any]]:
    if isinstance(reply, dict):
        return list(reply.items())
    items = list(reply or [])
    return list(zip(items[0::2], items[1::2], strict=True))
