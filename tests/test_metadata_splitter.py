"""Tests for metadata.splitter: skeleton + blobs, exact reassembly, range reads, dedup."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import random
from collections.abc import Callable, Iterator, Mapping

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metadata.mimetree import MimeTree, parse
from metadata.sections import SectionRange, imap_view, section_map
from metadata.splitter import (
    DEFAULT_THRESHOLD,
    BlobSegment,
    InlineSegment,
    SkeletonError,
    blob_id,
    blobs_for_range,
    parse_skeleton,
    read_imap_range,
    read_range,
    reassemble,
    split,
)
from tests.conftest import CORPUS
from tests.corpus_features import feature_rows

ROWS = feature_rows()


class Recording(Mapping[str, bytes]):
    """A blob store that remembers which blobs were read."""

    def __init__(self, blobs: Mapping[str, bytes]) -> None:
        self.blobs = dict(blobs)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> bytes:
        self.read.add(key)
        return self.blobs[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.blobs)

    def __len__(self) -> int:
        return len(self.blobs)


def _attachment(data: bytes, *, eol: bytes = b"\r\n", width: int = 76) -> bytes:
    text = base64.b64encode(data)
    return eol.join(text[i : i + width] for i in range(0, len(text), width)) + eol


def _message(
    body: bytes, *, eol: bytes = b"\r\n", subject: bytes = b"hi", cte: bytes = b"base64"
) -> bytes:
    lines = [
        b"Subject: " + subject,
        b"MIME-Version: 1.0",
        b'Content-Type: multipart/mixed; boundary="sep"',
        b"",
        b"--sep",
        b"Content-Type: text/plain",
        b"",
        b"Hello.",
        b"--sep",
        b"Content-Type: application/pdf",
        b"Content-Transfer-Encoding: " + cte,
        b"",
    ]
    return eol.join(lines) + eol + body + b"--sep--" + eol


# --- corpus ------------------------------------------------------------------------


@pytest.mark.skipif(not ROWS, reason="corpus not available")
@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r['path']}[{r['features']}]")
def test_corpus_round_trip(row: dict[str, str]) -> None:
    """Every corpus file (malformed and mbox files included) reassembles byte for
    byte, with the default threshold and with every body a blob."""
    raw = (CORPUS / row["source"] / row["path"]).read_bytes()
    for threshold in (DEFAULT_THRESHOLD, 1):
        stored = split(raw, threshold)
        assert reassemble(stored.skeleton_bytes, stored.blobs) == raw
        assert parse_skeleton(stored.skeleton_bytes) == stored.skeleton
        for bid, data in stored.blobs.items():
            assert bid == hashlib.sha256(data).hexdigest()


# --- generated messages ------------------------------------------------------------

_BOUNDARIES = [b"b", b"bb", b"b--", b"=_x", b"sep", b""]


@st.composite
def _eols(draw: st.DrawFn) -> bytes:
    return draw(st.sampled_from([b"\n", b"\r\n"]))


@st.composite
def _lines(draw: st.DrawFn, bounds: tuple[bytes, ...]) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0 and bounds:
        line = b"--" + draw(st.sampled_from(bounds)) + draw(st.sampled_from([b"", b"--", b"x"]))
    elif kind == 1:
        line = draw(st.binary(max_size=30)).translate(None, b"\r\n")
    elif kind == 2:
        line = b"y" * draw(st.integers(0, 3000))
    else:
        line = draw(st.text("abc xyz=-.", max_size=40)).encode()
    return line + draw(_eols())


@st.composite
def _parts(draw: st.DrawFn, depth: int = 0, bounds: tuple[bytes, ...] = ()) -> bytes:
    kind = draw(st.sampled_from(["text", "multipart", "rfc822", "base64", "junk"]))
    if depth >= 3 and kind in ("multipart", "rfc822"):
        kind = "text"
    headers = []
    if draw(st.booleans()):
        headers.append(b"MIME-Version: 1.0")
    if draw(st.booleans()):
        headers.append(
            b"Subject: caf\xe9 " + draw(st.text("ab", max_size=5)).encode() + b"\r\n \t folded"
        )
    boundary = draw(st.sampled_from(_BOUNDARIES))
    if kind == "multipart":
        headers.append(b'Content-Type: multipart/mixed; boundary="' + boundary + b'"')
    elif kind == "rfc822":
        headers.append(b"Content-Type: message/rfc822")
    elif kind == "base64":
        headers.append(b"Content-Type: application/octet-stream")
        headers.append(b"Content-Transfer-Encoding: base64")
    elif kind == "junk":
        headers.append(
            draw(st.sampled_from([b"Content-Type: ;;", b"junk line", b"Content-Type: a/b c"]))
        )
    out = b"".join(h + draw(_eols()) for h in headers)
    if draw(st.integers(0, 9)):
        out += draw(_eols())
    if kind == "multipart":
        inner = (*bounds, boundary)
        if draw(st.booleans()):
            out += draw(_lines(inner))  # preamble
        for _ in range(draw(st.integers(0, 3))):
            out += b"--" + boundary + draw(_eols())
            out += draw(_parts(depth + 1, inner))
            out += draw(_eols())
        if draw(st.booleans()):  # or a missing close delimiter
            out += b"--" + boundary + b"--" + draw(_eols())
            if draw(st.booleans()):
                out += draw(_lines(inner))  # epilogue
    elif kind == "rfc822":
        out += draw(_parts(depth + 1, bounds))
    elif kind == "base64":
        data = draw(st.binary(min_size=1, max_size=600))
        width = draw(st.sampled_from([4, 64, 72, 76]))
        body = _attachment(data, eol=draw(_eols()), width=width)
        if draw(st.integers(0, 3)) == 0:
            body = body.rstrip(b"\r\n")  # no final line end
        out += body
    else:
        out += b"".join(draw(st.lists(_lines(bounds), max_size=6)))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_parts(), threshold=st.sampled_from([1, 8, 64, 4096]), seed=st.integers(0, 2**16))
def test_generated_round_trip_and_ranges(raw: bytes, threshold: int, seed: int) -> None:
    """Random nesting, boundaries, LF/CRLF, missing close delimiters, preambles,
    epilogues, 8-bit bytes, long lines and base64 bodies reassemble exactly, and any
    byte range reads back as the same slice using only the blobs it names."""
    stored = split(raw, threshold)
    assert reassemble(stored.skeleton_bytes, stored.blobs) == raw
    skeleton = parse_skeleton(stored.skeleton_bytes)
    rng = random.Random(seed)
    for _ in range(5):
        a = rng.randrange(len(raw) + 1)
        b = rng.randrange(a, len(raw) + 1)
        needed = blobs_for_range(skeleton, a, b)
        only_needed = {k: stored.blobs[k] for k in needed}
        assert read_range(skeleton, only_needed, a, b) == raw[a:b]


# --- range reads -------------------------------------------------------------------

BIG = bytes(range(256)) * 40  # 10 KiB attachment


def test_range_reads_touch_only_needed_blobs() -> None:
    """Reading the header needs no blob; reading one attachment needs only its blob."""
    raw = (
        b'Content-Type: multipart/mixed; boundary="o"\r\n\r\n--o\r\n\r\n'
        + b"A" * 5000
        + b"\r\n--o\r\n\r\n"
        + b"B" * 6000
        + b"\r\n--o--\r\n"
    )
    stored = split(raw)
    assert len(stored.blobs) == 2
    store = Recording(stored.blobs)
    assert read_range(stored.skeleton, store, 0, 40) == raw[:40]
    assert store.read == set()
    b_start = raw.index(b"B")
    assert read_range(stored.skeleton, store, b_start, b_start + 10) == b"B" * 10
    assert store.read == {blob_id(b"B" * 6000)}
    with pytest.raises(ValueError):
        read_range(stored.skeleton, store, 0, len(raw) + 1)


def test_imap_range_reads_lf_message() -> None:
    """Partial fetches count octets of the CRLF view and skip blobs outside the window."""
    raw = (
        b'Content-Type: multipart/mixed; boundary="o"\n\n--o\n\n'
        + b"a\n" * 3000
        + b"\n--o\n\n"
        + b"b\n" * 3000
        + b"\n--o--\n"
    )
    tree = parse(raw)
    stored = split(raw)
    smap = section_map(tree)
    whole = smap.locate("")
    assert whole is not None and whole.vsize == len(imap_view(raw))
    view = imap_view(raw)
    for origin, count in [(0, 10), (5, 7000), (6100, 50), (len(view) - 3, 10), (len(view) + 5, 10)]:
        store = Recording(stored.blobs)
        got = read_imap_range(stored.skeleton, store, whole, origin, count)
        assert got == view[origin : origin + count]
    store = Recording(stored.blobs)
    assert read_imap_range(stored.skeleton, store, whole, 0, 20) == view[:20]
    assert store.read == set()
    part2 = smap.locate("2")
    assert part2 is not None
    store = Recording(stored.blobs)
    assert read_imap_range(stored.skeleton, store, part2, 2, 6) == imap_view(b"b\n" * 3000)[2:8]
    assert store.read == {blob_id(b"b\n" * 3000)}


def test_imap_view_of_nuls_and_crlf_straddling_segments() -> None:
    """NULs read as 0x80 and CRLFs are not doubled at segment edges."""
    raw = b"Subject: x\r\n\r\n" + b"\0\r\n" * 3000
    stored = split(raw, 16)
    rng = SectionRange(0, len(raw), len(raw))
    assert read_imap_range(stored.skeleton, stored.blobs, rng) == raw.replace(b"\0", b"\x80")


# --- threshold and dedup -----------------------------------------------------------


def test_threshold_is_inclusive() -> None:
    """A leaf body of exactly threshold bytes becomes a blob; one byte less stays in
    the skeleton."""
    for size, blobs in ((99, 0), (100, 1)):
        raw = b"Subject: t\n\n" + b"z" * size
        stored = split(raw, 100)
        assert len(stored.blobs) == blobs
        assert reassemble(stored.skeleton_bytes, stored.blobs) == raw
    with pytest.raises(ValueError):
        split(b"x", 0)


def test_same_attachment_two_messages_same_blob() -> None:
    """The same attachment in two different messages gives the same blob id."""
    one = split(_message(_attachment(BIG), subject=b"one", cte=b"binary"))
    two = split(_message(_attachment(BIG), subject=b"two, different", cte=b"binary"))
    assert one.skeleton_id != two.skeleton_id
    assert set(one.blobs) == set(two.blobs)


def test_each_blob_is_named_once_by_the_given_id_function() -> None:
    """split names every blob and the skeleton with the id function it is given, calling
    it once per stored blob (the store then needs no second hash), and says which
    function named them."""
    raw = _message(_attachment(BIG, eol=b"\r\n", width=76), eol=b"\r\n")
    calls: list[int] = []

    def counting(data: bytes) -> str:
        calls.append(len(data))
        return "f" * 63 + str(len(calls) % 10)

    stored = split(raw, id_of=counting)
    assert stored.named_by is counting
    assert len(calls) == len(stored.blobs) + 1 == 2
    assert list(stored.named_blobs) == [stored.skeleton_id, *stored.blobs]
    assert stored.named_blobs[stored.skeleton_id] == stored.skeleton_bytes


def test_base64_dedups_across_line_ends_and_widths() -> None:
    """A base64 attachment sent with CRLF/76 and LF/64 is stored once, decoded (a
    quarter smaller), and both messages come back exactly."""
    crlf = _message(_attachment(BIG, eol=b"\r\n", width=76), eol=b"\r\n")
    lf = _message(_attachment(BIG, eol=b"\n", width=64), eol=b"\n")
    a, b = split(crlf), split(lf)
    assert set(a.blobs) == set(b.blobs) == {blob_id(BIG)}
    assert a.blobs[blob_id(BIG)] == BIG
    seg = next(s for s in a.skeleton.segments if isinstance(s, BlobSegment))
    assert seg.recipe is not None and seg.stored_length * 4 <= seg.length * 3 + 8
    assert reassemble(a.skeleton_bytes, a.blobs) == crlf
    assert reassemble(b.skeleton_bytes, b.blobs) == lf


_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _stray_bits(text: bytes) -> bytes:
    """The same bytes, but for set bits that padding leaves unused (decoders accept it)."""
    last = text.rstrip(b"\r\n=")
    value = _B64.index(last[-1:])
    return last[:-1] + _B64[value ^ 1 : (value ^ 1) + 1] + text[len(last) :]


@pytest.mark.parametrize(
    "mangle",
    [
        _stray_bits,  # a non-canonical last group
        lambda t: t.replace(b"=\r\n", b"\r\n", 1),  # padding dropped
        lambda t: t.replace(b"\r\n", b" \r\n", 1),  # trailing space
        lambda t: t.replace(b"\r\n", b"\n", 1),  # mixed line ends
        lambda t: t[:100] + t[102:],  # ragged line
        lambda t: t + b"\r\n\r\n",  # blank lines at the end
    ],
    ids=["stray-bits", "no-padding", "trailing-space", "mixed-eol", "ragged", "blank-line"],
)
def test_non_canonical_base64_is_kept_raw(mangle: Callable[[bytes], bytes]) -> None:
    """Base64 that re-encoding would not reproduce is stored exactly as received."""
    body = mangle(_attachment(BIG + b"!", eol=b"\r\n"))
    raw = _message(body)
    stored = split(raw)
    assert reassemble(stored.skeleton_bytes, stored.blobs) == raw
    seg = next(s for s in stored.skeleton.segments if isinstance(s, BlobSegment))
    assert seg.recipe is None
    # The part's body is the base64 text but for the newline before the delimiter.
    assert stored.blobs[seg.blob_id] == body.removesuffix(b"\r\n")


# --- the skeleton ------------------------------------------------------------------


def test_skeleton_format_and_small_messages() -> None:
    """The skeleton starts with its magic and version; a small message is one inline
    segment and no blob; the empty message works."""
    stored = split(b"Subject: x\n\nhi\n")
    assert stored.skeleton_bytes.startswith(b"OMSK\x01")
    assert stored.blobs == {}
    assert stored.skeleton.segments == (InlineSegment(b"Subject: x\n\nhi\n"),)
    empty = split(b"")
    assert reassemble(empty.skeleton_bytes, empty.blobs) == b""


def test_corruption_is_detected() -> None:
    """A tampered or missing blob and a damaged skeleton raise SkeletonError."""
    raw = _message(_attachment(BIG))
    stored = split(raw, recode_base64=False)
    (bid,) = stored.blobs
    with pytest.raises(SkeletonError):
        reassemble(stored.skeleton_bytes, {bid: stored.blobs[bid][:-1] + b"?"})
    with pytest.raises(SkeletonError):
        reassemble(stored.skeleton_bytes, {})
    for bad in (
        stored.skeleton_bytes[:-1],
        stored.skeleton_bytes + b"\0",
        b"OMSK\x02" + stored.skeleton_bytes[5:],
        b"nope",
    ):
        with pytest.raises(SkeletonError):
            parse_skeleton(bad)


def test_unparseable_message_is_one_segment() -> None:
    """When the parser fails (or returns wrong offsets) the message is stored opaque,
    as one blob, and still reassembles exactly."""
    raw = b'Content-Type: multipart/mixed; boundary="b"\n\n--b\n\n' + b"q" * 5000
    raw += b"\n--b\n\n" + b"r" * 5000 + b"\n--b--\n"

    def broken(data: bytes) -> MimeTree:
        raise RuntimeError("parser bug")

    def lying(data: bytes) -> MimeTree:
        # Parts out of order: the offsets overlap, which the exactness check catches.
        tree = parse(data)
        root = dataclasses.replace(tree.root, children=tuple(reversed(tree.root.children)))
        return dataclasses.replace(tree, root=root)

    for parser in (broken, lying):
        stored = split(raw, parser=parser)
        assert stored.skeleton.opaque and stored.tree is None
        assert len(stored.skeleton.segments) == 1
        assert reassemble(stored.skeleton_bytes, stored.blobs) == raw
