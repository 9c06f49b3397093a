"""Drain with real processes: a node's blobs and items move to the others, through an
interrupted pass and ``objmail node drain --wait``, until ``objmail node remove`` succeeds
and every blob still reads back; a key no index entry names keeps the node from being
reported empty until ``objmail inventory --fix`` reclaims it.

The module runs a private installation: four objstored (zones a, b, c, a), 2 replicas.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from director.blobids import BlobIds
from director.client import BlobClient
from director.drainer import Drainer
from director.index import SCAN_BUCKETS
from director.jobstate import JobState
from director.keys import is_blob_id, item_index_id
from ops.cli import EX_OK, EX_TEMPFAIL, main
from ops.config import Config, to_toml
from tests.conftest import CORPUS
from tests.director_installation import Installation, installation_fixture, with_client

inst = installation_fixture("drain", objstores=4, cache_bytes=0,
                            gc_min_grace=0.0)


def test_drain_survives_an_interruption_and_empties_the_node(
        inst: Installation, capsys: pytest.CaptureFixture[str]) -> None:
    """Drain a node holding blobs (a chunked one among them), directord items and one
    blob whose copy there was lost (taken from its other replica instead): a pass
    stopped after a few blobs saves its cursor, nothing is lost meanwhile; node drain
    --wait resumes and finishes; the node is empty (its copies deleted), node remove
    succeeds, and every blob and item reads back with 2 verified copies elsewhere."""
    size = inst.config.objstore.max_item_size
    files = sorted((CORPUS / "mikel-mail").rglob("*.eml"))[:60]
    datas = [f"X-Drain: {os.urandom(4).hex()}\r\n".encode() + f.read_bytes() for f in files]
    datas.append(os.urandom(int(1.5 * size)))
    items = {f"drain-item-{i}-{os.urandom(3).hex()}".encode(): os.urandom(200)
             for i in range(6)}
    victim = inst.objstores()[1].name

    async def prepare(client: BlobClient) -> tuple[list[str], int, int]:
        ids = await client.put_many(datas)
        for key, value in items.items():
            assert await client.put_item(key, value, flags=7)
        node = (await client.snapshot(force=True)).get(victim)
        assert node is not None
        # Placement is by key: add items until one has a copy on the victim, so the
        # interrupted pass below has an item to move whatever the random keys were.
        for _ in range(64):
            where = await client.items.lookup({item_index_id(k) for k in items})
            if any(node.number in nums for nums in where.values()):
                break
            key, value = f"drain-item-x-{os.urandom(3).hex()}".encode(), os.urandom(200)
            assert await client.put_item(key, value, flags=7)
            items[key] = value
        else:
            raise AssertionError("no item placed on the victim in 64 tries")
        mine = [b for b, nums in (await client.index.lookup(ids)).items()
                if node.number in nums]
        assert len(mine) > 10
        await client.node_client(node).delete(mine[0].encode())
        first_page = len((await client.index.scan(0, buckets=SCAN_BUCKETS,
                                                   node=node.number)).entries)
        await client.registry.drain(victim)
        return ids, node.number, first_page

    ids, number, first_page = with_client(inst.config, prepare)

    async def interrupted(client: BlobClient) -> None:
        drainer = Drainer(client, victim)
        stats = await drainer.run_once(max_items=first_page + 1)
        assert stats.interrupted and not stats.empty
        assert stats.items == first_page + 1
        assert stats.moved == first_page + 1 and stats.dropped == 0 and stats.errors == 0
        assert stats.items_moved >= 1
        saved = await drainer.progress()
        assert saved.cursor >= SCAN_BUCKETS, "the cursor moved past the finished page"
        assert saved.moved == stats.moved and not saved.empty
        # Mid-drain, nothing is lost: every blob and item still reads back.
        assert await client.get_many(ids) == dict(zip(ids, datas, strict=True))
        for key, value in items.items():
            got = await client.get_item(key)
            assert got is not None and got.value == value

    with_client(inst.config, interrupted)
    config = str(inst.cluster.config_path)
    capsys.readouterr()
    code = main(["--config", config, "node", "drain", victim, "--wait", "--json"])
    out, err = capsys.readouterr()
    assert code == EX_OK, err
    result = json.loads(out)
    assert result["empty"] and result["remaining"] == 0 and result["moved"] > 0
    code = main(["--config", config, "node", "remove", victim])
    out, err = capsys.readouterr()
    assert code == EX_OK, err
    assert "took it out of 0 index entries" in out

    async def check(client: BlobClient) -> None:
        snap = await client.snapshot(force=True)
        found = await client.index.lookup(ids)
        assert not [b for b in ids if number in found[b]]
        for bid in ids:
            holders = await client.index.locations(bid)
            assert len(holders) == 2, (bid, holders)
            for n in holders:
                node = snap.by_number(n)
                assert node is not None
                assert (await client.reader.read(bid, client.node_client(node),
                                                 content=False)).blob_id == bid
        assert await client.get_many(ids) == dict(zip(ids, datas, strict=True))
        for key, value in items.items():
            got = await client.get_item(key)
            assert got is not None and (got.value, got.flags) == (value, 7)
        drained = snap.get(victim)
        assert drained is not None
        left = await client.node_client(drained).metadump()
        assert not [e.key for e in left if is_blob_id(e.key.split(b"/")[0])], \
            "the drained node's copies were deleted"
        assert not [e.key for e in left if e.key in items]

    with_client(inst.config, check)


def test_drain_reports_a_blob_it_cannot_move(inst: Installation,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A blob listed only on the draining node, which does not hold it, cannot be moved:
    node drain --wait moves everything else, then exits 75 naming it, and the node is
    not reported empty (node remove would refuse)."""
    victim = inst.objstores()[2].name
    ghost = os.urandom(32).hex()

    async def plant(client: BlobClient) -> None:
        await client.put_many([b"drain ghost neighbour " + os.urandom(64) for _ in range(5)])
        node = (await client.snapshot(force=True)).get(victim)
        assert node is not None
        await client.index.add_locations(ghost, [node.number])

    with_client(inst.config, plant)
    config = str(inst.cluster.config_path)
    try:
        capsys.readouterr()
        code = main(["--config", config, "node", "drain", victim, "--wait"])
        _out, err = capsys.readouterr()
        assert code == EX_TEMPFAIL
        assert "1 blob(s) are still listed" in err and ghost in err

        async def left(client: BlobClient) -> list[str]:
            node = (await client.snapshot(force=True)).get(victim)
            assert node is not None
            page = await client.index.scan(0, buckets=inst.config.director.index_buckets,
                                           node=node.number)
            return [b for b, _nums in page.entries]

        assert with_client(inst.config, left) == [ghost]
        code = main(["--config", config, "node", "remove", victim])
        assert code == EX_TEMPFAIL and ghost in capsys.readouterr().err
    finally:
        with_client(inst.config, lambda client: client.index.delete(ghost))
        main(["--config", config, "node", "activate", victim])


