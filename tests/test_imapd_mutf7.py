"""Tests for imapd.mutf7: modified UTF-7 mailbox names (RFC 3501 5.1.3)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from imapclient import imap_utf7

from imapd import mutf7

CASES = [
    ("INBOX", "INBOX"),
    ("", ""),
    ("&", "&-"),
    ("a&b", "a&-b"),
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501 example
    ("Entwürfe", "Entw&APw-rfe"),
    ("Gesendete Objekte", "Gesendete Objekte"),
    ("Корзина", "&BBoEPgRABDcEOAQ9BDA-"),
    ("📧 mail", "&2D3c5w- mail"),  # a surrogate pair in UTF-16
    ("tab\there", "tab&AAk-here"),  # control characters are shifted too
]


@pytest.mark.parametrize(("text", "encoded"), CASES)
def test_encode_and_decode(text, encoded):
    """Known names encode to their canonical modified UTF-7 and decode back."""
    assert mutf7.encode(text) == encoded
    assert mutf7.decode(encoded.encode("ascii")) == text
    assert mutf7.decode(encoded) == text


@pytest.mark.parametrize(
    "encoded",
    [
        b"&U,BTFw",  # unterminated shift
        b"&AGE-",  # printable ASCII 'a' must not be shifted
        b"&U,BTFw-&ZeVnLIqe-",  # adjacent shifted runs must be one run
        b"&U,BTFx-",  # non-zero padding bits
        b"&AA-",  # one UTF-16 octet
        b"&2D0-",  # lone high surrogate
        b"&U/BTFw-",  # '/' instead of ','
        b"&U,BTFw=-",  # padding
        b"caf\xc3\xa9",  # raw 8-bit (UTF-8) is not modified UTF-7
        b"a\x00b",
        b"line\r\nbreak",
        b"&A-",  # truncated base64
    ],
)
def test_invalid_names_are_rejected(encoded):
    """Every non-canonical or malformed spelling raises MUTF7Error."""
    with pytest.raises(mutf7.MUTF7Error):
        mutf7.decode(encoded)


def test_lone_surrogate_cannot_be_encoded():
    """A str holding a lone surrogate raises MUTF7Error instead of producing garbage."""
    with pytest.raises(mutf7.MUTF7Error):
        mutf7.encode("bad\ud800")


_names = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)


@settings(max_examples=300)
@given(_names)
def test_round_trip_and_agreement_with_imapclient(name):
    """decode(encode(x)) == x, the encoding is 7-bit printable, and imapclient agrees with it."""
    encoded = mutf7.encode(name)
    assert all(0x20 <= ord(ch) <= 0x7E for ch in encoded)
    assert mutf7.decode(encoded) == name
    assert imap_utf7.decode(encoded.encode("ascii")) == name
    assert imap_utf7.encode(name) == encoded.encode("ascii")


@settings(max_examples=300)
@given(st.binary(max_size=30))
def test_decode_never_raises_anything_else(data):
    """Arbitrary bytes either decode to a name whose encoding is exactly them, or raise MUTF7Error."""
    try:
        name = mutf7.decode(data)
    except mutf7.MUTF7Error:
        return
    assert mutf7.encode(name).encode("ascii") == data
