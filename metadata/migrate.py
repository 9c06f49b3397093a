"""Versioned schema migrations: ``metadata/migrations/NNNN_name.sql`` applied in order.

Theory of operation: ``schema_migrations`` records each applied file's version, name,
SHA-256 and time.  :func:`migrate` takes a PostgreSQL advisory lock (so two processes
starting together apply nothing twice), checks that every applied file is unchanged, then
applies each pending file and records it *in the same transaction*, so a failure leaves the
schema at the previous version with nothing half-applied.  Running it again is a no-op.

A migration file that was edited after it was applied is refused: the database would no
longer match what the file says, and silently ignoring the edit hides the drift.  Fix it
with a new migration instead.  A database that knows a version the code does not is also
refused (an older release pointed at a newer schema).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import asyncpg

from metadata.db import UNAVAILABLE, unreachable
from metadata.errors import SchemaError

__all__ = [
    "MIGRATIONS_DIR",
    "Migration",
    "MigrationState",
    "check_schema",
    "load_migrations",
    "migrate",
    "migrate_dsn",
    "status",
    "status_dsn",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_FILE_NAME = re.compile(r"([0-9]{4})_([a-z0-9_]+)\.sql\Z")
#: pg_advisory_lock key shared by every migrator ("objmail" in ASCII, as a bigint).
LOCK_KEY = int.from_bytes(b"objmail", "big")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    """One migration file: ``version`` from its number, ``checksum`` the SHA-256 of its bytes."""

    version: int
    name: str
    sql: str
    checksum: str


@dataclass(frozen=True)
class MigrationState:
    """A migration as the database sees it.

    ``state`` is ``applied``, ``pending``, ``modified`` (applied, but the file changed since)
    or ``unknown`` (applied, but no such file in this release).
    """

    version: int
    name: str
    state: Literal["applied", "pending", "modified", "unknown"]
    applied_at: dt.datetime | None


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every migration in ``directory``, by version.

    :raises SchemaError: a ``.sql`` file not named ``NNNN_name.sql``, two files with one
        version, or versions that do not run 1, 2, 3... without a gap.
    """
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise SchemaError(f"migration file {path.name} is not named NNNN_name.sql")
        raw = path.read_bytes()
        migrations.append(Migration(int(match.group(1)), match.group(2), raw.decode("utf-8"),
                                    hashlib.sha256(raw).hexdigest()))
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise SchemaError(f"migration versions must run 1, 2, 3... without gaps or repeats; "
                          f"found {versions} in {directory}")
    return migrations


async def _applied(conn: asyncpg.Connection) -> dict[int, asyncpg.Record]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, name, checksum, applied_at FROM schema_migrations")
    return {row["version"]: row for row in rows}


def _states(migrations: Sequence[Migration],
            applied: dict[int, asyncpg.Record]) -> list[MigrationState]:
    states = []
    known = {m.version for m in migrations}
    for m in migrations:
        row = applied.get(m.version)
        if row is None:
            states.append(MigrationState(m.version, m.name, "pending", None))
        elif row["checksum"] != m.checksum:
            states.append(MigrationState(m.version, m.name, "modified", row["applied_at"]))
        else:
            states.append(MigrationState(m.version, m.name, "applied", row["applied_at"]))
    for version in sorted(set(applied) - known):
        row = applied[version]
        states.append(MigrationState(version, row["name"], "unknown", row["applied_at"]))
    return states


async def status(conn: asyncpg.Connection,
                 migrations: Sequence[Migration] | None = None) -> list[MigrationState]:
    """Each migration's state, by version (read-only)."""
    migrations = load_migrations() if migrations is None else migrations
    return _states(migrations, await _applied(conn))


def _refuse_drift(states: Sequence[MigrationState]) -> None:
    for state in states:
        if state.state == "modified":
            raise SchemaError(
                f"migration {state.version:04d}_{state.name}.sql was changed after it was "
                "applied; restore the file and put the change in a new migration")
        if state.state == "unknown":
            raise SchemaError(
                f"the database has migration {state.version:04d}_{state.name}, which this "
                "release does not know: it is newer than this code")


async def migrate(conn: asyncpg.Connection,
                  migrations: Sequence[Migration] | None = None) -> list[Migration]:
    """Apply every pending migration, each in its own transaction; return those applied.

    :raises SchemaError: an applied migration was modified, or the database is newer.
    :raises asyncpg.PostgresError: a migration's SQL failed (that migration is rolled back;
        earlier ones of this run stay applied).
    """
    migrations = load_migrations() if migrations is None else migrations
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
    try:
        await conn.execute(_CREATE_TABLE)
        states = _states(migrations, await _applied(conn))
        _refuse_drift(states)
        pending = {s.version for s in states if s.state == "pending"}
        done = []
        for m in migrations:
            if m.version not in pending:
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    m.version, m.name, m.checksum)
            done.append(m)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)


async def check_schema(conn: asyncpg.Connection,
                       migrations: Sequence[Migration] | None = None) -> None:
    """Refuse to run on a schema that is not exactly this release's (daemons call it at start).

    :raises SchemaError: naming what is pending, modified or unknown.
    """
    states = await status(conn, migrations)
    _refuse_drift(states)
    pending = [f"{s.version:04d}_{s.name}" for s in states if s.state == "pending"]
    if pending:
        raise SchemaError(f"database schema is not up to date (pending: {', '.join(pending)}); "
                          "run `objmail db migrate`")


async def _with_connection(dsn: str, migrations: Sequence[Migration] | None,
                           apply: bool, password: str | None,
                           ) -> list[Migration] | list[MigrationState]:
    try:
        conn = await asyncpg.connect(dsn, password=password)
    except UNAVAILABLE as exc:
        raise unreachable(dsn, exc) from exc
    try:
        if apply:
            return await migrate(conn, migrations)
        return await status(conn, migrations)
    finally:
        await conn.close()


def migrate_dsn(dsn: str, migrations: Sequence[Migration] | None = None, *,
                password: str | None = None) -> list[Migration]:
    """:func:`migrate` on a fresh connection to ``dsn``, for synchronous callers (CLI, launcher)."""
    result = asyncio.run(_with_connection(dsn, migrations, True, password))
    return [m for m in result if isinstance(m, Migration)]


def status_dsn(dsn: str, migrations: Sequence[Migration] | None = None, *,
               password: str | None = None) -> list[MigrationState]:
    """:func:`status` on a fresh connection to ``dsn``, for synchronous callers."""
    result = asyncio.run(_with_connection(dsn, migrations, False, password))
    return [s for s in result if isinstance(s, MigrationState)]
