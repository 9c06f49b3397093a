"""Sets of UIDs as the store takes them: sorted, disjoint, inclusive ranges.

The IMAP layer resolves ``*`` and ``$`` against its session view first (see
``imapd.sequence.SequenceSet.resolve``) and hands the store concrete ranges; the store turns
them into two arrays joined against the ``(user_id, mailbox_id, uid)`` index, one range scan
per range, whatever the number of ranges.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

__all__ = ["MAX_UID", "UidSet", "merge_ranges"]

#: UIDs are unsigned 32-bit non-zero numbers (RFC 3501 2.3.1.1).
MAX_UID = 0xFFFFFFFF


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Inclusive ``(low, high)`` ranges (each with ``low <= high``) sorted, with ranges
    that overlap or touch joined into one; IMAP sequence sets are merged the same way."""
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            if high > merged[-1][1]:
                merged[-1] = (merged[-1][0], high)
        else:
            merged.append((low, high))
    return tuple(merged)


@dataclass(frozen=True)
class UidSet:
    """Sorted, merged, inclusive ``(low, high)`` ranges of UIDs; may be empty."""

    ranges: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        for low, high in self.ranges:
            if not 1 <= low <= high <= MAX_UID:
                raise ValueError(f"invalid UID range {low}:{high}")
        if merge_ranges(self.ranges) != self.ranges:
            raise ValueError("UID ranges must be sorted and merged (use UidSet.of)")

    @classmethod
    def of(cls, ranges: Iterable[tuple[int, int]]) -> UidSet:
        """Sort and merge ``ranges`` (a pair written high-to-low is turned around)."""
        return cls(merge_ranges((min(lo, hi), max(lo, hi)) for lo, hi in ranges))

    @classmethod
    def from_uids(cls, uids: Iterable[int]) -> UidSet:
        return cls.of((uid, uid) for uid in uids)

    @classmethod
    def all(cls) -> UidSet:
        """Every possible UID."""
        return cls(((1, MAX_UID),))

    @classmethod
    def from_(cls, first: int) -> UidSet:
        """UIDs from ``first`` on (``first:*`` without the clamp IMAP applies)."""
        return cls(((first, MAX_UID),)) if first <= MAX_UID else cls(())

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, int) and any(lo <= uid <= hi for lo, hi in self.ranges)

    def __iter__(self) -> Iterator[int]:
        for low, high in self.ranges:
            yield from range(low, high + 1)

    def arrays(self) -> tuple[list[int], list[int]]:
        """The lows and the highs, as the two ``bigint[]`` parameters the SQL takes."""
        return [lo for lo, _ in self.ranges], [hi for _, hi in self.ranges]

    def __str__(self) -> str:
        return ",".join(str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in self.ranges)
