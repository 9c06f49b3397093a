"""``objmail status`` against a private installation (two objstored on the session's Redis
Cluster): nodes, jobs, repair backlog and index size, as a table and as JSON."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from director.client import BlobClient
from director.indexrebuild import IndexRebuild
from director.lease import Lease
from director.scrubber import Scrubber
from ops.cli import EX_OK, main
from tests.director_installation import Installation, installation_fixture, with_client

inst = installation_fixture("status", objstores=2, cache_bytes=0,
                            objstore_settings={"capacity_bytes": 1 << 20})


def test_status_shows_nodes_jobs_backlog_and_index(
        inst: Installation, capsys: pytest.CaptureFixture[str]) -> None:
    """status lists every node with its number, fill and state; each job that ran with
    when it last ended, the director holding a lease, the progress of a run stopped
    midway; the repair backlog; the index's entries of both key spaces and the Redis
    masters' memory; the table says the same as the JSON."""
    async def prepare(client: BlobClient) -> int:
        ids = await client.put_many([b"status " + os.urandom(100) for _ in range(12)])
        assert await client.put_item(b"status-item", b"value")
        await Scrubber(client).run_once()
        await client.index.delete_many(ids[:6])  # so that the rebuild has work
        await IndexRebuild(client, page=2).run_once(max_items=1)  # stopped midway
        await client.repair.add(ids[:3])
        lease = Lease(client.index.runner, client.index.keys, "level", ttl=60,
                      token="otherhost:4242:abc")
        assert await lease.acquire()
        deadline = time.monotonic() + 15  # reports that count the blobs
        while any(n.report is None or not n.report.used_bytes
                  for n in (await client.snapshot(force=True)).nodes):
            assert time.monotonic() < deadline, "no load report counts the blobs"
            await asyncio.sleep(0.2)
        return await client.index.count()

    entries = with_client(inst.config, prepare)
    assert 6 <= entries < 12
    config = str(inst.cluster.config_path)
    capsys.readouterr()
    assert main(["--config", config, "status", "--json"]) == EX_OK
    got = json.loads(capsys.readouterr().out)
    nodes = {n["id"]: n for n in got["nodes"]}
    assert set(nodes) == {o.name for o in inst.objstores()}
    for n in nodes.values():
        assert n["state"] == "active" and n["number"] >= 1 and n["report_age"] < 15
        assert n["capacity_bytes"] == 1 << 20
        assert n["fill"] == n["used_bytes"] / n["capacity_bytes"] > 0
    jobs = {j["job"]: j for j in got["jobs"]}
    assert jobs["scrub"]["last"] and jobs["scrub"]["last_age"] < 60
    assert jobs["scrub"]["progress"] == "" and jobs["scrub"]["holder"] is None
    assert jobs["level"]["holder"] == "otherhost:4242:abc"
    rebuild = jobs["index-rebuild"]
    assert rebuild["last"] is None and "2 entries" in rebuild["progress"]
    assert jobs["repair"]["last"] is None and "gc" in jobs
    assert got["repair_backlog"] == 3
    assert got["index"]["entries"] == entries  # the rebuild has done a page only
    assert got["index"]["item_entries"] == 1
    assert len(got["index"]["redis_masters"]) == 3 and got["index"]["redis_used_memory"] > 0

    assert main(["--config", config, "status"]) == EX_OK
    out = capsys.readouterr().out
    assert out.startswith("Nodes\n") and "\nJobs\n" in out
    header = out.splitlines()[1].split()
    assert header == ["ID", "NUM", "ADDRESS", "SITE", "ZONE", "TIER", "FILL", "OPS/S",
                      "STATE", "REPORT"]
    level = next(line for line in out.splitlines() if line.startswith("level "))
    assert "otherhost:4242:abc" in level and "never" in level
    scrub = next(line for line in out.splitlines() if line.startswith("scrub "))
    assert " UTC (" in scrub and "ago)" in scrub
    assert "Repair backlog: 3 blob(s)" in out
    assert f"Index: {entries} blob entries, 1 item entries" in out
