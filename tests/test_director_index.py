"""Tests of the location index against the session's real Redis Cluster."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis

from director.errors import IndexLayoutMismatch, WriteUnconfirmed
from director.index import LocationIndex
from director.keys import IndexLayout, InvalidBlobId, Keyspace
from ops.config import parse_hostport
from ops.devcluster import wait_redis_cluster_ok
from tests.conftest import RunningRedis
from tests.test_director_redisconn import wait_replication_links


def blob_ids(n: int, salt: str = "") -> list[str]:
    return [hashlib.sha256(f"{salt}{i}".encode()).hexdigest() for i in range(n)]


def run(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


def fresh_keys() -> Keyspace:
    return Keyspace(f"t-{uuid.uuid4().hex[:8]}:")


def with_index(redis_cluster: RunningRedis, buckets: int,
               body: Callable[[LocationIndex], Awaitable[Any]],
               keys: Keyspace | None = None) -> Any:
    async def go() -> Any:
        index = await LocationIndex.open(redis_cluster.nodes,
                                         auth=redis_cluster.auth, buckets=buckets,
                                         keys=keys or fresh_keys())
        try:
            return await body(index)
        finally:
            await index.aclose()

    return run(go)


def test_added_locations_are_looked_up(redis_cluster: RunningRedis) -> None:
    """Locations recorded for a batch come back per id; unknown ids give ()."""
    ids = blob_ids(300)

    async def body(index: LocationIndex) -> dict[str, tuple[int, ...]]:
        await index.add_many({b: [2, 1] for b in ids[:200]})
        return await index.lookup(ids)

    found = with_index(redis_cluster, 256, body)
    assert all(found[b] == (1, 2) for b in ids[:200])
    assert all(found[b] == () for b in ids[200:])


def test_adding_merges_with_known_locations(redis_cluster: RunningRedis) -> None:
    """A second add merges node numbers (sorted, unique) and returns the whole set."""

    async def body(index: LocationIndex) -> tuple[Any, ...]:
        b = blob_ids(1)[0]
        first = await index.add_locations(b, [7])
        second = await index.add_locations(b, [3, 7, 12])
        return first, second, await index.locations(b)

    assert with_index(redis_cluster, 256, body) == ((7,), (3, 7, 12), (3, 7, 12))


def test_concurrent_writers_of_the_same_blobs_both_count(redis_cluster: RunningRedis) -> None:
    """Two directors recording different replicas of the same blobs at once: the index
    ends with both (the merge is atomic per bucket)."""
    keys = fresh_keys()
    ids = blob_ids(2000, "conc")

    async def go() -> dict[str, tuple[int, ...]]:
        a = await LocationIndex.open(redis_cluster.nodes,
                                     auth=redis_cluster.auth, buckets=64, keys=keys)
        b = await LocationIndex.open(redis_cluster.nodes,
                                     auth=redis_cluster.auth, buckets=64, keys=keys)
        try:
            for i in range(0, len(ids), 100):
                chunk = ids[i:i + 100]
                await asyncio.gather(a.add_many({x: [1] for x in chunk}),
                                     b.add_many({x: [2] for x in chunk}))
            return await a.lookup(ids)
        finally:
            await a.aclose()
            await b.aclose()

    found = run(go)
    assert set(found.values()) == {(1, 2)}


def test_removing_locations(redis_cluster: RunningRedis) -> None:
    """Removing a node leaves the others; removing the last one drops the entry, unless
    keep_last asks to keep a blob's only location."""
    a, b = blob_ids(2, "rm")

    async def body(index: LocationIndex) -> list[Any]:
        await index.add_many({a: [1, 2], b: [4]})
        out = [await index.remove_location(a, 1),
               await index.remove_location(a, 9),
               await index.remove_location(b, 4, keep_last=True),
               await index.locations(b),
               await index.remove_location(b, 4),
               await index.locations(b),
               await index.remove_location(b, 4)]
        return out

    assert with_index(redis_cluster, 256, body) == [(2,), (2,), (4,), (4,), (), (), ()]


