"""Tests for metadata.mimetree: byte offsets of the MIME structure of raw messages."""

from __future__ import annotations

import time

import pytest

from metadata.mimetree import (
    MAX_BOUNDARY_LEN,
    MimePart,
    PartKind,
    Span,
    iter_parts,
    parse,
)
from tests.conftest import CORPUS
from tests.corpus_features import feature_rows

ROWS = feature_rows()


def _text(raw: bytes, span: Span | None) -> bytes:
    assert span is not None
    return raw[span.start : span.end]


def _bodies(raw: bytes, part: MimePart) -> list[bytes]:
    return [raw[c.body.start : c.body.end] for c in part.children]


def _check_coverage(part: MimePart) -> None:
    """Header + body tile the part; a multipart's regions tile its body in order."""
    assert part.span.start == part.header.start
    assert part.header.end == part.body.start
    assert part.body.end == part.span.end
    if part.separator is not None:
        assert part.separator.end == part.header.end
    if part.kind is PartKind.MULTIPART and part.preamble is not None:
        assert part.preamble.start == part.body.start
        cur = part.preamble.end
        children = list(part.children)
        for d in part.delimiters:
            assert d.start == cur
            cur = d.end
            if children and children[0].span.start == cur:
                cur = children.pop(0).span.end
        assert not children
        if part.epilogue is not None:
            assert part.epilogue.start == cur
            cur = part.epilogue.end
        assert cur == part.body.end
    if part.kind is PartKind.MESSAGE:
        (child,) = part.children
        assert child.span.start == part.body.start and child.span.end <= part.body.end


MULTI = (
    b"Content-Type: multipart/mixed; boundary=XYZ\r\n"
    b"\r\n"
    b"preamble\r\n"
    b"--XYZ\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"one\r\n"
    b"--XYZ\r\n"
    b"\r\n"
    b"two\r\n"
    b"--XYZ--\r\n"
    b"epilogue\r\n"
)


def test_multipart_regions_and_offsets() -> None:
    """A multipart's preamble, delimiters (with their leading CRLF), parts and epilogue
    are found at the right offsets."""
    tree = parse(MULTI)
    root = tree.root
    assert root.kind is PartKind.MULTIPART
    assert root.boundary == b"XYZ"
    assert _text(MULTI, root.separator) == b"\r\n"
    assert _text(MULTI, root.preamble) == b"preamble"
    assert [_text(MULTI, d) for d in root.delimiters] == [
        b"\r\n--XYZ\r\n",
        b"\r\n--XYZ\r\n",
        b"\r\n--XYZ--\r\n",
    ]
    assert _bodies(MULTI, root) == [b"one", b"two"]
    assert _text(MULTI, root.children[0].header) == b"Content-Type: text/plain\r\n\r\n"
    assert _text(MULTI, root.children[1].header) == b"\r\n"
    assert _text(MULTI, root.epilogue) == b"epilogue\r\n"
    assert tree.size == tree.vsize == len(MULTI)
    _check_coverage(root)


def test_lf_and_mixed_line_ends_are_kept() -> None:
    """LF-only and mixed line ends are located as received; vsize counts bare LFs as
    CRLF and lines count LFs."""
    raw = MULTI.replace(b"\r\n", b"\n")
    root = parse(raw).root
    assert _bodies(raw, root) == [b"one", b"two"]
    assert _text(raw, root.delimiters[0]) == b"\n--XYZ\n"
    first = root.children[0]
    assert first.body_vsize == 3 and first.body_lines == 0
    assert parse(raw).vsize == len(MULTI)
    mixed = b"Subject: x\n\r\nline1\r\nline2\nline3"
    tree = parse(mixed)
    assert tree.root.body_vsize == len(b"line1\r\nline2\r\nline3")
    assert tree.root.body_lines == 2
    assert _text(mixed, tree.root.separator) == b"\r\n"


def test_missing_close_delimiter_runs_to_end() -> None:
    """Without a close delimiter the last part runs to the end of the message."""
    raw = b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\nA\n--b\n\nB\nmore\n"
    root = parse(raw).root
    assert _bodies(raw, root) == [b"A", b"B\nmore\n"]
    assert root.epilogue is None
    _check_coverage(root)


def test_outer_boundary_closes_inner_parts() -> None:
    """An enclosing boundary ends an inner multipart that never closed."""
    raw = (
        b"Content-Type: multipart/mixed; boundary=outer\n\n"
        b"--outer\nContent-Type: multipart/alternative; boundary=inner\n\n"
        b"--inner\n\nI1\n--inner\n\nI2\n"
        b"--outer\n\nO2\n--outer--\n"
    )
    root = parse(raw).root
    inner = root.children[0]
    assert inner.kind is PartKind.MULTIPART
    assert _bodies(raw, inner) == [b"I1", b"I2"]
    assert _bodies(raw, root)[1] == b"O2"
    for p in iter_parts(root):
        _check_coverage(p)


