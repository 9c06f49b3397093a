"""System tests of mailbox operations against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Iterator

import pytest

from metadata.errors import InvalidName, MailboxExists, MailboxRefused, NoSuchMailbox
from metadata.flags import DELETED, SEEN, Flags
from metadata.mailboxes import DEFAULT_MAILBOXES
from metadata.records import ListedMailbox, User
from metadata.store import MetadataStore
from metadata.uidset import UidSet
from tests.metadata_support import FAST_SCRYPT, blob, fresh_database, sample_row

NOW = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def dsn(postgres: str) -> Iterator[str]:
    with fresh_database(postgres) as target:
        yield target


@contextlib.asynccontextmanager
async def opened(dsn: str) -> AsyncIterator[MetadataStore]:
    store = await MetadataStore.open(dsn, pool_min=1, pool_max=4, password_params=FAST_SCRYPT)
    try:
        yield store
    finally:
        await store.close()


async def user_named(store: MetadataStore, name: str) -> User:
    return await store.users.create(name, "pw")


def names(listed: list[ListedMailbox]) -> list[str]:
    return [m.name for m in listed]


def test_default_mailboxes_carry_special_use(dsn: str) -> None:
    """A new user has INBOX, Drafts, Sent, Trash, Junk and Archive, subscribed, the last
    five with their SPECIAL-USE attribute, and distinct UIDVALIDITYs."""

    async def run() -> None:
        async with opened(dsn) as store:
            user = await user_named(store, "defaults")
            listed = await store.mailboxes.list(user.id)
            assert names(listed) == ["INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash"]
            by_name = {m.name: m for m in listed}
            for name, special in DEFAULT_MAILBOXES:
                attrs = by_name[name].attributes
                assert "\\Subscribed" in attrs and "\\HasNoChildren" in attrs
                assert (special in attrs) if special else not any(
                    a in attrs for a in ("\\Drafts", "\\Sent", "\\Trash", "\\Junk", "\\Archive"))
            validities = {m.mailbox.uidvalidity for m in listed if m.mailbox}
            assert len(validities) == 6

    asyncio.run(run())


def test_create_makes_ancestors_and_refuses_duplicates(dsn: str) -> None:
    """CREATE a/b/c creates a and a/b too; creating an existing name or an invalid one
    fails; a trailing delimiter is ignored; INBOX is found in any case."""

    async def run() -> None:
        async with opened(dsn) as store:
            user = await user_named(store, "creator")
            created = await store.mailboxes.create(user.id, "Projects/2024/Q1/")
            assert created.name == "Projects/2024/Q1" and created.uidnext == 1
            listed = await store.mailboxes.list(user.id, "Projects*")
            assert names(listed) == ["Projects", "Projects/2024", "Projects/2024/Q1"]
            assert "\\HasChildren" in listed[0].attributes
            assert "\\HasNoChildren" in listed[2].attributes
            with pytest.raises(MailboxExists):
                await store.mailboxes.create(user.id, "Projects/2024")
            with pytest.raises(MailboxExists):
                await store.mailboxes.create(user.id, "inbox")
            with pytest.raises(InvalidName):
                await store.mailboxes.create(user.id, "bad//name")
            with pytest.raises(ValueError):
                await store.mailboxes.create(user.id, "Odd", special_use="\\Bogus")
            flagged = await store.mailboxes.create(user.id, "Starred", special_use="\\Flagged")
            assert flagged.special_use == "\\Flagged"
            assert (await store.mailboxes.get(user.id, "iNbOx")).name == "INBOX"
            with pytest.raises(NoSuchMailbox):
                await store.mailboxes.get(user.id, "Nope")

    asyncio.run(run())


def test_list_patterns(dsn: str) -> None:
    """LIST with % stops at the delimiter, * does not; the pattern is matched exactly except
    for INBOX."""

    async def run() -> None:
        async with opened(dsn) as store:
            user = await user_named(store, "lister")
            await store.mailboxes.create(user.id, "INBOX/Lists/python")
            await store.mailboxes.create(user.id, "Archive/2023")
            assert names(await store.mailboxes.list(user.id, "%")) == [
                "INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash"]
            assert names(await store.mailboxes.list(user.id, "inbox/%")) == ["INBOX/Lists"]
            assert names(await store.mailboxes.list(user.id, "INBOX*")) == [
                "INBOX", "INBOX/Lists", "INBOX/Lists/python"]
            assert names(await store.mailboxes.list(user.id, "*/%")) == [
                "INBOX/Lists", "INBOX/Lists/python", "Archive/2023"]
            assert names(await store.mailboxes.list(user.id, "archive")) == []

    asyncio.run(run())


def test_rename_moves_the_subtree_and_its_subscriptions(dsn: str) -> None:
    """RENAME renames the mailbox and its children, keeps UIDVALIDITY and messages, moves
    subscriptions, creates the new ancestors, and refuses clashes."""

    async def run() -> None:
        async with opened(dsn) as store:
            user = await user_named(store, "renamer")
            child = await store.mailboxes.create(user.id, "Work/Clients/Acme")
            await store.mailboxes.subscribe(user.id, "Work/Clients/Acme")
            await store.messages.insert(user.id, child.id, sample_row("rn"), [],
                                        internaldate=NOW)
            await store.mailboxes.create(user.id, "Other")
            with pytest.raises(MailboxExists):
                await store.mailboxes.rename(user.id, "Work", "Other")
            with pytest.raises(MailboxRefused):
                await store.mailboxes.rename(user.id, "Work", "Work/Sub")
            with pytest.raises(NoSuchMailbox):
                await store.mailboxes.rename(user.id, "Missing", "Found")

            renamed = await store.mailboxes.rename(user.id, "Work", "Old/Jobs")
            assert renamed.name == "Old/Jobs"
            assert names(await store.mailboxes.list(user.id, "*Jobs*")) == [
                "Old/Jobs", "Old/Jobs/Clients", "Old/Jobs/Clients/Acme"]
            assert names(await store.mailboxes.list(user.id, "Work*")) == []
            moved = await store.mailboxes.get(user.id, "Old/Jobs/Clients/Acme")
            assert (moved.id, moved.uidvalidity) == (child.id, child.uidvalidity)
            assert await store.messages.uids(user.id, moved.id) == [1]
            assert (await store.mailboxes.get(user.id, "Old")).noselect is False
            subscribed = names(await store.mailboxes.list(user.id, "*", subscribed_only=True))
            assert "Old/Jobs/Clients/Acme" in subscribed
            assert "Work/Clients/Acme" not in subscribed

    asyncio.run(run())


def test_rename_inbox_moves_its_messages(dsn: str) -> None:
    """RENAME INBOX moves the messages to a new mailbox (new UIDs from 1) and leaves INBOX
    existing and empty, its children untouched."""

    async def run() -> None:
        async with opened(dsn) as store:
            user = await user_named(store, "inboxrenamer")
            inbox = await store.mailboxes.get(user.id, "INBOX")
            await store.mailboxes.create(user.id, "INBOX/Keep")
            for i in range(3):
                await store.messages.insert(user.id, inbox.id, sample_row(f"ir{i}", size=5),
                                            [], internaldate=NOW, flags=Flags(SEEN * (i % 2)))
            await store.messages.store_flags(user.id, inbox.id, UidSet.from_uids([1]), "add",
                                             Flags(DELETED))
            await store.messages.expunge(user.id, inbox.id)
            old = await store.mailboxes.rename(user.id, "inbox", "Old Mail")
            assert await store.messages.uids(user.id, old.id) == [1, 2]
            assert old.uidnext == 3
            entries = await store.messages.fetch(user.id, old.id, UidSet.all())
            assert [e.flags.system for e in entries] == [SEEN, 0]
            assert await store.messages.uids(user.id, inbox.id) == []
            assert (await store.mailboxes.get(user.id, "INBOX")).id == inbox.id
            assert (await store.mailboxes.get(user.id, "INBOX/Keep")).name == "INBOX/Keep"
            usage = await store.users.get_by_id(user.id)
            assert (usage.used_bytes, usage.message_count) == (10, 2)

    asyncio.run(run())


def test_delete_expunges_drops_references_and_keeps_parents(dsn: str) -> None:
    """DELETE removes a leaf with its messages and references; a parent with children
    becomes \\Noselect (and can then not be deleted twice); INBOX cannot be deleted; a
    recreated name gets a larger UIDVALIDITY."""

    async def run() -> None:
        async with opened(dsn) as store:
            user = await user_named(store, "deleter")
            leaf = await store.mailboxes.create(user.id, "Lists/Old")
            parent = await store.mailboxes.get(user.id, "Lists")
            part = blob("delete-me")
            await store.messages.insert(user.id, leaf.id, sample_row("d1", size=40), [part],
                                        internaldate=NOW)
            await store.messages.insert(user.id, parent.id, sample_row("d2", size=60), [part],
                                        internaldate=NOW)
            assert await store.references.count(part) == 2

            await store.mailboxes.delete(user.id, "Lists")
            listed = {m.name: m for m in await store.mailboxes.list(user.id, "Lists*")}
            assert "\\Noselect" in listed["Lists"].attributes
            assert "\\HasChildren" in listed["Lists"].attributes
            assert await store.references.count(part) == 1
            with pytest.raises(NoSuchMailbox):
                await store.mailboxes.get(user.id, "Lists")
            with pytest.raises(NoSuchMailbox):
                await store.mailboxes.status(user.id, "Lists")
            with pytest.raises(MailboxRefused):
                await store.mailboxes.delete(user.id, "Lists")

            await store.mailboxes.delete(user.id, "Lists/Old")
            assert await store.references.count(part) == 0
            usage = await store.users.get_by_id(user.id)
            assert (usage.used_bytes, usage.message_count) == (0, 0)
            await store.mailboxes.delete(user.id, "Lists")
            assert names(await store.mailboxes.list(user.id, "Lists*")) == []
            with pytest.raises(NoSuchMailbox):
                await store.mailboxes.delete(user.id, "Lists")
            with pytest.raises(MailboxRefused):
                await store.mailboxes.delete(user.id, "inbox")

            again = await store.mailboxes.create(user.id, "Lists/Old")
            assert again.uidvalidity > leaf.uidvalidity
            # A \Noselect parent can be made a mailbox again by CREATE.
            await store.mailboxes.delete(user.id, "Lists")
            revived = await store.mailboxes.create(user.id, "Lists")
            assert not revived.noselect and revived.uidvalidity > again.uidvalidity

    asyncio.run(run())


def test_subscriptions_and_lsub(dsn: str) -> None:
    """Subscriptions may name missing mailboxes and survive deletion; LSUB "%" lists the
    parent of a deeper subscription as \\Noselect."""

    async def run() -> None:
        async with opened(dsn) as store:
            user = await user_named(store, "subscriber")
            await store.mailboxes.create(user.id, "News/Tech")
            assert await store.mailboxes.subscribe(user.id, "News/Tech") is True
            assert await store.mailboxes.subscribe(user.id, "News/Tech") is False
            assert await store.mailboxes.subscribe(user.id, "Ghost") is True
            lsub = {m.name: m for m in await store.mailboxes.list(user.id, "%",
                                                                  subscribed_only=True)}
            assert "\\Noselect" in lsub["News"].attributes
            assert "\\NonExistent" in lsub["Ghost"].attributes
            assert "News/Tech" not in lsub
            await store.mailboxes.delete(user.id, "News/Tech")
            deep = names(await store.mailboxes.list(user.id, "News/*", subscribed_only=True))
            assert deep == ["News/Tech"]
            assert await store.mailboxes.unsubscribe(user.id, "News/Tech") is True
            assert await store.mailboxes.unsubscribe(user.id, "News/Tech") is False

    asyncio.run(run())


def test_status_counts(dsn: str) -> None:
    """STATUS counts messages, unseen, deleted, recent and size from one snapshot, by id
    or by name."""

    async def run() -> None:
        async with opened(dsn) as store:
            user = await user_named(store, "counter")
            inbox = await store.mailboxes.get(user.id, "INBOX")
            for i, flags in enumerate([SEEN, 0, SEEN | DELETED, 0]):
                await store.messages.insert(user.id, inbox.id, sample_row(f"s{i}", size=100 + i),
                                            [], internaldate=NOW, flags=Flags(flags))
            status = await store.mailboxes.status(user.id, "inbox")
            assert (status.messages, status.unseen, status.deleted, status.recent) == (4, 2, 1, 4)
            assert status.size == 406 and status.first_unseen_uid == 2
            assert status.uidnext == 5 and status.uidvalidity == inbox.uidvalidity
            assert status.highestmodseq == 5
            await store.messages.claim_recent(user.id, inbox.id)
            assert (await store.mailboxes.status(user.id, inbox.id)).recent == 0
            with pytest.raises(NoSuchMailbox):
                await store.mailboxes.status(user.id, 10**9)

    asyncio.run(run())


def test_statuses_of_many_mailboxes_in_one_statement(dsn: str) -> None:
    """statuses() gives every listed selectable mailbox the counts status() gives it (the
    first unseen UID aside), leaves out \\Noselect names and unknown ids, and reports
    \\Recent as 0 when not asked to count it; tree() is the names and subscriptions."""

    async def run() -> None:
        async with opened(dsn) as store:
            user = await user_named(store, "many")
            await store.mailboxes.create(user.id, "Work/Reports")
            await store.mailboxes.delete(user.id, "Work")  # kept as \Noselect
            tree = await store.mailboxes.tree(user.id)
            boxes = {b.name: b for b in tree.mailboxes}
            assert set(boxes) == {"INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash",
                                  "Work", "Work/Reports"}
            assert boxes["Work"].noselect
            assert tree.subscribed == {"INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash"}
            for i, flags in enumerate([SEEN, 0, DELETED]):
                await store.messages.insert(user.id, boxes["Work/Reports"].id,
                                            sample_row(f"m{i}", size=2000 + i), [],
                                            internaldate=NOW, flags=Flags(flags))
            ids = [b.id for b in tree.mailboxes] + [10**9]
            found = await store.mailboxes.statuses(user.id, ids)
            assert set(found) == {b.id for b in tree.mailboxes if not b.noselect}
            for box_id, many in found.items():
                one = await store.mailboxes.status(user.id, box_id)
                assert many == dataclasses.replace(one, first_unseen_uid=None)
            reports = found[boxes["Work/Reports"].id]
            assert (reports.messages, reports.unseen, reports.deleted, reports.recent,
                    reports.size, reports.deleted_size) == (3, 2, 1, 3, 6003, 2002)
            counters = await store.mailboxes.statuses(user.id, ids, recent=False)
            assert counters[boxes["Work/Reports"].id] == dataclasses.replace(
                reports, recent=0)
            assert await store.mailboxes.statuses(user.id, []) == {}

    asyncio.run(run())
