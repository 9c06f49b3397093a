"""Opening the metadata store: it refuses a schema that is not this release's."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from metadata.errors import SchemaError
from metadata.migrate import migrate_dsn
from metadata.store import MetadataStore
from tests.metadata_support import FAST_SCRYPT, fresh_database


def test_open_checks_the_schema(postgres: str) -> None:
    """open() refuses an unmigrated database (naming the fix) and a modified migration,
    and serves a migrated one."""
    with fresh_database(postgres, migrate=False) as dsn:
        with pytest.raises(SchemaError, match="objmail db migrate"):
            asyncio.run(MetadataStore.open(dsn, pool_min=1, pool_max=1))
        migrate_dsn(dsn)

        async def use() -> str:
            store = await MetadataStore.open(dsn, pool_min=1, pool_max=1,
                                             password_params=FAST_SCRYPT)
            try:
                user = await store.users.create("opened", "pw")
                return user.name
            finally:
                await store.close()

        assert asyncio.run(use()) == "opened"

        async def tamper() -> None:
            conn = await asyncpg.connect(dsn)
            await conn.execute("UPDATE schema_migrations SET checksum = 'x' WHERE version = 1")
            await conn.close()

        asyncio.run(tamper())
        with pytest.raises(SchemaError, match="changed after it was applied"):
            asyncio.run(MetadataStore.open(dsn, pool_min=1, pool_max=1))
