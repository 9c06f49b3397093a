"""Tests for imapd.fetchatts: FETCH attribute parsing and response names."""

from __future__ import annotations

import pytest

from imapd.fetchatts import (
    MACROS,
    BinarySection,
    BinarySize,
    BodySection,
    FetchItem,
    Partial,
    Section,
    SectionText,
    parse,
    sets_seen,
)
from imapd.lexer import ParseError

THUNDERBIRD_FIELDS = (
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
)

CASES = [
    (b"ALL", MACROS["ALL"], ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"]),
    (b"fast", MACROS["FAST"], ["FLAGS", "INTERNALDATE", "RFC822.SIZE"]),
    (b"FULL", MACROS["FULL"], ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"]),
    (b"FLAGS", (FetchItem.FLAGS,), ["FLAGS"]),
    (
        b"(UID MODSEQ BODYSTRUCTURE)",
        (FetchItem.UID, FetchItem.MODSEQ, FetchItem.BODYSTRUCTURE),
        ["UID", "MODSEQ", "BODYSTRUCTURE"],
    ),
    (b"BODY", (FetchItem.BODY,), ["BODY"]),
    (b"BODY[]", (BodySection(),), ["BODY[]"]),
    (b"body.peek[]", (BodySection(peek=True),), ["BODY[]"]),
    (b"BODY[]<0.2048>", (BodySection(partial=Partial(0, 2048)),), ["BODY[]<0>"]),
    (
        b"BODY.PEEK[1]<1024.512>",
        (BodySection(Section((1,)), True, Partial(1024, 512)),),
        ["BODY[1]<1024>"],
    ),
    (b"BODY[HEADER]", (BodySection(Section(text=SectionText.HEADER)),), ["BODY[HEADER]"]),
    (b"BODY[TEXT]", (BodySection(Section(text=SectionText.TEXT)),), ["BODY[TEXT]"]),
    (b"BODY[1.2.3]", (BodySection(Section((1, 2, 3))),), ["BODY[1.2.3]"]),
    (
        b"BODY.PEEK[1.2.MIME]",
        (BodySection(Section((1, 2), SectionText.MIME), True),),
        ["BODY[1.2.MIME]"],
    ),
    (b"BODY[2.HEADER]", (BodySection(Section((2,), SectionText.HEADER)),), ["BODY[2.HEADER]"]),
    (b"BODY[4.2.TEXT]", (BodySection(Section((4, 2), SectionText.TEXT)),), ["BODY[4.2.TEXT]"]),
    (
        b"BODY[HEADER.FIELDS (DATE FROM)]",
        (BodySection(Section(text=SectionText.HEADER_FIELDS, fields=("DATE", "FROM"))),),
        ["BODY[HEADER.FIELDS (DATE FROM)]"],
    ),
    (
        b"BODY.PEEK[HEADER.FIELDS (FROM FROM)]",
        (BodySection(Section(text=SectionText.HEADER_FIELDS, fields=("FROM", "FROM")), True),),
        ["BODY[HEADER.FIELDS (FROM FROM)]"],
    ),
    (
        b'BODY.PEEK[HEADER.FIELDS.NOT (Received "X-Odd(Name)")]',
        (
            BodySection(
                Section(text=SectionText.HEADER_FIELDS_NOT, fields=("RECEIVED", "X-ODD(NAME)")),
                True,
            ),
        ),
        ['BODY[HEADER.FIELDS.NOT (RECEIVED "X-ODD(NAME)")]'],
    ),
    (
        b"(UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc Subject Date Message-ID "
        b"Priority X-Priority References Newsgroups In-Reply-To Content-Type Reply-To)])",
        (
            FetchItem.UID,
            FetchItem.RFC822_SIZE,
            FetchItem.FLAGS,
            BodySection(Section(text=SectionText.HEADER_FIELDS, fields=THUNDERBIRD_FIELDS), True),
        ),
        [
            "UID",
            "RFC822.SIZE",
            "FLAGS",
            "BODY[HEADER.FIELDS (" + " ".join(THUNDERBIRD_FIELDS) + ")]",
        ],
    ),
    (b"RFC822", (BodySection(alias="RFC822"),), ["RFC822"]),
    (
        b"RFC822.HEADER",
        (BodySection(Section(text=SectionText.HEADER), True, alias="RFC822.HEADER"),),
        ["RFC822.HEADER"],
    ),
    (
        b"RFC822.TEXT",
        (BodySection(Section(text=SectionText.TEXT), alias="RFC822.TEXT"),),
        ["RFC822.TEXT"],
    ),
    (
        b"(RFC822.SIZE INTERNALDATE ENVELOPE)",
        (FetchItem.RFC822_SIZE, FetchItem.INTERNALDATE, FetchItem.ENVELOPE),
        ["RFC822.SIZE", "INTERNALDATE", "ENVELOPE"],
    ),
    (b"BINARY[1]", (BinarySection((1,)),), ["BINARY[1]"]),
    (
        b"BINARY.PEEK[1.2]<0.100>",
        (BinarySection((1, 2), True, Partial(0, 100)),),
        ["BINARY[1.2]<0>"],
    ),
    (b"BINARY[]", (BinarySection(()),), ["BINARY[]"]),
    (b"BINARY.SIZE[2]", (BinarySize((2,)),), ["BINARY.SIZE[2]"]),
    (b"(UID UID FLAGS)", (FetchItem.UID, FetchItem.FLAGS), ["UID", "FLAGS"]),
    (b"BODY[]<5>", (BodySection(partial=Partial(5, None)),), ["BODY[]<5>"]),
]


@pytest.mark.parametrize(
    ("text", "atts", "names"), CASES, ids=[case[0].decode()[:40] for case in CASES]
)
def test_parse(text, atts, names):
    """Each attribute parses to its value and echoes the name the FETCH response must use."""
    parsed = parse(text)
    assert parsed == atts
    assert [att.response_name for att in parsed] == names


@pytest.mark.parametrize(
    "text",
    [
        b"BODY[MIME]",
        b"BODY[1.]",
        b"BODY[FOO]",
        b"BODY[HEADER.FIELDS]",
        b"BODY[HEADER.FIELDS ()]",
        b"BODY[0]",
        b"BODY[1.0]",
        b"BODY[]<0.0>",
        b"BODY[]<x>",
        b"BODY[",
        b"BODY[]]",
        b"(ALL)",
        b"FOO",
        b"(UID",
        b"(UID )",
        b"()",
        b"BINARY[HEADER]",
        b"BINARY.SIZE[1]<0.5>",
        b"RFC822[]",
        b"BODY.PEEK",
        b"BODY[HEADER.FIELDS (FROM:)]",
        b'BODY[HEADER.FIELDS ("X-Spam Flag")]',
        b"BODY[99999999999]",
        b"UID FLAGS",
    ],
)
def test_invalid(text):
    """Malformed sections, partials, macros in lists and unknown names are ParseErrors."""
    with pytest.raises(ParseError):
        parse(text)


def test_sets_seen():
    """BODY[...], RFC822, RFC822.TEXT and BINARY[...] set \\Seen; PEEK forms and items do not."""
    assert sets_seen(parse(b"BODY[]"))
    assert sets_seen(parse(b"RFC822.TEXT"))
    assert sets_seen(parse(b"BINARY[1]"))
    assert not sets_seen(parse(b"(BODY.PEEK[] RFC822.HEADER FLAGS ENVELOPE BINARY.SIZE[1])"))
    assert not sets_seen(parse(b"BINARY.PEEK[1]"))


def test_section_validates_its_fields():
    """Building an inconsistent Section by hand is a bug and raises ValueError."""
    with pytest.raises(ValueError):
        Section(text=SectionText.HEADER_FIELDS)
    with pytest.raises(ValueError):
        Section(text=SectionText.HEADER, fields=("FROM",))
    with pytest.raises(ValueError):
        Section(text=SectionText.MIME)
    with pytest.raises(ValueError):
        Section((0,))
