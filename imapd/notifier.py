"""One session's NOTIFY (RFC 5465) at run time: what it heard and has not told yet.

Theory of operation
-------------------
A session hears every change to its user's mailboxes on the process's change feed
(:class:`metadata.notify.ChangeListener`, PostgreSQL LISTEN/NOTIFY, subscribed at login).
Once NOTIFY SET is in force, the session also hands each change to :meth:`Notifier.heard`,
which reads nothing: it records *which* mailbox moved (a set of ids), or that the mailbox
list or the subscriptions changed (two flags), and says whether a push is worth scheduling.
The push calls :meth:`Notifier.flush`, which reads the current state once for everything
recorded -- the STATUS of every changed mailbox the filters cover (one statement for them
all), the mailbox list diffed against the last one seen (LIST; ``OLDNAME`` for a rename,
``\\NonExistent`` for a deletion), the subscriptions diffed likewise -- and returns the
untagged responses.

So nothing polls: a session costs nothing until its user's mailboxes change, a notification
is a hint to re-read rather than the data, twenty deliveries to one mailbox between two
pushes become one STATUS, and what waits is bounded by the number of mailboxes, not of
changes.  The selected mailbox is not this module's: the session reports it as IMAP4rev1
does (EXISTS, EXPUNGE, FETCH), only sooner.

Overflow (RFC 5465 5.8): more than ``max_pending`` mailboxes waiting (a client that does not
read while deliveries pour in) or a gap in the feed (the listener reconnected and says
``resync``: notifications may be lost) ends NOTIFY with ``* OK [NOTIFICATIONOVERFLOW]``;
the client re-reads what it shows and sets NOTIFY again.
"""

from __future__ import annotations

from dataclasses import dataclass

from imapd.notify import (
    FLAG_CHANGE,
    MAILBOX_NAME,
    MESSAGE_EVENTS,
    MESSAGE_EXPUNGE,
    MESSAGE_NEW,
    SUBSCRIPTION_CHANGE,
    NotifySpec,
)
from imapd.response import NOTIFICATIONOVERFLOW, ListItem, Response, Status, StatusData, Untagged
from imapd.selected import Extensions
from metadata.mailboxnames import DELIMITER
from metadata.notify import Change
from metadata.store import MetadataStore

__all__ = ["MAX_PENDING", "Notifier"]

#: Mailboxes with unreported changes before NOTIFY gives up with NOTIFICATIONOVERFLOW.
MAX_PENDING = 1000

#: The change feed's kinds that are message events, and which.
_EVENT_OF_KIND = {"append": MESSAGE_NEW, "expunge": MESSAGE_EXPUNGE, "flags": FLAG_CHANGE}


@dataclass(frozen=True)
class _Known:
    """A mailbox as the client last heard of it."""

    name: str
    noselect: bool


