"""Verified copies between real object servers: reading a replica as stored, probing what
it is, writing it elsewhere and deleting it (a private installation of three objstored)."""

from __future__ import annotations

import os

import pytest

from director.client import BlobClient
from director.codec import FLAG_MANIFEST, chunk_key
from director.copier import delete_copy, write_verified
from director.memcache_client import NodeAddress, NodeClient
from director.nodes import Node
from director.planner import Health
from tests.conftest import CORPUS
from tests.director_installation import Installation, installation_fixture, with_client

inst = installation_fixture("copier", objstores=3, cache_bytes=0)


def corpus_message() -> bytes:
    """A real message from the shared corpus (the largest of one source directory)."""
    files = sorted((CORPUS / "apache-james-mime4j").rglob("*.msg"), key=lambda p: p.stat().st_size)
    return files[-1].read_bytes()


async def holders(client: BlobClient, bid: str) -> tuple[list[Node], list[Node]]:
    """The nodes holding ``bid`` and the others."""
    snap = await client.snapshot(force=True)
    numbers = await client.index.locations(bid)
    return ([n for n in snap.nodes if n.number in numbers],
            [n for n in snap.nodes if n.number not in numbers])


@pytest.mark.parametrize("kind", ["message", "chunked"])
def test_copy_is_byte_identical_and_verified(inst: Installation, kind: str) -> None:
    """A replica read as stored verifies against its id (a chunked blob whole and chunk by
    chunk);
    written to a node without it, it reads back identical, flags included; deleted, the
    head and every chunk are gone."""
    size = inst.config.objstore.max_item_size
    data = corpus_message() if kind == "message" else os.urandom(int(2.5 * size))

    async def body(client: BlobClient) -> None:
        bid = await client.put(data)
        (source, *_), (target, *_) = await holders(client, bid)
        reader = client.reader
        blob = await reader.read(bid, client.node_client(source), content=False)
        assert blob.size == len(data) and blob.content is None
        assert len(blob.items) == (1 if kind == "message" else 4)
        assert bool(blob.items[-1].flags & FLAG_MANIFEST) == (kind == "chunked")
        assert await reader.stored_size(bid, client.node_client(source)) == \
            (len(blob.items[0].value) if kind == "message" else len(data))
        dest = client.node_client(target)
        assert (await reader.probe(bid, dest)).health is Health.MISSING
        await write_verified(dest, blob)
        copy = await reader.read(bid, dest, content=False)
        assert copy == blob
        assert await reader.stored_keys(bid, dest) == blob.keys
        assert await delete_copy(dest, blob.keys) == len(blob.items)
        for key in blob.keys:
            assert await dest.get(key) is None
        assert await reader.stored_size(bid, dest) is None
        assert await reader.stored_keys(bid, dest) == ()

    with_client(inst.config, body)


def test_probe_tells_missing_corrupt_and_unreachable_apart(inst: Installation) -> None:
    """A replica with wrong bytes is corrupt, one without the blob or without one of its
    chunks is missing, a closed port is unreachable; none of them raises."""
    size = inst.config.objstore.max_item_size
    small = b"copier probe " + os.urandom(300)
    big = os.urandom(int(1.5 * size))

    async def body(client: BlobClient) -> None:
        sid, bid = await client.put_many([small, big])
        (s_node, *_), _ = await holders(client, sid)
        (b_node, *_), _ = await holders(client, bid)
        s_client, b_client = client.node_client(s_node), client.node_client(b_node)
        assert (await client.reader.probe(sid, s_client)).health is Health.GOOD
        head = await s_client.get(sid.encode())
        assert head is not None
        await s_client.set(sid.encode(), b"not the blob at all", head.flags)
        bad = await client.reader.probe(sid, s_client)
        assert bad.health is Health.CORRUPT and bad.blob is None
        chunk = chunk_key(bid, 1).encode()
        saved = await b_client.get(chunk)
        assert saved is not None
        await b_client.set(chunk, saved.value[:-1] + bytes([saved.value[-1] ^ 1]), saved.flags)
        assert (await client.reader.probe(bid, b_client)).health is Health.CORRUPT
        await b_client.delete(chunk)
        assert (await client.reader.probe(bid, b_client)).health is Health.MISSING
        await b_client.set(chunk, saved.value, saved.flags)
        assert (await client.reader.probe(bid, b_client)).health is Health.GOOD
        closed = NodeClient(NodeAddress("127.0.0.1", 1), timeout=0.5)
        try:
            assert (await client.reader.probe(sid, closed)).health is Health.UNREACHABLE
        finally:
            await closed.close()

    with_client(inst.config, body)
