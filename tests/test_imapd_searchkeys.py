"""Tests for imapd.searchkeys: the SEARCH criteria grammar and its AST."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imapd.lexer import Frame, Lexer, ParseError
from imapd.searchkeys import (
    All,
    And,
    Body,
    Date,
    DateField,
    DateOp,
    Flag,
    Header,
    ModSeq,
    Not,
    Or,
    SeqNumbers,
    Size,
    SizeOp,
    Text,
    Uid,
    UnknownCharset,
    parse,
    parse_search_keys,
    render,
    uses_modseq,
    walk,
)
from imapd.sequence import SequenceSet

FEB1 = dt.date(1994, 2, 1)

CASES = [
    (b"ALL", All()),
    (b"ANSWERED", Flag("\\Answered")),
    (b'BCC "bob@example.org"', Header("BCC", "bob@example.org")),
    (b"BEFORE 1-Feb-1994", Date(DateField.INTERNAL, DateOp.BEFORE, FEB1)),
    (b"BODY hello", Body("hello")),
    (b"CC alice", Header("CC", "alice")),
    (b"DELETED", Flag("\\Deleted")),
    (b"DRAFT", Flag("\\Draft")),
    (b"FLAGGED", Flag("\\Flagged")),
    (b'FROM "Smith"', Header("FROM", "Smith")),
    (b"HEADER X-TUID 1234abcd", Header("X-TUID", "1234abcd")),
    (b'HEADER "Message-ID" "<a@b>"', Header("MESSAGE-ID", "<a@b>")),
    (b'HEADER List-Id ""', Header("LIST-ID", "")),
    (b"KEYWORD $Junk", Flag("$Junk")),
    (b"LARGER 10000", Size(SizeOp.LARGER, 10000)),
    (b"NEW", And((Flag("\\Recent"), Not(Flag("\\Seen"))))),
    (b"NOT SEEN", Not(Flag("\\Seen"))),
    (b"OLD", Not(Flag("\\Recent"))),
    (b'ON "1-Feb-1994"', Date(DateField.INTERNAL, DateOp.ON, FEB1)),
    (b"OR SEEN FLAGGED", Or(Flag("\\Seen"), Flag("\\Flagged"))),
    (b"RECENT", Flag("\\Recent")),
    (b"SEEN", Flag("\\Seen")),
    (b"SENTBEFORE 1-Feb-1994", Date(DateField.SENT, DateOp.BEFORE, FEB1)),
    (b"SENTON 01-Feb-1994", Date(DateField.SENT, DateOp.ON, FEB1)),
    (b"SENTSINCE 1-feb-1994", Date(DateField.SENT, DateOp.SINCE, FEB1)),
    (b"SINCE 1-Feb-1994", Date(DateField.INTERNAL, DateOp.SINCE, FEB1)),
    (b"SMALLER 512", Size(SizeOp.SMALLER, 512)),
    (b'SUBJECT "re: lunch"', Header("SUBJECT", "re: lunch")),
    (b'TEXT "string not in mailbox"', Text("string not in mailbox")),
    (b"TO carol", Header("TO", "carol")),
    (b"UID 1:5,9", Uid(SequenceSet.parse("1:5,9"))),
    (b"UNANSWERED", Not(Flag("\\Answered"))),
    (b"UNDELETED", Not(Flag("\\Deleted"))),
    (b"UNDRAFT", Not(Flag("\\Draft"))),
    (b"UNFLAGGED", Not(Flag("\\Flagged"))),
    (b"UNKEYWORD NonJunk", Not(Flag("NonJunk"))),
    (b"UNSEEN", Not(Flag("\\Seen"))),
    (b"1:3,5", SeqNumbers(SequenceSet.parse("1:3,5"))),
    (b"*", SeqNumbers(SequenceSet.parse("*"))),
    (b"$", SeqNumbers(SequenceSet.parse("$"))),
    (b"(SEEN FLAGGED)", And((Flag("\\Seen"), Flag("\\Flagged")))),
    (b"((SEEN))", Flag("\\Seen")),
    (b"MODSEQ 620162338", ModSeq(620162338)),
    (b'MODSEQ "/flags/\\\\draft" all 620162338', ModSeq(620162338, "/flags/\\draft", "all")),
    (b"seen unanswered", And((Flag("\\Seen"), Not(Flag("\\Answered"))))),
    (
        b'FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"',  # RFC 3501 6.4.4
        And(
            (
                Flag("\\Flagged"),
                Date(DateField.INTERNAL, DateOp.SINCE, FEB1),
                Not(Header("FROM", "Smith")),
            )
        ),
    ),
    (
        b"OR (UNSEEN FLAGGED) NOT OR DELETED DRAFT",
        Or(
            And((Not(Flag("\\Seen")), Flag("\\Flagged"))),
            Not(Or(Flag("\\Deleted"), Flag("\\Draft"))),
        ),
    ),
]


@pytest.mark.parametrize(("text", "key"), CASES, ids=[case[0].decode()[:40] for case in CASES])
def test_parse(text, key):
    """Every RFC 3501 key (and MODSEQ) parses to its normalised AST node."""
    assert parse(text) == key


@pytest.mark.parametrize(("text", "key"), CASES, ids=[case[0].decode()[:40] for case in CASES])
def test_render_round_trip(text, key):
    """render() writes IMAP syntax that parses back to the same AST."""
    assert parse(render(key).encode("ascii")) == key


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"SINCE",
        b"SINCE 1-Foo-2000",
        b"LARGER x",
        b"OR SEEN",
        b"FOO",
        b"()",
        b"(SEEN",
        b"SEEN)",
        b"KEYWORD \\Seen",
        b"UID",
        b"UID x",
        b"NOT",
        b"HEADER",
        b"HEADER Subject",
        b'HEADER "bad:name" x',
        b"MODSEQ",
        b'MODSEQ "/flags/x" nobody 5',
        b'MODSEQ "/other" all 5',
        b"SEEN  FLAGGED",
        b"0:5",
    ],
)
def test_invalid(text):
    """Missing arguments, unknown keys and unbalanced parentheses are ParseErrors."""
    with pytest.raises(ParseError):
        parse(text)


def test_charset_decodes_strings():
    """Strings are decoded with the CHARSET, here ISO-8859-1 from a literal."""
    frame = Frame((b"SUBJECT {4}", b""), ("caf\xe9".encode("latin-1"),))
    assert parse_search_keys(Lexer(frame), "ISO-8859-1") == Header("SUBJECT", "caf\u00e9")
    assert parse('TEXT "caf\u00e9"'.encode(), "UTF-8") == Text("caf\u00e9")
    assert parse(b'TEXT "caf\xe9"') == Text("caf\ufffd")  # undecodable octets never raise


def test_unknown_charset():
    """A CHARSET Python has no codec for raises UnknownCharset (answered NO [BADCHARSET])."""
    with pytest.raises(UnknownCharset):
        parse(b"ALL", "X-NO-SUCH-CHARSET")


def test_depth_limit():
    """Nesting deeper than max_depth is refused instead of exhausting the stack."""
    assert parse(b"NOT " * 10 + b"ALL", max_depth=10) is not None
    with pytest.raises(ParseError):
        parse(b"NOT " * 11 + b"ALL", max_depth=10)
    with pytest.raises(ParseError):
        parse(b"(" * 5000 + b"ALL" + b")" * 5000)
    with pytest.raises(ParseError):
        parse(b"OR " * 5000 + b"ALL ALL" * 5001)


def test_walk_and_uses_modseq():
    """walk() visits parents before children, left to right; uses_modseq finds a nested MODSEQ."""
    key = parse(b"OR (SEEN MODSEQ 5) NOT DRAFT")
    names = [type(node).__name__ for node in walk(key)]
    assert names == ["Or", "And", "Flag", "ModSeq", "Not", "Flag"]
    assert uses_modseq(key)
    assert not uses_modseq(parse(b"SEEN"))


_strings = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)
_dates = st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2100, 1, 1))
_sets = st.lists(st.integers(1, 50), min_size=1, max_size=4).map(SequenceSet.from_values)
_leaves = st.one_of(
    st.just(All()),
    st.sampled_from(
        ["\\Seen", "\\Answered", "\\Deleted", "\\Draft", "\\Flagged", "\\Recent", "$Junk"]
    ).map(Flag),
    st.builds(Header, st.sampled_from(["FROM", "TO", "CC", "BCC", "SUBJECT", "X-TUID"]), _strings),
    st.builds(Body, _strings),
    st.builds(Text, _strings),
    st.builds(Date, st.sampled_from(DateField), st.sampled_from(DateOp), _dates),
    st.builds(Size, st.sampled_from(SizeOp), st.integers(0, 2**40)),
    st.builds(Uid, _sets),
    st.builds(SeqNumbers, _sets),
    st.builds(ModSeq, st.integers(0, 2**63 - 1)),
)
_keys = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.builds(Not, inner),
        st.builds(Or, inner, inner),
        st.lists(inner, min_size=2, max_size=3).map(tuple).map(And),
    ),
    max_leaves=12,
)


@settings(max_examples=200)
@given(_keys)
def test_generated_asts_round_trip(key):
    """Any AST built from the node types renders to syntax that parses back to itself."""
    assert parse(render(key).encode("ascii")) == key
