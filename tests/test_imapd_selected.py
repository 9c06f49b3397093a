"""The selected state over a real PostgreSQL: SELECT/EXAMINE data, every FETCH item, STORE,
SEARCH (answered by PostgreSQL), COPY/MOVE/EXPUNGE with UIDPLUS, CONDSTORE and QRESYNC."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterator

import pytest

from metadata.bodystructure import render_body, render_bodystructure
from metadata.envelope import tree_envelope
from metadata.mimetree import parse
from metadata.sections import SectionMap, imap_view, section_map
from metadata.splitter import split
from metadata.uidset import UidSet
from tests.imapd_support import (
    ATTACHMENT,
    NESTED,
    PICTURE,
    PLAIN_LF,
    Client,
    Env,
    corpus,
    environment,
)
from tests.metadata_support import fresh_database


@pytest.fixture(scope="module")
def dsn(postgres: str) -> Iterator[str]:
    with fresh_database(postgres) as target:
        yield target


_counter = iter(range(1_000_000))


def run(dsn: str, body: Callable[[Env, Client, str], Awaitable[None]],
        messages: tuple[str, ...] = (ATTACHMENT, NESTED, PLAIN_LF)) -> None:
    """Deliver corpus ``messages`` to a fresh user's INBOX, log a client in, run ``body``."""

    async def main() -> None:
        async with environment(dsn) as env:
            name = f"user{next(_counter)}"
            await env.user(name)
            for message in messages:
                await env.deliver(name, corpus(message))
            client = env.client()
            await client.login(name)
            await body(env, client, name)
            await client.close()

    asyncio.run(main())


def literal(reply: bytes, name: bytes) -> bytes:
    """The octets of FETCH item ``name`` in ``reply`` (a single-message FETCH)."""
    start = reply.index(name + b" {")
    size_end = reply.index(b"}\r\n", start)
    size = int(reply[start + len(name) + 2:size_end])
    begin = size_end + 3
    return reply[begin:begin + size]


def test_select_reports_the_mailbox(dsn: str) -> None:
    """SELECT sends FLAGS, EXISTS, RECENT, UNSEEN, PERMANENTFLAGS, UIDVALIDITY, UIDNEXT and
    HIGHESTMODSEQ, then OK [READ-WRITE]; EXAMINE is [READ-ONLY] with no permanent flags."""

    async def body(env: Env, c: Client, name: str) -> None:
        reply = await c.send("a SELECT INBOX")
        assert re.fullmatch(
            rb"\* FLAGS \(\\Seen \\Answered \\Flagged \\Deleted \\Draft\)\r\n"
            rb"\* 3 EXISTS\r\n\* 3 RECENT\r\n"
            rb"\* OK \[UNSEEN 1\] First unseen message is 1\r\n"
            rb"\* OK \[PERMANENTFLAGS \(\\Seen \\Answered \\Flagged \\Deleted \\Draft \\\*\)\] "
            rb"Flags permitted\r\n"
            rb"\* OK \[UIDVALIDITY \d+\] UIDs valid\r\n"
            rb"\* OK \[UIDNEXT 4\] Predicted next UID\r\n"
            rb"\* OK \[HIGHESTMODSEQ \d+\] Highest\r\n"
            rb"a OK \[READ-WRITE\] SELECT completed\r\n", reply), reply
        reply = await c.send("b EXAMINE INBOX")
        assert b"* 0 RECENT" in reply  # the first SELECT claimed them
        assert b"[PERMANENTFLAGS ()]" in reply and reply.endswith(b"b OK [READ-ONLY] EXAMINE completed\r\n")
        assert await c.send("c STORE 1 +FLAGS (\\Seen)") == b"c NO Mailbox is read-only\r\n"
        await c.send("d FETCH 1 BODY[TEXT]")
        assert b"FLAGS ()" in await c.send("e FETCH 1 FLAGS")  # EXAMINE never sets \Seen

    run(dsn, body)


def test_fetch_metadata_items_come_from_postgresql(dsn: str) -> None:
    """FLAGS, INTERNALDATE, RFC822.SIZE, ENVELOPE, BODY and BODYSTRUCTURE match what the
    MIME layer computes from the delivered bytes, and no blob is read for them."""

    async def body(env: Env, c: Client, name: str) -> None:
        await c.send("a SELECT INBOX")
        raw = corpus(ATTACHMENT)
        tree = parse(raw)
        env.blobs.reads.clear()
        reply = await c.send("b FETCH 1 (FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODY "
                             "BODYSTRUCTURE UID)")
        assert env.blobs.reads == []
        assert reply.startswith(b"* 1 FETCH (FLAGS (\\Recent) INTERNALDATE \"")
        assert b" RFC822.SIZE %d " % len(imap_view(raw)) in reply
        assert b" ENVELOPE " + tree_envelope(tree) + b" " in reply
        assert b" BODY " + render_body(tree) + b" " in reply
        assert b" BODYSTRUCTURE " + render_bodystructure(tree) + b" UID 1)\r\n" in reply
        all_macro = await c.send("c FETCH 1:2 ALL")
        assert all_macro.count(b"ENVELOPE (") == 2 and b"c OK FETCH completed" in all_macro

    run(dsn, body)


@pytest.mark.parametrize("message", [ATTACHMENT, NESTED, PLAIN_LF, PICTURE])
def test_every_section_matches_the_delivered_bytes(dsn: str, message: str) -> None:
    """BODY.PEEK[section] for every section the message has (numbered parts, MIME, HEADER,
    TEXT, nested message parts) is exactly that byte range of the delivered message in the
    IMAP view; RFC822, RFC822.HEADER and RFC822.TEXT too."""
    raw = corpus(message)
    tree = parse(raw)
    sections = section_map(tree)

    async def body(env: Env, c: Client, name: str) -> None:
        await c.send("a SELECT INBOX")
        specs = [spec for spec, rng in sections.sections() if rng is not None]
        atts = " ".join(f"BODY.PEEK[{spec}]" for spec in specs)
        reply = await c.send(f"b FETCH 1 ({atts})")
        for spec in specs:
            rng = sections.locate(spec)
            assert rng is not None
            want = imap_view(raw[rng.start:rng.end])
            got = literal(reply, f"BODY[{spec}]".encode())
            assert got == want, spec
        reply = await c.send("c FETCH 1 (RFC822.HEADER RFC822.TEXT)")
        assert b"FLAGS (\\Seen \\Recent)" in reply  # RFC822.TEXT sets \Seen
        header = sections.locate("HEADER")
        text = sections.locate("TEXT")
        assert header is not None and text is not None
        assert literal(reply, b"RFC822.HEADER") == imap_view(raw[header.start:header.end])
        assert literal(reply, b"RFC822.TEXT") == imap_view(raw[text.start:text.end])
        reply = await c.send("d FETCH 1 RFC822")
        assert literal(reply, b"RFC822") == imap_view(raw)

    run(dsn, body, (message,))


