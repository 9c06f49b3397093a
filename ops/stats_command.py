"""``objmail stats``: what users see versus what the object servers hold.

*logical bytes* is the sum of every mailbox entry's RFC822.SIZE (a message in two
mailboxes counts twice); *physical bytes* is what the object servers store (every
replica, after compression, record headers included); *unique bytes* is physical
divided by the replication factor.  The dedup ratio is logical / unique: how many
times, on average, each stored byte serves a user.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict, dataclass

from director.memcache_client import NodeAddress, NodeClient, NodeError
from director.nodes import Node, NodeState
from director.redisconn import RetryPolicy
from director.redisstate import RedisState
from metadata.store import MetadataStore
from ops.cli import EX_OK, CommandContext
from ops.config import Config, parse_hostport
from ops.exitcodes import FAILURES, fail
from ops.node_command import CLI_RETRY
from runtime.secrets import Credentials


@dataclass(frozen=True)
class StorageStats:
    users: int
    messages: int
    logical_bytes: int
    physical_bytes: int
    unique_bytes: int
    replicas: int
    blobs: int
    nodes: int
    nodes_unreachable: int

    @property
    def dedup_ratio(self) -> float:
        return self.logical_bytes / self.unique_bytes if self.unique_bytes else 0.0


async def node_bytes(node: Node, timeout: float) -> int | None:
    """Bytes a node holds right now (its ``stats``), or None when it does not answer."""
    host, port = parse_hostport(node.address)
    client = NodeClient(NodeAddress(host, port), pool_size=1, timeout=timeout)
    try:
        return int((await client.stats())["bytes"])
    except (NodeError, OSError, KeyError, ValueError):
        return None
    finally:
        await client.close()


async def collect(config: Config, credentials: Credentials, *,
                  retry: RetryPolicy | None = None) -> StorageStats:
    """Gather the figures from PostgreSQL, the registry, the index and the nodes.

    :param retry: how long Redis operations are retried (the command waits less than the
        daemons' default).
    """
    store = await MetadataStore.open(config.cluster.pg_dsn, pool_min=1, pool_max=2,
                                     password=credentials.pg_password)
    try:
        totals = await store.users.totals()
    finally:
        await store.close()
    async with await RedisState.open(config.cluster, config.director, retry=retry,
                                     auth=credentials.redis) as state:
        nodes = [n for n in (await state.registry.snapshot()).nodes
                 if n.state is not NodeState.REMOVED]
        blobs = await state.index.count()
    live = await asyncio.gather(*(node_bytes(n, config.director.timeout) for n in nodes))
    physical = 0
    unreachable = 0
    for node, got in zip(nodes, live, strict=True):
        if got is None:
            # Fall back to the node's last load report, if it has one.
            unreachable += 1
            got = node.report.used_bytes if node.report else 0
        physical += got
    replicas = config.director.replicas
    return StorageStats(totals.users, totals.entries, totals.bytes, physical,
                        physical // replicas, replicas, blobs, len(nodes), unreachable)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("stats", help="logical vs physical bytes, dedup ratio, blob count")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=run)


def run(ctx: CommandContext) -> int:
    try:
        stats = asyncio.run(collect(ctx.config, ctx.credentials, retry=CLI_RETRY))
    except FAILURES as exc:
        return fail(ctx, exc, "objmail stats")
    if ctx.args.json:
        ctx.say(json.dumps(dict(asdict(stats), dedup_ratio=round(stats.dedup_ratio, 3)),
                           indent=2))
        return EX_OK
    ctx.say(f"users           {stats.users:>16,}")
    ctx.say(f"messages        {stats.messages:>16,}   (mailbox entries)")
    ctx.say(f"logical bytes   {stats.logical_bytes:>16,}   (what users see)")
    ctx.say(f"physical bytes  {stats.physical_bytes:>16,}   (on {stats.nodes} object "
            f"server(s), {stats.replicas} replicas)")
    ctx.say(f"unique bytes    {stats.unique_bytes:>16,}   (physical / replicas)")
    ctx.say(f"blobs           {stats.blobs:>16,}")
    ctx.say(f"dedup ratio     {stats.dedup_ratio:>16.2f}   (logical / unique)")
    if stats.nodes_unreachable:
        ctx.warn(f"warning: {stats.nodes_unreachable} object server(s) did not answer; "
                 f"their last reported usage was used")
    return EX_OK
