"""``objmail level`` run in-process against the session's Redis Cluster: with a fresh
installation prefix and no object servers, then on a private installation where a fourth,
empty object server joins three (``--wait``, ``--rate``); the leveling pass itself with
real object servers is tested in tests/test_director_leveler.py."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import pytest

from director.client import BlobClient
from director.nodes import Node, NodeState
from director.planner import NodeUsage, usage
from ops.cli import EX_OK, main
from tests.conftest import RunningRedis, free_port_block
from tests.director_installation import Installation, installation_fixture, with_client
from tests.test_ops_repair_command import config_file


def test_no_nodes_is_level(redis_cluster: RunningRedis, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    """With no object servers there is nothing to level: the dry run plans no moves,
    a pass moves nothing, both exit 0."""
    path = str(config_file(tmp_path, redis_cluster))
    capsys.readouterr()
    assert main(["--config", path, "level", "--dry-run", "--json"]) == EX_OK
    plan = json.loads(capsys.readouterr().out)
    assert plan["balanced"] and plan["moves"] == [] and plan["nodes"] == []
    assert main(["--config", path, "level", "--once", "--json"]) == EX_OK
    stats = json.loads(capsys.readouterr().out)
    assert stats["balanced"] and stats["moved"] == 0 and stats["passes"] == 1
    assert main(["--config", path, "level"]) == EX_OK
    assert "nothing to move" in capsys.readouterr().out


# -- with real object servers: a fourth, empty node joins ----------------------------

#: Capacity from the real disk (objstore.capacity_bytes = 0), reports every second.
disk = installation_fixture("levelwait", objstores=3, cache_bytes=0, timeout=1.0)


def test_level_wait_brings_a_new_node_within_tolerance(disk: Installation,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    """Three nodes holding a few MB (a tiny fraction of their filesystem, which gives
    their capacity) and a fourth, empty one: objmail level --wait --rate 256K moves blobs
    at no more than the rate until, by fresh load reports, every node (the new one too)
    is within 10% of the mean bytes per node; every blob still reads back."""
    rng = random.Random(11)
    datas = [rng.randbytes(rng.randrange(8_000, 40_000)) for _ in range(150)]
    ids = with_client(disk.config, lambda client: client.put_many(datas))
    port = free_port_block(1)
    spec = disk.cluster.objstored_spec("objstored-new", "127.0.0.1", port,
                                       disk.cluster.run_dir / "objstore" / "new", zone="d")
    disk.cluster.launcher.start(spec)
    try:
        async def add(client: BlobClient) -> None:
            await client.registry.add("objstored-new", f"127.0.0.1:{port}", zone="d",
                                      tier="ssd")
            await settled_reports(client, time.time(), 4)

        with_client(disk.config, add)
        capsys.readouterr()
        config = str(disk.cluster.config_path)
        assert main(["--config", config, "level", "--dry-run"]) == EX_OK
        assert "-100.0%" in capsys.readouterr().out, "the new node is 100% below its target"
        assert main(["--config", config, "level", "--wait", "--rate", "256K", "--json"]) \
            == EX_OK
        result = json.loads(capsys.readouterr().out)
        assert result["moved"] > 0 and result["bytes"] > 1 << 20
        assert result["to_move"] > 0 and result["rate"] > 0
        # 256 KiB/s after a burst of one second's worth.
        assert result["seconds"] >= (result["bytes"] - (256 << 10)) / (256 << 10) * 0.95
        finished = time.time()

        async def check(client: BlobClient) -> dict[str, float]:
            nodes = await settled_reports(client, finished, 4)
            stat = usage([NodeUsage(n.id, n.number, n.zone, n.report.used_bytes,
                                    n.report.capacity_bytes)
                          for n in nodes if n.report is not None])
            assert await client.get_many(ids) == dict(zip(ids, datas, strict=True))
            return stat.deviations

        deviations = with_client(disk.config, check)
        assert abs(deviations["objstored-new"]) <= 0.10, deviations
        assert max(abs(d) for d in deviations.values()) <= 0.10, deviations
    finally:
        disk.cluster.launcher.stop(spec)


async def settled_reports(client: BlobClient, since: float, count: int) -> list[Node]:
    """The ``count`` active nodes, once each has a load report written after ``since``."""
    deadline = time.monotonic() + 30
    while True:
        snap = await client.snapshot(force=True)
        nodes = [n for n in snap.nodes if n.state is NodeState.ACTIVE]
        if len(nodes) == count and all(n.report is not None and n.report.reported_at > since
                                       for n in nodes):
            return nodes
        assert time.monotonic() < deadline, "no fresh load reports"
        await asyncio.sleep(0.2)
