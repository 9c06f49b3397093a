"""One IMAP session: the state machine and an async handler per command.

Theory of operation
-------------------
States (RFC 3501 3)::

    NOT_AUTHENTICATED --LOGIN/AUTHENTICATE--> AUTHENTICATED --SELECT/EXAMINE--> SELECTED
           |                                      ^    |                        |
           |                                      |    +--------LOGOUT----------+--> LOGOUT
           +--------------------LOGOUT------------|-----------------------------+
                                   CLOSE/UNSELECT/failed SELECT

The adapter (:mod:`imapd.server`) hands over one event at a time, in order, and waits for
:meth:`Session.dispatch` to finish before it reads the next: a command, or the raw line
that ends IDLE or answers a SASL challenge.  Each handler sends its untagged responses
through the :class:`~imapd.connection.Connection` and returns the tagged completion, which
``dispatch`` sends after reporting other sessions' changes, when IMAP allows them.

Changes made elsewhere arrive on the process's :class:`~metadata.notify.ChangeListener`
(subscribed at login, for the user): the callback only marks the session dirty; the
selected mailbox re-reads what moved (:meth:`SelectedMailbox.refresh`) at the end of the
next command, or at once while the client IDLEs.  One asyncio lock serialises commands and
those background refreshes, so responses never interleave.

Every failure of a command reaches :meth:`Session._guard`, which answers it through the
one IMAP error map (:func:`imapd.errormap.imap_error`): PostgreSQL or the object servers
unreachable is ``NO [UNAVAILABLE]``, corrupt stored data ``NO [CORRUPTION]``, a client
mistake BAD, a bug ``NO [SERVERBUG]`` with the traceback logged; the session survives all
of them.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import task

from imapd import commands as c
from imapd import listing, quota
from imapd.backend import Backend
from imapd.bodies import BodyReader
from imapd.capabilities import ENABLEABLE, capabilities
from imapd.catenate import BadUrl, catenate, parse_url
from imapd.config import ImapdConfig
from imapd.connection import Connection
from imapd.errormap import imap_error, log_failure
from imapd.logins import LIMITED_TEXT, LoginsLimited, authenticate
from imapd.mutf7 import Undecodable
from imapd.notifier import Notifier
from imapd.notify import SUPPORTED, Notify, NotifySpec
from imapd.parser import AuthResponse, ContinuationNeeded, IdleDone
from imapd.response import (
    AUTHENTICATIONFAILED,
    AUTHORIZATIONFAILED,
    CANNOT,
    CLOSED,
    NONEXISTENT,
    NOPERM,
    PRIVACYREQUIRED,
    READ_ONLY,
    READ_WRITE,
    UNAVAILABLE,
    AppendUid,
    BadEvent,
    CapabilityCode,
    CapabilityData,
    Challenge,
    Code,
    Continuation,
    Enabled,
    IdData,
    ListItem,
    NamespaceData,
    QuotaData,
    QuotaRootData,
    Response,
    Status,
    StatusData,
    Tagged,
    Untagged,
)
from imapd.sasl import ProxyRefused, SaslError, decode_plain
from imapd.selected import Extensions, MailboxGone, SelectedMailbox, TryCreate
from imapd.sequence import SequenceSet
from metadata.errors import (
    NoSuchMailbox,
)
from metadata.flags import DELETED, Flags
from metadata.mailboxes import SPECIAL_USES
from metadata.mailboxnames import DELIMITER
from metadata.notify import Change
from metadata.records import MailboxStatus, User
from metadata.uidset import UidSet
from runtime import errors as kinds

__all__ = ["MAX_BAD_COMMANDS", "MAX_FAILED_LOGINS", "SERVER_ID", "Session", "State"]

log = logging.getLogger(__name__)

#: What ID (RFC 2971) tells clients.
SERVER_ID = (("name", "objmail"), ("vendor", "objmail"), ("support-url", None))
#: Failed logins before the server hangs up.
MAX_FAILED_LOGINS = 5
#: Consecutive BAD answers before the server hangs up on a client that sends garbage.
MAX_BAD_COMMANDS = 20
#: RFC 4978's answer to a second COMPRESS.
COMPRESSIONACTIVE = Code("COMPRESSIONACTIVE")


class State(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


_ANY = frozenset(State) - {State.LOGOUT}
_NOT_AUTH = frozenset({State.NOT_AUTHENTICATED})
_AUTH = frozenset({State.AUTHENTICATED, State.SELECTED})
_SELECTED = frozenset({State.SELECTED})

# Commands during which EXPUNGE must not be sent (RFC 3501 7.4.1): sequence numbers in
# their answers would become ambiguous.
_NO_EXPUNGE = (c.Fetch, c.Store, c.Search, c.Sort, c.Thread)

_Handler = Callable[[Any], Awaitable[Tagged | None]]

#: The commands that name mailboxes (see :func:`_undecodable`).
_NAMING = (c.SelectBase, c.Create, c.Delete, c.Rename, c.Subscribe, c.Unsubscribe, c.List,
           c.Lsub, c.Status, c.Append, c.Copy, c.Move, c.GetQuotaRoot)


def _undecodable(cmd: c.Command) -> bool:
    """Whether ``cmd`` names a mailbox (or LIST pattern) that is not modified UTF-7."""
    for value in vars(cmd).values():
        if isinstance(value, Undecodable) or (
                isinstance(value, tuple) and any(isinstance(v, Undecodable) for v in value)):
            return True
    return False


class Session:
    """One connection's IMAP session (see the module docstring)."""

    def __init__(self, backend: Backend, conn: Connection) -> None:
        self.backend = backend
        self.conn = conn
        self.state = State.NOT_AUTHENTICATED
        self.user: User | None = None
        self.selected: SelectedMailbox | None = None
        self.ext = Extensions()
        self._lock = asyncio.Lock()
        self._dirty = False
        #: A command is running: changes to the selected mailbox wait in ``_heard``.
        self._running = False
        self._heard: list[Change] = []
        self._idle_tag: str | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self._search_task: asyncio.Task[Tagged] | None = None
        #: NOTIFY SET in force (RFC 5465), and the task telling the client between commands.
        self.notifier: Notifier | None = None
        self._push_task: asyncio.Task[None] | None = None
        self._push_again = False
        self._failed_logins = 0
        self._bad_in_a_row = 0
        self._subscribed = False
        self._compressing = False
        self._handlers: dict[type[c.Command], tuple[frozenset[State], _Handler]] = {
            c.Capability: (_ANY, self._capability),
            c.Noop: (_ANY, self._noop),
            c.Logout: (_ANY, self._logout),
            c.Id: (_ANY, self._id),
            c.StartTLS: (_NOT_AUTH, self._starttls),
            c.Login: (_NOT_AUTH, self._login),
            c.Authenticate: (_NOT_AUTH, self._authenticate),
            c.Enable: (_AUTH, self._enable),
            Notify: (_AUTH, self._notify),
            c.Select: (_AUTH, self._select),
            c.Examine: (_AUTH, self._select),
            c.Create: (_AUTH, self._create),
            c.Delete: (_AUTH, self._delete),
            c.Rename: (_AUTH, self._rename),
            c.Subscribe: (_AUTH, self._subscribe),
            c.Unsubscribe: (_AUTH, self._unsubscribe),
            c.List: (_AUTH, self._list),
            c.Lsub: (_AUTH, self._lsub),
            c.Status: (_AUTH, self._status),
            c.Append: (_AUTH, self._append),
            c.Namespace: (_AUTH, self._namespace),
            c.Idle: (_AUTH, self._idle),
            c.Compress: (_AUTH, self._compress),
            c.GetQuota: (_AUTH, self._getquota),
            c.GetQuotaRoot: (_AUTH, self._getquotaroot),
            c.SetQuota: (_AUTH, self._setquota),
            c.Check: (_SELECTED, self._noop),
            c.Close: (_SELECTED, self._close),
            c.Unselect: (_SELECTED, self._unselect),
            c.Expunge: (_SELECTED, self._expunge),
            c.UidExpunge: (_SELECTED, self._uid_expunge),
            c.Search: (_SELECTED, self._search),
            c.Sort: (_SELECTED, self._sort),
            c.Thread: (_SELECTED, self._thread),
            c.CancelUpdate: (_SELECTED, self._cancelupdate),
            c.Fetch: (_SELECTED, self._fetch),
            c.Store: (_SELECTED, self._store),
            c.Copy: (_SELECTED, self._copy),
            c.Move: (_SELECTED, self._move),
        }

    # -- what the adapter calls ----------------------------------------------------------

    @property
    def config(self) -> ImapdConfig:
        return self.backend.config

    def capabilities(self) -> tuple[str, ...]:
        return capabilities(authenticated=self.user is not None, secure=self.conn.secure,
                            tls_available=self.conn.tls_available,
                            allow_plaintext_auth=self.config.allow_plaintext_auth)

    def greeting(self) -> Response:
        """The first line the client reads."""
        return Untagged(Status.OK, "objmail IMAP4rev1 server ready",
                        CapabilityCode(self.capabilities()))

    def literal_refusal(self, event: ContinuationNeeded) -> Response | None:
        """None to accept a synchronizing literal, else the refusal: no APPEND data is
        taken from a client that has not logged in."""
        if event.command == "APPEND" and self.state is State.NOT_AUTHENTICATED:
            if event.tag is None:  # the parser refuses these itself; be safe
                return Untagged(Status.BAD, "Log in first")
            return Tagged(event.tag, Status.NO, "Log in first")
        return None

    def bad_command(self, *, clears_saved: bool = False) -> bool:
        """Count a BAD (or BADCHARSET) answer from the parser; True when the client should
        be cut off.

        :param clears_saved: it was a failed ``SEARCH RETURN (SAVE)``, which empties ``$``.
        """
        if clears_saved and self.selected is not None:
            self.selected.save([])
        self._bad_in_a_row += 1
        return self._bad_in_a_row >= MAX_BAD_COMMANDS

    async def dispatch(self, event: c.Command | IdleDone | AuthResponse) -> None:
        """Handle one event from the parser, then report changes and complete it."""
        started = time.perf_counter()
        async with self._lock:
            self._running = True
            try:
                if isinstance(event, IdleDone):
                    tagged: Tagged | None = await self._idle_done(event)
                elif isinstance(event, AuthResponse):
                    tagged = await self._guard(event.tag, self._auth_response(event))
                else:
                    tagged = await self._command(event)
            finally:
                self._running = False
                self._settle_heard()
            if tagged is None:
                return
            # Updating searches (RFC 5267) follow this session's own changes too.
            if self.selected is not None and self.state is State.SELECTED and (
                    self._dirty or self.selected.contexts):
                allow = not isinstance(event, _NO_EXPUNGE) or getattr(event, "uid", False)
                await self._report_changes(allow_expunge=allow)
            if tagged.status is Status.BAD:
                if self.bad_command():
                    self.conn.send([tagged, Untagged(Status.BYE, "Too many invalid commands")])
                    self._end()
                    return
            else:
                self._bad_in_a_row = 0
            self.conn.send([tagged])
            self.backend.metrics.observe("imap", _command_name(event), tagged.status.value,
                                         time.perf_counter() - started)

    def connection_lost(self) -> None:
        """The client went away while a command may run: a SEARCH nobody will read is
        cancelled, and its PostgreSQL query with it (asyncpg cancels it on the server).
        Commands that write run to the end."""
        if self._search_task is not None:
            self._search_task.cancel()

    async def close(self) -> None:
        """The connection is gone: stop listening for changes."""
        self.state = State.LOGOUT
        self._idle_tag = None
        self.notifier = None
        if self._push_task is not None:
            self._push_task.cancel()
        if self._subscribed and self.user is not None:
            self._subscribed = False
            try:
                await self.backend.changes.unsubscribe(self.user.id, self._on_change)
            except Exception:  # the listener may be closing too
                log.debug("unsubscribe failed", exc_info=True)

    # -- dispatch --------------------------------------------------------------------------

    async def _command(self, cmd: c.Command) -> Tagged | None:
        states, handler = self._handlers[type(cmd)]
        if self.state not in states:
            return Tagged(cmd.tag, Status.BAD, self._wrong_state(cmd))
        if isinstance(cmd, _NAMING) and _undecodable(cmd):
            return self._no_such_name(cmd)
        if self.ext.rev2 and _asks_recent(cmd):
            return Tagged(cmd.tag, Status.BAD, "RECENT is not a STATUS item of IMAP4rev2")
        return await self._guard(cmd.tag, handler(cmd))

    def _no_such_name(self, cmd: c.Command) -> Tagged:
        """A command naming a mailbox in invalid modified UTF-7: no mailbox has that name,
        so LIST and LSUB find nothing and the others fail (SELECT unselects first)."""
        if isinstance(cmd, c.List | c.Lsub):
            return Tagged(cmd.tag, Status.OK, f"{cmd.NAME.capitalize()} completed")
        if isinstance(cmd, c.SelectBase):
            self._deselect()
        text = "Mailbox name is not valid modified UTF-7"
        if isinstance(cmd, c.Create | c.Rename):
            return Tagged(cmd.tag, Status.NO, text, CANNOT)
        return Tagged(cmd.tag, Status.NO, text, NONEXISTENT)

    def _wrong_state(self, cmd: c.Command) -> str:
        if self.state is State.NOT_AUTHENTICATED:
            return f"{cmd.display_name} needs you to log in first"
        if self.state is State.AUTHENTICATED and type(cmd) not in (
                c.StartTLS, c.Login, c.Authenticate):
            return f"{cmd.display_name} needs a selected mailbox"
        return f"{cmd.display_name} is not valid in the {self.state.value} state"

    async def _guard(self, tag: str, work: Awaitable[Tagged | None]) -> Tagged | None:
        """Run a handler; every failure becomes a tagged answer, never a dead session."""
        try:
            return await work
        except MailboxGone:
            self.conn.send([Untagged(Status.BYE, "The selected mailbox was deleted")])
            self._end()
            return None
        except Exception as exc:  # CancelledError is not one: it ends the session
            log_failure(log, exc, f"command of user {self._who()} from {self.conn.peer}")
            return imap_error(tag, exc)

    def _who(self) -> str:
        return self.user.name if self.user is not None else "-"

    def _end(self) -> None:
        self.state = State.LOGOUT
        self._idle_tag = None
        self.conn.close()

    # -- changes made elsewhere ------------------------------------------------------------

    def _on_change(self, change: Change) -> None:
        """ChangeListener callback: never blocks, never raises."""
        if self.state is State.LOGOUT:
            return
        selected = self.selected
        if self.notifier is not None and self.notifier.heard(
                change, selected.mailbox_id if selected is not None else None):
            self._schedule_push()
        if change.kind == "subscription":
            return  # nothing a selected mailbox shows
        if change.kind in ("flags", "expunge", "append"):
            if selected is None or change.mailbox_id != selected.mailbox_id:
                return
            if self._running:
                # The running command may have made this change: its notification can
                # arrive before the command records the mod-sequence as its own, and
                # judging it now would re-read the mailbox for nothing.
                self._heard.append(change)
                return
            if selected.is_own_change(change.kind, change.uidnext, change.modseq):
                return
        elif change.kind == "mailbox" and (selected is None or change.mailbox_id not in (
                None, selected.mailbox_id)):
            return
        self._mark_dirty()

    def _settle_heard(self) -> None:
        """Judge the changes heard while the command ran, now that it recorded its own."""
        heard, self._heard = self._heard, []
        selected = self.selected
        if selected is None or self.state is State.LOGOUT:
            return
        if any(change.mailbox_id == selected.mailbox_id and not selected.is_own_change(
                change.kind, change.uidnext, change.modseq) for change in heard):
            self._mark_dirty()

    def _mark_dirty(self) -> None:
        self._dirty = True
        if self._idle_tag is not None and (self._refresh_task is None
                                           or self._refresh_task.done()):
            self._refresh_task = asyncio.ensure_future(self._idle_refresh())
        elif self.notifier is not None and self.notifier.spec.selected_events:
            # NOTIFY SET (SELECTED ...): the client hears of it now, not at its next command.
            self._schedule_push()

    def _schedule_push(self) -> None:
        if self._push_task is None or self._push_task.done():
            self._push_again = False
            self._push_task = asyncio.ensure_future(self._push())
        else:
            # The running push may have read the state already: it goes round once more.
            self._push_again = True

    async def _push(self) -> None:
        """NOTIFY: send what the notifier and the selected mailbox have to tell, between
        commands or during IDLE (a running command finishes first: the lock)."""
        while await self._push_once() and self._push_again:
            self._push_again = False

    async def _push_once(self) -> bool:
        """One round of :meth:`_push`; False when there is nothing more to do."""
        # A client that does not read holds the push here, not the lock; meanwhile the
        # notifier only grows to its bound (then NOTIFICATIONOVERFLOW).
        await self.conn.drain()
        async with self._lock:
            notifier = self.notifier
            if notifier is None or self.state is State.LOGOUT:
                return False
            selected = self.selected
            try:
                if selected is not None and self._dirty and notifier.spec.selected_events:
                    # SELECTED sends expunges at once; SELECTED-DELAYED keeps RFC 3501's
                    # rule (only while a command, IDLE, is in progress).
                    await self._report_changes(
                        allow_expunge=not notifier.spec.delayed or self._idle_tag is not None)
                out = await notifier.flush(selected.mailbox_id if selected is not None
                                           else None)
            except kinds.Unavailable as exc:
                log.warning("NOTIFY update failed for user %s: %s", self._who(), exc)
                return False  # what was heard stays recorded; the next change retries
            except Exception:
                log.exception("NOTIFY update failed for user %s", self._who())
                return False
            if notifier.overflowed:
                self.notifier = None
            self.conn.send(out)
            return True

    async def _idle_refresh(self) -> None:
        async with self._lock:
            while self._dirty and self._idle_tag is not None and self.selected is not None:
                try:
                    await self._report_changes(allow_expunge=True)
                except Exception:
                    log.exception("IDLE update failed for user %s", self._who())
                    return

    async def _report_changes(self, *, allow_expunge: bool) -> None:
        selected = self.selected
        if selected is None:
            return
        self._dirty = False
        announced = selected.view.uidnext
        try:
            out, pending = await selected.refresh(allow_expunge=allow_expunge)
        except MailboxGone:
            self.conn.send([Untagged(Status.BYE, "The selected mailbox was deleted")])
            self._end()
            return
        except kinds.Unavailable as exc:
            # Nothing is lost: the watermarks did not move; the next command retries.
            log.warning("cannot read mailbox changes: %s", exc)
            self._dirty = True
            return
        if pending:
            self._dirty = True
            if (self.notifier is not None and self.notifier.spec.selected_events
                    and not self.notifier.spec.delayed):
                self._schedule_push()  # NOTIFY SELECTED: the held-back expunges go next
        self.conn.send(out)
        atts = self.notifier.spec.fetch_atts if self.notifier is not None else ()
        if atts and selected.view.uidnext > announced:
            # NOTIFY's MessageNew (RFC 5465 5.2): the new messages' requested attributes.
            new = [uid for uid in selected.view.uids if uid >= announced]
            if new:
                await selected.fetch(c.Fetch("notify", SequenceSet.from_values(new), atts,
                                             uid=True), self.conn)

    # -- any state -----------------------------------------------------------------------------

    async def _capability(self, cmd: c.Capability) -> Tagged:
        self.conn.send([CapabilityData(self.capabilities())])
        return Tagged(cmd.tag, Status.OK, "Capability completed")

    async def _noop(self, cmd: c.Noop | c.Check) -> Tagged:
        # NOOP is the client's poll, but the change feed already marked the session dirty
        # for every change made elsewhere: re-reading when it did not costs a query per
        # NOOP for nothing.  Only while the feed is down (notifications may be missed
        # until it reconnects and says resync) does NOOP look for itself.
        if self.selected is not None and not self.backend.changes.connected:
            self._dirty = True
        return Tagged(cmd.tag, Status.OK, f"{cmd.NAME} completed")

    async def _logout(self, cmd: c.Logout) -> None:
        self.conn.send([Untagged(Status.BYE, "Logging out"),
                        Tagged(cmd.tag, Status.OK, "Logout completed")])
        self._end()
        return None

    async def _id(self, cmd: c.Id) -> Tagged:
        if cmd.parameters:
            log.info("client %s identifies as %s", self.conn.peer,
                     ", ".join(f"{k}={v}" for k, v in cmd.parameters))
        self.conn.send([IdData(SERVER_ID)])
        return Tagged(cmd.tag, Status.OK, "ID completed")

    async def _enable(self, cmd: c.Enable) -> Tagged:
        enabled: list[str] = []
        for name in cmd.capabilities:
            if name not in ENABLEABLE:
                continue
            if name == "IMAP4REV2":
                # Not once a mailbox is selected (RFC 5161 3: ENABLE comes before SELECT):
                # its view already holds \Recent claims and rev1 answers.
                if (not self.ext.rev2 and self.selected is None
                        and "IMAP4rev2" in self.capabilities()):
                    self.ext.rev2 = True
                    # Mailbox names are UTF-8 from the next command on, both ways (RFC
                    # 9051 5.1; modified UTF-7 is rev1's, Appendix A).
                    self.conn.use_utf8_names()
                    enabled.append("IMAP4rev2")
            elif name == "QRESYNC" and not self.ext.qresync:
                self.ext.qresync = True
                self.ext.condstore = True
                enabled.append(name)
            elif name == "CONDSTORE" and "CONDSTORE" not in enabled:
                self.ext.condstore = True
                enabled.append(name)
        self.conn.send([Enabled(tuple(enabled))])
        return Tagged(cmd.tag, Status.OK, "Enabled")

    # -- not authenticated -----------------------------------------------------------------

    def _plaintext_ok(self) -> bool:
        return self.conn.secure or bool(self.config.allow_plaintext_auth)

    async def _starttls(self, cmd: c.StartTLS) -> Tagged | None:
        if self.conn.secure:
            return Tagged(cmd.tag, Status.BAD, "TLS is already active")
        if not self.conn.tls_available:
            return Tagged(cmd.tag, Status.NO, "TLS is not available")
        self.conn.send([Tagged(cmd.tag, Status.OK, "Begin TLS negotiation now")])
        self.conn.start_tls()
        return None

    async def _login(self, cmd: c.Login) -> Tagged | None:
        if not self._plaintext_ok():
            return Tagged(cmd.tag, Status.NO, "Log in over TLS (STARTTLS) only",
                          PRIVACYREQUIRED)
        return await self._password_login(cmd.tag, cmd.username, cmd.password)

    async def _authenticate(self, cmd: c.Authenticate) -> Tagged | None:
        if cmd.mechanism != "PLAIN":
            return Tagged(cmd.tag, Status.NO, f"Unsupported mechanism {cmd.mechanism[:20]}")
        if not self._plaintext_ok():
            return Tagged(cmd.tag, Status.NO, "Authenticate over TLS (STARTTLS) only",
                          PRIVACYREQUIRED)
        if cmd.initial_response is None:
            self.conn.send([Challenge(b"")])
            self.conn.start_authenticate(cmd.tag)
            return None
        return await self._plain(cmd.tag, cmd.initial_response)

    async def _auth_response(self, event: AuthResponse) -> Tagged | None:
        if event.data is None:
            return Tagged(event.tag, Status.BAD, "Authentication cancelled")
        return await self._plain(event.tag, event.data)

    async def _plain(self, tag: str, message: bytes) -> Tagged | None:
        try:
            credentials = decode_plain(message)
        except ProxyRefused:
            self.backend.metrics.login("imap", False)  # a refused login all the same
            return Tagged(tag, Status.NO, "Acting as another user is not allowed",
                          AUTHORIZATIONFAILED)
        except SaslError as exc:
            return Tagged(tag, Status.BAD, f"Invalid PLAIN message: {exc}")
        return await self._password_login(tag, credentials.username, credentials.password)

    async def _password_login(self, tag: str, name: str, password: str) -> Tagged | None:
        try:
            user = await authenticate(self.backend.store.users, self.backend.logins,
                                      self.conn.peer, name, password)
        except LoginsLimited:
            return await self._login_failed(name, Tagged(tag, Status.NO, LIMITED_TEXT,
                                                         UNAVAILABLE))
        return await self._logged_in(tag, user, name)

    async def _login_failed(self, name: str, answer: Tagged) -> Tagged | None:
        self.backend.metrics.login("imap", False)
        self._failed_logins += 1
        log.warning("failed login for %r from %s (%d): %s", name[:100], self.conn.peer,
                    self._failed_logins, answer.text)
        delay = float(self.config.login_delay)
        if delay > 0:
            await task.deferLater(self.backend.clock, delay, lambda: None).asFuture(
                asyncio.get_running_loop())
        if self._failed_logins >= MAX_FAILED_LOGINS:
            self.conn.send([answer, Untagged(Status.BYE, "Too many failed logins")])
            self._end()
            return None
        return answer

    async def _logged_in(self, tag: str, user: User | None, name: str) -> Tagged | None:
        if user is None:
            return await self._login_failed(name, Tagged(
                tag, Status.NO, "Authentication failed", AUTHENTICATIONFAILED))
        self.backend.metrics.login("imap", True)
        # Subscribe before any state is read, so no change falls in between.
        await self.backend.changes.subscribe(user.id, self._on_change)
        self._subscribed = True
        self.user = user
        self.state = State.AUTHENTICATED
        log.info("login %s from %s", user.name, self.conn.peer)
        return Tagged(tag, Status.OK, "Logged in", CapabilityCode(self.capabilities()))

    # -- authenticated -----------------------------------------------------------------------

    @property
    def _user(self) -> User:
        assert self.user is not None  # guaranteed by the state table
        return self.user

    def _deselect(self) -> None:
        if self.selected is not None and (self.ext.qresync or self.ext.rev2):
            self.conn.send([Untagged(Status.OK, "Previous mailbox closed", CLOSED)])
        self.selected = None
        self._dirty = False
        self.state = State.AUTHENTICATED

    async def _select(self, cmd: c.SelectBase) -> Tagged:
        self._deselect()
        if cmd.qresync is not None and not self.ext.qresync:
            return Tagged(cmd.tag, Status.BAD, "QRESYNC must be enabled first")
        if cmd.condstore:
            self.ext.condstore = True
        selected, out = await SelectedMailbox.open(self.backend, self._user, cmd, self.ext)
        self.conn.send(out)
        self.selected = selected
        self.state = State.SELECTED
        code = READ_ONLY if cmd.READ_ONLY else READ_WRITE
        return Tagged(cmd.tag, Status.OK, f"{cmd.NAME} completed", code)

    async def _create(self, cmd: c.Create) -> Tagged:
        if len(cmd.special_use) > 1:
            return Tagged(cmd.tag, Status.NO, "One special use per mailbox", Code("USEATTR"))
        special = cmd.special_use[0] if cmd.special_use else None
        if special is not None and special not in SPECIAL_USES:
            return Tagged(cmd.tag, Status.NO, f"{special} is not supported", Code("USEATTR"))
        await self.backend.store.mailboxes.create(self._user.id, cmd.mailbox,
                                                  special_use=special)
        return Tagged(cmd.tag, Status.OK, "Create completed")

    async def _delete(self, cmd: c.Delete) -> Tagged:
        mailboxes = self.backend.store.mailboxes
        doomed = await mailboxes.get(self._user.id, cmd.mailbox, selectable=False)
        await mailboxes.delete(self._user.id, cmd.mailbox)
        if self.selected is not None and self.selected.mailbox_id == doomed.id:
            self._deselect()
        return Tagged(cmd.tag, Status.OK, "Delete completed")

    async def _rename(self, cmd: c.Rename) -> Tagged:
        await self.backend.store.mailboxes.rename(self._user.id, cmd.mailbox, cmd.new_name)
        return Tagged(cmd.tag, Status.OK, "Rename completed")

    async def _subscribe(self, cmd: c.Subscribe) -> Tagged:
        await self.backend.store.mailboxes.subscribe(self._user.id, cmd.mailbox)
        return Tagged(cmd.tag, Status.OK, "Subscribe completed")

    async def _unsubscribe(self, cmd: c.Unsubscribe) -> Tagged:
        await self.backend.store.mailboxes.unsubscribe(self._user.id, cmd.mailbox)
        return Tagged(cmd.tag, Status.OK, "Unsubscribe completed")

    async def _list(self, cmd: c.List) -> Tagged:
        if listing.is_delimiter_request(cmd):
            self.conn.send([ListItem("", ("\\Noselect",), DELIMITER)])
            return Tagged(cmd.tag, Status.OK, "List completed")
        mailboxes = self.backend.store.mailboxes
        entries = listing.select(cmd, await mailboxes.tree(self._user.id))
        counts: dict[int, MailboxStatus] = {}
        if cmd.return_status:
            # One statement for every listed mailbox (LIST-STATUS, RFC 5819).
            counts = await mailboxes.statuses(self._user.id, [
                e.mailbox.id for e in entries if e.wants_status and e.mailbox is not None],
                recent="RECENT" in cmd.return_status)
            if "HIGHESTMODSEQ" in cmd.return_status:
                self.ext.condstore = True
        out: list[Response] = []
        for entry in entries:
            out.append(ListItem(entry.name, entry.attributes, DELIMITER,
                                child_info=entry.child_info))
            status = counts.get(entry.mailbox.id) if entry.mailbox is not None else None
            if status is not None:
                out.append(_status_data(status, cmd.return_status))
        self.conn.send(out)
        return Tagged(cmd.tag, Status.OK, "List completed")

    async def _lsub(self, cmd: c.Lsub) -> Tagged:
        if cmd.pattern == "":
            self.conn.send([ListItem("", ("\\Noselect",), DELIMITER, lsub=True)])
            return Tagged(cmd.tag, Status.OK, "Lsub completed")
        items = await self.backend.store.mailboxes.list(
            self._user.id, listing.join(cmd.reference, cmd.pattern), subscribed_only=True)
        self.conn.send([
            ListItem(item.name, tuple(a for a in item.attributes
                                      if a not in ("\\Subscribed", "\\NonExistent")),
                     DELIMITER, lsub=True)
            for item in items])
        return Tagged(cmd.tag, Status.OK, "Lsub completed")

    async def _status(self, cmd: c.Status) -> Tagged:
        status = await self.backend.store.mailboxes.status(self._user.id, cmd.mailbox)
        if "HIGHESTMODSEQ" in cmd.items:
            self.ext.condstore = True
        self.conn.send([_status_data(status, cmd.items)])
        return Tagged(cmd.tag, Status.OK, "Status completed")

    async def _append(self, cmd: c.Append) -> Tagged:
        user = self._user
        selected = self.selected
        # A read-write IMAP4rev1 session claims \Recent whenever it learns of new messages;
        # for its own APPEND into its mailbox the delivery's transaction makes that claim
        # (one round trip less).  IMAP4rev2 and EXAMINE claim none.
        claim_in = (selected.mailbox_id if selected is not None and not self.ext.rev2
                    and not selected.view.read_only else None)
        done = []
        try:
            for message in cmd.messages:
                data = message.data
                if message.catenate is not None:
                    data = await catenate(message.catenate, read=self._url_data,
                                          limit=self.config.max_message_size)
                delivered = await self.backend.deliverer.deliver(
                    user.name, data, mailbox=cmd.mailbox, flags=message.flags,
                    internaldate=message.internaldate, claim_recent_in=claim_in)
                done.append(delivered)
                if delivered.recent is not None and selected is not None:
                    # Recorded at once, whatever follows: the range may hold others'
                    # deliveries, recent to this session alone now.
                    selected.view.claim_recent(*delivered.recent)
        except NoSuchMailbox:
            raise TryCreate(cmd.mailbox) from None
        except BaseException:
            if done:  # MULTIAPPEND is all or nothing (RFC 3502)
                await self._undo_append(done)
            raise
        if selected is not None and done[0].mailbox_id == selected.mailbox_id:
            # RFC 3501 6.3.11: announce it with EXISTS now.  When nothing else is pending
            # (and NOTIFY wants no FETCH of new messages), from what the insert returned.
            out = None
            if not self._dirty and not (self.notifier is not None
                                        and self.notifier.spec.fetch_atts):
                out = selected.appended([(d.uid, d.modseq, Flags.from_names(m.flags))
                                         for d, m in zip(done, cmd.messages, strict=True)])
            if out is None:
                self._dirty = True
                # Its mod-sequences are this session's own: no flags of announced messages
                # changed and nothing was expunged with them.
                selected.view.own_modseqs.update(d.modseq for d in done if d.modseq)
            else:
                self.conn.send(out)
        code = AppendUid(done[0].uidvalidity, SequenceSet.from_values(d.uid for d in done))
        return Tagged(cmd.tag, Status.OK, "Append completed", code)

    async def _url_data(self, url: str) -> bytes:
        """What a CATENATE URL names, read from this user's own mailbox."""
        ref = parse_url(url, user=self._user.name)
        store = self.backend.store
        if ref.mailbox is None:
            if self.selected is None:
                raise BadUrl(url, "A relative URL needs a selected mailbox")
            mailbox_id, uidvalidity = self.selected.mailbox_id, self.selected.view.uidvalidity
        else:
            try:
                mailbox = await store.mailboxes.get(self._user.id, ref.mailbox)
            except NoSuchMailbox:
                raise BadUrl(url, "No such mailbox") from None
            mailbox_id, uidvalidity = mailbox.id, mailbox.uidvalidity
        if ref.uidvalidity is not None and ref.uidvalidity != uidvalidity:
            raise BadUrl(url, "UIDVALIDITY does not match")
        entries = await store.messages.fetch(self._user.id, mailbox_id,
                                             UidSet.from_uids([ref.uid]),
                                             items=("skeleton", "sections", "header"))
        if not entries:
            raise BadUrl(url, "No such message")
        read = await BodyReader(self.backend.blobs).read(entries, [ref.section])
        return read[ref.uid, ref.section]

    async def _undo_append(self, done: list[Any]) -> None:
        messages = self.backend.store.messages
        uids = UidSet.from_uids(d.uid for d in done)
        try:
            await messages.store_flags(self._user.id, done[0].mailbox_id, uids, "add",
                                       Flags(DELETED))
            await messages.expunge(self._user.id, done[0].mailbox_id, uids)
        except Exception:
            log.exception("could not undo a partial MULTIAPPEND for %s", self._who())

    async def _notify(self, cmd: Notify) -> Tagged:
        """NOTIFY SET / NONE (RFC 5465): a new SET replaces the one in force; one asking
        for events objmail does not report changes nothing."""
        if cmd.groups is None:
            self.notifier = None
            return Tagged(cmd.tag, Status.OK, "NOTIFY completed")
        spec = NotifySpec(cmd.groups)
        if spec.unsupported():
            return Tagged(cmd.tag, Status.NO, "Unsupported NOTIFY events", BadEvent(SUPPORTED))
        notifier = Notifier(self.backend.store, self._user.id, spec, self.ext)
        selected = self.selected
        self.conn.send(await notifier.start(
            selected.mailbox_id if selected is not None else None, status=cmd.status))
        self.notifier = notifier
        return Tagged(cmd.tag, Status.OK, "NOTIFY completed")

    async def _namespace(self, cmd: c.Namespace) -> Tagged:
        self.conn.send([NamespaceData()])
        return Tagged(cmd.tag, Status.OK, "Namespace completed")

    async def _getquota(self, cmd: c.GetQuota) -> Tagged:
        user = await self.backend.store.users.get_by_id(self._user.id)
        limited = quota.resources(user)
        if cmd.root != quota.ROOT or not limited:
            return Tagged(cmd.tag, Status.NO, "No such quota root", NONEXISTENT)
        self.conn.send([QuotaData(quota.ROOT, limited)])
        return Tagged(cmd.tag, Status.OK, "Getquota completed")

    async def _getquotaroot(self, cmd: c.GetQuotaRoot) -> Tagged:
        # RFC 9208 4.1.2: the name need not be an existing mailbox (the root a mailbox
        # would fall under once created); Dovecot 2.3 answers so too.  Every name of the
        # user is under the one root, so the mailbox is not looked up.
        limited = quota.resources(await self.backend.store.users.get_by_id(self._user.id))
        out: list[Response] = [QuotaRootData(cmd.mailbox, (quota.ROOT,) if limited else ())]
        if limited:
            out.append(QuotaData(quota.ROOT, limited))
        self.conn.send(out)
        return Tagged(cmd.tag, Status.OK, "Getquotaroot completed")

    async def _setquota(self, cmd: c.SetQuota) -> Tagged:
        # RFC 9208 4.1.3 lets a server refuse; QUOTASET is not announced.
        return Tagged(cmd.tag, Status.NO, "Quotas are set by the administrator", NOPERM)

    async def _idle(self, cmd: c.Idle) -> None:
        self.conn.send([Continuation("idling")])
        self.conn.start_idle(cmd.tag)
        self._idle_tag = cmd.tag
        if self._dirty and self.selected is not None:
            self._refresh_task = asyncio.ensure_future(self._idle_refresh())
        return None

    async def _compress(self, cmd: c.Compress) -> Tagged | None:
        if self._compressing:
            return Tagged(cmd.tag, Status.NO, "DEFLATE is active already", COMPRESSIONACTIVE)
        # RFC 4978 3: the OK goes out as it is; compression starts right after its CRLF.
        self.conn.send([Tagged(cmd.tag, Status.OK, "DEFLATE active")])
        self.conn.start_compress()
        self._compressing = True
        log.info("DEFLATE on for %s from %s", self._who(), self.conn.peer)
        return None

    async def _idle_done(self, event: IdleDone) -> Tagged:
        self._idle_tag = None
        if not event.ok:
            return Tagged(event.tag, Status.BAD, "Expected DONE")
        return Tagged(event.tag, Status.OK, "IDLE terminated")

    # -- selected ----------------------------------------------------------------------------

    @property
    def _selected(self) -> SelectedMailbox:
        assert self.selected is not None  # guaranteed by the state table
        return self.selected

    async def _close(self, cmd: c.Close) -> Tagged:
        tagged = await self._selected.expunge(cmd.tag, self.conn, silent=True)
        self.selected = None
        self._dirty = False
        self.state = State.AUTHENTICATED
        return tagged

    async def _unselect(self, cmd: c.Unselect) -> Tagged:
        self.selected = None
        self._dirty = False
        self.state = State.AUTHENTICATED
        return Tagged(cmd.tag, Status.OK, "Unselect completed")

    async def _expunge(self, cmd: c.Expunge) -> Tagged:
        return await self._selected.expunge(cmd.tag, self.conn)

    async def _uid_expunge(self, cmd: c.UidExpunge) -> Tagged:
        return await self._selected.expunge(cmd.tag, self.conn, cmd)

    async def _search(self, cmd: c.Search) -> Tagged | None:
        task = asyncio.ensure_future(self._selected.search(cmd, self.conn))
        self._search_task = task
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and not (current is not None and current.cancelling()):
                return None  # connection_lost: nobody to answer
            raise
        finally:
            self._search_task = None

    async def _sort(self, cmd: c.Sort) -> Tagged:
        return await self._selected.sort(cmd, self.conn)

    async def _thread(self, cmd: c.Thread) -> Tagged:
        return await self._selected.thread(cmd, self.conn)

    async def _cancelupdate(self, cmd: c.CancelUpdate) -> Tagged:
        self._selected.contexts.cancel(cmd.tags)
        return Tagged(cmd.tag, Status.OK, "CANCELUPDATE completed")

    async def _fetch(self, cmd: c.Fetch) -> Tagged:
        return await self._selected.fetch(cmd, self.conn)

    async def _store(self, cmd: c.Store) -> Tagged:
        return await self._selected.store(cmd, self.conn)

    async def _copy(self, cmd: c.Copy) -> Tagged:
        tagged = await self._selected.copy(cmd, self.conn)
        if tagged.code is not None and self.selected is not None:
            self._dirty = True  # a copy into the selected mailbox shows up as EXISTS
        return tagged

    async def _move(self, cmd: c.Move) -> Tagged:
        return await self._selected.move(cmd, self.conn)


def _asks_recent(cmd: c.Command) -> bool:
    """Whether ``cmd`` asks for the STATUS item RECENT, which IMAP4rev2 does not have."""
    if isinstance(cmd, c.Status):
        return "RECENT" in cmd.items
    return isinstance(cmd, c.List) and "RECENT" in cmd.return_status


def _command_name(event: c.Command | IdleDone | AuthResponse) -> str:
    if isinstance(event, IdleDone):
        return "IDLE"
    if isinstance(event, AuthResponse):
        return "AUTHENTICATE"
    return event.display_name


def _status_data(st: MailboxStatus, items: tuple[str, ...]) -> StatusData:
    """``* STATUS`` with ``items`` in the order asked (STATUS and LIST-STATUS)."""
    values = {
        "MESSAGES": st.messages,
        "RECENT": st.recent,
        "UIDNEXT": st.uidnext,
        "UIDVALIDITY": st.uidvalidity,
        "UNSEEN": st.unseen,
        "HIGHESTMODSEQ": st.highestmodseq,
        "SIZE": st.size,
        "DELETED": st.deleted,
        "DELETED-STORAGE": quota.deleted_storage(st.deleted_size),
    }
    return StatusData(st.mailbox.name, tuple((item, values[item]) for item in items))