def test_delete(redis_cluster: RunningRedis) -> None:
    """Deleting forgets blobs entirely and says how many were indexed."""
    ids = blob_ids(50, "del")

    async def body(index: LocationIndex) -> tuple[bool, bool, int, dict[str, Any]]:
        await index.add_many({b: [1, 2] for b in ids})
        one = await index.delete(ids[0])
        again = await index.delete(ids[0])
        many = await index.delete_many(ids[1:30] + blob_ids(5, "never"))
        return one, again, many, await index.lookup(ids)

    one, again, many, found = with_index(redis_cluster, 256, body)
    assert (one, again, many) == (True, False, 29)
    assert [b for b in ids if found[b]] == ids[30:]


def test_scan_sees_every_blob_once_and_resumes_from_its_cursor(
        redis_cluster: RunningRedis) -> None:
    """A scan in pages, interrupted and resumed by another client from the saved cursor,
    returns every indexed blob exactly once with its nodes; a node filter keeps only
    that node's blobs."""
    keys = fresh_keys()
    ids = blob_ids(3000, "scan")
    want = {b: ((1, 2) if i % 3 else (2, 3)) for i, b in enumerate(ids)}

    async def go() -> tuple[list[tuple[str, tuple[int, ...]]], list[str], int]:
        first = await LocationIndex.open(redis_cluster.nodes,
                                         auth=redis_cluster.auth, buckets=64, keys=keys)
        await first.add_many(dict(want))
        seen: list[tuple[str, tuple[int, ...]]] = []
        page = await first.scan(0, buckets=10)
        seen += page.entries
        cursor = page.next_cursor
        await first.aclose()
        assert cursor == 10
        second = await LocationIndex.open(redis_cluster.nodes,
                                          auth=redis_cluster.auth, buckets=64, keys=keys)
        try:
            async for p in second.iterate(start=cursor, buckets=7):
                seen += p.entries
            on3 = [b for p in [p async for p in second.iterate(node=3)] for b, _n in p.entries]
            return seen, on3, await second.count()
        finally:
            await second.aclose()

    seen, on3, count = run(go)
    assert len(seen) == len(ids) == count
    assert dict(seen) == want
    assert sorted(on3) == sorted(b for b, n in want.items() if 3 in n)


def test_sole_copies_and_stripping_a_node(redis_cluster: RunningRedis) -> None:
    """sole_copies counts blobs only on a node; strip_node takes the node out of every
    entry that has another location and leaves sole copies alone."""
    ids = blob_ids(400, "strip")
    layout: dict[str, list[int]] = {}
    for i, b in enumerate(ids):
        layout[b] = [5] if i < 7 else ([5, 6] if i % 2 else [6, 7])

    async def body(index: LocationIndex) -> tuple[Any, ...]:
        await index.add_many(layout)
        sole = await index.sole_copies(5, examples=3)
        calls: list[tuple[int, int]] = []
        strip = await index.strip_node(5, progress=lambda d, t: calls.append((d, t)))
        after = await index.lookup(ids)
        return sole, strip, after, calls

    sole, strip, after, calls = with_index(redis_cluster, 32, body)
    assert sole.count == 7 and set(sole.examples) <= set(ids[:7]) and len(sole.examples) == 3
    with_5 = sum(1 for v in layout.values() if 5 in v)
    assert (strip.removed, strip.kept_sole) == (with_5 - 7, 7)
    assert all(after[b] == (5,) for b in ids[:7])
    assert all(5 not in after[b] and after[b] for b in ids[7:])
    assert calls[-1] == (32, 32)


def test_buckets_stay_listpacks_and_small(redis_cluster: RunningRedis) -> None:
    """10k blobs with 2 replicas in 64 buckets: every bucket is a listpack and the
    buckets take under 64 bytes per blob (MEMORY USAGE, key overhead included)."""
    keys = fresh_keys()
    ids = blob_ids(10_000, "mem")

    async def body(index: LocationIndex) -> None:
        await index.add_many({b: [1 + i % 9, 10 + i % 3] for i, b in enumerate(ids)})

    with_index(redis_cluster, 64, body, keys)
    from redis.cluster import RedisCluster

    host, port = parse_hostport(redis_cluster.nodes[0])
    rc = RedisCluster(host=host, port=port, **redis_cluster.auth.client_kwargs())
    try:
        layout = IndexLayout(64)
        names = [keys.index_bucket(layout.bucket_name(b)) for b in range(64)]
        encodings = {rc.object("encoding", k) for k in names}
        usage = sum(int(rc.execute_command("MEMORY", "USAGE", k, "SAMPLES", "0"))
                    for k in names)
        entries = sum(int(rc.execute_command("HLEN", k)) for k in names)
    finally:
        rc.close()
    assert encodings == {b"listpack"}
    assert entries == len(ids)
    assert usage / len(ids) < 64


