"""Tests for imapd.parser: framing, literals, modes, limits, resync and fuzzing.

Real client lines are each fed whole, one byte at a time, and followed by more data.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imapd import commands as c
from imapd.fetchatts import BodySection, FetchItem, Partial, Section, SectionText
from imapd.parser import (
    NEED_DATA,
    AuthResponse,
    BadCommand,
    ContinuationNeeded,
    Event,
    IdleDone,
    Limits,
    Parser,
    ParserState,
    RemoteProtocolError,
)
from imapd.response import TOOBIG, BadCharset, Status, Tagged, Untagged
from imapd.searchkeys import All, And, Flag, Header, Not, SeqNumbers, Uid
from imapd.sequence import SequenceSet


def drain(parser: Parser, accept: bool = True) -> list[Event]:
    """Every event available now; synchronizing literals are accepted (or rejected)."""
    events: list[Event] = []
    while True:
        event = parser.next_event()
        if event is NEED_DATA:
            return events
        events.append(event)
        if isinstance(event, ContinuationNeeded):
            if accept:
                parser.accept_literal()
            else:
                parser.reject_literal()


def feed_whole(data: bytes, limits: Limits | None = None) -> list[Event]:
    parser = Parser(limits)
    parser.feed(data)
    return drain(parser)


def feed_bytewise(data: bytes, limits: Limits | None = None) -> list[Event]:
    parser = Parser(limits)
    events: list[Event] = []
    for index in range(len(data)):
        parser.feed(data[index : index + 1])
        events.extend(drain(parser))
    return events


def commands_only(events: list[Event]) -> list[Event]:
    return [event for event in events if not isinstance(event, ContinuationNeeded)]


def seq(text: str) -> SequenceSet:
    return SequenceSet.parse(text)


MSG = b"From: a@example.org\r\nSubject: {5}\r\n\r\nbody {3}\r\n"
HEADER_FIELDS = SectionText.HEADER_FIELDS

REAL_CLIENTS: list[tuple[str, bytes, c.Command]] = [
    # RFC 3501 section 8, the sample session.
    ("rfc3501", b"a001 login mrc secret\r\n", c.Login("a001", "mrc", "secret")),
    ("rfc3501", b"a002 select inbox\r\n", c.Select("a002", "INBOX")),
    (
        "rfc3501",
        b"a003 fetch 12 full\r\n",
        c.Fetch(
            "a003",
            seq("12"),
            (
                FetchItem.FLAGS,
                FetchItem.INTERNALDATE,
                FetchItem.RFC822_SIZE,
                FetchItem.ENVELOPE,
                FetchItem.BODY,
            ),
        ),
    ),
    (
        "rfc3501",
        b"a004 fetch 12 body[header]\r\n",
        c.Fetch("a004", seq("12"), (BodySection(Section(text=SectionText.HEADER)),)),
    ),
    (
        "rfc3501",
        b"a005 store 12 +flags \\deleted\r\n",
        c.Store("a005", seq("12"), c.StoreMode.ADD, ("\\Deleted",)),
    ),
    ("rfc3501", b"a006 logout\r\n", c.Logout("a006")),
    (
        "rfc3501",
        b"A003 APPEND saved-messages (\\Seen) {%d}\r\n%s\r\n" % (len(MSG), MSG),
        c.Append("A003", "saved-messages", (c.AppendMessage(MSG, ("\\Seen",)),)),
    ),
    # Thunderbird.
    ("thunderbird", b"1 capability\r\n", c.Capability("1")),
    ("thunderbird", b"2 authenticate PLAIN\r\n", c.Authenticate("2", "PLAIN")),
    (
        "thunderbird",
        b'3 ID ("name" "Thunderbird" "version" "115.6.0")\r\n',
        c.Id("3", (("name", "Thunderbird"), ("version", "115.6.0"))),
    ),
    ("thunderbird", b"4 namespace\r\n", c.Namespace("4")),
    ("thunderbird", b"5 enable UTF8=ACCEPT\r\n", c.Enable("5", ("UTF8=ACCEPT",))),
    (
        "thunderbird",
        b'6 list (subscribed) "" "*" return (special-use)\r\n',
        c.List("6", "", ("*",), ("SUBSCRIBED",), ("SPECIAL-USE",), (), True),
    ),
    ("thunderbird", b'7 select "INBOX" (CONDSTORE)\r\n', c.Select("7", "INBOX", condstore=True)),
    (
        "thunderbird",
        b"8 UID fetch 1:* (FLAGS) (CHANGEDSINCE 1234)\r\n",
        c.Fetch("8", seq("1:*"), (FetchItem.FLAGS,), True, 1234),
    ),
    (
        "thunderbird",
        b"9 UID fetch 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc Subject Date "
        b"Message-ID Priority X-Priority References Newsgroups In-Reply-To Content-Type Reply-To)])\r\n",
        c.Fetch(
            "9",
            seq("1:*"),
            (
                FetchItem.UID,
                FetchItem.RFC822_SIZE,
                FetchItem.FLAGS,
                BodySection(
                    Section(
                        text=HEADER_FIELDS,
                        fields=(
                            "FROM",
                            "TO",
                            "CC",
                            "BCC",
                            "SUBJECT",
                            "DATE",
                            "MESSAGE-ID",
                            "PRIORITY",
                            "X-PRIORITY",
                            "REFERENCES",
                            "NEWSGROUPS",
                            "IN-REPLY-TO",
                            "CONTENT-TYPE",
                            "REPLY-TO",
                        ),
                    ),
                    peek=True,
                ),
            ),
            uid=True,
        ),
    ),
    (
        "thunderbird",
        b"10 UID fetch 4 (UID RFC822.SIZE BODY.PEEK[]<0.10240>)\r\n",
        c.Fetch(
            "10",
            seq("4"),
            (
                FetchItem.UID,
                FetchItem.RFC822_SIZE,
                BodySection(peek=True, partial=Partial(0, 10240)),
            ),
            True,
        ),
    ),
    ("thunderbird", b"11 IDLE\r\n", c.Idle("11")),
    (
        "thunderbird",
        b"12 uid store 4 +Flags (\\Seen)\r\n",
        c.Store("12", seq("4"), c.StoreMode.ADD, ("\\Seen",), uid=True),
    ),
    ("thunderbird", b'13 UID MOVE 4 "Trash"\r\n', c.Move("13", seq("4"), "Trash", True)),
    (
        "thunderbird",
        b'14 append "Sent" (\\Seen) {%d}\r\n%s\r\n' % (len(MSG), MSG),
        c.Append("14", "Sent", (c.AppendMessage(MSG, ("\\Seen",)),)),
    ),
    ("thunderbird", b"15 uid expunge 4\r\n", c.UidExpunge("15", seq("4"))),
    # mutt.
    ("mutt", b"a0000 CAPABILITY\r\n", c.Capability("a0000")),
    (
        "mutt",
        b"a0001 AUTHENTICATE PLAIN AGJvYgBzM2NyM3Q=\r\n",
        c.Authenticate("a0001", "PLAIN", b"\x00bob\x00s3cr3t"),
    ),
    ("mutt", b'a0002 LIST "" ""\r\n', c.List("a0002", "", ("",))),
    (
        "mutt",
        b"a0004 UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS (DATE FROM SENDER "
        b"SUBJECT TO CC MESSAGE-ID REFERENCES CONTENT-TYPE CONTENT-DESCRIPTION IN-REPLY-TO REPLY-TO LINES "
        b"LIST-POST X-LABEL X-ORIGINAL-TO)])\r\n",
        c.Fetch(
            "a0004",
            seq("1:*"),
            (
                FetchItem.UID,
                FetchItem.FLAGS,
                FetchItem.INTERNALDATE,
                FetchItem.RFC822_SIZE,
                BodySection(
                    Section(
                        text=HEADER_FIELDS,
                        fields=(
                            "DATE",
                            "FROM",
                            "SENDER",
                            "SUBJECT",
                            "TO",
                            "CC",
                            "MESSAGE-ID",
                            "REFERENCES",
                            "CONTENT-TYPE",
                            "CONTENT-DESCRIPTION",
                            "IN-REPLY-TO",
                            "REPLY-TO",
                            "LINES",
                            "LIST-POST",
                            "X-LABEL",
                            "X-ORIGINAL-TO",
                        ),
                    ),
                    peek=True,
                ),
            ),
            uid=True,
        ),
    ),
    (
        "mutt",
        b"a0005 UID FETCH 3 BODY.PEEK[]\r\n",
        c.Fetch("a0005", seq("3"), (BodySection(peek=True),), True),
    ),
    (
        "mutt",
        b"a0006 UID STORE 1,3:5 +FLAGS.SILENT (\\Seen)\r\n",
        c.Store("a0006", seq("1,3:5"), c.StoreMode.ADD, ("\\Seen",), True, True),
    ),
    (
        "mutt",
        b"a0007 UID SEARCH CHARSET UTF-8 SUBJECT {5}\r\ncaf\xc3\xa9\r\n",
        c.Search("a0007", Header("SUBJECT", "caf\u00e9"), "UTF-8", True),
    ),
    (
        "mutt",
        b'a0008 STATUS "INBOX" (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)\r\n',
        c.Status("a0008", "INBOX", ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN")),
    ),
    # Apple Mail.
    (
        "apple-mail",
        b'2.1 ID ("name" "Mac OS X Mail" "version" "16.0 (3731.700.6)" "os" "Mac OS X" "os-version" '
        b'"13.4 (22F66)" "vendor" "Apple Inc.")\r\n',
        c.Id(
            "2.1",
            (
                ("name", "Mac OS X Mail"),
                ("version", "16.0 (3731.700.6)"),
                ("os", "Mac OS X"),
                ("os-version", "13.4 (22F66)"),
                ("vendor", "Apple Inc."),
            ),
        ),
    ),
    ("apple-mail", b"4.1 SELECT INBOX (CONDSTORE)\r\n", c.Select("4.1", "INBOX", condstore=True)),
    (
        "apple-mail",
        b"6.1 UID FETCH 12 (BODYSTRUCTURE BODY.PEEK[HEADER])\r\n",
        c.Fetch(
            "6.1",
            seq("12"),
            (FetchItem.BODYSTRUCTURE, BodySection(Section(text=SectionText.HEADER), True)),
            True,
        ),
    ),
    (
        "apple-mail",
        b"7.1 UID FETCH 12 BODY.PEEK[1]<0.20480>\r\n",
        c.Fetch("7.1", seq("12"), (BodySection(Section((1,)), True, Partial(0, 20480)),), True),
    ),
    (
        "apple-mail",
        b'9.1 APPEND Drafts (\\Seen \\Draft) "12-Jun-2021 10:11:12 +0200" {%d}\r\n%s\r\n'
        % (len(MSG), MSG),
        c.Append(
            "9.1",
            "Drafts",
            (
                c.AppendMessage(
                    MSG,
                    ("\\Seen", "\\Draft"),
                    dt.datetime(2021, 6, 12, 10, 11, 12, tzinfo=dt.timezone(dt.timedelta(hours=2))),
                ),
            ),
        ),
    ),
    (
        "apple-mail",
        b"10.1 UID SEARCH 1:* NOT DELETED\r\n",
        c.Search("10.1", And((SeqNumbers(seq("1:*")), Not(Flag("\\Deleted")))), uid=True),
    ),
    ("apple-mail", b"11.1 UNSELECT\r\n", c.Unselect("11.1")),
    # mbsync (isync).
    ("mbsync", b'3 LIST "" "*"\r\n', c.List("3", "", ("*",))),
    (
        "mbsync",
        b"5 UID FETCH 1:1000000000 (UID FLAGS)\r\n",
        c.Fetch("5", seq("1:1000000000"), (FetchItem.UID, FetchItem.FLAGS), True),
    ),
    (
        "mbsync",
        b"6 UID FETCH 7 (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (X-TUID)])\r\n",
        c.Fetch(
            "6",
            seq("7"),
            (
                FetchItem.UID,
                FetchItem.FLAGS,
                FetchItem.RFC822_SIZE,
                BodySection(Section(text=HEADER_FIELDS, fields=("X-TUID",)), True),
            ),
            True,
        ),
    ),
    (
        "mbsync",
        b"7 UID FETCH 7 (BODY.PEEK[])\r\n",
        c.Fetch("7", seq("7"), (BodySection(peek=True),), True),
    ),
    (
        "mbsync",
        b'9 APPEND "INBOX" (\\Seen) {%d+}\r\n%s\r\n' % (len(MSG), MSG),
        c.Append("9", "INBOX", (c.AppendMessage(MSG, ("\\Seen",)),)),
    ),
    (
        "mbsync",
        b"10 UID SEARCH HEADER X-TUID 1234abcd56AB\r\n",
        c.Search("10", Header("X-TUID", "1234abcd56AB"), uid=True),
    ),
    ("mbsync", b'12 CREATE "Foo"\r\n', c.Create("12", "Foo")),
    ("mbsync", b"13 CLOSE\r\n", c.Close("13")),
    # offlineimap3 (imaplib tags, unquoted atoms where imaplib leaves them).
    ("offlineimap", b'JKLM2 LOGIN user "pass word"\r\n', c.Login("JKLM2", "user", "pass word")),
    ("offlineimap", b"JKLM5 SELECT INBOX\r\n", c.Select("JKLM5", "INBOX")),
    ("offlineimap", b"JKLM6 EXAMINE INBOX\r\n", c.Examine("JKLM6", "INBOX")),
    (
        "offlineimap",
        b"JKLM7 UID FETCH 1:* (FLAGS)\r\n",
        c.Fetch("JKLM7", seq("1:*"), (FetchItem.FLAGS,), True),
    ),
    (
        "offlineimap",
        b'JKLM9 APPEND INBOX (\\Seen) "01-Jan-2020 10:00:00 +0000" {%d}\r\n%s\r\n'
        % (len(MSG), MSG),
        c.Append(
            "JKLM9",
            "INBOX",
            (
                c.AppendMessage(
                    MSG,
                    ("\\Seen",),
                    dt.datetime(2020, 1, 1, 10, 0, 0, tzinfo=dt.UTC),
                ),
            ),
        ),
    ),
    (
        "offlineimap",
        b"JKLM10 UID SEARCH (HEADER X-OfflineIMAP 1234-56789)\r\n",
        c.Search("JKLM10", Header("X-OFFLINEIMAP", "1234-56789"), uid=True),
    ),
    (
        "offlineimap",
        b"JKLM11 UID STORE 5 +FLAGS (\\Deleted)\r\n",
        c.Store("JKLM11", seq("5"), c.StoreMode.ADD, ("\\Deleted",), uid=True),
    ),
    ("offlineimap", b"JKLM12 EXPUNGE\r\n", c.Expunge("JKLM12")),
    # imapclient, the project's own test client.
    ("imapclient", b"CHMK3 UID SEARCH ALL\r\n", c.Search("CHMK3", All(), uid=True)),
    ("imapclient", b"CHMK4 UID SEARCH UID 5:*\r\n", c.Search("CHMK4", Uid(seq("5:*")), uid=True)),
]

IDS = [f"{client}:{wire[:40].decode('ascii', 'replace')}" for client, wire, _ in REAL_CLIENTS]


@pytest.mark.parametrize(("client", "wire", "expected"), REAL_CLIENTS, ids=IDS)
def test_real_client_line_whole(client, wire, expected):
    """A real client's command fed in one piece yields exactly that command."""
    assert commands_only(feed_whole(wire)) == [expected]


