"""LIST-EXTENDED, LIST-STATUS and QUOTA handled by the IMAP session over a real PostgreSQL
(see tests/imapd_support.py for the harness)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from tests.imapd_support import Env, environment
from tests.metadata_support import fresh_database


@pytest.fixture(scope="module")
def dsn(postgres: str) -> Iterator[str]:
    with fresh_database(postgres) as target:
        yield target


def run(dsn: str, body: Callable[[Env], Awaitable[None]], **imapd: Any) -> None:
    async def main() -> None:
        async with environment(dsn, **imapd) as env:
            await body(env)

    asyncio.run(main())


_counter = iter(range(1_000_000))


def fresh(name: str) -> str:
    """A user name no other test of the module uses (one database per module)."""
    return f"{name}{next(_counter)}"


def append_line(tag: str, mailbox: str, raw: bytes, extra: str = "") -> bytes:
    """An APPEND with a non-synchronizing literal (LITERAL+)."""
    return f"{tag} APPEND {mailbox} {extra}{{{len(raw)}+}}\r\n".encode() + raw + b"\r\n"


def test_list_extended_on_rfc5258s_mailboxes(dsn: str) -> None:
    """The RFC 5258 example hierarchy built with CREATE/SUBSCRIBE/DELETE: LIST (SUBSCRIBED)
    shows a subscription of nothing as \\NonExistent, RECURSIVEMATCH adds CHILDINFO, several
    patterns list each name once, LSUB keeps its RFC 3501 answer, and LIST-EXTENDED is
    announced."""

    async def body(env: Env) -> None:
        name = fresh("fruit")
        await env.user(name)
        c = env.client()
        assert b" LIST-EXTENDED " in await c.login(name)
        for mailbox in ("Fruit/Apple", "Fruit/Banana", "Fruit/Peach", "Tofu",
                        "Vegetable/Broccoli", "Vegetable/Corn"):
            assert (await c.send(f"a CREATE {mailbox}")).startswith(b"a OK")
        for mailbox in ("Fruit/Banana", "Fruit/Peach", "Vegetable", "Vegetable/Broccoli"):
            assert (await c.send(f"b SUBSCRIBE {mailbox}")).startswith(b"b OK")
        assert (await c.send("c DELETE Fruit/Peach")).startswith(b"c OK")
        assert await c.send('A02 LIST (SUBSCRIBED) "" "*"') == (
            b'* LIST (\\HasNoChildren \\Subscribed) "/" "INBOX"\r\n'
            b'* LIST (\\HasNoChildren \\Subscribed \\Archive) "/" "Archive"\r\n'
            b'* LIST (\\HasNoChildren \\Subscribed \\Drafts) "/" "Drafts"\r\n'
            b'* LIST (\\HasNoChildren \\Subscribed) "/" "Fruit/Banana"\r\n'
            b'* LIST (\\HasNoChildren \\NonExistent \\Subscribed) "/" "Fruit/Peach"\r\n'
            b'* LIST (\\HasNoChildren \\Subscribed \\Junk) "/" "Junk"\r\n'
            b'* LIST (\\HasNoChildren \\Subscribed \\Sent) "/" "Sent"\r\n'
            b'* LIST (\\HasNoChildren \\Subscribed \\Trash) "/" "Trash"\r\n'
            b'* LIST (\\HasChildren \\Subscribed) "/" "Vegetable"\r\n'
            b'* LIST (\\HasNoChildren \\Subscribed) "/" "Vegetable/Broccoli"\r\n'
            b"A02 OK List completed\r\n")
        assert await c.send('A04 LIST (SUBSCRIBED RECURSIVEMATCH) "" "%" RETURN (CHILDREN)'
                            ) == (
            b'* LIST (\\HasNoChildren \\Subscribed) "/" "INBOX"\r\n'
            b'* LIST (\\HasNoChildren \\Subscribed \\Archive) "/" "Archive"\r\n'
            b'* LIST (\\HasNoChildren \\Subscribed \\Drafts) "/" "Drafts"\r\n'
            b'* LIST (\\HasChildren) "/" "Fruit" ("CHILDINFO" ("SUBSCRIBED"))\r\n'
            b'* LIST (\\HasNoChildren \\Subscribed \\Junk) "/" "Junk"\r\n'
            b'* LIST (\\HasNoChildren \\Subscribed \\Sent) "/" "Sent"\r\n'
            b'* LIST (\\HasNoChildren \\Subscribed \\Trash) "/" "Trash"\r\n'
            b'* LIST (\\HasChildren \\Subscribed) "/" "Vegetable" ("CHILDINFO" ("SUBSCRIBED"))'
            b"\r\n"
            b"A04 OK List completed\r\n")
        assert await c.send('A05 LIST "" ("Vegetable/%" "INBOX" "*/Broccoli")') == (
            b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n'
            b'* LIST (\\HasNoChildren) "/" "Vegetable/Broccoli"\r\n'
            b'* LIST (\\HasNoChildren) "/" "Vegetable/Corn"\r\n'
            b"A05 OK List completed\r\n")
        assert await c.send('A06 LIST (SPECIAL-USE) "" "S*"') == (
            b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"\r\nA06 OK List completed\r\n')
        assert await c.send('A07 LSUB "" "Fruit/%"') == (
            b'* LSUB (\\HasNoChildren) "/" "Fruit/Banana"\r\n'
            b'* LSUB (\\HasNoChildren \\Noselect) "/" "Fruit/Peach"\r\n'
            b"A07 OK Lsub completed\r\n")
        assert (await c.send('A08 LIST (RECURSIVEMATCH) "" "*"')).startswith(b"A08 BAD ")
        assert (await c.send('A09 LIST "" "*" RETURN (MYRIGHTS)')).startswith(b"A09 BAD ")

    run(dsn, body)


def test_list_status_reports_every_listed_mailbox_from_the_counters(dsn: str) -> None:
    """LIST ... RETURN (STATUS (...)) follows each selectable mailbox's LIST with its STATUS,
    the same numbers STATUS gives; none for \\Noselect or CHILDINFO-only names."""

    async def body(env: Env) -> None:
        name = fresh("lst")
        await env.user(name)
        c = env.client()
        await c.login(name)
        assert (await c.send("a CREATE Work/Reports")).startswith(b"a OK")
        assert (await c.send("a2 SUBSCRIBE Work/Reports")).startswith(b"a2 OK")
        assert (await c.send("a3 DELETE Work")).startswith(b"a3 OK")  # \Noselect
        for i in range(3):
            raw = f"Subject: {i}\r\n\r\nbody {i}\r\n".encode()
            flags = "(\\Seen) " if i == 0 else ""
            assert (await c.send(append_line("b", "Work/Reports", raw, flags))).startswith(
                b"b OK")
        status = await c.send("c STATUS Work/Reports (MESSAGES UNSEEN SIZE DELETED)")
        expected = status.split(b"\r\n")[0]
        assert expected.startswith(b'* STATUS "Work/Reports" (MESSAGES 3 UNSEEN 2 SIZE ')
        listing = await c.send(
            'd LIST "" "Work*" RETURN (STATUS (MESSAGES UNSEEN SIZE DELETED))')
        assert listing == (
            b'* LIST (\\HasChildren \\Noselect) "/" "Work"\r\n'
            b'* LIST (\\HasNoChildren) "/" "Work/Reports"\r\n' + expected + b"\r\n"
            b"d OK List completed\r\n")
        recursive = await c.send(
            'e LIST (SUBSCRIBED RECURSIVEMATCH) "" "W%" RETURN (STATUS (MESSAGES))')
        assert recursive == (
            b'* LIST (\\HasChildren \\Noselect) "/" "Work" ("CHILDINFO" ("SUBSCRIBED"))\r\n'
            b"e OK List completed\r\n")
        everything = await c.send('f LIST "" "*" RETURN (STATUS (MESSAGES UIDNEXT))')
        assert everything.count(b"* STATUS ") == 7  # the six defaults and Work/Reports
        assert b'* STATUS "Work/Reports" (MESSAGES 3 UIDNEXT 4)\r\n' in everything

    run(dsn, body)
