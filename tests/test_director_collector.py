"""gc with real processes: PostgreSQL references, a private index in the session's Redis
Cluster and three objstored of the module's own; deliveries through the real Deliverer.

What is checked: after a user is deleted, exactly the blobs no message references any
more leave the index and every object server, and the remaining users' mail reads back
byte for byte; a put that dedups onto an unreferenced blob while gc runs keeps it; a blob
uploaded again after gc dropped its index entry survives gc's conditional deletes; an
interrupted sweep resumes from its cursor; ``objmail gc`` and its dry run; a delivery
stuck behind a mailbox lock while gc collects its blobs fails with 451 (or, when its
blobs were stored again meanwhile, lands readable), never 250 and unreadable;
directord's plain items survive gc; a grace below the minimum is refused.

The installation sets ``director.gc_min_grace = 0`` so that runs need not wait minutes.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from director.client import BlobClient
from director.collector import RUN_FIELDS, Collector, GcStats
from director.config import MIN_GC_GRACE
from director.gcwatch import GC_FLAG_TTL
from director.jobstate import JobState
from imapd.lmtp import LMTPSession, trace_fields
from imapd.lmtp_parser import Command, MessageData
from metadata.groupcommit import GroupCommitter
from ops.cli import EX_OK, EX_USAGE, main
from ops.config import Config, ConfigError, DirectorConfig, to_toml
from tests.conftest import CORPUS, redis_auth
from tests.director_installation import Installation, installation_fixture
from tests.mailstack import MailStack, open_stack

pytestmark = pytest.mark.timeout(180)

inst = installation_fixture("gc", objstores=3, cache_bytes=0, gc_min_grace=0.0)


@pytest.fixture(scope="module")
def config(inst: Installation, postgres: str, tmp_path_factory: pytest.TempPathFactory,
           ) -> Config:
    """The installation's config with the session's PostgreSQL (migrated)."""
    return dataclasses.replace(inst.config, cluster=dataclasses.replace(
        inst.config.cluster, pg_dsn=postgres))


@pytest.fixture()
def stack(config: Config) -> Iterator[MailStack]:
    with open_stack(config) as s:
        yield s


def message_with_attachment(attachment: bytes, tag: str) -> bytes:
    """A real corpus message's headers over a multipart body carrying ``attachment``."""
    head = sorted((CORPUS / "mikel-mail").rglob("*.eml"))[0].read_bytes().split(b"\n\n")[0]
    head = b"\n".join(line for line in head.split(b"\n")
                      if not line.lower().startswith((b"content-", b"mime-version")))
    body = (b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"gc-b\"\n"
            b"X-GC-Test: " + tag.encode() + b"\n\n--gc-b\nContent-Type: text/plain\n\n"
            b"see attached\n--gc-b\nContent-Type: application/octet-stream\n"
            b"Content-Transfer-Encoding: base64\n\n")
    encoded = base64.encodebytes(attachment)
    return head + b"\n" + body + encoded + b"--gc-b--\n"


async def index_ids(client: BlobClient) -> set[str]:
    ids: set[str] = set()
    async for page in client.index.iterate():
        ids.update(b for b, _n in page.entries)
    return ids


async def held_anywhere(client: BlobClient, bid: str) -> list[str]:
    """Object servers of the installation that still hold an item named ``bid``."""
    snap = await client.snapshot(force=True)
    out = []
    for node in snap.nodes:
        if await client.node_client(node).exists(bid.encode()):
            out.append(node.id)
    return out


def collector(stack: MailStack, grace: float = 0.0) -> Collector:
    return Collector(stack.blobs, stack.store.references, grace=grace)


async def full_run(stack: MailStack, grace: float = 0.0) -> GcStats:
    stats = await collector(stack, grace).run_once()
    assert stats.finished and not stats.errors, stats
    return stats


