"""The metadata store's exceptions: one shallow hierarchy under :class:`MetadataError`.

Each class is also one of the kinds in :mod:`runtime.errors`; callers (IMAP, POP3, LMTP,
the CLI) answer in their own protocol's terms through their one error map
(:mod:`imapd.errormap`, :mod:`ops.exitcodes`): :class:`Unavailable` is
``NO [UNAVAILABLE]`` / ``451 4.3.0`` / EX_UNAVAILABLE, :class:`OverQuota` is
``NO [OVERQUOTA]`` / ``552 5.2.2``, :class:`NoSuchUser` is ``550 5.1.1``.  A misuse of this
API by our own code (a bad argument type, a negative size) raises ``ValueError``/
``TypeError`` instead: that is a bug, not a condition to answer.
"""

from __future__ import annotations

from runtime import errors as kinds


class MetadataError(Exception):
    """Base of every condition the metadata store reports."""


class Unavailable(MetadataError, kinds.Unavailable):
    """PostgreSQL cannot be reached or went away mid-transaction; nothing was committed
    unless the caller saw the call return."""


class SchemaError(MetadataError, kinds.Misconfigured):
    """The database schema is missing, older than the code, or differs from the migrations
    that were applied (``objmail db migrate`` / ``objmail db status`` tell more)."""


class CorruptMessage(MetadataError, kinds.Corruption):
    """A stored message's data (its skeleton, blobs or section map) does not make up a
    valid message: never serve it."""


class NoSuchUser(MetadataError, kinds.InvalidInput):
    """No user has this name or id."""


class UserExists(MetadataError, kinds.InvalidInput):
    """A user with this name (compared case-insensitively) already exists."""


class InvalidName(MetadataError, kinds.InvalidInput):
    """A user or mailbox name is empty, too long or holds characters it must not."""


class InvalidPassword(MetadataError, kinds.InvalidInput):
    """A new password is empty or too long."""


class NoSuchMailbox(MetadataError, kinds.InvalidInput):
    """The user has no mailbox of this name or id (or it cannot be selected)."""


class MailboxExists(MetadataError, kinds.InvalidInput):
    """The user already has a mailbox of this name."""


class MailboxRefused(MetadataError, kinds.InvalidInput):
    """The operation is not allowed on this mailbox: deleting INBOX, deleting a
    ``\\Noselect`` name that still has children, renaming a mailbox under itself."""


class NoSuchMessage(MetadataError, kinds.InvalidInput):
    """A message named by UID disappeared (expunged concurrently) during the operation."""


class OverQuota(MetadataError, kinds.LimitExceeded):
    """Storing the messages would take the user past their quota.

    :ivar used: bytes (or messages) in use before the refused change.
    :ivar limit: the user's quota in bytes (or messages).
    :ivar needed: bytes (or messages) the refused change would have added.
    :ivar resource: ``"STORAGE"`` or ``"MESSAGE"``, as IMAP QUOTA (RFC 9208) names them.
    """

    def __init__(self, used: int, limit: int, needed: int, resource: str = "STORAGE") -> None:
        self.used = used
        self.limit = limit
        self.needed = needed
        self.resource = resource
        unit = "bytes" if resource == "STORAGE" else "messages"
        super().__init__(f"over quota: {used} + {needed} {unit} exceeds the limit of {limit}")


class MessageTooBig(MetadataError, kinds.LimitExceeded):
    """The message exceeds ``imapd.max_message_size``."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"message of {size} bytes exceeds the limit of {limit} bytes")


class QueryTooLong(MetadataError, kinds.LimitExceeded):
    """PostgreSQL cancelled a statement that ran past its ``statement_timeout``
    (``metadata.statement_timeout``; ``metadata.search_timeout`` for SEARCH, SORT and
    THREAD with a BODY/TEXT substring test)."""


class UidsExhausted(MetadataError, kinds.LimitExceeded):
    """The mailbox's next UID would pass 2^32-1; it must be recreated with a new
    UIDVALIDITY (RFC 3501 2.3.1.1)."""
