"""Delivering a message: split it, store its blobs, then commit its metadata.

One code path for LMTP, ``objmail deliver`` and IMAP APPEND.  The order is the
design's: (1) analyse the raw bytes once (split into skeleton + part blobs, render
ENVELOPE/BODYSTRUCTURE, extract search text); (2) store the blobs through the
director client (dedup: a known blob is not uploaded again); (3) one PostgreSQL
transaction inserts the message, its blob references and the mailbox entry.  The
caller acknowledges only after (3) returned.  A crash between (2) and (3) leaves
unreferenced blobs, which gc collects after its grace period; nothing is ever
visible without its blobs.

gc decides from committed references, so a delivery slow enough (a mailbox lock
held for minutes) could otherwise commit a reference to a blob gc collected while it
waited.  The fence: before (2) the delivery reads gc's generation
(:meth:`BlobStore.gc_generation`), and the last statement of (3), after every lock it
waited for, asks the director whether gc may have collected any of its blobs since
(:meth:`BlobStore.check_kept`); if so the transaction rolls back with a temporary error
(LMTP 451, IMAP ``NO [UNAVAILABLE]``) and the sender retries.  When no gc ran meanwhile
the check is free (docs/director.md, "gc").

A message delivered to many recipients (one LMTP transaction with many RCPT) is
analysed and uploaded once; each recipient then gets its own transaction, so one
recipient's failure (unknown, over quota) never affects another's.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from metadata.bodystructure import render_bodystructure
from metadata.config import MetadataConfig
from metadata.envelope import tree_envelope
from metadata.errors import MessageTooBig, OverQuota
from metadata.flags import Flags
from metadata.messages import NewMessage
from metadata.mimetree import parse
from metadata.records import Mailbox, MessageRow, User
from metadata.searchtext import search_text
from metadata.sections import PartEntry, SectionMap, section_map
from metadata.sortkeys import sort_keys_of
from metadata.splitter import InlineSegment, Skeleton, SplitMessage, blob_id, split
from metadata.store import MetadataStore

#: Messages at least this large are analysed off the event loop's thread, so a
#: multi-megabyte parse does not stall every other session for its duration.
OFFLOAD_BYTES = 256 * 1024


#: The gc generation of a message prepared without reading it: its commit always checks.
UNKNOWN_GENERATION = -1

#: A header field's first line (RFC 5322 field name, then the colon): a message that
#: starts with one keeps its parse when fields are put on top of it.
_FIELD_START = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")


class BlobStore(Protocol):
    """What delivery needs of the director client (``director.client.BlobClient``)."""

    def id_of(self, content: bytes) -> str:
        """The id the store names ``content`` by: the splitter names blobs with it."""
        ...

    async def put_named(self, blobs: Mapping[str, bytes],
                        named_by: Callable[[bytes], str]) -> None:
        """Store blobs (id -> bytes) whose ids ``named_by`` computed; when it is the
        store's own :meth:`id_of` they are not hashed again."""
        ...

    async def gc_generation(self) -> int:
        """gc's generation now; read before uploading blobs a commit will reference."""
        ...

    async def check_kept(self, ids: Iterable[str], generation: int) -> None:
        """Called last in a commit transaction: keep ``ids`` from gc from now on.

        :param generation: what :meth:`gc_generation` returned before their upload
            (:data:`UNKNOWN_GENERATION` when it was not read).
        :raises director.errors.BlobUnavailable: gc collected some of them since.
        """
        ...


@dataclass(frozen=True)
class PreparedMessage:
    """A message analysed once, ready to be stored for any number of recipients."""

    raw_size: int
    split: SplitMessage
    row: MessageRow
    #: gc's generation read before the upload (see the module docstring).
    gc_generation: int = UNKNOWN_GENERATION

    @property
    def blob_ids(self) -> tuple[str, ...]:
        """The part blobs (the skeleton excluded)."""
        return tuple(self.split.blobs)


@dataclass(frozen=True)
class Delivered:
    """Where a message landed for one recipient."""

    user: str
    mailbox: str
    mailbox_id: int
    uidvalidity: int
    uid: int
    message_id: int
    size: int
    modseq: int = 0
    """The mailbox's mod-sequence after this delivery (the entry's own)."""
    recent: tuple[int, int] | None = None
    """The ``\\Recent`` range claimed with it (``Deliverer.deliver``'s ``claim_recent_in``)."""