@pytest.mark.parametrize(("client", "wire", "expected"), REAL_CLIENTS, ids=IDS)
def test_real_client_line_bytewise(client, wire, expected):
    """The same command fed one byte at a time yields the same single command."""
    assert commands_only(feed_bytewise(wire)) == [expected]


@pytest.mark.parametrize(("client", "wire", "expected"), REAL_CLIENTS, ids=IDS)
def test_real_client_line_with_trailing_data(client, wire, expected):
    """Data after a command (the next pipelined command, part of a third) is left for later."""
    parser = Parser()
    parser.feed(wire + b"zz1 NOOP\r\nzz2 LOGO")
    assert commands_only(drain(parser)) == [expected, c.Noop("zz1")]
    assert parser.buffered_bytes == len(b"zz2 LOGO")
    parser.feed(b"UT\r\n")
    assert drain(parser) == [c.Logout("zz2")]


def test_synchronizing_literal_flow():
    """{n} yields ContinuationNeeded; nothing happens until accepted; then the literal is read."""
    parser = Parser()
    parser.feed(b"a LOGIN {4}\r\n")
    assert parser.next_event() == ContinuationNeeded("a", "LOGIN", 4)
    assert parser.state is ParserState.AWAIT_DECISION
    assert parser.next_event() is NEED_DATA
    parser.accept_literal()
    parser.feed(b"fred {6}\r\n")
    assert parser.next_event() == ContinuationNeeded("a", "LOGIN", 6)
    parser.accept_literal()
    parser.feed(b"s{3}\r\n\r\n")
    assert parser.next_event() == c.Login("a", "fred", "s{3}\r\n")
    assert parser.next_event() is NEED_DATA