def test_bucket_count_is_fixed_when_the_index_is_created(redis_cluster: RunningRedis) -> None:
    """Opening an existing index with another bucket count is refused, naming both."""
    keys = fresh_keys()
    with_index(redis_cluster, 256, lambda index: index.add_locations(blob_ids(1)[0], [1]),
               keys)
    with pytest.raises(IndexLayoutMismatch, match="index_buckets = 256"):
        with_index(redis_cluster, 512, lambda index: index.count(), keys)


def test_invalid_ids_are_refused(redis_cluster: RunningRedis) -> None:
    """A key that is not a 64-hex blob id is refused before anything is sent."""

    async def body(index: LocationIndex) -> None:
        with pytest.raises(InvalidBlobId):
            await index.lookup(["not-a-blob"])
        with pytest.raises(InvalidBlobId):
            await index.add_locations("A" * 64, [1])

    with_index(redis_cluster, 256, body)


def test_single_blob_operations_agree_with_count_and_scan(redis_cluster: RunningRedis) -> None:
    """Locations added one blob at a time come back sorted, a removed location and a
    deleted entry are gone from lookups, and count and scan see the same entries."""
    ids = blob_ids(20, "single")

    async def body(index: LocationIndex) -> None:
        assert await index.add_locations(ids[0], [4, 2]) == (2, 4)
        await index.add_many({b: [1] for b in ids[1:]})
        assert await index.lookup(ids[:2]) == {ids[0]: (2, 4), ids[1]: (1,)}
        assert await index.remove_location(ids[0], 4) == (2,)
        assert await index.delete(ids[1])
        assert await index.count() == 19
        assert len((await index.scan(0, buckets=128)).entries) == 19

    with_index(redis_cluster, 128, body)


@pytest.mark.slow
def test_master_failover_loses_no_acknowledged_location(redis_cluster: RunningRedis) -> None:
    """Kill -9 a Redis master while a writer records locations: the writer carries on
    (retries with backoff) once the replica takes over; batches the promoted replica
    cannot have confirmed by a replica of its own fail (WriteUnconfirmed) rather than
    being acknowledged; every location it was told was recorded is in the index
    afterwards."""
    cluster = redis_cluster.cluster
    keys = fresh_keys()
    wait_replication_links(redis_cluster)
    masters = current_masters(redis_cluster)

    async def go() -> tuple[list[str], dict[str, tuple[int, ...]], int, str, float]:
        index = await LocationIndex.open(redis_cluster.nodes,
                                         auth=redis_cluster.auth, buckets=1024, keys=keys)
        victim = index.runner.client.get_primaries()[0]
        spec = cluster.spec(f"redis-{victim.port}")
        acked: list[str] = []
        longest = 0.0
        refused = 0
        try:
            t0 = time.monotonic()
            batch = 0
            killed_at = None
            while time.monotonic() - t0 < 12:
                if killed_at is None and time.monotonic() - t0 > 1:
                    cluster.launcher.signal(spec, signal.SIGKILL)
                    killed_at = time.monotonic()
                ids = blob_ids(40, f"fo{batch}-")
                batch += 1
                started = time.monotonic()
                try:
                    await index.add_many({b: [1, 2] for b in ids})
                except WriteUnconfirmed:
                    refused += 1
                    await asyncio.sleep(0.2)
                    continue
                finally:
                    longest = max(longest, time.monotonic() - started)
                acked += ids
            # The killed node comes back as a replica of the one that took over.
            cluster.launcher.start(spec)
            wait_redis_cluster_ok(cluster.redis_addresses, timeout=60, auth=redis_cluster.auth)
            found = await index.lookup(acked)
            assert refused == index.runner.stats.unconfirmed_writes
            return acked, found, index.runner.stats.retries, victim.name, longest
        finally:
            await index.aclose()

    try:
        acked, found, retries, victim, longest = run(go)
    finally:
        restore_roles(redis_cluster, masters)
    assert retries > 0, "the kill should have made the writer retry"
    assert longest > 1.0, "a batch should have waited out the failover"
    missing = [b for b in acked if found[b] != (1, 2)]
    assert not missing, f"{len(missing)} acknowledged of {len(acked)} lost after {victim} died"


