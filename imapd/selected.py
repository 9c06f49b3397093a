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
   skipping the session's own changes (it answered those already);
4. updating searches (RFC 5267, :mod:`imapd.contextsearch`): REMOVEFROM goes out before the
   EXPUNGE of a message a kept result holds, and after the steps above every kept search
   runs again when the mailbox or the announced messages changed, answered with
   REMOVEFROM/ADDTO (so an ADDTO of a new message follows its EXISTS).

Each step reads the mailbox row's watermark *before* the rows, so a change that commits in
between is at worst reported twice (harmless: the view filters expunges it already made,
and a repeated FLAGS is idempotent), never missed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from director.errors import BlobCorrupt, BlobNotFound, DirectorError
from imapd.backend import Backend
from imapd.bodies import BinaryAtt, BodyReader
from imapd.commands import (
    Copy,
    Fetch,
    Move,
    QResync,
    Search,
    SelectBase,
    Sort,
    SortKey,
    Store,
    StoreMode,
    Thread,
    ThreadAlgorithm,
    UidExpunge,
)
from imapd.connection import Connection
from imapd.contextsearch import Context, Contexts, merged, ordered_set
from imapd.errors import MailboxGone, TryCreate
from imapd.fetch import FetchPlan, fetch_items, flag_names, plan_fetch
from imapd.fetchatts import BodySection
from imapd.mailboxview import MailboxView
from imapd.response import (
    CORRUPTION,
    UNAVAILABLE,
    CopyUid,
    ESearchData,
    Exists,
    FetchData,
    FetchModSeq,
    FetchNumber,
    HighestModSeq,
    ListItem,
    Modified,
    NoUpdate,
    PartialResult,
    PermanentFlags,
    Recent,
    Response,
    ResponseCode,
    SearchData,
    SortData,
    Status,
    Tagged,
    ThreadData,
    ThreadNode,
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
from imapd.searchkeys import SearchKey, uses_modseq
from imapd.searchmap import to_criterion
from imapd.sequence import MAX_NUMBER, SequenceSet
from imapd.threads import Node, inner_nodes, ordered_subject, references
from metadata.errors import NoSuchMailbox
from metadata.flags import SEEN, SYSTEM_FLAGS, Flags
from metadata.mailboxnames import DELIMITER
from metadata.messages import StoreMode as StoreModeName
from metadata.records import CopyResult, Mailbox, MessageEntry, User
from metadata.search import AllOf, Criterion, ModSeqAtLeast, UidIn
from metadata.uidset import MAX_UID, UidSet
from runtime import errors as kinds

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
#: What reading one message's body can fail with; FETCH returns the other messages.
_READ_FAILURES = (DirectorError, ValueError)
#: Of those, the failures retrying will not cure: the data is damaged or gone for good
#: (SkeletonError is a ValueError, like a damaged section map).
_LASTING = (BlobCorrupt, BlobNotFound, ValueError)


@dataclass
class Extensions:
    """Per-session switches that change response contents (RFC 7162 CONDSTORE/QRESYNC,
    RFC 9051 IMAP4rev2)."""

    condstore: bool = False
    qresync: bool = False
    #: ENABLE IMAP4rev2: no \\Recent (the session claims none, so no FETCH shows it and no
    #: RECENT is sent), SELECT answers LIST instead of UNSEEN, SEARCH answers ESEARCH.
    rev2: bool = False


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
        #: Updating searches (RFC 5267); they end with the selection.
        self.contexts = Contexts()
        #: What the kept searches were last run against (see :meth:`_contexts_mark`);
        #: None when they must run again at the next refresh.
        self._contexts_seen: tuple[int, int, int] | None = None

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
        if ext.rev2:
            pass  # IMAP4rev2 has no \Recent: claim none, leave them to rev1 sessions
        elif cmd.READ_ONLY:
            # EXAMINE must not take \Recent away from others: show what is unclaimed.
            if status.recent:
                view.recent.update(view.uids[-status.recent:])
        else:
            low, high = await store.messages.claim_recent(user.id, mailbox.id)
            view.claim_recent(low, high)
        view.keywords.update(mailbox.keywords)
        selected = cls(backend, user, view, ext)
        flags, permanent = selected._flag_lists()
        out: list[Response] = [flags, Exists(view.exists)]
        if not ext.rev2:
            out.append(Recent(len(view.recent)))
        if status.first_unseen_uid is not None and not ext.rev2:
            seq = view.seq_of(status.first_unseen_uid)
            if seq is not None:
                out.append(Untagged(Status.OK, f"First unseen message is {seq}", Unseen(seq)))
        out += [
            permanent,
            Untagged(Status.OK, "UIDs valid", UidValidity(mailbox.uidvalidity)),
            Untagged(Status.OK, "Predicted next UID", UidNext(mailbox.uidnext)),
            Untagged(Status.OK, "Highest", HighestModSeq(mailbox.highestmodseq)),
        ]
        if ext.rev2:
            # RFC 9051 6.3.2: the mailbox's LIST response, its name as the server spells it
            # and its attributes accurate (the name as a pattern can only match more).
            listed = [item for item in await store.mailboxes.list(user.id, mailbox.name)
                      if item.name == mailbox.name]
            attributes = tuple(a for a in listed[0].attributes if a != "\\Subscribed") \
                if listed else _select_attributes(mailbox)
            out.append(ListItem(mailbox.name, attributes, DELIMITER))
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
        # A keyword new to the mailbox is announced before anything that may show it.
        out: list[Response] = self._keyword_news(mailbox.keywords)
        if allow_expunge and mailbox.highestmodseq > view.expunge_modseq:
            if not view.only_own_since(view.expunge_modseq, mailbox.highestmodseq):
                gone = await store.messages.vanished(self.user.id, view.mailbox_id,
                                                     view.expunge_modseq)
                out += self.expunged(gone)
            view.expunge_modseq = mailbox.highestmodseq
        announced_next = view.uidnext
        if mailbox.uidnext > view.uidnext:
            out += await self._announce_new(mailbox.uidnext)
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
        if self.contexts:
            mark = self._contexts_mark(mailbox.highestmodseq)
            if mark != self._contexts_seen:
                updates, kept_up = await self._update_contexts(
                    None if self._contexts_seen is None else self._contexts_seen[0])
                out += updates
                self._contexts_seen = mark if kept_up else None
                pending = pending or not kept_up
        return out, pending

    def appended(self, added: Sequence[tuple[int, int, Flags]]) -> list[Response] | None:
        """EXISTS (and RECENT) for the session's own APPEND of ``added`` (UID, mod-sequence,
        flags of each, in order) without re-reading the mailbox, or None when a refresh
        must: the mailbox row and the new entries are known from the insert itself when
        nobody else took a UID or a mod-sequence in between (the UIDs follow the view's
        UIDNEXT one by one and every mod-sequence since the watermarks is the session's
        own).  A change another session makes later has a later mod-sequence and reaches
        the session through the change feed as usual.  ``\\Recent`` was claimed by the
        insert itself (``Session._append``), which recorded the range in the view."""
        view = self.view
        if self.contexts:
            return None  # kept searches (CONTEXT=SEARCH) are updated by the refresh
        if not added or any(uid != view.uidnext + i for i, (uid, _m, _f) in enumerate(added)):
            return None
        modseqs = [modseq for _uid, modseq, _flags in added]
        if 0 in modseqs or modseqs != list(range(modseqs[0], modseqs[0] + len(modseqs))):
            return None
        last = modseqs[-1]
        view.own_modseqs.update(modseqs)
        if not (view.only_own_since(view.flags_modseq, last)
                and view.only_own_since(view.expunge_modseq, last)):
            return None
        out = self._keyword_news(k for _u, _m, flags in added for k in flags.keywords)
        count = view.add(uid for uid, _m, _f in added)
        view.uidnext = added[-1][0] + 1
        view.flags_modseq = view.expunge_modseq = last
        view.forget_own()
        if count:
            out.append(Exists(view.exists))
            if not self.ext.rev2:
                out.append(Recent(len(view.recent)))
        return out

    def _contexts_mark(self, highestmodseq: int) -> tuple[int, int, int]:
        """What a kept search's result depends on besides ``$``: the mailbox's mod-sequence
        (flags, expunges, deliveries all raise it) and the announced messages (sequence
        numbers, ``*``), which change when EXISTS or EXPUNGE is sent."""
        return highestmodseq, self.view.exists, self.view.max_uid

    async def _update_contexts(self, since: int | None) -> tuple[list[Response], bool]:
        """Bring every kept search up to date; REMOVEFROM/ADDTO for what changed, and
        NOUPDATE for a search that can no longer be kept.  Also returns False when
        PostgreSQL could not answer (the rest is retried at the next refresh; nothing is
        lost).

        :param since: the mailbox mod-sequence the kept results are current to (None:
            unknown, every search runs whole).  A message changed after it has a higher
            mod-sequence, one delivered too; the mailbox row was read before, so a change
            committing meanwhile is looked at again next time, never missed.
        """
        out: list[Response] = []
        changed: list[int] | None = None
        for context in self.contexts:
            try:
                if context.by_data and since is not None:
                    if changed is None:
                        changed = await self._changed_since(since)
                    if context.keys is None:
                        new = await self._context_merged(context, changed)
                    else:
                        new = await self._sorted_if_moved(context, changed)
                else:
                    new = await self._context_result(context)
            except kinds.Unavailable as exc:
                log.warning("cannot update the search %r: %s", context.tag, exc)
                return out, False
            except kinds.InvalidInput as exc:
                # e.g. a sequence number the mailbox no longer has: the search would fail.
                self.contexts.drop(context.tag)
                out.append(Untagged(Status.NO, f"Search can no longer be updated: {exc}",
                                    NoUpdate(context.tag)))
                continue
            if len(new) > self.contexts.max_kept:
                self.contexts.drop(context.tag)
                out.append(Untagged(Status.NO, "Result too large to keep updated",
                                    NoUpdate(context.tag)))
                continue
            update = self.contexts.changes(context, new, self._seq)
            if update is not None:
                out.append(update)
        return out, True

    async def _changed_since(self, modseq: int) -> list[int]:
        """The announced messages whose mod-sequence passed ``modseq``."""
        hits = await self.backend.store.messages.search(
            self.user.id, self.view.mailbox_id, ModSeqAtLeast(modseq + 1))
        return [u for u in hits.uids if u in self.view]

    async def _matching(self, context: Context, changed: list[int]) -> set[int]:
        """Which of the ``changed`` messages match the criteria of ``context`` now."""
        criterion = AllOf((to_criterion(context.criteria, self.view),
                           UidIn(UidSet.from_uids(changed))))
        hits = await self.backend.store.messages.search(
            self.user.id, self.view.mailbox_id, criterion)
        return {u for u in hits.uids if u in self.view}

    async def _context_merged(self, context: Context, changed: list[int]) -> list[int]:
        """The result of a SEARCH ``context`` by message data now: only ``changed`` is
        searched."""
        if not changed:
            return list(context.uids)
        return merged(context.uids, changed, await self._matching(context, changed))

    async def _sorted_if_moved(self, context: Context, changed: list[int]) -> list[int]:
        """The result of a SORT ``context`` by message data now: sort keys never change
        after delivery, so the order moves only when a changed message entered or left
        the result; only then does the SORT run again whole."""
        if not changed:
            return list(context.uids)
        held = set(changed).intersection(context.uids)
        if await self._matching(context, changed) == held:
            return list(context.uids)
        return await self._context_result(context)

    async def _context_result(self, context: Context) -> list[int]:
        """The UIDs the unmodified searching command of ``context`` would return now."""
        if context.keys is None:
            criterion = to_criterion(context.criteria, self.view)
            hits = await self.backend.store.messages.search(
                self.user.id, self.view.mailbox_id, criterion)
            return [u for u in hits.uids if u in self.view]
        found, _ = await self._sorted(context.criteria, context.keys)
        return [uid for uid, _ in found]

    def _seq(self, uid: int) -> int:
        seq = self.view.seq_of(uid)
        if seq is None:  # every result is announced (the module docstring says why)
            raise AssertionError(f"UID {uid} of a kept search is not announced")
        return seq

    async def _announce_new(self, uidnext: int) -> list[Response]:
        """EXISTS and RECENT for the messages from the view's UIDNEXT to ``uidnext``."""
        store = self.backend.store
        view = self.view
        entries = await store.messages.fetch(
            self.user.id, view.mailbox_id, UidSet.of([(view.uidnext, min(uidnext - 1, MAX_UID))]))
        out = self._keyword_news(k for e in entries for k in e.flags.keywords)
        added = view.add(e.uid for e in entries)
        view.uidnext = max(view.uidnext, uidnext)
        if not view.read_only and not self.ext.rev2:
            low, high = await store.messages.claim_recent(self.user.id, view.mailbox_id)
            view.claim_recent(low, high)
        if added:
            out.append(Exists(view.exists))
            if not self.ext.rev2:
                out.append(Recent(len(view.recent)))
        return out

    def _flag_lists(self) -> tuple[FlagsResponse, Untagged]:
        """FLAGS and the PERMANENTFLAGS OK: the system flags and every keyword announced
        (read-write: any new keyword may be created, ``\\*``)."""
        names = (*_SYSTEM_NAMES, *sorted(self.view.keywords))
        permanent = () if self.view.read_only else (*names, "\\*")
        return (FlagsResponse(names),
                Untagged(Status.OK, "Flags permitted", PermanentFlags(permanent)))

    def _keyword_news(self, keywords: Iterable[str]) -> list[Response]:
        """FLAGS and PERMANENTFLAGS again when ``keywords`` holds one the client was not
        told of: it must hear of a keyword before a FETCH shows it (RFC 3501 7.2.6).
        Announced keywords are never taken back."""
        known = self.view.keywords
        fresh = [k for k in keywords if k not in known]
        if not fresh:
            return []
        known.update(fresh)
        return list(self._flag_lists())

    def _flag_news(self, seq: int, uid: int, flags: Flags, modseq: int) -> list[Response]:
        out = self._keyword_news(flags.keywords)
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
        # A kept search loses them first, while their sequence numbers are valid.
        out: list[Response] = list(self.contexts.expunged(present, self._seq))
        if self.ext.qresync:
            self.view.remove(present)
            return [*out, Vanished(SequenceSet.from_values(present))]
        return out + [ExpungeResponse(seq) for seq in self.view.remove(present)]

    def is_own_change(self, kind: str, uidnext: int | None, modseq: int | None) -> bool:
        """Whether a notification only reports what this session did or already knows."""
        if kind == "append":
            return uidnext is not None and uidnext <= self.view.uidnext
        if kind in ("flags", "expunge") and modseq is not None:
            # At or below a watermark it was reported already (the session's own
            # mod-sequences are forgotten once the watermarks pass them, and their
            # notification may arrive later than that).
            watermark = self.view.flags_modseq if kind == "flags" else self.view.expunge_modseq
            return modseq in self.view.own_modseqs or modseq <= watermark
        return False

    # -- FETCH ---------------------------------------------------------------------------------

    async def fetch(self, cmd: Fetch, conn: Connection) -> Tagged:
        """FETCH / UID FETCH, streamed in batches as the client reads them."""
        if cmd.vanished and not self.ext.qresync:
            return Tagged(cmd.tag, Status.BAD, "VANISHED needs ENABLE QRESYNC")
        plan = plan_fetch(cmd.attributes, uid=cmd.uid, changedsince=cmd.changedsince)
        if cmd.changedsince is not None:
            self.ext.condstore = True
        store = self.backend.store
        view = self.view
        pairs = view.resolve(cmd.sequence, uid=cmd.uid)
        if cmd.vanished and cmd.changedsince is not None:
            requested = (UidSet.from_uids(view.saved) if cmd.sequence.saved
                         else UidSet.of(cmd.sequence.resolve(max(view.uidnext - 1, 1))))
            gone = await store.messages.vanished(self.user.id, view.mailbox_id,
                                                 cmd.changedsince, requested)
            if gone:
                conn.send([Vanished(SequenceSet.from_values(gone), earlier=True)])
        if not pairs:
            return Tagged(cmd.tag, Status.OK, f"{cmd.display_name} completed")
        marks_seen = plan.sets_seen and not view.read_only
        batch = BODY_BATCH if plan.bodies else META_BATCH
        failed: dict[int, Exception] = {}
        for chunk in _chunks(pairs, batch):
            seqs = {uid: seq for seq, uid in chunk}
            entries = await store.messages.fetch(self.user.id, view.mailbox_id,
                                                 view.uid_set(chunk), items=plan.items,
                                                 changed_since=cmd.changedsince)
            bodies: dict[tuple[int, BodySection], bytes] = {}
            binaries: dict[tuple[int, BinaryAtt], bytes | int] = {}
            if plan.bodies or plan.binaries:
                bodies, binaries, lost = await self._read_bodies(entries, plan)
                if lost:
                    failed.update(lost)
                    entries = [e for e in entries if e.uid not in lost]
            seen_now: set[int] = set()
            if marks_seen:
                # \Seen goes only on what is returned, once it could be read.
                entries, seen_now = await self._mark_seen(entries)
            out: list[Response] = self._keyword_news(
                k for e in entries for k in e.flags.keywords)
            out += [FetchData(seqs[e.uid], fetch_items(
                plan, e, bodies, recent=e.uid in view.recent, add_flags=e.uid in seen_now,
                binaries=binaries))
                for e in entries]
            conn.send(out)
            await conn.drain()
        if failed:
            return _fetch_failure(cmd, failed)
        return Tagged(cmd.tag, Status.OK, f"{cmd.display_name} completed")

    async def _read_bodies(self, entries: Sequence[MessageEntry], plan: FetchPlan,
                           ) -> tuple[dict[tuple[int, BodySection], bytes],
                                      dict[tuple[int, BinaryAtt], bytes | int],
                                      dict[int, Exception]]:
        """The body sections and BINARY items of ``entries``, and the messages that could
        not be read (by UID): when the batch fails, each message is read alone, so one
        unreadable message does not hide the others."""
        reader = self.reader
        try:
            return (await reader.read(entries, plan.bodies),
                    await reader.read_binary(entries, plan.binaries), {})
        except _READ_FAILURES as exc:
            if len(entries) == 1:
                return {}, {}, {entries[0].uid: exc}
        bodies: dict[tuple[int, BodySection], bytes] = {}
        binaries: dict[tuple[int, BinaryAtt], bytes | int] = {}
        lost: dict[int, Exception] = {}
        for entry in entries:
            try:
                bodies.update(await reader.read([entry], plan.bodies))
                binaries.update(await reader.read_binary([entry], plan.binaries))
            except _READ_FAILURES as exc:
                lost[entry.uid] = exc
        return bodies, binaries, lost

    async def _mark_seen(self, entries: list[MessageEntry],
                         ) -> tuple[list[MessageEntry], set[int]]:
        """Set \\Seen on ``entries``; return them with their new flags (and mod-sequence)
        and the UIDs that changed.  No query when all are seen already."""
        unseen = [e.uid for e in entries if not e.flags.system & SEEN]
        if not unseen:
            return entries, set()
        view = self.view
        result = await self.backend.store.messages.store_flags(
            self.user.id, view.mailbox_id, UidSet.from_uids(unseen), "add", Flags(SEEN))
        if result.modseq is None:
            return entries, set()
        view.own_modseqs.add(result.modseq)
        states = {st.uid: st for st in result.states if st.uid in result.changed}
        updated = [dataclasses.replace(e, flags=states[e.uid].flags,
                                       modseq=states[e.uid].modseq)
                   if e.uid in states else e for e in entries]
        return updated, set(states)

    # -- STORE ---------------------------------------------------------------------------------

    async def store(self, cmd: Store, conn: Connection) -> Tagged:
        """STORE / UID STORE, with CONDSTORE UNCHANGEDSINCE."""
        if self.view.read_only:
            return Tagged(cmd.tag, Status.NO, "Mailbox is read-only")
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
        out = self._keyword_news(k for st in result.states for k in st.flags.keywords)
        changed = set(result.changed)
        refused = set(result.modified)
        # .SILENT leaves out what the client asked for, but not what another session did
        # to these messages since this one last heard (RFC 3501 6.4.6): the STORE gave
        # them this session's own mod-sequence, which the refresh skips, so their flags
        # are sent now when anyone else changed anything since the flag watermark.
        masking = (cmd.silent and result.modseq is not None
                   and not view.only_own_since(view.flags_modseq, result.modseq - 1))
        for state in result.states:
            seq = view.seq_of(state.uid)
            if seq is None or state.uid in refused:
                continue
            items: list[ResponseItem] = []
            if cmd.uid:
                items.append(FetchNumber("UID", state.uid))
            if cmd.silent and not (masking and state.uid in changed):
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
        """SEARCH / UID SEARCH, answered by PostgreSQL (full text included), with ESEARCH
        return options (RFC 4731), SEARCHRES's SAVE (RFC 5182) and RFC 5267's CONTEXT,
        UPDATE and PARTIAL."""
        options = cmd.return_options
        saving = options is not None and "SAVE" in options
        if options is not None and "UPDATE" in options and cmd.tag in self.contexts:
            return Tagged(cmd.tag, Status.BAD, "Tag reuse: an updating search has this tag")
        try:
            criterion = to_criterion(cmd.criteria, self.view)
            with_modseq = uses_modseq(cmd.criteria)
            if with_modseq:
                self.ext.condstore = True
            hits = await self.backend.store.messages.search(self.user.id, self.view.mailbox_id,
                                                             criterion)
        except BaseException:
            if saving:
                # A failed SEARCH ... SAVE leaves $ empty (RFC 5182 2.1).
                self.save([])
            raise
        view = self.view
        # Messages this session has not been told about yet are left out.
        found = [(u, m) for u, m in zip(hits.uids, hits.modseqs, strict=True) if u in view]
        if options is None and self.ext.rev2:
            options = ()  # RFC 9051 6.4.4: SEARCH answers ESEARCH, as RETURN () would
        if options is None:
            numbers = [u if cmd.uid else view.seq_of(u) or 0 for u, _ in found]
            conn.send([SearchData(tuple(numbers), hits.highest_modseq if with_modseq else None)])
            return Tagged(cmd.tag, Status.OK, f"{cmd.display_name} completed")
        number = self._numberer(cmd.uid)
        response = _esearch(cmd.tag, cmd.uid, options, cmd.partial, found, number,
                            with_modseq, ordered=False)
        if saving:
            self.save(_saved(options, cmd.partial, found))
        note = self._keep(cmd.tag, cmd.uid, cmd.criteria, None, found, options, conn)
        if response is not None:
            conn.send([response])
        return Tagged(cmd.tag, Status.OK, f"{cmd.display_name} completed{note}")

    def save(self, uids: list[int]) -> None:
        """Make ``uids`` the saved result ``$`` (RFC 5182); a kept search using ``$`` runs
        again at the next refresh."""
        self.view.saved = uids
        self._contexts_seen = None

    def _numberer(self, uid: bool) -> Callable[[int], int]:
        if uid:
            return lambda u: u
        return lambda u: self.view.seq_of(u) or 0

    def _keep(self, tag: str, uid: bool, criteria: SearchKey,
              keys: tuple[tuple[SortKey, bool], ...] | None, found: Sequence[tuple[int, int]],
              options: tuple[str, ...], conn: Connection) -> str:
        """Keep the result of a ``RETURN (UPDATE)`` search, or refuse with NOUPDATE (RFC
        5267 4.3.1; the other return options are answered all the same).  Returns what
        the tagged OK adds."""
        if "UPDATE" not in options:
            return ""
        refusal = self.contexts.refusal(len(found))
        if refusal is not None:
            conn.send([Untagged(Status.NO, refusal, NoUpdate(tag))])
            return ", will not notify"
        self.contexts.add(Context.of(tag, uid, criteria, keys, (u for u, _ in found)))
        # Run the kept searches again at the next refresh: a change may have committed
        # since the query, and its notification may already have been judged.
        self._contexts_seen = None
        return ", will notify"

    # -- SORT / THREAD ------------------------------------------------------------------------

    def _criterion(self, criteria: SearchKey) -> tuple[Criterion, bool]:
        """``criteria`` for the store, and whether they use MODSEQ (which turns CONDSTORE
        on)."""
        with_modseq = uses_modseq(criteria)
        if with_modseq:
            self.ext.condstore = True
        return to_criterion(criteria, self.view), with_modseq

    async def _sorted(self, criteria: SearchKey, keys: Sequence[tuple[SortKey, bool]],
                      ) -> tuple[list[tuple[int, int]], bool]:
        """``(uid, modseq)`` of the announced entries matching ``criteria`` in the order of
        ``keys`` (PostgreSQL orders: one query, no message read), and whether the
        criteria use MODSEQ."""
        criterion, with_modseq = self._criterion(criteria)
        found = await self.backend.store.messages.sort_order(
            self.user.id, self.view.mailbox_id, criterion,
            [(key.value, reverse) for key, reverse in keys])
        seqs = self.view.seq_numbers()
        return [f for f in found if f[0] in seqs], with_modseq

    async def sort(self, cmd: Sort, conn: Connection) -> Tagged:
        """SORT / UID SORT (RFC 5256, RFC 5957 DISPLAY keys); with ``RETURN (...)``
        answered by ESEARCH (RFC 5267 ESORT, CONTEXT=SORT)."""
        options = cmd.return_options
        if options is not None and "UPDATE" in options and cmd.tag in self.contexts:
            return Tagged(cmd.tag, Status.BAD, "Tag reuse: an updating search has this tag")
        found, with_modseq = await self._sorted(cmd.criteria, cmd.keys)
        if options is None:
            modseq = max((m for _, m in found), default=None) if with_modseq else None
            if cmd.uid:
                numbers = tuple(u for u, _ in found)
            else:
                seqs = self.view.seq_numbers()
                numbers = tuple(seqs[u] for u, _ in found)
            conn.send([SortData(numbers, modseq)])
            return Tagged(cmd.tag, Status.OK, f"{cmd.display_name} completed")
        response = _esearch(cmd.tag, cmd.uid, options, cmd.partial, found,
                            self._numberer(cmd.uid), with_modseq, ordered=True)
        note = self._keep(cmd.tag, cmd.uid, cmd.criteria, cmd.keys, found, options, conn)
        if response is not None:
            conn.send([response])
        return Tagged(cmd.tag, Status.OK, f"{cmd.display_name} completed{note}")

    async def thread(self, cmd: Thread, conn: Connection) -> Tagged:
        """THREAD / UID THREAD (RFC 5256 ORDEREDSUBJECT and REFERENCES) over the keys the
        algorithm reads, fetched in one query."""
        criterion, _ = self._criterion(cmd.criteria)
        links = cmd.algorithm is ThreadAlgorithm.REFERENCES
        entries = await self.backend.store.messages.thread_entries(
            self.user.id, self.view.mailbox_id, criterion, links=links)
        seqs = self.view.seq_numbers()
        entries = [e for e in entries if e.uid in seqs]
        roots = references(entries) if links else ordered_subject(entries)
        if cmd.uid:
            seqs = {e.uid: e.uid for e in entries}

        # Bottom up, without recursion (a thread can be thousands of replies deep): each
        # member's ThreadNode is made after its children's.
        made: dict[int, ThreadNode] = {}

        def render(level: list[Node]) -> tuple[ThreadNode, ...]:
            return tuple([made.pop(id(node)) if node.children  # most members are leaves
                          else ThreadNode(None if node.entry is None else seqs[node.entry.uid])
                          for node in level])

        for node in reversed(inner_nodes(roots)):
            entry = node.entry
            made[id(node)] = ThreadNode(None if entry is None else seqs[entry.uid],
                                        render(node.children))
        conn.send([ThreadData(render(roots))])
        return Tagged(cmd.tag, Status.OK, f"{cmd.display_name} completed")

    # -- COPY / MOVE / EXPUNGE -----------------------------------------------------------------

    async def _target(self, name: str) -> int:
        try:
            return (await self.backend.store.mailboxes.get(self.user.id, name)).id
        except NoSuchMailbox:
            raise TryCreate(f"no mailbox {name!r}") from None

    async def _transfer(self, cmd: Copy | Move) -> tuple[list[tuple[int, int]], int]:
        """The messages COPY or MOVE names and the id of its target mailbox."""
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
        result = await self.backend.store.messages.move(self.user.id, self.view.mailbox_id,
                                                        self.view.uid_set(pairs), target)
        if result.expunged.modseq is not None:
            self.view.own_modseqs.add(result.expunged.modseq)
        copied = result.copied
        if copied.source_uids:
            conn.send([Untagged(Status.OK, "Moved", _copy_uid(copied))])
        conn.send(self.expunged(result.expunged.uids))
        if target == self.view.mailbox_id and copied.dest_uids:
            # A move within the mailbox (RFC 6851 allows it): the copies are new messages.
            # Their mod-sequence (the expunge's minus one, same transaction) is our own.
            if result.expunged.modseq is not None:
                self.view.own_modseqs.add(result.expunged.modseq - 1)
            conn.send(await self._announce_new(copied.dest_uids[-1] + 1))
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


def _select_attributes(mailbox: Mailbox) -> tuple[str, ...]:
    """The attributes of a selected mailbox's LIST response (RFC 9051 6.3.2): its
    SPECIAL-USE, if any (children are LIST's business, and a client asks LIST for them)."""
    return (mailbox.special_use,) if mailbox.special_use else ()


def _fetch_failure(cmd: Fetch, failed: dict[int, Exception]) -> Tagged:
    """The tagged NO of a FETCH that returned what it could read: CORRUPTION when a
    message's data is damaged or gone for good, else UNAVAILABLE (worth retrying)."""
    uids = SequenceSet.from_values(sorted(failed))
    lasting = [e for e in failed.values() if isinstance(e, _LASTING)]
    for uid, exc in failed.items():
        log.log(logging.ERROR if isinstance(exc, _LASTING) else logging.WARNING,
                "FETCH of mailbox entry UID %d failed: %s", uid, exc)
    if lasting:
        return Tagged(cmd.tag, Status.NO, f"Message data is corrupt or lost (UID {uids})",
                      CORRUPTION)
    return Tagged(cmd.tag, Status.NO, f"Some messages could not be read now (UID {uids}), "
                  "try again", UNAVAILABLE)


#: Return options that ask for no result data themselves.
_NOT_RESULTS = frozenset({"SAVE", "CONTEXT", "UPDATE"})


def _esearch(tag: str, uid: bool, options: tuple[str, ...], partial: tuple[int, int] | None,
             found: Sequence[tuple[int, int]], number: Callable[[int], int],
             with_modseq: bool, *, ordered: bool) -> ESearchData | None:
    """The ESEARCH response to ``SEARCH RETURN (options)`` (RFC 4731 3.1) or ``SORT RETURN
    (options)`` (RFC 5267 3.1): ``RETURN ()`` is ``ALL``, MIN/MAX/ALL are left out when
    nothing matched, and ``SAVE`` alone answers nothing (RFC 5182 2.4).  ``CONTEXT`` and
    ``UPDATE`` ask for no data: ``UPDATE`` without a result option answers an ESEARCH with
    none (the updates follow), ``CONTEXT`` alone is ``ALL``, as Dovecot does.  ``found`` holds ``(uid, modseq)`` in mailbox order,
    or for SORT (``ordered``) in the requested order, where MIN and MAX are the first and
    last sorted message and ALL keeps the order.  ``PARTIAL low:high`` returns results
    ``low`` to ``high`` (1 is the first; RFC 5267 4.4)."""
    wanted = set(options) - _NOT_RESULTS
    if not wanted:
        if "SAVE" in options:
            return None
        if "UPDATE" in options:
            return ESearchData(tag, uid)
        wanted = {"ALL"}
    numbers = [number(u) for u, _ in found]
    low = numbers[0] if numbers and "MIN" in wanted else None
    high = numbers[-1] if numbers and "MAX" in wanted else None
    window: PartialResult | None = None
    if partial is not None:
        first, last = sorted(partial)
        part = numbers[first - 1:last]
        window = PartialResult(first, last, _number_set(part, ordered) if part else None)
    modseq: int | None = None
    if with_modseq and found:
        # With only MIN/MAX the mod-sequence is theirs, else that of every match (RFC 7162
        # 3.1.10).
        if wanted <= {"MIN", "MAX"}:
            returned = ([found[0][1]] if "MIN" in wanted else []) + (
                [found[-1][1]] if "MAX" in wanted else [])
            modseq = max(returned)
        else:
            modseq = max(m for _, m in found)
    return ESearchData(
        tag, uid, low, high,
        len(numbers) if "COUNT" in wanted else None,
        _number_set(numbers, ordered) if numbers and "ALL" in wanted else None,
        modseq, window)


def _number_set(numbers: Sequence[int], ordered: bool) -> SequenceSet:
    return ordered_set(numbers) if ordered else SequenceSet.from_values(numbers)


def _saved(options: tuple[str, ...], partial: tuple[int, int] | None,
           found: Sequence[tuple[int, int]]) -> list[int]:
    """The UIDs SAVE keeps: just the MIN and/or MAX message when those are the only other
    options (RFC 5182 2.4), the PARTIAL window when one was asked for (what the command
    returned), else every match."""
    others = set(options) - _NOT_RESULTS
    uids = [u for u, _ in found]
    if partial is not None:
        first, last = sorted(partial)
        return uids[first - 1:last]
    if uids and others and others <= {"MIN", "MAX"}:
        return sorted({uids[0] if "MIN" in others else uids[-1],
                       uids[-1] if "MAX" in others else uids[0]})
    return uids


def _copy_uid(result: CopyResult) -> CopyUid:
    """UIDPLUS's COPYUID code for a copy (RFC 4315 3)."""
    return CopyUid(result.uidvalidity, SequenceSet.from_values(result.source_uids),
                   SequenceSet.from_values(result.dest_uids))