def test_same_boundary_nested_binds_to_innermost() -> None:
    """A boundary reused by a nested multipart belongs to the innermost one."""
    raw = (
        b"Content-Type: multipart/mixed; boundary=b\n\n--b\n"
        b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\nX\n--b--\n--b--\n"
    )
    root = parse(raw).root
    (inner,) = root.children
    assert _bodies(raw, inner) == [b"X"]


def test_boundary_prefix_and_trailing_dashes() -> None:
    """Boundaries match by prefix, and a boundary ending in "--" still works."""
    raw = b'Content-Type: multipart/mixed; boundary="--X--"\n\n----X--\n\nA\n----X--junk\n\nB\n----X----\n'
    root = parse(raw).root
    assert _bodies(raw, root) == [b"A", b"B"]
    assert root.epilogue is not None and root.epilogue.length == 0


def test_message_rfc822_is_parsed_in_place() -> None:
    """A message/rfc822 body is one child message with its own header and parts."""
    inner = b"Subject: inner\nContent-Type: multipart/mixed; boundary=i\n\n--i\n\nhello\n--i--\n"
    raw = b"Content-Type: message/rfc822\n\n" + inner
    root = parse(raw).root
    assert root.kind is PartKind.MESSAGE
    (msg,) = root.children
    assert msg.span == Span(root.body.start, len(raw))
    assert msg.header_values(b"subject") == [b"inner"]
    assert _bodies(raw, msg) == [b"hello"]


def test_digest_parts_default_to_message() -> None:
    """Parts of a multipart/digest without Content-Type are message/rfc822."""
    raw = b"Content-Type: multipart/digest; boundary=d\n\n--d\n\nSubject: s\n\nbody\n--d--\n"
    (part,) = parse(raw).root.children
    assert part.kind is PartKind.MESSAGE
    assert part.children[0].header_values(b"Subject") == [b"s"]


def test_content_headers_need_mime() -> None:
    """Content-* fields are ignored unless MIME-Version or Content-Type is present;
    Content-Type alone makes a part MIME."""
    raw = b"Content-Transfer-Encoding: base64\n\nx"
    assert not parse(raw).root.is_mime
    raw = b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\nx\n--b--\n"
    assert parse(raw).root.kind is PartKind.MULTIPART


def test_first_content_type_wins() -> None:
    """Only the first Content-Type field decides the structure."""
    raw = b"Content-Type: text/plain\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\nx\n"
    assert parse(raw).root.kind is PartKind.LEAF


def test_header_folding_and_values() -> None:
    """Folded fields keep their line breaks in the value; whitespace after the colon
    is dropped; a line without colon is a field named after the whole line."""
    raw = b"Subject:   a\r\n\tb\r\nno colon\r\nX-Empty:\r\n\r\nbody"
    headers = parse(raw).root.headers
    assert [(h.name, h.value) for h in headers] == [
        (b"Subject", b"a\r\n\tb"),
        (b"no colon", b""),
        (b"X-Empty", b""),
    ]
    assert _text(raw, headers[0].span) == b"Subject:   a\r\n\tb\r\n"


def test_eight_bit_and_nul_bytes() -> None:
    """8-bit and NUL bytes in headers and bodies are located like any others."""
    raw = b"Subject: caf\xe9\0\n\nbin\0\xff\n"
    tree = parse(raw)
    assert tree.root.headers[0].value == b"caf\xe9\0"
    assert tree.has_nuls
    assert _text(raw, tree.root.body) == b"bin\0\xff\n"


def test_no_headers_no_blank_line_and_empty() -> None:
    """A body without headers, a header without blank line and an empty message all
    parse."""
    raw = b"\nbody only"
    root = parse(raw).root
    assert root.headers == () and _text(raw, root.body) == b"body only"
    raw = b"Subject: x\nFrom: y"
    root = parse(raw).root
    assert root.separator is None and root.body.length == 0 and len(root.headers) == 2
    empty = parse(b"")
    assert empty.root.span == Span(0, 0) and empty.vsize == 0


def test_boundary_cuts_header_short() -> None:
    """A boundary line inside a part's header ends the part; the newline before it
    belongs to the delimiter."""
    raw = b"Content-Type: multipart/mixed; boundary=b\n\n--b\nSubject: cut\n--b\n\nB\n--b--\n"
    root = parse(raw).root
    first = root.children[0]
    assert _text(raw, first.header) == b"Subject: cut"
    assert first.body.length == 0
    assert _text(raw, root.delimiters[1]) == b"\n--b\n"


def test_blank_line_before_enclosing_boundary() -> None:
    """A blank line followed by an enclosing boundary leaves the part empty and serves
    as the delimiter's newline."""
    raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nSubject: s\r\n\r\n--b--\r\n"
    root = parse(raw).root
    (part,) = root.children
    assert _text(raw, part.header) == b"Subject: s\r\n"
    assert part.separator is None and part.body.length == 0
    assert _text(raw, root.delimiters[1]) == b"\r\n--b--\r\n"


