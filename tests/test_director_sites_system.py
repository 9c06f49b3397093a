"""Sites with real processes: two sites of two object servers each, ``replicas = 2``,
``replicas_per_site = 1``.  Mail delivered while both sites are up has one copy in each;
with every node of one site killed, all mail reads back byte-exact and new mail is still
taken (both copies in the site that is up, queued for repair); when the site is back,
repair restores one copy per site (copying to the returned site, dropping the extra
copy); a drain keeps each copy in its site; a frontend of one site reads only from that
site's nodes while they serve (counted by the object servers' own ``get_hits``).

Nodes: objstored-1 (s1, zone a), objstored-2 (s2, b), objstored-3 (s1, c),
objstored-4 (s2, a).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Iterator

import pytest

from director.client import BlobClient
from director.drainer import Drainer
from director.nodes import NodeState
from director.planner import Health
from director.repairer import Repairer
from metadata.splitter import parse_skeleton, reassemble
from metadata.uidset import UidSet
from ops.config import Config
from tests.conftest import CORPUS
from tests.director_installation import (
    Installation,
    installation_fixture,
    wait_state,
    with_client,
)
from tests.mailstack import MailStack, open_stack

pytestmark = pytest.mark.timeout(300)

inst = installation_fixture("sites", objstores=4, sites=2, replicas=2, write_quorum=2,
                            replicas_per_site=1, cache_bytes=0, timeout=0.5,
                            repair_retry_delay=0.5, gc_min_grace=0.0)

SITE_OF = {"objstored-1": "s1", "objstored-2": "s2", "objstored-3": "s1",
           "objstored-4": "s2"}


@pytest.fixture(scope="module")
def config(inst: Installation, postgres: str) -> Config:
    """The installation's config with the session's PostgreSQL (migrated)."""
    return dataclasses.replace(inst.config, cluster=dataclasses.replace(
        inst.config.cluster, pg_dsn=postgres))


@pytest.fixture()
def stack(config: Config) -> Iterator[MailStack]:
    with open_stack(config) as s:
        yield s


def mailbox_bytes(stack: MailStack, user_id: int) -> dict[int, bytes]:
    """Every message of the user's INBOX, reassembled from its blobs: uid -> bytes."""
    box = stack.run(stack.store.mailboxes.get(user_id, "INBOX"))
    entries = stack.run(stack.store.messages.fetch(user_id, box.id, UidSet.all(),
                                                   items={"skeleton"}))
    out = {}
    for entry in entries:
        assert entry.skeleton_id is not None
        skeleton = stack.run(stack.blobs.get(entry.skeleton_id))
        parts = stack.run(stack.blobs.get_many(parse_skeleton(skeleton).blob_ids()))
        out[entry.uid] = reassemble(skeleton, parts)
    return out


async def sites_of_every_blob(client: BlobClient) -> dict[str, list[str]]:
    """Blob id -> the sites of its indexed copies (sorted)."""
    snap = await client.snapshot(force=True)
    out = {}
    async for page in client.index.iterate():
        for bid, nums in page.entries:
            out[bid] = sorted(n.site for n in snap.resolve(nums))
    return out


async def every_copy_verifies(client: BlobClient) -> None:
    snap = await client.snapshot(force=True)
    async for page in client.index.iterate():
        for bid, nums in page.entries:
            for node in snap.resolve(nums):
                probe = await client.reader.probe(bid, client.node_client(node))
                assert probe.health is Health.GOOD, (bid, node.id, probe.detail)


async def repair_until_settled(client: BlobClient, passes: int = 40) -> None:
    """Repair passes until the queue is empty (blobs waiting on a site come due again
    every ``repair_retry_delay``)."""
    for _ in range(passes):
        stats = await Repairer(client).run_once()
        assert not stats.errors, stats
        if not stats.backlog:
            return
        await asyncio.sleep(0.6)
    raise AssertionError(f"repair backlog left: {stats}")


