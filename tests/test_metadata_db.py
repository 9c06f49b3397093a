"""The connection pool and its error translation, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest

from metadata.db import Database
from metadata.errors import SchemaError, Unavailable
from ops.launcher import free_port
from tests.metadata_support import fresh_database


@pytest.fixture(scope="module")
def unmigrated(postgres: str) -> Iterator[str]:
    with fresh_database(postgres, migrate=False) as target:
        yield target


def test_unreachable_server_is_unavailable() -> None:
    """Opening a pool on a port nobody listens on raises Unavailable, not a driver error."""
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/objmail"
    with pytest.raises(Unavailable):
        asyncio.run(Database.open(dsn, min_size=1, max_size=1))


def test_transaction_commits_or_rolls_back(unmigrated: str) -> None:
    """A transaction block commits when it ends normally and rolls back when it raises."""

    async def run() -> None:
        db = await Database.open(unmigrated, min_size=1, max_size=2)
        try:
            async with db.connection() as conn:
                await conn.execute("CREATE TABLE t (v int)")
            async with db.transaction() as conn:
                await conn.execute("INSERT INTO t VALUES (1)")
            with pytest.raises(RuntimeError):
                async with db.transaction() as conn:
                    await conn.execute("INSERT INTO t VALUES (2)")
                    raise RuntimeError("abort")
            async with db.transaction(readonly=True) as conn:
                assert await conn.fetch("SELECT v FROM t") == [(1,)]
                with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                    await conn.execute("INSERT INTO t VALUES (3)")
        finally:
            await db.close()

    asyncio.run(run())


def test_missing_schema_and_lost_connection(unmigrated: str) -> None:
    """A query on a missing table raises SchemaError; a connection killed mid-transaction
    raises Unavailable."""

    async def run() -> None:
        db = await Database.open(unmigrated, min_size=1, max_size=1)
        try:
            with pytest.raises(SchemaError, match="objmail db migrate"):
                async with db.connection() as conn:
                    await conn.fetch("SELECT * FROM mailboxes")
            with pytest.raises(Unavailable):
                async with db.transaction() as conn:
                    await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        finally:
            await db.close()

    asyncio.run(run())


def test_release_sends_no_reset_query_but_rolls_back(unmigrated: str) -> None:
    """A connection given back to the pool is not reset with a query (session settings
    survive, so no round trip was spent), yet a transaction left open is rolled back."""

    async def run() -> None:
        db = await Database.open(unmigrated, min_size=1, max_size=1)
        try:
            async with db.connection() as conn:
                await conn.execute("SET application_name = 'objmail-pool-test'")
                await conn.execute("CREATE TABLE IF NOT EXISTS kept (v int)")
            async with db.connection() as conn:
                assert await conn.fetchval("SHOW application_name") == "objmail-pool-test"
                await conn.execute("RESET application_name")
                await conn.execute("BEGIN")
                await conn.execute("INSERT INTO kept VALUES (1)")
            async with db.connection() as conn:
                assert not conn.is_in_transaction()
                assert await conn.fetchval("SELECT count(*) FROM kept") == 0
        finally:
            await db.close()

    asyncio.run(run())


def test_exhausted_pool_times_out_as_unavailable(unmigrated: str) -> None:
    """With every connection busy, a caller waits at most acquire_timeout and gets
    Unavailable; with one idle, it gets it at once."""

    async def run() -> None:
        db = await Database.open(unmigrated, min_size=1, max_size=1, acquire_timeout=0.3)
        try:
            async with db.connection():
                with pytest.raises(Unavailable):
                    async with db.transaction():
                        pass
            async with db.connection() as conn:
                assert await conn.fetchval("SELECT 1") == 1
        finally:
            await db.close()

    asyncio.run(asyncio.wait_for(run(), 10))
