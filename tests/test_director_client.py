"""System tests of the blob client against real objstored processes and Redis Cluster."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
from pathlib import Path

import pytest

from director.client import BlobClient, Coalescer
from director.codec import FLAG_MANIFEST, FLAG_SEALED, FLAG_ZLIB, chunk_key, key_id_of
from director.errors import BlobNotFound, KeyUnavailable
from director.memcache_client import NodeAddress, NodeClient
from ops.config import Config, parse_hostport
from tests.conftest import CORPUS, RunningObjstores, redis_auth


def run(coro):
    return asyncio.run(coro)


async def open_client(config: Config) -> BlobClient:
    return await BlobClient.open(config.cluster, config.director,
                                 auth=redis_auth(config.cluster))


async def raw_get(address: str, key: str):
    host, port = parse_hostport(address)
    node = NodeClient(NodeAddress(host, port))
    try:
        return await node.get(key.encode())
    finally:
        await node.close()


async def raw_set(address: str, key: str, value: bytes, flags: int) -> None:
    host, port = parse_hostport(address)
    node = NodeClient(NodeAddress(host, port))
    try:
        assert await node.set(key.encode(), value, flags)
    finally:
        await node.close()


@pytest.fixture
def config(objstore_cluster: RunningObjstores) -> Config:
    return objstore_cluster.config


def test_put_get_replicates_in_distinct_zones(config: Config) -> None:
    """A put stores `replicas` copies on nodes of distinct zones; get returns the bytes."""
    data = b"hello objmail " + os.urandom(32)

    async def go() -> None:
        client = await open_client(config)
        try:
            bid = await client.put(data)
            assert bid == client.id_of(data) != hashlib.sha256(data).hexdigest()
            numbers = await client.index.locations(bid)
            assert len(numbers) == config.director.replicas
            nodes = (await client.snapshot()).resolve(numbers)
            assert len({n.zone for n in nodes}) == len(nodes)
            for node in nodes:
                got = await raw_get(node.address, bid)
                assert got is not None
            client.cache.memory.discard(bid)
            assert await client.get(bid) == data
        finally:
            await client.aclose()

    run(go())


def test_dedup_uploads_once(config: Config) -> None:
    """Putting the same content twice uploads it once; the second put is an index hit."""
    data = os.urandom(10_000)

    async def go() -> None:
        client = await open_client(config)
        try:
            await client.put(data)
            await client.put(data)
            assert client.stats.uploads == 1
            assert client.stats.dedup_hits == 1
            ids = await client.put_many([data, data, b"x" * 5000])
            assert client.stats.uploads == 2
            assert ids[0] == ids[1]
        finally:
            await client.aclose()

    run(go())


def test_corpus_roundtrip_and_compression_flag(config: Config) -> None:
    """Real messages round-trip exactly; text is stored zlib-compressed on the servers."""
    files = sorted(p for p in (CORPUS / "apache-spamassassin").rglob("*") if p.is_file())[:20]
    datas = [p.read_bytes() for p in files]

    async def go() -> None:
        client = await open_client(config)
        try:
            ids = await client.put_many(datas)
            client.cache.memory = type(client.cache.memory)(0)  # no cache: read the servers
            got = await client.get_many(ids)
            assert [got[i] for i in ids] == datas
            biggest = max(range(len(datas)), key=lambda i: len(datas[i]))
            numbers = await client.index.locations(ids[biggest])
            node = (await client.snapshot()).resolve(numbers)[0]
            raw = await raw_get(node.address, ids[biggest])
            assert raw.flags & FLAG_ZLIB
            assert len(raw.value) < len(datas[biggest])
        finally:
            await client.aclose()

    run(go())


def test_large_blob_is_chunked(config: Config) -> None:
    """A blob larger than the item size is stored as chunks plus a manifest and read back."""
    data = os.urandom(2 * config.objstore.max_item_size + 12345)

    async def go() -> None:
        client = await open_client(config)
        try:
            bid = await client.put(data)
            numbers = await client.index.locations(bid)
            node = (await client.snapshot()).resolve(numbers)[0]
            head = await raw_get(node.address, bid)
            assert head.flags & FLAG_MANIFEST
            assert await raw_get(node.address, chunk_key(bid, 2)) is not None
            client.cache.memory.discard(bid)
            assert await client.get(bid) == data
            client.cache.memory.discard(bid)
            pieces = [p async for p in client.iter_chunks(bid)]
            assert len(pieces) == 3 and b"".join(pieces) == data
        finally:
            await client.aclose()

    run(go())


def test_corrupt_replica_fails_over_and_queues_repair(config: Config) -> None:
    """Bytes that do not hash to the id are never returned: the next replica serves."""
    data = b"precious " + os.urandom(64)

    async def go() -> None:
        client = await open_client(config)
        try:
            bid = await client.put(data)
            nodes = await client._ordered(bid, await client.index.locations(bid))
            await raw_set(nodes[0].address, bid, b"evil bytes", 0)
            before = await client.repair.backlog()
            for _attempt in range(40):  # reads pick a replica at random: until the bad one
                client.cache.memory.discard(bid)
                assert await client.get(bid) == data
                if client.stats.bad_replicas:
                    break
            assert client.stats.bad_replicas == 1
            assert await client.repair.backlog() >= before + 1
            await client.repair.done([bid])
        finally:
            await client.aclose()

    run(go())


def test_encrypted_blobs_are_opaque_on_servers(config: Config) -> None:
    """With the default config (a keyring), object servers hold values sealed under the
    current key id, under a keyed id; the client still reads plain bytes."""
    secret = b"Subject: secret\r\n\r\n" + b"the quarterly numbers are " * 20 + os.urandom(8)

    async def go() -> None:
        client = await open_client(config)
        try:
            bid = await client.put(secret)
            assert bid != hashlib.sha256(secret).hexdigest()
            numbers = await client.index.locations(bid)
            for node in (await client.snapshot()).resolve(numbers):
                raw = await raw_get(node.address, bid)
                assert raw.flags & FLAG_SEALED and key_id_of(raw.flags) == 1
                assert b"quarterly" not in raw.value
            client.cache.memory.discard(bid)
            assert await client.get(bid) == secret
        finally:
            await client.aclose()

    run(go())


def test_blobs_stored_before_the_keyring_still_read(config: Config, tmp_path: Path) -> None:
    """Blobs written without a keyring (plain SHA-256 ids, plaintext or the legacy
    encryption_key_file envelope) read back through a client with the keyring (and the
    legacy key file), verified against their legacy ids; a keyring client without the
    legacy key file says key id 0 is unavailable instead of calling the blob corrupt."""
    key_file = tmp_path / "key"
    key_file.write_text(os.urandom(32).hex())
    old = dataclasses.replace(config.director, keyring_file="", allow_plaintext=True)
    plain_conf = dataclasses.replace(config, director=old)
    legacy_conf = dataclasses.replace(config, director=dataclasses.replace(
        old, encryption_key_file=str(key_file)))
    now_conf = dataclasses.replace(config, director=dataclasses.replace(
        config.director, encryption_key_file=str(key_file), cache_bytes=0))
    blobs = [b"written in plaintext " + os.urandom(64), b"written sealed " + os.urandom(64)]

    async def go() -> None:
        ids = []
        for conf, data in zip((plain_conf, legacy_conf), blobs, strict=True):
            client = await open_client(conf)
            try:
                ids.append(await client.put(data))
            finally:
                await client.aclose()
        assert ids == [hashlib.sha256(b).hexdigest() for b in blobs]
        client = await open_client(now_conf)
        try:
            assert await client.get_many(ids) == dict(zip(ids, blobs, strict=True))
        finally:
            await client.aclose()
        bare = await open_client(dataclasses.replace(config, director=dataclasses.replace(
            config.director, cache_bytes=0)))
        try:
            with pytest.raises(KeyUnavailable, match="key id 0"):
                await bare.get(ids[1])
            assert bare.stats.bad_replicas == bare.stats.repairs_queued == 0
        finally:
            await bare.aclose()

    run(go())


def test_delete_removes_everywhere(config: Config) -> None:
    """delete drops every copy and the index entry; get then says not found."""
    data = os.urandom(3000)

    async def go() -> None:
        client = await open_client(config)
        try:
            bid = await client.put(data)
            nodes = (await client.snapshot()).resolve(await client.index.locations(bid))
            assert await client.delete(bid)
            for node in nodes:
                assert await raw_get(node.address, bid) is None
            assert not await client.exists(bid)
            with pytest.raises(BlobNotFound):
                await client.get(bid)
        finally:
            await client.aclose()

    run(go())




def test_coalescer_batches_concurrent_requests() -> None:
    """Requests made while a batch is in flight leave together in the next one; each
    waiter gets its own ids' answer, duplicates are merged, errors reach every waiter."""
    batches: list[dict[str, frozenset[int]]] = []
    fail = [False]

    async def run_batch(reqs: dict[str, frozenset[int]]) -> dict[str, tuple[int, ...]]:
        batches.append(dict(reqs))
        await asyncio.sleep(0.01)
        if fail[0]:
            raise ConnectionError("redis went away")
        return {k: tuple(sorted(v)) for k, v in reqs.items()}

    async def go() -> None:
        c: Coalescer[frozenset[int]] = Coalescer(run_batch, frozenset.union)
        first = asyncio.ensure_future(c.one("a", frozenset({1})))
        await asyncio.sleep(0)  # the first batch is now in flight
        rest = await asyncio.gather(c.one("b", frozenset({2})), c.one("a", frozenset({3})),
                                    c.many({"c": frozenset({4}), "b": frozenset({6})}))
        assert await first == (1,)
        assert rest == [(2, 6), (3,), {"c": (4,), "b": (2, 6)}]
        assert batches == [{"a": {1}}, {"b": {2, 6}, "a": {3}, "c": {4}}]
        fail[0] = True
        results = await asyncio.gather(c.one("x", frozenset({1})), c.one("y", frozenset({1})),
                                       return_exceptions=True)
        assert all(isinstance(r, ConnectionError) for r in results)
        fail[0] = False
        assert await c.one("z", frozenset({9})) == (9,)

    run(go())


def test_put_named_trusts_only_its_own_id_function(config: Config) -> None:
    """Blobs named by the client's own ``id_of`` are stored under the names given (no
    second hash); names from any other function are computed again, and a name that is
    not its content's id is refused before anything is stored."""
    data = b"named once " + os.urandom(64)
    other = b"named elsewhere " + os.urandom(64)

    async def go() -> None:
        client = await open_client(config)
        try:
            bid = client.id_of(data)
            await client.put_named({bid: data}, client.id_of)
            assert client.stats.uploads == 1 and await client.get(bid) == data
            oid = client.id_of(other)
            await client.put_named({oid: other}, lambda c: client.ids.id_of(c))
            assert await client.get(oid) == other
            with pytest.raises(ValueError, match="does not have that id"):
                # A plain SHA-256 is no name for new content (only old blobs keep one).
                await client.put_named({hashlib.sha256(other).hexdigest(): other},
                                       lambda c: hashlib.sha256(c).hexdigest())
            wrong = client.id_of(b"something else")
            with pytest.raises(ValueError, match="does not have that id"):
                await client.put_named({wrong: other}, lambda c: wrong)
            assert not await client.exists(wrong) and client.stats.uploads == 2
        finally:
            await client.aclose()

    run(go())
