"""Batched plain-item reads (director/itemreads.py) and whole-item index writes, against
real objstored processes and Redis Cluster through the blob client."""

from __future__ import annotations

import asyncio
import os

import pytest

from director.client import BlobClient
from director.itemstate import ItemState
from director.keys import item_index_id
from ops.config import Config
from tests.conftest import RunningObjstores, redis_auth


def run(coro):
    return asyncio.run(coro)


async def open_client(config: Config) -> BlobClient:
    return await BlobClient.open(config.cluster, config.director,
                                 auth=redis_auth(config.cluster))


@pytest.fixture
def config(objstore_cluster: RunningObjstores) -> Config:
    return objstore_cluster.config


def test_reads_of_one_turn_share_one_batch(config: Config) -> None:
    """Reads asked for in the same turn of the loop are served by one batch; each gets its
    own keys' items (with cas uniques when asked), misses left out."""
    keys = [f"batch-{os.urandom(4).hex()}-{i}".encode() for i in range(20)]

    async def go() -> None:
        client = await open_client(config)
        try:
            for i, key in enumerate(keys):
                assert await client.put_item(key, b"v%d" % i, flags=i)
            before = client.item_reads.batches
            missing = b"batch-missing-" + os.urandom(4).hex().encode()
            singles = [asyncio.ensure_future(client.get_item(k)) for k in [*keys, missing]]
            pair = await client.get_items([keys[0], missing, keys[1]], cas=True)
            got = [await f for f in singles]
            assert client.item_reads.batches == before + 1
            for i, item in enumerate(got[:len(keys)]):
                assert item is not None
                assert (item.value, item.flags, item.cas) == (b"v%d" % i, i, None)
            assert list(pair) == [keys[0], keys[1]]
            assert all(v.cas for v in pair.values())
            assert got[-1] is None
        finally:
            await client.aclose()

    run(go())


def test_a_replica_that_lacks_the_item_sends_the_read_on(config: Config) -> None:
    """A key indexed on a node that lacks it is read from its next replica: every read
    finds the value, and the reads that tried that node first count a failover."""
    key = f"lacks-{os.urandom(4).hex()}".encode()

    async def go() -> None:
        client = await open_client(config)
        try:
            assert await client.put_item(key, b"the value")
            index_id = item_index_id(key)
            held = await client.items.locations(index_id)
            snap = await client.snapshot()
            other = next(n for n in snap.nodes if n.number not in held)
            await client.items.add_locations(index_id, [other.number])
            before = client.stats.failovers
            # One read (one batch, one draw of the order) at a time, until one tried the
            # empty node first: with 3 candidates that is each read's chance of about 1/3.
            for _ in range(60):
                item = await client.get_item(key)
                assert item is not None and item.value == b"the value"
                if client.stats.failovers > before:
                    break
            assert client.stats.failovers == before + 1
        finally:
            await client.aclose()

    run(go())


def test_set_replaces_the_entry_and_deletes_copies_left_out(config: Config) -> None:
    """A set of a plain item records exactly the nodes that took it, and deletes the copy
    of a node the entry listed before but the set did not write (an older value there is
    never read, and does not linger)."""
    key = f"replace-{os.urandom(4).hex()}".encode()

    async def go() -> None:
        client = await open_client(config)
        try:
            assert await client.put_item(key, b"old")
            index_id = item_index_id(key)
            first = set(await client.items.locations(index_id))
            snap = await client.snapshot()
            other = next(n for n in snap.nodes if n.number not in first)
            old = ItemState(b"old", 0, 0, client.cas_clock.next())
            reply = await client.node_client(other).meta(old.ms_line(key), old.value)
            assert reply.code == b"HD"
            await client.items.add_locations(index_id, [other.number])
            assert await client.put_item(key, b"new")
            now = set(await client.items.locations(index_id))
            assert len(now) == config.director.replicas
            if other.number not in now:  # placement did not pick it: its copy is gone
                assert await client.node_client(other).get_many([key]) == {}
            item = await client.get_item(key)
            assert item is not None and item.value == b"new"
            assert await client.items.replace_many({index_id: sorted(now)}) == \
                {index_id: tuple(sorted(now))}
        finally:
            await client.aclose()

    run(go())
