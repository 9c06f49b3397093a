"""Tests for imapd.lexer: the token reader over one framed command."""

from __future__ import annotations

import datetime as dt

import pytest

from imapd.lexer import Frame, Lexer, ParseError, is_atom, normalize_flag
from imapd.mutf7 import Undecodable


def lex(line: bytes, *literals: bytes) -> Lexer:
    """A lexer over ``line``; ``{n}`` markers in it are followed by ``literals`` in order."""
    segments: list[bytes] = []
    rest = line
    for literal in literals:
        marker_end = rest.index(b"}") + 1
        segments.append(rest[:marker_end])
        rest = rest[marker_end:]
        assert str(len(literal)).encode() in segments[-1]
    segments.append(rest)
    return Lexer(Frame(tuple(segments), tuple(literals)))


@pytest.mark.parametrize(
    ("line", "literals", "expected"),
    [
        (b"foo", (), b"foo"),
        (b"foo]bar", (), b"foo]bar"),  # ']' is an ASTRING-CHAR
        (b'""', (), b""),
        (b'"a \\"quoted\\" \\\\ string"', (), b'a "quoted" \\ string'),
        (b'"p\xc3\xa4ss"', (), b"p\xc3\xa4ss"),  # 8-bit in quoted strings is tolerated
        (b"{5}", (b"a\r\nb\x00",), b"a\r\nb\x00"),
        (b"{5+}", (b"hello",), b"hello"),
        (b"{0}", (b"",), b""),
    ],
)
def test_astring_forms(line, literals, expected):
    """An astring may be an atom, a quoted string (with \\" and \\\\) or a literal."""
    lexer = lex(line, *literals)
    assert lexer.astring() == expected
    assert lexer.at_end()


@pytest.mark.parametrize(
    "line",
    [b'"unterminated', b'"bad \\a escape"', b'"nul\x00"', b"(paren", b"", b"%wild", b"{3"],
)
def test_invalid_astrings(line):
    """Unterminated or badly escaped quoted strings, NUL, specials and broken markers fail."""
    with pytest.raises(ParseError):
        lex(line).astring()


def test_nstring_nil_and_string():
    """nstring reads NIL (any case) as None and a quoted "NIL" as the string."""
    lexer = lex(b'nil "NIL"')
    assert lexer.nstring() is None
    lexer.sp()
    assert lexer.nstring() == b"NIL"


def test_literal8_only_when_allowed():
    """~{n} is read by literal(binary_ok=True) and flagged as binary."""
    assert lex(b"~{3}", b"a\x00b").literal(binary_ok=True) == (b"a\x00b", True)
    with pytest.raises(ParseError):
        lex(b"~{3}", b"a\x00b").literal()


def test_literal_marker_must_end_the_segment():
    """A {n} that is not where a literal was framed is a syntax error, not a literal."""
    lexer = Lexer(Frame((b"{3} more",)))
    with pytest.raises(ParseError):
        lexer.string()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"inbox", "INBOX"),
        (b'"InBoX"', "INBOX"),
        (b"INBOX/Sub", "INBOX/Sub"),
        (b"Inbox.sub", "Inbox.sub"),
        (b'"~peter/mail/&U,BTFw-/&ZeVnLIqe-"', "~peter/mail/台北/日本語"),
        (b'"Sent Items"', "Sent Items"),
        (b"Entw&APw-rfe", "Entwürfe"),
    ],
)
def test_mailbox_names(line, expected):
    """Mailbox names are modified-UTF-7 decoded; only the whole name INBOX is case-folded."""
    assert lex(line).mailbox() == expected


@pytest.mark.parametrize("line", [b'"caf\xc3\xa9"', b"&AGE-", b'"&U,BTFw"', b"inbox&"])
def test_invalid_mailbox_names(line):
    """A mailbox name that is not canonical modified UTF-7 is no syntax error: it is read as
    sent, marked Undecodable (and never taken for INBOX)."""
    name = lex(line).mailbox()
    assert isinstance(name, Undecodable)
    assert name == line.strip(b'"').decode("latin-1")
    pattern = lex(line + b"%").list_mailbox()
    assert isinstance(pattern, Undecodable)


def test_list_mailbox_allows_wildcards():
    """list-mailbox accepts % and * unquoted, and strings."""
    lexer = lex(b'~/Mail/% "*"')
    assert lexer.list_mailbox() == "~/Mail/%"
    lexer.sp()
    assert lexer.list_mailbox() == "*"


def test_flags():
    """System flags get canonical case; keywords keep theirs; \\Recent cannot be stored."""
    lexer = lex(b"(\\seen \\DELETED $Junk NonJunk \\Seen \\Extension)")
    assert lexer.flag_list() == ("\\Seen", "\\Deleted", "$Junk", "NonJunk", "\\Extension")
    assert lex(b"()").flag_list() == ()
    with pytest.raises(ParseError):
        lex(b"(\\Recent)").flag_list()
    with pytest.raises(ParseError):
        lex(b"(\\*)").flag_list()
    with pytest.raises(ParseError):
        lex(b"(\\Seen").flag_list()
    assert normalize_flag("\\flagged") == "\\Flagged"
    assert normalize_flag("$label1") == "$label1"


def test_numbers_and_their_limits():
    """number is 32-bit unless told; a 64 KiB digit string fails fast instead of converting."""
    assert lex(b"4294967295").number() == 4294967295
    with pytest.raises(ParseError):
        lex(b"4294967296").number()
    assert lex(b"9223372036854775807").number64() == 2**63 - 1
    with pytest.raises(ParseError):
        lex(b"9223372036854775808").number64()
    with pytest.raises(ParseError):
        lex(b"9" * 65536).number()
    with pytest.raises(ParseError):
        lex(b"0").nz_number()


def test_dates():
    """SEARCH dates may be bare or quoted; date-times must be quoted."""
    assert lex(b"1-Feb-1994").date() == dt.date(1994, 2, 1)
    assert lex(b'"1-Feb-1994"').date() == dt.date(1994, 2, 1)
    when = lex(b'"17-Jul-1996 02:44:25 -0700"').date_time()
    assert when.utcoffset() == dt.timedelta(hours=-7)
    with pytest.raises(ParseError):
        lex(b"17-Jul-1996").date_time()
    with pytest.raises(ParseError):
        lex(b"1-Foo-1994").date()


def test_sp_end_and_errors():
    """sp() needs exactly one space, end() refuses leftovers, tag() refuses '+' and specials."""
    lexer = lex(b"a  b")
    assert lexer.atom() == b"a"
    lexer.sp()
    with pytest.raises(ParseError):
        lexer.atom()
    with pytest.raises(ParseError):
        lexer.end()
    with pytest.raises(ParseError):
        lex(b"a").sp()
    assert lex(b"A001 x").tag() == "A001"
    with pytest.raises(ParseError):
        lex(b"+x").tag()
    assert lex(b"a]1 x").tag() == "a]1"


def test_frame_validation_and_atoms():
    """A frame needs one more segment than literals; is_atom matches ATOM-CHARs only."""
    with pytest.raises(ValueError):
        Frame((b"a",), (b"x",))
    assert Frame((b"ab {1}", b" c"), (b"x",)).text_length == 8
    assert is_atom(b"FOO.bar")
    assert not is_atom(b"a b") and not is_atom(b"") and not is_atom(b"a]") and not is_atom(b"\xff")
