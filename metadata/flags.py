"""Message flags as stored: a bitmask for the system flags, a list for keywords.

The five permanent system flags of RFC 3501 are bits of one ``integer`` column, so the
common tests (unseen, deleted, flagged) are cheap bit operations that partial indexes can
serve.  ``\\Recent`` is not stored per message: it is derived from the mailbox's recent
marker (see :meth:`metadata.messages.Messages.claim_recent`).  Keywords are kept as written
(compared exactly) in a ``text[]`` column.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from metadata.errors import MetadataError
from runtime import errors as kinds

__all__ = [
    "ANSWERED",
    "DELETED",
    "DRAFT",
    "FLAGGED",
    "NO_FLAGS",
    "SEEN",
    "SYSTEM_FLAGS",
    "Flags",
    "InvalidFlag",
    "system_bit",
]

SEEN = 1
ANSWERED = 2
FLAGGED = 4
DELETED = 8
DRAFT = 16

#: Canonical name of each stored system flag, by bit.
SYSTEM_FLAGS: dict[int, str] = {
    SEEN: "\\Seen",
    ANSWERED: "\\Answered",
    FLAGGED: "\\Flagged",
    DELETED: "\\Deleted",
    DRAFT: "\\Draft",
}
_BY_NAME = {name.lower(): bit for bit, name in SYSTEM_FLAGS.items()}
ALL_SYSTEM_BITS = sum(SYSTEM_FLAGS)

#: A keyword is an IMAP atom: no space, control, ``(){%*"\]`` and no leading backslash.
_KEYWORD = re.compile(r"[^\x00-\x20\x7f(){%*\"\\\]]{1,255}\Z")


class InvalidFlag(MetadataError, kinds.InvalidInput):
    """A flag name is neither a storable system flag nor a valid keyword."""


def system_bit(name: str) -> int | None:
    """The bit of a system flag name (any case), or None when ``name`` is not one."""
    return _BY_NAME.get(name.lower())


@dataclass(frozen=True)
class Flags:
    """A message's flags: ``system`` bits and ``keywords`` in first-set order, no repeats."""

    system: int = 0
    keywords: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.system <= ALL_SYSTEM_BITS:
            raise InvalidFlag(f"system flag bits out of range: {self.system}")
        if len(set(self.keywords)) != len(self.keywords):
            raise InvalidFlag(f"repeated keyword in {self.keywords!r}")
        for keyword in self.keywords:
            if not _KEYWORD.match(keyword):
                raise InvalidFlag(f"not a valid keyword: {keyword[:40]!r}")

    @classmethod
    def from_names(cls, names: Iterable[str]) -> Flags:
        """Parse flag names such as ``\\Seen`` or ``$Forwarded``; repeats collapse.

        :raises InvalidFlag: on ``\\Recent`` (not storable), an unknown ``\\`` flag or a
            malformed keyword.
        """
        system = 0
        keywords: dict[str, None] = {}
        for name in names:
            bit = system_bit(name)
            if bit is not None:
                system |= bit
            elif name.startswith("\\"):
                raise InvalidFlag(f"{name[:40]} cannot be stored")
            else:
                keywords.setdefault(name, None)
        return cls(system, tuple(keywords))

    def names(self) -> tuple[str, ...]:
        """Every flag name, system flags first in bit order."""
        return tuple(name for bit, name in SYSTEM_FLAGS.items() if self.system & bit) \
            + self.keywords

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        bit = system_bit(name)
        return bool(self.system & bit) if bit is not None else name in self.keywords


#: No flag set (a default argument).
NO_FLAGS = Flags()