def test_rejected_literal_drops_the_command():
    """After reject_literal() the client's next line is a new command, not literal data."""
    parser = Parser()
    parser.feed(b"a APPEND INBOX {100000}\r\n")
    event = parser.next_event()
    assert event == ContinuationNeeded("a", "APPEND", 100000)
    parser.reject_literal()
    parser.feed(b"b NOOP\r\n")
    assert drain(parser) == [c.Noop("b")]


def test_decisions_without_a_pending_literal_are_bugs():
    """accept_literal/reject_literal with no ContinuationNeeded outstanding raise RuntimeError."""
    parser = Parser()
    with pytest.raises(RuntimeError):
        parser.accept_literal()
    with pytest.raises(RuntimeError):
        parser.reject_literal()


def test_continuation_command_names_uid_commands():
    """ContinuationNeeded names the command, including the UID prefix."""
    parser = Parser()
    parser.feed(b"a uid search charset utf-8 text {4}\r\n")
    assert parser.next_event() == ContinuationNeeded("a", "UID SEARCH", 4)


def test_literal_plus_needs_no_continuation():
    """{n+} literals are read straight away: no ContinuationNeeded event at all."""
    events = feed_whole(b"a LOGIN {4+}\r\nfred {6+}\r\nsecret\r\n")
    assert events == [c.Login("a", "fred", "secret")]


