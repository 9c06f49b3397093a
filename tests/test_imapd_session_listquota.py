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


def test_getquota_and_getquotaroot_report_the_users_counters(dsn: str) -> None:
    """GETQUOTAROOT names the root "" for every mailbox and GETQUOTA "" reports STORAGE in
    KiB and MESSAGE as counted by APPEND, COPY and EXPUNGE; QUOTA is announced, SETQUOTA is
    NO [NOPERM], an unknown root NO [NONEXISTENT]; a mailbox that does not exist (yet) is
    under the root "" too (RFC 9208 4.1.2)."""

    async def body(env: Env) -> None:
        name = fresh("quo")
        await env.user(name, quota=512 * 1024)
        await env.store.users.set_quota(name, None, 1000)
        c = env.client()
        caps = await c.login(name)
        assert b" QUOTA QUOTA=RES-STORAGE QUOTA=RES-MESSAGE " in caps
        assert b"QUOTASET" not in caps
        assert await c.send("A003 GETQUOTAROOT INBOX") == (
            b'* QUOTAROOT "INBOX" ""\r\n* QUOTA "" (STORAGE 0 512 MESSAGE 0 1000)\r\n'
            b"A003 OK Getquotaroot completed\r\n")
        raw = b"Subject: q\r\n\r\n" + b"x" * 3000 + b"\r\n"  # 3016 octets: 3 KiB rounded up
        for tag in ("b1", "b2"):
            assert (await c.send(append_line(tag, "INBOX", raw))).startswith(
                tag.encode() + b" OK")
        assert (await c.send("c SELECT INBOX")).endswith(b"c OK [READ-WRITE] SELECT completed\r\n")
        assert (await c.send("d COPY 1:2 Trash")).startswith(b"d OK [COPYUID ")
        assert await c.send('G0001 GETQUOTA ""') == (
            b'* QUOTA "" (STORAGE 12 512 MESSAGE 4 1000)\r\nG0001 OK Getquota completed\r\n')
        assert (await c.send("e STORE 1 +FLAGS.SILENT (\\Deleted)")).startswith(b"e OK")
        assert await c.send("f STATUS INBOX (MESSAGES DELETED DELETED-STORAGE)") == (
            b'* STATUS "INBOX" (MESSAGES 2 DELETED 1 DELETED-STORAGE 2)\r\n'
            b"f OK Status completed\r\n")
        assert (await c.send("g EXPUNGE")).startswith(b"* 1 EXPUNGE\r\n")
        assert await c.send('h GETQUOTA ""') == (
            b'* QUOTA "" (STORAGE 9 512 MESSAGE 3 1000)\r\nh OK Getquota completed\r\n')
        assert (await c.send('i GETQUOTA "#user/other"')).startswith(b"i NO [NONEXISTENT]")
        # RFC 9208 4.1.2: the mailbox need not exist (Dovecot 2.3 answers the same way).
        assert await c.send("j GETQUOTAROOT Nowhere") == (
            b'* QUOTAROOT "Nowhere" ""\r\n* QUOTA "" (STORAGE 9 512 MESSAGE 3 1000)\r\n'
            b"j OK Getquotaroot completed\r\n")
        assert (await c.send('S0001 SETQUOTA "" (STORAGE 510)')).startswith(
            b"S0001 NO [NOPERM]")

    run(dsn, body)


def test_a_user_without_limits_has_no_quota_root(dsn: str) -> None:
    """Unlimited storage and messages: GETQUOTAROOT lists no root and GETQUOTA "" is NO."""

    async def body(env: Env) -> None:
        name = fresh("free")
        await env.user(name)
        c = env.client()
        await c.login(name)
        assert await c.send("a GETQUOTAROOT Sent") == (
            b'* QUOTAROOT "Sent"\r\na OK Getquotaroot completed\r\n')
        assert (await c.send('b GETQUOTA ""')).startswith(b"b NO [NONEXISTENT]")

    run(dsn, body)


def test_over_quota_is_overquota_on_append_copy_and_move(dsn: str) -> None:
    """Past the message limit APPEND and COPY are NO [OVERQUOTA] and store nothing, while
    MOVE, which adds no message, still works; past the storage limit the same."""

    async def body(env: Env) -> None:
        name = fresh("full")
        await env.user(name, quota=10 * 1024)
        await env.store.users.set_quota(name, None, 2)
        c = env.client()
        await c.login(name)
        raw = b"Subject: m\r\n\r\nsmall\r\n"
        for tag in ("a1", "a2"):
            assert (await c.send(append_line(tag, "INBOX", raw))).startswith(
                tag.encode() + b" OK")
        assert (await c.send(append_line("b", "INBOX", raw))).startswith(
            b"b NO [OVERQUOTA] ")
        await c.send("c SELECT INBOX")
        assert (await c.send("d COPY 1 Trash")).startswith(b"d NO [OVERQUOTA] ")
        assert (await c.send("e MOVE 1 Trash")).startswith(b"* OK [COPYUID ")
        assert b"MESSAGES 1)" in await c.send("f STATUS Trash (MESSAGES)")
        await env.store.users.set_quota(name, None, 0)
        big = b"Subject: big\r\n\r\n" + b"y" * (11 * 1024) + b"\r\n"
        assert (await c.send(append_line("g", "Drafts", big))).startswith(
            b"g NO [OVERQUOTA] ")
        assert await c.send('h GETQUOTA ""') == (
            b'* QUOTA "" (STORAGE 1 10)\r\nh OK Getquota completed\r\n')

    run(dsn, body)
