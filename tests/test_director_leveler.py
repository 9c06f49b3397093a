"""Leveling with real processes: a new, empty object server joins three full ones and
receives blobs from them, the hot ones (read most through the frontends) first, until every
node's bytes are within the configured tolerance of its target (the mean, for these
equal capacities); ``objmail level --dry-run`` and ``--once``.

The module runs a private installation of three objstored (zones a, b, c) that report a
capacity of 8 MiB each, so that a few MiB of blobs make a measurable usage; the fourth
(zone d) is started and added by the test.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from director.client import BlobClient
from director.leveler import Leveler, eta, load_ratios
from director.nodes import Node, NodeState
from director.planner import NodeLoad, NodeUsage, usage
from ops.cli import EX_OK, main
from ops.config import MIB, Config
from tests.conftest import free_port_block
from tests.director_installation import Installation, installation_fixture, with_client

CAPACITY = 8 * MIB
TOLERANCE = 0.10
BLOB = 40 * 1024
#: Reads of each hot blob.
READS = 20


# The node timeout stays the default: a pass's copies must not time out on a loaded
# machine (a skipped move fails the test), and no node here is ever down.
inst = installation_fixture("level", objstores=3,
                            objstore_settings={"capacity_bytes": CAPACITY}, cache_bytes=0,
                            level_tolerance=TOLERANCE,
                            level_bytes_per_pass=16 * MIB)


async def fresh_reports(client: BlobClient, since: float) -> list[Node]:
    """The active nodes, once each has a load report written after ``since``."""
    deadline = time.monotonic() + 20
    while True:
        snap = await client.snapshot(force=True)
        nodes = [n for n in snap.nodes if n.state is NodeState.ACTIVE]
        if all(n.report is not None and n.report.reported_at > since for n in nodes):
            return nodes
        assert time.monotonic() < deadline, "no fresh load reports"
        await asyncio.sleep(0.2)


def spread_now(config: Config, since: float) -> float:
    """The largest deviation from a node's target, from reports written after ``since``."""
    async def body(client: BlobClient) -> float:
        nodes = await fresh_reports(client, since)
        return usage([NodeUsage(n.id, n.number, n.zone, n.report.used_bytes,
                                n.report.capacity_bytes)
                      for n in nodes if n.report is not None]).spread

    return with_client(config, body)


