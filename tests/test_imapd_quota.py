"""Tests for imapd.quota: objmail's per-user quota as RFC 9208 resources."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from imapd.quota import ROOT, deleted_storage, resources
from metadata.records import User

ANN = User(1, "ann", 0, 0, 0, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))


def test_the_one_root_is_the_empty_name() -> None:
    """Every mailbox of a user is under the quota root "" (RFC 9208 3: a server may name
    roots as it likes)."""
    assert ROOT == ""


@pytest.mark.parametrize(("quota_bytes", "used", "quota_messages", "count", "expected"), [
    (0, 5000, 0, 7, ()),
    (512 * 1024, 10 * 1024, 0, 3, (("STORAGE", 10, 512),)),
    (512 * 1024, 10 * 1024 + 1, 0, 3, (("STORAGE", 11, 512),)),
    (1000, 0, 0, 0, (("STORAGE", 0, 1),)),
    (0, 100, 1000, 42, (("MESSAGE", 42, 1000),)),
    (111 * 1024, 54 * 1024, 1000, 42, (("STORAGE", 54, 111), ("MESSAGE", 42, 1000))),
])
def test_resources_report_limited_usage_in_kib_and_messages(
        quota_bytes: int, used: int, quota_messages: int, count: int,
        expected: tuple[tuple[str, int, int], ...]) -> None:
    """STORAGE is in KiB, usage rounded up and the limit down (never less than 1);
    MESSAGE counts messages; an unlimited resource (0) is not reported."""
    user = dataclasses.replace(ANN, quota_bytes=quota_bytes, used_bytes=used,
                               quota_messages=quota_messages, message_count=count)
    assert resources(user) == expected


@pytest.mark.parametrize(("size", "kib"), [(0, 0), (1023, 0), (1024, 1), (5000, 4)])
def test_deleted_storage_is_whole_kib_surely_freed(size: int, kib: int) -> None:
    """DELETED-STORAGE rounds down: the KiB an EXPUNGE certainly gives back."""
    assert deleted_storage(size) == kib
