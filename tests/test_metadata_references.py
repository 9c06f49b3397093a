"""gc's view of blob references, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator

import pytest

from metadata.flags import DELETED, Flags
from metadata.store import MetadataStore
from tests.metadata_support import FAST_SCRYPT, blob, fresh_database, sample_row

NOW = dt.datetime(2024, 8, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def dsn(postgres: str) -> Iterator[str]:
    with fresh_database(postgres) as target:
        yield target


def test_referenced_candidates_and_full_scan(dsn: str) -> None:
    """referenced() keeps exactly the candidates some message of any user still uses;
    iter_blob_ids() streams every referenced id once, in resumable batches; both follow an
    expunge at once."""

    async def run() -> None:
        store = await MetadataStore.open(dsn, pool_min=1, pool_max=2,
                                         password_params=FAST_SCRYPT)
        try:
            kept, dropped, never = blob("kept"), blob("dropped"), blob("never-stored")
            a = await store.users.create("ref-a", "pw")
            b = await store.users.create("ref-b", "pw")
            a_inbox = (await store.mailboxes.get(a.id, "INBOX")).id
            b_inbox = (await store.mailboxes.get(b.id, "INBOX")).id
            await store.messages.insert(a.id, a_inbox, sample_row("a1"), [kept, dropped],
                                        internaldate=NOW, flags=Flags(DELETED))
            await store.messages.insert(b.id, b_inbox, sample_row("b1"), [kept],
                                        internaldate=NOW)
            assert await store.references.referenced([kept, dropped, never]) == {kept, dropped}
            assert await store.references.referenced([]) == set()

            batches = [batch async for batch in store.references.iter_blob_ids(batch=2)]
            flat = [i for batch in batches for i in batch]
            expected = sorted({kept, dropped, blob("skeleton-a1"), blob("skeleton-b1")})
            assert flat == expected
            assert all(len(batch) <= 2 for batch in batches)
            resumed = [i async for batch in store.references.iter_blob_ids(after=flat[1])
                       for i in batch]
            assert resumed == expected[2:]

            await store.messages.expunge(a.id, a_inbox)
            assert await store.references.referenced([kept, dropped, never]) == {kept}
            assert await store.references.count(kept) == 1
            assert await store.references.count(dropped) == 0
        finally:
            await store.close()

    asyncio.run(run())
