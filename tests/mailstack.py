"""The whole storage stack in one process, for delivery, LMTP and stats tests.

A private event loop runs a real :class:`MetadataStore` (the session's PostgreSQL),
a real :class:`BlobClient` (the session's Redis Cluster and object servers) and
the :class:`Deliverer` over both; tests drive it with :meth:`MailStack.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from director.client import BlobClient
from metadata.delivery import Deliverer
from metadata.records import User
from metadata.store import MetadataStore
from ops.config import Config
from tests.metadata_support import FAST_SCRYPT

T = TypeVar("T")


@dataclass
class MailStack:
    loop: asyncio.AbstractEventLoop
    config: Config
    store: MetadataStore
    blobs: BlobClient
    deliverer: Deliverer

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def new_user(self, prefix: str = "u", *, quota: int = 0) -> User:
        """A user with a unique name and the default mailboxes."""
        name = f"{prefix}{secrets.token_hex(4)}"
        return self.run(self.store.users.create(name, "secret", quota_bytes=quota))


@contextlib.contextmanager
def open_stack(config: Config) -> Iterator[MailStack]:
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(MetadataStore.open(
        config.cluster.pg_dsn, pool_min=1, pool_max=20, password_params=FAST_SCRYPT))
    blobs = loop.run_until_complete(BlobClient.open(config))
    try:
        yield MailStack(loop, config, store, blobs, Deliverer(store, blobs, config))
    finally:
        loop.run_until_complete(blobs.aclose())
        loop.run_until_complete(store.close())
        loop.close()
