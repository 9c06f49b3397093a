"""Talking to Redis Cluster through failovers: retries with backoff, and durable acks.

Theory of operation.  Every index, registry and repair-queue operation is a batch of
idempotent commands (reads, merges, deletes) run by :class:`ClusterRunner`.  A batch
is one redis-py cluster pipeline (grouped by slot owner, one round trip per master).
When a master dies the batch fails with connection errors, then ``CLUSTERDOWN`` or
``MOVED`` while its replica takes over; the runner drops the cached topology, sleeps
with exponential backoff and full jitter, and re-runs the whole batch, until the
retry deadline passes (then :class:`~director.errors.IndexUnavailable`).  A cluster
the runner has never reached, where no node accepts a connection, is not failing over:
it is down or misaddressed, and the runner says so after
:attr:`RetryPolicy.unreachable` seconds (each connection attempt bounded by it too)
instead of waiting out the whole deadline.

Redis replicates asynchronously, so a write a master acknowledged can still die with
it.  For writes the runner therefore appends ``WAIT numreplicas timeout`` for every
master the batch touched, on the same connection as the writes (a per-node target in
the pipeline), and returns only once ``wait_replicas`` replicas hold them
(``director.index_write_replicas``): an acknowledged write survives the failover of its
master.  A master whose replicas do not all acknowledge within ``wait_timeout``
(``director.index_write_timeout``: its replica is down, or it is a replica just promoted
whose old master has not come back) fails the batch with
:class:`~director.errors.WriteUnconfirmed`, at once and without a retry (the write may
stand on the master alone, which is harmless: every batch is idempotent and is redone by
the caller's retry).  Callers turn it into a temporary failure: LMTP ``451``, IMAP
``NO [UNAVAILABLE]``, directord ``SERVER_ERROR``.  With ``wait_replicas = 0`` nothing is
waited for, and a master failover can lose the writes of its last moments (a lost
location: the blob is unreadable until ``objmail inventory --fix`` adopts the copies).

Lua scripts are called with ``EVALSHA``; a master that does not know a script yet
(new or just promoted) answers ``NOSCRIPT`` and the runner loads the scripts on every
master and runs the batch again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from redis import exceptions as rx
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from director.errors import IndexUnavailable, WriteUnconfirmed
from runtime.config import parse_hostport
from runtime.errors import reason
from runtime.secrets import NO_REDIS_AUTH, RedisAuth

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Errors that mean "the cluster is changing or unreachable": retry after a pause.
RETRYABLE: tuple[type[BaseException], ...] = (
    rx.ConnectionError, rx.TimeoutError, rx.ClusterDownError, rx.TryAgainError,
    rx.MovedError, rx.AskError, rx.SlotNotCoveredError, rx.ReadOnlyError,
    rx.BusyLoadingError, rx.MasterDownError, OSError, asyncio.TimeoutError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often to retry an operation against Redis Cluster."""

    #: Give up (IndexUnavailable) after this many seconds of failures for one batch.
    deadline: float = 30.0
    #: Give up sooner, after this many seconds, while no node of a cluster never reached
    #: yet accepts a connection (nothing to fail over: it is down or misaddressed).
    unreachable: float = 3.0
    first_delay: float = 0.05
    max_delay: float = 2.0


@dataclass(frozen=True)
class LuaScript:
    """A script run by SHA; loaded on demand on every master."""

    name: str
    source: str

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()


@dataclass(frozen=True)
class Command:
    """One command of a batch; ``key`` routes it (and its ``WAIT``) to a master."""

    key: str
    args: tuple[Any, ...]

    @classmethod
    def script(cls, script: LuaScript, key: str, *argv: Any) -> Command:
        return cls(key, ("EVALSHA", script.sha, 1, key, *argv))


@dataclass
class RunnerStats:
    """Counters for metrics and tests."""

    batches: int = 0
    retries: int = 0
    script_loads: int = 0
    #: Write batches failed because a master's replicas did not acknowledge them.
    unconfirmed_writes: int = 0
    last_error: str = ""


def startup_nodes(addresses: Sequence[str]) -> list[ClusterNode]:
    """ClusterNode objects for ``host:port`` strings (the config's redis_nodes)."""
    return [ClusterNode(*parse_hostport(a, "cluster.redis_nodes")) for a in addresses]


