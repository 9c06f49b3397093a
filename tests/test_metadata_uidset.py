"""Unit tests of UID sets as the store takes them."""

from __future__ import annotations

import pytest

from metadata.uidset import MAX_UID, UidSet, merge_ranges


def test_of_sorts_merges_and_turns_ranges_around() -> None:
    """Overlapping, adjacent and reversed ranges collapse to sorted disjoint ranges."""
    assert UidSet.of([(9, 7), (1, 3), (4, 4), (10, 12), (20, 20)]).ranges == (
        (1, 4), (7, 12), (20, 20))


def test_from_uids_and_iteration() -> None:
    """A set built from UIDs iterates them back in order, once each."""
    uids = UidSet.from_uids([5, 1, 2, 3, 5, 9])
    assert uids.ranges == ((1, 3), (5, 5), (9, 9))
    assert list(uids) == [1, 2, 3, 5, 9]
    assert 2 in uids and 4 not in uids
    assert str(uids) == "1:3,5,9"


def test_arrays_feed_the_sql() -> None:
    """arrays() gives the lows and highs as two lists."""
    assert UidSet.of([(1, 3), (8, 9)]).arrays() == ([1, 8], [3, 9])


def test_bounds() -> None:
    """UIDs are 1..2^32-1; the empty set is falsy; from_ past the end is empty."""
    assert UidSet.all().ranges == ((1, MAX_UID),)
    assert not UidSet(())
    assert not UidSet.from_(MAX_UID + 1)
    with pytest.raises(ValueError):
        UidSet(((0, 3),))
    with pytest.raises(ValueError):
        UidSet(((1, MAX_UID + 1),))
    with pytest.raises(ValueError):
        UidSet(((5, 6), (1, 2)))


def test_merge_ranges_joins_overlapping_and_touching_ranges() -> None:
    """merge_ranges sorts ranges and joins those that overlap, touch or contain each
    other, leaving a gap of one number as two ranges."""
    assert merge_ranges([(10, 12), (1, 3), (4, 6), (2, 2), (8, 8)]) == (
        (1, 6), (8, 8), (10, 12))
    assert merge_ranges([(1, 9), (3, 4)]) == ((1, 9),)
    assert merge_ranges([]) == ()
