"""System tests of message storage against a real PostgreSQL: UIDs, flags, copy/move,
expunge and references, quota, fan-out delivery of one blob."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import TypeVar

import asyncpg
import pytest

from metadata.errors import NoSuchMailbox, NoSuchUser, OverQuota, QueryTooLong, UidsExhausted
from metadata.flags import ANSWERED, DELETED, FLAGGED, SEEN, Flags
from metadata.messages import NewMessage
from metadata.notify import Change, ChangeListener
from metadata.records import SearchHits, User
from metadata.search import BodyContains, Criterion, HasFlag
from metadata.store import MetadataStore
from metadata.uidset import MAX_UID, UidSet
from tests.metadata_support import FAST_SCRYPT, blob, fresh_database, sample_row
from tests.waiting import eventually

T = TypeVar("T")

NOW = dt.datetime(2024, 3, 9, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-8)))


@pytest.fixture(scope="module")
def dsn(postgres: str) -> Iterator[str]:
    with fresh_database(postgres) as target:
        yield target


@contextlib.asynccontextmanager
async def opened(dsn: str, pool_max: int = 10) -> AsyncIterator[MetadataStore]:
    store = await MetadataStore.open(dsn, pool_min=1, pool_max=pool_max,
                                     password_params=FAST_SCRYPT)
    try:
        yield store
    finally:
        await store.close()


async def new_user(store: MetadataStore, name: str, quota: int = 0) -> tuple[User, int]:
    user = await store.users.create(name, "pw", quota_bytes=quota)
    inbox = await store.mailboxes.get(user.id, "INBOX")
    return user, inbox.id


async def scalar(dsn: str, sql: str, *args: object) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def test_insert_then_fetch_round_trips(dsn: str) -> None:
    """A stored message comes back with its UID, flags, INTERNALDATE in the offset it was
    given, size and cached bytes untouched; the cached items come only when asked."""

    async def run() -> None:
        async with opened(dsn) as store:
            user, inbox = await new_user(store, "fetcher")
            row = sample_row("f1", size=1234)
            appended = await store.messages.insert(
                user.id, inbox, row, [blob("pdf")], internaldate=NOW,
                flags=Flags(SEEN, ("$Forwarded",)))
            mailbox = await store.mailboxes.get(user.id, "INBOX")
            assert (appended.uidvalidity, appended.uid) == (mailbox.uidvalidity, 1)
            assert appended.modseq == mailbox.highestmodseq
            (plain,) = await store.messages.fetch(user.id, inbox, UidSet.all())
            assert plain.envelope is None and plain.skeleton_id is None
            (full,) = await store.messages.fetch(
                user.id, inbox, UidSet.from_uids([1]),
                items=["skeleton", "envelope", "bodystructure", "body", "header", "sections"])
            assert full.uid == 1 and full.size == 1234
            assert full.flags == Flags(SEEN, ("$Forwarded",))
            assert full.internaldate == NOW
            assert full.internaldate.utcoffset() == dt.timedelta(hours=-8)
            assert (full.envelope, full.bodystructure, full.header_block,
                    full.section_map, full.skeleton_id) == (
                row.envelope, row.bodystructure, row.header_block,
                row.section_map, row.skeleton_id)
            # BODY is BODYSTRUCTURE without its extension data (no column of its own).
            assert full.body == b'("text" "plain" ("charset" "us-ascii") NIL "f1" "7bit" 10 1)'
            (body_only,) = await store.messages.fetch(user.id, inbox, UidSet.all(),
                                                      items=["body"])
            assert body_only.body == full.body and body_only.bodystructure is None
            assert await store.messages.blob_ids(user.id, full.message_id) == sorted(
                [blob("pdf"), row.skeleton_id])
            assert await store.messages.fetch(user.id, inbox, UidSet.from_uids([2])) == []
            with pytest.raises(ValueError):
                await store.messages.fetch(user.id, inbox, UidSet.all(), items=["bogus"])

    asyncio.run(run())


def test_concurrent_deliveries_get_increasing_uids_in_commit_order(dsn: str) -> None:
    """20 tasks delivering into one mailbox get distinct UIDs 1..N with no gap, each task's
    UIDs increase, commits happen in UID order (notifications arrive with increasing
    UIDNEXT), and an expunged top UID is never handed out again."""
    tasks, per_task = 20, 8

    async def run() -> None:
        async with opened(dsn, pool_max=20) as store:
            user, inbox = await new_user(store, "concurrent")
            seen: list[Change] = []
            listener = ChangeListener(dsn)
            await listener.start()
            await listener.subscribe(user.id, seen.append)

            async def deliver(task: int) -> list[int]:
                uids = []
                for i in range(per_task):
                    appended = await store.messages.insert(
                        user.id, inbox, sample_row(f"c{task}-{i}"), [],
                        internaldate=NOW)
                    uids.append(appended.uid)
                return uids

            results = await asyncio.gather(*(deliver(t) for t in range(tasks)))
            total = tasks * per_task
            for uids in results:
                assert uids == sorted(uids) and len(set(uids)) == len(uids)
            assert sorted(u for uids in results for u in uids) == list(range(1, total + 1))
            assert (await store.mailboxes.get(user.id, "INBOX")).uidnext == total + 1

            await eventually(lambda: len(seen) >= total, 5, what=f"{total} notifications")
            uidnexts = [c.uidnext for c in seen if c.kind == "append"]
            assert uidnexts == list(range(2, total + 2))

            await store.messages.store_flags(user.id, inbox, UidSet.from_uids([total]), "add",
                                             Flags(DELETED))
            assert (await store.messages.expunge(user.id, inbox)).uids == (total,)
            again = await store.messages.insert(user.id, inbox, sample_row("after"), [],
                                                internaldate=NOW)
            assert again.uid == total + 1
            await listener.close()

    asyncio.run(run())


def test_fan_out_of_one_blob_does_not_serialise(dsn: str) -> None:
    """1,000 users each receive a message referencing one attachment blob from 10 parallel
    connections: every delivery writes only its own user's rows (no table is keyed by blob
    alone, and a delivery commits while another delivery of the same blob is still open),
    and the reference count is one row per message."""
    users_count, connections = 1000, 10
    shared = blob("five-megabyte-pdf")

    async def run() -> None:
        async with opened(dsn, pool_max=connections) as store:
            # Schema: no shared row per blob can exist.
            conn = await asyncpg.connect(dsn)
            try:
                tables = await conn.fetch(
                    "SELECT c.conrelid::regclass::text AS tbl, "
                    "array_agg(a.attname ORDER BY k.ord) AS cols FROM pg_constraint c "
                    "CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord) "
                    "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum "
                    "WHERE c.contype IN ('p', 'u') AND EXISTS (SELECT 1 FROM pg_attribute b "
                    "WHERE b.attrelid = c.conrelid AND b.attname = 'blob_id') "
                    "GROUP BY c.oid, c.conrelid")
            finally:
                await conn.close()
            assert tables, "some table must hold blob references"
            for t in tables:
                assert t["cols"][0] == "user_id", f"{t['tbl']} is keyed by {t['cols']}"

            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(users_count):
                queue.put_nowait(i)
            users: list[tuple[int, int]] = []

            async def create_users() -> None:
                while not queue.empty():
                    i = queue.get_nowait()
                    user, inbox = await new_user(store, f"fan{i:04d}")
                    users.append((user.id, inbox))

            await asyncio.gather(*(create_users() for _ in range(connections)))

            # A delivery of the blob held open mid-transaction does not block the others.
            first_user, _first_inbox = users[0]
            held = await asyncpg.connect(dsn)
            tx = held.transaction()
            await tx.start()
            msg = await held.fetchval(
                "INSERT INTO messages (user_id, skeleton_id, size, header_block, envelope, "
                "bodystructure, section_map) VALUES "
                "($1, $2, 10, '', '', '', '') RETURNING id", first_user,
                bytes.fromhex(blob("held")))
            await held.execute("INSERT INTO message_blobs VALUES ($1, $2, $3)",
                               first_user, msg, bytes.fromhex(shared))
            await held.execute("UPDATE user_usage SET used_bytes = used_bytes + 10 "
                               "WHERE user_id = $1", first_user)
            other_user, other_inbox = users[1]
            await asyncio.wait_for(store.messages.insert(
                other_user, other_inbox, sample_row("other"), [shared], internaldate=NOW),
                timeout=30)
            await tx.rollback()
            await held.close()

            def deliveries(label: str) -> asyncio.Queue[tuple[int, int]]:
                q: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
                for pair in users:
                    q.put_nowait(pair)
                return q

            async def worker(q: asyncio.Queue[tuple[int, int]], label: str) -> None:
                while not q.empty():
                    user_id, inbox = q.get_nowait()
                    await store.messages.insert(user_id, inbox, sample_row(f"{label}{user_id}"),
                                                [shared], internaldate=NOW)

            t0 = time.perf_counter()
            q = deliveries("par")
            await asyncio.gather(*(worker(q, "par") for _ in range(connections)))
            parallel = time.perf_counter() - t0
            t0 = time.perf_counter()
            await worker(deliveries("seq"), "seq")
            sequential = time.perf_counter() - t0
            print(f"\nfan-out of one blob to {users_count} users: {connections} connections "
                  f"{parallel:.2f}s ({users_count / parallel:.0f} msg/s), one connection "
                  f"{sequential:.2f}s ({users_count / sequential:.0f} msg/s), "
                  f"speed-up x{sequential / parallel:.2f}")

            assert await store.references.count(shared) == 2 * users_count + 1
            per_user = await scalar(
                dsn, "SELECT count(DISTINCT n) FROM (SELECT count(*) AS n FROM message_blobs "
                "WHERE blob_id = $1 GROUP BY user_id) AS t", bytes.fromhex(shared))
            assert per_user == 2  # the user who got "other" has 3; everyone else 2

    asyncio.run(run())


def test_store_flags_modes_modseq_and_unchangedsince(dsn: str) -> None:
    """+FLAGS, -FLAGS and FLAGS change only what differs, under one new mod-sequence;
    UNCHANGEDSINCE leaves newer messages alone and reports them as MODIFIED."""

    async def run() -> None:
        async with opened(dsn) as store:
            user, inbox = await new_user(store, "flagger")
            for i in range(4):
                await store.messages.insert(user.id, inbox, sample_row(f"fl{i}"), [],
                                            internaldate=NOW)
            base = (await store.mailboxes.get(user.id, "INBOX")).highestmodseq

            added = await store.messages.store_flags(
                user.id, inbox, UidSet.of([(1, 2)]), "add", Flags(SEEN, ("Work",)))
            assert added.changed == (1, 2) and added.modseq == base + 1
            assert [s.flags for s in added.states] == [Flags(SEEN, ("Work",))] * 2

            same = await store.messages.store_flags(
                user.id, inbox, UidSet.of([(1, 2)]), "add", Flags(SEEN, ("Work",)))
            assert same.changed == () and same.modseq is None
            assert len(same.states) == 2
            assert (await store.mailboxes.get(user.id, "INBOX")).highestmodseq == base + 1

            more = await store.messages.store_flags(
                user.id, inbox, UidSet.of([(1, 3)]), "add", Flags(FLAGGED, ("Home", "Work")))
            assert more.changed == (1, 2, 3)
            assert more.states[0].flags == Flags(SEEN | FLAGGED, ("Work", "Home"))
            assert more.states[2].flags == Flags(FLAGGED, ("Home", "Work"))

            removed = await store.messages.store_flags(
                user.id, inbox, UidSet.all(), "remove", Flags(SEEN, ("Work",)))
            assert removed.changed == (1, 2, 3)
            assert removed.states[0].flags == Flags(FLAGGED, ("Home",))

            replaced = await store.messages.store_flags(
                user.id, inbox, UidSet.all(), "replace", Flags(ANSWERED, ("Home",)))
            assert replaced.changed == (1, 2, 3, 4)
            set_again = await store.messages.store_flags(
                user.id, inbox, UidSet.all(), "replace", Flags(ANSWERED, ("Home",)))
            assert set_again.changed == ()

            # Message 4 is changed after the client's snapshot: it must be refused.
            snapshot = replaced.modseq
            assert snapshot is not None
            await store.messages.store_flags(user.id, inbox, UidSet.from_uids([4]), "add",
                                             Flags(SEEN))
            conditional = await store.messages.store_flags(
                user.id, inbox, UidSet.all(), "add", Flags(DELETED),
                unchanged_since=snapshot)
            assert conditional.changed == (1, 2, 3)
            assert conditional.modified == (4,)
            assert not conditional.states[3].flags.system & DELETED

            changed = await store.messages.fetch(user.id, inbox, UidSet.all(),
                                                 changed_since=snapshot)
            assert [e.uid for e in changed] == [1, 2, 3, 4]
            latest = await store.messages.fetch(user.id, inbox, UidSet.all(),
                                                changed_since=conditional.modseq)
            assert latest == []

    asyncio.run(run())


def test_concurrent_stores_get_distinct_modseqs_and_lose_no_flag(dsn: str) -> None:
    """STOREs racing on one message from many connections (one statement each, migration
    0007): each reads the entry after taking the mailbox lock, so none overwrites another's
    flags; each gets its own mod-sequence, HIGHESTMODSEQ ends at the last, the mailbox's
    keyword list and counters follow, and every change is notified with its mod-sequence."""
    tasks = 12

    async def run() -> None:
        async with opened(dsn, pool_max=tasks) as store:
            user, inbox = await new_user(store, "racing-stores")
            await store.messages.insert(user.id, inbox, sample_row("race"), [],
                                        internaldate=NOW)
            base = (await store.mailboxes.get(user.id, "INBOX")).highestmodseq
            seen: list[Change] = []
            listener = ChangeListener(dsn)
            await listener.start()
            await listener.subscribe(user.id, seen.append)
            one = UidSet.from_uids([1])
            # A keyword each, and \Seen set and cleared by turns: a read of the entry taken
            # before the lock would drop keywords or leave the unseen count wrong.
            results = await asyncio.gather(*(
                store.messages.store_flags(user.id, inbox, one, "add",
                                           Flags(SEEN if t % 2 else 0, (f"k{t}",)))
                for t in range(tasks)), *(
                store.messages.store_flags(user.id, inbox, one, "remove", Flags(SEEN))
                for _ in range(tasks // 2)))
            modseqs = sorted(r.modseq for r in results if r.modseq is not None)
            assert len(modseqs) == len(set(modseqs))
            assert modseqs[:tasks] == list(range(base + 1, base + tasks + 1))
            entry = (await store.messages.fetch(user.id, inbox, one))[0]
            assert set(entry.flags.keywords) == {f"k{t}" for t in range(tasks)}
            mailbox = await store.mailboxes.get(user.id, "INBOX")
            assert mailbox.highestmodseq == modseqs[-1] == entry.modseq
            assert set(mailbox.keywords) >= {f"k{t}" for t in range(tasks)}
            unseen = await scalar(dsn, "SELECT n_unseen FROM mailboxes WHERE id = $1", inbox)
            assert unseen == (0 if entry.flags.system & SEEN else 1)
            await eventually(lambda: len(seen) >= len(modseqs), 5,
                             what=f"{len(modseqs)} notifications")
            assert sorted(c.modseq for c in seen if c.kind == "flags" and c.modseq) == modseqs
            # A STORE that changes nothing takes no mod-sequence and notifies nothing.
            same = await store.messages.store_flags(user.id, inbox, one, "add",
                                                    Flags(0, ("k0",)))
            assert same.modseq is None and same.changed == ()
            assert same.states[0].flags == entry.flags
            assert (await store.mailboxes.get(user.id, "INBOX")).highestmodseq == modseqs[-1]
            await listener.close()
            # A deleted mailbox is no place to STORE.
            await store.mailboxes.create(user.id, "Gone")
            gone = await store.mailboxes.get(user.id, "Gone")
            await store.mailboxes.delete(user.id, "Gone")
            with pytest.raises(NoSuchMailbox):
                await store.messages.store_flags(user.id, gone.id, one, "add", Flags(SEEN))

    asyncio.run(run())


def test_copy_shares_the_message_and_charges_quota(dsn: str) -> None:
    """COPY gives consecutive new UIDs in source order (COPYUID), keeps flags and
    INTERNALDATE, shares the message row and its references, and counts against quota."""

    async def run() -> None:
        async with opened(dsn) as store:
            user, inbox = await new_user(store, "copier")
            for i in range(3):
                await store.messages.insert(user.id, inbox, sample_row(f"cp{i}", size=100),
                                            [blob("att")], internaldate=NOW,
                                            flags=Flags(FLAGGED if i == 1 else 0))
            trash = await store.mailboxes.get(user.id, "Trash")
            result = await store.messages.copy(user.id, inbox, UidSet.from_uids([3, 2]),
                                               trash.id)
            assert result.uidvalidity == trash.uidvalidity
            assert (result.source_uids, result.dest_uids) == ((2, 3), (1, 2))
            copied = await store.messages.fetch(user.id, trash.id, UidSet.all())
            originals = await store.messages.fetch(user.id, inbox, UidSet.from_uids([2, 3]))
            assert [c.flags for c in copied] == [o.flags for o in originals]
            assert [c.message_id for c in copied] == [o.message_id for o in originals]
            assert [c.internaldate for c in copied] == [NOW, NOW]
            assert (await store.users.get_by_id(user.id)).used_bytes == 500
            assert await store.references.count(blob("att")) >= 3
            empty = await store.messages.copy(user.id, inbox, UidSet.from_uids([99]), trash.id)
            assert empty.source_uids == () and empty.dest_uids == ()
            with pytest.raises(NoSuchMailbox):
                await store.messages.copy(user.id, inbox, UidSet.all(), 999_999)

    asyncio.run(run())


def test_move_expunges_from_source_and_leaves_tombstones(dsn: str) -> None:
    """MOVE copies and expunges in one transaction: the source loses the UIDs (reported for
    VANISHED since the old mod-sequence), references and quota are unchanged."""

    async def run() -> None:
        async with opened(dsn) as store:
            user, inbox = await new_user(store, "mover")
            for i in range(3):
                await store.messages.insert(user.id, inbox, sample_row(f"mv{i}", size=10),
                                            [], internaldate=NOW)
            before = (await store.mailboxes.get(user.id, "INBOX")).highestmodseq
            archive = await store.mailboxes.get(user.id, "Archive")
            moved = await store.messages.move(user.id, inbox, UidSet.from_uids([1, 3]),
                                              archive.id)
            assert moved.copied.dest_uids == (1, 2)
            assert moved.expunged.uids == (1, 3)
            assert moved.expunged.modseq is not None and moved.expunged.modseq > before
            assert await store.messages.uids(user.id, inbox) == [2]
            assert await store.messages.uids(user.id, archive.id) == [1, 2]
            assert await store.messages.vanished(user.id, inbox, before) == [1, 3]
            assert await store.messages.vanished(user.id, inbox, before,
                                                 UidSet.from_uids([3])) == [3]
            assert await store.messages.vanished(user.id, inbox, moved.expunged.modseq) == []
            used = await store.users.get_by_id(user.id)
            assert (used.used_bytes, used.message_count) == (30, 3)
            assert await scalar(dsn, "SELECT count(*) FROM messages WHERE user_id = $1",
                                user.id) == 3

    asyncio.run(run())


def test_expunge_drops_references_of_the_last_copy_only(dsn: str) -> None:
    """EXPUNGE removes \\Deleted entries only, refunds quota, and drops a message's blob
    references in the same transaction once no mailbox holds it any more."""

    async def run() -> None:
        async with opened(dsn) as store:
            user, inbox = await new_user(store, "expunger")
            part = blob("expunge-part")
            appended = await store.messages.insert(user.id, inbox, sample_row("x1", size=50),
                                                   [part], internaldate=NOW)
            await store.messages.insert(user.id, inbox, sample_row("x2", size=70), [],
                                        internaldate=NOW)
            trash = await store.mailboxes.get(user.id, "Trash")
            await store.messages.copy(user.id, inbox, UidSet.from_uids([1]), trash.id)
            assert await store.references.count(part) == 1

            nothing = await store.messages.expunge(user.id, inbox)
            assert nothing.uids == () and nothing.modseq is None

            await store.messages.store_flags(user.id, inbox, UidSet.all(), "add", Flags(DELETED))
            gone = await store.messages.expunge(user.id, inbox, UidSet.from_uids([1]))
            assert gone.uids == (1,)
            assert await store.references.count(part) == 1  # the copy in Trash holds it

            await store.messages.store_flags(user.id, trash.id, UidSet.all(), "add",
                                             Flags(DELETED))
            assert (await store.messages.expunge(user.id, trash.id)).uids == (1,)
            assert await store.references.count(part) == 0
            assert await store.messages.blob_ids(user.id, appended.message_id) == []
            assert await scalar(dsn, "SELECT count(*) FROM messages WHERE user_id = $1 "
                                "AND id = $2", user.id, appended.message_id) == 0
            assert (await store.messages.expunge(user.id, inbox)).uids == (2,)
            usage = await store.users.get_by_id(user.id)
            assert (usage.used_bytes, usage.message_count) == (0, 0)

    asyncio.run(run())


def test_concurrent_expunge_of_two_copies_leaves_no_orphan(dsn: str) -> None:
    """Two sessions expunging the last two copies of a message at the same moment delete the
    message and its references (neither assumes the other keeps it)."""

    async def run() -> None:
        async with opened(dsn) as store:
            user, inbox = await new_user(store, "racer")
            archive = await store.mailboxes.get(user.id, "Archive")
            for round_ in range(10):
                part = blob(f"race-{round_}")
                appended = await store.messages.insert(user.id, inbox, sample_row(f"r{round_}"),
                                                       [part], internaldate=NOW,
                                                       flags=Flags(DELETED))
                await store.messages.copy(user.id, inbox, UidSet.from_uids([appended.uid]),
                                          archive.id)
                await asyncio.gather(store.messages.expunge(user.id, inbox),
                                     store.messages.expunge(user.id, archive.id))
                assert await store.references.count(part) == 0
            assert await scalar(dsn, "SELECT count(*) FROM messages WHERE user_id = $1",
                                user.id) == 0

    asyncio.run(run())


def test_quota_refusal_leaves_nothing_behind(dsn: str) -> None:
    """A delivery over quota raises OverQuota and leaves no message, reference, entry or
    UID behind; copies are refused the same way."""

    async def run() -> None:
        async with opened(dsn) as store:
            user, inbox = await new_user(store, "quotaed", quota=1500)
            await store.messages.insert(user.id, inbox, sample_row("q1", size=1000), [],
                                        internaldate=NOW)
            with pytest.raises(OverQuota) as refused:
                await store.messages.insert(user.id, inbox, sample_row("q2", size=600),
                                            [blob("big")], internaldate=NOW)
            assert (refused.value.used, refused.value.limit, refused.value.needed) == (
                1000, 1500, 600)
            assert await store.references.count(blob("big")) == 0
            assert await scalar(dsn, "SELECT count(*) FROM messages WHERE user_id = $1",
                                user.id) == 1
            assert (await store.mailboxes.get(user.id, "INBOX")).uidnext == 2
            trash = await store.mailboxes.get(user.id, "Trash")
            with pytest.raises(OverQuota):
                await store.messages.copy(user.id, inbox, UidSet.all(), trash.id)
            fits = await store.messages.insert(user.id, inbox, sample_row("q3", size=500), [],
                                               internaldate=NOW)
            assert fits.uid == 2
            assert (await store.users.get_by_id(user.id)).used_bytes == 1500

    asyncio.run(run())


def test_message_quota_counts_entries_and_refuses_past_the_limit(dsn: str) -> None:
    """With a message quota, an insert or a COPY that would pass it raises OverQuota naming
    the MESSAGE resource and stores nothing; EXPUNGE gives the room back."""

    async def run() -> None:
        async with opened(dsn) as store:
            user, inbox = await new_user(store, "counted")
            await store.users.set_quota(user.name, None, 2)
            for i in range(2):
                await store.messages.insert(user.id, inbox, sample_row(f"mq{i}", size=10), [],
                                            internaldate=NOW)
            with pytest.raises(OverQuota) as refused:
                await store.messages.insert(user.id, inbox, sample_row("mq2", size=10), [],
                                            internaldate=NOW)
            assert (refused.value.resource, refused.value.used, refused.value.limit,
                    refused.value.needed) == ("MESSAGE", 2, 2, 1)
            trash = await store.mailboxes.get(user.id, "Trash")
            with pytest.raises(OverQuota):
                await store.messages.copy(user.id, inbox, UidSet.from_uids([1]), trash.id)
            usage = await store.users.get_by_id(user.id)
            assert (usage.message_count, usage.used_bytes, usage.quota_messages) == (2, 20, 2)
            await store.messages.store_flags(user.id, inbox, UidSet.from_uids([1]), "add",
                                             Flags(DELETED))
            await store.messages.expunge(user.id, inbox)
            await store.messages.copy(user.id, inbox, UidSet.all(), trash.id)
            assert (await store.users.get_by_id(user.id)).message_count == 2

    asyncio.run(run())


def test_insert_into_missing_or_noselect_mailbox(dsn: str) -> None:
    """Delivery to a deleted or \\Noselect mailbox, or for a deleted user, fails and stores
    nothing."""

    async def run() -> None:
        async with opened(dsn) as store:
            user, _inbox = await new_user(store, "nowhere")
            await store.mailboxes.create(user.id, "Parent/Child")
            parent = await store.mailboxes.get(user.id, "Parent")
            await store.mailboxes.delete(user.id, "Parent")
            with pytest.raises(NoSuchMailbox):
                await store.messages.insert(user.id, parent.id, sample_row("n1"), [],
                                            internaldate=NOW)
            with pytest.raises(NoSuchMailbox):
                await store.messages.insert(user.id, 987_654, sample_row("n2"), [],
                                            internaldate=NOW)
            assert await scalar(dsn, "SELECT count(*) FROM messages WHERE user_id = $1",
                                user.id) == 0
            with pytest.raises((NoSuchUser, asyncpg.ForeignKeyViolationError)):
                await store.messages.insert(424_242, 1, sample_row("n3"), [],
                                            internaldate=NOW)
            with pytest.raises(ValueError):
                await store.messages.insert(user.id, _inbox, sample_row("n4"), ["not-a-blob"],
                                            internaldate=NOW)
            with pytest.raises(ValueError):
                await store.messages.insert(user.id, _inbox, sample_row("n5"), [],
                                            internaldate=dt.datetime(2024, 1, 1))

    asyncio.run(run())


def test_uids_exhausted(dsn: str) -> None:
    """The last 32-bit UID is handed out once; after it delivery is refused, not wrapped."""

    async def run() -> None:
        async with opened(dsn) as store:
            user, inbox = await new_user(store, "exhausted")
            conn = await asyncpg.connect(dsn)
            await conn.execute("UPDATE mailboxes SET uidnext = $3 WHERE user_id = $1 "
                               "AND id = $2", user.id, inbox, MAX_UID)
            await conn.close()
            last = await store.messages.insert(user.id, inbox, sample_row("e1"), [],
                                               internaldate=NOW)
            assert last.uid == MAX_UID
            with pytest.raises(UidsExhausted):
                await store.messages.insert(user.id, inbox, sample_row("e2"), [],
                                            internaldate=NOW)

    asyncio.run(run())


def test_insert_many_is_one_transaction_with_consecutive_uids(dsn: str) -> None:
    """A batch gets consecutive UIDs in its order and one mod-sequence, each entry its own
    flags, date and references; a batch over quota, or one that would pass the last UID,
    stores none of its messages."""

    async def run() -> None:
        async with opened(dsn) as store:
            user, inbox = await new_user(store, "batch", quota=10_000)
            await store.messages.insert(user.id, inbox, sample_row("b0"), [],
                                        internaldate=NOW)
            later = NOW + dt.timedelta(hours=1)
            batch = [NewMessage(sample_row("b1", size=100), (blob("b1"),), NOW, Flags(SEEN)),
                     NewMessage(sample_row("b2", size=200), (), later, Flags(0, ("$Work",))),
                     NewMessage(sample_row("b3", size=300), (blob("b1"),), NOW)]
            done = await store.messages.insert_many(user.id, inbox, batch)
            assert [a.uid for a in done] == [2, 3, 4]
            assert len({a.modseq for a in done}) == 1
            assert len({a.message_id for a in done}) == 3
            entries = await store.messages.fetch(user.id, inbox, UidSet.from_uids([2, 3, 4]))
            assert [(e.flags, e.internaldate, e.size) for e in entries] == [
                (Flags(SEEN), NOW, 100), (Flags(0, ("$Work",)), later, 200),
                (Flags(0), NOW, 300)]
            assert await store.references.count(blob("b1")) == 2
            before = await store.users.get_by_id(user.id)
            with pytest.raises(OverQuota):
                await store.messages.insert_many(user.id, inbox, [
                    NewMessage(sample_row(f"q{n}", size=4000), (blob(f"q{n}"),), NOW)
                    for n in range(3)])
            assert await store.references.count(blob("q0")) == 0
            assert (await store.users.get_by_id(user.id)).used_bytes == before.used_bytes
            conn = await asyncpg.connect(dsn)
            await conn.execute("UPDATE mailboxes SET uidnext = $3 WHERE user_id = $1 "
                               "AND id = $2", user.id, inbox, MAX_UID)
            await conn.close()
            with pytest.raises(UidsExhausted):
                await store.messages.insert_many(user.id, inbox, [
                    NewMessage(sample_row("x1"), (), NOW), NewMessage(sample_row("x2"), (),
                                                                      NOW)])
            assert await store.messages.uids(user.id, inbox) == [1, 2, 3, 4]
            assert await store.messages.insert_many(user.id, inbox, []) == []

    asyncio.run(run())


_BATCH_SOURCES = (
    b"From: =?utf-8?q?J=C3=B6rg?= <j@example.org>\r\nTo: a@example.org, b@example.org\r\n"
    b"Subject: Re: [list] =?utf-8?b?w6TDtsO8?=\r\nDate: Tue, 1 Feb 2022 10:00:00 +0100\r\n"
    b"Message-ID: <m1@example.org>\r\nReferences: <r1@x> <r2@x>\r\n  <r3@x>\r\n\r\n"
    b"Hello \xc3\xa4 body text\r\n",
    # No Date, no Message-ID, a decoded value with a line break (header_fields kept).
    b"Subject: =?utf-8?q?two=0Alines?=\r\nX-\xc3\xa4: v\r\n\r\nplain\r\n",
    b"From: x@example.org\r\nIn-Reply-To: <p@x>\r\nContent-Type: multipart/mixed; "
    b"boundary=b\r\n\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>Hi &amp; bye</p>\r\n"
    b"--b\r\nContent-Type: application/octet-stream\r\n\r\nxyz\r\n--b--\r\n",
)


def test_insert_many_stores_rows_as_single_inserts_do(dsn: str) -> None:
    """A batch's rows (one statement for all of them) hold exactly what inserting each
    message alone stores: every column, the thread references in order, the blob
    references of each message."""
    from metadata.delivery import prepare

    rows = [prepare(raw, 4096).row for raw in _BATCH_SOURCES]
    blob_sets = [(blob("s1"), blob("s2")), (), (blob("s2"),)]
    columns = ("skeleton_id, size, sent_at, sent_date, search_subject, search_from, "
               "search_to, search_cc, search_bcc, header_fields, "
               "header_block, envelope, bodystructure, section_map, search_header, "
               "search_body, sort_subject, sort_reply, sort_from, sort_to, sort_cc, "
               "display_from, display_to, thread_message_id, thread_references")

    async def stored(user_id: int, message_ids: list[int]) -> list[tuple[object, ...]]:
        conn = await asyncpg.connect(dsn)
        try:
            out = []
            for mid in message_ids:
                row = await conn.fetchrow(f"SELECT {columns} FROM messages "
                                          "WHERE user_id = $1 AND id = $2", user_id, mid)
                refs = await conn.fetch("SELECT blob_id FROM message_blobs WHERE user_id = $1 "
                                        "AND message_id = $2 ORDER BY blob_id", user_id, mid)
                out.append((*row.values(), [r["blob_id"] for r in refs]))
            return out
        finally:
            await conn.close()

    async def run() -> None:
        async with opened(dsn) as store:
            one, one_inbox = await new_user(store, "rows1")
            many, many_inbox = await new_user(store, "rowsn")
            singles = [await store.messages.insert(one.id, one_inbox, row, blobs,
                                                   internaldate=NOW)
                       for row, blobs in zip(rows, blob_sets, strict=True)]
            batch = await store.messages.insert_many(many.id, many_inbox, [
                NewMessage(row, blobs, NOW) for row, blobs in zip(rows, blob_sets, strict=True)])
            alone = await stored(one.id, [a.message_id for a in singles])
            together = await stored(many.id, [a.message_id for a in batch])
            assert together == alone
            assert together[0][24] == ["r1@x", "r2@x", "r3@x"]
            assert together[0][0] == bytes.fromhex(rows[0].skeleton_id)  # 32 bytes
            assert together[0][-1] == sorted(bytes.fromhex(b) for b in (
                rows[0].skeleton_id, blob("s1"), blob("s2")))
            assert together[1][9] != "[]"  # kept: a decoded value has a line break
            assert [a.uid for a in batch] == [1, 2, 3]

    asyncio.run(run())


def test_claim_recent_gives_each_message_to_one_session(dsn: str) -> None:
    """\\Recent goes to the first session that claims it; later claims get only newer
    messages."""

    async def run() -> None:
        async with opened(dsn) as store:
            user, inbox = await new_user(store, "recent")
            for i in range(3):
                await store.messages.insert(user.id, inbox, sample_row(f"rc{i}"), [],
                                            internaldate=NOW)
            assert await store.messages.claim_recent(user.id, inbox) == (1, 4)
            assert await store.messages.claim_recent(user.id, inbox) == (4, 4)
            await store.messages.insert(user.id, inbox, sample_row("rc3"), [],
                                        internaldate=NOW)
            status = await store.mailboxes.status(user.id, inbox)
            assert status.recent == 1
            assert await store.messages.claim_recent(user.id, inbox) == (4, 5)
            with pytest.raises(NoSuchMailbox):
                await store.messages.claim_recent(user.id, 123_456_789)

    asyncio.run(run())


def test_an_insert_claims_recent_in_its_own_statement(dsn: str) -> None:
    """An insert asked to claim \\Recent takes every unclaimed message up to its own, as
    claim_recent would right after it; a refused insert claims nothing."""

    async def run() -> None:
        async with opened(dsn) as store:
            user, inbox = await new_user(store, "recent-insert")
            await store.messages.insert(user.id, inbox, sample_row("ri0"), [],
                                        internaldate=NOW)
            two = await store.messages.insert_many(user.id, inbox, [
                NewMessage(sample_row(f"ri{i}"), (), NOW) for i in (1, 2)], claim_recent=True)
            assert [(a.uid, a.recent) for a in two] == [(2, (1, 4)), (3, (1, 4))]
            assert (await store.mailboxes.status(user.id, inbox)).recent == 0
            assert await store.messages.claim_recent(user.id, inbox) == (4, 4)
            plain = await store.messages.insert(user.id, inbox, sample_row("ri3"), [],
                                                internaldate=NOW)
            assert plain.recent is None
            assert (await store.mailboxes.status(user.id, inbox)).recent == 1
            await store.users.set_quota("recent-insert", 1)
            with pytest.raises(OverQuota):
                await store.messages.insert_many(user.id, inbox, [
                    NewMessage(sample_row("ri4"), (), NOW)], claim_recent=True)
            assert await store.messages.claim_recent(user.id, inbox) == (4, 5)
            with pytest.raises(NoSuchMailbox):
                await store.messages.insert_many(user.id, 123_456_789, [
                    NewMessage(sample_row("ri5"), (), NOW)], claim_recent=True)

    asyncio.run(run())


def test_recent_goes_to_exactly_one_claimer_among_concurrent_inserts(dsn: str) -> None:
    """Inserts that claim \\Recent, plain deliveries and claim_recent calls racing on one
    mailbox: the claimed ranges never overlap, each claiming insert's range holds its own
    message, and with what is still unclaimed they cover every UID once."""
    tasks, rounds = 12, 6

    async def run() -> None:
        async with opened(dsn, pool_max=12) as store:
            user, inbox = await new_user(store, "recent-race")
            claims: list[tuple[int, int]] = []

            async def work(task: int) -> None:
                for i in range(rounds):
                    kind = (task + i) % 3
                    if kind == 0:
                        (done,) = await store.messages.insert_many(user.id, inbox, [
                            NewMessage(sample_row(f"rr{task}-{i}"), (), NOW)],
                            claim_recent=True)
                        assert done.recent is not None
                        assert done.recent[0] <= done.uid < done.recent[1]
                        claims.append(done.recent)
                    elif kind == 1:
                        await store.messages.insert(user.id, inbox,
                                                    sample_row(f"rr{task}-{i}"), [],
                                                    internaldate=NOW)
                    else:
                        claims.append(await store.messages.claim_recent(user.id, inbox))

            await asyncio.gather(*(work(t) for t in range(tasks)))
            mailbox = await store.mailboxes.get(user.id, "INBOX")
            unclaimed = (await store.mailboxes.status(user.id, inbox)).recent
            covered = [u for low, high in claims for u in range(low, high)]
            assert len(covered) == len(set(covered))
            total = mailbox.uidnext - 1
            assert total == tasks * rounds * 2 // 3
            assert sorted(covered) == list(range(1, total - unclaimed + 1))

    asyncio.run(run())


async def counted(dsn: str, user_id: int) -> dict[int, tuple[int, int, int, int]]:
    """Each mailbox's kept counters and, beside them, what counting the entries gives."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT mb.id, mb.n_messages, mb.n_unseen, mb.n_deleted, mb.total_size, "
            "mb.deleted_size, "
            "count(mm.uid) AS messages, count(mm.uid) FILTER (WHERE mm.flags & 1 = 0) AS unseen, "
            "count(mm.uid) FILTER (WHERE mm.flags & 8 <> 0) AS deleted, "
            "coalesce(sum(mm.size) FILTER (WHERE mm.flags & 8 <> 0), 0) AS deleted_bytes, "
            "coalesce(sum(mm.size), 0) AS size FROM mailboxes mb LEFT JOIN mailbox_messages mm "
            "ON mm.user_id = mb.user_id AND mm.mailbox_id = mb.id WHERE mb.user_id = $1 "
            "GROUP BY mb.user_id, mb.id", user_id)
    finally:
        await conn.close()
    for r in rows:
        kept = (r["n_messages"], r["n_unseen"], r["n_deleted"], r["total_size"])
        assert kept == (r["messages"], r["unseen"], r["deleted"], r["size"]), r["id"]
        assert r["deleted_size"] == r["deleted_bytes"], r["id"]
    return {r["id"]: (r["n_messages"], r["n_unseen"], r["n_deleted"], r["total_size"])
            for r in rows}


