"""HEADER.FIELDS filtering of a stored header block."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def _reference(block: bytes, names: list[str]) -> bytes:
    """HEADER.FIELDS the slow way: every field from split_fields, compared by name."""
    wanted = {name.upper().encode("ascii", "replace") for name in names}
    kept = [raw if raw.endswith(b"\n") else raw + b"\r\n"
            for name, raw in split_fields(block) if name in wanted]
    return b"".join(kept) + b"\r\n"


_LINES = st.lists(st.sampled_from([
    b"From: a@b", b"from :x", b"FROM\t: y", b"From x: no", b" From: folded", b"\tmore",
    b"To: c", b"Subject: s", b"Subject", b"X-To: d", b"garbage", b"", b" ", b"Date: now",
    b"Fro: short", b"From:", b"Subject: \xff\x00", b"to:to:to",
]), max_size=12)


@settings(max_examples=400, deadline=None)
@given(_LINES, st.sampled_from([b"\n", b"\r\n"]), st.booleans(),
       st.lists(st.sampled_from(["From", "TO", "subject", "date", "X-To", "Nope"]),
                min_size=1, max_size=4))
def test_named_fields_scan_matches_field_walk(lines: list[bytes], eol: bytes, final: bool,
                                             names: list[str]) -> None:
    """Keeping named fields by scanning for their lines gives the same bytes as walking
    every field (folding, blank lines, missing final newline, odd spacing, any case)."""
    block = eol.join(lines) + (eol if final else b"")
    assert filter_fields(block, names) == _reference(block, names)
