"""imapd's exceptions: one shallow hierarchy under :class:`ImapdError`.

Each class is also one of the kinds in :mod:`runtime.errors`; nearly all are the client's
mistakes (:class:`~runtime.errors.InvalidInput`: syntax, an unknown charset, a sequence
number past the end).  They are defined beside the code that raises them (the lexer,
the grammar, the session) and answered in IMAP, POP3 or LMTP words by the one map of
each protocol, :mod:`imapd.errormap`.
"""

from __future__ import annotations

from runtime import errors as kinds

__all__ = ["ImapdError", "MailboxGone", "TryCreate"]


class ImapdError(Exception):
    """Base of every error the imapd package raises on purpose."""


class MailboxGone(ImapdError, kinds.InvalidInput):
    """The selected mailbox was deleted or recreated by someone else: the session must
    end (``* BYE``), since its UIDs mean nothing any more."""


class TryCreate(ImapdError, kinds.InvalidInput):
    """The target mailbox of COPY/MOVE/APPEND does not exist (``NO [TRYCREATE]``)."""
