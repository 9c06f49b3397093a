"""Repair with real processes: object servers killed with SIGKILL, a replica overwritten
with wrong bytes, a node removed; the repair job's lease; ``objmail repair``; directord
repairing in the background.

The module runs a private installation: three objstored (zones a, b, c), 2 replicas and
a write quorum of 1 (so that puts succeed while nodes are down, leaving blobs short of
copies for the repairer).  The node removal comes last: it leaves two nodes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from pathlib import Path

import pytest

from director.client import BlobClient
from director.errors import LeaseHeld
from director.lease import Lease
from director.nodes import Node, NodeState
from director.repairer import Repairer
from ops.cli import EX_OK, EX_TEMPFAIL, main
from ops.config import to_toml
from tests.conftest import CORPUS
from tests.director_installation import (
    Installation,
    installation_fixture,
    wait_state,
    with_client,
)

inst = installation_fixture("repair", objstores=3, write_quorum=1, cache_bytes=0, timeout=0.5,
                            repair_retry_delay=60.0)


def corpus_blobs(n: int, tag: str) -> list[bytes]:
    """Real messages from the corpus, each made unique by a header line."""
    files = sorted((CORPUS / "mikel-mail").rglob("*.eml"))[:n]
    assert len(files) == n
    return [f"X-Repair-Test: {tag} {os.urandom(6).hex()}\r\n".encode() + f.read_bytes()
            for f in files]


async def verified_holders(client: BlobClient, bid: str, *, skip: str = "") -> list[str]:
    """Ids of the nodes whose copy of ``bid`` reads back and verifies (``skip``: a node
    the index may still list, not asked)."""
    snap = await client.snapshot(force=True)
    out = []
    for number in await client.index.locations(bid):
        node = snap.by_number(number)
        assert node is not None
        if node.id == skip:
            continue
        blob = await client.reader.read(bid, client.node_client(node), content=False)
        assert blob.blob_id == bid
        out.append(node.id)
    return sorted(out)


def test_corrupt_and_missing_replicas_are_rewritten(inst: Installation) -> None:
    """A replica overwritten with wrong bytes on its object server, and one deleted there
    (a chunk of a chunked blob too), are written again in place by a repair pass once
    queued; the blob then verifies on both nodes."""
    size = inst.config.objstore.max_item_size
    datas = [*corpus_blobs(2, "corrupt"), os.urandom(int(1.5 * size))]

    async def body(client: BlobClient) -> None:
        ids = await client.put_many(datas)
        snap = await client.snapshot(force=True)
        damaged: dict[str, Node] = {}
        for i, bid in enumerate(ids):
            victim = snap.by_number((await client.index.locations(bid))[0])
            assert victim is not None
            damaged[bid] = victim
            target = client.node_client(victim)
            key = (bid if i < 2 else f"{bid}/0").encode()
            held = await target.get(key)
            assert held is not None
            if i == 1:
                await target.delete(key)
            else:
                await target.set(key, b"garbage " + held.value[8:], held.flags)
        await client.repair.add(ids)
        stats = await Repairer(client).run_once()
        assert stats.claimed == 3 and stats.rewritten == 3 and stats.repaired == 3
        assert stats.copies_made == 0 and stats.backlog == 0
        for bid in ids:
            assert len(await verified_holders(client, bid)) == 2
            assert damaged[bid].number in await client.index.locations(bid)
        assert await client.get_many(ids) == dict(zip(ids, datas, strict=True))

    with_client(inst.config, body)


def test_blobs_written_while_nodes_were_down_get_their_copies(inst: Installation) -> None:
    """kill -9 two of the three object servers: puts still succeed (write quorum 1) with
    one copy each and are queued; once the servers are back, one repair pass gives every
    blob its second verified copy, chunked ones included."""
    size = inst.config.objstore.max_item_size
    first, second, third = (o.name for o in inst.objstores())
    datas = [*corpus_blobs(6, "outage"), os.urandom(int(1.5 * size))]
    inst.kill(first)
    inst.kill(second)
    try:
        async def write(client: BlobClient) -> list[str]:
            ids = await client.put_many(datas)
            found = await client.index.lookup(ids)
            assert all(len(found[b]) == 1 for b in ids), found
            assert await client.repair.backlog() >= len(ids)
            return ids

        ids = with_client(inst.config, write)
    finally:
        inst.start(first)
        inst.start(second)

    async def repair(client: BlobClient) -> None:
        stats = await Repairer(client).run_once()
        assert stats.repaired >= len(ids) and stats.copies_made >= len(ids), stats
        assert stats.unrepairable == 0 and stats.backlog == 0
        for bid in ids:
            holders = await verified_holders(client, bid)
            assert len(holders) == 2 and third in holders
        assert await client.get_many(ids) == dict(zip(ids, datas, strict=True))

    with_client(inst.config, repair)


def test_only_one_director_runs_repair_at_a_time(inst: Installation, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Two repair passes started together: one holds the lease and runs, the other is
    told the job is held; objmail repair exits 75 naming the holder while another
    director holds it."""
    async def body(client: BlobClient) -> tuple[int, int, str]:
        outcomes = await asyncio.gather(Repairer(client).run_once(),
                                        Repairer(client).run_once(), return_exceptions=True)
        held = [o for o in outcomes if isinstance(o, LeaseHeld)]
        ran = [o for o in outcomes if not isinstance(o, BaseException)]
        blocker = Lease(client.index.runner, client.index.keys, "repair", ttl=30)
        assert await blocker.acquire()
        return len(held), len(ran), blocker.token

    held, ran, token = with_client(inst.config, body)
    assert (held, ran) == (1, 1)
    try:
        capsys.readouterr()
        code = main(["--config", str(inst.cluster.config_path), "repair", "--once"])
        _out, err = capsys.readouterr()
        assert code == EX_TEMPFAIL and token in err
    finally:
        rc = inst.redis()
        rc.delete(f"{inst.prefix}lease:{{repair}}")
        rc.close()


