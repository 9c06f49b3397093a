"""A selected session's picture of its mailbox: sequence numbers, UIDs, what it was told.

IMAP numbers messages twice: by UID (stable) and by sequence number (position, which only
changes when the *client* is told of an expunge).  PostgreSQL knows UIDs only, so each
selected session keeps the ordered UIDs it has announced and maps between the two.  The
view changes only when the session sends the matching untagged response (EXISTS for
:meth:`MailboxView.add`, EXPUNGE/VANISHED for :meth:`MailboxView.remove`), which is what
keeps sequence numbers unambiguous while other sessions add and expunge messages.

It also records the watermarks the session has reported up to: ``uidnext`` (messages below
it are announced), ``flags_modseq`` (flag changes up to it were sent), ``expunge_modseq``
(expunges up to it were sent), and the mod-sequences of the session's own changes, which
need no untagged echo.  Pure data: no I/O.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from imapd.errors import ImapdError
from imapd.sequence import SequenceSet
from metadata.uidset import UidSet
from runtime import errors as kinds

__all__ = ["InvalidSequence", "MailboxView"]


class InvalidSequence(ImapdError, kinds.InvalidInput):
    """A sequence number beyond the messages the client knows (answered BAD)."""


class MailboxView:
    """The announced UIDs of one selected mailbox (see the module docstring)."""

    def __init__(self, mailbox_id: int, name: str, uidvalidity: int, uids: Iterable[int], *,
                 uidnext: int, highestmodseq: int, read_only: bool) -> None:
        self.mailbox_id = mailbox_id
        self.name = name
        self.uidvalidity = uidvalidity
        self.uids: list[int] = sorted(uids)
        self.uidnext = uidnext
        self.flags_modseq = highestmodseq
        self.expunge_modseq = highestmodseq
        self.read_only = read_only
        self.recent: set[int] = set()
        #: ``[low, high)`` UID ranges whose ``\\Recent`` this session claimed.
        self.recent_claims: list[tuple[int, int]] = []
        self.own_modseqs: set[int] = set()
        #: Keywords announced in FLAGS (the session sends FLAGS again when one is new).
        self.keywords: set[str] = set()
        #: UIDs of the result ``SEARCH RETURN (SAVE)`` kept (SEARCHRES, RFC 5182): what
        #: ``$`` means; expunged ones drop out when resolved.
        self.saved: list[int] = []

    @property
    def exists(self) -> int:
        return len(self.uids)

    @property
    def max_uid(self) -> int:
        """The largest announced UID, 0 when empty (what ``*`` means in a UID set)."""
        return self.uids[-1] if self.uids else 0

    def seq_of(self, uid: int) -> int | None:
        """The sequence number of ``uid``, or None when it is not announced."""
        index = bisect.bisect_left(self.uids, uid)
        if index < len(self.uids) and self.uids[index] == uid:
            return index + 1
        return None

    def uid_of(self, seq: int) -> int:
        if not 1 <= seq <= len(self.uids):
            raise InvalidSequence(f"no message {seq}")
        return self.uids[seq - 1]

    def seq_numbers(self) -> dict[int, int]:
        """Every announced UID's sequence number, for numbering a whole mailbox at once
        (SORT, THREAD): one dictionary instead of a search per message."""
        return dict(zip(self.uids, range(1, len(self.uids) + 1), strict=True))

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, int) and self.seq_of(uid) is not None

    def resolve(self, ids: SequenceSet, *, uid: bool) -> list[tuple[int, int]]:
        """The announced messages ``ids`` names, as ``(seq, uid)`` ascending.

        A UID set keeps only the UIDs that exist (``*`` is the largest announced UID).
        A sequence set naming a number beyond the message count is an error, except in an
        empty mailbox, where every set is simply empty.

        ``$`` is the saved search result, whichever form the command has (RFC 5182 2.1).

        :raises InvalidSequence: see above.
        """
        if ids.saved:
            kept: list[tuple[int, int]] = []
            for saved_uid in self.saved:
                seq = self.seq_of(saved_uid)
                if seq is not None:
                    kept.append((seq, saved_uid))
            return kept
        if uid:
            found: list[tuple[int, int]] = []
            for low, high in ids.resolve(max(self.max_uid, 1) if self.uids else 0):
                start = bisect.bisect_left(self.uids, low)
                stop = bisect.bisect_right(self.uids, high)
                found.extend((i + 1, self.uids[i]) for i in range(start, stop))
            return found
        if not self.uids:
            return []
        if ids.highest_explicit() > len(self.uids):
            raise InvalidSequence("message sequence number out of range")
        return [(seq, self.uids[seq - 1]) for seq in ids.values(len(self.uids))]

    def uid_set(self, pairs: Iterable[tuple[int, int]]) -> UidSet:
        """The UIDs of ``(seq, uid)`` pairs as compact ranges: a run of consecutive
        sequence numbers becomes one UID range.  That is exact because a UID between two
        announced ones that is not announced itself no longer exists (new messages only
        ever get UIDs above every announced one)."""
        ranges: list[tuple[int, int]] = []
        last_seq = -1
        for seq, uid in pairs:
            if ranges and seq == last_seq + 1:
                ranges[-1] = (ranges[-1][0], uid)
            else:
                ranges.append((uid, uid))
            last_seq = seq
        return UidSet.of(ranges)

    def remove(self, uids: Iterable[int]) -> list[int]:
        """Forget ``uids`` (those announced); return the sequence numbers to report, in
        order, each as the client computes it after the previous EXPUNGE."""
        positions = sorted({bisect.bisect_left(self.uids, u) for u in set(uids) if u in self})
        if not positions:
            return []
        gone = set(positions)
        removed = [self.uids[p] for p in positions]
        self.uids = [u for i, u in enumerate(self.uids) if i not in gone]
        self.recent.difference_update(removed)
        return [p + 1 - n for n, p in enumerate(positions)]

    def add(self, uids: Iterable[int]) -> int:
        """Announce new UIDs (all above the current ones); return how many were new.
        Those inside a claimed ``\\Recent`` range become recent."""
        fresh = sorted(u for u in set(uids) if u > self.max_uid)
        self.uids.extend(fresh)
        self.recent.update(u for u in fresh if self._claimed(u))
        return len(fresh)

    def claim_recent(self, low: int, high: int) -> None:
        """Record that UIDs in ``[low, high)`` are recent to this session (from
        ``Messages.claim_recent``), including those not announced yet."""
        if low >= high:
            return
        claims = self.recent_claims
        if claims and low <= claims[-1][1] and high >= claims[-1][0]:
            # Touching or overlapping the last one (a session's successive APPENDs each
            # claim from where the previous stopped): one range, so that :meth:`_claimed`
            # does not grow with every APPEND of a long session.
            claims[-1] = (min(low, claims[-1][0]), max(high, claims[-1][1]))
        else:
            claims.append((low, high))
        start = bisect.bisect_left(self.uids, low)
        stop = bisect.bisect_left(self.uids, high)
        self.recent.update(self.uids[start:stop])

    def _claimed(self, uid: int) -> bool:
        return any(low <= uid < high for low, high in self.recent_claims)

    def only_own_since(self, watermark: int, highest: int) -> bool:
        """Whether every mod-sequence in ``(watermark, highest]`` is this session's own
        change (its STOREs, EXPUNGEs, APPENDs), which it has answered already: then no
        other session changed anything there, and re-reading the range finds nothing."""
        own = self.own_modseqs
        return highest - watermark <= len(own) and all(
            m in own for m in range(watermark + 1, highest + 1))

    def forget_own(self) -> None:
        """Drop own mod-sequences the flag watermark has passed."""
        self.own_modseqs = {m for m in self.own_modseqs if m > self.flags_modseq}
