"""Inventory with real object servers: a copy lost on a node is queued for repair and a
key the index does not place there is reported, by ``objmail inventory`` (a private
installation of two objstored)."""

from __future__ import annotations

import json
import os

import pytest

from director.client import BlobClient
from director.repairer import Repairer
from ops.cli import EX_OK, EX_TEMPFAIL, main
from tests.director_installation import Installation, installation_fixture, with_client

inst = installation_fixture("inventory", objstores=2, cache_bytes=0, timeout=0.5)


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
