"""SEARCH criteria: the parser's AST (:mod:`imapd.searchkeys`) onto the store's neutral
criteria (:mod:`metadata.search`), which PostgreSQL answers, full text included.

Only the session knows sequence numbers, ``*`` and ``\\Recent``, so they are resolved here
into UID sets against its :class:`~imapd.mailboxview.MailboxView`; everything else maps one
to one.  Pure: no I/O.
"""

from __future__ import annotations

from typing import Literal

from imapd import searchkeys as k
from imapd.mailboxview import MailboxView
from metadata import search as s
from metadata.flags import system_bit
from metadata.uidset import UidSet

__all__ = ["to_criterion"]

_DATE_FIELDS: dict[k.DateField, Literal["internal", "sent"]] = {
    k.DateField.INTERNAL: "internal",
    k.DateField.SENT: "sent",
}
_DATE_OPS: dict[k.DateOp, Literal["before", "on", "since"]] = {
    k.DateOp.BEFORE: "before",
    k.DateOp.ON: "on",
    k.DateOp.SINCE: "since",
}


def _flag(name: str, view: MailboxView) -> s.Criterion:
    if name == "\\Recent":
        return s.UidIn(UidSet.from_uids(view.recent))
    bit = system_bit(name)
    if bit is not None:
        return s.HasFlag(bit)
    return s.HasKeyword(name)


def to_criterion(key: k.SearchKey, view: MailboxView) -> s.Criterion:
    """The store criterion for ``key`` in the session's ``view``.

    :raises InvalidSequence: a sequence number beyond the message count.
    :raises TypeError: an AST node this function does not know (a bug).
    """
    match key:
        case k.All():
            return s.Everything()
        case k.Flag(name):
            return _flag(name, view)
        case k.Not(inner):
            return s.Not(to_criterion(inner, view))
        case k.Or(left, right):
            return s.AnyOf((to_criterion(left, view), to_criterion(right, view)))
        case k.And(keys):
            return s.AllOf(tuple(to_criterion(inner, view) for inner in keys))
        case k.Header(name, value):
            return s.HeaderContains(name.lower(), value)
        case k.Body(value):
            return s.BodyContains(value)
        case k.Text(value):
            return s.TextContains(value)
        case k.Date(field, op, day):
            return s.DateMatches(_DATE_FIELDS[field], _DATE_OPS[op], day)
        case k.Size(op, octets):
            return s.SizeMatches("larger" if op is k.SizeOp.LARGER else "smaller", octets)
        case k.Uid(ids):
            return s.UidIn(view.uid_set(view.resolve(ids, uid=True)))
        case k.SeqNumbers(ids):
            return s.UidIn(view.uid_set(view.resolve(ids, uid=False)))
        case k.ModSeq(modseq):
            return s.ModSeqAtLeast(modseq)
    raise TypeError(f"not a search key: {key!r}")
