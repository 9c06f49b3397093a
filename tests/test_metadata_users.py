"""System tests of the user directory against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from metadata.errors import InvalidName, InvalidPassword, NoSuchMailbox, NoSuchUser, UserExists
from metadata.passwords import ScryptParams, verify_password
from metadata.store import MetadataStore
from tests.metadata_support import FAST_SCRYPT, blob, fresh_database, sample_row

NOW = dt.datetime(2024, 6, 1, 8, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def dsn(postgres: str) -> Iterator[str]:
    with fresh_database(postgres) as target:
        yield target


@contextlib.asynccontextmanager
async def opened(dsn: str, params: ScryptParams = FAST_SCRYPT) -> AsyncIterator[MetadataStore]:
    store = await MetadataStore.open(dsn, pool_min=1, pool_max=4, password_params=params)
    try:
        yield store
    finally:
        await store.close()


async def per_user_tables(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT table_name FROM information_schema.columns WHERE table_schema = 'public' "
        "AND column_name = 'user_id' ORDER BY table_name")
    return [r["table_name"] for r in rows]


def test_create_and_authenticate(dsn: str) -> None:
    """A created user logs in with their password under any case of the name; a wrong
    password or unknown name gets None; the stored hash is salted scrypt, never the
    password."""

    async def run() -> None:
        async with opened(dsn) as store:
            user = await store.users.create("Carol@Example.org", "correct horse",
                                            quota_bytes=2 << 30)
            assert (user.name, user.quota_bytes, user.used_bytes) == (
                "Carol@Example.org", 2 << 30, 0)
            assert (await store.users.authenticate("carol@example.org", "correct horse")) == user
            assert await store.users.authenticate("Carol@Example.org", "wrong") is None
            assert await store.users.authenticate("nobody", "correct horse") is None
            conn = await asyncpg.connect(dsn)
            stored = await conn.fetchval("SELECT password_hash FROM users WHERE id = $1", user.id)
            await conn.close()
            assert stored.startswith("$scrypt$ln=4,r=8,p=1$")
            assert "correct horse" not in stored

    asyncio.run(run())


def test_names_are_unique_case_insensitively_and_validated(dsn: str) -> None:
    """A second user with the same name in another case is refused; invalid names and
    negative quotas are refused before anything is stored."""

    async def run() -> None:
        async with opened(dsn) as store:
            await store.users.create("dave", "pw")
            with pytest.raises(UserExists):
                await store.users.create("DAVE", "pw")
            for bad in ("", "with space", "tab\tname", "x" * 256):
                with pytest.raises(InvalidName):
                    await store.users.create(bad, "pw")
            with pytest.raises(ValueError):
                await store.users.create("erin", "pw", quota_bytes=-1)
            with pytest.raises(InvalidPassword):
                await store.users.create("erin", "")
            with pytest.raises(NoSuchUser):
                await store.users.get("erin")

    asyncio.run(run())


def test_password_change_and_rehash(dsn: str) -> None:
    """passwd replaces the password; a login with a hash of older parameters upgrades it."""

    async def run() -> None:
        async with opened(dsn) as store:
            await store.users.create("frank", "old")
            await store.users.set_password("FRANK", "new")
            assert await store.users.authenticate("frank", "old") is None
            assert await store.users.authenticate("frank", "new") is not None
            with pytest.raises(NoSuchUser):
                await store.users.set_password("ghost", "x")
        stronger = ScryptParams(log_n=5)
        async with opened(dsn, stronger) as store:
            assert await store.users.authenticate("frank", "new") is not None
            conn = await asyncpg.connect(dsn)
            stored = await conn.fetchval("SELECT password_hash FROM users WHERE name = 'frank'")
            await conn.close()
            assert stored.startswith("$scrypt$ln=5,")
            assert await store.users.authenticate("frank", "new") is not None

    asyncio.run(run())


def test_quota_list_and_totals(dsn: str) -> None:
    """Quota can be changed (0 = unlimited); list shows every user by name with usage;
    totals sum the usage."""

    async def run() -> None:
        async with opened(dsn) as store:
            george = await store.users.create("george", "pw")
            inbox = await store.mailboxes.get(george.id, "INBOX")
            await store.messages.insert(george.id, inbox.id, sample_row("g", size=321), [],
                                        internaldate=NOW)
            updated = await store.users.set_quota("george", 1 << 20)
            assert (updated.quota_bytes, updated.used_bytes, updated.message_count) == (
                1 << 20, 321, 1)
            with pytest.raises(NoSuchUser):
                await store.users.set_quota("nobody", 5)
            listed = await store.users.list()
            assert [u.name.lower() for u in listed] == sorted(u.name.lower() for u in listed)
            assert "george" in [u.name for u in listed]
            totals = await store.users.totals()
            assert totals.users == len(listed)
            assert totals.bytes == sum(u.used_bytes for u in listed)
            assert totals.entries == sum(u.message_count for u in listed)

    asyncio.run(run())


def test_delete_removes_every_row_of_the_user(dsn: str) -> None:
    """Deleting a user removes their rows from every per-user table (mailboxes, messages,
    references, entries, tombstones, subscriptions, usage) and nobody else's."""

    async def run() -> None:
        async with opened(dsn) as store:
            doomed = await store.users.create("harry", "pw")
            keeper = await store.users.create("irene", "pw")
            for user in (doomed, keeper):
                inbox = await store.mailboxes.get(user.id, "INBOX")
                for i in range(3):
                    await store.messages.insert(user.id, inbox.id, sample_row(f"h{i}"),
                                                [blob("shared-part")], internaldate=NOW)
                await store.mailboxes.create(user.id, "Folder/Sub")
            gone = await store.users.delete("HARRY")
            assert (gone.name, gone.mailboxes, gone.messages, gone.references) == (
                "harry", 8, 3, 6)
            conn = await asyncpg.connect(dsn)
            try:
                tables = await per_user_tables(conn)
                assert {"mailboxes", "messages", "message_blobs", "mailbox_messages",
                        "subscriptions", "user_usage", "expunged_uids"} <= set(tables)
                for table in tables:
                    left = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE user_id = $1",
                                               doomed.id)
                    assert left == 0, table
                assert await conn.fetchval("SELECT count(*) FROM users WHERE id = $1",
                                           doomed.id) == 0
                assert await conn.fetchval("SELECT count(*) FROM messages WHERE user_id = $1",
                                           keeper.id) == 3
            finally:
                await conn.close()
            assert await store.references.count(blob("shared-part")) >= 3
            with pytest.raises(NoSuchUser):
                await store.users.delete("harry")
            assert await store.users.authenticate("harry", "pw") is None

    asyncio.run(run())