def test_mailbox_counters_follow_every_change_of_the_entries(dsn: str) -> None:
    """The mailbox row's MESSAGES, UNSEEN, \\Deleted and SIZE counters equal a count of the
    entries after inserts, STORE, COPY, MOVE, EXPUNGE, RENAME INBOX and DELETE, and STATUS
    answers from them."""

    async def run() -> None:
        async with opened(dsn) as store:
            user, inbox = await new_user(store, "counter")
            for i in range(4):
                await store.messages.insert(user.id, inbox, sample_row(f"ct{i}", size=10 + i),
                                            [], internaldate=NOW,
                                            flags=Flags(SEEN if i == 0 else 0))
            assert (await counted(dsn, user.id))[inbox] == (4, 3, 0, 46)
            await store.messages.store_flags(user.id, inbox, UidSet.from_uids([2, 3]), "add",
                                             Flags(SEEN | DELETED))
            await store.messages.store_flags(user.id, inbox, UidSet.from_uids([4]), "add",
                                             Flags(FLAGGED))
            assert (await counted(dsn, user.id))[inbox] == (4, 1, 2, 46)
            assert (await store.mailboxes.status(user.id, inbox)).deleted_size == 11 + 12
            trash = await store.mailboxes.get(user.id, "Trash")
            await store.messages.copy(user.id, inbox, UidSet.from_uids([1, 4]), trash.id)
            archive = await store.mailboxes.get(user.id, "Archive")
            await store.messages.move(user.id, inbox, UidSet.from_uids([4]), archive.id)
            await store.messages.expunge(user.id, inbox)
            counts = await counted(dsn, user.id)
            assert (counts[inbox], counts[trash.id], counts[archive.id]) == (
                (1, 0, 0, 10), (2, 1, 0, 23), (1, 1, 0, 13))
            status = await store.mailboxes.status(user.id, "Trash")
            assert (status.messages, status.unseen, status.deleted, status.size,
                    status.recent, status.first_unseen_uid) == (2, 1, 0, 23, 2, 2)
            renamed = await store.mailboxes.rename(user.id, "INBOX", "Old")
            await store.mailboxes.delete(user.id, "Archive")
            counts = await counted(dsn, user.id)
            assert counts[renamed.id] == (1, 0, 0, 10)
            assert counts[inbox] == (0, 0, 0, 0)

    asyncio.run(run())