def test_repair_cli_reports_json(inst: Installation,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """objmail repair --once --json runs a pass: it sweeps the whole (small) index and
    reports what it did; a blob queued with a copy missing is repaired by it."""
    data = corpus_blobs(1, "cli")[0]

    async def damage(client: BlobClient) -> str:
        bid = await client.put(data)
        node = (await client.snapshot()).by_number((await client.index.locations(bid))[1])
        assert node is not None
        await client.node_client(node).delete(bid.encode())
        await client.repair.add([bid])
        return bid

    bid = with_client(inst.config, damage)
    capsys.readouterr()
    code = main(["--config", str(inst.cluster.config_path), "repair", "--once", "--json"])
    out, err = capsys.readouterr()
    assert code == EX_OK, err
    stats = json.loads(out)
    assert stats["job"] == "repair" and stats["passes"] == 1
    assert stats["swept_buckets"] == inst.config.director.index_buckets
    assert stats["sweep_wrapped"] and stats["rewritten"] == 1 and stats["repaired"] >= 1
    assert len(with_client(inst.config, lambda c: verified_holders(c, bid))) == 2


def test_directord_repairs_in_the_background(inst: Installation, tmp_path: Path) -> None:
    """A directord with repair_interval set repairs a queued blob on its own."""
    config = dataclasses.replace(inst.config, director=dataclasses.replace(
        inst.config.director, repair_interval=0.5))
    path = tmp_path / "directord.toml"
    path.write_text(to_toml(config))
    host, port = "127.0.0.1", int(config.director.listen.rsplit(":", 1)[1])
    spec = inst.cluster.directord_spec(host, port, name="directord-repair", config_path=path)
    data = corpus_blobs(1, "daemon")[0]

    async def damage(client: BlobClient) -> str:
        bid = await client.put(data)
        node = (await client.snapshot()).by_number((await client.index.locations(bid))[0])
        assert node is not None
        await client.node_client(node).delete(bid.encode())
        await client.repair.add([bid])
        return bid

    bid = with_client(inst.config, damage)
    inst.cluster.launcher.start(spec)
    try:
        async def wait(client: BlobClient) -> None:
            deadline = time.monotonic() + 20
            while await client.repair.backlog():
                assert time.monotonic() < deadline, "directord did not repair"
                await asyncio.sleep(0.2)
            assert len(await verified_holders(client, bid)) == 2

        with_client(inst.config, wait)
    finally:
        inst.cluster.launcher.stop(spec)


def test_node_dead_re_replicates_at_once_without_the_grace(
        inst: Installation, capsys: pytest.CaptureFixture[str]) -> None:
    """kill -9 a node: it is seen down within a few report intervals (its report late,
    not expired), and within repair_down_grace its copies still count, so a pass copies
    nothing; after objmail node dead, the next pass sweeps the whole index at once and
    gives every blob it held a second verified copy elsewhere, last copies first."""
    datas = corpus_blobs(8, "dead")
    victim = inst.objstores()[1].name
    config = str(inst.cluster.config_path)

    async def write(client: BlobClient) -> list[str]:
        ids = await client.put_many(datas)
        number = (await client.snapshot(force=True)).get(victim).number  # type: ignore[union-attr]
        found = await client.index.lookup(ids)
        await client.repair.done(await client.repair.claim(1000))  # an empty queue
        return [b for b in ids if number in found[b]]

    on_victim = with_client(inst.config, write)
    assert on_victim
    inst.kill(victim)
    killed = time.monotonic()
    try:
        wait_state(inst.config, victim, NodeState.DOWN)
        assert time.monotonic() - killed < inst.config.objstore.report_ttl, \
            "down once its report is late, before the report expires"

        async def within_grace(client: BlobClient) -> None:
            stats = await Repairer(client).run_once()
            assert stats.copies_made == 0 and victim not in stats.lost_nodes

        with_client(inst.config, within_grace)
        capsys.readouterr()
        assert main(["--config", config, "node", "dead", victim]) == EX_OK
        assert "is dead" in capsys.readouterr().out

        async def repair(client: BlobClient) -> None:
            stats = await Repairer(client).run_once()
            assert victim in stats.lost_nodes
            assert stats.swept_buckets == inst.config.director.index_buckets
            assert stats.sweep_last_copy >= len(on_victim)
            assert stats.copies_made >= len(on_victim) and stats.unrepairable == 0
            for bid in on_victim:
                holders = await verified_holders(client, bid, skip=victim)
                assert len(holders) == 2 and victim not in holders
            by_id = {client.id_of(d): d for d in datas}
            assert await client.get_many(on_victim) == {b: by_id[b] for b in on_victim}
            again = await Repairer(client).run_once()
            assert again.copies_made == again.sweep_queued == again.full_sweep_left == 0

        with_client(inst.config, repair)
    finally:
        inst.start(victim)
    assert main(["--config", config, "node", "activate", victim]) == EX_OK
    wait_state(inst.config, victim, NodeState.ACTIVE)


def test_blobs_of_a_removed_node_are_re_replicated(inst: Installation,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """After objmail node remove (the node still serving, its copies no longer counted),
    the repair sweep finds every blob left with one copy and gives it a second one on
    another node, though nobody queued it."""
    datas = corpus_blobs(8, "removed")
    victim = inst.objstores()[0].name

    async def write(client: BlobClient) -> list[str]:
        ids = await client.put_many(datas)
        number = (await client.snapshot(force=True)).get(victim).number  # type: ignore[union-attr]
        found = await client.index.lookup(ids)
        assert all(len(found[b]) == 2 for b in ids)
        await client.repair.done(await client.repair.claim(1000))  # an empty queue
        return [b for b in ids if number in found[b]]

    on_victim = with_client(inst.config, write)
    assert on_victim
    capsys.readouterr()
    assert main(["--config", str(inst.cluster.config_path), "node", "remove", victim]) == EX_OK

    async def repair(client: BlobClient) -> None:
        found = await client.index.lookup(on_victim)
        assert all(len(found[b]) == 1 for b in on_victim), "remove took the node out"
        assert await client.repair.backlog() == 0
        stats = await Repairer(client).run_once()
        assert stats.sweep_queued >= len(on_victim) and stats.copies_made >= len(on_victim)
        for bid in on_victim:
            holders = await verified_holders(client, bid)
            assert len(holders) == 2 and victim not in holders
        by_id = {client.id_of(d): d for d in datas}
        assert await client.get_many(on_victim) == {b: by_id[b] for b in on_victim}

    with_client(inst.config, repair)
