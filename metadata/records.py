"""The values the metadata store takes and returns: frozen dataclasses, no behaviour.

:class:`MessageRow` is what delivery computes once per message (from the splitter and the
ENVELOPE/BODYSTRUCTURE renderers) and hands to
:meth:`metadata.messages.Messages.insert`; the rest are query results.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from metadata.flags import Flags
from metadata.sortkeys import NO_SORT_KEYS, SortKeys

__all__ = [
    "Appended",
    "CopyResult",
    "DeletedUser",
    "Expunged",
    "FlagState",
    "ListedMailbox",
    "Mailbox",
    "MailboxStatus",
    "MailboxTree",
    "MessageEntry",
    "MessageRow",
    "MoveResult",
    "SearchHits",
    "StoreResult",
    "ThreadEntry",
    "UsageTotals",
    "User",
]

BLOB_ID = re.compile(r"[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class User:
    """A user and their usage; the password hash never leaves the store."""

    id: int
    name: str
    quota_bytes: int
    """0 means unlimited."""
    used_bytes: int
    message_count: int
    created_at: dt.datetime
    quota_messages: int = 0
    """Most mailbox entries the user may hold (``message_count``); 0 means unlimited."""


@dataclass(frozen=True)
class UsageTotals:
    """Usage summed over every user."""

    users: int
    entries: int
    bytes: int


@dataclass(frozen=True)
class DeletedUser:
    """What ``objmail user del`` removed, in one transaction."""

    name: str
    mailboxes: int
    messages: int
    references: int


@dataclass(frozen=True)
class Mailbox:
    """One mailbox row.  ``noselect`` marks a name kept only because it has children."""

    user_id: int
    id: int
    name: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    special_use: str | None
    noselect: bool
    #: Every keyword ever set on one of its entries (FLAGS at SELECT; grows only).
    keywords: tuple[str, ...] = ()


@dataclass(frozen=True)
class ListedMailbox:
    """A LIST/LSUB result: the name, its attributes, and the mailbox when it exists.

    ``attributes`` holds ``\\HasChildren``/``\\HasNoChildren``, ``\\Noselect``,
    ``\\NonExistent`` (a subscription without mailbox), ``\\Subscribed`` and the SPECIAL-USE
    attribute, in that order.
    """

    name: str
    attributes: tuple[str, ...]
    mailbox: Mailbox | None


@dataclass(frozen=True)
class MailboxTree:
    """A user's mailbox rows and subscribed names, read in one snapshot (what LIST needs)."""

    mailboxes: tuple[Mailbox, ...]
    subscribed: frozenset[str]


@dataclass(frozen=True)
class MailboxStatus:
    """Counts for SELECT/EXAMINE and STATUS (RFC 3501, RFC 7162 HIGHESTMODSEQ, RFC 8438 SIZE)."""

    mailbox: Mailbox
    messages: int
    recent: int
    unseen: int
    deleted: int
    size: int
    first_unseen_uid: int | None
    #: RFC822.SIZE summed over the ``\\Deleted`` entries (STATUS DELETED-STORAGE).
    deleted_size: int = 0

    @property
    def uidnext(self) -> int:
        return self.mailbox.uidnext

    @property
    def uidvalidity(self) -> int:
        return self.mailbox.uidvalidity

    @property
    def highestmodseq(self) -> int:
        return self.mailbox.highestmodseq


@dataclass(frozen=True)
class MessageRow:
    """Everything metadata keeps about one message, computed once at delivery.

    Byte fields are stored and returned as given.  Text fields (``subject``, addresses,
    ``headers`` values, ``body_text``) are the *decoded* text (RFC 2047 words, charsets),
    used only for SEARCH: the store casefolds them and builds the full-text vector.

    :ivar skeleton_id: blob id (lowercase hex SHA-256) of the skeleton, or of the whole
        message when it could not be split.
    :ivar size: RFC822.SIZE as IMAP reports it (what FETCH RFC822 sends); quota and
        SEARCH LARGER/SMALLER count it.
    :ivar header_block: the top-level header exactly as received, blank line included
        (serves BODY[HEADER] and HEADER.FIELDS without a blob).
    :ivar envelope: ENVELOPE as IMAP renders it (the parenthesised list).
    :ivar bodystructure: BODYSTRUCTURE as IMAP renders it (BODY is derived from it at
        FETCH time: :func:`metadata.bodystructure.body_from_bodystructure`).
    :ivar section_map: the splitter's serialised map of sections to byte ranges and blobs;
        opaque to the store.
    :ivar sent_at: the Date: header, timezone-aware, or None when missing or unparsable.
    :ivar headers: top-level header fields as (name, decoded value), in order, for
        SEARCH HEADER.
    :ivar body_text: decoded text of the text parts, for SEARCH BODY/TEXT.
    :ivar sort: SORT and THREAD keys (:mod:`metadata.sortkeys`).
    """

    skeleton_id: str
    size: int
    header_block: bytes
    envelope: bytes
    bodystructure: bytes
    section_map: bytes
    sent_at: dt.datetime | None = None
    subject: str = ""
    from_addr: str = ""
    to_addr: str = ""
    cc_addr: str = ""
    bcc_addr: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body_text: str = ""
    sort: SortKeys = NO_SORT_KEYS

    def __post_init__(self) -> None:
        if not BLOB_ID.match(self.skeleton_id):
            raise ValueError(f"skeleton_id is not a lowercase hex SHA-256: {self.skeleton_id!r}")
        if self.size < 0:
            raise ValueError(f"size must not be negative, got {self.size}")
        if self.sent_at is not None and self.sent_at.utcoffset() is None:
            raise ValueError("sent_at must be timezone-aware")