def test_statement_timeouts_cancel_long_queries_and_search_has_its_own(dsn: str) -> None:
    """A statement that waits past ``statement_timeout`` fails with QueryTooLong and the pool
    goes on; a substring SEARCH (and SORT) runs under ``search_timeout`` instead, longer or
    shorter, and its pool goes on too."""

    async def blocked(work: Awaitable[T], hold: float) -> T:
        """Run ``work`` while another transaction holds mailbox_messages for ``hold`` s."""
        locker = await asyncpg.connect(dsn)
        try:
            async with locker.transaction():
                await locker.execute("LOCK TABLE mailbox_messages IN ACCESS EXCLUSIVE MODE")
                running = asyncio.ensure_future(work)
                await asyncio.sleep(hold)
            return await running
        finally:
            await locker.close()

    async def blocked_search(store: MetadataStore, user_id: int, inbox: int,
                             criterion: Criterion, hold: float) -> SearchHits:
        return await blocked(store.messages.search(user_id, inbox, criterion), hold)

    async def run() -> None:
        store = await MetadataStore.open(dsn, pool_min=1, pool_max=2,
                                         password_params=FAST_SCRYPT, statement_timeout=0.3,
                                         search_timeout=3.0)
        try:
            user, inbox = await new_user(store, "patient")
            await store.messages.insert(user.id, inbox, sample_row("to1"), [],
                                        internaldate=NOW)
            with pytest.raises(QueryTooLong):
                await blocked_search(store, user.id, inbox, HasFlag(SEEN), 1.0)
            # Waiting longer than statement_timeout, within search_timeout.
            hits = await blocked_search(store, user.id, inbox, BodyContains("zzz"), 0.8)
            assert hits.uids == ()
            assert await store.messages.uids(user.id, inbox) == [1]
        finally:
            await store.close()
        store = await MetadataStore.open(dsn, pool_min=1, pool_max=2,
                                         password_params=FAST_SCRYPT, statement_timeout=30.0,
                                         search_timeout=0.3)
        try:
            with pytest.raises(QueryTooLong):
                await blocked_search(store, user.id, inbox, BodyContains("zzz"), 1.0)
            with pytest.raises(QueryTooLong):
                await blocked(store.messages.sort_order(user.id, inbox, BodyContains("zzz"),
                                                        [("SUBJECT", False)]), 1.0)
            # Within the timeout, on the same (single) search connection.
            hits = await blocked_search(store, user.id, inbox, BodyContains("zzz"), 0.1)
            assert hits.uids == ()
        finally:
            await store.close()

    asyncio.run(run())