def test_gc_collects_exactly_what_no_message_references(stack: MailStack) -> None:
    """After a user is deleted, gc drops from the index and from every object server
    the blobs of their messages that nobody else's message uses, and an orphan upload
    (a delivery that died before its commit); the other user's mail is untouched."""
    keep, gone = stack.new_user("gck"), stack.new_user("gcg")
    shared = os.urandom(20_000)
    stack.run(stack.deliverer.deliver(keep.name, message_with_attachment(shared, "s1")))
    stack.run(stack.deliverer.deliver(gone.name, message_with_attachment(shared, "s2")))
    stack.run(stack.deliverer.deliver(gone.name,
                                      message_with_attachment(os.urandom(9000), "own")))
    orphan = stack.run(stack.blobs.put(os.urandom(5000)))
    kept_bytes = stack.only_message(keep)
    stack.run(stack.store.users.delete(gone.name))

    before = stack.run(index_ids(stack.blobs))
    still_used = stack.run(stack.store.references.referenced(before))
    assert orphan in before and orphan not in still_used
    doomed = before - still_used
    assert len(doomed) >= 4  # the orphan, the own attachment, two skeletons

    stats = stack.run(full_run(stack))
    after = stack.run(index_ids(stack.blobs))
    assert after == still_used
    assert stats.collected == len(doomed) and stats.referenced == len(still_used)
    assert stats.copies_deleted == 2 * len(doomed)  # two replicas each
    for bid in doomed:
        assert stack.run(held_anywhere(stack.blobs, bid)) == []
    assert stack.only_message(keep) == kept_bytes
    state = stack.run(JobState(stack.blobs.index.runner, stack.blobs.index.keys, "gc").load())
    assert not set(RUN_FIELDS) & set(state) and "last_finished" in state


def test_a_put_while_gc_runs_keeps_its_blob(stack: MailStack) -> None:
    """A dedup hit on an unreferenced blob after gc announced itself keeps the blob
    through that run (its reference may be about to commit); the next run collects it."""
    data = os.urandom(6000)
    bid = stack.run(stack.blobs.put(data))
    gc = collector(stack)
    first = stack.run(gc.run_once(stop=lambda: True))  # announce, then stop in the guard
    assert first.interrupted and first.phase == "guard"

    async def dedup_put() -> str:
        await asyncio.sleep(GC_FLAG_TTL + 0.1)  # the client's reading of the flag is stale
        return await stack.blobs.put(data)

    assert stack.run(dedup_put()) == bid
    assert stack.blobs.gc_watch.announced >= 1
    stats = stack.run(gc.run_once())
    assert stats.finished and stats.kept >= 1 and bid not in stats.examples
    assert stack.run(stack.blobs.get(bid)) == data

    async def later() -> GcStats:
        await asyncio.sleep(GC_FLAG_TTL + 0.1)
        return await full_run(stack)

    stack.run(later())
    assert not stack.run(stack.blobs.exists(bid))
    assert stack.run(held_anywhere(stack.blobs, bid)) == []


def test_a_blob_uploaded_again_survives_the_conditional_deletes(stack: MailStack) -> None:
    """gc reads each copy's CAS unique before it drops the index entry; a put that finds
    the entry gone uploads new copies, which gc's ``md <key> C<cas>`` leaves alone."""
    data = os.urandom(7000)
    gc = collector(stack)

    async def race() -> GcStats:
        bid = await stack.blobs.put(data)
        numbers = await stack.blobs.index.locations(bid)
        snap = await stack.blobs.snapshot(force=True)
        doomed = await gc._examine(bid, numbers, snap.resolve(numbers))
        assert doomed is not None and len(doomed.items) == 2
        assert await stack.blobs.index.collect_many({bid: numbers}) == {bid}
        assert await stack.blobs.put(data) == bid  # a miss now: uploaded again
        stats = GcStats()
        await gc._delete_copies(doomed, stats)
        return stats

    stats = stack.run(race())
    assert stats.copies_deleted == 0 and stats.copies_kept >= 1
    bid = stack.run(stack.blobs.put(data))
    assert stack.run(stack.blobs.get(bid)) == data