def test_partial_fetch_reads_only_the_blobs_it_needs(dsn: str) -> None:
    """BODY[]<0.200> of a message with a large attachment reads the skeleton but not the
    attachment's blob; BODY[2]<10.20> reads it and returns those 20 octets; a window past
    the end is empty; headers never touch a blob."""
    raw = corpus(ATTACHMENT)
    stored = split(raw)
    attachment = next(iter(stored.blobs))

    async def body(env: Env, c: Client, name: str) -> None:
        await c.send("a SELECT INBOX")
        env.blobs.reads.clear()
        reply = await c.send("b FETCH 1 BODY.PEEK[]<0.200>")
        assert literal(reply, b"BODY[]<0>") == imap_view(raw)[:200]
        assert env.blobs.reads == [stored.skeleton_id]
        env.blobs.reads.clear()
        reply = await c.send("c FETCH 1 BODY.PEEK[2]<10.20>")
        part = SectionMap.from_bytes(section_map(parse(raw)).to_bytes()).locate("2")
        assert part is not None
        assert literal(reply, b"BODY[2]<10>") == imap_view(raw[part.start:part.end])[10:30]
        assert attachment in env.blobs.reads
        reply = await c.send("d FETCH 1 BODY.PEEK[]<99999999.10>")
        assert b"BODY[]<99999999> {0}\r\n)" in reply
        env.blobs.reads.clear()
        await c.send("e FETCH 1:3 (BODY.PEEK[HEADER] BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert env.blobs.reads == []

    run(dsn, body)


def test_header_fields_are_filtered_from_the_stored_header(dsn: str) -> None:
    """HEADER.FIELDS keeps the named fields with their continuation lines and the blank
    line; HEADER.FIELDS.NOT keeps the others; names compare case-insensitively."""
    raw = b"From: a@example.org\nSubject: folded\n  second line\nX-Other: 1\nTo: b@x\n\nbody\n"

    async def body(env: Env, c: Client, name: str) -> None:
        await env.deliver(name, raw)
        await c.send("a SELECT INBOX")
        reply = await c.send("b FETCH 1 (BODY.PEEK[HEADER.FIELDS (subject TO)] "
                             "BODY.PEEK[HEADER.FIELDS.NOT (SUBJECT TO)])")
        assert literal(reply, b"BODY[HEADER.FIELDS (SUBJECT TO)]") == (
            b"Subject: folded\r\n  second line\r\nTo: b@x\r\n\r\n")
        assert literal(reply, b"BODY[HEADER.FIELDS.NOT (SUBJECT TO)]") == (
            b"From: a@example.org\r\nX-Other: 1\r\n\r\n")
        reply = await c.send("c FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT)]<0.7>")
        assert literal(reply, b"BODY[HEADER.FIELDS (SUBJECT)]<0>") == b"Subject"

    run(dsn, body, ())


def test_fetch_body_sets_seen_and_reports_it(dsn: str) -> None:
    """A non-PEEK body fetch sets \\Seen and includes FLAGS in the response even when not
    asked; a second fetch does not report FLAGS again."""

    async def body(env: Env, c: Client, name: str) -> None:
        await c.send("a SELECT INBOX")
        reply = await c.send("b FETCH 3 BODY[HEADER]")
        assert reply.endswith(b" FLAGS (\\Seen \\Recent))\r\nb OK FETCH completed\r\n")
        reply = await c.send("c FETCH 3 BODY[HEADER]")
        assert b"FLAGS" not in reply

    run(dsn, body)


def test_store_modes_and_responses(dsn: str) -> None:
    """+FLAGS, -FLAGS and FLAGS change flags and keywords and answer FETCH (UID for UID
    STORE); .SILENT answers nothing; a new keyword is announced with FLAGS and
    PERMANENTFLAGS."""

    async def body(env: Env, c: Client, name: str) -> None:
        await c.send("a SELECT INBOX")
        assert await c.send("b STORE 1:2 +FLAGS (\\Flagged $Todo)") == (
            b"* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Todo)\r\n"
            b"* OK [PERMANENTFLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Todo \\*)]"
            b" Flags permitted\r\n"
            b"* 1 FETCH (FLAGS (\\Flagged $Todo \\Recent))\r\n"
            b"* 2 FETCH (FLAGS (\\Flagged $Todo \\Recent))\r\n"
            b"b OK STORE completed\r\n")
        assert await c.send("c UID STORE 2 -FLAGS (\\Flagged)") == (
            b"* 2 FETCH (UID 2 FLAGS ($Todo \\Recent))\r\nc OK UID STORE completed\r\n")
        assert await c.send("d STORE 3 FLAGS.SILENT (\\Answered \\Draft)") == (
            b"d OK STORE completed\r\n")
        assert await c.send("e FETCH 3 FLAGS") == (
            b"* 3 FETCH (FLAGS (\\Answered \\Draft \\Recent))\r\ne OK FETCH completed\r\n")
        assert (await c.send("f STORE 9 +FLAGS (\\Seen)")).startswith(b"f BAD")
        assert (await c.send("g STORE 1 +FLAGS (\\Recent)")).startswith(b"g BAD")
        assert await c.send("h UID STORE 99 +FLAGS (\\Seen)") == b"h OK UID STORE completed\r\n"

    run(dsn, body)


def test_condstore_modseq_changedsince_and_unchangedsince(dsn: str) -> None:
    """FETCH MODSEQ and CHANGEDSINCE return only what changed after a mod-sequence, STORE
    UNCHANGEDSINCE refuses messages changed since with [MODIFIED], SEARCH MODSEQ reports
    the highest mod-sequence, and STATUS reports HIGHESTMODSEQ."""

    async def body(env: Env, c: Client, name: str) -> None:
        reply = await c.send("a SELECT INBOX (CONDSTORE)")
        highest = int(re.search(rb"HIGHESTMODSEQ (\d+)", reply).group(1))  # type: ignore[union-attr]
        stored = await c.send("b STORE 2 +FLAGS (\\Seen)")
        modseq = int(re.search(rb"MODSEQ \((\d+)\)", stored).group(1))  # type: ignore[union-attr]
        assert modseq > highest
        assert await c.send(f"c FETCH 1:* (FLAGS) (CHANGEDSINCE {highest})") == (
            f"* 2 FETCH (FLAGS (\\Seen \\Recent) MODSEQ ({modseq}))\r\n"
            "c OK FETCH completed\r\n").encode()
        assert await c.send(f"d STORE 1:2 (UNCHANGEDSINCE {highest}) +FLAGS (\\Flagged)") == (
            f"* 1 FETCH (FLAGS (\\Flagged \\Recent) MODSEQ ({modseq + 1}))\r\n"
            "d OK [MODIFIED 2] Conditional STORE failed\r\n").encode()
        assert await c.send(f"e SEARCH MODSEQ {modseq + 1}") == (
            f"* SEARCH 1 (MODSEQ {modseq + 1})\r\ne OK SEARCH completed\r\n").encode()
        assert await c.send("f STATUS INBOX (HIGHESTMODSEQ)") == (
            f'* STATUS "INBOX" (HIGHESTMODSEQ {modseq + 1})\r\n'
            "f OK Status completed\r\n").encode()

    run(dsn, body)


def test_search_keys_are_answered_by_postgresql(dsn: str) -> None:
    """Flag, header, full-text, date, size, UID, sequence and boolean keys select the
    expected messages; UID SEARCH answers UIDs; an unknown charset is NO [BADCHARSET]."""
    messages = (
        b"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: Invoice 42\r\n"
        b"Date: Mon, 1 Jul 2024 10:00:00 +0000\r\n\r\nPlease pay the invoice soon.\r\n",
        b"From: carol@example.net\r\nSubject: Lunch?\r\nX-Team: blue\r\n"
        b"Date: Fri, 5 Jul 2024 12:00:00 +0000\r\n\r\nAre you free for lunch tomorrow?\r\n",
        b"From: dave@example.com\r\nSubject: Report\r\nDate: Sat, 6 Jul 2024 08:00:00 +0000"
        b"\r\n\r\n" + b"numbers " * 400 + b"\r\n",
    )

    async def body(env: Env, c: Client, name: str) -> None:
        for raw in messages:
            await env.deliver(name, raw)
        await c.send("a SELECT INBOX")
        await c.send("b STORE 2 +FLAGS (\\Seen $Lunch)")
        cases = {
            "ALL": b"1 2 3",
            "SEEN": b"2",
            "UNSEEN": b"1 3",
            "KEYWORD $Lunch": b"2",
            "FROM alice": b"1",
            "SUBJECT invoice": b"1",
            'HEADER X-Team "blu"': b"2",
            "BODY lunch": b"2",
            "TEXT invoice": b"1",
            "BODY invoic": b"1",
            "SENTBEFORE 5-Jul-2024": b"1",
            "SENTON 5-Jul-2024": b"2",
            "SENTSINCE 6-Jul-2024": b"3",
            "LARGER 1000": b"3",
            "SMALLER 1000": b"1 2",
            "2:3": b"2 3",
            "UID 1,3": b"1 3",
            "OR FROM carol FROM dave": b"2 3",
            "NOT FROM carol": b"1 3",
            "(UNSEEN SUBJECT report)": b"3",
            "RECENT": b"1 2 3",
            "NEW": b"1 3",
            "OLD": b"",
            "SINCE 1-Jan-2000": b"1 2 3",
            "BEFORE 1-Jan-2000": b"",
        }
        for criteria, want in cases.items():
            reply = await c.send(f"s SEARCH {criteria}")
            expect = b"* SEARCH" + (b" " + want if want else b"") + b"\r\ns OK SEARCH completed\r\n"
            assert reply == expect, criteria
        assert await c.send("u UID SEARCH FROM dave") == (
            b"* SEARCH 3\r\nu OK UID SEARCH completed\r\n")
        assert await c.send("v SEARCH CHARSET UTF-8 SUBJECT lunch") == (
            b"* SEARCH 2\r\nv OK SEARCH completed\r\n")
        assert (await c.send("w SEARCH CHARSET KLINGON ALL")).startswith(
            b"w NO [BADCHARSET")
        assert (await c.send("x SEARCH 7")).startswith(b"x BAD")

    run(dsn, body, ())


def test_copy_move_and_expunge_with_uidplus(dsn: str) -> None:
    """COPY and MOVE answer COPYUID, MOVE expunges from the source with EXPUNGE responses,
    UID EXPUNGE removes only the named deleted messages, CLOSE expunges silently."""

    async def body(env: Env, c: Client, name: str) -> None:
        await c.send("a CREATE Kept")
        select = await c.send("b SELECT Kept")
        kept_validity = re.search(rb"UIDVALIDITY (\d+)", select).group(1)  # type: ignore[union-attr]
        await c.send("c SELECT INBOX")
        assert await c.send("d COPY 1:2 Kept") == (
            b"d OK [COPYUID " + kept_validity + b" 1:2 1:2] COPY completed\r\n")
        assert (await c.send("e COPY 1 Missing")).startswith(b"e NO [TRYCREATE]")
        assert await c.send("f UID MOVE 2 Kept") == (
            b"* OK [COPYUID " + kept_validity + b" 2 3] Moved\r\n* 2 EXPUNGE\r\n"
            b"f OK UID MOVE completed\r\n")
        await c.send("g STORE 1:2 +FLAGS.SILENT (\\Deleted)")
        assert await c.send("h UID EXPUNGE 3") == (
            b"* 2 EXPUNGE\r\nh OK UID EXPUNGE completed\r\n")
        assert await c.send("i FETCH 1:* UID") == (
            b"* 1 FETCH (UID 1)\r\ni OK FETCH completed\r\n")
        assert await c.send("j CLOSE") == b"j OK Close completed\r\n"
        assert b"MESSAGES 0" in await c.send("k STATUS INBOX (MESSAGES)")
        assert b"MESSAGES 3" in await c.send("l STATUS Kept (MESSAGES)")
        await c.send("m SELECT Kept")
        await c.send("n STORE 1 +FLAGS (\\Deleted)")
        assert await c.send("o UNSELECT") == b"o OK Unselect completed\r\n"
        assert b"MESSAGES 3" in await c.send("p STATUS Kept (MESSAGES)")
        assert (await c.send("q EXPUNGE")).startswith(b"q BAD")

    run(dsn, body)


def test_copy_into_the_selected_mailbox_announces_exists(dsn: str) -> None:
    """COPY of a message into the selected mailbox is followed by EXISTS for the copy."""

    async def body(env: Env, c: Client, name: str) -> None:
        await c.send("a SELECT INBOX")
        reply = await c.send("b COPY 1 INBOX")
        assert reply.startswith(b"* 4 EXISTS\r\n* 4 RECENT\r\nb OK [COPYUID ")

    run(dsn, body)


def test_qresync_select_and_vanished(dsn: str) -> None:
    """After ENABLE QRESYNC, SELECT (QRESYNC ...) reports what vanished and changed since
    the client's mod-sequence, UID FETCH ... (CHANGEDSINCE n VANISHED) reports VANISHED
    (EARLIER), and expunges are sent as VANISHED."""

    async def body(env: Env, c: Client, name: str) -> None:
        assert (await c.send("a SELECT INBOX (QRESYNC (1 1))")).startswith(b"a BAD")
        await c.send("b ENABLE QRESYNC")
        reply = await c.send("c SELECT INBOX")
        validity = int(re.search(rb"UIDVALIDITY (\d+)", reply).group(1))  # type: ignore[union-attr]
        highest = int(re.search(rb"HIGHESTMODSEQ (\d+)", reply).group(1))  # type: ignore[union-attr]
        await c.send("d STORE 1 +FLAGS.SILENT (\\Deleted)")
        assert await c.send("e EXPUNGE") == b"* VANISHED 1\r\ne OK EXPUNGE completed\r\n"
        await c.send("f STORE 1 +FLAGS.SILENT (\\Answered)")
        reply = await c.send(f"g SELECT INBOX (QRESYNC ({validity} {highest} 1:3))")
        assert reply.startswith(b"* OK [CLOSED] Previous mailbox closed\r\n")
        assert b"* VANISHED (EARLIER) 1\r\n" in reply
        assert re.search(rb"\* 1 FETCH \(UID 2 FLAGS \(\\Answered\) MODSEQ \(\d+\)\)", reply)
        reply = await c.send(f"h UID FETCH 1:* (FLAGS) (CHANGEDSINCE {highest} VANISHED)")
        assert reply.startswith(b"* VANISHED (EARLIER) 1\r\n* 1 FETCH (UID 2 FLAGS")

    run(dsn, body)


def test_flags_list_every_keyword_in_use_and_never_drop_one(dsn: str) -> None:
    """SELECT's FLAGS and PERMANENTFLAGS list the keywords already on messages (with \\* in
    PERMANENTFLAGS); storing another keyword re-announces both lists with the old one kept."""

    async def body(env: Env, c: Client, name: str) -> None:
        await env.deliver(name, b"Subject: k\r\n\r\nk\r\n", flags=["$Label1"])
        reply = await c.send("a SELECT INBOX")
        assert b"* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Label1)\r\n" in reply
        assert (b"* OK [PERMANENTFLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Label1"
                b" \\*)] Flags permitted\r\n") in reply
        reply = await c.send("b STORE 4 +FLAGS ($Label2)")
        assert reply.startswith(
            b"* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Label1 $Label2)\r\n"
            b"* OK [PERMANENTFLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Label1 $Label2"
            b" \\*)] Flags permitted\r\n* 4 FETCH (FLAGS ($Label1 $Label2 \\Recent))\r\n")
        assert b"FLAGS (\\Seen" not in await c.send("c STORE 4 -FLAGS ($Label1 $Label2)")
        reply = await c.send("d EXAMINE INBOX")
        assert b"* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Label1 $Label2)\r\n" \
            in reply and b"[PERMANENTFLAGS ()]" in reply

    run(dsn, body)


def test_append_with_a_new_keyword_announces_flags_before_exists(dsn: str) -> None:
    """APPEND into the selected mailbox with a keyword the mailbox never had sends FLAGS and
    PERMANENTFLAGS before the EXISTS of the new message."""

    async def body(env: Env, c: Client, name: str) -> None:
        await c.send("a SELECT INBOX")
        raw = b"Subject: a\r\n\r\na\r\n"
        reply = await c.send(f"b APPEND INBOX ($Fresh) {{{len(raw)}+}}\r\n".encode() + raw
                             + b"\r\n")
        assert reply.startswith(
            b"* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Fresh)\r\n"
            b"* OK [PERMANENTFLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Fresh \\*)]"
            b" Flags permitted\r\n* 4 EXISTS\r\n"), reply

    run(dsn, body)


def test_header_fields_echo_the_requested_list_with_repeats(dsn: str) -> None:
    """BODY.PEEK[HEADER.FIELDS (FROM FROM)] is answered as BODY[HEADER.FIELDS (FROM FROM)]."""

    async def body(env: Env, c: Client, name: str) -> None:
        await env.deliver(name, b"From: a@example.org\r\nTo: b@example.org\r\n\r\nx\r\n")
        await c.send("a SELECT INBOX")
        reply = await c.send("b FETCH 4 (BODY.PEEK[HEADER.FIELDS (FROM FROM)])")
        assert reply == (b"* 4 FETCH (BODY[HEADER.FIELDS (FROM FROM)] {23}\r\n"
                         b"From: a@example.org\r\n\r\n)\r\nb OK FETCH completed\r\n")

    run(dsn, body)


def test_move_into_the_selected_mailbox(dsn: str) -> None:
    """MOVE to the selected mailbox itself works (RFC 6851): COPYUID, EXPUNGE, then EXISTS;
    the message keeps its flags under its new UID."""

    async def body(env: Env, c: Client, name: str) -> None:
        await c.send("a SELECT INBOX")
        await c.send("b STORE 1 +FLAGS.SILENT (\\Flagged)")
        reply = await c.send("c MOVE 1 INBOX")
        validity = re.search(rb"COPYUID (\d+) 1 4\]", reply)
        assert validity is not None, reply
        assert reply == (b"* OK [COPYUID " + validity.group(1) + b" 1 4] Moved\r\n"
                         b"* 1 EXPUNGE\r\n* 3 EXISTS\r\n* 3 RECENT\r\n"
                         b"c OK MOVE completed\r\n")
        assert await c.send("d FETCH 1:* (UID FLAGS)") == (
            b"* 1 FETCH (UID 2 FLAGS (\\Recent))\r\n* 2 FETCH (UID 3 FLAGS (\\Recent))\r\n"
            b"* 3 FETCH (UID 4 FLAGS (\\Flagged \\Recent))\r\nd OK FETCH completed\r\n")
        assert await c.send("e NOOP") == b"e OK NOOP completed\r\n"

    run(dsn, body)


def test_fetch_returns_what_it_can_read_and_seen_marks_only_that(dsn: str) -> None:
    """With one message's skeleton gone for good, FETCH BODY[] of three returns the two
    readable ones (and sets \\Seen on them only), then answers NO [CORRUPTION] naming it."""

    async def body(env: Env, c: Client, name: str) -> None:
        await c.send("a SELECT INBOX")
        user = env.users[name]
        box = await env.store.mailboxes.get(user.id, "INBOX")
        entries = await env.store.messages.fetch(user.id, box.id, UidSet.of([(2, 2)]),
                                                 items={"skeleton"})
        del env.blobs.data[entries[0].skeleton_id or ""]
        reply = await c.send("b UID FETCH 1:3 (FLAGS BODY[])")
        assert b"* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent) BODY[] {" in reply
        assert b"* 3 FETCH (UID 3 FLAGS (\\Seen \\Recent) BODY[] {" in reply
        assert b"* 2 FETCH" not in reply
        assert reply.endswith(b"b NO [CORRUPTION] Message data is corrupt or lost (UID 2)\r\n")
        assert await c.send("c FETCH 2 FLAGS") == (
            b"* 2 FETCH (FLAGS (\\Recent))\r\nc OK FETCH completed\r\n")

    run(dsn, body)


def test_append_dates_the_store_cannot_hold_are_refused(dsn: str) -> None:
    """APPEND refuses an INTERNALDATE whose instant or local time falls outside years
    2..9998 (BAD, nothing stored); the earliest date it takes fetches back as given."""

    async def body(env: Env, c: Client, name: str) -> None:
        raw = b"Subject: d\r\n\r\nd\r\n"
        for date in ("01-Jan-0001 00:00:00 +0000", "01-Jan-0002 00:00:00 +0100",
                     "31-Dec-9998 23:59:59 -1200"):
            reply = await c.send(f'a APPEND INBOX "{date}" {{{len(raw)}+}}\r\n'.encode() + raw
                                 + b"\r\n")
            assert reply.startswith(b"a BAD"), reply
        reply = await c.send(
            f'b APPEND INBOX "01-Jan-0002 00:00:00 +0000" {{{len(raw)}+}}\r\n'.encode() + raw
            + b"\r\n")
        assert reply.startswith(b"b OK [APPENDUID"), reply
        await c.send("c SELECT INBOX")
        assert await c.send("d FETCH 4 (INTERNALDATE ENVELOPE)") == (
            b'* 4 FETCH (INTERNALDATE "01-Jan-0002 00:00:00 +0000" ENVELOPE (NIL "d" NIL NIL'
            b' NIL NIL NIL NIL NIL NIL))\r\nd OK FETCH completed\r\n')
        assert b"* SEARCH 4\r\n" in await c.send("e SEARCH BEFORE 1-Jan-1000")
        assert b"MESSAGES 4" in await c.send("f STATUS INBOX (MESSAGES)")

    run(dsn, body)


def test_invalid_modified_utf7_names_no_mailbox(dsn: str) -> None:
    """A mailbox name that is not modified UTF-7 is not a syntax error: SELECT answers NO
    (and unselects), LIST an empty OK, CREATE NO [CANNOT]."""

    async def body(env: Env, c: Client, name: str) -> None:
        await c.send("a SELECT INBOX")
        bad = "\"!#$&'+,-.0123456789:;<=>?@^_`|[}\""
        reply = await c.send(f"b SELECT {bad}")
        assert reply == b"b NO [NONEXISTENT] Mailbox name is not valid modified UTF-7\r\n"
        assert (await c.send("c FETCH 1 UID")).startswith(b"c BAD")
        assert await c.send(f'd LIST "" {bad[:-1]}%*"') == b"d OK List completed\r\n"
        assert (await c.send("e CREATE &Jjo")).startswith(b"e NO [CANNOT]")
        assert (await c.send("f CREATE &-Jjo")).startswith(b"f OK")
        assert (await c.send("g SELECT &Jjo")).startswith(b"g NO [NONEXISTENT]")
        assert (await c.send("h SELECT &-Jjo")).startswith(b"* FLAGS")

    run(dsn, body)


def test_search_from_ignores_comments_and_body_is_a_substring_search(dsn: str) -> None:
    """SEARCH FROM matches an address written with comments and folding whitespace as the
    ENVELOPE reads it; SEARCH BODY and TEXT find a string inside a word, in any case, also
    in the parts of a multipart whose boundary follows ``;;``."""

    async def body(env: Env, c: Client, name: str) -> None:
        await env.deliver(name, b"From: <user-from (comment)@ (comment) domain.org>\r\n"
                                b"Subject: keys\r\n\r\nasdfghjkl qwerty\r\n")
        await env.deliver(name, corpus("apache-james-mime4j/mimetools-testmsgs/"
                                       "double-semicolon.msg"))
        await c.send("a SELECT INBOX")
        assert await c.send("b SEARCH FROM user-from@domain.org") == (
            b"* SEARCH 4\r\nb OK SEARCH completed\r\n")
        assert await c.send("c SEARCH BODY SDFGHJK") == b"* SEARCH 4\r\nc OK SEARCH completed\r\n"
        assert await c.send("d SEARCH TEXT eys") == b"* SEARCH 4\r\nd OK SEARCH completed\r\n"
        assert await c.send("e SEARCH BODY eys") == b"* SEARCH\r\ne OK SEARCH completed\r\n"
        assert await c.send('f SEARCH BODY "worse part"') == (
            b"* SEARCH 5\r\nf OK SEARCH completed\r\n")

    run(dsn, body)


def _six_flagged_mailbox() -> tuple[bytes, ...]:
    return tuple(b"Subject: m%d\r\n\r\nbody %d\r\n" % (n, n) for n in range(1, 7))


async def _expunge_first_flag_some(c: Client) -> None:
    """UIDs 1..6, then UID 1 expunged (sequence numbers 1..5 are UIDs 2..6) and UIDs 2, 4
    and 5 (sequence numbers 1, 3, 4) flagged."""
    await c.send("s1 SELECT INBOX")
    await c.send("s2 STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert await c.send("s3 EXPUNGE") == b"* 1 EXPUNGE\r\ns3 OK EXPUNGE completed\r\n"
    await c.send("s4 UID STORE 2,4:5 +FLAGS.SILENT (\\Flagged)")


def test_esearch_return_options(dsn: str) -> None:
    """SEARCH RETURN answers one ESEARCH line tagged with the command (RFC 4731's examples):
    MIN/MAX/ALL are left out when nothing matched, COUNT 0 is not, RETURN () is ALL, UID
    SEARCH answers UIDs, and a MODSEQ search adds the mod-sequence of what is returned."""

    async def body(env: Env, c: Client, name: str) -> None:
        for raw in _six_flagged_mailbox():
            await env.deliver(name, raw)
        await _expunge_first_flag_some(c)
        cases = {
            "a SEARCH RETURN (MIN COUNT) FLAGGED": b'* ESEARCH (TAG "a") MIN 1 COUNT 3',
            "b SEARCH RETURN () FLAGGED": b'* ESEARCH (TAG "b") ALL 1,3:4',
            "c SEARCH RETURN (MIN MAX) KEYWORD none": b'* ESEARCH (TAG "c")',
            "d UID SEARCH RETURN (MIN MAX) ALL": b'* ESEARCH (TAG "d") UID MIN 2 MAX 6',
            "e SEARCH RETURN (COUNT) KEYWORD none": b'* ESEARCH (TAG "e") COUNT 0',
            "f UID SEARCH RETURN (ALL) FLAGGED": b'* ESEARCH (TAG "f") UID ALL 2,4:5',
            "g SEARCH RETURN (MAX ALL COUNT MIN) 2:5": (
                b'* ESEARCH (TAG "g") MIN 2 MAX 5 ALL 2:5 COUNT 4'),
        }
        for command, expected in cases.items():
            tag, rest = command.split(" ", 1)
            name = rest.split(" RETURN")[0]
            assert await c.send(command) == (
                expected + f"\r\n{tag} OK {name} completed\r\n".encode()), command
        reply = await c.send("h UID STORE 5 +FLAGS.SILENT (\\Seen)")
        modseq = int(re.search(rb"MODSEQ \((\d+)\)", await c.send(
            "i UID FETCH 5 (MODSEQ)")).group(1))  # type: ignore[union-attr]
        assert reply.endswith(b"h OK UID STORE completed\r\n")
        assert await c.send("j SEARCH RETURN (MIN) MODSEQ 1") == (
            b'* ESEARCH (TAG "j") MIN 1 MODSEQ %d\r\nj OK SEARCH completed\r\n'
            % (modseq - 1))
        assert await c.send("k SEARCH RETURN (COUNT) MODSEQ 1") == (
            b'* ESEARCH (TAG "k") COUNT 5 MODSEQ %d\r\nk OK SEARCH completed\r\n' % modseq)

    run(dsn, body, messages=())


def test_searchres_saves_a_result_for_dollar(dsn: str) -> None:
    """SEARCH RETURN (SAVE) answers no ESEARCH and keeps the result as ``$`` for later
    FETCH, SEARCH, STORE and COPY (RFC 5182's examples); with only MIN/MAX it keeps those;
    expunged messages leave it; a failed SAVE search and SELECT empty it."""

    async def body(env: Env, c: Client, name: str) -> None:
        for raw in _six_flagged_mailbox():
            await env.deliver(name, raw)
        await _expunge_first_flag_some(c)
        assert await c.send("a SEARCH RETURN (SAVE) FLAGGED") == b"a OK SEARCH completed\r\n"
        assert await c.send("b FETCH $ (UID)") == (
            b"* 1 FETCH (UID 2)\r\n* 3 FETCH (UID 4)\r\n* 4 FETCH (UID 5)\r\n"
            b"b OK FETCH completed\r\n")
        assert await c.send("c UID SEARCH $ NOT UID 4") == (
            b"* SEARCH 2 5\r\nc OK UID SEARCH completed\r\n")
        assert await c.send("d SEARCH RETURN (SAVE MIN MAX) $ NOT 3") == (
            b'* ESEARCH (TAG "d") MIN 1 MAX 4\r\nd OK SEARCH completed\r\n')
        assert await c.send("e SEARCH RETURN (ALL) UID $") == (
            b'* ESEARCH (TAG "e") ALL 1,4\r\ne OK SEARCH completed\r\n')
        assert await c.send("f UID STORE $ +FLAGS.SILENT (\\Deleted)") == (
            b"f OK UID STORE completed\r\n")
        await c.send("g0 CREATE Kept")
        assert (await c.send("g COPY $ Kept")).startswith(b"g OK [COPYUID ")
        assert await c.send("h EXPUNGE") == (
            b"* 1 EXPUNGE\r\n* 3 EXPUNGE\r\nh OK EXPUNGE completed\r\n")
        assert await c.send("i FETCH $ (UID)") == b"i OK FETCH completed\r\n"
        await c.send("j SEARCH RETURN (SAVE) ALL")
        assert (await c.send("k SEARCH RETURN (SAVE) 99")).startswith(b"k BAD ")
        assert await c.send("l FETCH $ (UID)") == b"l OK FETCH completed\r\n"
        await c.send("l1 SEARCH RETURN (SAVE) ALL")
        assert (await c.send("l2 SEARCH RETURN (SAVE) CHARSET X-NONE ALL")).startswith(
            b"l2 NO [BADCHARSET")
        assert await c.send("l3 FETCH $ (UID)") == b"l3 OK FETCH completed\r\n"
        await c.send("l4 SEARCH RETURN (SAVE) ALL")
        assert (await c.send("l5 SEARCH RETURN (SAVE) BOGUS")).startswith(b"l5 BAD ")
        assert await c.send("l6 FETCH $ (UID)") == b"l6 OK FETCH completed\r\n"
        await c.send("m SEARCH RETURN (SAVE) ALL")
        await c.send("n SELECT INBOX")
        assert await c.send("o FETCH $ (UID)") == b"o OK FETCH completed\r\n"

    run(dsn, body, messages=())


_SORTABLE = (
    b'From: "Zed" <alice@x.org>\r\nTo: bob@y.org\r\nSubject: Re: beta\r\n'
    b"Date: Wed, 3 Jul 2024 10:00:00 +0000\r\n\r\n" + b"a" * 1000 + b"\r\n",
    b"From: Bob Smith <carol@x.org>\r\nTo: \"Anna\" <zed@y.org>\r\nCc: m@z.org\r\n"
    b"Subject: alpha\r\nDate: Mon, 1 Jul 2024 10:00:00 +0000\r\n\r\n" + b"b" * 4000 + b"\r\n",
    b"From: dave@x.org\r\nTo: amy@y.org\r\nCc: a@z.org\r\nSubject: [list] Gamma\r\n\r\nc\r\n",
    b"From: aaron@x.org\r\nTo: \"Zoe\" <bob@y.org>\r\nSubject: Fwd: Alpha (fwd)\r\n"
    b"Date: Tue, 2 Jul 2024 23:00:00 -0500\r\n\r\n" + b"d" * 2000 + b"\r\n",
)


def test_sort_orders_by_keys_stored_at_delivery(dsn: str) -> None:
    """SORT orders by every RFC 5256 and RFC 5957 key (base subject, first address's
    mailbox or display name, sent date with INTERNALDATE for a message without one, size),
    REVERSE per key, exact ties by sequence number, over the searched messages only; UID
    SORT answers UIDs; rows stored before the keys existed get them from their header."""

    async def body(env: Env, c: Client, name: str) -> None:
        for raw in _SORTABLE:
            await env.deliver(name, raw)
        await c.send("a SELECT INBOX")
        cases = {
            "(SUBJECT) UTF-8 ALL": b"2 4 1 3",
            "(SUBJECT REVERSE DATE) UTF-8 ALL": b"4 2 1 3",
            "(REVERSE SUBJECT) UTF-8 ALL": b"3 1 2 4",
            "(FROM) UTF-8 ALL": b"4 1 2 3",
            "(DISPLAYFROM) UTF-8 ALL": b"4 2 3 1",
            "(DATE) UTF-8 ALL": b"2 4 1 3",
            "(SIZE) US-ASCII ALL": b"3 1 4 2",
            "(CC) UTF-8 ALL": b"1 4 3 2",
            "(TO) UTF-8 ALL": b"3 1 4 2",
            "(DISPLAYTO) UTF-8 ALL": b"3 2 1 4",
            "(DATE) UTF-8 SUBJECT alpha": b"2 4",
            "(ARRIVAL) UTF-8 2:3": b"2 3",
        }
        for arguments, expected in cases.items():
            assert await c.send(f"b SORT {arguments}") == (
                b"* SORT " + expected + b"\r\nb OK SORT completed\r\n"), arguments
        assert await c.send("c UID SORT (SIZE) UTF-8 NOT 3") == (
            b"* SORT 1 4 2\r\nc OK UID SORT completed\r\n")
        assert await c.send("d SORT (SUBJECT) UTF-8 KEYWORD none") == (
            b"* SORT\r\nd OK SORT completed\r\n")
        assert (await c.send("e SORT (BOGUS) UTF-8 ALL")).startswith(b"e BAD ")
        assert (await c.send("f SORT (SUBJECT) X-NONE ALL")).startswith(b"f NO [BADCHARSET")
        async with env.store.db.connection() as conn:
            await conn.execute(
                "UPDATE messages SET sort_subject = NULL, sort_from = NULL "
                "WHERE user_id = $1", env.users[name].id)
        assert await c.send("g SORT (SUBJECT) UTF-8 ALL") == (
            b"* SORT 2 4 1 3\r\ng OK SORT completed\r\n")
        async with env.store.db.connection() as conn:
            stored = await conn.fetch(
                "SELECT sort_subject, sort_from FROM messages WHERE user_id = $1 ORDER BY id",
                env.users[name].id)
        assert [tuple(r) for r in stored] == [
            ("beta", "alice"), ("alpha", "carol"), ("gamma", "dave"), ("alpha", "aaron")]

    run(dsn, body, messages=())


def test_thread_references_and_orderedsubject(dsn: str) -> None:
    """THREAD REFERENCES links replies by Message-ID/In-Reply-To/References and orders
    siblings by sent date; ORDEREDSUBJECT hangs each base subject under its first message;
    UID THREAD answers UIDs over the searched messages."""
    thread = (
        b"Message-ID: <a@x>\r\nSubject: Plan\r\nDate: Mon, 1 Jul 2024 10:00:00 +0000\r\n",
        b"Message-ID: <b@x>\r\nIn-Reply-To: <a@x>\r\nSubject: Re: Plan\r\n"
        b"Date: Wed, 3 Jul 2024 10:00:00 +0000\r\n",
        b"Message-ID: <c@x>\r\nReferences: <a@x> <b@x>\r\nSubject: Re: Plan\r\n"
        b"Date: Thu, 4 Jul 2024 10:00:00 +0000\r\n",
        b"Message-ID: <d@x>\r\nIn-Reply-To: <a@x>\r\nSubject: Re: Plan\r\n"
        b"Date: Tue, 2 Jul 2024 10:00:00 +0000\r\n",
        b"Message-ID: <e@x>\r\nSubject: Other\r\nDate: Fri, 5 Jul 2024 10:00:00 +0000\r\n",
    )

    async def body(env: Env, c: Client, name: str) -> None:
        for header in thread:
            await env.deliver(name, header + b"\r\nbody\r\n")
        await c.send("a SELECT INBOX")
        assert await c.send("b THREAD REFERENCES UTF-8 ALL") == (
            b"* THREAD (1 (4)(2 3))(5)\r\nb OK THREAD completed\r\n")
        assert await c.send("c THREAD ORDEREDSUBJECT UTF-8 ALL") == (
            b"* THREAD (1 (4)(2)(3))(5)\r\nc OK THREAD completed\r\n")
        assert await c.send("d UID THREAD REFERENCES UTF-8 NOT 4") == (
            b"* THREAD (1 2 3)(5)\r\nd OK UID THREAD completed\r\n")
        assert (await c.send("e THREAD BOGUS UTF-8 ALL")).startswith(b"e BAD ")

    run(dsn, body, messages=())


def test_own_append_claims_recent_in_its_delivery_transaction(dsn: str) -> None:
    """An APPEND into the mailbox a read-write session has selected claims \\Recent in the
    delivery's own transaction (the mailbox row's last writer is the one that inserted the
    entry), for the new message and for one delivered before it unannounced; another
    session gets neither.  EXAMINE claims none, nor does an APPEND to another mailbox."""

    async def body(env: Env, c: Client, name: str) -> None:
        user = env.users[name]
        inbox = (await env.store.mailboxes.get(user.id, "INBOX")).id

        async def writers(uid: int) -> tuple[int, int]:
            """xmin of the mailbox row and of the entry at ``uid``."""
            async with env.store.db.connection() as conn:
                row = await conn.fetchrow(
                    "SELECT (SELECT xmin::text::bigint FROM mailboxes WHERE user_id = $1 "
                    "AND id = $2) AS mailbox, (SELECT xmin::text::bigint FROM mailbox_messages "
                    "WHERE user_id = $1 AND mailbox_id = $2 AND uid = $3) AS entry",
                    user.id, inbox, uid)
            return row["mailbox"], row["entry"]

        raw = b"Subject: r\r\n\r\nr\r\n"

        def append_line(tag: str, mailbox: str, raw: bytes) -> bytes:
            return f"{tag} APPEND {mailbox} {{{len(raw)}+}}\r\n".encode() + raw + b"\r\n"

        assert b"* 0 RECENT\r\n" in await c.send("a SELECT INBOX")
        reply = await c.send(append_line("b", "INBOX", raw))
        assert reply.startswith(b"* 1 EXISTS\r\n* 1 RECENT\r\nb OK [APPENDUID "), reply
        mailbox_writer, entry_writer = await writers(1)
        assert mailbox_writer == entry_writer
        other = env.client()
        await other.login(name)
        assert b"* 0 RECENT\r\n" in await other.send("o1 SELECT INBOX")
        heard = await env.hear(name)
        await env.deliver(name, raw)  # UID 2, which c has not been told of
        await heard.of("append")
        reply = await c.send(append_line("c", "INBOX", raw))
        await heard.of("append")
        assert reply.startswith(b"* 3 EXISTS\r\n* 3 RECENT\r\nc OK [APPENDUID "), reply
        assert await c.send("d FETCH 2:3 (FLAGS)") == (
            b"* 2 FETCH (FLAGS (\\Recent))\r\n* 3 FETCH (FLAGS (\\Recent))\r\n"
            b"d OK FETCH completed\r\n")
        assert await other.send("o2 NOOP") == (
            b"* 3 EXISTS\r\n* 0 RECENT\r\no2 OK NOOP completed\r\n")
        # Read-only: the message stays unclaimed, for the next read-write session.
        await c.send("e EXAMINE INBOX")
        reply = await c.send(append_line("f", "INBOX", raw))
        assert reply.startswith(b"* 4 EXISTS\r\n"), reply
        await heard.of("append")  # the other session has heard it too (same listener)
        assert await other.send("o3 NOOP") == (
            b"* 4 EXISTS\r\n* 1 RECENT\r\no3 OK NOOP completed\r\n")
        # Into another mailbox: nothing is claimed there.
        await c.send("g SELECT INBOX")
        await c.send(append_line("h", "Drafts", raw))
        assert b"RECENT 1" in await c.send("i STATUS Drafts (RECENT)")
        await other.close()

    run(dsn, body, messages=())


def test_own_append_is_announced_exactly_and_updates_kept_searches(dsn: str) -> None:
    """A session's own APPEND answers FLAGS for a new keyword, EXISTS and RECENT (from what
    the insert returned), then nothing more at NOOP; with a search kept (CONTEXT=SEARCH),
    its ADDTO comes with the APPEND too; MULTIAPPEND announces both messages once."""

    async def body(env: Env, c: Client, name: str) -> None:
        await c.send("a SELECT INBOX")
        raw = b"Subject: new\r\n\r\nnew\r\n"
        reply = await c.send(b"b APPEND INBOX ($New) {%d+}\r\n%s" % (len(raw), raw) + b"\r\n")
        assert re.sub(rb"APPENDUID \d+ ", b"APPENDUID V ", reply) == (
            b"* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $New)\r\n"
            b"* OK [PERMANENTFLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $New \\*)]"
            b" Flags permitted\r\n"
            b"* 4 EXISTS\r\n* 4 RECENT\r\n"
            b"b OK [APPENDUID V 4] Append completed\r\n")
        assert await c.send("c NOOP") == b"c OK NOOP completed\r\n"
        assert await c.send("d FETCH 4 (UID FLAGS)") == (
            b"* 4 FETCH (UID 4 FLAGS ($New \\Recent))\r\nd OK FETCH completed\r\n")
        await c.send("e SEARCH RETURN (UPDATE) ALL")
        reply = await c.send(b"f APPEND INBOX {%d+}\r\n%s" % (len(raw), raw) + b"\r\n")
        assert b"* 5 EXISTS\r\n" in reply and b'* ESEARCH (TAG "e") ADDTO (0 5)' in reply, reply
        reply = await c.send(b"g APPEND INBOX {%d+}\r\n%s {%d+}\r\n%s"
                             % (len(raw), raw, len(raw), raw) + b"\r\n")
        assert reply.count(b"EXISTS") == 1 and b"* 7 EXISTS\r\n" in reply, reply
        assert await c.send("h NOOP") == b"h OK NOOP completed\r\n"
        assert await c.send("i UID SEARCH ALL") == (
            b"* SEARCH 1 2 3 4 5 6 7\r\ni OK UID SEARCH completed\r\n")

    run(dsn, body)
