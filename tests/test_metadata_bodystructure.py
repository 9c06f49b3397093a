"""Tests for metadata.bodystructure: BODY and BODYSTRUCTURE as an IMAP server sends them.

Expected values were checked against Dovecot 2.3 (see test_metadata_dovecot_oracle
for the systematic comparison over the corpus).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metadata.bodystructure import (
    BodyStructureError,
    body_from_bodystructure,
    part_data,
    render_body,
    render_bodystructure,
)
from metadata.mimetree import parse
from tests.conftest import CORPUS

CASES = [
    pytest.param(
        b"Subject: x\n\nhello\nworld\n",
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 14 2 NIL NIL NIL NIL)',
        id="defaults-and-lf-sizes",
    ),
    pytest.param(
        b"Content-Type: text/plain charset=us-ascii\n\nx\n",
        b'("" "" NIL NIL NIL "7bit" 3 NIL NIL NIL NIL)',
        id="broken-content-type",
    ),
    pytest.param(
        b"MIME-Version: 1.0\nContent-Type: text\n\nx\n",
        b'("text" "" ("charset" "us-ascii") NIL NIL "7bit" 3 1 NIL NIL NIL NIL)',
        id="type-without-subtype",
    ),
    pytest.param(
        b"Content-Transfer-Encoding: base64\n\nx\n",
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 1 NIL NIL NIL NIL)',
        id="content-fields-need-mime",
    ),
    pytest.param(
        b"Mime-Version: 1.0\nContent-Transfer-Encoding: 7BIT\nContent-Type: TEXT/Plain; charset=US-ASCII\n\nbody\n",
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 6 1 NIL NIL NIL NIL)',
        id="plain-7bit-canonical",
    ),
    pytest.param(
        b"MIME-Version: 1.0\nContent-Type: Text/HTML; CHARSET=UTF-8; format=flowed\n"
        b"Content-Transfer-Encoding: Quoted-Printable\nContent-ID: <id@x>\n"
        b"Content-Description: a\n desc\nContent-MD5: abc==\n"
        b'Content-Disposition: attachment; filename="r\\"x.html"; size=10\n'
        b"Content-Language: en, fr-CA\nContent-Location: http://x/\n\n<p>hi</p>\r\n",
        b'("Text" "HTML" ("CHARSET" "UTF-8" "format" "flowed") "<id@x>" "a desc" "Quoted-Printable" 11 1'
        b' "abc==" ("attachment" ("filename" "r\\"x.html" "size" "10")) ("en" "fr-CA") "http://x/")',
        id="every-field",
    ),
    pytest.param(
        b"Content-Type: application/x; name*0=\"a b\"; name*1=c; title*=us-ascii'en'x%20y\n\nz",
        # "title*" inherits section 1 from "name*1" (a Dovecot parser quirk), so it is
        # an incomplete continuation and keeps its own name.
        b'("application" "x" ("name" "a bc" "title*1*" "us-ascii\'en\'x%20y") NIL NIL "7bit" 1 NIL NIL NIL NIL)',
        id="rfc2231-continuations-undecoded",
    ),
    pytest.param(
        b'Content-Type: application/x; name="caf\xc3\xa9"\n\nz',
        b'("application" "x" ("name" {5}\r\ncaf\xc3\xa9) NIL NIL "7bit" 1 NIL NIL NIL NIL)',
        id="8bit-parameter-literal",
    ),
    pytest.param(
        b"Content-Type: text/plain\nContent-Disposition: inline\nContent-Disposition: attachment; filename=b\n"
        b"Content-Disposition: inline\n\nz",
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 1 0 NIL ("attachment" ("filename" "b")) NIL NIL)',
        id="disposition-replaced-while-parameterless",
    ),
    pytest.param(
        b"Content-Type: multipart/mixed; boundary=b\n\nno parts at all\n",
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL) "mixed" ("boundary" "b") NIL NIL NIL)',
        id="multipart-without-parts",
    ),
    pytest.param(
        b'Content-Type: multipart/alternative; boundary="b"; x=y\nContent-Language: de\n\n--b\n\nA\n--b\n'
        b"Content-Type: text/html\n\n<b>B</b>\n--b--\n",
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 1 0 NIL NIL NIL NIL)'
        b'("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 8 0 NIL NIL NIL NIL)'
        b' "alternative" ("boundary" "b" "x" "y") NIL ("de") NIL)',
        id="multipart-extension-data",
    ),
    pytest.param(
        b"Content-Type: message/rfc822\n\nSubject: inner\nFrom: a@b\n\nline1\nline2\n",
        b'("message" "rfc822" NIL NIL NIL "7bit" 43 (NIL "inner" ((NIL NIL "a" "b")) ((NIL NIL "a" "b"))'
        b' ((NIL NIL "a" "b")) NIL NIL NIL NIL NIL) ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 14 2'
        b" NIL NIL NIL NIL) 5 NIL NIL NIL NIL)",
        id="message-rfc822",
    ),
    pytest.param(
        b"Content-Type: multipart/digest; boundary=d\n\n--d\n\nSubject: s\n\nx\n--d--\n",
        b'(("message" "rfc822" NIL NIL NIL "7bit" 15 (NIL "s" NIL NIL NIL NIL NIL NIL NIL NIL)'
        b' ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 1 0 NIL NIL NIL NIL) 2 NIL NIL NIL NIL)'
        b' "digest" ("boundary" "d") NIL NIL NIL)',
        id="digest-default",
    ),
]


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_bodystructure(raw: bytes, expected: bytes) -> None:
    """BODYSTRUCTURE renders each case byte for byte as Dovecot does."""
    assert render_bodystructure(parse(raw)) == expected


def test_body_has_no_extension_data() -> None:
    """BODY is BODYSTRUCTURE without extension data, nested parts included."""
    raw = (
        b"Content-Type: multipart/mixed; boundary=b\nContent-Language: de\n\n--b\n"
        b"Content-Type: message/rfc822\nContent-Disposition: inline\n\nSubject: s\n\nx\n--b--\n"
    )
    assert render_body(parse(raw)) == (
        b'(("message" "rfc822" NIL NIL NIL "7bit" 15 (NIL "s" NIL NIL NIL NIL NIL NIL NIL NIL)'
        b' ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 1 0) 2) "mixed")'
    )


def test_part_data_first_fields_win() -> None:
    """The first Content-Type, Content-Transfer-Encoding and Content-ID are used."""
    raw = (
        b"Content-Type: image/png\nContent-Type: text/plain\nContent-Transfer-Encoding: base64\n"
        b"Content-Transfer-Encoding: 8bit\nContent-ID: <1>\nContent-ID: <2>\n\nx"
    )
    d = part_data(parse(raw).root)
    assert (d.content_type, d.content_subtype, d.transfer_encoding, d.content_id) == (
        b"image",
        b"png",
        b"base64",
        b"<1>",
    )


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.binary(max_size=60))
def test_junk_never_raises(ctype: bytes, body: bytes) -> None:
    """Any Content-* junk renders a well-formed parenthesized answer."""
    raw = b"Content-Type: " + ctype + b"\nContent-Disposition: " + ctype + b"\n\n" + body
    out = render_bodystructure(parse(raw))
    assert out.startswith(b"(") and out.endswith(b")")
    assert body_from_bodystructure(out) == render_body(parse(raw))


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_body_derived_from_bodystructure(raw: bytes, expected: bytes) -> None:
    """BODY cut out of the stored BODYSTRUCTURE (schema 8 keeps only the latter) is
    render_body's answer, byte for byte, in every hand-written case."""
    assert body_from_bodystructure(expected) == render_body(parse(raw))


