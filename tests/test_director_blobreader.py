"""Reading blobs back verified whole, with real object servers and directord: a forged
copy (a self-consistent manifest and chunks, or a plain value, stored under a real blob
id on one object server) is never served, is found by scrub, and is never copied by
repair over or in place of the genuine copy; a chunk missing on one replica is read from
another; the stream of a chunked blob withholds its last piece until it verified.

The module runs a private installation: three objstored (zones a, b, c), 2 replicas, a
directord with its background jobs off (the tests run repair and scrub themselves), and
no caches, so that every read goes to the object servers.
"""

from __future__ import annotations

import os
import socket

import pytest

from director.blobreader import StoredItem, stored_form
from director.client import BlobClient
from director.codec import CodecError
from director.copier import delete_copy
from director.errors import BlobError
from director.memcache_client import NodeClient
from director.nodes import Node
from director.planner import Health
from director.repairer import Repairer
from director.scrubber import Scrubber
from ops.config import parse_hostport
from tests.conftest import CORPUS
from tests.director_installation import Installation, installation_fixture, with_client

inst = installation_fixture("blobreader", objstores=3, stages=("objstore", "directord"),
                            cache_bytes=0, timeout=1.0, repair_interval=0.0,
                            level_interval=0.0, drain_interval=0.0)


