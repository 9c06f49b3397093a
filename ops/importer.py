"""Bulk import: existing mail (:mod:`ops.mailsource`) into one user's mailboxes.

Each message goes through the same delivery code as LMTP and APPEND
(:class:`metadata.delivery.Deliverer`): split into deduplicated blobs, uploaded, then
committed in one transaction with its flags and INTERNALDATE, so an import is as durable
and as visible to IMAP sessions as any delivery, message by message.

**Resumable without a journal.**  A message's skeleton id is the SHA-256 of its bytes
(with its part blobs', :mod:`metadata.splitter`), so the mailbox itself says what is
already imported: at the start of each folder the importer counts the skeleton ids of
the target mailbox's entries, and the n-th copy of a message in the source is skipped
when the mailbox holds at least n.  Ctrl-C, a crash or an outage mid-way cost nothing:
running the same import again skips what landed and carries on (a message deleted from
the mailbox meanwhile is imported again, which is what "import this folder" means).

**Throughput.**  Up to ``window`` messages are analysed and uploaded at once, and
committed in source order, ``batch`` per transaction (one commit, so one fsync, for
16 messages; UIDs follow the source's order).  A batch is all or nothing: an error
(PostgreSQL gone) leaves the batch for the rerun; one over quota is committed message by
message, so the mailbox fills up to the quota as single deliveries would, then the
import stops.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from metadata.delivery import Deliverer, MessageTooBig, PreparedMessage
from metadata.errors import MailboxExists, NoSuchMailbox, OverQuota
from metadata.records import User
from metadata.store import MetadataStore
from ops.mailsource import SourceFolder, SourceMessage

log = logging.getLogger(__name__)

#: Messages analysed and uploaded ahead of the commits.
WINDOW = 32
#: Messages committed per PostgreSQL transaction (one fsync for all of them).
BATCH = 16
#: Origins kept as examples of messages that could not be imported.
EXAMPLES = 10


@dataclass
class ImportStats:
    """What an import did.

    :param messages: source messages gone through (of ``total``).
    :param imported: committed now; ``skipped``: found in the mailbox already.
    :param failed: refused (too big for ``imapd.max_message_size``); the rest went on.
    :param bytes: bytes of the imported messages.
    """

    total: int = 0
    messages: int = 0
    imported: int = 0
    skipped: int = 0
    failed: int = 0
    bytes: int = 0
    interrupted: bool = False
    folders: dict[str, int] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


class Importer:
    """Import folders into ``user``'s mailboxes.

    :param create: create missing target mailboxes (else a missing one is an error).
    :param stop: returns True once the import should stop (Ctrl-C).
    :param progress: called after each message.
    """

    def __init__(self, store: MetadataStore, deliverer: Deliverer, user: User, *,
                 create: bool = True, window: int = WINDOW, batch: int = BATCH,
                 stop: Callable[[], bool] = lambda: False,
                 progress: Callable[[ImportStats], None] | None = None) -> None:
        self.store = store
        self.deliverer = deliverer
        self.user = user
        self.create = create
        self.batch = max(1, batch)
        self.window = max(self.batch, window)
        self.stop = stop
        self.progress = progress
        #: The current (or last) run's stats, also when it raised.
        self.stats = ImportStats()

    async def run(self, folders: Sequence[SourceFolder]) -> ImportStats:
        """Import every folder in turn.

        :raises OverQuota, Unavailable, BlobUnavailable: the import stopped there;
            everything committed before stays, and a rerun resumes.
        :raises NoSuchMailbox: a target mailbox is missing and ``create`` is off.
        """
        stats = self.stats = ImportStats(total=sum(f.count() for f in folders))
        for folder in folders:
            if self.stop():
                stats.interrupted = True
                break
            await self._folder(folder, stats)
        stats.interrupted = stats.interrupted or self.stop()
        return stats

    async def _mailbox_id(self, name: str, stats: ImportStats) -> tuple[int, str]:
        try:
            box = await self.store.mailboxes.get(self.user.id, name)
        except NoSuchMailbox:
            if not self.create:
                raise
            try:
                box = await self.store.mailboxes.create(self.user.id, name)
                stats.created.append(box.name)
            except MailboxExists:  # created meanwhile by a client
                box = await self.store.mailboxes.get(self.user.id, name)
        return box.id, box.name

    async def _commit(self, ready: list[tuple[SourceMessage, PreparedMessage]], name: str,
                      stats: ImportStats) -> None:
        """Commit ``ready`` in one transaction and count it."""
        if not ready:
            return
        await self.deliverer.commit_many(
            self.user, [(p, m.flags, m.internaldate) for m, p in ready], mailbox=name)
        stats.imported += len(ready)
        stats.folders[name] += len(ready)
        stats.bytes += sum(p.raw_size for _m, p in ready)

    async def _folder(self, folder: SourceFolder, stats: ImportStats) -> None:
        box_id, name = await self._mailbox_id(folder.mailbox, stats)
        stats.folders.setdefault(name, 0)
        present = collections.Counter(
            await self.store.messages.skeleton_counts(self.user.id, box_id))
        seen: collections.Counter[str] = collections.Counter()
        pending: collections.deque[tuple[SourceMessage, asyncio.Task[PreparedMessage | None]]]
        pending = collections.deque()

        async def stage(msg: SourceMessage) -> PreparedMessage | None:
            prepared = await self.deliverer.prepare(msg.raw)
            sid = prepared.row.skeleton_id
            seen[sid] += 1
            if seen[sid] <= present[sid]:
                return None  # imported by an earlier run
            await self.deliverer.upload(prepared)
            return prepared

        async def commit_batch() -> None:
            """Commit the oldest ``batch`` staged messages in one transaction."""
            ready: list[tuple[SourceMessage, PreparedMessage]] = []
            for _ in range(min(self.batch, len(pending))):
                msg, task = pending.popleft()
                stats.messages += 1
                try:
                    prepared = await task
                except MessageTooBig as exc:
                    stats.failed += 1
                    if len(stats.failures) < EXAMPLES:
                        stats.failures.append(f"{msg.origin}: {exc}")
                    log.warning("import: %s: %s", msg.origin, exc)
                    continue
                if prepared is None:
                    stats.skipped += 1
                else:
                    ready.append((msg, prepared))
            try:
                await self._commit(ready, name, stats)
            except OverQuota:
                if len(ready) < 2:
                    raise
                # Fill up to the quota as single deliveries would, then stop.
                for one in ready:
                    await self._commit([one], name, stats)
            if self.progress is not None:
                self.progress(stats)

        try:
            for msg in folder.messages():
                if self.stop():
                    stats.interrupted = True
                    break
                # Staged in order: ``seen`` counts copies in source order.
                pending.append((msg, asyncio.ensure_future(stage(msg))))
                if len(pending) >= self.window:
                    await commit_batch()
            while pending:  # what is staged is committed, even when stopping
                await commit_batch()
        finally:
            for _msg, task in pending:
                task.cancel()
            await asyncio.gather(*(t for _m, t in pending), return_exceptions=True)
