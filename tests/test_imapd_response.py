"""Tests for imapd.response: the response writer."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from imapclient import imap_utf7
from imapclient.response_parser import parse_fetch_response, parse_response

from imapd import response as r
from imapd.lexer import Frame, Lexer
from imapd.sequence import SequenceSet


def imaplib_form(wire: bytes) -> list:
    """Split one response as imaplib hands it to imapclient: literals become (prefix, data)."""
    items: list = []
    rest = wire
    while True:
        found = re.search(rb"\{(\d+)\}\r\n", rest)
        if found is None:
            assert rest.endswith(b"\r\n")
            items.append(rest[:-2])
            return [item for item in items if item != b""]
        size = int(found.group(1))
        start = found.end()
        items.append((rest[: found.end() - 2], rest[start : start + size]))
        rest = rest[start + size :]


TZ = dt.timezone(dt.timedelta(hours=-7))

LINES = [
    (r.Tagged("a1", r.Status.OK, "LOGIN completed"), b"a1 OK LOGIN completed\r\n"),
    (
        r.Tagged("a1", r.Status.NO, "No such mailbox", r.TRYCREATE),
        b"a1 NO [TRYCREATE] No such mailbox\r\n",
    ),
    (r.Tagged("a1", r.Status.BAD, ""), b"a1 BAD Error\r\n"),
    (r.Tagged("a1", r.Status.OK, "", r.READ_WRITE), b"a1 OK [READ-WRITE] Completed\r\n"),
    (
        r.Untagged(r.Status.OK, "Ready", r.CapabilityCode(("IMAP4rev1", "LITERAL+", "AUTH=PLAIN"))),
        b"* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN] Ready\r\n",
    ),
    (
        r.Untagged(r.Status.OK, "Limited", r.PermanentFlags(("\\Deleted", "\\Seen", "\\*"))),
        b"* OK [PERMANENTFLAGS (\\Deleted \\Seen \\*)] Limited\r\n",
    ),
    (
        r.Untagged(r.Status.OK, "Predicted next UID", r.UidNext(4392)),
        b"* OK [UIDNEXT 4392] Predicted next UID\r\n",
    ),
    (
        r.Untagged(r.Status.OK, "UIDs valid", r.UidValidity(3857529045)),
        b"* OK [UIDVALIDITY 3857529045] UIDs valid\r\n",
    ),
    (r.Untagged(r.Status.OK, "First unseen", r.Unseen(12)), b"* OK [UNSEEN 12] First unseen\r\n"),
    (
        r.Untagged(r.Status.OK, "Highest", r.HighestModSeq(715194045007)),
        b"* OK [HIGHESTMODSEQ 715194045007] Highest\r\n",
    ),
    (
        r.Untagged(r.Status.OK, "No mod-sequences", r.NOMODSEQ),
        b"* OK [NOMODSEQ] No mod-sequences\r\n",
    ),
    (
        r.Tagged(
            "A003", r.Status.OK, "APPEND completed", r.AppendUid(38505, SequenceSet.single(3955))
        ),
        b"A003 OK [APPENDUID 38505 3955] APPEND completed\r\n",
    ),
    (
        r.Tagged(
            "A004",
            r.Status.OK,
            "Done",
            r.CopyUid(38505, SequenceSet.parse("304,319:320"), SequenceSet.parse("3956:3958")),
        ),
        b"A004 OK [COPYUID 38505 304,319:320 3956:3958] Done\r\n",
    ),
    (
        r.Tagged(
            "d", r.Status.OK, "Conditional STORE failed", r.Modified(SequenceSet.parse("7,9"))
        ),
        b"d OK [MODIFIED 7,9] Conditional STORE failed\r\n",
    ),
    (
        r.Tagged("s", r.Status.NO, "Unknown charset", r.BadCharset()),
        b"s NO [BADCHARSET (US-ASCII UTF-8)] Unknown charset\r\n",
    ),
    (r.Tagged("s", r.Status.NO, "x", r.BadCharset(())), b"s NO [BADCHARSET] x\r\n"),
    (
        r.Untagged(r.Status.BYE, "Autologout; idle for too long"),
        b"* BYE Autologout; idle for too long\r\n",
    ),
    (r.Untagged(r.Status.PREAUTH, ""), b"* PREAUTH Logged in\r\n"),
    (r.Untagged(r.Status.NO, "Disk is 98% full", r.ALERT), b"* NO [ALERT] Disk is 98% full\r\n"),
    (r.Continuation(), b"+ Ready\r\n"),
    (r.Continuation("idling"), b"+ idling\r\n"),
    (r.Continuation(""), b"+ \r\n"),
    (r.Challenge(b""), b"+ \r\n"),
    (r.Challenge(b"\x00\x01challenge"), b"+ AAFjaGFsbGVuZ2U=\r\n"),
    (r.CapabilityData(("IMAP4rev1", "IDLE", "MOVE")), b"* CAPABILITY IMAP4rev1 IDLE MOVE\r\n"),
    (r.Exists(23), b"* 23 EXISTS\r\n"),
    (r.Exists(0), b"* 0 EXISTS\r\n"),
    (r.Recent(5), b"* 5 RECENT\r\n"),
    (r.Expunge(44), b"* 44 EXPUNGE\r\n"),
    (
        r.Flags(("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "$Junk")),
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Junk)\r\n",
    ),
    (r.ListItem("INBOX", ("\\HasNoChildren",)), b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n'),
    (r.ListItem("", ("\\Noselect",), "/"), b'* LIST (\\Noselect) "/" ""\r\n'),
    (r.ListItem("foo", (), None), b'* LIST () NIL "foo"\r\n'),
    (
        r.ListItem("~peter/mail/台北/日本語", ("\\HasNoChildren",)),
        b'* LIST (\\HasNoChildren) "/" "~peter/mail/&U,BTFw-/&ZeVnLIqe-"\r\n',
    ),
    (r.ListItem('Quote"Back\\slash', (), "."), b'* LIST () "." "Quote\\"Back\\\\slash"\r\n'),
    (
        r.ListItem("Sent", ("\\Sent", "\\HasNoChildren"), "/", lsub=True),
        b'* LSUB (\\Sent \\HasNoChildren) "/" "Sent"\r\n',
    ),
    (
        r.ListItem("Foo", ("\\HasChildren",), "/", child_info=("SUBSCRIBED",)),
        b'* LIST (\\HasChildren) "/" "Foo" ("CHILDINFO" ("SUBSCRIBED"))\r\n',
    ),
    (r.ListItem("a", (), "\\"), b'* LIST () "\\\\" "a"\r\n'),
    (
        r.StatusData("blurdybloop", (("MESSAGES", 231), ("UIDNEXT", 44292))),
        b'* STATUS "blurdybloop" (MESSAGES 231 UIDNEXT 44292)\r\n',
    ),
    # RFC 9208 4.1.1, 4.1.2 and 4.1.3's examples.
    (
        r.QuotaData("!partition/sda4", (("STORAGE", 104, 10923847),)),
        b'* QUOTA "!partition/sda4" (STORAGE 104 10923847)\r\n',
    ),
    (
        r.QuotaData("#user/alice", (("STORAGE", 54, 111), ("MESSAGE", 42, 1000))),
        b'* QUOTA "#user/alice" (STORAGE 54 111 MESSAGE 42 1000)\r\n',
    ),
    (r.QuotaRootData("INBOX", ("",)), b'* QUOTAROOT "INBOX" ""\r\n'),
    (
        r.QuotaRootData("INBOX", ("#user/alice", "!partition/sda4")),
        b'* QUOTAROOT "INBOX" "#user/alice" "!partition/sda4"\r\n',
    ),
    (r.QuotaRootData("comp.mail.mime", ()), b'* QUOTAROOT "comp.mail.mime"\r\n'),
    (r.SearchData((2, 3, 6)), b"* SEARCH 2 3 6\r\n"),
    (r.SearchData(()), b"* SEARCH\r\n"),
    (r.SearchData((2, 5), 917162500), b"* SEARCH 2 5 (MODSEQ 917162500)\r\n"),
    (r.SearchData((), 917162500), b"* SEARCH\r\n"),
    # RFC 5267's examples: ESORT's ordered ALL, PARTIAL, ADDTO/REMOVEFROM, NOUPDATE.
    (
        r.ESearchData("E01", True, all=SequenceSet(((23765, 23765), (23764, 23764),
                                                    (23763, 23763), (23761, 23761)))),
        b'* ESEARCH (TAG "E01") UID ALL 23765,23764,23763,23761\r\n',
    ),
    (
        r.ESearchData("A02", True, partial=r.PartialResult(
            23500, 24000, SequenceSet.parse("67,100:102"))),
        b'* ESEARCH (TAG "A02") UID PARTIAL (23500:24000 67,100:102)\r\n',
    ),
    (
        r.ESearchData("A04", True, partial=r.PartialResult(24000, 24500, None)),
        b'* ESEARCH (TAG "A04") UID PARTIAL (24000:24500 NIL)\r\n',
    ),
    (
        r.ESearchData("A01", count=74, partial=r.PartialResult(1, 2, SequenceSet.parse("3"))),
        b'* ESEARCH (TAG "A01") PARTIAL (1:2 3) COUNT 74\r\n',
    ),
    (
        r.ESearchData("B01", True, updates=(r.ContextUpdate(
            "ADDTO", ((0, SequenceSet.parse("32768:32769")),)),)),
        b'* ESEARCH (TAG "B01") UID ADDTO (0 32768:32769)\r\n',
    ),
    (
        r.ESearchData("C01", True, updates=(
            r.ContextUpdate("ADDTO", ((1, SequenceSet.parse("2733")),)),
            r.ContextUpdate("ADDTO", ((1, SequenceSet.parse("2731:2732")),)))),
        b'* ESEARCH (TAG "C01") UID ADDTO (1 2733) ADDTO (1 2731:2732)\r\n',
    ),
    (
        r.ESearchData("s", updates=(
            r.ContextUpdate("REMOVEFROM", ((2, SequenceSet.parse("7")),
                                           (4, SequenceSet(((9, 9), (8, 8)))))),
            r.ContextUpdate("ADDTO", ((1, SequenceSet.parse("5:6")),)))),
        b'* ESEARCH (TAG "s") REMOVEFROM (2 7 4 9,8) ADDTO (1 5:6)\r\n',
    ),
    (
        r.Untagged(r.Status.NO, "Too many contexts", r.NoUpdate("B02")),
        b'* NO [NOUPDATE "B02"] Too many contexts\r\n',
    ),
    (r.NamespaceData(), b'* NAMESPACE (("" "/")) NIL NIL\r\n'),
    (
        r.NamespaceData((("", "/"),), (("~", "/"),), (("#shared/", "/"), ("#public/", None))),
        b'* NAMESPACE (("" "/")) (("~" "/")) (("#shared/" "/")("#public/" NIL))\r\n',
    ),
    (r.IdData(None), b"* ID NIL\r\n"),
    (
        r.IdData((("name", "objmail"), ("version", "0.1"), ("os", None))),
        b'* ID ("name" "objmail" "version" "0.1" "os" NIL)\r\n',
    ),
    (r.Enabled(("CONDSTORE", "QRESYNC")), b"* ENABLED CONDSTORE QRESYNC\r\n"),
    (r.Enabled(()), b"* ENABLED\r\n"),
    (r.Vanished(SequenceSet.parse("41,43:116")), b"* VANISHED 41,43:116\r\n"),
    (r.Vanished(SequenceSet.parse("41"), earlier=True), b"* VANISHED (EARLIER) 41\r\n"),
    (
        r.FetchData(
            12,
            (
                r.FetchFlags(("\\Seen",)),
                r.FetchNumber("UID", 4827313),
                r.FetchNumber("RFC822.SIZE", 44827),
            ),
        ),
        b"* 12 FETCH (FLAGS (\\Seen) UID 4827313 RFC822.SIZE 44827)\r\n",
    ),
    (
        r.FetchData(
            1,
            (r.FetchDate(dt.datetime(1996, 7, 17, 2, 44, 25, tzinfo=TZ)), r.FetchModSeq(624140003)),
        ),
        b'* 1 FETCH (INTERNALDATE "17-Jul-1996 02:44:25 -0700" MODSEQ (624140003))\r\n',
    ),
    (
        r.FetchData(
            2, (r.FetchRaw("ENVELOPE", b'("date" "subj" NIL NIL NIL NIL NIL NIL NIL "<id>")'),)
        ),
        b'* 2 FETCH (ENVELOPE ("date" "subj" NIL NIL NIL NIL NIL NIL NIL "<id>"))\r\n',
    ),
    (r.FetchData(3, (r.FetchLiteral("BODY[1.2]", None),)), b"* 3 FETCH (BODY[1.2] NIL)\r\n"),
    (r.FetchData(3, (r.FetchLiteral("BODY[]", b""),)), b"* 3 FETCH (BODY[] {0}\r\n)\r\n"),
    (
        r.FetchData(4, (r.FetchLiteral("BINARY[1]", b"a\x00b", binary=True),)),
        b"* 4 FETCH (BINARY[1] ~{3}\r\na\x00b)\r\n",
    ),
    (r.FetchData(5, ()), b"* 5 FETCH ()\r\n"),
]


@pytest.mark.parametrize(
    ("response", "wire"),
    LINES,
    ids=[type(line[0]).__name__ + str(i) for i, line in enumerate(LINES)],
)
def test_render(response, wire):
    """Each response renders to its exact RFC wire form, ending in CRLF."""
    assert r.to_bytes(response) == wire


def test_fetch_body_is_not_copied():
    """A body literal goes out as the caller's own bytes objects, after a '{n}' prefix chunk."""
    body = b"Subject: hi\r\n\r\n" + b"x" * 100_000
    chunks = r.render(
        r.FetchData(
            7, (r.FetchNumber("UID", 9), r.FetchLiteral("BODY[]", body), r.FetchFlags(("\\Seen",)))
        )
    )
    assert chunks[0] == b"* 7 FETCH (UID 9 BODY[] {%d}\r\n" % len(body)
    assert chunks[1] is body
    assert chunks[2] == b" FLAGS (\\Seen))\r\n"

    parts = (b"Subject: hi\r\n", b"\r\n", b"tail")
    chunks = r.render(r.FetchData(8, (r.FetchLiteral("BODY[]<0>", parts),)))
    assert chunks[0].endswith(b"{%d}\r\n" % sum(map(len, parts)))
    assert all(any(chunk is part for chunk in chunks) for part in parts)
    assert r.render_all([r.Exists(1), r.Recent(0)]) == [b"* 1 EXISTS\r\n", b"* 0 RECENT\r\n"]


