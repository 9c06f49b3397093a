"""IMAP sequence sets (RFC 3501 ``sequence-set``, RFC 5182 ``$``).

A set such as ``1:*,5,7:9`` names message sequence numbers or UIDs. ``*`` means "the largest
number in use", which only the session knows, so every question about members takes that
``largest`` value. Following RFC 3501 6.4.8, ``n:*`` always includes the largest number even
when ``n`` is above it (``UID FETCH 559:*`` returns the last message).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from imapd.errors import ImapdError
from metadata.uidset import merge_ranges
from runtime import errors as kinds

__all__ = ["MAX_NUMBER", "STAR", "SequenceSet", "SequenceSetError"]

STAR: Final = 0
"""Stands for ``*`` in :attr:`SequenceSet.ranges` (0 is never a valid number)."""

MAX_NUMBER: Final = 0xFFFFFFFF
"""Largest ``nz-number`` (sequence numbers and UIDs are unsigned 32-bit)."""

_SYNTAX = re.compile(r"(?:\*|[1-9][0-9]*)(?::(?:\*|[1-9][0-9]*))?\Z")


class SequenceSetError(ImapdError, kinds.InvalidInput):
    """Text is not a valid sequence set."""


def _number(text: str) -> int:
    if text == "*":
        return STAR
    value = int(text)
    if value > MAX_NUMBER:
        raise SequenceSetError(f"number {text} is above {MAX_NUMBER}")
    return value


@dataclass(frozen=True, repr=False)
class SequenceSet:
    """An immutable sequence set.

    :ivar ranges: ``(low, high)`` pairs as written by the client (``low`` may exceed
        ``high``); :data:`STAR` stands for ``*``. Empty only for :attr:`saved`.
    :ivar saved: the set is ``$``, the result saved by ``SEARCH RETURN (SAVE)``; the
        session substitutes it before asking about members.
    """

    ranges: tuple[tuple[int, int], ...]
    saved: bool = False

    def __post_init__(self) -> None:
        if self.saved:
            if self.ranges:
                raise ValueError("'$' cannot be combined with ranges")
            return
        if not self.ranges:
            raise ValueError("a sequence set needs at least one range")
        for low, high in self.ranges:
            for value in (low, high):
                if not 0 <= value <= MAX_NUMBER:
                    raise ValueError(f"sequence number {value} is out of range")

    @classmethod
    def parse(cls, text: str | bytes) -> SequenceSet:
        """Parse ``sequence-set`` syntax such as ``1:3,5,7:*`` or ``$``.

        :raises SequenceSetError: on any syntax error, a 0, or a number above 2^32-1.
        """
        if isinstance(text, bytes):
            try:
                text = text.decode("ascii")
            except UnicodeDecodeError:
                raise SequenceSetError("sequence set contains 8-bit octets") from None
        if text == "$":
            return cls((), saved=True)
        ranges: list[tuple[int, int]] = []
        for item in text.split(","):
            if _SYNTAX.match(item) is None:
                raise SequenceSetError(f"invalid sequence set item {item[:40]!r}")
            low, _, high = item.partition(":")
            first = _number(low)
            ranges.append((first, _number(high) if high else first))
        return cls(tuple(ranges))

    @classmethod
    def single(cls, value: int) -> SequenceSet:
        """The set holding just ``value``."""
        return cls(((value, value),))

    @classmethod
    def from_values(cls, values: Iterable[int]) -> SequenceSet:
        """The compact set of ``values`` in ascending order (for APPENDUID and COPYUID).

        :raises ValueError: when ``values`` is empty or holds a number out of range.
        """
        ordered = sorted(set(values))
        if not ordered:
            raise ValueError("cannot build a sequence set from no values")
        if ordered[0] < 1:
            raise ValueError(f"sequence number {ordered[0]} is out of range")
        return cls(merge_ranges((value, value) for value in ordered))

    @property
    def uses_star(self) -> bool:
        """Whether the set mentions ``*`` and so depends on the mailbox size."""
        return any(STAR in pair for pair in self.ranges)

    def highest_explicit(self) -> int:
        """The largest number written out (``*`` ignored, 0 if none).

        A session answers BAD when this exceeds the message count of a sequence-number set.
        """
        return max((value for pair in self.ranges for value in pair), default=0)

    def resolve(self, largest: int) -> tuple[tuple[int, int], ...]:
        """Sorted, merged, inclusive ranges of the members that lie in ``1..largest``.

        ``*`` is ``largest``; a range written high-to-low is the same as low-to-high.
        """
        if self.saved:
            raise ValueError("'$' must be substituted by the session before use")
        if largest <= 0:
            return ()
        clamped: list[tuple[int, int]] = []
        for low, high in self.ranges:
            low = largest if low == STAR else low
            high = largest if high == STAR else high
            if low > high:
                low, high = high, low
            if low > largest:
                continue
            clamped.append((low, min(high, largest)))
        return merge_ranges(clamped)

    def values(self, largest: int) -> Iterator[int]:
        """Members in ``1..largest``, ascending and without repeats; lazy, so ``1:*`` is cheap."""
        for low, high in self.resolve(largest):
            yield from range(low, high + 1)

    def count(self, largest: int) -> int:
        """How many members lie in ``1..largest``."""
        return sum(high - low + 1 for low, high in self.resolve(largest))

    def contains(self, value: int, largest: int) -> bool:
        """Whether ``value`` is a member, given the largest number in use."""
        ranges = self.resolve(largest)
        index = bisect.bisect_right(ranges, (value, MAX_NUMBER + 1)) - 1
        return index >= 0 and ranges[index][0] <= value <= ranges[index][1]

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int):
            return False
        if self.saved or self.uses_star:
            raise ValueError("membership of a set with '*' or '$' needs contains(value, largest)")
        return self.contains(value, MAX_NUMBER)

    def normalized(self, largest: int | None = None) -> SequenceSet:
        """The same members as sorted, merged ranges.

        :param largest: resolves ``*`` and drops members above it; required when the set
            uses ``*``. Without it, members are kept as written.
        :raises ValueError: when the set is ``$``, or uses ``*`` and ``largest`` is missing,
            or nothing remains.
        """
        if self.saved:
            raise ValueError("'$' must be substituted by the session before use")
        if largest is None:
            if self.uses_star:
                raise ValueError("normalising a set with '*' needs the largest number")
            return SequenceSet(merge_ranges((min(p), max(p)) for p in self.ranges))
        resolved = self.resolve(largest)
        if not resolved:
            raise ValueError("no member of the set is in use")
        return SequenceSet(resolved)

    def __repr__(self) -> str:
        return f"SequenceSet({str(self)!r})"

    def __str__(self) -> str:
        if self.saved:
            return "$"
        return ",".join(_render_range(low, high) for low, high in self.ranges)


def _render_value(value: int) -> str:
    return "*" if value == STAR else str(value)


def _render_range(low: int, high: int) -> str:
    if low == high:
        return _render_value(low)
    return f"{_render_value(low)}:{_render_value(high)}"
