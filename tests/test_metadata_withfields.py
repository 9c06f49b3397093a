"""Trace fields put on top of an analysed message (:func:`metadata.delivery.with_fields`).

LMTP analyses a message once for all its recipients and derives each recipient's copy
(its own ``Return-Path``/``Delivered-To``) from that analysis.  The oracle is a fresh
analysis of the traced message: for every corpus message, with its own line ends and
with CRLF, the derived copy must be the same row, the same skeleton and the same blobs.
"""

from __future__ import annotations

import pytest

from metadata.delivery import PreparedMessage, prepare, with_fields
from tests.conftest import CORPUS
from tests.corpus_features import feature_rows

FIELDS = b"Return-Path: <bounce@example.org>\nDelivered-To: =?utf-8?q?J=C3=B6rg?= <j@x>\n"


def corpus_files() -> list[tuple[str, str]]:
    return [(f"{r['source']}/{r['path']}", r["features"]) for r in feature_rows()]


def same(got: PreparedMessage, want: PreparedMessage) -> None:
    assert got.row == want.row
    assert got.split.skeleton == want.split.skeleton
    assert got.split.skeleton_bytes == want.split.skeleton_bytes
    assert got.split.skeleton_id == want.split.skeleton_id
    assert dict(got.split.blobs) == dict(want.split.blobs)
    assert got.raw_size == want.raw_size


def fields_for(raw: bytes) -> bytes:
    first = raw.find(b"\n")
    crlf = first > 0 and raw[first - 1] == 0x0D
    return FIELDS.replace(b"\n", b"\r\n") if crlf else FIELDS


@pytest.mark.parametrize(("path", "features"), corpus_files(),
                         ids=[f"{p}[{f}]" for p, f in corpus_files()])
def test_derived_copy_is_a_fresh_analysis(path: str, features: str) -> None:
    """Where a copy can be derived, it is exactly what analysing it afresh gives."""
    original = (CORPUS / path).read_bytes()
    crlf = original.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    for raw in {original, crlf}:
        fields = fields_for(raw)
        got = with_fields(prepare(raw, 4096), raw, fields)
        if got is not None:
            same(got, prepare(fields + raw, 4096))


def test_a_message_that_does_not_start_with_a_field_is_not_derived() -> None:
    """An mbox ``From `` line, a continuation line or a body without a header would parse
    differently under the fields: the caller must analyse those copies afresh."""
    for raw in (b"From a@b Sat Jan  3 01:05:34 1996\nSubject: x\n\nbody\n",
                b" folded: x\nSubject: x\n\nbody\n", b"\nbody only\n", b""):
        assert with_fields(prepare(raw, 4096), raw, FIELDS) is None


def test_an_opaque_message_is_not_derived() -> None:
    """A message the parser could not read is one opaque segment: analysed afresh."""
    raw = b"Subject: x\n\n" + b"y" * 5000

    def broken(_raw: bytes) -> object:
        raise ValueError("parser bug")

    from metadata.splitter import split
    opaque = prepare(raw, 4096)
    opaque = PreparedMessage(opaque.raw_size, split(raw, 4096, parser=broken),  # type: ignore[arg-type]
                             opaque.row)
    assert opaque.split.skeleton.opaque
    assert with_fields(opaque, raw, FIELDS) is None


def test_derived_copies_share_their_part_blobs() -> None:
    """Two recipients' copies: different skeletons, the same attachment blob."""
    raw = b"Subject: a\r\nContent-Type: text/plain\r\n\r\n" + b"attachment line\r\n" * 400
    base = prepare(raw, 4096)
    a = with_fields(base, raw, b"Delivered-To: a@x\r\n")
    b = with_fields(base, raw, b"Delivered-To: b@x\r\n")
    assert a is not None and b is not None
    assert a.row.skeleton_id != b.row.skeleton_id
    assert dict(a.split.blobs) == dict(b.split.blobs) == dict(base.split.blobs)
    assert len(base.split.blobs) == 1
