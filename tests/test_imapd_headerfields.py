"""HEADER.FIELDS filtering of a stored header block."""

from __future__ import annotations

import pytest

from imapd.headerfields import filter_fields, split_fields

BLOCK = (b"Received: from a\r\n\tby b\r\nSubject: Hello\r\n  world\r\nFrom: x@y\r\n"
         b"subject: again\r\nX-Empty:\r\n\r\n")


def test_fields_keep_their_continuation_lines() -> None:
    """A field is its first line plus the folded lines after it; the blank line ending
    the header is not a field."""
    assert list(split_fields(BLOCK)) == [
        (b"RECEIVED", b"Received: from a\r\n\tby b\r\n"),
        (b"SUBJECT", b"Subject: Hello\r\n  world\r\n"),
        (b"FROM", b"From: x@y\r\n"),
        (b"SUBJECT", b"subject: again\r\n"),
        (b"X-EMPTY", b"X-Empty:\r\n"),
    ]


@pytest.mark.parametrize(("names", "exclude", "want"), [
    (("subject",), False, b"Subject: Hello\r\n  world\r\nsubject: again\r\n\r\n"),
    (("FROM", "TO"), False, b"From: x@y\r\n\r\n"),
    (("NOPE",), False, b"\r\n"),
    (("RECEIVED", "SUBJECT"), True, b"From: x@y\r\nX-Empty:\r\n\r\n"),
])
def test_filter(names: tuple[str, ...], exclude: bool, want: bytes) -> None:
    """Names compare case-insensitively, every occurrence is kept, the result ends with a
    blank line, and .NOT keeps the complement."""
    assert filter_fields(BLOCK, names, exclude=exclude) == want


def test_header_without_blank_line_or_final_newline() -> None:
    """A message without a body has no blank line; the last field still ends with CRLF
    and the blank line is added; LF-only blocks keep their LFs (the caller converts)."""
    assert filter_fields(b"Subject: s\nFrom: f", ["FROM", "SUBJECT"]) == (
        b"Subject: s\nFrom: f\r\n\r\n")


def test_a_line_without_colon_is_never_a_named_field() -> None:
    """Garbage lines match no name, and HEADER.FIELDS.NOT keeps them."""
    block = b"garbage line\r\nSubject: s\r\n\r\n"
    assert filter_fields(block, ["GARBAGE LINE"]) == b"\r\n"
    assert filter_fields(block, ["SUBJECT"], exclude=True) == b"garbage line\r\n\r\n"
