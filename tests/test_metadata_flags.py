"""Unit tests of the flag bitmask and keyword list."""

from __future__ import annotations

import pytest

from metadata.flags import ANSWERED, DELETED, DRAFT, FLAGGED, SEEN, Flags, InvalidFlag, system_bit


def test_from_names_folds_system_flags_and_keeps_keywords() -> None:
    """System flags in any case become bits; keywords keep spelling and first order."""
    flags = Flags.from_names(["\\seen", "$Forwarded", "\\DELETED", "Junk", "$Forwarded"])
    assert flags == Flags(SEEN | DELETED, ("$Forwarded", "Junk"))
    assert flags.names() == ("\\Seen", "\\Deleted", "$Forwarded", "Junk")


def test_bits_are_the_documented_ones() -> None:
    """The bit values are part of the schema (partial indexes use 1 and 8)."""
    assert (SEEN, ANSWERED, FLAGGED, DELETED, DRAFT) == (1, 2, 4, 8, 16)
    assert system_bit("\\Flagged") == FLAGGED and system_bit("Flagged") is None


@pytest.mark.parametrize("name", ["\\Recent", "\\Bogus", "has space", "a(b", "", "x]"])
def test_unstorable_names_are_refused(name: str) -> None:
    """\\Recent, unknown backslash flags and non-atom keywords cannot be stored."""
    with pytest.raises(InvalidFlag):
        Flags.from_names([name])


def test_membership() -> None:
    """``in`` answers for system flags in any case and for exact keywords."""
    flags = Flags(SEEN, ("Work",))
    assert "\\SEEN" in flags and "Work" in flags
    assert "\\Answered" not in flags and "work" not in flags


def test_constructor_validates() -> None:
    """Out-of-range bits and repeated keywords are refused."""
    with pytest.raises(InvalidFlag):
        Flags(64)
    with pytest.raises(InvalidFlag):
        Flags(0, ("a", "a"))