def test_one_site_down_then_back(inst: Installation, config: Config, stack: MailStack) -> None:
    """The whole story of the module docstring, in order."""
    corpus = sorted((CORPUS / "mikel-mail").rglob("*.eml"))
    user = stack.new_user("site")
    for path in corpus[:12]:
        stack.run(stack.deliverer.deliver(user.name, path.read_bytes()))
    before = mailbox_bytes(stack, user.id)
    assert len(before) == 12

    # Both sites up: one copy in each site.
    placed = with_client(config, sites_of_every_blob)
    assert placed and all(s == ["s1", "s2"] for s in placed.values()), placed

    # A frontend of site s2 reads only from s2's nodes (every copy still verified).
    site_s2 = dataclasses.replace(config.director, site="s2")

    async def local_reads() -> Counter[str]:
        client = await BlobClient.open(config.cluster, site_s2, auth=stack.credentials.redis)
        try:
            snap = await client.snapshot(force=True)

            async def hits() -> Counter[str]:
                return Counter({n.id: int((await client.node_client(n).stats())["get_hits"])
                                for n in snap.nodes})

            first = await hits()
            for bid in placed:
                await client.get(bid)
            return await hits() - first
        finally:
            await client.aclose()

    reads = stack.run(local_reads())
    far = sum(v for k, v in reads.items() if SITE_OF[k] == "s1")
    near = sum(v for k, v in reads.items() if SITE_OF[k] == "s2")
    assert far == 0 and near >= len(placed), reads

    # Site s2 down: every node of it killed.
    for name in ("objstored-2", "objstored-4"):
        inst.kill(name)
    for name in ("objstored-2", "objstored-4"):
        wait_state(config, name, NodeState.DOWN)
    with open_stack(config) as fresh:
        assert mailbox_bytes(fresh, user.id) == before
        # Writes go on: both copies in s1, queued for repair.
        for path in corpus[12:16]:
            fresh.run(fresh.deliverer.deliver(user.name, path.read_bytes()))
        during = mailbox_bytes(fresh, user.id)
        assert len(during) == 16 and {u: during[u] for u in before} == before
        backlog = fresh.run(fresh.blobs.repair.backlog())
    assert backlog > 0
    crowded = {b: s for b, s in with_client(config, sites_of_every_blob).items()
               if s == ["s1", "s1"]}
    assert crowded

    # Repair while s2 is still down changes nothing and keeps the blobs queued.
    async def one_pass(client: BlobClient) -> int:
        stats = await Repairer(client).run_once()
        assert stats.copies_made == 0 and stats.dropped == 0, stats
        return await client.repair.backlog()

    assert with_client(config, one_pass) > 0

    # s2 back: repair restores one copy per site.
    for name in ("objstored-2", "objstored-4"):
        inst.start(name)
    for name in ("objstored-2", "objstored-4"):
        wait_state(config, name, NodeState.ACTIVE)
    with_client(config, repair_until_settled)
    after = with_client(config, sites_of_every_blob)
    assert set(crowded) <= set(after)
    assert all(s == ["s1", "s2"] for s in after.values()), after
    with_client(config, every_copy_verifies)
    with open_stack(config) as fresh:
        assert mailbox_bytes(fresh, user.id) == during

    # Drain objstored-1 (s1): its copies go to objstored-3, the other node of s1.
    async def drain(client: BlobClient) -> None:
        await client.registry.drain("objstored-1")
        for _ in range(20):
            stats = await Drainer(client, "objstored-1").run_once()
            assert not stats.errors and not stats.lost, stats
            if stats.empty:
                break
        snap = await client.snapshot(force=True)
        one = snap.get("objstored-1")
        assert one is not None
        async for page in client.index.iterate():
            for bid, nums in page.entries:
                assert one.number not in nums, bid
        await client.registry.activate("objstored-1")

    with_client(config, drain)
    drained = with_client(config, sites_of_every_blob)
    assert all(s == ["s1", "s2"] for s in drained.values()), drained
    with open_stack(config) as fresh:
        assert mailbox_bytes(fresh, user.id) == during
