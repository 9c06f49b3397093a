"""What an imapd session needs from the rest of objmail, gathered in one object.

``imapd.main`` builds one :class:`Backend` per process once the event loop runs and hands
it to every connection; tests build one over a real PostgreSQL.  The blob store, the
deliverer and the change feed are described by the small protocols below so that each
session depends on what it calls, not on how the director or delivery work inside.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from imapd.bodies import BlobSource
from imapd.config import ImapdConfig
from imapd.logins import LoginLimiter, NoLoginLimit
from imapd.metrics import ImapMetrics
from metadata.notify import Change
from metadata.store import MetadataStore

__all__ = ["Backend", "BlobSource", "ChangeFeed", "Delivered", "MessageDeliverer"]


class Delivered(Protocol):
    """Where a delivered message went (``metadata.delivery.Delivered``)."""

    @property
    def uid(self) -> int: ...

    @property
    def uidvalidity(self) -> int: ...

    @property
    def mailbox_id(self) -> int: ...

    @property
    def modseq(self) -> int: ...

    @property
    def recent(self) -> tuple[int, int] | None:
        """The ``\\Recent`` range claimed with the delivery, if asked for."""


class MessageDeliverer(Protocol):
    """Stores a message for a user: blobs first, then the metadata transaction
    (``metadata.delivery.Deliverer``)."""

    async def deliver(self, user: str, raw: bytes, *, mailbox: str = "INBOX",
                      flags: Iterable[str] = (), internaldate: dt.datetime | None = None,
                      claim_recent_in: int | None = None) -> Delivered: ...


class ChangeFeed(Protocol):
    """Change notifications per user (``metadata.notify.ChangeListener``)."""

    async def subscribe(self, user_id: int, callback: Callable[[Change], None]) -> None: ...

    async def unsubscribe(self, user_id: int, callback: Callable[[Change], None]) -> None: ...

    @property
    def connected(self) -> bool:
        """Whether notifications arrive now (False while reconnecting: some may be lost)."""


@dataclass(frozen=True)
class Backend:
    """The process-wide services every session shares.

    :ivar clock: an ``IReactorTime``: the reactor, a ``task.Clock`` in tests (login
        delays use it).
    :ivar metrics: where sessions count commands and logins.
    :ivar logins: failed-login limits shared by every process (Redis), or none.
    """

    store: MetadataStore
    blobs: BlobSource
    deliverer: MessageDeliverer
    changes: ChangeFeed
    config: ImapdConfig
    clock: Any
    metrics: ImapMetrics = field(default_factory=ImapMetrics)
    logins: LoginLimiter = field(default_factory=NoLoginLimit)
