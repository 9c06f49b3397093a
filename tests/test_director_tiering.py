"""The storage hierarchy with real processes: two SSD and two HDD object servers, a
directord, ``[[director.tiers]]`` of one SSD + one HDD copy while hot and two HDD copies
once cold.  New blobs land on an SSD node (and an HDD one); after the cold threshold
``objmail tier`` moves them to HDD byte-exact (interrupted and resumed on the way); a
blob read often through directord (its cache hits counted) gets its SSD copy back, and
reads prefer it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import time

import pytest
from twisted.internet import task

from director.client import BlobClient
from director.config import TierConfig
from director.copier import delete_copy, write_verified
from director.main import start_background
from director.redisstate import RedisState
from director.repairer import Repairer
from director.tiering import Tierer
from ops.cli import EX_OK, main
from ops.config import Config, parse_hostport
from ops.devcluster import DEV_ZONES
from tests.conftest import redis_auth
from tests.director_installation import Installation, installation_fixture, with_client
from tests.memcache_auth import LoginClient, login_request
from tests.waiting import wait_until

COLD_AFTER = 3.0
HOT_READS = 8.0
TIERS = {"objstored-1": "ssd", "objstored-2": "ssd", "objstored-3": "hdd",
         "objstored-4": "hdd"}


def register_tiers(config: Config) -> None:
    """Register the object servers with their tiers before they start (the launcher
    registers only nodes it does not know, with the config's one tier)."""
    host, port = parse_hostport(config.objstore.listen)

    async def go() -> None:
        state = await RedisState.open(config.cluster, config.director,
                                      auth=redis_auth(config.cluster))
        try:
            for i, (name, tier) in enumerate(sorted(TIERS.items())):
                await state.registry.add(name, f"{host}:{port + i}",
                                         zone=DEV_ZONES[i % len(DEV_ZONES)], tier=tier)
        finally:
            await state.aclose()

    asyncio.run(go())


inst = installation_fixture(
    "tiering", objstores=4, stages=("objstore", "directord"), before_start=register_tiers,
    tiers=(TierConfig("ssd", 0, 1, 0), TierConfig("hdd", 1, 1, 2)),
    tier_cold_after=COLD_AFTER, tier_hot_reads=HOT_READS, tier_interval=0.0,
    repair_interval=0.0, level_interval=0.0, drain_interval=0.0, cache_bytes=0)


async def layout(client: BlobClient, ids: list[str]) -> dict[str, list[str]]:
    """Each blob's tiers, sorted (``["hdd", "ssd"]``), from the index and registry."""
    snap = await client.snapshot(force=True)
    found = await client.index.lookup(ids)
    return {bid: sorted(snap.by_number(n).tier for n in found[bid])  # type: ignore[union-attr]
            for bid in ids}


def run_cli(inst: Installation, capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    capsys.readouterr()
    assert main(["--config", str(inst.cluster.config_path), "tier", *args, "--json"]) \
        == EX_OK
    return json.loads(capsys.readouterr().out)


def test_blobs_move_down_when_cold_and_up_when_hot(inst: Installation,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """New blobs get one SSD and one HDD copy; once cold, a dry run plans their move and
    changes nothing; a pass cut short after five moves leaves those five on two HDD
    copies, and ``objmail tier --once`` resumes with the rest: every blob on two HDD
    nodes, its SSD copy deleted, every byte the same.  A blob then read often through
    directord is promoted back to SSD + HDD and read from the SSD node first."""
    datas = [os.urandom(20_000 + i) for i in range(24)]
    ids = with_client(inst.config, lambda c: c.put_many(datas))
    written = time.time()
    assert set(map(tuple, with_client(inst.config,
                                      lambda c: layout(c, ids)).values())) == {("hdd", "ssd")}

    # Past the cold threshold (the writes were the blobs' last access).
    time.sleep(max(0.0, written + COLD_AFTER + 0.5 - time.time()))
    plan = run_cli(inst, capsys, "--dry-run")
    assert plan["demoted"] == 24 and plan["dry_run"]
    assert {m["to"] for m in plan["moves"]} == {"cold"}
    assert all(len(m["added"]) == 1 and len(m["removed"]) == 1 for m in plan["moves"])
    assert set(map(tuple, with_client(inst.config,
                                      lambda c: layout(c, ids)).values())) == {("hdd", "ssd")}

    cut = with_client(inst.config, lambda c: Tierer(c).run_once(max_items=5))
    assert cut.interrupted and cut.demoted == 5
    after_cut = with_client(inst.config, lambda c: layout(c, ids))
    assert sum(v == ["hdd", "hdd"] for v in after_cut.values()) == 5
    status = run_cli(inst, capsys, "--status")
    assert status["running"] and [t["name"] for t in status["tiers"]] == ["ssd", "hdd"]

    done = run_cli(inst, capsys, "--once")
    assert done["demoted"] == 19 and done["finished"] and not done["skipped"]
    assert done["bytes"] > 19 * 20_000

    async def check_cold(client: BlobClient) -> None:
        assert set(map(tuple, (await layout(client, ids)).values())) == {("hdd", "hdd")}
        ssd = [n for n in (await client.snapshot()).nodes if n.tier == "ssd"]
        for bid in ids:
            for node in ssd:  # the old copies are gone, not merely unindexed
                assert await client.node_client(node).get(bid.encode()) is None
        assert await client.get_many(ids) == dict(zip(ids, datas, strict=True))

    with_client(inst.config, check_cold)

    # Read one blob often through directord: its cache answers most of the reads.
    hot = ids[7]
    host, port = parse_hostport(inst.config.director.listen)
    mc = LoginClient((host, port), inst.cluster.directord_access(), timeout=5)
    try:
        for _ in range(int(HOT_READS) * 2):
            assert mc.get(hot) is not None
    finally:
        mc.close()

    async def heated(client: BlobClient) -> float:
        deadline = time.monotonic() + 20
        while True:
            reads = (await client.heat.lookup([hot]))[hot].reads
            if reads >= HOT_READS or time.monotonic() > deadline:
                return reads
            await asyncio.sleep(0.2)

    assert with_client(inst.config, heated) >= HOT_READS
    up = run_cli(inst, capsys, "--once")
    assert up["promoted"] == 1 and [m["blob"] for m in up["moves"]
                                    if m["to"] == "hot"] == [hot]

    async def check_hot(client: BlobClient) -> None:
        assert (await layout(client, [hot]))[hot] == ["hdd", "ssd"]
        numbers = await client.index.locations(hot)
        for _ in range(20):
            assert (await client._ordered(hot, numbers))[0].tier == "ssd"
        client.cache.memory.discard(hot)
        assert await client.get(hot) == datas[7]

    with_client(inst.config, check_hot)


def test_repair_replaces_a_lost_ssd_copy_on_ssd(inst: Installation) -> None:
    """A hot blob whose SSD copy is lost (deleted on its node, forgotten by the index)
    is repaired with a new SSD copy, not a second HDD one, byte-exact."""
    data = os.urandom(30_000)

    async def body(client: BlobClient) -> tuple[list[str], bytes, str]:
        bid = await client.put(data)
        await client.temperature.flush()  # the put is its last access: it is hot
        snap = await client.snapshot(force=True)
        held = [snap.by_number(n) for n in await client.index.locations(bid)]
        ssd = next(n for n in held if n is not None and n.tier == "ssd")
        node = client.node_client(ssd)
        await delete_copy(node, await client.reader.stored_keys(bid, node))
        await client.index.update(bid, remove=[ssd.number])
        stats = await Repairer(client).run_once()
        assert stats.repaired >= 1
        client.cache.memory.discard(bid)
        return (await layout(client, [bid]))[bid], await client.get(bid), ssd.id

    tiers, back, _lost_on = with_client(inst.config, body)
    assert tiers == ["hdd", "ssd"]
    assert back == data


def test_a_blob_from_before_the_tiers_gets_the_hot_layout(inst: Installation,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    """A recently read blob on two SSD nodes (as stored before tiers were configured)
    is in neither layout: the tier job gives it the hot one (one SSD copy, one HDD copy),
    deleting the surplus SSD copy only after the index lists the HDD one."""
    data = os.urandom(25_000)

    async def two_ssd(client: BlobClient) -> str:
        bid = await client.put(data)
        snap = await client.snapshot(force=True)
        held = [snap.by_number(n) for n in await client.index.locations(bid)]
        hdd = next(n for n in held if n is not None and n.tier == "hdd")
        ssd = next(n for n in snap.nodes if n.tier == "ssd" and n not in held)
        blob = (await client.reader.probe(bid, client.node_client(hdd))).blob
        assert blob is not None
        await write_verified(client.node_client(ssd), blob)
        await client.index.update(bid, add=[ssd.number], remove=[hdd.number])
        await delete_copy(client.node_client(hdd), blob.keys)
        await client.temperature.flush()
        return bid

    bid = with_client(inst.config, two_ssd)
    assert with_client(inst.config, lambda c: layout(c, [bid]))[bid] == ["ssd", "ssd"]
    done = run_cli(inst, capsys)
    assert done["fixed"] >= 1 and done["finished"]
    assert next(m for m in done["moves"] if m["blob"] == bid)["to"] == "hot"

    async def check(client: BlobClient) -> bytes:
        assert (await layout(client, [bid]))[bid] == ["hdd", "ssd"]
        client.cache.memory.discard(bid)
        return await client.get(bid)

    assert with_client(inst.config, check) == data


def test_directord_runs_the_tier_job_in_its_background_work(inst: Installation) -> None:
    """With tiers and a ``tier_interval``, directord's background work includes the tier
    job: after one interval (an injected clock) a pass runs under the job's lease and
    records its finished sweep."""
    dconf = dataclasses.replace(inst.config.director, tier_interval=30.0,
                                repair_interval=0.0, level_interval=0.0,
                                drain_interval=0.0)

    async def go() -> tuple[list[str], dict[str, str], bool]:
        client = await BlobClient.open(inst.config.cluster, dconf,
                                       auth=redis_auth(inst.config.cluster))
        clock = task.Clock()
        loops = start_background(client, clock)
        try:
            before = await Tierer(client).status()
            clock.advance(30.0)
            deadline = time.monotonic() + 60
            while True:
                after = await Tierer(client).status()
                if after.get("last_finished") != before.get("last_finished"):
                    break
                assert time.monotonic() < deadline, "no tier pass ended"
                await asyncio.sleep(0.1)
            # The pass gives its lease back as it returns (well before its TTL).
            lease = Tierer(client).lease()
            soon = time.monotonic() + 10  # far inside the lease's 60 s TTL
            while not (free := await lease.acquire()) and time.monotonic() < soon:
                await asyncio.sleep(0.1)
            if free:
                await lease.release()
            return [lp.name for lp in loops], {"before": str(before.get("last_finished")),
                                               "after": str(after.get("last_finished"))}, free
        finally:
            for lp in loops:
                await lp.stop()
            await client.aclose()

    names, finished, free = asyncio.run(go())
    assert names == ["tier"]
    assert finished["after"] != finished["before"] and finished["after"] != "None"
    assert free, "the pass gave its lease back"


def test_a_pass_is_paced_by_its_rate(inst: Installation) -> None:
    """Copies are paced by ``tier_rate``: a pass over blobs that became cold waits, on
    its injected clock, as long as their bytes take at the rate (beyond the first
    second's burst)."""
    datas = [os.urandom(30_000) for _ in range(8)]
    ids = with_client(inst.config, lambda c: c.put_many(datas))
    written = time.time()
    time.sleep(max(0.0, written + COLD_AFTER + 0.5 - time.time()))
    rate = 50_000.0
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    async def go(client: BlobClient) -> tuple[int, int, float]:
        stats = await Tierer(client, rate=rate, sleep=sleep, clock=lambda: now[0]).run_once()
        return stats.demoted, stats.bytes, now[0]

    demoted, copied, waited = with_client(inst.config, go)
    assert demoted >= len(ids) and copied >= len(ids) * 30_000
    assert waited == pytest.approx((copied - rate) / rate, rel=0.05)
    assert set(map(tuple, with_client(inst.config,
                                      lambda c: layout(c, ids)).values())) == {("hdd", "hdd")}


async def move_copy(client: BlobClient, bid: str, tier: str, to: str) -> None:
    """Move ``bid``'s copy on a ``tier`` node to a ``to`` node that lacks one: written
    there and indexed, then forgotten and deleted where it was."""
    snap = await client.snapshot(force=True)
    held = [snap.by_number(n) for n in await client.index.locations(bid)]
    src = next(n for n in held if n is not None and n.tier == tier)
    dst = next(n for n in snap.nodes if n.tier == to and n not in held)
    blob = (await client.reader.probe(bid, client.node_client(src))).blob
    assert blob is not None
    await write_verified(client.node_client(dst), blob)
    await client.index.update(bid, add=[dst.number], remove=[src.number])
    await delete_copy(client.node_client(src), blob.keys)


def test_repair_sweep_fixes_the_wrong_mix_of_tiers(inst: Installation) -> None:
    """Entries with the right number of copies on the wrong tiers are flagged by the
    repair sweep and given their layout: a hot blob (read ``tier_hot_reads`` times) on
    two HDD nodes gets an SSD copy for one of them, a recently written blob on two SSD
    nodes an HDD copy for one of them; the surplus copy is deleted from its node after
    the new one is indexed, every byte the same.  A blob in its layout stays queued for
    nothing, and a blob on two HDD nodes read once is not promoted by repair (promotion
    needs ``tier_hot_reads``)."""
    datas = [os.urandom(21_000 + i) for i in range(4)]

    async def go(client: BlobClient) -> None:
        hot, fresh, lukewarm, fine = await client.put_many(datas)
        await move_copy(client, hot, "ssd", "hdd")
        await move_copy(client, fresh, "hdd", "ssd")
        await move_copy(client, lukewarm, "ssd", "hdd")
        for _ in range(int(HOT_READS) + 1):
            assert await client.get(hot) == datas[0]
        assert await client.get(lukewarm) == datas[2]
        await client.temperature.flush()
        assert (await client.heat.lookup([hot]))[hot].reads >= HOT_READS
        before = await layout(client, [hot, fresh, lukewarm, fine])
        assert before == {hot: ["hdd", "hdd"], fresh: ["ssd", "ssd"],
                          lukewarm: ["hdd", "hdd"], fine: ["hdd", "ssd"]}
        snap = await client.snapshot(force=True)
        old = {bid: {snap.by_number(n) for n in await client.index.locations(bid)}
               for bid in (hot, fresh)}

        stats = await Repairer(client).run_once()
        assert stats.sweep_queued == 2 and stats.repaired == 2 and stats.dropped == 2
        after = await layout(client, [hot, fresh, lukewarm, fine])
        assert after == {hot: ["hdd", "ssd"], fresh: ["hdd", "ssd"],
                         lukewarm: ["hdd", "hdd"], fine: ["hdd", "ssd"]}
        for bid in (hot, fresh):
            now = {snap.by_number(n) for n in await client.index.locations(bid)}
            for gone in old[bid] - now:  # deleted, not merely unindexed
                assert gone is not None
                assert await client.node_client(gone).get(bid.encode()) is None
            client.cache.memory.discard(bid)
        assert await client.get_many([hot, fresh]) == {hot: datas[0], fresh: datas[1]}
        assert (await Repairer(client).run_once()).sweep_queued == 0

    with_client(inst.config, go)


def meta_get(inst: Installation, key: str, flags: bytes, times: int) -> list[bytes]:
    """``mg <key> <flags>`` through directord ``times`` times; each reply's header line
    (a value, when one comes, read and checked for its length)."""
    host, port = parse_hostport(inst.config.director.listen)
    access = inst.cluster.directord_access()
    heads: list[bytes] = []
    with socket.create_connection((host, port), timeout=10) as sock:
        buf = b""

        def line() -> bytes:
            nonlocal buf
            while b"\r\n" not in buf:
                chunk = sock.recv(65536)
                assert chunk, "directord closed the connection"
                buf += chunk
            head, buf = buf.split(b"\r\n", 1)
            return head

        if access.user:
            sock.sendall(login_request(access))
            assert line() == b"STORED"
        for _ in range(times):
            sock.sendall(b"mg " + key.encode() + b" " + flags + b"\r\n")
            head = line()
            if head.startswith(b"VA "):
                size = int(head.split()[1])
                while len(buf) < size + 2:
                    buf += sock.recv(65536)
                buf = buf[size + 2:]
            heads.append(head)
    return heads


def test_directord_meta_gets_of_values_count_as_reads(inst: Installation) -> None:
    """``mg <blob id> v`` through directord is a read its temperature counts, as ``get``
    is; ``mg <blob id> s`` (a size check, no value) heats nothing."""
    data = os.urandom(22_000)
    bid = with_client(inst.config, lambda c: c.put(data))

    async def reads(client: BlobClient) -> float:
        return (await client.heat.lookup([bid]))[bid].reads

    sizes = meta_get(inst, bid, b"s", 5)  # the stored size (as the blob id's codec has it)
    assert len(set(sizes)) == 1 and sizes[0].startswith(b"HD s")
    size = int(sizes[0][4:])
    assert meta_get(inst, bid, b"v s", 6) == [b"VA %d s%d" % (size, size)] * 6
    # directord flushes its batch every temperature_flush_interval: wait for the reads.
    counted = wait_until(lambda: (r := with_client(inst.config, reads)) >= 5.5 and r,
                         timeout=30, interval=0.2, what=f"6 decayed reads of {bid}")
    # The size checks (sent first, flushed with the reads or before) counted nothing.
    assert counted < 6.5
