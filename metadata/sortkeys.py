"""What SORT (RFC 5256, RFC 5957 DISPLAY) and THREAD (RFC 5256) need about a message,
computed once from its top-level header, at delivery.

Theory of operation: SORT and THREAD order a whole mailbox, so they must not read messages.
Delivery stores the keys below in ``messages`` (migration 0003); the session fetches them
for the searched entries in one query and orders them in memory.  Every text key is
casefolded, which is how the ``i;unicode-casemap`` collation RFC 5256 requires compares
(close enough: it also folds titlecase, and casefold does).  Rows stored before migration
0003 have NULL keys; the store computes them from the stored header block (never a blob)
when it meets one.  Pure: no I/O; nothing raises on malformed input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from metadata.envelope import parse_addresses
from metadata.mimetree import MimePart, parse
from metadata.searchtext import decode_header

__all__ = ["MAX_KEY_CHARS", "NO_SORT_KEYS", "SortKeys", "base_subject", "message_ids", "sort_keys", "sort_keys_of"]

#: Longest key kept per field (a btree-indexable, bounded row).
MAX_KEY_CHARS = 512
#: References kept per message: the nearest parents are what threading needs.
MAX_REFERENCES = 64

_WSP_RUN = re.compile(r"[ \t\r\n]+")
# RFC 5256 2.1 step 3: subj-leader = (*subj-blob subj-refwd) / WSP, where
# subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":" and subj-blob = "[" *BLOBCHAR "]" *WSP.
_BLOB = r"\[[^\[\]]*\][ \t]*"
_REFWD = re.compile(rf"(?:{_BLOB})*(?:re|fwd?)[ \t]*(?:{_BLOB})?:", re.IGNORECASE)
_LEADING_BLOB = re.compile(_BLOB)
_MSG_ID = re.compile(rb"<([^<>\s]*?)>")


@dataclass(frozen=True, slots=True)
class SortKeys:
    """SORT and THREAD keys of one message (see the module docstring).

    :ivar subject: the base subject (RFC 5256 2.1), casefolded; "" when none.
    :ivar reply: the subject had a reply/forward marker (``Re:``, ``Fwd:``, ``(fwd)``,
        ``[fwd: ...]``), which THREAD's subject grouping asks.
    :ivar from_: ``addr-mailbox`` of the first From address, casefolded (SORT FROM); so
        ``to`` and ``cc``.
    :ivar display_from: the display name of the first From address, decoded, or its
        ``mailbox@host`` when it has none (RFC 5957 DISPLAYFROM), casefolded; so
        ``display_to``.
    :ivar message_id: the Message-ID without its angle brackets, "" when there is none.
    :ivar references: the parents' message ids, oldest first: References, or else the
        first id of In-Reply-To (RFC 5256 REFERENCES step 1).
    """

    subject: str = ""
    reply: bool = False
    from_: str = ""
    to: str = ""
    cc: str = ""
    display_from: str = ""
    display_to: str = ""
    message_id: str = ""
    references: tuple[str, ...] = ()


#: The keys of a message with none of the fields.
NO_SORT_KEYS = SortKeys()


def base_subject(subject: str) -> tuple[str, bool]:
    """The base subject of a decoded Subject (RFC 5256 2.1) and whether it was a reply or
    forward; not casefolded."""
    text = _WSP_RUN.sub(" ", subject)
    reply = False
    while True:
        # (2) trailing "(fwd)" and whitespace.
        while True:
            text = text.rstrip(" \t")
            if text[-5:].lower() != "(fwd)":
                break
            text = text[:-5]
            reply = True
        # (3)-(5) leaders, and a blob before the base subject unless it is all there is.
        while True:
            before = text
            text = text.lstrip(" \t")
            match = _REFWD.match(text)
            if match is not None:
                text = text[match.end():]
                reply = True
                continue
            match = _LEADING_BLOB.match(text)
            if match is not None and text[match.end():].strip(" \t"):
                text = text[match.end():]
            if text == before:
                break
        # (6) a "[fwd: ...]" wrapper.
        if text[:5].lower() == "[fwd:" and text.endswith("]"):
            text = text[5:-1]
            reply = True
            continue
        return text, reply


def message_ids(value: bytes) -> list[str]:
    """The ``<...>`` ids in a Message-ID/In-Reply-To/References value, brackets removed
    (an id with nothing inside is skipped)."""
    return [m.decode("utf-8", "replace")[:MAX_KEY_CHARS]
            for m in _MSG_ID.findall(value) if m]


def _first_address(part: MimePart, name: bytes) -> tuple[str, str]:
    """(addr-mailbox, display name or ``mailbox@host``) of the field's first address,
    casefolded; ("", "") when it has none."""
    for value in part.header_values(name):
        for addr in parse_addresses(value):
            if addr.mailbox is None or addr.domain is None:
                continue  # a group marker
            mailbox = addr.mailbox.decode("utf-8", "replace")
            display = decode_header(addr.name) if addr.name else ""
            if not display:
                display = f"{mailbox}@{addr.domain.decode('utf-8', 'replace')}"
            return (mailbox.casefold()[:MAX_KEY_CHARS], display.casefold()[:MAX_KEY_CHARS])
    return "", ""


def _last(part: MimePart, name: bytes) -> bytes:
    values = part.header_values(name)
    return values[-1] if values else b""


def sort_keys_of(part: MimePart) -> SortKeys:
    """The keys of a message from its parsed top-level part (delivery has it)."""
    subject, reply = base_subject(decode_header(_last(part, b"subject")))
    from_, display_from = _first_address(part, b"from")
    to, display_to = _first_address(part, b"to")
    cc, _ = _first_address(part, b"cc")
    own = message_ids(_last(part, b"message-id"))
    references = message_ids(_last(part, b"references"))
    if not references:
        references = message_ids(_last(part, b"in-reply-to"))[:1]
    return SortKeys(
        subject=subject.casefold()[:MAX_KEY_CHARS], reply=reply,
        from_=from_, to=to, cc=cc, display_from=display_from, display_to=display_to,
        message_id=own[0] if own else "",
        references=tuple(references[-MAX_REFERENCES:]),
    )


def sort_keys(header_block: bytes) -> SortKeys:
    """The keys of a message from its stored header block (rows older than the columns)."""
    return sort_keys_of(parse(header_block).root)