class Notifier:
    """One session's NOTIFY SET (see the module docstring).

    :param ext: the session's switches (STATUS carries HIGHESTMODSEQ once CONDSTORE is on).
    """

    def __init__(self, store: MetadataStore, user_id: int, spec: NotifySpec, ext: Extensions,
                 *, max_pending: int = MAX_PENDING) -> None:
        self.store = store
        self.user_id = user_id
        self.spec = spec
        self.ext = ext
        self.max_pending = max_pending
        self._known: dict[int, _Known] = {}
        self._subscribed: frozenset[str] = frozenset()
        self._sent: dict[int, tuple[tuple[str, int], ...]] = {}
        self._pending: set[int] = set()
        self._names_changed = False
        self._subscriptions_changed = False
        self._overflow_told = False
        #: NOTIFY ended itself (NOTIFICATIONOVERFLOW): the session drops the notifier.
        self.overflowed = False

    async def start(self, selected_id: int | None, *, status: bool) -> list[Response]:
        """Read the mailboxes and subscriptions the changes will be compared with; with
        ``status`` (``NOTIFY SET STATUS``), the STATUS of every mailbox whose message
        events were asked for, the selected one excepted."""
        await self._read_names()
        await self._read_subscriptions()
        if not status:
            return []
        return await self._statuses([
            mailbox_id for mailbox_id, known in self._known.items()
            if mailbox_id != selected_id and not known.noselect
            and self.spec.events_for(known.name, self._subscribed) & MESSAGE_EVENTS])

    def heard(self, change: Change, selected_id: int | None) -> bool:
        """Record ``change`` (never blocks, never reads); True when a push should run."""
        if self.overflowed:
            return False
        event = _EVENT_OF_KIND.get(change.kind)
        if event is not None:
            mailbox_id = change.mailbox_id
            if mailbox_id is None or mailbox_id == selected_id or not self.spec.wants(event):
                return False
            known = self._known.get(mailbox_id)
            if known is not None and event not in self.spec.events_for(known.name,
                                                                       self._subscribed):
                return False
            self._pending.add(mailbox_id)
            if len(self._pending) > self.max_pending:
                self._overflow()
            return True
        if change.kind == "mailbox":
            # Read the list again even when MailboxName was not asked for: the filters
            # by name must follow renames.
            self._names_changed = True
            return self.spec.wants(MAILBOX_NAME)
        if change.kind == "subscription":
            self._subscriptions_changed = True  # the SUBSCRIBED filter follows them too
            return self.spec.wants(SUBSCRIPTION_CHANGE)
        if change.kind == "resync":
            self._overflow()
            return True
        return False

    async def flush(self, selected_id: int | None) -> list[Response]:
        """The responses for everything recorded since the last flush.

        :raises Unavailable: PostgreSQL could not be read; what was recorded stays, for
            the next flush.
        """
        if self.overflowed:
            if self._overflow_told:
                return []
            self._overflow_told = True
            return [Untagged(Status.OK, "Too many changes, NOTIFY is off: read the "
                             "mailboxes again and set NOTIFY anew", NOTIFICATIONOVERFLOW)]
        out: list[Response] = []
        if self._names_changed:
            out += await self._diff_names()
            self._names_changed = False
        if self._subscriptions_changed:
            out += await self._diff_subscriptions()
            self._subscriptions_changed = False
        # Every changed mailbox in one statement; should it fail, they all stay pending.
        wanted = sorted(self._pending - {selected_id} if selected_id is not None
                        else self._pending)
        out += await self._statuses(wanted)
        self._pending.difference_update(wanted)
        return out

    # -- reading -------------------------------------------------------------------------

    def _overflow(self) -> None:
        self.overflowed = True
        self._pending.clear()

    def _watching(self, name: str, event: str) -> bool:
        return event in self.spec.events_for(name, self._subscribed)

    async def _statuses(self, mailbox_ids: list[int]) -> list[Response]:
        """STATUS of each changed mailbox (RFC 5465 5.2-5.4), read in one statement, when
        the client asked for its message events and something it shows moved (none of the
        items is \\Recent, so only the mailbox rows are read)."""
        if not mailbox_ids:
            return []
        found = await self.store.mailboxes.statuses(self.user_id, mailbox_ids, recent=False)
        out: list[Response] = []
        for mailbox_id in mailbox_ids:
            st = found.get(mailbox_id)
            if st is None:  # deleted or \Noselect meanwhile
                self._sent.pop(mailbox_id, None)
                continue
            name = st.mailbox.name
            if not self.spec.events_for(name, self._subscribed) & MESSAGE_EVENTS:
                continue
            items: tuple[tuple[str, int], ...] = (
                ("MESSAGES", st.messages), ("UIDNEXT", st.uidnext),
                ("UIDVALIDITY", st.uidvalidity), ("UNSEEN", st.unseen))
            if self.ext.condstore:
                items += (("HIGHESTMODSEQ", st.highestmodseq),)
            if self._sent.get(mailbox_id) == items:
                continue
            self._sent[mailbox_id] = items
            out.append(StatusData(name, items))
        return out

    async def _read_names(self) -> dict[int, _Known]:
        before = self._known
        listed = await self.store.mailboxes.list(self.user_id, "*")
        self._known = {item.mailbox.id: _Known(item.name, item.mailbox.noselect)
                       for item in listed if item.mailbox is not None}
        return before

    async def _read_subscriptions(self) -> frozenset[str]:
        before = self._subscribed
        listed = await self.store.mailboxes.list(self.user_id, "*", subscribed_only=True)
        self._subscribed = frozenset(item.name for item in listed
                                     if "\\Subscribed" in item.attributes)
        return before

    async def _diff_names(self) -> list[Response]:
        """LIST for each mailbox created, renamed, deleted or made ``\\Noselect`` since the
        last look (RFC 5465 5.4), under a filter that asked for MailboxName."""
        before = await self._read_names()
        now = self._known
        out: list[Response] = []
        for mailbox_id, known in now.items():
            old = before.get(mailbox_id)
            attrs = ("\\Noselect",) if known.noselect else ()
            if old is None:
                if self._watching(known.name, MAILBOX_NAME):
                    out.append(ListItem(known.name, attrs, DELIMITER))
            elif old.name != known.name:
                if self._watching(known.name, MAILBOX_NAME) or self._watching(old.name,
                                                                             MAILBOX_NAME):
                    out.append(ListItem(known.name, attrs, DELIMITER, old_name=old.name))
                self._sent.pop(mailbox_id, None)  # its STATUS now goes by the new name
            elif old.noselect != known.noselect and self._watching(known.name, MAILBOX_NAME):
                out.append(ListItem(known.name, attrs, DELIMITER))
        for mailbox_id in before.keys() - now.keys():
            self._sent.pop(mailbox_id, None)
            old = before[mailbox_id]
            if self._watching(old.name, MAILBOX_NAME):
                out.append(ListItem(old.name, ("\\NonExistent",), DELIMITER))
        return out

    async def _diff_subscriptions(self) -> list[Response]:
        """LIST with or without ``\\Subscribed`` for each name subscribed or unsubscribed
        since the last look (RFC 5465 5.5)."""
        before = await self._read_subscriptions()
        now = self._subscribed
        either = before | now
        out: list[Response] = []
        for name in sorted(now - before):
            if SUBSCRIPTION_CHANGE in self.spec.events_for(name, either):
                out.append(ListItem(name, ("\\Subscribed",), DELIMITER))
        for name in sorted(before - now):
            if SUBSCRIPTION_CHANGE in self.spec.events_for(name, either):
                out.append(ListItem(name, (), DELIMITER))
        return out