def test_new_node_gets_hot_blobs_first_until_level(inst: Installation,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Three nodes 20% full and a new empty one: the dry run plans moves onto the new
    node, each source's hot blobs before its others (every hot blob moved once); a pass carries them out (each a
    verified copy, the index updated, the source copy deleted), leaving every node
    within tolerance by the next load reports, every blob readable with 2 copies; a
    further pass finds nothing to do."""
    datas = [os.urandom(BLOB) for _ in range(60)]

    async def write(client: BlobClient) -> tuple[list[str], dict[str, int]]:
        ids = await client.put_many(datas)
        found = await client.index.lookup(ids)
        snap = await client.snapshot(force=True)
        return ids, {n.id: sum(1 for b in ids if n.number in found[b]) for n in snap.nodes}

    ids, counts = with_client(inst.config, write)
    written = time.time()
    # The fullest node is surely a source: its hot blobs must move first.
    hot_node = next(o for o in inst.objstores() if o.name == max(counts, key=counts.__getitem__))

    async def pick_hot(client: BlobClient) -> list[str]:
        number = (await client.snapshot()).get(hot_node.name).number  # type: ignore[union-attr]
        found = await client.index.lookup(ids)
        return [b for b in ids if number in found[b]][:4]

    hot = with_client(inst.config, pick_hot)
    port = free_port_block(1)
    spec = inst.cluster.objstored_spec("objstored-new", "127.0.0.1", port,
                                       inst.cluster.run_dir / "objstore" / "new", zone="d")
    inst.cluster.launcher.start(spec)
    try:
        async def add(client: BlobClient) -> None:
            await client.registry.add("objstored-new", f"127.0.0.1:{port}", zone="d",
                                      tier="ssd")
            deadline = time.monotonic() + 20
            while (await client.snapshot(force=True)).get(
                    "objstored-new").state is not NodeState.ACTIVE:  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "the new node does not report"
                await asyncio.sleep(0.2)

        with_client(inst.config, add)
        config = str(inst.cluster.config_path)
        # Reads through a frontend's blob client make them hot: its sampled reads
        # reach the decayed counters when it closes (flushing its batch); the plan
        # depends on them, so wait until the counters show every read.
        async def read_hot(client: BlobClient) -> dict[str, float]:
            for _ in range(READS):
                for bid in hot:
                    await client.get(bid)
            await client.temperature.flush()

            def counted() -> bool:
                return all(h.reads >= READS - 0.5 for h in heat.values())

            # (A send of the flush task may still be in flight: wait for it too.)
            deadline = time.monotonic() + 30
            heat = await client.heat.lookup(hot)
            while not counted():
                assert time.monotonic() < deadline, f"reads not counted: {heat}"
                await asyncio.sleep(0.1)
                heat = await client.heat.lookup(hot)
            return {b: h.reads for b, h in heat.items()}

        assert len(with_client(inst.config, read_hot)) == len(hot)
        # The plan works from load reports: every node's must count all the writes
        # (on a busy machine a report can lag behind its interval).
        with_client(inst.config, lambda client: fresh_reports(client, written))
        capsys.readouterr()
        assert main(["--config", config, "level", "--dry-run", "--json"]) == EX_OK
        plan = json.loads(capsys.readouterr().out)
        assert not plan["balanced"] and plan["spread"] > 0.1
        to_new = sum(m["size"] for m in plan["moves"] if m["target"] == "objstored-new")
        # Moves go to nodes below their target: the new one gets (nearly) all of its
        # share.  (Not "most of the moves": placement weighs nodes by their reported
        # load, so on a busy machine an old node may hold few blobs and take some too.)
        below = {n["id"] for n in plan["nodes"] if n["deviation"] < 0}
        assert {m["target"] for m in plan["moves"]} <= below, json.dumps(plan)[:3000]
        new_node = next(n for n in plan["nodes"] if n["id"] == "objstored-new")
        assert to_new >= (1 - TOLERANCE) * plan["mean"] * new_node["capacity"], \
            json.dumps(plan)[:3000]
        stats = with_client(inst.config, lambda client: Leveler(client).run_once())
        finished = time.time()
        assert stats.moved == stats.planned > 0 and stats.skipped == 0
        # Heat is the blob's (the frontends' reads), so a hot blob is hot on both of its
        # nodes and moves from whichever source gets to it first (the fullest node's
        # other holder may): each hot blob moves once, and every source gives its hot
        # blobs before its others.
        hot_moves = [m for m in stats.moves if m["blob"] in hot]
        assert sorted(m["blob"] for m in hot_moves) == sorted(hot)
        assert all(m["heat"] > 0 for m in hot_moves)
        assert all(m["heat"] == 0 for m in stats.moves if m["blob"] not in hot)
        from_hot = [m for m in stats.moves if m["source"] == hot_node.name]
        assert any(m["blob"] in hot for m in from_hot)
        for source in {m["source"] for m in stats.moves}:
            heats = [m["heat"] > 0 for m in stats.moves if m["source"] == source]
            assert heats == sorted(heats, reverse=True), \
                f"{source} moved a cold blob before a hot one"
        assert stats.hot_moved >= len(hot)
        assert stats.spread_planned <= TOLERANCE
        assert spread_now(inst.config, finished) <= TOLERANCE

        async def check(client: BlobClient) -> int:
            snap = await client.snapshot(force=True)
            found = await client.index.lookup(ids)
            new = snap.get("objstored-new")
            assert new is not None
            for bid in ids:
                assert len(found[bid]) == 2
                for number in found[bid]:
                    node = snap.by_number(number)
                    assert node is not None
                    await client.reader.read(bid, client.node_client(node))
            assert await client.get_many(ids) == dict(zip(ids, datas, strict=True))
            moved_away = [m["blob"] for m in stats.moves]
            for bid in moved_away:
                source = snap.get(next(m["source"] for m in stats.moves if m["blob"] == bid))
                assert source is not None and source.number not in found[bid]
                assert await client.node_client(source).get(bid.encode()) is None
            return sum(1 for bid in ids if new.number in found[bid])

        assert with_client(inst.config, check) == sum(1 for m in stats.moves
                                              if m["target"] == "objstored-new")
        capsys.readouterr()
        assert main(["--config", config, "level", "--once", "--json"]) == EX_OK
        again = json.loads(capsys.readouterr().out)
        # Nothing left to level by bytes.  (A node whose real CPU or I/O stayed above
        # the mean in this plan and the pass's, e.g. a source busy deleting, or any on a
        # loaded machine, may give hot blobs away: load moves, not byte ones.)
        assert again["spread_before"] <= TOLERANCE, json.dumps(again)[:3000]
        assert all(m["busy"] for m in again["moves"]), json.dumps(again)[:3000]
        assert again["balanced"] == (not again["busy"])
    finally:
        inst.cluster.launcher.stop(spec)


def test_load_ratios_and_eta() -> None:
    """A node's load ratio is the larger of its CPU and its I/O over their means (a figure
    nobody reports counts for nothing); the ETA is what is left over the rate, unknown
    without a rate."""
    ratios = load_ratios([NodeLoad("a", 2.0, 0.0), NodeLoad("b", 0.0, 300.0),
                          NodeLoad("c", 1.0, 0.0)])
    assert ratios == {"a": 2.0, "b": 3.0, "c": 1.0}
    assert load_ratios([NodeLoad("a", 0, 0), NodeLoad("b", 0, 0)]) == {"a": 0.0, "b": 0.0}
    assert eta(100, 20) == 5.0 and eta(0, 0) == 0.0 and eta(10, 0) is None


def test_a_pass_logs_a_summary_and_its_moves_in_bounded_lines(
        caplog: pytest.LogCaptureFixture) -> None:
    """A pass of thousands of moves logs one short summary line at info level (the stats'
    repr, which the background loop logs, leaves the moves out) and its moves at debug
    level in lines of at most MOVES_PER_LOG_LINE moves."""
    from director.leveler import MOVES_PER_LOG_LINE, LevelStats, log_pass

    stats = LevelStats(planned=2000, moved=1990, skipped=10, bytes=2000 * BLOB)
    stats.moves = [{"blob": f"{i:064x}", "source": "objstored-1", "target": "objstored-4",
                    "size": BLOB, "heat": 0.0, "done": i >= 10} for i in range(2000)]
    assert "objstored-4" not in repr(stats) and len(repr(stats)) < 400
    with caplog.at_level("INFO", logger="director.leveler"):
        log_pass(stats)
    (summary,) = caplog.records
    assert "1990 of 2000 planned" in summary.getMessage()
    assert len(summary.getMessage()) < 300
    caplog.clear()
    with caplog.at_level("DEBUG", logger="director.leveler"):
        log_pass(stats)
    batches = [r.getMessage() for r in caplog.records if r.levelname == "DEBUG"]
    assert len(batches) == 2000 // MOVES_PER_LOG_LINE
    assert all(b.count("->") <= MOVES_PER_LOG_LINE for b in batches)
    assert sum(b.count("->") for b in batches) == 2000
    assert batches[0].count("skipped") == 10