def test_a_verified_password_skips_scrypt_until_it_changes(dsn: str) -> None:
    """A second login with the same password runs no scrypt; a password changed by
    another process is refused at once, and the new one accepted."""
    calls: list[str] = []

    def counting(password: str, stored: str) -> bool:
        calls.append(password)
        return verify_password(password, stored)

    async def run() -> None:
        async with opened(dsn) as store, opened(dsn) as admin:
            store.users._verify = counting
            await store.users.create("ivan", "first")
            assert await store.users.authenticate("ivan", "first") is not None
            assert calls == ["first"]
            for _ in range(20):
                assert await store.users.authenticate("IVAN", "first") is not None
            assert calls == ["first"]
            assert await store.users.authenticate("ivan", "wrong") is None
            assert calls == ["first", "wrong"]
            await admin.users.set_password("ivan", "second")
            assert await store.users.authenticate("ivan", "first") is None
            assert await store.users.authenticate("ivan", "second") is not None
            assert calls == ["first", "wrong", "first", "second"]

    asyncio.run(run())


def test_recipient_gives_the_inbox_id_with_the_user(dsn: str) -> None:
    """``recipient`` is ``first_of`` plus the user's INBOX id from the same query: each
    user's own INBOX, the one ``mailboxes.get`` finds; none when it is ``\\Noselect``."""
    async def go() -> None:
        async with opened(dsn) as store:
            one = await store.users.create("rcpt1", "secret")
            two = await store.users.create("rcpt2", "secret")
            for user, names in ((one, ["RCPT1@example.org", "rcpt1"]),
                                (two, ["rcpt2@example.org", "rcpt2"])):
                which, found, inbox = await store.users.recipient(names)
                assert (which, found.id) == (1, user.id)
                assert inbox == (await store.mailboxes.get(user.id, "INBOX")).id
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute("UPDATE mailboxes SET noselect = true WHERE user_id = $1 "
                                   "AND name = 'INBOX'", two.id)
            finally:
                await conn.close()
            assert (await store.users.recipient(["rcpt2"]))[2] is None
            with pytest.raises(NoSuchUser):
                await store.users.recipient(["nobody"])

    asyncio.run(go())


def test_first_of_prefers_the_earlier_name(dsn: str) -> None:
    """``first_of`` answers the first candidate that names a user (any case), with its
    index; a NUL or no match at all is NoSuchUser."""
    async def go() -> None:
        async with opened(dsn) as store:
            await store.users.create("firstof@example.org", "secret")
            await store.users.create("firstof", "secret")
            which, user = await store.users.first_of(["FirstOf@Example.org", "firstof"])
            assert (which, user.name) == (0, "firstof@example.org")
            which, user = await store.users.first_of(["other@example.org", "FIRSTOF"])
            assert (which, user.name) == (1, "firstof")
            which, user = await store.users.first_of(["firstof\x00@x", "firstof"])
            assert (which, user.name) == (1, "firstof")
            for names in (["nobody@x", "nobody"], ["a\x00b"], []):
                with pytest.raises(NoSuchUser):
                    await store.users.first_of(names)

    asyncio.run(go())


def test_get_with_mailbox_is_get_then_mailboxes_get(dsn: str) -> None:
    """One query answers what ``users.get`` then ``mailboxes.get`` would, errors in the
    same order: no user first, then an invalid name, then no (selectable) mailbox."""
    async def go() -> None:
        async with opened(dsn) as store:
            user = await store.users.create("withbox", "secret")
            await store.mailboxes.create(user.id, "Lists/dev")
            for name in ("INBOX", "inbox", "Sent", "Lists/dev"):
                got = await store.users.get_with_mailbox("WithBox", name)
                assert got == (await store.users.get("withbox"),
                               await store.mailboxes.get(user.id, name))
            with pytest.raises(NoSuchMailbox) as missing:
                await store.users.get_with_mailbox("withbox", "Nope")
            with pytest.raises(NoSuchMailbox) as expected:
                await store.mailboxes.get(user.id, "Nope")
            assert str(missing.value) == str(expected.value)
            await store.mailboxes.delete(user.id, "Lists")  # has a child: \Noselect
            with pytest.raises(NoSuchMailbox):
                await store.users.get_with_mailbox("withbox", "Lists")
            for bad in ("nobody", "with\x00box"):
                with pytest.raises(NoSuchUser):
                    await store.users.get_with_mailbox(bad, "INBOX")
                with pytest.raises(NoSuchUser):
                    await store.users.get_with_mailbox(bad, "a\x00b")
            with pytest.raises(InvalidName):
                await store.users.get_with_mailbox("withbox", "a\x00b")

    asyncio.run(go())