def test_fetch_round_trips_through_imapclient():
    """imapclient's own parser reads our FETCH responses back, literals included."""
    body = b"From: a@b\r\nSubject: caf\xc3\xa9\r\n\r\nbody\r\n"
    wire = r.to_bytes(
        r.FetchData(
            3,
            (
                r.FetchNumber("UID", 77),
                r.FetchFlags(("\\Seen", "$Junk")),
                r.FetchLiteral("BODY[HEADER.FIELDS (FROM SUBJECT)]", body),
                r.FetchDate(dt.datetime(2024, 2, 29, 23, 1, 2, tzinfo=TZ)),
                r.FetchLiteral("BODY[2]", None),
                r.FetchModSeq(12),
            ),
        )
    )
    # imaplib hands imapclient the data after "* " with the word FETCH removed.
    assert wire.startswith(b"* 3 FETCH (")
    data = imaplib_form(b"3 " + wire[len(b"* 3 FETCH ") :])
    parsed = parse_fetch_response(data, normalise_times=False, uid_is_key=False)
    item = parsed[3]
    assert item[b"UID"] == 77
    assert item[b"FLAGS"] == (b"\\Seen", b"$Junk")
    assert item[b"BODY[HEADER.FIELDS (FROM SUBJECT)]"] == body
    assert item[b"BODY[2]"] is None
    assert item[b"MODSEQ"] == (12,)
    assert item[b"INTERNALDATE"] == dt.datetime(2024, 2, 29, 23, 1, 2, tzinfo=TZ).astimezone(
        item[b"INTERNALDATE"].tzinfo
    )


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (b"plain", b'"plain"'),
        (b"", b'""'),
        (b'say "hi" \\o/', b'"say \\"hi\\" \\\\o/"'),
        (b"two\r\nlines", b"{10}\r\ntwo\r\nlines"),
        (b"caf\xc3\xa9", b"{5}\r\ncaf\xc3\xa9"),
        (b"nul\x00", b"{4}\r\nnul\x00"),
        ("caf\u00e9", b"{5}\r\ncaf\xc3\xa9"),
    ],
)
def test_string_quotes_when_safe_else_literal(value, wire):
    """string() quotes 7-bit text without NUL/CR/LF and uses an exact-length literal otherwise."""
    assert r.string(value) == wire