def prepare(raw: bytes, threshold: int,
            id_of: Callable[[bytes], str] = blob_id) -> PreparedMessage:
    """Analyse ``raw`` (pure, CPU-bound): split, pre-render, extract search text.

    :param id_of: names the blobs (the blob store's :meth:`BlobStore.id_of`, so that
        storing them needs no second hash).
    """
    stored = split(raw, threshold, id_of=id_of)
    tree = stored.tree if stored.tree is not None else parse(raw)
    text = search_text(raw, tree)
    row = MessageRow(
        skeleton_id=stored.skeleton_id,
        size=tree.vsize,
        header_block=raw[tree.root.header.start:tree.root.header.end],
        envelope=tree_envelope(tree),
        bodystructure=render_bodystructure(tree),
        section_map=section_map(tree).to_bytes(),
        sent_at=text.sent_at,
        subject=text.subject,
        from_addr=text.from_,
        to_addr=text.to,
        cc_addr=text.cc,
        bcc_addr=text.bcc,
        headers=text.headers,
        body_text=text.body,
        sort=sort_keys_of(tree.root),
    )
    return PreparedMessage(len(raw), stored, row)


def with_fields(base: PreparedMessage, raw: bytes, fields: bytes,
                id_of: Callable[[bytes], str] = blob_id) -> PreparedMessage | None:
    """What :func:`prepare` would make of ``fields + raw``, from ``base`` (the analysis of
    ``raw``) without analysing the message again: LMTP puts each recipient's trace
    fields on top of one message, and only the skeleton and the header-derived columns
    change (the part blobs, ENVELOPE, BODYSTRUCTURE, body text and sort keys do not).

    :param fields: whole header lines, each ending in the message's own line ending.
    :returns: None when the result could differ from a fresh analysis (a message kept
        opaque, or one whose first line is not a header field, which ``fields`` would
        change the meaning of): the caller prepares ``fields + raw`` itself.
    """
    stored = base.split
    skeleton = stored.skeleton
    first = skeleton.segments[0] if skeleton.segments else None
    if (skeleton.opaque or not isinstance(first, InlineSegment) or not fields
            or not fields.endswith(b"\n") or _FIELD_START.match(raw) is None):
        return None
    shift = len(fields)
    vshift = shift + fields.count(b"\n") - fields.count(b"\r\n")  # bare LF is CRLF in IMAP
    digest = hashlib.sha256(fields)
    digest.update(raw)
    traced = Skeleton((InlineSegment(fields + first.data), *skeleton.segments[1:]),
                      skeleton.size + shift, skeleton.vsize + vshift, digest.digest())
    skeleton_bytes = traced.to_bytes()
    skeleton_id = id_of(skeleton_bytes)
    old = SectionMap.from_bytes(base.row.section_map)
    # Every part moves down by the fields; the message itself still starts at 0.
    entries = [PartEntry(0 if i == 0 else e.start + shift, e.header_end + shift,
                         e.end + shift, e.header_vsize + (vshift if i == 0 else 0),
                         e.body_vsize, e.kind, e.children)
               for i, e in enumerate(old.entries)]
    # The fields alone make a header that parses as they will in the message (a field
    # name starts the message's next line), so their decoded values are the same.
    eol = b"\r\n" if fields.endswith(b"\r\n") else b"\n"
    own = search_text(fields + eol).headers
    row = replace(base.row, skeleton_id=skeleton_id, size=base.row.size + vshift,
                  header_block=fields + base.row.header_block,
                  section_map=SectionMap(tuple(entries)).to_bytes(),
                  headers=own + base.row.headers)
    split_ = SplitMessage(traced, skeleton_bytes, stored.blobs, None, skeleton_id,
                          stored.named_by)
    return replace(base, raw_size=base.raw_size + shift, split=split_, row=row)


