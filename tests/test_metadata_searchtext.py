"""Tests for metadata.searchtext: decoded text for full-text search."""

from __future__ import annotations

import base64
import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metadata.searchtext import (
    MAX_FIELD_CHARS,
    MAX_TEXT_CHARS,
    decode_header,
    html_to_text,
    search_text,
)
from tests.conftest import CORPUS
from tests.corpus_features import feature_rows


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            b"=?ISO-8859-1?Q?Keld_J=F8rn_Simonsen?= <keld@dkuug.dk>",
            "Keld Jørn Simonsen <keld@dkuug.dk>",
        ),
        (b"=?utf-8?b?Y2Fmw6k=?= =?utf-8?b?IGF1?=\r\n =?utf-8?q?_lait?=", "café au lait"),
        (b"=?utf-8?b?Y2Fmw6k?=", "café"),  # missing padding
        (b"=?x-unknown?q?abc?=", "abc"),
        (b"plain \xe9t\xe9", "plain été"),  # raw Latin-1 header
        (b"raw caf\xc3\xa9", "raw café"),  # raw UTF-8 header
        (b"a\r\n\tb", "a b"),
        (b"nul\0byte", "nulbyte"),
    ],
)
def test_decode_header(value: bytes, expected: str) -> None:
    """Header values are unfolded and RFC 2047 decoded, junk tolerated."""
    assert decode_header(value) == expected


def test_fields_and_text_parts() -> None:
    """Subject, From, To, Cc, Bcc are decoded; base64/quoted-printable text parts are
    decoded with their charset; HTML is reduced to text; attachments are skipped."""
    html_part = (
        "<html><style>p{}</style><p>H&eacute;llo <b>world</b></p><script>x()</script></html>"
    )
    raw = (
        b"Subject: =?utf-8?q?R=C3=A9union?=\n"
        b"From: Ann <ann@example.com>\nTo: b@example.com\nCc: c@example.com\nBcc: d@example.com\n"
        b'Content-Type: multipart/mixed; boundary="b"\n\n'
        b"--b\nContent-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable\n\n"
        b"caf=E9 cr=E8me\n"
        b"--b\nContent-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
        + base64.encodebytes(html_part.encode())
        + b"--b\nContent-Type: application/pdf\nContent-Transfer-Encoding: base64\n\n"
        + base64.encodebytes(b"%PDF secret")
        + b"--b--\n"
    )
    st_ = search_text(raw)
    assert (st_.subject, st_.from_, st_.to, st_.cc, st_.bcc) == (
        "Réunion",
        "Ann <ann@example.com>",
        "b@example.com",
        "c@example.com",
        "d@example.com",
    )
    assert "café crème" in st_.body
    assert "Héllo" in st_.body and "world" in st_.body
    assert "p{}" not in st_.body and "x()" not in st_.body
    assert "secret" not in st_.body


def test_date_message_id_and_header_list() -> None:
    """Date becomes an aware datetime (None when unparsable), Message-ID and every
    header field are kept decoded, in order."""
    raw = b"Date: Thu, 20 Jun 1996 08:35:17 +0200\nMessage-ID: <a@b>\nX-Caf: =?utf-8?q?caf=C3=A9?=\n\nx"
    st_ = search_text(raw)
    assert st_.sent_at == dt.datetime(1996, 6, 20, 6, 35, 17, tzinfo=dt.UTC)
    assert st_.message_id == "<a@b>"
    assert st_.headers == (
        ("Date", "Thu, 20 Jun 1996 08:35:17 +0200"),
        ("Message-ID", "<a@b>"),
        ("X-Caf", "café"),
    )
    assert search_text(b"Date: someday\n\nx").sent_at is None
    assert search_text(b"Date: 20 Jun 1996 08:35:17\n\nx").sent_at.tzinfo is not None  # type: ignore[union-attr]


def test_html_to_text() -> None:
    """Tags go, entities are decoded, block tags break lines, comments vanish."""
    assert html_to_text("a<br>b<!-- c -->&amp;d").split() == ["a", "b", "&d"]