def test_long_lines_and_long_boundaries() -> None:
    """Very long lines work; over-long boundaries are cut to MAX_BOUNDARY_LEN and match
    by prefix, so their close delimiter reads as one more delimiter (as in Dovecot)."""
    boundary = b"B" * (MAX_BOUNDARY_LEN + 40)
    line = b"x" * 200_000
    raw = (
        b"Content-Type: multipart/mixed; boundary="
        + boundary
        + b"\n\n--"
        + boundary
        + b"\n\n"
        + line
    )
    raw += b"\n--" + boundary + b"--\n"
    root = parse(raw).root
    assert root.boundary == boundary[:MAX_BOUNDARY_LEN]
    assert _bodies(raw, root) == [line, b""]


def test_delimiter_without_newline_at_end() -> None:
    """A delimiter line cut by the end of the message opens no new part."""
    raw = b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\nA\n--b"
    root = parse(raw).root
    assert _bodies(raw, root) == [b"A"]
    assert _text(raw, root.delimiters[-1]) == b"\n--b"


def test_nesting_limit_makes_opaque_leaf() -> None:
    """Past max_nesting a container is an opaque leaf instead of a deeper part."""
    raw = b"Content-Type: message/rfc822\n\n" * 10 + b"end\n"
    tree = parse(raw, max_nesting=4)
    parts = list(iter_parts(tree.root))
    assert max(p.depth for p in parts) == 3
    last = parts[-1]
    assert last.overflow and last.kind is PartKind.LEAF and last.body.end == len(raw)


def test_parts_limit_makes_rest_opaque() -> None:
    """The part reaching max_parts swallows the rest of the message, boundaries
    included."""
    raw = b"Content-Type: multipart/mixed; boundary=b\n\n" + b"--b\n\nx\n" * 10 + b"--b--\n"
    tree = parse(raw, max_parts=4)
    parts = list(iter_parts(tree.root))
    assert len(parts) == 4
    assert parts[-1].overflow and parts[-1].span.end == len(raw)
    assert b"--b--" in raw[parts[-1].body.start : parts[-1].body.end]


def test_recursion_bomb_is_fast_and_bounded() -> None:
    """Thousands of nested message/rfc822 and multipart levels parse quickly, within
    the limits, without recursion."""
    bomb = b"Content-Type: message/rfc822\n\n" * 50_000 + b"x"
    t = time.perf_counter()
    tree = parse(bomb)
    assert max(p.depth for p in iter_parts(tree.root)) < 100
    nested = b"".join(
        b"Content-Type: multipart/mixed; boundary=q%d\n\n--q%d\n" % (i, i) for i in range(3000)
    )
    tree = parse(nested + b"x")
    assert max(p.depth for p in iter_parts(tree.root)) < 100
    assert time.perf_counter() - t < 5


@pytest.mark.skipif(not CORPUS.is_dir(), reason="corpus not available")
def test_enclosed_endless_bomb() -> None:
    """The 3 MB message with thousands of nested parts parses in well under a second
    or two, covering every byte."""
    raw = (CORPUS / "mailgun-flanker" / "enclosed-endless.eml").read_bytes()
    t = time.perf_counter()
    tree = parse(raw)
    elapsed = time.perf_counter() - t
    assert sum(1 for _ in iter_parts(tree.root)) > 1000
    assert tree.root.span == Span(0, len(raw))
    assert elapsed < 3


def test_linear_time() -> None:
    """Parse time grows linearly: 8x the input takes far less than 64x the time."""
    unit = b"--b\nContent-Type: text/plain\n\n" + b"line\n" * 50 + b"--notb\n" * 5
    head = b"Content-Type: multipart/mixed; boundary=b\n\n"

    def cost(n: int) -> float:
        raw = head + unit * n
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            parse(raw)
            best = min(best, time.perf_counter() - t)
        return best

    small, big = cost(300), cost(2400)
    assert big < small * 24


def test_junk_never_raises() -> None:
    """Arbitrary junk parses to some tree covering the whole input."""
    samples = [
        b"\r\r\r\n\n\n",
        b"--\n--\n--",
        b":\n:\n\n:",
        b"Content-Type: multipart/mixed; boundary=\n\n--\n--\n",
        b'Content-Type: multipart/mixed; boundary=""\n\n----\n\n',
        b"\x00\xff" * 100,
        b" \n\t\nContent-Type: message/rfc822\n\n",
    ]
    for raw in samples:
        tree = parse(raw)
        assert tree.root.span == Span(0, len(raw))
        for p in iter_parts(tree.root):
            _check_coverage(p)


@pytest.mark.skipif(not ROWS, reason="corpus not available")
@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r['path']}[{r['features']}]")
def test_corpus_structure_tiles_the_message(row: dict[str, str]) -> None:
    """For every corpus file, parts tile the message exactly and sizes add up."""
    raw = (CORPUS / row["source"] / row["path"]).read_bytes()
    tree = parse(raw)
    assert tree.root.span == Span(0, len(raw))
    assert tree.root.vsize == tree.vsize
    assert tree.root.header_lines + tree.root.body_lines == raw.count(b"\n")
    for p in iter_parts(tree.root):
        _check_coverage(p)
