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
from metadata.splitter import parse_skeleton, reassemble
from metadata.store import MetadataStore
from metadata.uidset import UidSet
from ops.config import Config
from runtime.secrets import Credentials, load_credentials
from tests.metadata_support import FAST_SCRYPT

T = TypeVar("T")


@dataclass
class MailStack:
    loop: asyncio.AbstractEventLoop
    config: Config
    store: MetadataStore
    blobs: BlobClient
    deliverer: Deliverer
    credentials: Credentials

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def new_user(self, prefix: str = "u", *, quota: int = 0) -> User:
        """A user with a unique name and the default mailboxes."""
        name = f"{prefix}{secrets.token_hex(4)}"
        return self.run(self.store.users.create(name, "secret", quota_bytes=quota))

    def only_message(self, user: User, mailbox: str = "INBOX") -> bytes:
        """The bytes of the one message in ``user``'s ``mailbox``, reassembled from its
        skeleton and blobs (asserting there is exactly one and it has a skeleton)."""
        box = self.run(self.store.mailboxes.get(user.id, mailbox))
        (entry,) = self.run(self.store.messages.fetch(user.id, box.id, UidSet.all(),
                                                      items={"skeleton"}))
        assert entry.skeleton_id is not None
        skeleton = self.run(self.blobs.get(entry.skeleton_id))
        parts = self.run(self.blobs.get_many(parse_skeleton(skeleton).blob_ids()))
        return reassemble(skeleton, parts)


@contextlib.contextmanager
def open_stack(config: Config) -> Iterator[MailStack]:
    loop = asyncio.new_event_loop()
    creds = load_credentials(config.cluster)
    store = loop.run_until_complete(MetadataStore.open(
        config.cluster.pg_dsn, pool_min=1, pool_max=20, password_params=FAST_SCRYPT,
        password=creds.pg_password))
    blobs = loop.run_until_complete(BlobClient.open(config.cluster, config.director,
                                                    auth=creds.redis))
    try:
        yield MailStack(loop, config, store, blobs, Deliverer(store, blobs, config.metadata, config.imapd.max_message_size), creds)
    finally:
        loop.run_until_complete(blobs.aclose())
        loop.run_until_complete(store.close())
        loop.close()