def test_literal_contents_are_opaque():
    """Line ends, markers and commands inside a literal are data, not protocol."""
    body = b"x NOOP\r\n{5}\r\n\r\ny LOGOUT\r\n"
    events = feed_whole(b"a APPEND INBOX {%d+}\r\n%s\r\nb NOOP\r\n" % (len(body), body))
    assert events == [c.Append("a", "INBOX", (c.AppendMessage(body),)), c.Noop("b")]


def test_multiappend_and_literal8():
    """Several messages and a ~{n} literal8 arrive in one APPEND."""
    events = feed_whole(b"a APPEND INBOX {1+}\r\nx (\\Seen) ~{3+}\r\na\x00b\r\n")
    assert events == [
        c.Append(
            "a",
            "INBOX",
            (c.AppendMessage(b"x"), c.AppendMessage(b"a\x00b", ("\\Seen",), binary=True)),
        )
    ]


def test_line_ends_and_empty_lines():
    """Bare LF ends a line as CRLF does; empty lines between commands are ignored."""
    assert feed_whole(b"a NOOP\n\r\n\nb LOGOUT\r\n") == [c.Noop("a"), c.Logout("b")]


GARBAGE = [
    (b"\x00\x01\x02\r\n", None),
    (b"* OK hi\r\n", None),
    (b"+ ready\r\n", None),
    (b"\xff\xfe GARBAGE\r\n", None),
    (b"(((\r\n", None),
    (b"a\r\n", "a"),
    (b"a FOO\r\n", "a"),
    (b"a FETCH\r\n", "a"),
    (b"a xyzzy INBOX\r\n", "a"),
    (b'a SELECT "unterminated\r\n', "a"),
    (b"a LOGIN {x}\r\n", "a"),
    (b"a NOOP\rb NOOP\r\n", "a"),
    (b"GET / HTTP/1.1\r\n", "GET"),
    (b"a SEARCH " + b"(" * 300 + b"ALL" + b")" * 300 + b"\r\n", "a"),
]


@pytest.mark.parametrize(
    ("garbage", "tag"), GARBAGE, ids=[g[:20].decode("ascii", "replace") for g, _ in GARBAGE]
)
def test_garbage_then_resync(garbage, tag):
    """Garbage yields one BadCommand (tag when readable), and the next line parses normally."""
    for events in (feed_whole(garbage + b"z NOOP\r\n"), feed_bytewise(garbage + b"z NOOP\r\n")):
        assert len(events) == 2, events
        assert isinstance(events[0], BadCommand) and events[0].tag == tag
        assert events[0].status is Status.BAD
        assert events[1] == c.Noop("z")