def test_drain_counts_keys_no_index_entry_names(inst: Installation, postgres: str,
                                                tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A copy the draining node holds without an index entry (a put that missed its
    quorum) is still on its disk: node drain --wait moves everything indexed, then exits
    75 saying how many keys are left instead of reporting the node empty; once
    ``inventory --fix`` has reclaimed the copy, the drain reports it empty."""
    config = dataclasses.replace(inst.config, cluster=dataclasses.replace(
        inst.config.cluster, pg_dsn=postgres))
    path = tmp_path / "objmail.toml"
    path.write_text(to_toml(config))
    victim = inst.objstores()[3].name
    leftover = b"a put that missed its quorum " + os.urandom(100)
    leftover_id = BlobIds().id_of(leftover)

    async def plant(client: BlobClient) -> None:
        await client.put_many([b"drain neighbour " + os.urandom(64) for _ in range(8)])
        node = (await client.snapshot(force=True)).get(victim)
        assert node is not None
        payload, flags = client.codec.encode(leftover, leftover_id)
        assert await client.node_client(node).set(leftover_id.encode(), payload, flags)
        await client.registry.drain(victim)

    with_client(config, plant)
    try:
        capsys.readouterr()
        code = main(["--config", str(path), "node", "drain", victim, "--wait", "--json"])
        out, _err = capsys.readouterr()
        assert code == EX_TEMPFAIL
        result = json.loads(out)
        assert not result["empty"] and result["remaining"] == 0 and result["keys_left"] == 1
        assert leftover_id in result["examples"]
        code = main(["--config", str(path), "node", "drain", victim, "--wait"])
        assert code == EX_TEMPFAIL and "inventory --fix" in capsys.readouterr().err

        code = main(["--config", str(path), "inventory", victim, "--fix", "--grace", "0",
                     "--json"])
        (fixed,) = json.loads(capsys.readouterr().out)
        assert code == EX_OK, fixed
        assert fixed["reclaimed"] == 1 and fixed["copies_deleted"] == 1
        code = _drain_now(str(path), victim, config)
        assert code == EX_OK, capsys.readouterr()
        assert json.loads(capsys.readouterr().out)["empty"]
    finally:
        main(["--config", str(path), "node", "activate", victim])


def _drain_now(path: str, victim: str, config: Config) -> int:
    """node drain --wait, after forgetting when the last sweep ended (so that the pass
    sweeps again now instead of waiting out repair_retry_delay)."""
    async def forget(client: BlobClient) -> None:
        drainer = Drainer(client, victim)
        await JobState(client.index.runner, client.index.keys, drainer.job).forget(
            "swept_at")

    with_client(config, forget)
    return main(["--config", path, "node", "drain", victim, "--wait", "--json"])