def test_astring_and_nstring():
    """astring() uses an atom when safe but never the atom NIL; nstring(None) is NIL."""
    assert r.astring("FROM") == b"FROM"
    assert r.astring("nil") == b'"nil"'
    assert r.astring("a b") == b'"a b"'
    assert r.astring("a]b") == b"a]b"
    assert r.astring("") == b'""'
    assert r.nstring(None) == b"NIL"
    assert r.nstring("NIL") == b'"NIL"'
    assert r.mailbox("Entw\u00fcrfe") == b'"Entw&APw-rfe"'


def test_text_is_sanitised():
    """Human text can never inject a line or a fake response code, and is never empty."""
    wire = r.to_bytes(r.Tagged("a", r.Status.BAD, "Unknown command FOO\r\n* OK [ALERT] pwned"))
    assert wire.count(b"\r\n") == 1 and wire.endswith(b"\r\n")
    assert r.to_bytes(r.Untagged(r.Status.OK, "[ALERT] fake")) == b"* OK - [ALERT] fake\r\n"
    assert r.to_bytes(r.Untagged(r.Status.NO, "caf\u00e9")) == b"* NO caf?\r\n"
    assert r.to_bytes(r.Continuation("a\r\nb")) == b"+ a??b\r\n"


@pytest.mark.parametrize(
    "make",
    [
        lambda: r.Tagged("a", r.Status.PREAUTH, "x"),
        lambda: r.Tagged("a b", r.Status.OK, "x"),
        lambda: r.Tagged("", r.Status.OK, "x"),
        lambda: r.to_bytes(r.Flags(("bad flag",))),
        lambda: r.to_bytes(r.Flags(("\\",))),
        lambda: r.to_bytes(r.CapabilityData(("IMAP4rev1", "BAD CAP"))),
        lambda: r.to_bytes(r.Exists(-1)),
        lambda: r.to_bytes(r.Expunge(0)),
        lambda: r.to_bytes(r.Untagged(r.Status.OK, "x", r.UidNext(0))),
        lambda: r.to_bytes(
            r.Tagged(
                "a",
                r.Status.OK,
                "x",
                r.CopyUid(1, SequenceSet.parse("1:*"), SequenceSet.parse("2")),
            )
        ),
        lambda: r.to_bytes(r.Vanished(SequenceSet.parse("$"))),
        lambda: r.to_bytes(r.SearchData((0,))),
        lambda: r.ContextUpdate("ADDTO", ()),
        lambda: r.ContextUpdate("REMOVETO", ((0, SequenceSet.parse("1")),)),
        lambda: r.to_bytes(r.ESearchData("a", partial=r.PartialResult(0, 5, None))),
        lambda: r.to_bytes(r.FetchData(1, (r.FetchDate(dt.datetime(2020, 1, 1)),))),
        lambda: r.to_bytes(r.Untagged(r.Status.OK, "x", r.Code("NOT AN ATOM"))),
        lambda: r.to_bytes(r.StatusData("INBOX", (("MESSAGES", True),))),
    ],
)
def test_caller_bugs_raise(make):
    """Invalid tags, flags, atoms, numbers, '*' in UID codes and naive dates raise ValueError."""
    with pytest.raises(ValueError):
        make()


