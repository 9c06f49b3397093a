"""Tests for metadata.sections: IMAP section numbers as byte ranges."""

from __future__ import annotations

import pytest

from metadata.mimetree import parse
from metadata.sections import (
    SectionError,
    SectionMap,
    SectionMapError,
    SectionRange,
    imap_view,
    section_map,
)
from tests.conftest import CORPUS
from tests.corpus_features import feature_rows

NESTED = (
    b"Subject: outer\r\n"
    b'Content-Type: multipart/mixed; boundary="o"\r\n'
    b"\r\n"
    b"--o\r\n"
    b"\r\n"
    b"first\r\n"
    b"--o\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"Subject: inner\r\n"
    b'Content-Type: multipart/alternative; boundary="i"\r\n'
    b"\r\n"
    b"--i\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"plain\r\n"
    b"--i\r\n"
    b"Content-Type: text/html\r\n"
    b"\r\n"
    b"<p>html</p>\r\n"
    b"--i--\r\n"
    b"--o--\r\n"
)


def _get(raw: bytes, smap: SectionMap, section: str) -> bytes | None:
    rng = smap.locate(section)
    return None if rng is None else raw[rng.start : rng.end]


def test_rfc3501_numbering() -> None:
    """Parts, MIME headers and the HEADER/TEXT of an enclosed message resolve as RFC
    3501 section 6.4.5 describes."""
    smap = section_map(parse(NESTED))
    assert _get(NESTED, smap, "") == NESTED
    assert _get(NESTED, smap, "HEADER") == NESTED[: NESTED.index(b"--o")]
    assert _get(NESTED, smap, "TEXT") == NESTED[NESTED.index(b"--o") :]
    assert _get(NESTED, smap, "1") == b"first"
    assert _get(NESTED, smap, "1.MIME") == b"\r\n"
    assert _get(NESTED, smap, "2.MIME") == b"Content-Type: message/rfc822\r\n\r\n"
    assert (
        _get(NESTED, smap, "2.HEADER")
        == b'Subject: inner\r\nContent-Type: multipart/alternative; boundary="i"\r\n\r\n'
    )
    assert _get(NESTED, smap, "2.1") == b"plain"
    assert _get(NESTED, smap, "2.2") == b"<p>html</p>"
    assert _get(NESTED, smap, "2.2.MIME") == b"Content-Type: text/html\r\n\r\n"
    part2, header2 = _get(NESTED, smap, "2"), _get(NESTED, smap, "2.HEADER")
    assert part2 is not None and header2 is not None
    assert part2.startswith(header2)
    assert _get(NESTED, smap, "2.TEXT") == part2[len(header2) :]


def test_absent_and_non_message_sections_are_none() -> None:
    """Numbers naming no part, and HEADER/TEXT of a part that is not message/rfc822,
    give None (an empty answer)."""
    smap = section_map(parse(NESTED))
    for section in ("3", "1.2", "2.3", "1.HEADER", "2.1.TEXT", "1.1.1"):
        assert smap.locate(section) is None, section
    assert smap.locate("1.1") == smap.locate("1")  # a leaf's part 1 is itself


def test_single_part_message() -> None:
    """A non-multipart message has one part, 1, its body; 1.MIME is its header."""
    raw = b"Subject: s\n\nbody\n"
    smap = section_map(parse(raw))
    assert _get(raw, smap, "1") == b"body\n"
    assert _get(raw, smap, "1.MIME") == b"Subject: s\n\n"
    assert smap.locate("2") is None


def test_invalid_specifiers_raise() -> None:
    """Malformed section specifiers raise SectionError (the server answers BAD)."""
    smap = section_map(parse(NESTED))
    for bad in ("MIME", "1.", ".1", "0", "1.0", "1.FOO", "HEADER.FIELDS (A)", "x"):
        with pytest.raises(SectionError):
            smap.locate(bad)


def test_vsize_counts_the_imap_view() -> None:
    """vsize is the size of the CRLF, NUL-free view the client receives."""
    raw = b"Subject: s\n\nline\nnul\0\r\nend"
    smap = section_map(parse(raw))
    whole = smap.locate("")
    assert whole == SectionRange(0, len(raw), len(imap_view(raw)))
    assert imap_view(raw) == b"Subject: s\r\n\r\nline\r\nnul\x80\r\nend"


def test_serialisation_round_trip() -> None:
    """The stored form decodes to the same map; junk is rejected as corruption
    (SectionMapError, a CorruptMessage like a bad skeleton), never a bare ValueError."""
    smap = section_map(parse(NESTED))
    data = smap.to_bytes()
    assert SectionMap.from_bytes(data) == smap
    for junk in (b"", b"OMSM", data[:-1], data + b"\0", b"XXXX" + data[4:]):
        with pytest.raises(SectionMapError):
            SectionMap.from_bytes(junk)


def test_sections_enumeration() -> None:
    """sections() lists every section once, in document order."""
    names = [s for s, _ in section_map(parse(NESTED)).sections()]
    assert names == [
        "", "HEADER", "TEXT",
        "1", "1.MIME",
        "2", "2.MIME", "2.HEADER", "2.TEXT",
        "2.1", "2.1.MIME", "2.2", "2.2.MIME",
    ]  # fmt: skip


@pytest.mark.skipif(not CORPUS.is_dir(), reason="corpus not available")
def test_corpus_vsizes_match_views() -> None:
    """For every corpus section, vsize equals the size of its IMAP view."""
    for row in feature_rows():
        raw = (CORPUS / row["source"] / row["path"]).read_bytes()
        smap = section_map(parse(raw))
        for section, rng in list(smap.sections())[:20]:
            assert rng is not None
            assert rng.vsize == len(imap_view(raw[rng.start : rng.end])), (row["path"], section)