def test_limits() -> None:
    """Body text and header fields are bounded."""
    raw = b"Subject: " + b"s" * (2 * MAX_FIELD_CHARS) + b"\n\n" + b"word " * MAX_TEXT_CHARS
    st_ = search_text(raw)
    assert len(st_.subject) <= MAX_FIELD_CHARS
    assert len(st_.body) <= MAX_TEXT_CHARS


def test_bad_charset_and_encoding() -> None:
    """Unknown charsets and broken base64 still give text, never an error."""
    raw = (
        b"Content-Type: text/plain; charset=klingon\nContent-Transfer-Encoding: base64\n\n"
        b"aGVsbG8gd29ybGQ!!!\n"
    )
    assert "hello world" in search_text(raw).body


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_junk_never_raises(body: bytes) -> None:
    """Arbitrary bytes produce NUL-free strings."""
    for raw in (
        body,
        b"Content-Type: text/html; charset=utf-16\nContent-Transfer-Encoding: base64\n\n" + body,
    ):
        st_ = search_text(raw)
        assert "\0" not in st_.body + st_.subject


@pytest.mark.skipif(not CORPUS.is_dir(), reason="corpus not available")
def test_corpus() -> None:
    """Every corpus message yields search text; UTF-16 and encoded subjects decode."""
    for row in feature_rows():
        search_text((CORPUS / row["source"] / row["path"]).read_bytes())
    utf16 = search_text((CORPUS / "apache-spamassassin" / "spam" / "utf16.eml").read_bytes())
    assert utf16.subject == "Design and manufacturing"
    assert "Dear potencial partner" in utf16.body


def test_address_fields_are_also_searchable_as_the_envelope_reads_them() -> None:
    """An address with comments and folding whitespace is kept as sent and also as the
    ENVELOPE reads it, so SEARCH FROM user-from@domain.org finds it; plain ones are not
    repeated."""
    raw = (b"From: <user-from (comment)@ (comment) domain.org>\r\n"
           b"To: =?utf-8?q?J=C3=BCrgen?= <j@example.de>, undisclosed: ;\r\n"
           b"Cc: c@example.com\r\n\r\nbody\r\n")
    st_ = search_text(raw)
    assert st_.from_ == "<user-from (comment)@ (comment) domain.org>\nuser-from@domain.org"
    assert st_.to == "Jürgen <j@example.de>, undisclosed: ;\nJürgen <j@example.de>"
    assert st_.cc == "c@example.com"


def test_a_date_the_store_cannot_hold_is_dropped() -> None:
    """A Date: whose instant falls beyond year 9999 in UTC gives no sent date (the message
    is stored all the same); a late but valid one is kept."""
    late = search_text(b"Date: Fri, 31 Dec 9999 23:59:59 -1200\r\n\r\nx\r\n")
    assert late.sent_at is None
    kept = search_text(b"Date: Fri, 31 Dec 9999 13:59:59 +1200\r\n\r\nx\r\n")
    assert kept.sent_at is not None and kept.sent_at.year == 9999


def test_text_of_a_multipart_whose_boundary_follows_double_semicolons() -> None:
    """A multipart whose boundary parameter follows ``;;`` (which the strict reading, like
    Dovecot's BODYSTRUCTURE, does not see) still has its parts' text indexed."""
    raw = (CORPUS / "apache-james-mime4j/mimetools-testmsgs/double-semicolon.msg").read_bytes()
    assert search_text(raw).body == "The better part\n\nThe worse part"


@pytest.mark.parametrize("delimiter", [b"----=_Next_0001", b"----=_Next_ 0001"])
def test_text_of_a_multipart_whose_boundary_value_is_folded(delimiter: bytes) -> None:
    """A boundary value folded across lines is matched whether the delimiter lines keep the
    fold's space (RFC 5322 unfolding) or drop it (what the sender meant)."""
    raw = (b'Content-Type: multipart/alternative; boundary="----=_Next_\r\n 0001"\r\n\r\n'
           b"preamble\r\n--" + delimiter + b"\r\nContent-Type: text/plain\r\n\r\nfolded body"
           b"\r\n--" + delimiter + b"--\r\n")
    assert search_text(raw).body == "folded body"