def test_unknown_command_with_literal_is_refused_before_the_literal():
    """A synchronizing literal of an unknown command gets BAD at once, not '+'."""
    events = feed_whole(b"a XYZZY {5}\r\nb NOOP\r\n")
    assert isinstance(events[0], BadCommand) and events[0].tag == "a"
    assert events[1:] == [c.Noop("b")]
    # A non-synchronizing one is skipped: its octets are not read as commands.
    events = feed_whole(b"a XYZZY {8+}\r\nc NOOP\r\n\r\nb NOOP\r\n")
    assert [type(e) for e in events] == [BadCommand, c.Noop] and events[1] == c.Noop("b")
    events = feed_whole(b"* APPEND {3}\r\nb NOOP\r\n")
    assert events[0] == BadCommand(None, "Invalid or missing tag") and events[1:] == [c.Noop("b")]


def test_bad_command_response():
    """BadCommand.response() is tagged when the tag is known, untagged BAD otherwise."""
    assert BadCommand("a", "x").response() == Tagged("a", Status.BAD, "x")
    assert BadCommand(None, "x").response() == Untagged(Status.BAD, "x")
    [event] = feed_whole(b"s SEARCH CHARSET X-UNKNOWN ALL\r\n")
    assert isinstance(event, BadCommand)
    assert event == BadCommand("s", event.text, BadCharset(), Status.NO)
    assert event.response() == Tagged("s", Status.NO, event.text, BadCharset())


# -- limits ---------------------------------------------------------------------------------------

SMALL = Limits(
    max_line=100,
    max_literal=50,
    max_append_literal=200,
    max_command_literals=300,
    max_discard=1000,
    max_buffer=2000,
    pause_buffer=500,
    max_search_depth=8,
)


def test_max_line_exactly_fits():
    """A command of exactly max_line octets (without CRLF) is accepted."""
    line = b"a LOGIN user " + b"p" * (SMALL.max_line - len(b"a LOGIN user "))
    assert len(line) == SMALL.max_line
    assert feed_whole(line + b"\r\n", SMALL) == [c.Login("a", "user", "p" * (SMALL.max_line - 13))]


def test_max_line_exceeded_by_complete_line():
    """One octet more is answered BAD [TOOBIG] with the tag, and the next command parses."""
    line = b"a LOGIN user " + b"p" * (SMALL.max_line - 12)
    events = feed_whole(line + b"\r\nb NOOP\r\n", SMALL)
    assert events == [BadCommand("a", "Command line too long", TOOBIG), c.Noop("b")]


def test_max_line_exceeded_before_the_line_ends():
    """An endless line is answered as soon as it passes max_line and then discarded cheaply."""
    parser = Parser(SMALL)
    parser.feed(b"t1 SEARCH TEXT " + b"x" * 150)
    assert drain(parser) == [BadCommand("t1", "Command line too long", TOOBIG)]
    assert parser.state is ParserState.SKIP_LINE
    for _ in range(100):
        parser.feed(b"y" * 100)
        assert drain(parser) == []
        assert parser.buffered_bytes == 0
    parser.feed(b"\r\nb NOOP\r\n")
    assert drain(parser) == [c.Noop("b")]


def test_overlong_line_ending_in_literal_plus_skips_the_literal():
    """A too-long line's {n+} literal is skipped too, so its octets are not taken as commands."""
    junk = b"c LOGOUT\r\nd LOGOUT\r\n"
    wire = (
        b"a APPEND INBOX "
        + b"("
        + b"\\Seen " * 30
        + b") {%d+}\r\n%s\r\nb NOOP\r\n" % (len(junk), junk)
    )
    for events in (feed_whole(wire, SMALL), feed_bytewise(wire, SMALL)):
        assert events == [BadCommand("a", "Command line too long", TOOBIG), c.Noop("b")]


def test_max_line_counts_all_lines_of_a_command():
    """Command text after a literal counts towards the same max_line."""
    wire = b"a LOGIN {4+}\r\nfred " + b"p" * 95 + b"\r\nb NOOP\r\n"
    events = feed_whole(wire, SMALL)
    assert events == [BadCommand("a", "Command line too long", TOOBIG), c.Noop("b")]


def test_max_literal_synchronizing():
    """A synchronizing literal above max_literal is refused at once (BAD [TOOBIG]), no '+'."""
    events = feed_whole(b"a LOGIN {51}\r\nb NOOP\r\n", SMALL)
    assert events == [BadCommand("a", "Literal too large", TOOBIG, Status.BAD), c.Noop("b")]
    parser = Parser(SMALL)
    parser.feed(b"a LOGIN {50}\r\n")
    assert parser.next_event() == ContinuationNeeded("a", "LOGIN", 50)


def test_max_append_literal():
    """APPEND may use max_append_literal; above it the answer is NO [TOOBIG] (RFC 7889)."""
    parser = Parser(SMALL)
    parser.feed(b"a APPEND INBOX {200}\r\n")
    assert parser.next_event() == ContinuationNeeded("a", "APPEND", 200)
    events = feed_whole(b"a APPEND INBOX {201}\r\nb NOOP\r\n", SMALL)
    assert events == [BadCommand("a", "Literal too large", TOOBIG, Status.NO), c.Noop("b")]


def test_max_literal_non_synchronizing_is_skipped():
    """A too-large {n+} literal is answered BAD [TOOBIG] and its octets are discarded unread."""
    payload = b"z LOGOUT\r\n" * 6
    wire = b"a LOGIN {%d+}\r\n%s x\r\nb NOOP\r\n" % (len(payload), payload)
    for events in (feed_whole(wire, SMALL), feed_bytewise(wire, SMALL)):
        assert events == [BadCommand("a", "Literal too large", TOOBIG), c.Noop("b")]


