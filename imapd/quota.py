"""IMAP QUOTA (RFC 9208) over objmail's per-user quota.

Every mailbox of a user falls under one quota root, named ``""``, holding two resources:
``STORAGE`` (the sum of the user's messages' RFC822.SIZE, in units of 1024 octets, against
``objmail user quota``'s byte limit) and ``MESSAGE`` (the number of messages in all the
user's mailboxes against the message limit).  Both usages are the counters of
``user_usage``, kept in the transaction of every change, so answering costs one row read.

A resource without a limit (0) is not reported, and a user with neither limit has no quota
root at all: RFC 9208's ``quota_list`` needs at least one resource, and "no root" is how a
client learns that nothing is limited.  Usage is rounded up to whole KiB and the limit
down, so a client never sees room that is not there.

Only the administrator sets quotas (``objmail user quota``): SETQUOTA is answered ``NO``,
which RFC 9208 4.1.3 allows, and QUOTASET is not announced.
"""

from __future__ import annotations

from metadata.records import User

__all__ = ["ROOT", "deleted_storage", "resources"]

#: The one quota root of every user.
ROOT = ""


def resources(user: User) -> tuple[tuple[str, int, int], ...]:
    """``(resource, usage, limit)`` for each limited resource of ``user``."""
    found = []
    if user.quota_bytes:
        found.append(("STORAGE", -(-user.used_bytes // 1024), max(1, user.quota_bytes // 1024)))
    if user.quota_messages:
        found.append(("MESSAGE", user.message_count, user.quota_messages))
    return tuple(found)


def deleted_storage(size: int) -> int:
    """STATUS DELETED-STORAGE (RFC 9208 4.2): the KiB an EXPUNGE of ``size`` bytes of
    ``\\Deleted`` messages gives back, rounded down (what is surely freed)."""
    return size // 1024