@dataclass(frozen=True)
class Appended:
    """Where :meth:`~metadata.messages.Messages.insert` put a message (APPENDUID)."""

    uidvalidity: int
    uid: int
    modseq: int
    message_id: int
    #: The ``\Recent`` range ``[low, high)`` claimed in the same transaction (see
    #: :meth:`~metadata.messages.Messages.claim_recent`), when the caller asked for it.
    recent: tuple[int, int] | None = None


@dataclass(frozen=True)
class MessageEntry:
    """One message of a mailbox as FETCH needs it.

    The cached fields are None unless asked for (see
    :data:`metadata.messages.FETCH_ITEMS`).  ``internaldate`` carries the offset it was
    given with, so INTERNALDATE renders as delivered.
    """

    uid: int
    message_id: int
    flags: Flags
    modseq: int
    internaldate: dt.datetime
    size: int
    skeleton_id: str | None = None
    envelope: bytes | None = None
    bodystructure: bytes | None = None
    body: bytes | None = None
    header_block: bytes | None = None
    section_map: bytes | None = None


@dataclass(frozen=True)
class FlagState:
    """A message's flags and mod-sequence after a STORE (for the untagged FETCH)."""

    uid: int
    flags: Flags
    modseq: int


@dataclass(frozen=True)
class StoreResult:
    """Outcome of a STORE over a UID set.

    :ivar states: every message of the set that exists, after the change, by UID.
    :ivar changed: UIDs whose flags changed (they carry ``modseq``).
    :ivar modified: UIDs left alone because their mod-sequence was above UNCHANGEDSINCE
        (the ``[MODIFIED ...]`` response code).
    :ivar modseq: the mod-sequence given to the changed messages; None if none changed.
    """

    states: tuple[FlagState, ...]
    changed: tuple[int, ...]
    modified: tuple[int, ...]
    modseq: int | None


@dataclass(frozen=True)
class Expunged:
    """UIDs removed from a mailbox, ascending, and the mod-sequence of the removal."""

    uids: tuple[int, ...]
    modseq: int | None


@dataclass(frozen=True)
class CopyResult:
    """COPYUID data: ``source_uids[i]`` became ``dest_uids[i]`` in a mailbox of
    ``uidvalidity``.  Empty when no message of the set existed."""

    uidvalidity: int
    source_uids: tuple[int, ...]
    dest_uids: tuple[int, ...]


@dataclass(frozen=True)
class MoveResult:
    """A MOVE: the copy into the target and the expunge from the source, one transaction."""

    copied: CopyResult
    expunged: Expunged


@dataclass(frozen=True, slots=True)
class SortEntry:
    """One mailbox entry as SORT and THREAD see it: what orders it, no message content.

    :ivar sent_at: the Date field, or the INTERNALDATE when it has none (RFC 5256 DATE).
    """

    uid: int
    modseq: int
    internaldate: dt.datetime
    sent_at: dt.datetime
    size: int
    keys: SortKeys


class ThreadEntry(NamedTuple):
    """One mailbox entry as THREAD sees it: only what the algorithms read.

    A named tuple, not a dataclass: a THREAD over 10,000 messages builds 10,000 of them
    straight from the query's rows.

    :ivar rank: the entry's position when the searched entries are ordered by sent date
        (the Date field, or INTERNALDATE without one), then UID: RFC 5256's "sorted by
        sent date" with sequence order breaking ties, as one integer.
    :ivar subject: the base subject, casefolded (``SortKeys.subject``).
    :ivar reply: ``SortKeys.reply``; False when the algorithm does not ask (ORDEREDSUBJECT).
    :ivar message_id: ``SortKeys.message_id``; "" when not asked.
    :ivar references: ``SortKeys.references``; empty when not asked.
    """

    uid: int
    rank: int
    subject: str
    reply: bool = False
    message_id: str = ""
    references: Sequence[str] = ()


@dataclass(frozen=True)
class SearchHits:
    """SEARCH results: matching UIDs ascending, and the highest mod-sequence among them
    (for the CONDSTORE ``(MODSEQ n)`` response); None when nothing matched.

    :ivar modseqs: each UID's mod-sequence, in the order of ``uids`` (ESEARCH's MODSEQ of
        only the MIN/MAX messages, RFC 7162 3.1.10).
    """

    uids: tuple[int, ...]
    highest_modseq: int | None
    modseqs: tuple[int, ...] = ()
