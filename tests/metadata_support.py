"""Support for the metadata tests: a private database per module, sample message rows.

The session shares one PostgreSQL (the ``postgres`` fixture); each module that needs a
clean schema creates its own database, migrated to this release, and drops it afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit

import asyncpg

from metadata.migrate import migrate_dsn
from metadata.passwords import ScryptParams
from metadata.records import MessageRow

#: Cheap scrypt for tests that create many users (the real cost is tested separately).
FAST_SCRYPT = ScryptParams(log_n=4)
UTC = dt.UTC


def admin_dsn(dsn: str) -> str:
    """The DSN of the maintenance database ``postgres`` on the same server."""
    return urlsplit(dsn)._replace(path="/postgres").geturl()


def with_database(dsn: str, name: str) -> str:
    return urlsplit(dsn)._replace(path=f"/{name}").geturl()


async def _admin(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(admin_dsn(dsn))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def fresh_database(dsn: str, *, migrate: bool = True, icu_locale: str = "") -> Iterator[str]:
    """Create ``objmail_test_<random>`` on the server of ``dsn``, migrated unless told
    otherwise; yield its DSN; drop it at the end.

    :param icu_locale: make the database's default collation this ICU locale's (a
        linguistic order, as production databases created under a locale have) instead
        of the test cluster's "C"."""
    name = f"objmail_test_{secrets.token_hex(6)}"
    options = (f" TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER icu "
               f"ICU_LOCALE '{icu_locale}'" if icu_locale else "")
    asyncio.run(_admin(dsn, f'CREATE DATABASE "{name}"{options}'))
    try:
        target = with_database(dsn, name)
        if migrate:
            migrate_dsn(target)
        yield target
    finally:
        asyncio.run(_admin(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def blob(label: str) -> str:
    """A blob id (hex SHA-256) named by ``label``."""
    return hashlib.sha256(label.encode()).hexdigest()


def sample_row(label: str = "m", *, size: int = 1000, subject: str = "Hello",
               from_addr: str = "Alice <alice@example.org>", to_addr: str = "bob@example.org",
               body_text: str = "", sent_at: dt.datetime | None = None,
               headers: tuple[tuple[str, str], ...] | None = None) -> MessageRow:
    """A message row as delivery would compute it (the cached bytes are placeholders the
    store must return untouched)."""
    if headers is None:
        headers = (("From", from_addr), ("To", to_addr), ("Subject", subject))
    return MessageRow(
        skeleton_id=blob(f"skeleton-{label}"), size=size,
        header_block=f"Subject: {subject}\r\n\r\n".encode(),
        envelope=f"(envelope {label})".encode(),
        bodystructure=(f'("text" "plain" ("charset" "us-ascii") NIL "{label}" "7bit" 10 1 '
                       'NIL NIL NIL NIL)').encode(),
        section_map=f"map {label}".encode(),
        sent_at=sent_at, subject=subject, from_addr=from_addr, to_addr=to_addr,
        headers=headers, body_text=body_text)
