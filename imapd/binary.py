"""BINARY (RFC 3516): a part's content with its Content-Transfer-Encoding undone.

What is pure lives here; :meth:`imapd.bodies.BodyReader.read_binary` reads the stored
skeleton and blobs and calls it.  A part is found with the stored section map: ``n``'s
range is its content as received, ``n.MIME`` its header, which names the encoding
(for ``BINARY[]``, the whole message, nothing is decoded).

Decoding starts from what is stored and avoids work where the store already has the
answer:

* ``7bit``, ``8bit``, ``binary`` or no encoding: the content as it is; its size is the
  length of its range, known from the section map without reading any blob;
* ``base64`` bodies that delivery stored decoded (the splitter's base64 recipe,
  :mod:`metadata.splitter`) *are* the decoded octets: ``BINARY[n]`` returns the blob
  itself and ``BINARY.SIZE[n]`` the length the skeleton records, with no blob read;
* any other ``base64`` (short ones kept in the skeleton, or line lengths no recipe
  describes) and ``quoted-printable``: decoded on each request, as Python's ``email``
  package decodes them (lenient base64, ``binascii.a2b_qp``).

Any other encoding is ``NO [UNKNOWN-CTE]`` (RFC 3516 4.3).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping

from imapd.errors import ImapdError
from metadata.sections import SectionMap, SectionRange
from metadata.splitter import (
    BlobSegment,
    Skeleton,
    SkeletonError,
    blobs_for_range,
    read_range,
)
from runtime import errors as kinds

__all__ = [
    "IDENTITY",
    "UnknownCte",
    "blobs_needed",
    "check",
    "decode",
    "decoded",
    "decoded_size",
    "locate_binary",
    "stored_decoded",
    "transfer_encoding",
]

#: Encodings under which the content is the data (RFC 2045 6.2).
IDENTITY = frozenset({"", "7bit", "8bit", "binary"})
_DECODED = frozenset({"base64", "quoted-printable"})

_CTE_FIELD = re.compile(rb"(?im)^content-transfer-encoding[ \t]*:(.*(?:\r?\n[ \t].*)*)")
_COMMENT = re.compile(rb"\([^()]*\)")


class UnknownCte(ImapdError, kinds.InvalidInput):
    """The part's Content-Transfer-Encoding is none this server can undo (answered
    ``NO [UNKNOWN-CTE]``)."""


def transfer_encoding(header: bytes) -> str:
    """The encoding named by the first Content-Transfer-Encoding field of ``header``:
    unfolded, comments and white space removed, lower-case ('' when there is none)."""
    found = _CTE_FIELD.search(header)
    if found is None:
        return ""
    value = _COMMENT.sub(b"", found.group(1))
    return b"".join(value.split()).decode("ascii", "replace").lower()


def _base64(data: bytes) -> bytes:
    """Base64 decoded leniently, as ``email`` decodes a body: line ends ignored, missing
    padding supplied, characters outside the alphabet skipped.  Only line ends are
    removed before padding is counted (as ``email`` does), so text after the base64 in
    the same body decodes to the same octets as there."""
    text = b"".join(data.splitlines())
    missing = -len(text) % 4
    try:
        return base64.b64decode(text + b"=" * (missing if missing < 3 else 0), validate=True)
    except binascii.Error:
        pass
    for padding in (b"", b"=="):
        try:
            return base64.b64decode(text + padding, validate=False)
        except binascii.Error:
            continue
    return text  # one octet too many to mean anything: given back, as email does


def decode(encoding: str, data: bytes) -> bytes:
    """``data`` with ``encoding`` undone.

    :raises UnknownCte: an encoding that is not base64, quoted-printable or an identity.
    """
    if encoding in IDENTITY:
        return data
    if encoding == "base64":
        return _base64(data)
    if encoding == "quoted-printable":
        return binascii.a2b_qp(data)
    raise UnknownCte(f"Unknown Content-Transfer-Encoding {encoding[:40]}")


def check(encoding: str) -> None:
    """:raises UnknownCte: unless :func:`decode` can undo ``encoding``."""
    if encoding not in IDENTITY and encoding not in _DECODED:
        raise UnknownCte(f"Unknown Content-Transfer-Encoding {encoding[:40]}")


def locate_binary(sections: SectionMap, part: tuple[int, ...],
                  ) -> tuple[SectionRange | None, SectionRange | None]:
    """The content range of ``BINARY[part]`` and the range of the header naming its
    encoding (None for ``BINARY[]``, the whole message, which is never decoded); the
    content range is None when ``part`` names no part."""
    if not part:
        return sections.locate(""), None
    spec = ".".join(str(number) for number in part)
    body = sections.locate(spec)
    if body is None:
        return None, None
    return body, sections.locate(spec + ".MIME")


def stored_decoded(skeleton: Skeleton, body: SectionRange) -> BlobSegment | None:
    """The blob segment holding ``body`` already decoded (a base64 recipe) when it is
    exactly that one segment (its final line end, outside the range, aside)."""
    pos = 0
    for segment in skeleton.segments:
        if pos > body.start:
            return None
        if pos == body.start:
            if not isinstance(segment, BlobSegment) or segment.recipe is None:
                return None
            extra = pos + segment.length - body.end
            eol = (2 if segment.recipe.crlf else 1) if segment.recipe.final_eol else 0
            return segment if 0 <= extra <= eol else None
        pos += segment.length
    return None


def blobs_needed(skeleton: Skeleton, body: SectionRange, encoding: str, *,
                 size_only: bool) -> tuple[str, ...]:
    """The blobs :func:`decoded` (or, with ``size_only``, :func:`decoded_size`) reads."""
    if size_only and encoding in IDENTITY:
        return ()
    if encoding == "base64":
        segment = stored_decoded(skeleton, body)
        if segment is not None:
            return () if size_only else (segment.blob_id,)
    return blobs_for_range(skeleton, body.start, body.end)


def decoded(skeleton: Skeleton, blobs: Mapping[str, bytes], body: SectionRange,
            encoding: str) -> bytes:
    """The decoded content of ``body`` (``blobs`` holds what :func:`blobs_needed` named)."""
    if encoding == "base64":
        segment = stored_decoded(skeleton, body)
        if segment is not None:
            stored = blobs[segment.blob_id]
            if len(stored) != segment.stored_length:
                raise SkeletonError(f"blob {segment.blob_id} does not hold the "
                                    f"{segment.stored_length} octets its skeleton records")
            return stored
    return decode(encoding, read_range(skeleton, blobs, body.start, body.end))


def decoded_size(skeleton: Skeleton, blobs: Mapping[str, bytes], body: SectionRange,
                 encoding: str) -> int:
    """The size of :func:`decoded`, from the section map or the skeleton when they know
    it."""
    if encoding in IDENTITY:
        return body.end - body.start
    if encoding == "base64":
        segment = stored_decoded(skeleton, body)
        if segment is not None:
            return segment.stored_length
    return len(decoded(skeleton, blobs, body, encoding))