class Deliverer:
    """Delivers messages into users' mailboxes.

    :param store: the metadata store (PostgreSQL).
    :param blobs: the director client (object servers).
    :param max_message_size: the frontend's limit (``imapd.max_message_size``).
    """

    def __init__(self, store: MetadataStore, blobs: BlobStore, config: MetadataConfig,
                 max_message_size: int) -> None:
        self.store = store
        self.blobs = blobs
        self.threshold = config.split_threshold
        self.max_size = max_message_size

    def check_size(self, size: int) -> None:
        """:raises MessageTooBig: ``size`` exceeds the configured limit."""
        if size > self.max_size:
            raise MessageTooBig(size, self.max_size)

    async def prepare(self, raw: bytes) -> PreparedMessage:
        """Analyse ``raw`` once; large messages on a worker thread.  The result also
        carries gc's generation as of now, before any upload of its blobs."""
        self.check_size(len(raw))
        generation = await self.blobs.gc_generation()
        if len(raw) < OFFLOAD_BYTES:
            prepared = prepare(raw, self.threshold, self.blobs.id_of)
        else:
            loop = asyncio.get_running_loop()
            prepared = await loop.run_in_executor(None, prepare, raw, self.threshold,
                                                  self.blobs.id_of)
        return replace(prepared, gc_generation=generation)

    async def prepare_with(self, base: PreparedMessage, raw: bytes,
                           fields: bytes) -> PreparedMessage:
        """``fields + raw`` prepared from ``base``, the analysis of ``raw``
        (:func:`with_fields`), or analysed afresh when that cannot be derived."""
        if len(raw) < OFFLOAD_BYTES:
            derived = with_fields(base, raw, fields, self.blobs.id_of)
        else:  # hashing the whole message again: off the event loop too
            loop = asyncio.get_running_loop()
            derived = await loop.run_in_executor(None, with_fields, base, raw, fields,
                                                 self.blobs.id_of)
        if derived is None:
            return replace(await self.prepare(fields + raw), gc_generation=base.gc_generation)
        return derived

    async def upload(self, prepared: PreparedMessage) -> None:
        """Store the skeleton and part blobs (known ones are not uploaded again).

        :raises director.errors.BlobUnavailable: too few object servers took them.
        """
        await self.upload_many([prepared])

    async def upload_many(self, prepared: Iterable[PreparedMessage]) -> None:
        """Store the blobs of several messages with one index lookup: blobs they share
        (one message's copies for many recipients) are sent once, or not at all when
        the store has them.

        :raises director.errors.BlobUnavailable: too few object servers took them.
        """
        named: dict[str, bytes] = {}
        named_by: Callable[[bytes], str] | None = None
        for one in prepared:
            stored = one.split
            if named_by is not None and stored.named_by != named_by:
                await self.blobs.put_named(named, named_by)  # not named alike: apart
                named = {}
            named_by = stored.named_by
            named.update(stored.named_blobs)
        if named_by is not None:
            await self.blobs.put_named(named, named_by)

    async def commit(self, user: User, prepared: PreparedMessage, *, mailbox: str = "INBOX",
                     flags: Iterable[str] = (), internaldate: dt.datetime | None = None,
                     box: Mailbox | None = None, mailbox_id: int | None = None,
                     claim_recent: bool = False) -> Delivered:
        """Insert the message for ``user`` in one transaction (blobs already stored).

        :param box: the row of ``mailbox`` when the caller has just read it (saves a
            query; the insert itself refuses a mailbox deleted meanwhile).
        :param mailbox_id: or only its id (``mailbox`` then being its name), as LMTP's
            recipient lookup found it.
        :param claim_recent: claim ``\\Recent`` in the same transaction
            (``Messages.insert_many``).
        """
        (done,) = await self.commit_many(user, [(prepared, flags, internaldate)],
                                         mailbox=mailbox, box=box, mailbox_id=mailbox_id,
                                         claim_recent=claim_recent)
        return done

    async def commit_many(self, user: User,
                          messages: Sequence[tuple[PreparedMessage, Iterable[str],
                                                   dt.datetime | None]], *,
                          mailbox: str = "INBOX", box: Mailbox | None = None,
                          mailbox_id: int | None = None,
                          claim_recent: bool = False) -> list[Delivered]:
        """Insert several ``(prepared, flags, internaldate)`` messages (blobs already
        stored) in one transaction, with consecutive UIDs in this order: all or none.

        :raises director.errors.BlobUnavailable: gc collected some of their blobs while
            they waited to commit; nothing was committed (a temporary failure).
        """
        if box is not None:
            box_id, box_name = box.id, box.name
        elif mailbox_id is not None:
            box_id, box_name = mailbox_id, mailbox
        else:
            found = await self.store.mailboxes.get(user.id, mailbox)
            box_id, box_name = found.id, found.name
        now = dt.datetime.now(dt.UTC)
        ids = {b for prepared, _f, _w in messages
               for b in (prepared.row.skeleton_id, *prepared.blob_ids)}
        oldest = min((prepared.gc_generation for prepared, _f, _w in messages),
                     default=UNKNOWN_GENERATION)

        async def fence() -> None:
            await self.blobs.check_kept(ids, oldest)

        appended = await self.store.messages.insert_many(user.id, box_id, [
            NewMessage(prepared.row, prepared.blob_ids, when or now, Flags.from_names(flags))
            for prepared, flags, when in messages], before_commit=fence,
            claim_recent=claim_recent)
        return [Delivered(user.name, box_name, box_id, a.uidvalidity, a.uid, a.message_id,
                          prepared.row.size, a.modseq, a.recent)
                for a, (prepared, _f, _w) in zip(appended, messages, strict=True)]

    async def commit_batch(self, items: Sequence[tuple[User, PreparedMessage, str, int]]
                           ) -> list[Delivered]:
        """Insert ``(user, prepared, mailbox name, mailbox id)`` deliveries (blobs already
        stored), for any users and mailboxes, in one transaction: all or none (LMTP's
        group commit, :mod:`metadata.groupcommit`).  Deliveries to one mailbox get
        consecutive UIDs in the order given.  The gc fence is the transaction's last
        step, as in :meth:`commit_many`, over every blob of the batch from the oldest
        generation any of them read.

        :raises: whatever :meth:`commit_many` raises for any one delivery; nothing was
            committed then.
        """
        groups: dict[tuple[int, int], list[int]] = {}
        for n, (user, _p, _name, box_id) in enumerate(items):
            groups.setdefault((user.id, box_id), []).append(n)
        now = dt.datetime.now(dt.UTC)
        ids = {b for _u, prepared, _n, _i in items
               for b in (prepared.row.skeleton_id, *prepared.blob_ids)}
        oldest = min((prepared.gc_generation for _u, prepared, _n, _i in items),
                     default=UNKNOWN_GENERATION)

        async def fence() -> None:
            await self.blobs.check_kept(ids, oldest)

        appended = await self.store.messages.insert_groups([
            (user_id, box_id, [NewMessage(items[n][1].row, items[n][1].blob_ids, now)
                               for n in members])
            for (user_id, box_id), members in groups.items()], before_commit=fence)
        out: dict[int, Delivered] = {}
        for members, group in zip(groups.values(), appended, strict=True):
            for n, a in zip(members, group, strict=True):
                user, prepared, name, box_id = items[n]
                out[n] = Delivered(user.name, name, box_id, a.uidvalidity, a.uid,
                                   a.message_id, prepared.row.size, a.modseq)
        return [out[n] for n in range(len(items))]

    async def deliver(self, user: str, raw: bytes, *, mailbox: str = "INBOX",
                      flags: Iterable[str] = (), internaldate: dt.datetime | None = None,
                      claim_recent_in: int | None = None) -> Delivered:
        """Deliver ``raw`` to one mailbox of one user.

        :param claim_recent_in: when ``mailbox`` turns out to be the mailbox with this id,
            claim ``\\Recent`` for the caller in the delivery's own transaction (an
            APPEND to the mailbox a read-write IMAP4rev1 session has selected: the claim
            it would make next, without its round trip); ``Delivered.recent`` has the range.

        :raises NoSuchUser, NoSuchMailbox, OverQuota, Unavailable, MessageTooBig:
            nothing was committed.
        :raises director.errors.BlobUnavailable: too few object servers; nothing
            was committed.
        """
        self.check_size(len(raw))
        account, mailbox_row = await self.store.users.get_with_mailbox(user, mailbox)
        _check_quota(account, len(raw))
        prepared = await self.prepare(raw)
        await self.upload(prepared)
        return await self.commit(account, prepared, mailbox=mailbox_row.name, flags=flags,
                                 internaldate=internaldate, box=mailbox_row,
                                 claim_recent=mailbox_row.id == claim_recent_in)


def _check_quota(user: User, size: int) -> None:
    """Refuse early when the message cannot fit (the insert checks again, atomically)."""
    if user.quota_bytes and user.used_bytes + size > user.quota_bytes:
        raise OverQuota(user.used_bytes, user.quota_bytes, size)
    if user.quota_messages and user.message_count + 1 > user.quota_messages:
        raise OverQuota(user.message_count, user.quota_messages, 1, "MESSAGE")
