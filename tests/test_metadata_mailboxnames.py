"""Unit tests of mailbox name validation, hierarchy and LIST patterns."""

from __future__ import annotations

import pytest

from metadata.mailboxnames import (
    MAX_DEPTH,
    MAX_NAME_CHARS,
    ancestors,
    compile_pattern,
    is_inferior,
    normalize,
    renamed,
)


@pytest.mark.parametrize(("name", "stored"), [
    ("INBOX", "INBOX"),
    ("inbox", "INBOX"),
    ("InBoX/Sub", "INBOX/Sub"),
    ("Inboxes", "Inboxes"),
    ("Archive/2024", "Archive/2024"),
    ("Ünïcode/日本", "Ünïcode/日本"),
])
def test_normalize(name: str, stored: str) -> None:
    """INBOX is case-insensitive as a first level only; other names are kept as given."""
    assert normalize(name) == stored


@pytest.mark.parametrize("name", ["", "/a", "a/", "a//b", "a*b", "a%", "tab\there", "x\x7f",
                                  "a" * (MAX_NAME_CHARS + 1), "/".join("a" * (MAX_DEPTH + 1))])
def test_normalize_refuses(name: str) -> None:
    """Empty levels, wildcards, controls and oversize names are refused."""
    with pytest.raises(ValueError):
        normalize(name)


def test_hierarchy_helpers() -> None:
    """Ancestors, inferiority and renaming follow the / delimiter only."""
    assert ancestors("a/b/c") == ["a", "a/b"]
    assert ancestors("a") == []
    assert is_inferior("a/b", "a") and not is_inferior("ab", "a") and not is_inferior("a", "a")
    assert renamed("a/b/c", "a/b", "x") == "x/c"
    assert renamed("a/b", "a/b", "x/y") == "x/y"
    with pytest.raises(ValueError):
        renamed("ab", "a", "x")


NAMES = ["INBOX", "INBOX/Lists", "Archive", "Archive/2023", "Archive/2023/Q1", "Sent",
         "Spam"]


@pytest.mark.parametrize(("pattern", "expected"), [
    ("*", NAMES),
    ("%", ["INBOX", "Archive", "Sent", "Spam"]),
    ("Archive/%", ["Archive/2023"]),
    ("Archive/*", ["Archive/2023", "Archive/2023/Q1"]),
    ("S*", ["Sent", "Spam"]),
    ("inbox", ["INBOX"]),
    ("inbox/*", ["INBOX/Lists"]),
    ("%/%", ["INBOX/Lists", "Archive/2023"]),
    ("Archive", ["Archive"]),
    ("archive", []),
])
def test_patterns(pattern: str, expected: list[str]) -> None:
    """* crosses levels, % does not, INBOX matches in any case, other names exactly."""
    matches = compile_pattern(pattern)
    assert [n for n in NAMES if matches(n)] == expected


def test_pattern_special_characters_are_literal() -> None:
    """Regex metacharacters in patterns match themselves."""
    assert compile_pattern("a.b+(c)")("a.b+(c)")
    assert not compile_pattern("a.b")("axb")