def test_max_command_literals():
    """MULTIAPPEND literals together may not exceed max_command_literals."""
    part = b"m" * 150
    ok = b"a APPEND INBOX {150+}\r\n%s {150+}\r\n%s\r\n" % (part, part)
    assert feed_whole(ok, SMALL) == [
        c.Append("a", "INBOX", (c.AppendMessage(part), c.AppendMessage(part)))
    ]
    too_much = b"a APPEND INBOX {150+}\r\n%s {150+}\r\n%s {1+}\r\nx\r\nb NOOP\r\n" % (part, part)
    assert feed_whole(too_much, SMALL) == [
        BadCommand("a", "Literal too large", TOOBIG),
        c.Noop("b"),
    ]


def test_max_discard():
    """A {n+} literal too large even to skip is answered, then the parser gives up: every
    later next_event raises RemoteProtocolError and input is dropped."""
    parser = Parser(SMALL)
    parser.feed(b"a APPEND INBOX {1001+}\r\n")
    assert parser.next_event() == BadCommand("a", "Literal too large", TOOBIG)
    with pytest.raises(RemoteProtocolError, match="Literal too large to skip"):
        parser.next_event()
    assert parser.state is ParserState.FATAL
    parser.feed(b"b NOOP\r\n")
    with pytest.raises(RemoteProtocolError, match="Literal too large to skip"):
        parser.next_event()
    assert parser.buffered_bytes == 0


def test_max_buffer_and_pause():
    """should_pause turns on at pause_buffer; complete commands may exceed max_buffer (the
    adapter bounds those), but more than max_buffer octets without a complete event (here,
    literal data sent before the continuation) raise RemoteProtocolError."""
    parser = Parser(SMALL)
    parser.feed(b"a NOOP\r\n" * 62)  # 496 octets
    assert not parser.should_pause
    parser.feed(b"b NOOP\r\n")
    assert parser.should_pause
    assert len(drain(parser)) == 63
    assert not parser.should_pause and parser.buffered_bytes == 0

    parser.feed(b"a NOOP\r\n" * 300)  # 2400 octets of complete commands
    assert len(drain(parser)) == 300

    parser.feed(b"a LOGIN {10}\r\n" + b"x" * 2000)  # at the limit while awaiting "+"
    assert parser.next_event() == ContinuationNeeded("a", "LOGIN", 10)
    assert parser.next_event() is NEED_DATA
    parser.feed(b"x")
    with pytest.raises(RemoteProtocolError, match="Too much pipelined data"):
        parser.next_event()
    assert parser.buffered_bytes == 0
    parser.feed(b"b NOOP\r\n" * 1000)
    assert parser.buffered_bytes == 0
    with pytest.raises(RemoteProtocolError, match="Too much pipelined data"):
        parser.next_event()


def test_max_search_depth():
    """SEARCH nesting deeper than max_search_depth is a BadCommand, not a RecursionError."""
    events = feed_whole(
        b"a SEARCH " + b"NOT " * 9 + b"ALL\r\nb SEARCH " + b"NOT " * 8 + b"ALL\r\n", SMALL
    )
    assert isinstance(events[0], BadCommand) and events[0].tag == "a"
    assert isinstance(events[1], c.Search)


@pytest.mark.parametrize(
    "changes",
    [
        {"max_line": 0},
        {"max_literal": -1},
        {"max_buffer": 100, "max_line": 100, "pause_buffer": 50},
        {"pause_buffer": 2 * 1024 * 1024},
        {"max_discard": -1},
        {"max_search_depth": 0},
    ],
)
def test_limits_are_validated(changes):
    """Inconsistent or non-positive limits are refused when the Limits object is built."""
    with pytest.raises(ValueError):
        dataclasses.replace(Limits(), **changes)


# -- IDLE and AUTHENTICATE ------------------------------------------------------------------------


def test_idle_done():
    """After start_idle, DONE (any case) yields IdleDone(ok=True) and commands resume."""
    parser = Parser()
    parser.feed(b"a IDLE\r\n")
    assert parser.next_event() == c.Idle("a")
    parser.start_idle("a")
    assert parser.state is ParserState.IDLE
    assert parser.next_event() is NEED_DATA
    parser.feed(b"done\r\nb NOOP\r\n")
    assert drain(parser) == [IdleDone("a", True), c.Noop("b")]


def test_idle_pipelined_in_one_packet():
    """IDLE and DONE arriving together still work: the parser reads lazily."""
    parser = Parser()
    parser.feed(b"a IDLE\r\nDONE\r\nb NOOP\r\n")
    assert parser.next_event() == c.Idle("a")
    parser.start_idle("a")
    assert drain(parser) == [IdleDone("a", True), c.Noop("b")]


def test_idle_other_line():
    """Anything but DONE ends IDLE with ok=False (answer BAD) and is not parsed as a command."""
    parser = Parser()
    parser.start_idle("a")
    parser.feed(b"b NOOP\r\nc NOOP\r\n")
    assert drain(parser) == [IdleDone("a", False), c.Noop("c")]


def test_idle_overlong_line():
    """An endless line during IDLE ends it (ok=False) and is skipped."""
    parser = Parser(SMALL)
    parser.start_idle("a")
    parser.feed(b"D" * 500)
    assert drain(parser) == [IdleDone("a", False)]
    parser.feed(b"\r\nb NOOP\r\n")
    assert drain(parser) == [c.Noop("b")]


