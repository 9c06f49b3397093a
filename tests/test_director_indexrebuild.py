"""Index rebuild with real object servers (a private installation of three objstored):
lost index entries come back from the nodes' key lists, each copy verified first; a run
resumes where it was stopped; it keeps gc and the node's inventory from running."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest

from director.blobids import BlobIds
from director.client import BlobClient
from director.codec import chunk_key
from director.errors import LeaseHeld
from director.indexrebuild import IndexRebuild
from director.keys import item_index_id
from director.lease import Lease
from ops.cli import EX_OK, EX_TEMPFAIL, EX_USAGE, main
from tests.director_installation import Installation, installation_fixture, with_client

inst = installation_fixture("indexrebuild", objstores=3, cache_bytes=0)


async def put_mail_like(client: BlobClient, n: int) -> tuple[dict[str, bytes], list[bytes]]:
    """Blobs (small ones and a chunked one) and directord items, stored as clients do."""
    size = client.dconf.object_max_item_size
    datas = [b"rebuild " + os.urandom(200 + i) for i in range(n)]
    datas.append(os.urandom(int(1.5 * size)))
    ids = await client.put_many(datas)
    items = [f"rebuild-item-{os.urandom(4).hex()}".encode() for _ in range(3)]
    for key in items:
        assert await client.put_item(key, b"item value " + key)
    return dict(zip(ids, datas, strict=True)), items


async def where(client: BlobClient, ids: list[str], items: list[bytes]
                ) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    return (await client.index.lookup(ids),
            await client.items.lookup([item_index_id(k) for k in items]))


async def forget(client: BlobClient, ids: list[str], items: list[bytes]) -> None:
    """Lose the index entries (as a FLUSHALL would)."""
    await client.index.delete_many(ids)
    await client.items.delete_many([item_index_id(k) for k in items])


def test_rebuild_indexes_every_verified_copy(inst: Installation) -> None:
    """After their index entries are lost, a rebuild records every copy the nodes hold
    (blobs after verifying them, chunks under their blob, items in the items' space), so
    every blob reads back byte-exact; a blob-shaped key that does not verify and chunks
    without their head are counted and not indexed; a second run over the intact index
    reads no blob."""
    async def go(client: BlobClient) -> dict[str, Any]:
        blobs, items = await put_mail_like(client, 20)
        ids = list(blobs)
        before = await where(client, ids, items)
        node = (await client.snapshot(force=True)).nodes[0]
        conn = client.node_client(node)
        bogus = os.urandom(32).hex()  # another installation's key, or a corrupt one
        await conn.set(bogus.encode(), b"not a blob of ours")
        orphan = BlobIds().id_of(b"a blob whose head is elsewhere")
        await conn.set(chunk_key(orphan, 0).encode(), b"chunk")
        await forget(client, ids, items)
        assert all(not n for n in (await client.index.lookup(ids)).values())
        first = await IndexRebuild(client).run_once()
        after = await where(client, ids, items)
        read = {bid: await client.get(bid) for bid in ids}
        second = await IndexRebuild(client).run_once()
        return {"before": before, "after": after, "blobs": blobs, "read": read,
                "first": first, "second": second, "bogus": bogus,
                "bogus_at": await client.index.locations(bogus),
                "orphan_at": await client.index.locations(orphan)}

    got = with_client(inst.config, go)
    assert got["after"] == got["before"]
    assert got["read"] == got["blobs"]
    first, second = got["first"], got["second"]
    copies = sum(len(nums) for nums in got["before"][0].values())
    assert first.finished and not first.interrupted and first.skipped == []
    assert (first.indexed, first.already, first.bad, first.orphans) == (copies, 0, 1, 1)
    assert first.item_keys == sum(len(nums) for nums in got["before"][1].values())
    assert first.bytes > 0 and first.nodes == first.nodes_done == 3
    assert got["bogus"] in first.examples[0]
    assert got["bogus_at"] == () and got["orphan_at"] == ()
    assert (second.indexed, second.already, second.bytes) == (0, copies, 0)


def test_an_interrupted_rebuild_resumes(inst: Installation) -> None:
    """A run stopped after its first page keeps its place and counters in the job hash
    (--status shows them); the next invocation carries on from there and, when done,
    has indexed every copy exactly once."""
    async def go(client: BlobClient) -> tuple[Any, ...]:
        blobs, items = await put_mail_like(client, 30)
        ids = list(blobs)
        before = await where(client, ids, items)
        await forget(client, ids, items)
        job = IndexRebuild(client, page=8)
        cut = await job.run_once(max_items=1)
        running = await job.status()
        rest = await IndexRebuild(client, page=8).run_once()
        return before, await where(client, ids, items), cut, running, rest, \
            await job.status()

    before, after, cut, running, rest, done = with_client(inst.config, go)
    assert cut.interrupted and not cut.finished and cut.items == 8
    assert running["running"] and running["items"] == 8 and running["node"] == cut.node
    assert rest.finished and after == before
    # The first test's copies are indexed already; this one's were indexed once each
    # (the counters are the run's, both invocations).
    copies = sum(len(nums) for nums in before[0].values())
    assert rest.indexed == copies and cut.indexed < copies
    assert rest.items > cut.items  # the run's totals, both invocations
    assert not done["running"] and done["last_indexed"] == rest.indexed


def test_rebuild_keeps_gc_and_inventory_out(inst: Installation) -> None:
    """A rebuild does not start while gc runs, and while it works on a node neither gc
    nor that node's inventory (both delete copies) can take their lease."""
    async def go(client: BlobClient) -> tuple[str, list[bool]]:
        blobs, items = await put_mail_like(client, 20)
        await forget(client, list(blobs), items)  # so that the rebuild reads copies
        ttl = client.dconf.lease_ttl
        gc = Lease(client.index.runner, client.index.keys, "gc", ttl=ttl)
        assert await gc.acquire()
        try:
            with pytest.raises(LeaseHeld) as held:
                await IndexRebuild(client).run_once()
        finally:
            await gc.release()
        node = sorted((await client.snapshot(force=True)).nodes, key=lambda n: n.id)[0]
        seen: list[bool] = []
        stop = [False]

        async def sleep(_seconds: float) -> None:
            # Called by the rate limit between two pages of the first node.
            for name in ("gc", f"inventory:{node.id}"):
                other = Lease(client.index.runner, client.index.keys, name, ttl=ttl)
                seen.append(await other.acquire())
            stop[0] = True
            await asyncio.sleep(0)

        await IndexRebuild(client, node_id=node.id, rate=1.0, sleep=sleep,
                           page=4).run_once(stop=lambda: stop[0])
        for name in ("gc", f"inventory:{node.id}"):  # released when the pass ended
            free = Lease(client.index.runner, client.index.keys, name, ttl=ttl)
            seen.append(await free.acquire())
            await free.release()
        await IndexRebuild(client, node_id=node.id).run_once()  # finish the run
        await IndexRebuild(client).run_once()
        return held.value.job, seen

    job, seen = with_client(inst.config, go)
    assert job == "gc"
    assert seen == [False, False, True, True]


def test_index_rebuild_command(inst: Installation, capsys: pytest.CaptureFixture[str]) -> None:
    """objmail index rebuild --status shows a run stopped midway, --cancel forgets it, a
    run to the end says what it did and exits 75 while a copy is bad (the first test's
    foreign key), naming it; an unknown --node is a usage error."""
    async def cut(client: BlobClient) -> None:
        blobs, items = await put_mail_like(client, 10)
        await forget(client, list(blobs), items)
        assert (await IndexRebuild(client, page=4).run_once(max_items=1)).interrupted

    with_client(inst.config, cut)
    config = str(inst.cluster.config_path)

    def objmail(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(["--config", config, "index", "rebuild", *args])
        return code, capsys.readouterr().out

    code, out = objmail("--status", "--json")
    assert code == EX_OK and json.loads(out)["running"] and json.loads(out)["items"] == 4
    code, out = objmail("--status")
    assert "a run is in progress since" in out and "4 entries done" in out
    assert objmail("--cancel")[0] == EX_OK
    assert "no run in progress" in objmail("--status")[1]
    code, out = objmail()
    assert code == EX_TEMPFAIL, out
    assert "index-rebuild: done: 3 of 3 node(s)" in out and ", 1 bad," in out
    assert "bad copy (left unindexed): objstored-1: " in out
    assert "the last finished at" in objmail("--status")[1]
    assert objmail("--node", "nosuch")[0] == EX_USAGE
