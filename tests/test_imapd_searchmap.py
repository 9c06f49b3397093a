"""SEARCH AST to store criteria: what only the session knows is resolved to UIDs."""

from __future__ import annotations

import datetime as dt

import pytest

from imapd import searchkeys
from imapd.mailboxview import InvalidSequence, MailboxView
from imapd.searchmap import to_criterion
from metadata import search as s
from metadata.flags import DELETED, SEEN
from metadata.uidset import UidSet


def view() -> MailboxView:
    v = MailboxView(1, "INBOX", 7, [2, 4, 6, 8], uidnext=9, highestmodseq=3, read_only=False)
    v.recent = {6, 8}
    return v


@pytest.mark.parametrize(("text", "criterion"), [
    ("ALL", s.Everything()),
    ("SEEN", s.HasFlag(SEEN)),
    ("UNDELETED", s.Not(s.HasFlag(DELETED))),
    ("KEYWORD $Work", s.HasKeyword("$Work")),
    ("RECENT", s.UidIn(UidSet.of([(6, 6), (8, 8)]))),
    ("NEW", s.AllOf((s.UidIn(UidSet.of([(6, 6), (8, 8)])), s.Not(s.HasFlag(SEEN))))),
    ("FROM alice", s.HeaderContains("from", "alice")),
    ('HEADER X-Tag "b c"', s.HeaderContains("x-tag", "b c")),
    ("BODY invoice", s.BodyContains("invoice")),
    ("TEXT invoice", s.TextContains("invoice")),
    ("SENTSINCE 1-Feb-2024", s.DateMatches("sent", "since", dt.date(2024, 2, 1))),
    ("BEFORE 1-Feb-2024", s.DateMatches("internal", "before", dt.date(2024, 2, 1))),
    ("LARGER 100", s.SizeMatches("larger", 100)),
    ("2:3", s.UidIn(UidSet.of([(4, 6)]))),
    ("*", s.UidIn(UidSet.of([(8, 8)]))),
    ("UID 3:7", s.UidIn(UidSet.of([(4, 6)]))),
    ("UID 9:*", s.UidIn(UidSet.of([(8, 8)]))),
    ("MODSEQ 17", s.ModSeqAtLeast(17)),
    ("OR SEEN NOT SEEN", s.AnyOf((s.HasFlag(SEEN), s.Not(s.HasFlag(SEEN))))),
])
def test_mapping(text: str, criterion: s.Criterion) -> None:
    """Each key maps to its store criterion; sequence numbers, '*' and \\Recent become
    UID sets of the session's view."""
    assert to_criterion(searchkeys.parse(text.encode()), view()) == criterion


def test_sequence_numbers_beyond_the_count_are_an_error() -> None:
    """SEARCH 5 in a four-message view is InvalidSequence (the session answers BAD)."""
    with pytest.raises(InvalidSequence):
        to_criterion(searchkeys.parse(b"5"), view())