def test_modes_cannot_start_mid_command():
    """start_idle/start_authenticate in the middle of a command are bugs and raise."""
    parser = Parser()
    parser.feed(b"a LOGIN {3}\r\n")
    assert isinstance(parser.next_event(), ContinuationNeeded)
    with pytest.raises(RuntimeError):
        parser.start_idle("a")
    with pytest.raises(RuntimeError):
        parser.start_authenticate("a")


@pytest.mark.parametrize(
    ("line", "event"),
    [
        (b"AHVzZXIAcGFzcw==", AuthResponse("a", b"\x00user\x00pass")),
        (b"*", AuthResponse("a", None)),
        (b"", AuthResponse("a", b"")),
        (b"not base64!", BadCommand("a", "Invalid base64 in SASL response")),
    ],
)
def test_authenticate_lines(line, event):
    """A SASL response line is base64-decoded; '*' cancels; bad base64 is BAD; then commands resume."""
    parser = Parser()
    parser.feed(b"a AUTHENTICATE PLAIN\r\n")
    assert parser.next_event() == c.Authenticate("a", "PLAIN")
    parser.start_authenticate("a")
    parser.feed(line + b"\r\nb NOOP\r\n")
    assert drain(parser) == [event, c.Noop("b")]


def test_authenticate_overlong_line():
    """A SASL response longer than max_line is refused with TOOBIG and skipped."""
    parser = Parser(SMALL)
    parser.start_authenticate("a")
    parser.feed(b"QUFB" * 100 + b"\r\nb NOOP\r\n")
    assert drain(parser) == [BadCommand("a", "SASL response line too long", TOOBIG), c.Noop("b")]


# -- linear buffering -------------------------------------------------------------------------------


class CountingBuffer(bytearray):
    """A bytearray that counts the octets its find() calls could have scanned."""

    scanned = 0

    def find(self, sub, start=0, *args):
        CountingBuffer.scanned += max(0, len(self) - start)
        return super().find(sub, start, *args)


def test_long_line_fed_bytewise_is_scanned_once():
    """Feeding a 64 KiB line one byte at a time never rescans what was already searched."""
    parser = Parser()
    parser._buf._data = CountingBuffer()  # white box: the property is about the search
    CountingBuffer.scanned = 0
    line = b"a UID FETCH " + b",".join(b"%d" % n for n in range(1, 11000)) + b" (FLAGS)\r\n"
    assert len(line) < Limits().max_line
    for index in range(len(line)):
        parser.feed(line[index : index + 1])
        assert parser.next_event() is NEED_DATA or index == len(line) - 1
    assert CountingBuffer.scanned <= 2 * len(line)


def test_large_literal_in_4k_chunks_is_linear():
    """A 10 MB APPEND fed in 4 KiB chunks is collected exactly (the scan-count test above
    pins linearity; timing is for the benchmarks, not the tests)."""
    body = bytes(range(256)) * (10 * 1024 * 1024 // 256)
    wire = b"a APPEND INBOX {%d}\r\n" % len(body)
    parser = Parser()
    parser.feed(wire)
    assert parser.next_event() == ContinuationNeeded("a", "APPEND", len(body))
    parser.accept_literal()
    for offset in range(0, len(body), 4096):
        parser.feed(body[offset : offset + 4096])
        assert parser.next_event() is NEED_DATA
    parser.feed(b"\r\n")
    event = parser.next_event()
    assert isinstance(event, c.Append) and event.messages[0].data == body


def test_literal_fed_bytewise_and_pipelined_behind_a_busy_command():
    """A literal arriving one byte at a time, or buffered while the server was busy, reads the same."""
    body = b"0123456789abcdef" * 4096  # 64 KiB
    wire = b"a APPEND INBOX {%d+}\r\n%s\r\nb NOOP\r\n" % (len(body), body)
    expected = [c.Append("a", "INBOX", (c.AppendMessage(body),)), c.Noop("b")]
    for drain_every in (1, 3, 50_000):
        parser = Parser()
        events: list[Event] = []
        for index in range(len(wire)):
            parser.feed(wire[index : index + 1])
            if index % drain_every == 0:
                events.extend(drain(parser))
        events.extend(drain(parser))
        assert events == expected


# -- fuzzing ----------------------------------------------------------------------------------------

FUZZ_LIMITS = Limits(
    max_line=120,
    max_literal=40,
    max_append_literal=90,
    max_command_literals=150,
    max_discard=600,
    max_buffer=1200,
    pause_buffer=600,
    max_search_depth=6,
)

TOKENS = [
    b"\r\n",
    b"\n",
    b" ",
    b"a ",
    b"* ",
    b"{5}\r\n",
    b"{3+}\r\n",
    b"{0}\r\n",
    b"{500+}\r\n",
    b"{700+}\r\n",
    b"{41}\r\n",
    b"~{2}\r\n",
    b"{99999999999999999999}\r\n",
    b"a APPEND INBOX ",
    b"a LOGIN ",
    b"a IDLE\r\n",
    b"DONE\r\n",
    b"a AUTHENTICATE PLAIN\r\n",
    b"a SEARCH ",
    b"NOT ",
    b"(",
    b")",
    b'"',
    b"\\",
    b"a UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (FROM)]<0.5>)\r\n",
    b"a LOGIN {3+}\r\nabc {2}\r\n",
]

VALID_LINES = [wire for _, wire, _ in REAL_CLIENTS if b"{" not in wire]


def fuzz_drive(parser: Parser, data: st.DataObject, limits: Limits) -> None:
    """Consume events with random server decisions; check the invariants after each."""
    for _ in range(10_000):
        try:
            event = parser.next_event()
        except RemoteProtocolError:
            assert parser.state is ParserState.FATAL and parser.buffered_bytes == 0
            return
        assert isinstance(
            event,
            (
                c.Command,
                type(NEED_DATA),
                ContinuationNeeded,
                BadCommand,
                IdleDone,
                AuthResponse,
            ),
        )
        assert parser.buffered_bytes <= limits.max_buffer
        assert len(parser._literal) <= limits.max_append_literal  # white box: memory bound
        assert sum(map(len, parser._literals)) <= limits.max_command_literals
        if event is NEED_DATA:
            return
        if isinstance(event, BadCommand):
            event.response()  # always renderable
        if isinstance(event, ContinuationNeeded):
            assert event.tag is not None and event.size <= limits.max_append_literal
            if data.draw(st.booleans(), label="accept"):
                parser.accept_literal()
            else:
                parser.reject_literal()
        elif isinstance(event, c.Idle) and data.draw(st.booleans(), label="idle"):
            parser.start_idle(event.tag)
        elif isinstance(event, c.Authenticate) and data.draw(st.booleans(), label="sasl"):
            parser.start_authenticate(event.tag)
    raise AssertionError("the parser produced events without consuming input")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=st.lists(st.one_of(st.binary(max_size=30), st.sampled_from(TOKENS)), max_size=40),
    data=st.data(),
)
def test_fuzz_random_input(pieces, data):
    """Random bytes and protocol fragments in random chunks raise nothing but
    RemoteProtocolError and never exceed the limits."""
    stream = b"".join(pieces)
    parser = Parser(FUZZ_LIMITS)
    position = 0
    while position < len(stream):
        size = data.draw(st.integers(1, 64), label="chunk")
        parser.feed(stream[position : position + size])
        position += size
        fuzz_drive(parser, data, FUZZ_LIMITS)