def test_unknown_objects_raise_type_error():
    """Rendering something that is not a response is a bug and raises TypeError."""
    with pytest.raises(TypeError):
        r.render(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        r.render(r.FetchData(1, (object(),)))  # type: ignore[arg-type]


def _read_back(wire: bytes) -> bytes:
    """Read a string written by the writer with our own lexer (framing the literal if any)."""
    found = re.match(rb"\{(\d+)\}\r\n", wire)
    if found:
        frame = Frame((found.group()[:-2], b""), (wire[found.end() :],))
    else:
        frame = Frame.from_line(wire)
    lexer = Lexer(frame)
    value = lexer.astring()
    lexer.end()
    return value


@settings(max_examples=300)
@given(st.binary(max_size=60))
def test_any_bytes_round_trip(value):
    """Any bytes written as string or astring read back unchanged; imapclient agrees on strings."""
    assert _read_back(r.astring(value)) == value
    wire = r.string(value)
    assert _read_back(wire) == value
    assert parse_response(imaplib_form(wire + b"\r\n")) == (value,)


@settings(max_examples=200)
@given(st.text(st.characters(exclude_categories=["Cs"]), max_size=30))
def test_mailbox_names_round_trip(name):
    """A LIST response's mailbox is modified UTF-7 that imapclient decodes to the original name."""
    wire = r.to_bytes(r.ListItem(name, ("\\HasNoChildren",), "/"))
    assert wire.count(b"\r\n") == 1
    parsed = parse_response(imaplib_form(wire[2:]))
    assert parsed[0] == b"LIST"
    assert imap_utf7.decode(parsed[3]) == name


@pytest.mark.parametrize(
    "code",
    [
        r.ALERT,
        r.ALREADYEXISTS,
        r.AUTHENTICATIONFAILED,
        r.AUTHORIZATIONFAILED,
        r.CANNOT,
        r.CLIENTBUG,
        r.CLOSED,
        r.CONTACTADMIN,
        r.CORRUPTION,
        r.EXPIRED,
        r.EXPUNGEISSUED,
        r.INUSE,
        r.LIMIT,
        r.NOMODSEQ,
        r.NONEXISTENT,
        r.NOPERM,
        r.OVERQUOTA,
        r.PARSE,
        r.PRIVACYREQUIRED,
        r.READ_ONLY,
        r.READ_WRITE,
        r.SERVERBUG,
        r.TOOBIG,
        r.TRYCREATE,
        r.UIDNOTSTICKY,
        r.UNAVAILABLE,
    ],
    ids=lambda code: code.name,
)
def test_simple_codes(code):
    """Every argument-less response code renders as [NAME] before the text."""
    wire = r.to_bytes(r.Tagged("t", r.Status.NO, "Failed", code))
    assert wire == b"t NO [" + code.name.encode() + b"] Failed\r\n"


@pytest.mark.parametrize(("name", "utf8", "wire"), [
    ("Entwürfe", False, b'* LIST () "/" "Entw&APw-rfe"\r\n'),
    ("Entwürfe", True, '* LIST () "/" "Entwürfe"\r\n'.encode()),
    ('Tom & "J"', True, b'* LIST () "/" "Tom & \\"J\\""\r\n'),
    ("Tom & Jerry", False, b'* LIST () "/" "Tom &- Jerry"\r\n'),
])
def test_mailbox_names_are_modified_utf7_or_utf8_in_rev2(name, utf8, wire):
    """Mailbox names render as modified UTF-7, or as quoted UTF-8 once a session enabled
    IMAP4rev2 (RFC 9051 5.1)."""
    assert b"".join(r.render(r.ListItem(name), utf8=utf8)) == wire


def test_status_names_follow_the_same_switch():
    """STATUS names its mailbox in the session's encoding too."""
    data = r.StatusData("Café", (("MESSAGES", 1),))
    assert b"".join(r.render(data)) == b'* STATUS "Caf&AOk-" (MESSAGES 1)\r\n'
    assert b"".join(r.render(data, utf8=True)) == '* STATUS "Café" (MESSAGES 1)\r\n'.encode()