def test_an_interrupted_sweep_resumes_where_it_stopped(stack: MailStack) -> None:
    """A run stopped mid-sweep (item limit) saves its bucket cursor and keeps its
    announcement; the next invocation goes on from there, without a second grace
    period, and collects the rest."""
    orphans = stack.run(stack.blobs.put_many([os.urandom(4100) for _ in range(150)]))
    gc = collector(stack, grace=0.0)
    first = stack.run(gc.run_once(max_items=40))
    assert first.interrupted and not first.finished
    state = stack.run(gc.status())
    cursor = int(float(state["cursor"]))
    buckets = stack.blobs.index.layout.buckets
    assert 0 < cursor < buckets and "active_since" in state
    left = stack.run(index_ids(stack.blobs)) & set(orphans)
    assert 0 < len(left) < len(orphans)
    second = stack.run(gc.run_once())
    assert second.finished and second.guard_left == 0.0
    assert first.collected + second.collected >= len(orphans)
    assert not stack.run(index_ids(stack.blobs)) & set(orphans)


def test_objmail_gc_command(stack: MailStack, config: Config, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    """``objmail gc --dry-run`` counts without deleting; ``objmail gc --grace 0`` runs
    to the end; ``--status`` then shows no run in progress."""
    orphan = stack.run(stack.blobs.put(os.urandom(4500)))
    path = tmp_path / "objmail.toml"
    path.write_text(to_toml(config))
    capsys.readouterr()
    assert main(["--config", str(path), "gc", "--dry-run", "--json"]) == EX_OK
    survey = json.loads(capsys.readouterr().out)
    assert survey["unreferenced"] >= 1 and survey["entries"] >= survey["unreferenced"]
    assert stack.run(stack.blobs.exists(orphan))

    assert main(["--config", str(path), "gc", "--grace", "0", "--json"]) == EX_OK
    result = json.loads(capsys.readouterr().out)
    assert result["finished"] and result["collected"] >= 1
    assert not stack.run(stack.blobs.exists(orphan))

    assert main(["--config", str(path), "gc", "--status"]) == EX_OK
    assert "no run in progress" in capsys.readouterr().out


# -- deliveries racing gc -------------------------------------------------------------


def lmtp(stack: MailStack, recipient: str) -> LMTPSession:
    """An LMTP session past RCPT, ready for DATA."""
    session = LMTPSession(stack.deliverer, stack.config.imapd, "lmtp.test")
    for verb, arg in (("LHLO", "mx"), ("MAIL", "FROM:<sender@example.org>"),
                      ("RCPT", f"TO:<{recipient}@example.org>"), ("DATA", "")):
        lines, _start = stack.run(session.handle(Command(verb, arg)))
        assert lines[0][:1] in ("2", "3"), lines
    return session


async def commit_waiting(dsn: str, locker_pid: int) -> None:
    """Return once a transaction waits for a lock the backend ``locker_pid`` holds (the
    recipient's mailbox row): found by who blocks it, not by its statement's text, which
    pg_stat_activity cuts at track_activity_query_size."""
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(400):
            if await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND $1 = ANY (pg_blocking_pids(pid))", locker_pid):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"no delivery waits for the lock backend {locker_pid} holds")
    finally:
        await conn.close()


def race_gc(stack: MailStack, raw: bytes, recipient: str, user_id: int, *,
            meanwhile: bytes | None = None, other: str = "") -> tuple[str, GcStats]:
    """Deliver ``raw`` over LMTP while another transaction holds the recipient's INBOX
    row lock; meanwhile a whole gc run goes by (and, with ``meanwhile``, that message is
    delivered to ``other``); then the lock goes and the delivery's reply is returned."""
    session = lmtp(stack, recipient)
    dsn = stack.config.cluster.pg_dsn

    async def go() -> tuple[str, GcStats]:
        locker = await asyncpg.connect(dsn)
        try:
            held = locker.transaction()
            await held.start()
            await locker.execute("SELECT 1 FROM mailboxes WHERE user_id = $1 "
                                 "AND name = 'INBOX' FOR UPDATE", user_id)
            delivery = asyncio.ensure_future(session.data(MessageData(raw, len(raw))))
            # Uploaded; its commit waits for the lock.
            await commit_waiting(dsn, locker.get_server_pid())
            stats = await collector(stack).run_once()
            if meanwhile is not None:
                await stack.deliverer.deliver(other, meanwhile)
            await held.rollback()
            (reply,) = await delivery
            return reply, stats
        finally:
            await locker.close()

    return stack.run(go())


def test_a_delivery_that_waits_out_gc_fails_temporarily(stack: MailStack) -> None:
    """The repro of issue 11 (data loss 2): while a delivery's commit waits for a locked
    INBOX, a gc run collects the blobs it uploaded; its commit then finds them gone, rolls
    back and answers 451 (nothing committed), and the retried delivery lands readable."""
    user = stack.new_user("race")
    raw = message_with_attachment(os.urandom(30_000), "race")
    reply, stats = race_gc(stack, raw, user.name, user.id)
    assert stats.finished and stats.collected >= 2, stats  # the skeleton and attachment
    assert reply.startswith("451 4.3.0"), reply
    assert stack.run(stack.store.mailboxes.status(user.id, "INBOX")).messages == 0
    assert stack.blobs.gc_watch.fence_refusals >= 1

    (again,) = stack.run(lmtp(stack, user.name).data(MessageData(raw, len(raw))))
    assert again.startswith("250 2.0.0"), again
    traced = trace_fields("sender@example.org", f"{user.name}@example.org", raw)
    assert stack.only_message(user) == traced + raw


def test_a_delivery_whose_blobs_came_back_lands_readable(stack: MailStack) -> None:
    """When the same bytes are delivered to someone else after gc collected the waiting
    delivery's blobs (uploading them again), the waiting commit finds them indexed and
    lands: 250, and both copies read back byte for byte.  (The other copy is delivered
    with the waiting one's trace fields, so that its skeleton is the same blob too.)"""
    user, other = stack.new_user("race"), stack.new_user("again")
    raw = message_with_attachment(os.urandom(30_000), "again")
    traced = trace_fields("sender@example.org", f"{user.name}@example.org", raw) + raw
    reply, stats = race_gc(stack, raw, user.name, user.id, meanwhile=traced, other=other.name)
    assert stats.collected >= 2, stats
    assert reply.startswith("250 2.0.0"), reply
    assert stack.only_message(user) == traced
    assert stack.only_message(other) == traced


def test_a_batch_that_waits_out_gc_fails_and_each_delivery_alone_too(
        stack: MailStack) -> None:
    """The fence holds for LMTP's group commit: while a first delivery's commit waits for
    a locked INBOX (holding the committer's one lane), two more reach their commit and wait
    for it; a whole gc run collects all their uploaded blobs; then the lock goes.  The first
    is refused by its fence, the batch of the other two by the batch's, and each of the two
    again alone: three 451s, nothing committed; delivered again, both land readable."""
    locked, a, b = stack.new_user("lock"), stack.new_user("ba"), stack.new_user("bb")
    committer = GroupCommitter(stack.deliverer, lanes=1)
    raws = {user.name: message_with_attachment(os.urandom(20_000), user.name)
            for user in (locked, a, b)}

    def session(recipient: str) -> LMTPSession:
        s = LMTPSession(stack.deliverer, stack.config.imapd, "lmtp.test", committer)
        for verb, arg in (("LHLO", "mx"), ("MAIL", "FROM:<sender@example.org>"),
                          ("RCPT", f"TO:<{recipient}@example.org>"), ("DATA", "")):
            lines, _start = stack.run(s.handle(Command(verb, arg)))
            assert lines[0][:1] in ("2", "3"), lines
        return s

    sessions = {user.name: session(user.name) for user in (locked, a, b)}
    dsn = stack.config.cluster.pg_dsn
    refusals = stack.blobs.gc_watch.fence_refusals

    async def go() -> list[str]:
        locker = await asyncpg.connect(dsn)
        try:
            held = locker.transaction()
            await held.start()
            await locker.execute("SELECT 1 FROM mailboxes WHERE user_id = $1 "
                                 "AND name = 'INBOX' FOR UPDATE", locked.id)
            tasks = [asyncio.ensure_future(sessions[locked.name].data(
                MessageData(raws[locked.name], len(raws[locked.name]))))]
            await commit_waiting(dsn, locker.get_server_pid())
            tasks += [asyncio.ensure_future(sessions[u.name].data(
                MessageData(raws[u.name], len(raws[u.name])))) for u in (a, b)]
            for _ in range(2000):  # both uploaded and waiting behind the lane
                if committer.waiting == 2 or any(t.done() for t in tasks):
                    break
                await asyncio.sleep(0.01)
            assert committer.waiting == 2
            stats = await collector(stack).run_once()
            assert stats.finished and stats.collected >= 6, stats  # 3 skeletons, 3 parts
            await held.rollback()
            return [reply for t in tasks for reply in await t]
        finally:
            await locker.close()

    replies = stack.run(go())
    assert [r[:9] for r in replies] == ["451 4.3.0"] * 3, replies
    assert committer.batch_sizes == {1: 3, 2: 1} and committer.retried == 1
    assert stack.blobs.gc_watch.fence_refusals >= refusals + 3
    for user in (locked, a, b):
        assert stack.run(stack.store.mailboxes.status(user.id, "INBOX")).messages == 0

    for user in (a, b):
        raw = raws[user.name]
        (again,) = stack.run(session(user.name).data(MessageData(raw, len(raw))))
        assert again.startswith("250 2.0.0"), again
        traced = trace_fields("sender@example.org", f"{user.name}@example.org", raw)
        assert stack.only_message(user) == traced + raw


def test_a_commit_pays_nothing_when_no_gc_ran(stack: MailStack) -> None:
    """A delivery during which no gc run was announced commits without looking its blobs
    up again (the fence reads only gc's job hash, at most once a second)."""
    user = stack.new_user("calm")
    checks = stack.blobs.gc_watch.fence_checks
    stack.run(stack.deliverer.deliver(user.name, message_with_attachment(os.urandom(9000),
                                                                         "calm")))
    assert stack.blobs.gc_watch.fence_checks == checks


# -- directord items, and the minimum grace -------------------------------------------


def test_directord_items_survive_gc(stack: MailStack) -> None:
    """Items a memcached client stored through directord under plain keys (issue 11,
    data loss 3) are indexed in their own key space, which gc never sweeps: after a full
    run they still read back, with their flags."""
    key = f"mykey-{os.urandom(4).hex()}".encode()
    value = os.urandom(3000)
    assert stack.run(stack.blobs.put_item(key, value, flags=9))
    stats = stack.run(full_run(stack))
    got = stack.run(stack.blobs.get_item(key))
    assert got is not None and (got.value, got.flags) == (value, 9)
    assert key.decode() not in stats.examples


def test_a_grace_below_the_minimum_is_refused(config: Config, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """``director.gc_grace`` below ``gc_min_grace`` (600 s by default) is a config error
    naming the key, ``objmail gc --grace`` below it exits 64 saying why, and a collector
    built with a shorter grace is a ValueError."""
    assert DirectorConfig().gc_min_grace == MIN_GC_GRACE == 600.0
    with pytest.raises(ConfigError, match="gc_grace: must be at least gc_min_grace"):
        DirectorConfig(gc_grace=3)
    strict = dataclasses.replace(config, director=dataclasses.replace(
        config.director, gc_min_grace=MIN_GC_GRACE))
    path = tmp_path / "objmail.toml"
    path.write_text(to_toml(strict))
    capsys.readouterr()
    assert main(["--config", str(path), "gc", "--grace", "3"]) == EX_USAGE
    assert "below the minimum of 600 s" in capsys.readouterr().err

    async def build() -> None:
        client = await BlobClient.open(strict.cluster, strict.director,
                                       auth=redis_auth(strict.cluster))
        try:
            with pytest.raises(ValueError, match="below the minimum"):
                Collector(client, _NoReferences(), grace=3.0)
        finally:
            await client.aclose()

    asyncio.run(build())


class _NoReferences:
    """A reference checker for a collector that is never run."""

    async def referenced(self, blob_ids: object) -> set[str]:
        raise AssertionError("not called")