def current_masters(redis_cluster: RunningRedis) -> list[tuple[str, int]]:
    masters = []
    for host, port in redis_cluster.cluster.redis_addresses:
        client = redis.Redis(host=host, port=port, decode_responses=True,
                             **redis_cluster.auth.client_kwargs())
        try:
            if client.info("replication")["role"] == "master":
                masters.append((host, port))
        finally:
            client.close()
    return masters


def restore_roles(redis_cluster: RunningRedis, masters: list[tuple[str, int]]) -> None:
    """Put the session's cluster back as it was: every node up, the same masters as
    before, cluster ok, replicas online (the cluster is shared by the whole session)."""
    cluster = redis_cluster.cluster
    for stage in cluster.stages():
        for spec in stage.specs:
            cluster.launcher.start(spec)
    wait_redis_cluster_ok(cluster.redis_addresses, timeout=60, auth=redis_cluster.auth)
    for host, port in masters:
        client = redis.Redis(host=host, port=port, decode_responses=True,
                             **redis_cluster.auth.client_kwargs())
        try:
            if client.info("replication")["role"] != "master":
                wait_replication_links(redis_cluster)
                client.execute_command("CLUSTER", "FAILOVER")
                deadline = time.monotonic() + 30
                while client.info("replication")["role"] != "master":
                    assert time.monotonic() < deadline, f"{host}:{port} did not take over"
                    time.sleep(0.1)
        finally:
            client.close()
    wait_redis_cluster_ok(cluster.redis_addresses, timeout=60, auth=redis_cluster.auth)
    wait_replication_links(redis_cluster)


def test_update_moves_locations_of_known_blobs_only(redis_cluster: RunningRedis) -> None:
    """update adds and removes node numbers in one step, never empties an entry, and
    never brings back a blob the index does not know (gc collected it meanwhile)."""
    a, b, gone = blob_ids(3, "upd")

    async def body(index: LocationIndex) -> list[Any]:
        await index.add_many({a: [1, 2], b: [3]})
        return [await index.update(a, add=[5], remove=[1]),
                await index.update(b, remove=[3]),
                await index.update(gone, add=[4]),
                await index.lookup([a, b, gone]),
                await index.update_many({a: ([2, 6], [5]), b: ([7], [3])})]

    moved, kept, absent, found, many = with_index(redis_cluster, 256, body)
    assert moved == (2, 5) and kept == (3,) and absent == ()
    assert found == {a: (2, 5), b: (3,), gone: ()}
    assert many == {a: (2, 6), b: (7,)}


@pytest.mark.parametrize("prefix", ["t-TAG:", "{t-TAG}:"])
def test_a_write_that_changes_nothing_is_still_replicated(redis_cluster: RunningRedis,
                                                           prefix: str) -> None:
    """A script that finds its entries already as it would write them writes a fence key
    of the bucket's slot instead, so it is replicated and the WAIT after it covers the
    equal entry (maybe another writer's, not yet on a replica).  The fence lies outside
    the items' space the location cache tracks, under the index's own prefix."""
    tag = uuid.uuid4().hex[:8]
    keys = Keyspace(prefix.replace("TAG", tag))
    b = blob_ids(1, tag)[0]

    async def body(index: LocationIndex) -> list[str]:
        bucket = index._key(b)
        await index.add_locations(b, [7])
        await index.replace_many({b: [3, 7]})
        wrote = []
        for change in (lambda: index.add_locations(b, [7]),
                       lambda: index.replace_many({b: [3, 7]}),
                       lambda: index.update(b, add=[3])):
            client = redis_cluster.client()
            try:
                await client.initialize()
                master = client.get_node_from_key(bucket)
                before = await client.info("replication", target_nodes=master)
                await change()
                after = await client.info("replication", target_nodes=master)
                fences = [k.decode() async for k in client.scan_iter(match=f"{keys.prefix}fence:*")]
            finally:
                await client.aclose()
            assert after["master_repl_offset"] > before["master_repl_offset"]
            wrote.append(",".join(sorted(fences)))
        assert await index.locations(b) == (3, 7)
        return wrote

    wrote = with_index(redis_cluster, 256, body, keys=keys)
    fence = (f"{keys.prefix}fence:{{{keys.prefix}ix:" if "{" not in keys.prefix
             else f"{keys.prefix}fence:ix:")
    assert len(set(wrote)) == 1 and wrote[0].startswith(fence), wrote
