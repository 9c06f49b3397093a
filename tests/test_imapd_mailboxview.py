"""The selected session's sequence-number/UID map."""

from __future__ import annotations

import pytest

from imapd.mailboxview import InvalidSequence, MailboxView
from imapd.sequence import SequenceSet


def view(uids: list[int]) -> MailboxView:
    return MailboxView(1, "INBOX", 7, uids, uidnext=(max(uids) + 1 if uids else 1),
                       highestmodseq=5, read_only=False)


def test_sequence_sets_resolve_against_the_announced_messages() -> None:
    """Sequence numbers map to UIDs by position; '*' is the last; a number beyond the
    count is an error (answered BAD), except in an empty mailbox."""
    v = view([3, 5, 9, 12])
    assert v.resolve(SequenceSet.parse("2:3,*"), uid=False) == [(2, 5), (3, 9), (4, 12)]
    with pytest.raises(InvalidSequence):
        v.resolve(SequenceSet.parse("5"), uid=False)
    assert view([]).resolve(SequenceSet.parse("1:*"), uid=False) == []


def test_uid_sets_keep_existing_uids() -> None:
    """A UID set names only UIDs that exist; n:* includes the last UID even when n is
    above it (RFC 3501 6.4.8)."""
    v = view([3, 5, 9, 12])
    assert v.resolve(SequenceSet.parse("4:10"), uid=True) == [(2, 5), (3, 9)]
    assert v.resolve(SequenceSet.parse("100:*"), uid=True) == [(4, 12)]
    assert view([]).resolve(SequenceSet.parse("1:*"), uid=True) == []
    assert v.seq_of(9) == 3 and v.seq_of(4) is None and v.uid_of(1) == 3


def test_remove_reports_each_expunge_as_the_client_counts() -> None:
    """Removing UIDs 5 and 12 from [3 5 9 12] reports 2 then 3: after the first EXPUNGE
    the client's message 4 became 3."""
    v = view([3, 5, 9, 12])
    v.recent = {5, 9}
    assert v.remove([12, 5, 77]) == [2, 3]
    assert v.uids == [3, 9] and v.recent == {9}
    assert v.remove([5]) == []


def test_add_and_recent_claims() -> None:
    """New UIDs are appended; those inside a claimed \\Recent range become recent, also
    when the claim came before they were announced."""
    v = view([1, 2])
    v.claim_recent(2, 10)
    assert v.recent == {2}
    assert v.add([3, 11, 1]) == 2
    assert v.uids == [1, 2, 3, 11] and v.recent == {2, 3}
    assert v.max_uid == 11 and v.exists == 4


def test_successive_recent_claims_merge() -> None:
    """Claims that touch or overlap the last one extend it (a long session's APPENDs
    keep one range); a disjoint claim is kept apart; what is recent does not change."""
    v = view([])
    v.claim_recent(5, 7)
    v.claim_recent(7, 8)
    v.claim_recent(6, 10)
    assert v.recent_claims == [(5, 10)]
    v.claim_recent(12, 13)
    assert v.recent_claims == [(5, 10), (12, 13)]
    assert v.add(range(1, 15)) == 14
    assert v.recent == {5, 6, 7, 8, 9, 12}

def test_forget_own_keeps_only_unreported_modseqs() -> None:
    """Own mod-sequences at or below the flags watermark are dropped."""
    v = view([1])
    v.own_modseqs = {4, 6, 9}
    v.flags_modseq = 6
    v.forget_own()
    assert v.own_modseqs == {9}


def test_uid_sets_are_compact_ranges() -> None:
    """Consecutive sequence numbers become one UID range spanning the gaps left by
    expunged messages; a break in the sequence numbers starts a new range."""
    v = view([3, 5, 9, 12, 40])
    pairs = v.resolve(SequenceSet.parse("1:3,5"), uid=False)
    assert v.uid_set(pairs).ranges == ((3, 9), (40, 40))


def test_only_own_since_needs_every_modseq_of_the_range() -> None:
    """A range of mod-sequences is skippable only when each one is the session's own:
    one foreign change (or a gap) in it means it must be read."""
    v = view([3, 5])
    v.own_modseqs = {6, 7, 9}
    assert v.only_own_since(5, 7)
    assert v.only_own_since(5, 5)  # an empty range
    assert not v.only_own_since(5, 8)  # 8 is someone else's
    assert not v.only_own_since(6, 9)
    assert v.only_own_since(8, 9)