@settings(max_examples=300, deadline=None)
@given(
    line=st.sampled_from(VALID_LINES),
    edits=st.lists(
        st.tuples(
            st.integers(0, 400),
            st.sampled_from(["insert", "delete", "replace", "swapcase"]),
            st.binary(min_size=1, max_size=4),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_fuzz_mutated_lines_resync(line, edits):
    """A mutated real command yields at most one event, and the following command always parses."""
    body = bytearray(line.rstrip(b"\r\n"))
    for position, kind, blob in edits:
        blob = blob.replace(b"\n", b"").replace(b"{", b"")
        at = position % (len(body) + 1)
        if kind == "insert":
            body[at:at] = blob
        elif kind == "delete":
            del body[at : at + len(blob)]
        elif kind == "replace":
            body[at : at + len(blob)] = blob
        else:
            body[at : at + 4] = bytes(body[at : at + 4]).swapcase()
    events = feed_whole(bytes(body) + b"\r\nzz NOOP\r\n", FUZZ_LIMITS)
    assert events[-1] == c.Noop("zz")
    assert len(events) <= 2


def test_before_login_literals_are_bound_by_max_prelogin_literal():
    """Before end_prelogin, a literal above max_prelogin_literal is refused: synchronizing
    with BAD [TOOBIG] before any octet, non-synchronizing with BAD [TOOBIG] and then
    RemoteProtocolError, none of its octets kept; fed whole or byte by byte; after
    end_prelogin the usual limits apply."""
    limits = dataclasses.replace(SMALL, max_prelogin_literal=10)
    parser = Parser(limits, prelogin=True)
    parser.feed(b"a LOGIN {10+}\r\n0123456789 x\r\nb LOGIN {11}\r\n")
    assert drain(parser) == [c.Login("a", "0123456789", "x"),
                             BadCommand("b", "Literal too large", TOOBIG, Status.BAD)]
    parser.end_prelogin()
    parser.feed(b"c APPEND INBOX {11}\r\n")
    assert parser.next_event() == ContinuationNeeded("c", "APPEND", 11)
    wire = b"a APPEND INBOX {200+}\r\n" + b"x" * 200 + b"\r\nb NOOP\r\n"
    for bytewise in (False, True):
        parser = Parser(limits, prelogin=True)
        events: list[Event] = []
        error = None
        for chunk in ([wire[i:i + 1] for i in range(len(wire))] if bytewise else [wire]):
            parser.feed(chunk)
            try:
                while (event := parser.next_event()) is not NEED_DATA:
                    events.append(event)
            except RemoteProtocolError as exc:
                error = exc.reason
                break
        assert events == [BadCommand("a", "Literal too large", TOOBIG)]
        assert error == "Literal too large to skip"
        assert parser.buffered_bytes == 0


def test_utf8_names_apply_from_the_next_command_framed():
    """use_utf8_names (ENABLE IMAP4rev2 succeeded) changes how the commands framed after it
    read mailbox names, also those already buffered, fed one byte at a time."""
    parser = Parser()
    data = 'a SELECT "Entw&APw-rfe"\r\nb SELECT "Entwürfe"\r\n'.encode()
    for octet in data[:26]:
        parser.feed(bytes([octet]))
    assert drain(parser) == [c.Select("a", "Entwürfe")]
    parser.use_utf8_names()
    for octet in data[26:]:
        parser.feed(bytes([octet]))
    assert drain(parser) == [c.Select("b", "Entwürfe")]
