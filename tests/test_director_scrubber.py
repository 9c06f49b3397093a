"""Scrub with real object servers: copies overwritten with wrong bytes or deleted behind
the director's back are found, queued and, after repair, verify again; an interrupted
run resumes with its totals; the rate limit; one node's scrub; ``objmail scrub``.

The module runs a private installation: three objstored (zones a, b, c), 2 replicas.
Its index holds only this module's blobs, so every count can be checked exactly.
"""

from __future__ import annotations

import json
import os

import pytest

from director.client import BlobClient
from director.jobstate import JobState
from director.repairer import Repairer
from director.scrubber import SCRUB_PAGE_BUCKETS, Scrubber, ScrubStats
from ops.cli import EX_OK, EX_TEMPFAIL, EX_USAGE, main
from tests.conftest import CORPUS
from tests.director_installation import Installation, installation_fixture, with_client

inst = installation_fixture("scrub", objstores=3, cache_bytes=0, timeout=0.5)


def corpus_blobs(n: int, tag: str) -> list[bytes]:
    """Real messages from the corpus, each made unique by a header line."""
    files = sorted((CORPUS / "mikel-mail").rglob("*.eml"))[:n]
    assert len(files) == n
    return [f"X-Scrub-Test: {tag} {os.urandom(6).hex()}\r\n".encode() + f.read_bytes()
            for f in files]


async def index_totals(client: BlobClient) -> tuple[int, int]:
    """(entries, locations) in the installation's index."""
    entries = locations = 0
    async for page in client.index.iterate():
        entries += len(page.entries)
        locations += sum(len(nums) for _b, nums in page.entries)
    return entries, locations


def test_bad_copies_are_found_queued_and_repaired(inst: Installation) -> None:
    """One copy overwritten with other bytes (as an untrusted or failing server might
    return), one deleted, one chunk of a chunked blob overwritten: a scrub reads every
    copy, counts 2 corrupt and 1 missing, queues exactly those 3 blobs; after a repair
    pass a second scrub finds every copy good."""
    size = inst.config.objstore.max_item_size
    datas = [*corpus_blobs(8, "damage"), os.urandom(int(1.5 * size))]

    async def body(client: BlobClient) -> None:
        ids = await client.put_many(datas)
        snap = await client.snapshot(force=True)
        damaged = {ids[0]: "garbage", ids[1]: "delete", ids[-1]: "chunk"}
        for bid, how in damaged.items():
            victim = snap.by_number((await client.index.locations(bid))[-1])
            assert victim is not None
            target = client.node_client(victim)
            key = (f"{bid}/0" if how == "chunk" else bid).encode()
            held = await target.get(key)
            assert held is not None
            if how == "delete":
                assert await target.delete(key)
            else:
                assert await target.set(key, held.value[:-7] + b"garbage", held.flags)
        entries, locations = await index_totals(client)
        assert await client.repair.backlog() == 0

        stats = await Scrubber(client).run_once()
        assert stats.finished and not stats.interrupted
        assert stats.items == entries and stats.buckets_done == stats.buckets
        assert (stats.corrupt, stats.missing, stats.unreachable) == (2, 1, 0)
        assert stats.copies == locations - 3 and stats.queued == 3
        assert sorted(stats.examples) == sorted(damaged)
        assert await client.repair.backlog() == 3
        assert stats.bytes >= sum(len(d) for d in datas)  # both copies of most, compressed

        fixed = await Repairer(client).run_once()
        assert fixed.rewritten == 3 and fixed.backlog == 0
        again = await Scrubber(client).run_once()
        assert (again.corrupt, again.missing, again.queued) == (0, 0, 0)
        assert again.copies == locations
        assert await client.get_many(ids) == dict(zip(ids, datas, strict=True))

    with_client(inst.config, body)


