"""The director's Redis-side clients, opened together over one connection pool.

The blob client, directord and the ``objmail`` commands all need the registry, the
location index and the repair queue; :meth:`RedisState.open` builds the three over
one :class:`~director.redisconn.ClusterRunner` (one redis-py cluster client, one set
of connections, one retry policy) from the parsed config.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from director.config import DirectorConfig
from director.index import LocationIndex
from director.keys import Keyspace
from director.redisconn import ClusterRunner, RetryPolicy, new_cluster_client
from director.registry import Registry
from director.repairqueue import RepairQueue
from runtime.config import ClusterConfig
from runtime.secrets import NO_REDIS_AUTH, RedisAuth


@dataclass
class RedisState:
    """Registry, location index and repair queue sharing one runner."""

    runner: ClusterRunner
    registry: Registry
    index: LocationIndex
    repairs: RepairQueue

    @classmethod
    async def open(cls, cluster: ClusterConfig, director: DirectorConfig, *,
                   keys: Keyspace | None = None, retry: RetryPolicy | None = None,
                   auth: RedisAuth = NO_REDIS_AUTH,
                   clock: Callable[[], float] = time.time) -> RedisState:
        """Connect to ``cluster.redis_nodes`` and check the index layout.

        :param auth: the credentials ``runtime.secrets.load_credentials`` read for
            ``cluster``.

        :raises IndexLayoutMismatch: ``director.index_buckets`` differs from the index's.
        :raises IndexUnavailable: Redis Cluster cannot be reached within the deadline.
        """
        keys = keys or Keyspace(cluster.redis_prefix)
        runner = ClusterRunner(new_cluster_client(cluster.redis_nodes, auth=auth), retry=retry,
                               wait_replicas=director.index_write_replicas,
                               wait_timeout=director.index_write_timeout)
        try:
            index = await LocationIndex.open(cluster.redis_nodes,
                                             buckets=director.index_buckets, keys=keys,
                                             runner=runner, clock=clock)
        except BaseException:
            await runner.aclose()
            raise
        return cls(runner, Registry(runner, keys, clock=clock), index,
                   RepairQueue(runner, keys, clock=clock))

    async def aclose(self) -> None:
        await self.runner.aclose()

    async def __aenter__(self) -> RedisState:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
