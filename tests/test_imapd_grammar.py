"""Tests for imapd.grammar: the arguments of every command, from one complete frame."""

from __future__ import annotations

import datetime as dt

import pytest

from imapd import commands as c
from imapd.fetchatts import BodySection, FetchItem, Section, SectionText
from imapd.grammar import COMMAND_NAMES, UID_COMMAND_NAMES, CommandError, parse_command
from imapd.lexer import Frame
from imapd.notify import EventGroup, Notify
from imapd.searchkeys import All, And, Flag, Header, ModSeq, Not, Text, Uid
from imapd.sequence import SequenceSet


def frame(line: bytes, *literals: bytes) -> Frame:
    """A frame of ``line`` whose ``{n}``/``{n+}``/``~{n}`` markers are followed by ``literals``."""
    segments: list[bytes] = []
    rest = line
    for _literal in literals:
        end = rest.index(b"}") + 1
        segments.append(rest[:end])
        rest = rest[end:]
    segments.append(rest)
    return Frame(tuple(segments), tuple(literals))


def seq(text: str) -> SequenceSet:
    return SequenceSet.parse(text)


JULY = dt.datetime(1996, 7, 17, 2, 44, 25, tzinfo=dt.timezone(dt.timedelta(hours=-7)))

CASES: list[tuple[bytes, tuple[bytes, ...], c.Command]] = [
    (b"a CAPABILITY", (), c.Capability("a")),
    (b"a noop", (), c.Noop("a")),
    (b"a LOGOUT", (), c.Logout("a")),
    (b"a STARTTLS", (), c.StartTLS("a")),
    (b"a AUTHENTICATE PLAIN", (), c.Authenticate("a", "PLAIN")),
    (
        b"a AUTHENTICATE plain AHVzZXIAcGFzcw==",
        (),
        c.Authenticate("a", "PLAIN", b"\x00user\x00pass"),
    ),
    (b"a AUTHENTICATE EXTERNAL =", (), c.Authenticate("a", "EXTERNAL", b"")),
    (b"a LOGIN mrc secret", (), c.Login("a", "mrc", "secret")),
    (b'a LOGIN "fred@example.org" "p \\"w\\" d"', (), c.Login("a", "fred@example.org", 'p "w" d')),
    (b"a LOGIN {4} {5}", (b"fred", b"s\xc3\xa9cr"), c.Login("a", "fred", "s\u00e9cr")),
    (b'a ID ("name" "mutt" "version" NIL)', (), c.Id("a", (("name", "mutt"), ("version", None)))),
    (b"a ID NIL", (), c.Id("a", None)),
    (b"a ID ()", (), c.Id("a", ())),
    (b"a ENABLE CONDSTORE qresync", (), c.Enable("a", ("CONDSTORE", "QRESYNC"))),
    (b"a SELECT inbox", (), c.Select("a", "INBOX")),
    (b'a SELECT "Sent Items" (CONDSTORE)', (), c.Select("a", "Sent Items", condstore=True)),
    (
        b"a SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))",
        (),
        c.Select(
            "a", "INBOX", qresync=c.QResync(67890007, 20050715194045000, seq("41,43:211,214:541"))
        ),
    ),
    (
        b"a EXAMINE INBOX (QRESYNC (67890007 90060115194045000 1:29997 (5000,7500,9000,9990:9999 15000,22500,27000,29970,29973,29976,29979,29982,29985,29988,29991,29994,29997)))",
        (),
        c.Examine(
            "a",
            "INBOX",
            qresync=c.QResync(
                67890007,
                90060115194045000,
                seq("1:29997"),
                (
                    seq("5000,7500,9000,9990:9999"),
                    seq(
                        "15000,22500,27000,29970,29973,29976,29979,29982,29985,29988,29991,29994,29997"
                    ),
                ),
            ),
        ),
    ),
    (b"a SELECT INBOX (QRESYNC (1 2))", (), c.Select("a", "INBOX", qresync=c.QResync(1, 2))),
    (
        b"a SELECT INBOX (CONDSTORE QRESYNC (1 2 (1 5)))",
        (),
        c.Select("a", "INBOX", True, c.QResync(1, 2, None, (seq("1"), seq("5")))),
    ),
    (b"a CREATE owatagusiam/", (), c.Create("a", "owatagusiam/")),
    (b'a CREATE "Archive" (USE (\\archive))', (), c.Create("a", "Archive", ("\\Archive",))),
    (
        b"a CREATE MySpecial (USE (\\Drafts \\Sent))",
        (),
        c.Create("a", "MySpecial", ("\\Drafts", "\\Sent")),
    ),
    (b"a DELETE blurdybloop", (), c.Delete("a", "blurdybloop")),
    (b"a RENAME blurdybloop sarasoop", (), c.Rename("a", "blurdybloop", "sarasoop")),
    (b'a RENAME "Entw&APw-rfe" Drafts', (), c.Rename("a", "Entw\u00fcrfe", "Drafts")),
    (b"a SUBSCRIBE #news.comp.mail.mime", (), c.Subscribe("a", "#news.comp.mail.mime")),
    (b"a UNSUBSCRIBE #news.comp.mail.mime", (), c.Unsubscribe("a", "#news.comp.mail.mime")),
    (b'a LIST "" ""', (), c.List("a", "", ("",))),
    (b"a LIST ~/Mail/ %", (), c.List("a", "~/Mail/", ("%",))),
    (b'a LIST "" *', (), c.List("a", "", ("*",))),
    (
        b'a LIST (SUBSCRIBED) "" "*" RETURN (SPECIAL-USE)',
        (),
        c.List("a", "", ("*",), ("SUBSCRIBED",), ("SPECIAL-USE",), (), True),
    ),
    (
        b'a list "" ("INBOX" "Drafts") return (children status (messages unseen))',
        (),
        c.List(
            "a", "", ("INBOX", "Drafts"), (), ("CHILDREN", "STATUS"), ("MESSAGES", "UNSEEN"), True
        ),
    ),
    (b'a LIST () "" % RETURN ()', (), c.List("a", "", ("%",), (), (), (), True)),
    (b'a LSUB "#news." "comp.mail.*"', (), c.Lsub("a", "#news.", "comp.mail.*")),
    (b'a LIST (SUBSCRIBED RECURSIVEMATCH REMOTE) "" %', (),
     c.List("a", "", ("%",), ("SUBSCRIBED", "RECURSIVEMATCH", "REMOTE"), (), (), True)),
    (b'a LIST (SPECIAL-USE RECURSIVEMATCH) "" % RETURN (SUBSCRIBED CHILDREN SPECIAL-USE)', (),
     c.List("a", "", ("%",), ("SPECIAL-USE", "RECURSIVEMATCH"),
            ("SUBSCRIBED", "CHILDREN", "SPECIAL-USE"), (), True)),
    # RFC 9208 4.1.1 to 4.1.3's examples.
    (b'G0001 GETQUOTA "!partition/sda4"', (), c.GetQuota("G0001", "!partition/sda4")),
    (b"A003 GETQUOTAROOT INBOX", (), c.GetQuotaRoot("A003", "INBOX")),
    (b'A003 GETQUOTAROOT "inbox"', (), c.GetQuotaRoot("A003", "INBOX")),
    (b'S0001 SETQUOTA "#user/alice" (STORAGE 510)', (),
     c.SetQuota("S0001", "#user/alice", (("STORAGE", 510),))),
    (b'S0002 SETQUOTA "" (storage 512 MESSAGE 1000)', (),
     c.SetQuota("S0002", "", (("STORAGE", 512), ("MESSAGE", 1000)))),
    (b'S0003 SETQUOTA "" ()', (), c.SetQuota("S0003", "", ())),
    (b"a STATUS INBOX (DELETED DELETED-STORAGE)", (),
     c.Status("a", "INBOX", ("DELETED", "DELETED-STORAGE"))),
    (
        b"a STATUS blurdybloop (UIDNEXT MESSAGES)",
        (),
        c.Status("a", "blurdybloop", ("UIDNEXT", "MESSAGES")),
    ),
    (
        b'a STATUS "INBOX" (HIGHESTMODSEQ unseen SIZE)',
        (),
        c.Status("a", "INBOX", ("HIGHESTMODSEQ", "UNSEEN", "SIZE")),
    ),
    (
        b"a APPEND saved-messages (\\Seen) {5}",
        (b"hello",),
        c.Append("a", "saved-messages", (c.AppendMessage(b"hello", ("\\Seen",)),)),
    ),
    (
        b'a APPEND INBOX "17-Jul-1996 02:44:25 -0700" {3+}',
        (b"abc",),
        c.Append("a", "INBOX", (c.AppendMessage(b"abc", (), JULY),)),
    ),
    (
        b'a APPEND Drafts (\\Seen \\Draft) " 7-Jul-1996 02:44:25 -0700" {1}',
        (b"x",),
        c.Append(
            "a",
            "Drafts",
            (c.AppendMessage(b"x", ("\\Seen", "\\Draft"), JULY.replace(day=7)),),
        ),
    ),
    (
        b"a APPEND INBOX {1} () {2} (\\Flagged) ~{3}",
        (b"1", b"22", b"3\x003"),
        c.Append(
            "a",
            "INBOX",
            (
                c.AppendMessage(b"1"),
                c.AppendMessage(b"22"),
                c.AppendMessage(b"3\x003", ("\\Flagged",), binary=True),
            ),
        ),
    ),
    (b"a NAMESPACE", (), c.Namespace("a")),
    (b"a IDLE", (), c.Idle("a")),
    (b"a COMPRESS deflate", (), c.Compress("a", "DEFLATE")),
    (b"a CHECK", (), c.Check("a")),
    (b"a CLOSE", (), c.Close("a")),
    (b"a UNSELECT", (), c.Unselect("a")),
    (b"a EXPUNGE", (), c.Expunge("a")),
    (b"a UID EXPUNGE 3000:3002", (), c.UidExpunge("a", seq("3000:3002"))),
    (b"a SEARCH ALL", (), c.Search("a", All())),
    (b"a UID SEARCH UID 5:*", (), c.Search("a", Uid(seq("5:*")), uid=True)),
    (
        b"a SEARCH CHARSET UTF-8 TEXT {5}",
        ("x\u00e9\u00e9".encode(),),
        c.Search("a", Text("x\u00e9\u00e9"), "UTF-8"),
    ),
    (
        b"a SEARCH RETURN (MIN COUNT) CHARSET us-ascii UNDELETED",
        (),
        c.Search("a", Not(Flag("\\Deleted")), "US-ASCII", False, ("MIN", "COUNT")),
    ),
    (b"a SEARCH MODSEQ 720162338", (), c.Search("a", ModSeq(720162338))),
    (
        b"a SORT (SUBJECT REVERSE DATE displayfrom) UTF-8 ALL",
        (),
        c.Sort("a", ((c.SortKey.SUBJECT, False), (c.SortKey.DATE, True),
                     (c.SortKey.DISPLAYFROM, False)), "UTF-8", All()),
    ),
    (b"a UID SORT (SIZE) UTF-8 ALL", (), c.Sort("a", ((c.SortKey.SIZE, False),), "UTF-8",
                                                  All(), uid=True)),
    # RFC 5267's examples: ESORT, the CONTEXT, UPDATE and PARTIAL options, CANCELUPDATE.
    (
        b"E01 UID SORT RETURN () (REVERSE DATE) UTF-8 UNDELETED UNKEYWORD $Junk",
        (),
        c.Sort("E01", ((c.SortKey.DATE, True),), "UTF-8",
               And((Not(Flag("\\Deleted")), Not(Flag("$Junk")))), uid=True,
               return_options=()),
    ),
    (
        b"A01 SEARCH RETURN (CONTEXT COUNT) UNDELETED UNKEYWORD $Junk",
        (),
        c.Search("A01", And((Not(Flag("\\Deleted")), Not(Flag("$Junk")))), None, False,
                 ("CONTEXT", "COUNT")),
    ),
    (
        b"A02 UID SEARCH RETURN (PARTIAL 23500:24000) UNDELETED UNKEYWORD $Junk",
        (),
        c.Search("A02", And((Not(Flag("\\Deleted")), Not(Flag("$Junk")))), None, True,
                 ("PARTIAL",), (23500, 24000)),
    ),
    (
        b"B01 UID SEARCH RETURN (UPDATE) DELETED",
        (),
        c.Search("B01", Flag("\\Deleted"), None, True, ("UPDATE",)),
    ),
    (
        b"a SORT RETURN (update min partial 500:400) (SIZE) UTF-8 ALL",
        (),
        c.Sort("a", ((c.SortKey.SIZE, False),), "UTF-8", All(), False,
               ("UPDATE", "MIN", "PARTIAL"), (500, 400)),
    ),
    (b'B04 CANCELUPDATE "B01"', (), c.CancelUpdate("B04", ("B01",))),
    (b'a CANCELUPDATE "x" {1}', (b"y",), c.CancelUpdate("a", ("x", "y"))),
    (b"a THREAD ORDEREDSUBJECT UTF-8 ALL", (),
     c.Thread("a", c.ThreadAlgorithm.ORDEREDSUBJECT, "UTF-8", All())),
    (
        b"a UID THREAD references us-ascii UNDELETED",
        (),
        c.Thread("a", c.ThreadAlgorithm.REFERENCES, "US-ASCII", Not(Flag("\\Deleted")),
                 uid=True),
    ),
    (
        b"a UID SEARCH HEADER X-TUID 1234abcd NOT DELETED",
        (),
        c.Search("a", And((Header("X-TUID", "1234abcd"), Not(Flag("\\Deleted")))), uid=True),
    ),
    (
        b"a FETCH 12 FULL",
        (),
        c.Fetch(
            "a",
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
        b"a FETCH 12 body[header]",
        (),
        c.Fetch("a", seq("12"), (BodySection(Section(text=SectionText.HEADER)),)),
    ),
    (
        b"a UID FETCH 4827313:4828442 FLAGS",
        (),
        c.Fetch("a", seq("4827313:4828442"), (FetchItem.FLAGS,), uid=True),
    ),
    (
        b"a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345)",
        (),
        c.Fetch("a", seq("1:*"), (FetchItem.FLAGS,), True, 12345),
    ),
    (
        b"a UID FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345 VANISHED)",
        (),
        c.Fetch("a", seq("300:500"), (FetchItem.FLAGS,), True, 12345, True),
    ),
    (
        b"a STORE 12 +flags \\deleted",
        (),
        c.Store("a", seq("12"), c.StoreMode.ADD, ("\\Deleted",)),
    ),
    (
        b"a STORE 2:4 +FLAGS (\\Deleted)",
        (),
        c.Store("a", seq("2:4"), c.StoreMode.ADD, ("\\Deleted",)),
    ),
    (
        b"a UID STORE 1,3:5 -FLAGS.SILENT (\\Seen $Label1)",
        (),
        c.Store("a", seq("1,3:5"), c.StoreMode.REMOVE, ("\\Seen", "$Label1"), True, True),
    ),
    (
        b"a STORE 7 (UNCHANGEDSINCE 320162338) FLAGS.SILENT ()",
        (),
        c.Store("a", seq("7"), c.StoreMode.REPLACE, (), True, False, 320162338),
    ),
    (
        b"a STORE 1 FLAGS \\Seen \\Flagged",
        (),
        c.Store("a", seq("1"), c.StoreMode.REPLACE, ("\\Seen", "\\Flagged")),
    ),
    (b"a COPY 2:4 MEETING", (), c.Copy("a", seq("2:4"), "MEETING")),
    (b'a UID COPY 5 "Trash"', (), c.Copy("a", seq("5"), "Trash", True)),
    (b"a MOVE 1:3 Archive", (), c.Move("a", seq("1:3"), "Archive")),
    (b"a NOTIFY SET (personal (MailboxName))", (),
     Notify("a", (EventGroup("PERSONAL", (), ("MailboxName",)),))),
    (b'a UID MOVE 42 "[Gmail]/Trash"', (), c.Move("a", seq("42"), "[Gmail]/Trash", True)),
]


@pytest.mark.parametrize(
    ("line", "literals", "expected"),
    CASES,
    ids=[case[0].decode("ascii", "replace")[:50] for case in CASES],
)
def test_commands(line, literals, expected):
    """Each command's arguments parse into its frozen dataclass."""
    assert parse_command(frame(line, *literals)) == expected


ERRORS = [
    (b"", (), None, "tag"),
    (b"* NOOP", (), None, "tag"),
    (b"+tag NOOP", (), None, "tag"),
    (b"a", (), "a", "Error in IMAP command"),
    (b"a NOSUCH", (), "a", "Unknown command NOSUCH"),
    (b"a UID LOGIN x y", (), "a", "Unknown UID command LOGIN"),
    (b"a COMPRESS LZW", (), "a", "unknown compression mechanism LZW"),
    (b"a COMPRESS", (), "a", "Error in IMAP command COMPRESS"),
    (b"a NOOP extra", (), "a", "extra arguments"),
    (b"a NOOP ", (), "a", "NOOP"),
    (b"a LOGIN onlyuser", (), "a", "LOGIN"),
    (b"a LOGIN {2} x", (b"\xff\xfe",), "a", "UTF-8"),
    (b"a AUTHENTICATE PLAIN !!!", (), "a", "AUTHENTICATE"),
    (b"a AUTHENTICATE PLAIN AHVzZXIAcGFzcw", (), "a", "base64"),
    (b"a SELECT", (), "a", "SELECT"),
    (b"a SELECT INBOX (FOO)", (), "a", "select parameter"),
    (b"a SELECT INBOX (QRESYNC (0 5))", (), "a", "non-zero"),
    (b"a SELECT caf\xc3\xa9", (), "a", "SELECT"),
    (b"a CREATE Foo (USE (\\Bogus))", (), "a", "special-use"),
    (b"a CREATE Foo (COLOR red)", (), "a", "USE"),
    (b"a STATUS INBOX (BOGUS)", (), "a", "STATUS item"),
    (b"a STATUS INBOX ()", (), "a", "STATUS"),
    (b"a LIST", (), "a", "LIST"),
    (b"a GETQUOTA", (), "a", "GETQUOTA"),
    (b"a SETQUOTA x (STORAGE)", (), "a", "SETQUOTA"),
    (b"a SETQUOTA x (STORAGE -1)", (), "a", "SETQUOTA"),
    (b"a GETQUOTAROOT", (), "a", "GETQUOTAROOT"),
    (b'a LIST "" * FOO (X)', (), "a", "RETURN"),
    (b"a APPEND INBOX", (), "a", "APPEND"),
    (b'a APPEND INBOX "abc"', (), "a", "APPEND"),
    (b"a APPEND INBOX abc", (), "a", "literal"),
    (b"a APPEND INBOX (\\Recent) {1}", (b"x",), "a", "Recent"),
    (b'a APPEND INBOX "32-Jul-1996 02:44:25 -0700" {1}', (b"x",), "a", "date"),
    (b"a FETCH 1", (), "a", "FETCH"),
    (b"a FETCH 0 FLAGS", (), "a", "FETCH"),
    (b"a FETCH 1:2 (FLAGS) (VANISHED)", (), "a", "VANISHED"),
    (b"a UID FETCH 1:2 (FLAGS) (VANISHED)", (), "a", "CHANGEDSINCE"),
    (b"a FETCH 1 (FLAGS) (CHANGEDSINCE x)", (), "a", "FETCH"),
    (b"a STORE 1 FLAGS", (), "a", "STORE"),
    (b"a STORE 1 XFLAGS (\\Seen)", (), "a", "FLAGS"),
    (b"a STORE 1 (UNCHANGEDSINCE) FLAGS ()", (), "a", "STORE"),
    (b"a COPY 1", (), "a", "COPY"),
    (b"a UID EXPUNGE", (), "a", "UID EXPUNGE"),
    (b"a SEARCH", (), "a", "SEARCH"),
    (b"a SEARCH RETURN (BOGUS) ALL", (), "a", "return option"),
    (b"a SEARCH RETURN (PARTIAL 1:10 ALL) ALL", (), "a", "PARTIAL and ALL"),
    (b"a SEARCH RETURN (PARTIAL 1:10 PARTIAL 11:20) ALL", (), "a", "one PARTIAL"),
    (b"a SEARCH RETURN (PARTIAL 0:10) ALL", (), "a", "non-zero"),
    (b"a SEARCH RETURN (PARTIAL) ALL", (), "a", "SEARCH"),
    (b"a SEARCH RETURN (PARTIAL 1:*) ALL", (), "a", "SEARCH"),
    (b"a SORT RETURN (SAVE) (DATE) UTF-8 ALL", (), "a", "SORT return option"),
    (b"a SORT RETURN (MIN) UTF-8 ALL", (), "a", "SORT"),
    (b"a CANCELUPDATE", (), "a", "CANCELUPDATE"),
    (b"a CANCELUPDATE B01", (), "a", "string"),
    (b"a SELECT INBOX (QRESYNC (1 2 $))", (), "a", "'$'"),
    (b"a SORT (SUBJECT) ALL", (), "a", "SORT"),
    (b"a SORT () UTF-8 ALL", (), "a", "sort keys"),
    (b"a SORT (REVERSE) UTF-8 ALL", (), "a", "sort keys"),
    (b"a SORT (REVERSE REVERSE DATE) UTF-8 ALL", (), "a", "SORT key"),
    (b"a THREAD REFS UTF-8 ALL", (), "a", "THREAD algorithm"),
    (b'a ID ("name")', (), "a", "ID"),
    (b"a ID (" + b'"k" "v" ' * 31 + b")", (), "a", "ID"),
    (b"a ENABLE", (), "a", "ENABLE"),
]


@pytest.mark.parametrize(
    ("line", "literals", "tag", "text"),
    ERRORS,
    ids=[e[0].decode("ascii", "replace")[:40] for e in ERRORS],
)
def test_errors(line, literals, tag, text):
    """Invalid commands raise CommandError with the tag (when readable) and a useful reason."""
    with pytest.raises(CommandError) as info:
        parse_command(frame(line, *literals))
    assert info.value.tag == tag
    assert text.lower() in info.value.text.lower()
    assert not info.value.bad_charset


def test_bad_charset_is_flagged():
    """An unknown SEARCH CHARSET is reported as bad_charset so the server answers NO [BADCHARSET]."""
    with pytest.raises(CommandError) as info:
        parse_command(frame(b"a SEARCH CHARSET X-UNKNOWN ALL"))
    assert info.value.bad_charset and info.value.tag == "a"


def test_search_depth_is_a_parameter():
    """parse_command passes its max_search_depth to the SEARCH grammar."""
    line = b"a SEARCH " + b"NOT " * 20 + b"ALL"
    assert isinstance(parse_command(frame(line)), c.Search)
    with pytest.raises(CommandError):
        parse_command(frame(line), max_search_depth=5)


def test_every_command_word_is_covered():
    """The table above exercises every command word and every UID form the grammar knows."""
    seen = set()
    for line, _, _ in CASES:
        words = line.split(b" ")
        name = words[1].decode().upper()
        if name == "UID":
            seen.add("UID " + words[2].decode().upper())
        else:
            seen.add(name)
    assert seen >= COMMAND_NAMES
    assert {"UID " + name for name in UID_COMMAND_NAMES} <= seen


def test_mailbox_names_are_utf8_once_rev2_is_enabled():
    """With ``utf8_names`` a name is read as UTF-8 (``&`` is a plain character); without,
    as modified UTF-7; invalid UTF-8 is marked undecodable, as invalid modified UTF-7 is."""
    from imapd.mutf7 import Undecodable

    line = 'a SELECT "Tom & Jerry/Entwürfe"'.encode()
    assert parse_command(Frame.from_line(line), utf8_names=True) == c.Select(
        "a", "Tom & Jerry/Entwürfe")
    old = parse_command(Frame.from_line(b'a SELECT "Entw&APw-rfe"'))
    assert old == c.Select("a", "Entwürfe")
    raw = parse_command(Frame.from_line(b'a SELECT "Entw&APw-rfe"'), utf8_names=True)
    assert raw == c.Select("a", "Entw&APw-rfe")
    bad = parse_command(Frame.from_line(b'a LIST "" "\xff*"'), utf8_names=True)
    assert isinstance(bad, c.List) and isinstance(bad.patterns[0], Undecodable)
    inbox = parse_command(Frame.from_line(b"a STATUS inbox (MESSAGES)"), utf8_names=True)
    assert inbox == c.Status("a", "INBOX", ("MESSAGES",))
