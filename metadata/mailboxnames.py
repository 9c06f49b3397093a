"""Mailbox names: validation, the INBOX rule, the ``/`` hierarchy and LIST patterns.

Names are stored whole (``Archive/2024/Q1``), as Unicode text; the IMAP layer translates
modified UTF-7 at its boundary.  The hierarchy is implied by the delimiter rather than kept
as parent ids, so RENAME of a subtree is one ``UPDATE`` of a prefix and LIST needs no
recursive query.  ``INBOX`` is case-insensitive (RFC 3501 5.1): any spelling of the first
component is stored as ``INBOX``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = [
    "DELIMITER",
    "INBOX",
    "MAX_DEPTH",
    "MAX_NAME_CHARS",
    "ancestors",
    "compile_pattern",
    "is_inferior",
    "normalize",
    "renamed",
]

DELIMITER = "/"
INBOX = "INBOX"
#: Longest name accepted, in characters.
MAX_NAME_CHARS = 1000
#: Deepest hierarchy accepted (levels).
MAX_DEPTH = 64

# Wildcards would make the name unmatchable by its own LIST pattern; controls break clients.
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f*%]")


def normalize(name: str) -> str:
    """``name`` as stored: validated, with its first component ``INBOX`` upper-cased.

    :raises ValueError: empty, too long or too deep, an empty level (``a//b``, a leading or
        trailing ``/``), a control character, ``*`` or ``%``.
    """
    if not name:
        raise ValueError("mailbox name is empty")
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"mailbox name longer than {MAX_NAME_CHARS} characters")
    match = _FORBIDDEN.search(name)
    if match is not None:
        raise ValueError(f"mailbox name holds a forbidden character {match.group()!r}")
    levels = name.split(DELIMITER)
    if any(level == "" for level in levels):
        raise ValueError(f"mailbox name {name[:80]!r} has an empty level")
    if len(levels) > MAX_DEPTH:
        raise ValueError(f"mailbox name is deeper than {MAX_DEPTH} levels")
    if levels[0].upper() == INBOX:
        levels[0] = INBOX
    return DELIMITER.join(levels)


def ancestors(name: str) -> list[str]:
    """Every superior name of ``name``, outermost first (``a/b/c`` → ``a``, ``a/b``)."""
    levels = name.split(DELIMITER)
    return [DELIMITER.join(levels[:i]) for i in range(1, len(levels))]


def is_inferior(name: str, of: str) -> bool:
    """Whether ``name`` lies below ``of`` in the hierarchy (not ``of`` itself)."""
    return name.startswith(of + DELIMITER)


def renamed(name: str, old: str, new: str) -> str:
    """``name`` after its ancestor-or-self ``old`` becomes ``new``."""
    if name == old:
        return new
    if not is_inferior(name, old):
        raise ValueError(f"{name!r} is not {old!r} or below it")
    return new + name[len(old):]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for char in pattern:
        if char == "*":
            parts.append(".*")
        elif char == "%":
            parts.append(f"[^{re.escape(DELIMITER)}]*")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts) + r"\Z", re.DOTALL)


def compile_pattern(pattern: str) -> Callable[[str], bool]:
    """A matcher for a LIST/LSUB pattern (RFC 3501 6.3.8): ``*`` matches anything, ``%``
    anything but the delimiter; the rest matches exactly, except that the ``INBOX`` level
    matches in any case."""
    plain = _pattern_regex(pattern)
    canon = None
    head = pattern[: len(INBOX)]
    if head.upper() == INBOX and head != INBOX:
        canon = _pattern_regex(INBOX + pattern[len(INBOX):])

    def matches(name: str) -> bool:
        if plain.match(name):
            return True
        rooted = name == INBOX or name.startswith(INBOX + DELIMITER)
        return bool(canon is not None and rooted and canon.match(name))

    return matches
