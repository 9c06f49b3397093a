"""What BINARY should return for each leaf part of a message, according to Python's
``email`` package: the oracle of the BINARY tests (RFC 3516 part numbers as RFC 3501
numbers them)."""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass
from email.message import Message

__all__ = ["IDENTITY", "OraclePart", "oracle_parts"]

#: Encodings under which the content is the data.
IDENTITY = frozenset({"", "7bit", "8bit", "binary"})
_COMMENT = re.compile(r"\([^()]*\)")


@dataclass(frozen=True)
class OraclePart:
    """A leaf part: its number, its encoding (normalised), its content as received and
    what ``email`` decodes (with the Content-Transfer-Encoding field normalised first:
    ``email`` compares the raw value, so ``"base64 "`` with a trailing space would not
    be decoded at all)."""

    number: tuple[int, ...]
    encoding: str
    raw: bytes
    decoded: bytes


def _encoding(part: Message) -> str:
    value = part.get("Content-Transfer-Encoding")
    if value is None:
        return ""
    return "".join(_COMMENT.sub("", str(value)).split()).lower()


def _decoded(part: Message, encoding: str) -> bytes:
    if "Content-Transfer-Encoding" in part:
        part.replace_header("Content-Transfer-Encoding", encoding)
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    return data


def oracle_parts(raw: bytes) -> list[OraclePart]:
    """Every leaf part of ``raw`` in document order."""
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    out: list[OraclePart] = []

    def leaf(part: Message, number: tuple[int, ...]) -> None:
        encoding = _encoding(part)
        # The octets as parsed (get_payload() would decode 8-bit text by its charset).
        payload = getattr(part, "_payload", None)
        raw = payload.encode("ascii", "surrogateescape") if isinstance(payload, str) else b""
        decoded = _decoded(part, encoding) if encoding in IDENTITY | {
            "base64", "quoted-printable"} else b""
        out.append(OraclePart(number, encoding, raw, decoded))

    def visit_message(part: Message, prefix: tuple[int, ...]) -> None:
        # A message's parts: a multipart's children, or its body as part 1.
        if part.get_content_maintype() == "multipart" and part.is_multipart():
            visit_children(part, prefix)
        else:
            visit(part, (*prefix, 1))

    def visit_children(part: Message, prefix: tuple[int, ...]) -> None:
        payload = part.get_payload()
        assert isinstance(payload, list)
        for i, child in enumerate(payload, 1):
            visit(child, (*prefix, i))

    def visit(part: Message, number: tuple[int, ...]) -> None:
        if part.get_content_maintype() == "multipart" and part.is_multipart():
            visit_children(part, number)
        elif part.get_content_type() == "message/rfc822" and part.is_multipart():
            payload = part.get_payload()
            assert isinstance(payload, list) and isinstance(payload[0], Message)
            visit_message(payload[0], number)
        elif not part.is_multipart():
            leaf(part, number)
        # else: message/delivery-status and the like, which email parses into headers
        # blocks and never decodes: IMAP's leaf, but no oracle for it.

    visit_message(message, ())
    return out