def test_an_interrupted_run_resumes_with_its_totals(inst: Installation) -> None:
    """Stopped after its first page, a run has saved its cursor and counters; the next
    invocation carries on from there and ends with every entry counted exactly once."""
    async def body(client: BlobClient) -> None:
        await client.put_many(corpus_blobs(12, "resume"))
        entries, locations = await index_totals(client)
        scrubber = Scrubber(client)
        stopped = await scrubber.run_once(stop=lambda: True)
        assert stopped.interrupted and not stopped.finished
        assert stopped.buckets_done == SCRUB_PAGE_BUCKETS
        shown = await scrubber.status()
        assert shown["running"] and shown["cursor"] == SCRUB_PAGE_BUCKETS
        assert shown["items"] == stopped.items

        rest = await Scrubber(client).run_once()
        assert rest.finished and rest.items == entries and rest.copies == locations
        done = await scrubber.status()
        assert not done["running"] and done["last_items"] == entries
        assert done["last_bad"] == 0

    with_client(inst.config, body)


def test_the_rate_limit_paces_reads(inst: Installation) -> None:
    """With ``rate`` set the run waits between pages so that bytes read over time stay
    within it (a fake clock that advances only while it sleeps)."""
    async def body(client: BlobClient) -> None:
        await client.put_many(corpus_blobs(10, "rate"))
        t = [0.0]
        slept: list[float] = []

        async def sleep(seconds: float) -> None:
            slept.append(seconds)
            t[0] += seconds

        rate = 20_000.0
        stats = await Scrubber(client, rate=rate, sleep=sleep, clock=lambda: t[0]).run_once()
        assert stats.finished and stats.bytes > 2 * rate
        # Pacing stops after the last page: what it read there needs no wait.
        assert 0 < sum(slept) <= stats.bytes / rate
        assert all(0 < s <= 1.0 for s in slept)
        with pytest.raises(ValueError):
            Scrubber(client, rate=0)

    with_client(inst.config, body)


def test_one_nodes_scrub_reads_only_its_copies(inst: Installation) -> None:
    """``node_id`` scrubs the copies on that node only, as a job of its own."""
    node_id = inst.objstores()[1].name

    async def body(client: BlobClient) -> tuple[ScrubStats, int]:
        number = (await client.snapshot(force=True)).get(node_id).number  # type: ignore
        held = 0
        async for page in client.index.iterate(node=number):
            held += len(page.entries)
        return await Scrubber(client, node_id=node_id).run_once(), held

    stats, held = with_client(inst.config, body)
    assert stats.job == f"scrub:{node_id}" and stats.node == node_id
    assert stats.finished and stats.items == stats.copies == held > 0


def test_objmail_scrub_command(inst: Installation, capsys: pytest.CaptureFixture[str]) -> None:
    """``objmail scrub``: 0 when every copy verifies; with an object server killed, 75 and
    its copies counted as not reachable; ``--status``, ``--cancel``, and clear usage
    errors for a bad ``--rate`` or an unknown ``--node``."""
    cfg = ["--config", str(inst.cluster.config_path)]
    capsys.readouterr()
    assert main([*cfg, "scrub"]) == EX_OK
    out = capsys.readouterr().out
    assert "scrub: done:" in out and "0 corrupt, 0 missing, 0 not reachable" in out
    assert main([*cfg, "scrub", "--status"]) == EX_OK
    assert "no run in progress; the last finished" in capsys.readouterr().out

    victim = inst.objstores()[2].name
    inst.kill(victim)
    try:
        assert main([*cfg, "scrub", "--json"]) == EX_TEMPFAIL
        stats = json.loads(capsys.readouterr().out)
        assert stats["finished"] and stats["unreachable"] > 0
        assert stats["corrupt"] == stats["missing"] == stats["queued"] == 0
    finally:
        inst.start(victim)

    async def leave_a_run(client: BlobClient) -> None:
        await Scrubber(client).run_once(stop=lambda: True)

    with_client(inst.config, leave_a_run)
    assert main([*cfg, "scrub", "--status", "--json"]) == EX_OK
    assert json.loads(capsys.readouterr().out)["cursor"] == SCRUB_PAGE_BUCKETS
    assert main([*cfg, "scrub", "--cancel"]) == EX_OK
    assert "no run in progress now" in capsys.readouterr().out

    async def fields(client: BlobClient) -> dict[str, str]:
        return await JobState(client.index.runner, client.index.keys, "scrub").load()

    assert "cursor" not in with_client(inst.config, fields)
    assert main([*cfg, "scrub", "--rate", "fast"]) == EX_USAGE
    assert "--rate" in capsys.readouterr().err
    assert main([*cfg, "scrub", "--node", "no-such-node"]) == EX_USAGE
    assert "no-such-node" in capsys.readouterr().err
