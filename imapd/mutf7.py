"""Modified UTF-7, the encoding of IMAP4rev1 mailbox names (RFC 3501 section 5.1.3).

Printable US-ASCII stands for itself except ``&``, which is written ``&-``; every other run of
characters is written ``&`` + base64 of its UTF-16BE form (with ``,`` for ``/`` and no padding)
+ ``-``. Decoding is strict: a name is accepted only if it is the one canonical encoding of what
it decodes to, so two spellings can never name the same mailbox.
"""

from __future__ import annotations

import base64
import binascii
import re

from imapd.errors import ImapdError
from runtime import errors as kinds

__all__ = ["MUTF7Error", "Undecodable", "decode", "encode"]


class MUTF7Error(ImapdError, kinds.InvalidInput):
    """A mailbox name is not valid modified UTF-7."""


class Undecodable(str):
    """A mailbox name as a client sent it (ASCII) that is not valid modified UTF-7.

    Such a name is not a syntax error (any astring is a mailbox name, RFC 3501 9): it
    names no mailbox, so SELECT answers NO and LIST finds nothing.  Its text is the raw
    octets, which may equal the decoded name of a real mailbox; the session checks the type
    before any lookup.
    """

    __slots__ = ()


_PRINTABLE_FIRST = 0x20
_PRINTABLE_LAST = 0x7E
_SHIFT_RUN = re.compile(r"[^\x20-\x7e]+")
_BASE64_SEGMENT = re.compile(rb"&([A-Za-z0-9+,]*)-")


def _encode_run(run: str) -> str:
    data = base64.b64encode(run.encode("utf-16-be")).rstrip(b"=").replace(b"/", b",")
    return "&" + data.decode("ascii") + "-"


def encode(name: str) -> str:
    """Return ``name`` in modified UTF-7 (pure ASCII).

    :raises MUTF7Error: when ``name`` holds a lone surrogate, which UTF-16 cannot carry.
    """
    try:
        return _SHIFT_RUN.sub(lambda m: _encode_run(m.group()), name.replace("&", "&-"))
    except UnicodeEncodeError as exc:
        raise MUTF7Error(f"mailbox name cannot be encoded: {exc.reason}") from None


def _decode_segment(data: bytes) -> str:
    if not data:
        return "&"
    if len(data) % 4 == 1:
        raise MUTF7Error("truncated base64 in mailbox name")
    padded = data.replace(b",", b"/") + b"=" * (-len(data) % 4)
    try:
        raw = base64.b64decode(padded, validate=True)
    except binascii.Error:
        raise MUTF7Error("invalid base64 in mailbox name") from None
    if len(raw) % 2:
        raise MUTF7Error("odd number of UTF-16 octets in mailbox name")
    try:
        text = raw.decode("utf-16-be")
    except UnicodeDecodeError:
        raise MUTF7Error("broken UTF-16 surrogate pair in mailbox name") from None
    return text


def decode(name: bytes | str) -> str:
    """Decode a modified UTF-7 mailbox name.

    :raises MUTF7Error: for 8-bit or control octets, bad base64, broken UTF-16, and every
        non-canonical spelling (printable ASCII inside ``&...-``, adjacent shifted runs,
        non-zero padding bits).
    """
    data = name.encode("latin-1") if isinstance(name, str) else bytes(name)
    for octet in data:
        if not _PRINTABLE_FIRST <= octet <= _PRINTABLE_LAST:
            raise MUTF7Error("mailbox name contains a non-printable or 8-bit octet")
    parts: list[str] = []
    pos = 0
    while True:
        amp = data.find(b"&", pos)
        if amp < 0:
            parts.append(data[pos:].decode("ascii"))
            break
        parts.append(data[pos:amp].decode("ascii"))
        match = _BASE64_SEGMENT.match(data, amp)
        if match is None:
            raise MUTF7Error("unterminated '&' shift in mailbox name")
        parts.append(_decode_segment(match.group(1)))
        pos = match.end()
    text = "".join(parts)
    # Canonical form only: this rejects encoded printable ASCII, split runs, stray bits.
    if encode(text).encode("ascii") != data:
        raise MUTF7Error("mailbox name is not in canonical modified UTF-7")
    return text