def genuine(kind: str, size: int) -> bytes:
    """A real corpus message, made unique; for ``chunked`` grown past the item size."""
    files = sorted((CORPUS / "apache-james-mime4j").rglob("*.msg"),
                   key=lambda p: p.stat().st_size)
    data = f"X-Reader-Test: {os.urandom(8).hex()}\r\n".encode() + files[-1].read_bytes()
    if kind == "chunked":
        data = (data * (int(2.5 * size) // len(data) + 1))[:int(2.5 * size)]
    return data


async def holders(client: BlobClient, bid: str) -> tuple[Node, Node, Node]:
    """The two nodes holding ``bid``, then the third."""
    snap = await client.snapshot(force=True)
    numbers = await client.index.locations(bid)
    held = [n for n in snap.nodes if n.number in numbers]
    other = [n for n in snap.nodes if n.number not in numbers]
    assert len(held) == 2 and len(other) == 1
    return held[0], held[1], other[0]


async def forge(client: BlobClient, node: NodeClient, bid: str, content: bytes) -> None:
    """Store ``content`` under ``bid`` on one object server, encoded exactly as a put
    would (a chunked one with a manifest that matches its chunks): only the whole
    content's id gives it away."""
    await delete_copy(node, await client.reader.stored_keys(bid, node))
    for item in stored_form(client.codec, client.ids, bid, content, client.chunk_size):
        assert await node.set(item.key, item.value, item.flags)


def directord_get(inst: Installation, bid: str) -> bytes:
    """The raw reply of directord to ``get <bid>``."""
    with socket.create_connection(parse_hostport(inst.config.director.listen),
                                  timeout=10) as sock:
        sock.sendall(b"get %s\r\n" % bid.encode())
        out = b""
        while not (out.endswith(b"END\r\n") or (out.startswith(b"SERVER_ERROR")
                   and out.endswith(b"\r\n"))):
            piece = sock.recv(1 << 20)
            if not piece:
                break
            out += piece
        return out


async def stream(client: BlobClient, bid: str) -> tuple[list[bytes], BaseException | None]:
    """The pieces ``iter_chunks`` released, and the error that ended it (if any)."""
    pieces: list[bytes] = []
    try:
        async for piece in client.iter_chunks(bid):
            pieces.append(piece)
    except BlobError as exc:
        return pieces, exc
    return pieces, None


@pytest.mark.parametrize("kind", ["plain", "chunked"])
def test_a_forged_copy_is_never_served_scrubbed_corrupt_and_never_copied(
        inst: Installation, kind: str) -> None:
    """A forged copy on one node is corrupt to a probe and to scrub; get and directord
    serve the genuine copy, and repair rewrites the forgery from it.  Forged again with
    the genuine copy deleted: get, iter_chunks (before its last piece) and directord
    refuse it, scrub reports it, and repair copies nothing, reporting the blob corrupt."""
    size = inst.config.objstore.max_item_size
    data = genuine(kind, size)
    forged = os.urandom(len(data))

    async def body(client: BlobClient) -> None:
        reader = client.reader
        bid = await client.put(data)
        a, b, c = await holders(client, bid)
        good, bad = client.node_client(a), client.node_client(b)
        await forge(client, bad, bid, forged)
        probe = await reader.probe(bid, bad)
        assert probe.health is Health.CORRUPT and "does not match its id" in probe.detail
        assert (await reader.probe(bid, good)).health is Health.GOOD

        # The genuine copy wins wherever it is read.
        assert await client.get(bid) == data
        head = await good.get(bid.encode())
        assert head is not None
        assert directord_get(inst, bid) == b"VALUE %s %d %d\r\n%s\r\nEND\r\n" % (
            bid.encode(), head.flags, len(head.value), head.value)
        scrub = await Scrubber(client, node_id=b.id).run_once()
        assert scrub.corrupt == 1 and scrub.examples == [bid]
        repaired = await Repairer(client).run_once()
        assert repaired.rewritten >= 1 and repaired.corrupt == 0
        fixed = await reader.probe(bid, bad)
        assert fixed.health is Health.GOOD and fixed.blob is not None
        assert fixed.blob.items == (await reader.read(bid, good, content=False)).items

        # Only the forgery left: nothing serves it, and repair does not spread it.
        await forge(client, bad, bid, forged)
        await delete_copy(good, await reader.stored_keys(bid, good))
        with pytest.raises(BlobError, match="does not match its id"):
            await client.get(bid)
        pieces, error = await stream(client, bid)
        assert isinstance(error, BlobError) and sum(map(len, pieces)) < len(forged)
        assert directord_get(inst, bid).startswith(b"SERVER_ERROR")
        scrub = await Scrubber(client).run_once()
        assert scrub.corrupt >= 1 and scrub.missing >= 1 and bid in scrub.examples
        assert await client.repair.backlog() >= 1
        stuck = await Repairer(client).run_once()
        assert stuck.corrupt == 1 and stuck.rewritten == 0 and stuck.copies_made == 0
        assert bid in stuck.examples
        assert (await reader.probe(bid, good)).health is Health.MISSING
        assert (await reader.probe(bid, client.node_client(c))).health is Health.MISSING
        assert (await reader.probe(bid, bad)).health is Health.CORRUPT
        assert set(await client.index.locations(bid)) == {a.number, b.number}

        await client.repair.done([bid])  # leave nothing to the module's other tests
        await client.delete(bid)

    with_client(inst.config, body)


def test_a_chunk_missing_on_one_replica_is_read_from_another(inst: Installation) -> None:
    """A chunk the first replica lacks is taken from the next chunk source, the failure
    reported to the caller's hook; the content still verifies whole.  With that replica
    as the only source, the read fails as missing."""
    size = inst.config.objstore.max_item_size
    data = genuine("chunked", size)

    async def body(client: BlobClient) -> None:
        bid = await client.put(data)
        a, b, _c = await holders(client, bid)
        first, second = client.node_client(a), client.node_client(b)
        assert await first.delete(f"{bid}/1".encode())
        failed: list[tuple[NodeClient, Exception]] = []
        blob = await client.reader.read(bid, first, chunk_sources=[first, second],
                                        on_chunk_error=lambda n, e: failed.append((n, e)))
        assert blob.content == data and blob.size == len(data)
        assert [n for n, _e in failed] == [first]
        assert (await client.reader.probe(bid, first)).health is Health.MISSING
        await client.delete(bid)

    with_client(inst.config, body)


def test_check_value_refuses_manifests_and_content_of_another_id(
        inst: Installation) -> None:
    """``check_value`` (what a set of a blob id through directord must pass) accepts the
    encoded content of that id, and refuses a manifest and content of another id."""
    async def body(client: BlobClient) -> None:
        data = genuine("chunked", inst.config.objstore.max_item_size)
        bid = client.id_of(data)
        items = stored_form(client.codec, client.ids, bid, data, client.chunk_size)
        assert len(items) == 4 and all(isinstance(i, StoredItem) for i in items)
        plain = b"check me " + os.urandom(100)
        pid = client.id_of(plain)
        value, flags = client.codec.encode(plain, pid)
        client.reader.check_value(pid, value, flags)
        # Sealed under another id, it fails authentication before any hash is taken.
        with pytest.raises(CodecError, match="decryption failed"):
            client.reader.check_value(bid, value, flags)
        with pytest.raises(CodecError, match="does not match its id"):
            client.reader.check_value(bid, plain, 0)
        with pytest.raises(CodecError, match="manifest"):
            client.reader.check_value(bid, items[-1].value, items[-1].flags)

    with_client(inst.config, body)