def test_body_derived_keeps_literals_and_nested_messages() -> None:
    """8-bit values sent as literals, a message/rfc822 inside a multipart and a
    multipart without parts come out as render_body writes them."""
    raw = (
        b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\nContent-Language: de\n\n"
        b"--b\nContent-Type: message/rfc822\nContent-Disposition: inline\n"
        b"Content-MD5: (x)\n\nSubject: s\nMIME-Version: 1.0\n"
        b"Content-Type: multipart/alternative; boundary=c\n\n--c--\n"
        b"--b\nContent-Type: application/x; name=\"caf\xc3\xa9 {3}\"\n"
        b"Content-Description: 12 (x)\n\nz\n--b--\n"
    )
    structure = render_bodystructure(parse(raw))
    assert b"{" in structure
    assert body_from_bodystructure(structure) == render_body(parse(raw))


@pytest.mark.parametrize("bad", [b"", b"(", b'("text"', b'("a" "b" NIL NIL NIL "7bit" 1', b"x",
                                 b'("a" "b" NIL NIL NIL "7bit" 1) ', b"({9}\r\nab)"])
def test_body_derived_refuses_what_no_renderer_wrote(bad: bytes) -> None:
    with pytest.raises(BodyStructureError):
        body_from_bodystructure(bad)


def _corpus_files() -> list[str]:
    if not CORPUS.is_dir():
        return []
    return sorted(str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*")
                  if p.is_file() and "LICENSES" not in p.parts
                  and p.name not in ("FEATURES.tsv", "MANIFEST.sha256", "README.md"))


def test_body_derived_equals_rendered_body_over_the_corpus() -> None:
    """For every corpus message (each one, whatever its size), BODY derived from the
    stored BODYSTRUCTURE equals the BODY that delivery rendered and schema 7 stored: what
    makes dropping the ``body`` column safe."""
    files = _corpus_files()
    if not files:
        pytest.skip("no corpus")
    mismatches = []
    for name in files:
        tree = parse((CORPUS / name).read_bytes())
        if body_from_bodystructure(render_bodystructure(tree)) != render_body(tree):
            mismatches.append(name)
    assert len(files) > 400
    assert mismatches == []


@pytest.mark.parametrize("description", [b'a\\"b', b"a\\\\", b'\\\\\\"x\\\\', b"", b"(x) {3}"])
def test_body_derived_skips_escaped_quotes(description: bytes) -> None:
    """A quoted string ends at the first quote not escaped by an odd run of backslashes."""
    structure = (b'("text" "plain" NIL NIL "' + description + b'" "7bit" 1 1 NIL NIL NIL NIL)')
    assert body_from_bodystructure(structure) == structure[:-len(b" NIL NIL NIL NIL)")] + b")"