def new_cluster_client(addresses: Sequence[str], *, socket_timeout: float = 2.0,
                       auth: RedisAuth = NO_REDIS_AUTH) -> RedisCluster:
    """An unconnected asyncio cluster client; the runner does the retrying.

    redis-py's own retries are kept to one quick attempt so that the backoff and the
    deadline are ours (and the same for every operation).

    :param auth: ACL user, password and TLS (``runtime.secrets.load_credentials``); every
        node the client discovers is opened with them.
    """
    return RedisCluster(startup_nodes=startup_nodes(addresses), socket_timeout=socket_timeout,
                        socket_connect_timeout=socket_timeout, retry=Retry(NoBackoff(), 1),
                        decode_responses=False, **auth.client_kwargs())


class ClusterRunner:
    """Runs command batches with retries, backoff and (for writes) replica acks.

    :param sleep: injected so tests can run the backoff without waiting.
    :param wait_replicas: replicas that must hold a write before it is acknowledged
        (0 = do not wait).
    :param wait_timeout: seconds to wait for them before the write fails.
    """

    def __init__(self, client: RedisCluster, *, retry: RetryPolicy | None = None,
                 wait_replicas: int = 1, wait_timeout: float = 1.0,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 monotonic: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.client = client
        self.retry = retry or RetryPolicy()
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = max(1, int(wait_timeout * 1000))
        self.stats = RunnerStats()
        self._sleep = sleep
        self._monotonic = monotonic
        self._rng = rng or random.Random()
        self._scripts: dict[str, LuaScript] = {}
        #: Whether an operation ever succeeded (until then, connection errors mean
        #: "unreachable", see RetryPolicy.unreachable).
        self._reached = False

    def register(self, *scripts: LuaScript) -> None:
        for script in scripts:
            self._scripts[script.sha] = script

    async def aclose(self) -> None:
        await self.client.aclose()

    async def call(self, what: str, fn: Callable[[RedisCluster], Awaitable[T]]) -> T:
        """Run ``fn(client)`` (one idempotent operation) with retries."""
        return await self._retrying(what, lambda: self._initialized_call(fn))

    async def run(self, what: str, commands: Sequence[Command], *,
                  durable: bool = False) -> list[Any]:
        """Run a batch, retried as a whole; results in command order.

        :param durable: the batch writes: acknowledge only once replicas hold it.
        :raises WriteUnconfirmed: ``durable``, and a master's replicas did not
            acknowledge within ``wait_timeout`` (not retried).
        :raises IndexUnavailable: still failing when the retry deadline passed, or Redis
            refused a command for a reason retrying cannot fix.
        """
        if not commands:
            return []
        return await self._retrying(what, lambda: self._run_once(commands, durable))

    # -- internals ----------------------------------------------------------------------

    async def _initialized_call(self, fn: Callable[[RedisCluster], Awaitable[T]]) -> T:
        await self._initialize()
        return await fn(self.client)

    async def _initialize(self) -> None:
        try:
            if self._reached:
                await self.client.initialize()  # at once unless the topology is stale
            else:
                # redis-py tries the startup nodes one after the other, each with its
                # connect timeout: bound the whole first connection.
                await asyncio.wait_for(self.client.initialize(), self.retry.unreachable)
        except rx.RedisClusterException as exc:
            if isinstance(exc.__cause__, rx.AuthenticationError):
                raise exc.__cause__ from None  # wrong credentials: not retried
            # "cannot be connected" / "slots not covered" while the cluster changes.
            raise rx.ConnectionError(str(exc)) from exc

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        started = self._monotonic()
        failures = 0
        while True:
            try:
                result = await attempt()
            except _ScriptsMissing:
                await self._load_scripts()
                continue
            except rx.AuthenticationError as exc:
                # Retrying cannot fix a wrong ACL user or password (a ConnectionError to
                # redis-py): say so at once, exit 69 at start-up, not after the deadline.
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                raise IndexUnavailable(f"Redis Cluster at {self._where()} refused the "
                                       f"credentials: {exc}") from exc
            except RETRYABLE as exc:
                failures += 1
                self.stats.retries += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                unreachable = not self._reached and _connection_failed(exc)
                deadline = started + (min(self.retry.unreachable, self.retry.deadline)
                                      if unreachable else self.retry.deadline)
                now = self._monotonic()
                if now >= deadline:
                    log.info("redis %s failed %d time(s): %s", what, failures,
                             self.stats.last_error)
                    raise IndexUnavailable(self._give_up(exc, unreachable)) from exc
                log.info("redis %s failed (%s); retry %d", what, self.stats.last_error, failures)
                # Forget the topology: the next attempt asks the cluster who owns what.
                await self.client.aclose()
                delay = min(self.retry.max_delay, self.retry.first_delay * 2 ** (failures - 1))
                await self._sleep(min(delay * self._rng.uniform(0.5, 1.0),
                                      max(0.0, deadline - now)))
            else:
                self._reached = True
                return result

    def _where(self) -> str:
        """The startup nodes, for messages (the first three)."""
        names = list(self.client.nodes_manager.startup_nodes)
        return ",".join(names[:3]) + (",..." if len(names) > 3 else "")

    def _give_up(self, exc: BaseException, unreachable: bool) -> str:
        """One line for whoever reads it (an operator): where, and why, without the
        internals of which batch happened to fail."""
        where = self._where()
        if unreachable:
            return f"Redis Cluster unreachable at {where}: {reason(exc)}"
        return (f"Redis Cluster unavailable at {where} for {self.retry.deadline:.0f}s: "
                f"{reason(exc)}")

    async def _run_once(self, commands: Sequence[Command], durable: bool) -> list[Any]:
        replies = await self._execute(commands, durable)
        missing = [i for i, r in enumerate(replies) if isinstance(r, rx.NoScriptError)]
        if missing:
            # A master that lacks our scripts (new, or a replica just promoted): load them
            # and re-run only those commands. Re-running the whole batch would apply the
            # commands that did run twice, and a script such as a queue claim is not
            # idempotent.
            await self._load_scripts()
            again = await self._execute([commands[i] for i in missing], durable)
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        self._check(replies)
        return replies

    async def _execute(self, commands: Sequence[Command], durable: bool) -> list[Any]:
        """One pipeline round trip; replies (or exceptions) in command order."""
        await self._initialize()
        client = self.client
        pipe = client.pipeline()
        masters: dict[str, ClusterNode] = {}
        for cmd in commands:
            pipe.execute_command(*cmd.args)
            if durable:
                node = client.get_node_from_key(cmd.key)
                if node is not None:
                    masters[node.name] = node
        waits: list[str] = []
        if durable and self.wait_replicas > 0:
            for name, node in masters.items():
                pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms,
                                     target_nodes=node)
                waits.append(name)
        # Redirections must fail the attempt rather than be followed one by one:
        # a write followed elsewhere would escape its WAIT.
        results = await pipe.execute(raise_on_error=False, allow_redirections=False)
        self.stats.batches += 1
        replies = list(results[:len(commands)])
        short: list[str] = []
        for name, acked in zip(waits, results[len(commands):], strict=True):
            if isinstance(acked, BaseException):
                self._check([acked])
            elif int(acked) < self.wait_replicas:
                short.append(f"{name} ({int(acked)} of {self.wait_replicas})")
        if short:
            self._check(replies)  # a command's own error says more than the WAIT
            self.stats.unconfirmed_writes += 1
            raise WriteUnconfirmed(
                f"Redis write not acknowledged by enough replicas within "
                f"{self.wait_timeout_ms} ms on master(s) {', '.join(short)}; not applied "
                "durably, try again (a Redis Cluster built without replicas needs "
                "director.index_write_replicas = 0)")
        return replies

    def _check(self, replies: Sequence[Any]) -> None:
        errors = [r for r in replies if isinstance(r, BaseException)]
        if not errors:
            return
        if any(isinstance(e, rx.NoScriptError) for e in errors):
            raise _ScriptsMissing()
        for e in errors:
            if isinstance(e, RETRYABLE):
                raise e
        raise IndexUnavailable(f"Redis refused a command: {errors[0]}") from errors[0]

    async def _load_scripts(self) -> None:
        async def load(client: RedisCluster) -> None:
            for script in self._scripts.values():
                await client.execute_command("SCRIPT", "LOAD", script.source,
                                             target_nodes=client.get_primaries())

        self.stats.script_loads += 1
        await self.call("SCRIPT LOAD", load)


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or during, outermost first."""
    chain = [exc]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None \
            and nxt not in chain:
        chain.append(nxt)
    return chain


def _connection_failed(exc: BaseException) -> bool:
    """Whether ``exc`` comes from a connection that could not be made (a socket error
    underneath), as opposed to a cluster that answered (CLUSTERDOWN, MOVED...)."""
    return any(isinstance(e, OSError) for e in _causes(exc))


class _ScriptsMissing(Exception):
    """A master answered NOSCRIPT: load the scripts and run the batch again."""


def chunked(commands: Sequence[Command], size: int) -> list[Sequence[Command]]:
    """Split a long batch into pipelines of at most ``size`` commands."""
    return [commands[i:i + size] for i in range(0, len(commands), size)]
