"""Client commands of IMAP4rev1 (RFC 3501) and the extensions objmail speaks, as frozen
dataclasses.

Extensions: IDLE (RFC 2177), NAMESPACE (RFC 2342), UIDPLUS (RFC 4315: UID EXPUNGE), MOVE
(RFC 6851), SPECIAL-USE (RFC 6154: CREATE ... (USE (...)), LIST RETURN (SPECIAL-USE)),
LIST-EXTENDED syntax (RFC 5258), LITERAL+ (RFC 7888, in the parser), ENABLE (RFC 5161),
ID (RFC 2971), UNSELECT (RFC 3691), CONDSTORE and QRESYNC (RFC 7162), MULTIAPPEND (RFC 3502),
SASL-IR (RFC 4959), COMPRESS (RFC 4978), CATENATE (RFC 4469), ESEARCH and SEARCHRES
(RFC 4731, RFC 5182: ``SEARCH RETURN``, ``$``), ESORT and CONTEXT=SEARCH/CONTEXT=SORT
(RFC 5267: ``SORT RETURN``, the CONTEXT, UPDATE and PARTIAL return options, CANCELUPDATE).
BINARY (RFC 3516): ``literal8`` in APPEND, ``BINARY[...]``, ``BINARY.PEEK[...]`` and
``BINARY.SIZE[...]`` FETCH items.

Every command carries its ``tag``; ``NAME`` is the command word as IMAP spells it. Mailbox
names are decoded from modified UTF-7, and any case of ``INBOX`` is ``"INBOX"``. The commands
that have a UID form carry ``uid``.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import ClassVar

from imapd.fetchatts import FetchAtt
from imapd.searchkeys import SearchKey
from imapd.sequence import SequenceSet

__all__ = [
    "STATUS_ITEMS",
    "Append",
    "AppendMessage",
    "Authenticate",
    "CancelUpdate",
    "Capability",
    "CatText",
    "CatUrl",
    "Check",
    "Close",
    "Command",
    "Compress",
    "Copy",
    "Create",
    "Delete",
    "Enable",
    "Examine",
    "Expunge",
    "Fetch",
    "GetQuota",
    "GetQuotaRoot",
    "Id",
    "Idle",
    "List",
    "Login",
    "Logout",
    "Lsub",
    "Move",
    "Namespace",
    "Noop",
    "QResync",
    "Rename",
    "Search",
    "Select",
    "SelectBase",
    "SetQuota",
    "Sort",
    "SortKey",
    "StartTLS",
    "Status",
    "Store",
    "StoreMode",
    "Subscribe",
    "Thread",
    "ThreadAlgorithm",
    "UidExpunge",
    "Unselect",
    "Unsubscribe",
]

STATUS_ITEMS = frozenset(
    {"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ", "SIZE", "DELETED",
     "DELETED-STORAGE"}
)
"""STATUS data items understood (RFC 3501, RFC 7162 HIGHESTMODSEQ, RFC 8438 SIZE, RFC 9051
DELETED, RFC 9208 DELETED-STORAGE)."""


@dataclass(frozen=True)
class Command:
    """Base of every command."""

    NAME: ClassVar[str] = ""
    tag: str

    @property
    def display_name(self) -> str:
        """The command as named in responses, e.g. ``UID FETCH``."""
        return ("UID " if getattr(self, "uid", False) else "") + self.NAME


# -- any state -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Capability(Command):
    """CAPABILITY."""

    NAME: ClassVar[str] = "CAPABILITY"


@dataclass(frozen=True)
class Noop(Command):
    """NOOP: poll for mailbox changes."""

    NAME: ClassVar[str] = "NOOP"


@dataclass(frozen=True)
class Logout(Command):
    """LOGOUT."""

    NAME: ClassVar[str] = "LOGOUT"


@dataclass(frozen=True)
class Id(Command):
    """ID (RFC 2971): client identification; ``parameters`` is None for ``ID NIL``."""

    NAME: ClassVar[str] = "ID"
    parameters: tuple[tuple[str, str | None], ...] | None = None


@dataclass(frozen=True)
class Enable(Command):
    """ENABLE (RFC 5161): capability names, upper-cased."""

    NAME: ClassVar[str] = "ENABLE"
    capabilities: tuple[str, ...] = ()


# -- not authenticated ---------------------------------------------------------------------


@dataclass(frozen=True)
class StartTLS(Command):
    """STARTTLS."""

    NAME: ClassVar[str] = "STARTTLS"


@dataclass(frozen=True)
class Authenticate(Command):
    """AUTHENTICATE: ``mechanism`` upper-cased; ``initial_response`` is the decoded SASL-IR
    (``b""`` when the client sent ``=``), None when absent."""

    NAME: ClassVar[str] = "AUTHENTICATE"
    mechanism: str
    initial_response: bytes | None = None


@dataclass(frozen=True)
class Login(Command):
    """LOGIN with a UTF-8 user name and password."""

    NAME: ClassVar[str] = "LOGIN"
    username: str
    password: str

    def __repr__(self) -> str:
        # Keep passwords out of logs and tracebacks.
        return f"Login(tag={self.tag!r}, username={self.username!r}, password=<hidden>)"


# -- authenticated -------------------------------------------------------------------------


@dataclass(frozen=True)
class QResync:
    """The QRESYNC parameter of SELECT/EXAMINE (RFC 7162 3.2.5).

    :ivar seq_match: ``(known sequence numbers, their UIDs)`` if the client sent them.
    """

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


@dataclass(frozen=True)
class SelectBase(Command):
    """What SELECT and EXAMINE share; ``READ_ONLY`` tells them apart."""

    READ_ONLY: ClassVar[bool] = False
    mailbox: str
    condstore: bool = False
    qresync: QResync | None = None


@dataclass(frozen=True)
class Select(SelectBase):
    """SELECT [(CONDSTORE)] [(QRESYNC (...))]."""

    NAME: ClassVar[str] = "SELECT"


@dataclass(frozen=True)
class Examine(SelectBase):
    """EXAMINE: SELECT read-only."""

    NAME: ClassVar[str] = "EXAMINE"
    READ_ONLY: ClassVar[bool] = True


@dataclass(frozen=True)
class Create(Command):
    """CREATE, with SPECIAL-USE attributes from ``(USE (\\Sent ...))`` in canonical case."""

    NAME: ClassVar[str] = "CREATE"
    mailbox: str
    special_use: tuple[str, ...] = ()


@dataclass(frozen=True)
class Delete(Command):
    """DELETE."""

    NAME: ClassVar[str] = "DELETE"
    mailbox: str


@dataclass(frozen=True)
class Rename(Command):
    """RENAME ``mailbox`` to ``new_name``."""

    NAME: ClassVar[str] = "RENAME"
    mailbox: str
    new_name: str


@dataclass(frozen=True)
class Subscribe(Command):
    """SUBSCRIBE."""

    NAME: ClassVar[str] = "SUBSCRIBE"
    mailbox: str


@dataclass(frozen=True)
class Unsubscribe(Command):
    """UNSUBSCRIBE."""

    NAME: ClassVar[str] = "UNSUBSCRIBE"
    mailbox: str


@dataclass(frozen=True)
class List(Command):
    """LIST, in RFC 3501 or LIST-EXTENDED (RFC 5258) form.

    :ivar patterns: one or more patterns (LIST-EXTENDED allows a parenthesised list).
    :ivar select_options: upper-cased selection options, e.g. ``SUBSCRIBED``, ``SPECIAL-USE``.
    :ivar return_options: upper-cased return options, e.g. ``SPECIAL-USE``, ``CHILDREN``;
        ``STATUS`` appears here and its items in ``return_status``.
    :ivar extended: the client used LIST-EXTENDED syntax (options or several patterns),
        which changes what the response must hold (RFC 5258 3).
    """

    NAME: ClassVar[str] = "LIST"
    reference: str
    patterns: tuple[str, ...]
    select_options: tuple[str, ...] = ()
    return_options: tuple[str, ...] = ()
    return_status: tuple[str, ...] = ()
    extended: bool = False


@dataclass(frozen=True)
class Lsub(Command):
    """LSUB."""

    NAME: ClassVar[str] = "LSUB"
    reference: str
    pattern: str


@dataclass(frozen=True)
class Status(Command):
    """STATUS with upper-cased data items (see :data:`STATUS_ITEMS`)."""

    NAME: ClassVar[str] = "STATUS"
    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True)
class CatText:
    """``TEXT literal``: octets of a CATENATE (RFC 4469)."""

    data: bytes


@dataclass(frozen=True)
class CatUrl:
    """``URL astring``: an IMAP URL whose data a CATENATE includes (RFC 4469)."""

    url: str


@dataclass(frozen=True)
class AppendMessage:
    """One message of an APPEND: flags, optional INTERNALDATE, and the octets.

    :ivar binary: sent as ``literal8`` (RFC 3516), so it may hold NUL octets.
    :ivar catenate: the parts of a ``CATENATE (...)`` (RFC 4469) to join into the
        message, in order; ``data`` is empty then.
    """

    data: bytes
    flags: tuple[str, ...] = ()
    internaldate: dt.datetime | None = None
    binary: bool = False
    catenate: tuple[CatText | CatUrl, ...] | None = None

    def __repr__(self) -> str:
        return (
            f"AppendMessage(flags={self.flags!r}, internaldate={self.internaldate!r}, "
            f"binary={self.binary!r}, data=<{len(self.data)} octets>)"
        )


@dataclass(frozen=True)
class Append(Command):
    """APPEND of one message, or several (MULTIAPPEND, RFC 3502), to ``mailbox``."""

    NAME: ClassVar[str] = "APPEND"
    mailbox: str
    messages: tuple[AppendMessage, ...]


@dataclass(frozen=True)
class Namespace(Command):
    """NAMESPACE."""

    NAME: ClassVar[str] = "NAMESPACE"


@dataclass(frozen=True)
class Idle(Command):
    """IDLE: the server answers ``+ idling`` and calls ``Parser.start_idle``."""

    NAME: ClassVar[str] = "IDLE"


@dataclass(frozen=True)
class Compress(Command):
    """COMPRESS (RFC 4978); ``DEFLATE`` is the one mechanism there is."""

    NAME: ClassVar[str] = "COMPRESS"
    mechanism: str = "DEFLATE"


# -- selected ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check(Command):
    """CHECK."""

    NAME: ClassVar[str] = "CHECK"


@dataclass(frozen=True)
class Close(Command):
    """CLOSE: expunge silently (if read-write) and deselect."""

    NAME: ClassVar[str] = "CLOSE"


@dataclass(frozen=True)
class Unselect(Command):
    """UNSELECT: deselect without expunging."""

    NAME: ClassVar[str] = "UNSELECT"


@dataclass(frozen=True)
class Expunge(Command):
    """EXPUNGE."""

    NAME: ClassVar[str] = "EXPUNGE"


@dataclass(frozen=True)
class UidExpunge(Command):
    """UID EXPUNGE (UIDPLUS): expunge only the deleted messages among ``uids``."""

    NAME: ClassVar[str] = "EXPUNGE"
    uids: SequenceSet

    @property
    def display_name(self) -> str:
        """The command as named in responses."""
        return "UID EXPUNGE"


@dataclass(frozen=True)
class Search(Command):
    """SEARCH / UID SEARCH.

    :ivar charset: the CHARSET named by the client, upper-cased (strings in ``criteria``
        are already decoded with it).
    :ivar return_options: ESEARCH return options (``MIN``, ``MAX``, ``ALL``, ``COUNT``,
        ``SAVE``, and RFC 5267's ``CONTEXT``, ``UPDATE``, ``PARTIAL``) when the client wrote
        ``RETURN (...)``; None for a plain SEARCH.
    :ivar partial: the range of ``PARTIAL low:high`` as written (RFC 5267 4.4).
    """

    NAME: ClassVar[str] = "SEARCH"
    criteria: SearchKey
    charset: str | None = None
    uid: bool = False
    return_options: tuple[str, ...] | None = None
    partial: tuple[int, int] | None = None


class SortKey(enum.Enum):
    """A SORT key (RFC 5256 ``sort-key``, RFC 5957 DISPLAYFROM/DISPLAYTO)."""

    ARRIVAL = "ARRIVAL"
    CC = "CC"
    DATE = "DATE"
    FROM = "FROM"
    SIZE = "SIZE"
    SUBJECT = "SUBJECT"
    TO = "TO"
    DISPLAYFROM = "DISPLAYFROM"
    DISPLAYTO = "DISPLAYTO"


@dataclass(frozen=True)
class Sort(Command):
    """SORT / UID SORT (RFC 5256): ``criteria`` ordered by ``keys``, each ``(key,
    reverse)``, most significant first.

    :ivar return_options: ESORT return options (RFC 5267 3.1: ``MIN``, ``MAX``, ``ALL``,
        ``COUNT``; 4: ``CONTEXT``, ``UPDATE``, ``PARTIAL``) when the client wrote
        ``RETURN (...)``, answered with ESEARCH; None for a plain SORT.
    :ivar partial: the range of ``PARTIAL low:high`` as written.
    """

    NAME: ClassVar[str] = "SORT"
    keys: tuple[tuple[SortKey, bool], ...]
    charset: str
    criteria: SearchKey
    uid: bool = False
    return_options: tuple[str, ...] | None = None
    partial: tuple[int, int] | None = None


@dataclass(frozen=True)
class CancelUpdate(Command):
    """CANCELUPDATE (RFC 5267 4.3.5): stop the updates of the searches tagged ``tags``."""

    NAME: ClassVar[str] = "CANCELUPDATE"
    tags: tuple[str, ...]


class ThreadAlgorithm(enum.Enum):
    """THREAD algorithms (RFC 5256)."""

    ORDEREDSUBJECT = "ORDEREDSUBJECT"
    REFERENCES = "REFERENCES"


@dataclass(frozen=True)
class Thread(Command):
    """THREAD / UID THREAD (RFC 5256)."""

    NAME: ClassVar[str] = "THREAD"
    algorithm: ThreadAlgorithm
    charset: str
    criteria: SearchKey
    uid: bool = False


@dataclass(frozen=True)
class Fetch(Command):
    """FETCH / UID FETCH with CONDSTORE/QRESYNC modifiers.

    ``attributes`` has macros expanded and repeats removed. A UID FETCH response must
    include UID whether or not the client asked for it (the session adds it).
    """

    NAME: ClassVar[str] = "FETCH"
    sequence: SequenceSet
    attributes: tuple[FetchAtt, ...]
    uid: bool = False
    changedsince: int | None = None
    vanished: bool = False


class StoreMode(enum.Enum):
    """How STORE combines the given flags with the message's flags."""

    REPLACE = "FLAGS"
    ADD = "+FLAGS"
    REMOVE = "-FLAGS"


@dataclass(frozen=True)
class Store(Command):
    """STORE / UID STORE, with ``.SILENT`` and CONDSTORE ``UNCHANGEDSINCE``."""

    NAME: ClassVar[str] = "STORE"
    sequence: SequenceSet
    mode: StoreMode
    flags: tuple[str, ...]
    silent: bool = False
    uid: bool = False
    unchangedsince: int | None = None


@dataclass(frozen=True)
class Copy(Command):
    """COPY / UID COPY."""

    NAME: ClassVar[str] = "COPY"
    sequence: SequenceSet
    mailbox: str
    uid: bool = False


@dataclass(frozen=True)
class Move(Command):
    """MOVE / UID MOVE (RFC 6851)."""

    NAME: ClassVar[str] = "MOVE"
    sequence: SequenceSet
    mailbox: str
    uid: bool = False


# -- QUOTA (RFC 9208) ----------------------------------------------------------------------


@dataclass(frozen=True)
class GetQuota(Command):
    """GETQUOTA: the usage and limits of one quota root."""

    NAME: ClassVar[str] = "GETQUOTA"
    root: str


@dataclass(frozen=True)
class GetQuotaRoot(Command):
    """GETQUOTAROOT: the quota roots of a mailbox, and each one's usage and limits."""

    NAME: ClassVar[str] = "GETQUOTAROOT"
    mailbox: str


@dataclass(frozen=True)
class SetQuota(Command):
    """SETQUOTA: new limits for a quota root, as ``(resource, limit)`` with the resource
    names upper-cased."""

    NAME: ClassVar[str] = "SETQUOTA"
    root: str
    limits: tuple[tuple[str, int], ...]
