"""The one error map of each mail protocol imapd speaks: IMAP, POP3 and LMTP.

Every handler lets the errors of the packages below (:mod:`metadata.errors`,
:mod:`director.errors`, :mod:`imapd.errors`) rise to its session's one ``except``, which
asks this module for the words.  Each map first looks for the few classes that have words
of their own (``NO [OVERQUOTA]``, ``550 5.1.1``), then answers by the error's kind
(:mod:`runtime.errors`), so a corrupt section map and a corrupt skeleton, or PostgreSQL
down and Redis down, get the same answer:

=============== ============================ ======================= ======================
kind            IMAP (RFC 5530 codes)        POP3 (RFC 2449/3206)    LMTP (RFC 3463)
=============== ============================ ======================= ======================
corruption      ``NO [CORRUPTION]``          ``-ERR [SYS/PERM]``     ``554 5.3.0``
unavailable     ``NO [UNAVAILABLE]``         ``-ERR [SYS/TEMP]``     ``451 4.3.0``
limit           ``NO [LIMIT]``               ``-ERR [SYS/PERM]``     ``552 5.3.0``
invalid input   ``BAD``                      ``-ERR``                ``554 5.0.0``
misconfigured   ``NO [CONTACTADMIN]``        ``-ERR [SYS/PERM]``     ``451 4.3.5``
bug (no kind)   ``NO [SERVERBUG]``           ``-ERR [SYS/PERM]``     ``451 4.3.0``
=============== ============================ ======================= ======================

An LMTP corruption is permanent (554): retrying does not help until an operator repairs
the store, and the sender learns of it; a misconfiguration or a bug is temporary (451), so
the mail waits in the MTA's queue for the fix instead of bouncing.

:func:`log_failure` logs what an operator must see (bugs with their traceback,
corruption and misconfiguration as errors, outages as warnings; the client's mistakes
not at all), once, wherever the error was answered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from imapd.binary import UnknownCte
from imapd.catenate import BadUrl
from imapd.errors import TryCreate
from imapd.pop3parser import err
from imapd.response import (
    ALREADYEXISTS,
    CANNOT,
    CONTACTADMIN,
    CORRUPTION,
    EXPUNGEISSUED,
    LIMIT,
    NONEXISTENT,
    OVERQUOTA,
    SERVERBUG,
    TOOBIG,
    TRYCREATE,
    UNAVAILABLE,
    Code,
    Status,
    Tagged,
)
from imapd.response import BadUrl as BadUrlCode
from metadata.errors import (
    InvalidName,
    MailboxExists,
    MailboxRefused,
    MessageTooBig,
    NoSuchMailbox,
    NoSuchMessage,
    NoSuchUser,
    OverQuota,
    UidsExhausted,
)
from runtime import errors as kinds

__all__ = ["imap_error", "lmtp_reply", "log_failure", "pop3_error"]

# -- IMAP ------------------------------------------------------------------------------

#: Classes with IMAP words of their own: (class, status, text, code), the first match wins.
_IMAP_OWN: tuple[tuple[type[Exception], Status, Callable[[Exception], str], Code | None],
                 ...] = (
    (TryCreate, Status.NO, lambda e: "No such mailbox", TRYCREATE),
    (NoSuchMailbox, Status.NO, lambda e: "No such mailbox", NONEXISTENT),
    (MailboxExists, Status.NO, lambda e: "Mailbox already exists", ALREADYEXISTS),
    (InvalidName, Status.NO, lambda e: f"Invalid mailbox name: {e}", CANNOT),
    (MailboxRefused, Status.NO, str, CANNOT),
    (NoSuchMessage, Status.NO, lambda e: "Some messages were expunged meanwhile",
     EXPUNGEISSUED),
    (OverQuota, Status.NO, lambda e: "Quota exceeded", OVERQUOTA),
    (MessageTooBig, Status.NO, lambda e: "Message too large", TOOBIG),
    (UidsExhausted, Status.NO, lambda e: "Mailbox has used every UID", LIMIT),
    (UnknownCte, Status.NO, str, Code("UNKNOWN-CTE")),  # RFC 3516 4.3
)

#: The words for each kind: (status, text, code); text None means the error's own.
_IMAP_KINDS: dict[type[kinds.Error] | None, tuple[Status, str | None, Code | None]] = {
    kinds.Corruption: (Status.NO, "Message data is corrupt", CORRUPTION),
    kinds.Unavailable: (Status.NO, "Temporarily unavailable, try again", UNAVAILABLE),
    kinds.LimitExceeded: (Status.NO, None, LIMIT),
    kinds.InvalidInput: (Status.BAD, None, None),
    kinds.Misconfigured: (Status.NO, "Server misconfigured", CONTACTADMIN),
    None: (Status.NO, "Internal server error", SERVERBUG),
}


def imap_error(tag: str, exc: BaseException) -> Tagged:
    """The tagged IMAP answer to a command that failed with ``exc``."""
    if isinstance(exc, BadUrl):  # its code carries the URL (RFC 4469 5.1)
        return Tagged(tag, Status.NO, exc.reason, BadUrlCode(exc.url))
    for cls, status, text, code in _IMAP_OWN:
        if isinstance(exc, cls):
            return Tagged(tag, status, text(exc), code)
    status, fixed, code = _IMAP_KINDS[kinds.kind_of(exc)]
    return Tagged(tag, status, fixed if fixed is not None else _text(exc), code)


# -- POP3 ------------------------------------------------------------------------------

#: The words for each kind: (text, RFC 2449 response code); text None: the error's own.
_POP3_KINDS: dict[type[kinds.Error] | None, tuple[str | None, str | None]] = {
    kinds.Corruption: ("Message data is corrupt", "SYS/PERM"),
    kinds.Unavailable: ("Temporarily unavailable, try again", "SYS/TEMP"),
    kinds.LimitExceeded: (None, "SYS/PERM"),
    kinds.InvalidInput: (None, None),
    kinds.Misconfigured: ("Server misconfigured", "SYS/PERM"),
    None: ("Internal server error", "SYS/PERM"),
}


def pop3_error(exc: BaseException) -> bytes:
    """The ``-ERR`` line answering a POP3 command that failed with ``exc``."""
    text, code = _POP3_KINDS[kinds.kind_of(exc)]
    return err(text if text is not None else _text(exc), code)


# -- LMTP ------------------------------------------------------------------------------

#: The reply for each kind: code and enhanced status code, then the text (the error's
#: own when None).
_LMTP_KINDS: dict[type[kinds.Error] | None, tuple[str, str | None]] = {
    kinds.Corruption: ("554 5.3.0", "stored data is corrupt"),
    kinds.Unavailable: ("451 4.3.0", "temporary failure, try again later"),
    kinds.LimitExceeded: ("552 5.3.0", None),
    kinds.InvalidInput: ("554 5.0.0", None),
    kinds.Misconfigured: ("451 4.3.5", "system incorrectly configured"),
    None: ("451 4.3.0", "internal error"),
}


def lmtp_reply(exc: BaseException, address: str | None = None) -> str:
    """The LMTP reply line to a command (or one recipient's delivery) that failed with
    ``exc``; ``address`` names the recipient in it."""
    who = f"<{address}>: " if address is not None else ""
    if isinstance(exc, NoSuchUser):
        return f"550 5.1.1 {who}no such user here"
    if isinstance(exc, NoSuchMailbox):  # deleted since RCPT: the next try goes to INBOX
        return f"451 4.2.0 {who}mailbox went away, try again later"
    if isinstance(exc, OverQuota | UidsExhausted):
        return f"552 5.2.2 {who}mailbox full"
    if isinstance(exc, MessageTooBig):
        return f"552 5.3.4 Message size exceeds fixed limit of {exc.limit}"
    code, text = _LMTP_KINDS[kinds.kind_of(exc)]
    return f"{code} {who}{text if text is not None else _text(exc)}"


# -- logging ---------------------------------------------------------------------------


def log_failure(log: logging.Logger, exc: BaseException, context: str) -> None:
    """Log a failure that was answered, at the level its kind deserves.

    :param context: who and what (``"FETCH for user ann"``), for the operator.
    """
    kind = kinds.kind_of(exc)
    if kind is None:
        log.error("%s failed", context, exc_info=exc)
    elif kind is kinds.Corruption or kind is kinds.Misconfigured:
        log.error("%s: %s", context, exc)
    elif kind is kinds.Unavailable:
        log.warning("%s: %s", context, exc)


def _text(exc: BaseException) -> str:
    """The error's message on one line (it goes into a protocol's reply line)."""
    return " ".join(str(exc).split())[:300] or type(exc).__name__
