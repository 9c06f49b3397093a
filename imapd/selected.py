"""The selected state: one mailbox, its commands, and other sessions' changes.

Theory of operation
-------------------
:meth:`SelectedMailbox.open` reads the mailbox row first (UIDNEXT ``N``, HIGHESTMODSEQ ``H``)
and then its UIDs, keeping only those below ``N``: the session announces exactly the
messages below ``N`` and treats everything after ``H`` as news, so a delivery racing with
SELECT is announced later by EXISTS, never lost and never doubled.

Other sessions' changes (same or another imapd process) arrive as PostgreSQL notifications
(:mod:`metadata.notify`); the session marks itself dirty and, when IMAP allows untagged data,
calls :meth:`SelectedMailbox.refresh`, which re-reads only what moved since its watermarks
(:class:`~imapd.mailboxview.MailboxView`):

1. expunges: the tombstones after ``expunge_modseq`` (only when EXPUNGE may be sent: not
   during FETCH, STORE or SEARCH, RFC 3501 7.4.1), as EXPUNGE or, with QRESYNC, VANISHED;
2. new messages: UIDs from ``uidnext`` to the mailbox's UIDNEXT, as EXISTS (and RECENT);
3. flag changes: entries whose mod-sequence passed ``flags_modseq``, as FETCH (FLAGS),
   skipping the session's own changes (it answered those already).

Each step reads the mailbox row's watermark *before* the rows, so a change that commits in
between is at worst reported twice (harmless: the view filters expunges it already made,
and a repeated FLAGS is idempotent), never missed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from imapd.backend import Backend
from imapd.bodies import BodyReader
from imapd.commands import (
    Copy,
    Fetch,
    Move,
    QResync,
    Search,
    SelectBase,
    Store,
    StoreMode,
    UidExpunge,
)
from imapd.connection import Connection
from imapd.errors import MailboxGone, TryCreate
from imapd.fetch import Unsupported, fetch_items, flag_names, plan_fetch
from imapd.mailboxview import MailboxView
from imapd.response import (
    CopyUid,
    Exists,
    FetchData,
    FetchModSeq,
    FetchNumber,
    HighestModSeq,
    Modified,
    PermanentFlags,
    Recent,
    Response,
    ResponseCode,
    SearchData,
    Status,
    Tagged,
    UidNext,
    UidValidity,
    Unseen,
    Untagged,
    Vanished,
)
from imapd.response import Expunge as ExpungeResponse
from imapd.response import FetchFlags as FetchFlagsItem
from imapd.response import FetchItem as ResponseItem
from imapd.response import Flags as FlagsResponse
from imapd.searchkeys import uses_modseq
from imapd.searchmap import to_criterion
from imapd.sequence import MAX_NUMBER, SequenceSet
from metadata.errors import NoSuchMailbox
from metadata.flags import SEEN, SYSTEM_FLAGS, Flags
from metadata.messages import StoreMode as StoreModeName
from metadata.records import CopyResult, User
from metadata.uidset import MAX_UID, UidSet

__all__ = ["Extensions", "MailboxGone", "SelectedMailbox", "TryCreate"]

log = logging.getLogger(__name__)

#: Entries read per query while answering FETCH: small when bodies are read (memory),
#: larger for metadata only (round trips).
BODY_BATCH = 32
META_BATCH = 500

_STORE_MODES: dict[StoreMode, StoreModeName] = {
    StoreMode.ADD: "add",
    StoreMode.REMOVE: "remove",
    StoreMode.REPLACE: "replace",
}
_SYSTEM_NAMES = tuple(SYSTEM_FLAGS.values())


@dataclass
class Extensions:
    """Per-session switches that change response contents (RFC 7162 CONDSTORE/QRESYNC)."""

    condstore: bool = False
    qresync: bool = False


def _chunks(pairs: Sequence[tuple[int, int]], size: int) -> Iterable[Sequence[tuple[int, int]]]:
    for start in range(0, len(pairs), size):
        yield pairs[start:start + size]


def _uid_set(uids: Iterable[int]) -> UidSet:
    return UidSet.from_uids(uids)


class SelectedMailbox:
    """A mailbox selected by one session (see the module docstring)."""

    def __init__(self, backend: Backend, user: User, view: MailboxView,
                 ext: Extensions) -> None:
        self.backend = backend
        self.user = user
        self.view = view
        self.ext = ext
        self.reader = BodyReader(backend.blobs)

    @property
    def mailbox_id(self) -> int:
        return self.view.mailbox_id

    # -- SELECT / EXAMINE ------------------------------------------------------------------

    @classmethod
    async def open(cls, backend: Backend, user: User, cmd: SelectBase, ext: Extensions,
                   ) -> tuple[SelectedMailbox, list[Response]]:
        """Select ``cmd.mailbox``; return the mailbox and the untagged SELECT data.

        :raises NoSuchMailbox: there is no such selectable mailbox.
        """
        store = backend.store
        status = await store.mailboxes.status(user.id, cmd.mailbox)
        mailbox = status.mailbox
        uids = [u for u in await store.messages.uids(user.id, mailbox.id)
                if u < mailbox.uidnext]
        view = MailboxView(mailbox.id, mailbox.name, mailbox.uidvalidity, uids,
                           uidnext=mailbox.uidnext, highestmodseq=mailbox.highestmodseq,
                           read_only=cmd.READ_ONLY)
        if cmd.READ_ONLY:
            # EXAMINE must not take \Recent away from others: show what is unclaimed.
            if status.recent:
                view.recent.update(view.uids[-status.recent:])
        else:
            low, high = await store.messages.claim_recent(user.id, mailbox.id)
            view.claim_recent(low, high)
        selected = cls(backend, user, view, ext)
        out: list[Response] = [
            FlagsResponse(_SYSTEM_NAMES),
            Exists(view.exists),
            Recent(len(view.recent)),
        ]
        if status.first_unseen_uid is not None:
            seq = view.seq_of(status.first_unseen_uid)
            if seq is not None:
                out.append(Untagged(Status.OK, f"First unseen message is {seq}", Unseen(seq)))
        permanent = () if cmd.READ_ONLY else (*_SYSTEM_NAMES, "\\*")
        out += [
            Untagged(Status.OK, "Flags permitted", PermanentFlags(permanent)),
            Untagged(Status.OK, "UIDs valid", UidValidity(mailbox.uidvalidity)),
            Untagged(Status.OK, "Predicted next UID", UidNext(mailbox.uidnext)),
            Untagged(Status.OK, "Highest", HighestModSeq(mailbox.highestmodseq)),
        ]
        if cmd.qresync is not None and cmd.qresync.uidvalidity == mailbox.uidvalidity:
            out += await selected._resync(cmd.qresync)
        return selected, out

    async def _resync(self, qresync: QResync) -> list[Response]:
        """QRESYNC (RFC 7162 3.2.5): what vanished and what changed since the client's
        mod-sequence."""
        store = self.backend.store
        known = None
        if qresync.known_uids is not None:
            known = UidSet.of(qresync.known_uids.resolve(MAX_NUMBER))
        out: list[Response] = []
        gone = await store.messages.vanished(self.user.id, self.mailbox_id, qresync.modseq,
                                             known)
        if gone:
            out.append(Vanished(SequenceSet.from_values(gone), earlier=True))
        if self.view.uids:
            changed = await store.messages.fetch(
                self.user.id, self.mailbox_id, _uid_set(self.view.uids),
                changed_since=qresync.modseq)
            for entry in changed:
                seq = self.view.seq_of(entry.uid)
                if seq is not None:
                    out.append(FetchData(seq, (
                        FetchNumber("UID", entry.uid),
                        FetchFlagsItem(flag_names(entry.flags, entry.uid in self.view.recent)),
                        FetchModSeq(entry.modseq))))
        return out

    # -- other sessions' changes ---------------------------------------------------------

    async def refresh(self, *, allow_expunge: bool) -> tuple[list[Response], bool]:
        """Untagged responses for what changed since the view's watermarks.

        :returns: the responses, and whether expunges are still to be reported (they were
            not allowed now).
        :raises MailboxGone: the mailbox was deleted or recreated.
        """
        store = self.backend.store
        view = self.view
        try:
            mailbox = await store.mailboxes.get_by_id(self.user.id, view.mailbox_id)
        except NoSuchMailbox:
            raise MailboxGone("the selected mailbox was deleted") from None
        if mailbox.noselect or mailbox.uidvalidity != view.uidvalidity:
            raise MailboxGone("the selected mailbox was deleted")
        out: list[Response] = []
        if allow_expunge and mailbox.highestmodseq > view.expunge_modseq:
            if not view.only_own_since(view.expunge_modseq, mailbox.highestmodseq):
                gone = await store.messages.vanished(self.user.id, view.mailbox_id,
                                                     view.expunge_modseq)
                out += self.expunged(gone)
            view.expunge_modseq = mailbox.highestmodseq
        announced_next = view.uidnext
        if mailbox.uidnext > view.uidnext:
            entries = await store.messages.fetch(
                self.user.id, view.mailbox_id,
                UidSet.of([(view.uidnext, min(mailbox.uidnext - 1, MAX_UID))]))
            added = view.add(e.uid for e in entries)
            view.uidnext = mailbox.uidnext
            if not view.read_only:
                low, high = await store.messages.claim_recent(self.user.id, view.mailbox_id)
                view.claim_recent(low, high)
            if added:
                out += [Exists(view.exists), Recent(len(view.recent))]
        if mailbox.highestmodseq > view.flags_modseq:
            if (announced_next > 1 and view.uids
                    and not view.only_own_since(view.flags_modseq, mailbox.highestmodseq)):
                changed = await store.messages.fetch(
                    self.user.id, view.mailbox_id, UidSet.of([(1, announced_next - 1)]),
                    changed_since=view.flags_modseq)
                for entry in changed:
                    seq = view.seq_of(entry.uid)
                    if seq is None or entry.modseq in view.own_modseqs:
                        continue
                    out.extend(self._flag_news(seq, entry.uid, entry.flags, entry.modseq))
            view.flags_modseq = mailbox.highestmodseq
            view.forget_own()
        pending = mailbox.highestmodseq > view.expunge_modseq
        return out, pending

    def _flag_news(self, seq: int, uid: int, flags: Flags, modseq: int) -> list[Response]:
        out: list[Response] = []
        new_keywords = set(flags.keywords) - self.view.keywords
        if new_keywords:
            self.view.keywords |= new_keywords
            out.append(FlagsResponse((*_SYSTEM_NAMES, *sorted(self.view.keywords))))
        items: list[ResponseItem] = [
            FetchNumber("UID", uid),
            FetchFlagsItem(flag_names(flags, uid in self.view.recent)),
        ]
        if self.ext.condstore:
            items.append(FetchModSeq(modseq))
        out.append(FetchData(seq, tuple(items)))
        return out

    def expunged(self, uids: Iterable[int]) -> list[Response]:
        """Forget expunged UIDs and say so: EXPUNGE per message, or one VANISHED."""
        present = [u for u in uids if u in self.view]
        if not present:
            return []
        if self.ext.qresync:
            self.view.remove(present)
            return [Vanished(SequenceSet.from_values(present))]
        return [ExpungeResponse(seq) for seq in self.view.remove(present)]

    def is_own_change(self, kind: str, uidnext: int | None, modseq: int | None) -> bool:
        """Whether a notification only reports what this session did or already knows."""
        if kind == "append":
            return uidnext is not None and uidnext <= self.view.uidnext
        if kind in ("flags", "expunge") and modseq is not None:
            return modseq in self.view.own_modseqs or (
                kind == "flags" and modseq <= self.view.flags_modseq)
        return False

    # -- FETCH ---------------------------------------------------------------------------------

    async def fetch(self, cmd: Fetch, conn: Connection) -> Tagged:
        """FETCH / UID FETCH, streamed in batches as the client reads them."""
        if cmd.vanished and not self.ext.qresync:
            return Tagged(cmd.tag, Status.BAD, "VANISHED needs ENABLE QRESYNC")
        if cmd.sequence.saved:
            raise Unsupported("$ (SEARCHRES) is not supported")
        plan = plan_fetch(cmd.attributes, uid=cmd.uid, changedsince=cmd.changedsince)
        if cmd.changedsince is not None:
            self.ext.condstore = True
        store = self.backend.store
        view = self.view
        pairs = view.resolve(cmd.sequence, uid=cmd.uid)
        if cmd.vanished and cmd.changedsince is not None:
            requested = UidSet.of(cmd.sequence.resolve(max(view.uidnext - 1, 1)))
            gone = await store.messages.vanished(self.user.id, view.mailbox_id,
                                                 cmd.changedsince, requested)
            if gone:
                conn.send([Vanished(SequenceSet.from_values(gone), earlier=True)])
        if not pairs:
            return Tagged(cmd.tag, Status.OK, f"{cmd.display_name} completed")
        seen_now: set[int] = set()
        if plan.sets_seen and not view.read_only:
            result = await store.messages.store_flags(self.user.id, view.mailbox_id,
                                                      view.uid_set(pairs), "add", Flags(SEEN))
            if result.modseq is not None:
                view.own_modseqs.add(result.modseq)
            seen_now = set(result.changed)
        batch = BODY_BATCH if plan.bodies else META_BATCH
        for chunk in _chunks(pairs, batch):
            seqs = {uid: seq for seq, uid in chunk}
            entries = await store.messages.fetch(self.user.id, view.mailbox_id,
                                                 view.uid_set(chunk), items=plan.items,
                                                 changed_since=cmd.changedsince)
            bodies = await self.reader.read(entries, plan.bodies) if plan.bodies else {}
            conn.send([FetchData(seqs[e.uid], fetch_items(
                plan, e, bodies, recent=e.uid in view.recent, add_flags=e.uid in seen_now))
                for e in entries])
            await conn.drain()
        return Tagged(cmd.tag, Status.OK, f"{cmd.display_name} completed")

    # -- STORE ---------------------------------------------------------------------------------

    async def store(self, cmd: Store, conn: Connection) -> Tagged:
        """STORE / UID STORE, with CONDSTORE UNCHANGEDSINCE."""
        if self.view.read_only:
            return Tagged(cmd.tag, Status.NO, "Mailbox is read-only")
        if cmd.sequence.saved:
            raise Unsupported("$ (SEARCHRES) is not supported")
        flags = Flags.from_names(cmd.flags)
        if cmd.unchangedsince is not None:
            self.ext.condstore = True
        view = self.view
        pairs = view.resolve(cmd.sequence, uid=cmd.uid)
        if not pairs:
            return Tagged(cmd.tag, Status.OK, f"{cmd.display_name} completed")
        result = await self.backend.store.messages.store_flags(
            self.user.id, view.mailbox_id, view.uid_set(pairs), _STORE_MODES[cmd.mode], flags,
            unchanged_since=cmd.unchangedsince)
        if result.modseq is not None:
            view.own_modseqs.add(result.modseq)
        out: list[Response] = []
        new_keywords = set(flags.keywords) - view.keywords
        if new_keywords and cmd.mode is not StoreMode.REMOVE:
            view.keywords |= new_keywords
            out.append(FlagsResponse((*_SYSTEM_NAMES, *sorted(view.keywords))))
        changed = set(result.changed)
        refused = set(result.modified)
        for state in result.states:
            seq = view.seq_of(state.uid)
            if seq is None or state.uid in refused:
                continue
            items: list[ResponseItem] = []
            if cmd.uid:
                items.append(FetchNumber("UID", state.uid))
            if cmd.silent:
                if not (self.ext.condstore and state.uid in changed):
                    continue
            else:
                items.append(FetchFlagsItem(flag_names(state.flags, state.uid in view.recent)))
            if self.ext.condstore:
                items.append(FetchModSeq(state.modseq))
            out.append(FetchData(seq, tuple(items)))
        conn.send(out)
        code: ResponseCode | None = None
        if result.modified:
            ids = result.modified if cmd.uid else [
                s for s in (view.seq_of(u) for u in result.modified) if s is not None]
            if ids:
                code = Modified(SequenceSet.from_values(ids))
        text = "Conditional STORE failed" if code is not None else f"{cmd.display_name} completed"
        return Tagged(cmd.tag, Status.OK, text, code)

    # -- SEARCH --------------------------------------------------------------------------------

    async def search(self, cmd: Search, conn: Connection) -> Tagged:
        """SEARCH / UID SEARCH, answered by PostgreSQL (full text included)."""
        if cmd.return_options is not None:
            raise Unsupported("SEARCH RETURN (ESEARCH) is not supported")
        criterion = to_criterion(cmd.criteria, self.view)
        with_modseq = uses_modseq(cmd.criteria)
        if with_modseq:
            self.ext.condstore = True
        hits = await self.backend.store.messages.search(self.user.id, self.view.mailbox_id,
                                                         criterion)
        view = self.view
        if cmd.uid:
            numbers = [u for u in hits.uids if u in view]
        else:
            numbers = [s for s in (view.seq_of(u) for u in hits.uids) if s is not None]
        conn.send([SearchData(tuple(numbers), hits.highest_modseq if with_modseq else None)])
        return Tagged(cmd.tag, Status.OK, f"{cmd.display_name} completed")

    # -- COPY / MOVE / EXPUNGE -----------------------------------------------------------------

    async def _target(self, name: str) -> int:
        try:
            return (await self.backend.store.mailboxes.get(self.user.id, name)).id
        except NoSuchMailbox:
            raise TryCreate(f"no mailbox {name!r}") from None

    async def _transfer(self, cmd: Copy | Move) -> tuple[list[tuple[int, int]], int]:
        """The messages COPY or MOVE names and the id of its target mailbox."""
        if cmd.sequence.saved:
            raise Unsupported("$ (SEARCHRES) is not supported")
        pairs = self.view.resolve(cmd.sequence, uid=cmd.uid)
        return pairs, await self._target(cmd.mailbox)

    async def copy(self, cmd: Copy, conn: Connection) -> Tagged:
        """COPY / UID COPY with UIDPLUS COPYUID."""
        pairs, target = await self._transfer(cmd)
        if not pairs:
            return Tagged(cmd.tag, Status.OK, f"{cmd.display_name} completed")
        result = await self.backend.store.messages.copy(self.user.id, self.view.mailbox_id,
                                                        self.view.uid_set(pairs), target)
        code: ResponseCode | None = _copy_uid(result) if result.source_uids else None
        return Tagged(cmd.tag, Status.OK, f"{cmd.display_name} completed", code)

    async def move(self, cmd: Move, conn: Connection) -> Tagged:
        """MOVE / UID MOVE (RFC 6851): COPYUID untagged, then the expunges."""
        if self.view.read_only:
            return Tagged(cmd.tag, Status.NO, "Mailbox is read-only")
        pairs, target = await self._transfer(cmd)
        if not pairs:
            return Tagged(cmd.tag, Status.OK, f"{cmd.display_name} completed")
        if target == self.view.mailbox_id:
            return Tagged(cmd.tag, Status.NO, "Cannot move a message into its own mailbox")
        result = await self.backend.store.messages.move(self.user.id, self.view.mailbox_id,
                                                        self.view.uid_set(pairs), target)
        if result.expunged.modseq is not None:
            self.view.own_modseqs.add(result.expunged.modseq)
        copied = result.copied
        if copied.source_uids:
            conn.send([Untagged(Status.OK, "Moved", _copy_uid(copied))])
        conn.send(self.expunged(result.expunged.uids))
        return Tagged(cmd.tag, Status.OK, f"{cmd.display_name} completed")

    async def expunge(self, tag: str, conn: Connection, cmd: UidExpunge | None = None,
                      *, silent: bool = False) -> Tagged:
        """EXPUNGE, UID EXPUNGE (UIDPLUS), or CLOSE's silent expunge."""
        if self.view.read_only:
            if silent:
                return Tagged(tag, Status.OK, "Close completed")
            return Tagged(tag, Status.NO, "Mailbox is read-only")
        uids: UidSet | None = None
        if cmd is not None:
            if cmd.uids.saved:
                raise Unsupported("$ (SEARCHRES) is not supported")
            uids = self.view.uid_set(self.view.resolve(cmd.uids, uid=True))
            if not uids:
                return Tagged(tag, Status.OK, "Expunge completed")
        result = await self.backend.store.messages.expunge(self.user.id, self.view.mailbox_id,
                                                           uids)
        if result.modseq is not None:
            self.view.own_modseqs.add(result.modseq)
        if silent:
            return Tagged(tag, Status.OK, "Close completed")
        conn.send(self.expunged(result.uids))
        name = "UID EXPUNGE" if cmd is not None else "EXPUNGE"
        return Tagged(tag, Status.OK, f"{name} completed")


def _copy_uid(result: CopyResult) -> CopyUid:
    """UIDPLUS's COPYUID code for a copy (RFC 4315 3)."""
    return CopyUid(result.uidvalidity, SequenceSet.from_values(result.source_uids),
                   SequenceSet.from_values(result.dest_uids))
