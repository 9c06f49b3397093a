"""Inventory with real object servers: a copy lost on a node is queued for repair and a
key the index does not place there is reported, by ``objmail inventory`` (a private
installation of two objstored); ``objmail inventory --fix`` reclaims unindexed copies
older than the grace period, adopting those a message references (with the session's
PostgreSQL)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from director.client import BlobClient
from director.config import MIN_GC_GRACE
from director.keys import item_index_id
from director.repairer import Repairer
from metadata.uidset import UidSet
from ops.cli import EX_OK, EX_TEMPFAIL, EX_USAGE, main
from ops.config import to_toml
from tests.director_installation import Installation, installation_fixture, with_client
from tests.mailstack import open_stack

inst = installation_fixture("inventory", objstores=2, cache_bytes=0,
                            gc_min_grace=0.0)


def test_inventory_queues_lost_copies_and_reports_stray_keys(
        inst: Installation, capsys: pytest.CaptureFixture[str]) -> None:
    """With one blob's copy deleted on a node and an unindexed blob-shaped key planted
    there, objmail inventory NODE reports both and exits 75; the lost copy was queued and
    a repair pass restores it; a second inventory finds only the stray key; an item
    stored through directord matches its index entry."""
    size = inst.config.objstore.max_item_size
    datas = [b"inventory " + os.urandom(300) for _ in range(10)]
    datas.append(os.urandom(int(1.5 * size)))
    stray = os.urandom(32).hex()
    node_id = inst.objstores()[0].name

    async def prepare(client: BlobClient) -> str:
        ids = await client.put_many(datas)
        assert await client.put_item(b"an-item-key", b"value")
        node = (await client.snapshot(force=True)).get(node_id)
        assert node is not None
        target = client.node_client(node)
        await target.delete(ids[3].encode())
        await target.set(stray.encode(), b"stray bytes")
        await client.repair.done(await client.repair.claim(1000))
        return ids[3]

    lost = with_client(inst.config, prepare)
    config = str(inst.cluster.config_path)
    capsys.readouterr()
    assert main(["--config", config, "inventory", node_id, "--json"]) == EX_TEMPFAIL
    (found,) = json.loads(capsys.readouterr().out)
    assert (found["missing"], found["unindexed"]) == (1, 1)
    assert found["missing_examples"] == [lost] and found["unindexed_examples"] == [stray]
    assert found["indexed"] == len(datas) + 1 and found["keys"] >= len(datas) + 2

    async def repair(client: BlobClient) -> None:
        assert await client.repair.backlog() == 1
        stats = await Repairer(client).run_once()
        assert stats.rewritten == 1
        node = (await client.snapshot()).get(node_id)
        assert node is not None
        await client.reader.read(lost, client.node_client(node))

    with_client(inst.config, repair)
    assert main(["--config", config, "inventory"]) == EX_TEMPFAIL
    out = capsys.readouterr().out
    assert f"{node_id}:" in out and "0 missing there" in out and stray in out

    async def clean(client: BlobClient) -> None:
        node = (await client.snapshot()).get(node_id)
        assert node is not None
        await client.node_client(node).delete(stray.encode())

    with_client(inst.config, clean)
    assert main(["--config", config, "inventory", "--json"]) == EX_OK
    assert all(r["missing"] == r["unindexed"] == 0 for r in json.loads(capsys.readouterr().out))


def test_inventory_fix_reclaims_unindexed_copies(inst: Installation, postgres: str,
                                                 tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Unindexed copies (index entries lost, a put that missed its quorum) are left alone
    while younger than the grace period; after it, ``inventory --fix`` deletes those no
    message references (a chunked blob's chunks too), adopts back into the index those a
    delivered message references (readable again), and leaves a directord item and a
    blob-shaped key that does not verify; a second run finds nothing left to do."""
    config = dataclasses.replace(inst.config, cluster=dataclasses.replace(
        inst.config.cluster, pg_dsn=postgres))
    path = tmp_path / "objmail.toml"
    path.write_text(to_toml(config))
    size = config.objstore.max_item_size
    node_id = inst.objstores()[0].name
    raw = (b"Subject: adopt me\r\nMIME-Version: 1.0\r\nContent-Type: application/octet-stream"
           b"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + os.urandom(20_000).hex().encode() + b"\r\n")
    with open_stack(config) as stack:
        user = stack.new_user("inv")
        stack.run(stack.deliverer.deliver(user.name, raw))
        box = stack.run(stack.store.mailboxes.get(user.id, "INBOX"))
        (entry,) = stack.run(stack.store.messages.fetch(user.id, box.id, UidSet.all(),
                                                        items={"skeleton"}))
        assert entry.skeleton_id is not None
        referenced = stack.run(stack.store.messages.blob_ids(user.id, entry.message_id))
    orphans = [b"inventory orphan " + os.urandom(300), os.urandom(int(1.5 * size))]
    stray = os.urandom(32).hex()
    item = f"inv-item-{os.urandom(3).hex()}".encode()

    async def plant(client: BlobClient) -> list[str]:
        ids = await client.put_many(orphans)
        assert await client.put_item(item, b"an item")
        # Lost index writes: the copies stay on both nodes, unindexed.
        assert await client.index.delete_many([*ids, *referenced]) == len(ids) + len(
            referenced)
        assert await client.items.delete_many([item_index_id(item)]) == 1
        node = (await client.snapshot(force=True)).get(node_id)
        assert node is not None
        await client.node_client(node).set(stray.encode(), b"not a blob of ours")
        # A put that missed its quorum: one copy on one node, never indexed.
        data = b"missed quorum " + os.urandom(200)
        bid = client.id_of(data)
        payload, flags = client.codec.encode(data, bid)
        await client.node_client(node).set(bid.encode(), payload, flags)
        return [*ids, bid]

    doomed = with_client(config, plant)
    capsys.readouterr()
    assert main(["--config", str(path), "inventory", node_id, "--fix", "--grace", "3600",
                 "--json"]) == EX_TEMPFAIL
    (young,) = json.loads(capsys.readouterr().out)
    # Every unindexed blob-shaped key, the stray included, is too young to judge yet.
    assert young["young"] == len(doomed) + len(referenced) + 1 and young["reclaimed"] == 0
    assert young["fixed"] and young["adopted"] == 0

    assert main(["--config", str(path), "inventory", "--fix", "--grace", "0",
                 "--json"]) == EX_TEMPFAIL  # the stray and the item are left
    results = json.loads(capsys.readouterr().out)
    mine = next(r for r in results if r["node"] == node_id)
    assert mine["reclaimed"] == len(doomed) and mine["adopted"] == len(referenced)
    assert mine["foreign"] == 1 and mine["young"] == 0 and mine["fixed"]
    assert mine["copies_deleted"] >= len(doomed) + 2  # the chunked orphan's chunks too
    assert sum(r["reclaimed"] for r in results) == len(doomed) + len(doomed) - 1

    async def check(client: BlobClient) -> None:
        snap = await client.snapshot(force=True)
        for node in snap.nodes:
            keys = {e.key for e in await client.node_client(node).metadump()}
            assert not [b for b in doomed if b.encode() in keys], node.id
            assert not [k for k in keys if k.split(b"/")[0] in {d.encode() for d in doomed}]
        found = await client.index.lookup(referenced)
        assert all(len(found[b]) == 2 for b in referenced), found
        planted = snap.get(node_id)
        assert planted is not None
        assert await client.node_client(planted).get(stray.encode()) is not None
        assert await client.node_client(planted).get(item) is not None

    with_client(config, check)
    with open_stack(config) as stack:
        assert stack.only_message(user) == raw
    assert main(["--config", str(path), "inventory", node_id, "--fix", "--grace", "0",
                 "--json"]) == EX_TEMPFAIL
    (again,) = json.loads(capsys.readouterr().out)
    assert (again["reclaimed"], again["adopted"], again["foreign"]) == (0, 0, 1)
    assert again["unindexed"] == 2  # the stray and the item


def test_inventory_fix_refuses_a_grace_below_the_minimum(
        inst: Installation, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``inventory --fix --grace`` below director.gc_min_grace exits 64 and touches
    nothing."""
    strict = dataclasses.replace(inst.config, director=dataclasses.replace(
        inst.config.director, gc_min_grace=MIN_GC_GRACE))
    path = tmp_path / "objmail.toml"
    path.write_text(to_toml(strict))
    capsys.readouterr()
    assert main(["--config", str(path), "inventory", "--fix", "--grace", "60"]) == EX_USAGE
    assert "below the minimum of 600 s" in capsys.readouterr().err
