"""Tests for imapd.sequence: parsing, resolving and rendering sequence sets."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imapd.sequence import MAX_NUMBER, STAR, SequenceSet, SequenceSetError


@pytest.mark.parametrize(
    ("text", "ranges"),
    [
        ("1", ((1, 1),)),
        ("1:*", ((1, STAR),)),
        ("1:3,5,7:9", ((1, 3), (5, 5), (7, 9))),
        ("*", ((STAR, STAR),)),
        ("*:4", ((STAR, 4),)),
        ("9:7", ((9, 7),)),
        ("4294967295", ((MAX_NUMBER, MAX_NUMBER),)),
        ("1:4294967295", ((1, MAX_NUMBER),)),
    ],
)
def test_parse_and_render(text, ranges):
    """A valid sequence set parses to its ranges as written and renders back unchanged."""
    parsed = SequenceSet.parse(text)
    assert parsed.ranges == ranges
    assert str(parsed) == text
    assert SequenceSet.parse(text.encode("ascii")) == parsed


def test_dollar_is_the_saved_result():
    """'$' parses to the saved-result set, which renders as '$' and refuses member questions."""
    saved = SequenceSet.parse("$")
    assert saved.saved and saved.ranges == ()
    assert str(saved) == "$"
    with pytest.raises(ValueError):
        saved.resolve(10)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0",
        "0:5",
        "1:",
        ":1",
        "1,,2",
        ",1",
        "1,",
        "a",
        "1:2:3",
        "4294967296",
        "01",
        "1, 2",
        "$,1",
        "1:$",
        "**",
        "1:*:2",
        "5\u0663",
    ],
)
def test_invalid_sets_are_rejected(text):
    """Malformed items, zero, leading zeros and numbers above 2^32-1 raise SequenceSetError."""
    with pytest.raises(SequenceSetError):
        SequenceSet.parse(text)


def test_eight_bit_bytes_are_rejected():
    """Non-ASCII bytes raise SequenceSetError rather than UnicodeDecodeError."""
    with pytest.raises(SequenceSetError):
        SequenceSet.parse(b"1:\xff")


@pytest.mark.parametrize(
    ("text", "largest", "resolved"),
    [
        ("1:*", 5, ((1, 5),)),
        ("*", 5, ((5, 5),)),
        ("*:4", 9, ((4, 9),)),
        ("559:*", 100, ((100, 100),)),  # RFC 3501 6.4.8: n:* includes the last message
        ("2,1,3", 10, ((1, 3),)),
        ("1:3,2:6,9", 10, ((1, 6), (9, 9))),
        ("7:9", 5, ()),
        ("3:9", 5, ((3, 5),)),
        ("1:*", 0, ()),
        ("4,5", 5, ((4, 5),)),
    ],
)
def test_resolve(text, largest, resolved):
    """resolve() replaces '*' by the largest number, orders, merges and clamps to 1..largest."""
    assert SequenceSet.parse(text).resolve(largest) == resolved


def test_values_are_lazy_ascending_and_unique():
    """values() yields members in order without repeats and does not build 1:2^32 in memory."""
    huge = SequenceSet.parse("1:4294967295")
    assert list(itertools.islice(huge.values(MAX_NUMBER), 3)) == [1, 2, 3]
    assert list(SequenceSet.parse("5,1:3,2").values(10)) == [1, 2, 3, 5]
    assert huge.count(MAX_NUMBER) == MAX_NUMBER


def test_contains_needs_largest_only_with_star():
    """Membership works with 'in' for explicit sets and needs contains(n, largest) with '*'."""
    explicit = SequenceSet.parse("1:3,7")
    assert 2 in explicit and 7 in explicit and 5 not in explicit and "x" not in explicit
    starred = SequenceSet.parse("4:*")
    assert starred.contains(6, 6) and not starred.contains(3, 6)
    assert starred.contains(6, 6) and not starred.contains(7, 6)
    with pytest.raises(ValueError):
        _ = 5 in starred


def test_from_values_builds_compact_ascending_ranges():
    """from_values() merges runs, for COPYUID/APPENDUID, and refuses an empty input."""
    assert str(SequenceSet.from_values([5, 1, 2, 3, 9, 10, 3])) == "1:3,5,9:10"
    assert str(SequenceSet.single(42)) == "42"
    with pytest.raises(ValueError):
        SequenceSet.from_values([])
    with pytest.raises(ValueError):
        SequenceSet.from_values([0, 1])


def test_normalized():
    """normalized() merges and sorts; with '*' it needs the largest number in use."""
    assert str(SequenceSet.parse("5,1:3,2,9:8").normalized()) == "1:3,5,8:9"
    assert str(SequenceSet.parse("5,3:*").normalized(7)) == "3:7"
    with pytest.raises(ValueError):
        SequenceSet.parse("3:*").normalized()
    with pytest.raises(ValueError):
        SequenceSet.parse("9").normalized(5)


def test_highest_explicit_and_uses_star():
    """highest_explicit() ignores '*', so a session can check sequence numbers against EXISTS."""
    assert SequenceSet.parse("1:*,12").highest_explicit() == 12
    assert SequenceSet.parse("*").highest_explicit() == 0
    assert SequenceSet.parse("1:*").uses_star
    assert not SequenceSet.parse("1:5").uses_star


def test_constructor_validates():
    """Building a set by hand with out-of-range numbers or no ranges is a bug and raises."""
    with pytest.raises(ValueError):
        SequenceSet(())
    with pytest.raises(ValueError):
        SequenceSet(((1, MAX_NUMBER + 1),))
    with pytest.raises(ValueError):
        SequenceSet(((1, 2),), saved=True)


def test_repr_shows_the_imap_form():
    """The repr shows the set as IMAP text, which is what a log reader wants."""
    assert repr(SequenceSet.parse("1:*")) == "SequenceSet('1:*')"


_numbers = st.integers(min_value=0, max_value=60)  # 0 stands for '*'
_ranges = st.lists(st.tuples(_numbers, _numbers), min_size=1, max_size=8)


@settings(max_examples=200)
@given(ranges=_ranges, largest=st.integers(min_value=0, max_value=70))
def test_render_parse_round_trip_and_members(ranges, largest):
    """Any set survives str/parse, and values() equals a brute-force reading of RFC 3501."""
    seq = SequenceSet(tuple(ranges))
    assert SequenceSet.parse(str(seq)) == seq
    expected: set[int] = set()
    if largest:
        for low, high in ranges:
            low = low or largest
            high = high or largest
            expected.update(n for n in range(min(low, high), max(low, high) + 1) if n <= largest)
    assert list(seq.values(largest)) == sorted(expected)
    assert seq.count(largest) == len(expected)
    for probe in range(0, 72, 7):
        assert seq.contains(probe, largest) == (probe in expected)
