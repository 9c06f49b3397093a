"""NOTIFY (RFC 5465): the command, its syntax, and which events a session asked for where.

The client names groups of mailboxes (a *filter*) and, for each, the events it wants to
hear of without asking::

    NOTIFY SET STATUS (SELECTED (MessageNew (UID FLAGS) MessageExpunge FlagChange))
                      (PERSONAL (MessageNew MessageExpunge MailboxName SubscriptionChange))
    NOTIFY NONE

This module is pure: :func:`parse_notify` reads the arguments (the grammar registers it for
the word NOTIFY) and enforces RFC 5465's rules that make a command BAD; :class:`NotifySpec`
answers "which events for this mailbox".  What the session does with them, reading the
store and writing STATUS, LIST, EXISTS and FETCH as events arrive, is
:mod:`imapd.notifier`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from imapd.commands import Command
from imapd.fetchatts import FetchAtt, parse_fetch_atts
from imapd.lexer import Lexer, ParseError
from metadata.mailboxnames import DELIMITER

__all__ = [
    "EVENTS",
    "FLAG_CHANGE",
    "MAILBOX_NAME",
    "MESSAGE_EVENTS",
    "MESSAGE_EXPUNGE",
    "MESSAGE_NEW",
    "SUBSCRIPTION_CHANGE",
    "SUPPORTED",
    "EventGroup",
    "Notify",
    "NotifySpec",
    "parse_notify",
]

MESSAGE_NEW = "MessageNew"
MESSAGE_EXPUNGE = "MessageExpunge"
FLAG_CHANGE = "FlagChange"
ANNOTATION_CHANGE = "AnnotationChange"
MAILBOX_NAME = "MailboxName"
SUBSCRIPTION_CHANGE = "SubscriptionChange"
MAILBOX_METADATA_CHANGE = "MailboxMetadataChange"
SERVER_METADATA_CHANGE = "ServerMetadataChange"

#: Every event RFC 5465 (and RFC 5464's METADATA) defines, by its upper-cased name.
EVENTS = {name.upper(): name for name in (
    MESSAGE_NEW, MESSAGE_EXPUNGE, FLAG_CHANGE, ANNOTATION_CHANGE, MAILBOX_NAME,
    SUBSCRIPTION_CHANGE, MAILBOX_METADATA_CHANGE, SERVER_METADATA_CHANGE)}
#: What objmail reports (no ANNOTATE or METADATA extension here); the rest is answered
#: ``NO [BADEVENT (these)]``.
SUPPORTED = (MESSAGE_NEW, MESSAGE_EXPUNGE, FLAG_CHANGE, MAILBOX_NAME, SUBSCRIPTION_CHANGE)
#: The events about messages: the only ones the SELECTED filters may name (RFC 5465 6.1).
MESSAGE_EVENTS = frozenset({MESSAGE_NEW, MESSAGE_EXPUNGE, FLAG_CHANGE, ANNOTATION_CHANGE})

#: The filters (``filter-mailboxes``): two for the selected mailbox, the others by name.
SELECTED = "SELECTED"
SELECTED_DELAYED = "SELECTED-DELAYED"
_OTHER_FILTERS = frozenset({"INBOXES", "PERSONAL", "SUBSCRIBED", "SUBTREE", "MAILBOXES"})


@dataclass(frozen=True)
class EventGroup:
    """One ``(filter events)`` group.

    :ivar filter: the filter word, upper-cased (``SELECTED``, ``PERSONAL``, ``SUBTREE``...).
    :ivar mailboxes: the names SUBTREE and MAILBOXES apply to.
    :ivar events: event names in RFC 5465's spelling (unknown ones upper-cased); empty for
        ``NONE``.
    :ivar fetch_atts: MessageNew's FETCH attributes (SELECTED filters only).
    """

    filter: str
    mailboxes: tuple[str, ...] = ()
    events: tuple[str, ...] = ()
    fetch_atts: tuple[FetchAtt, ...] = ()

    def matches(self, name: str, subscribed: frozenset[str] | set[str]) -> bool:
        """Whether the filter covers mailbox ``name`` (never true for the SELECTED ones:
        the selected mailbox is the session's, not a name)."""
        if self.filter == "PERSONAL":
            return True  # objmail has one namespace, the user's own
        if self.filter == "INBOXES":
            return name == "INBOX"  # where LMTP delivers
        if self.filter == "SUBSCRIBED":
            return name in subscribed
        if self.filter == "MAILBOXES":
            return name in self.mailboxes
        if self.filter == "SUBTREE":
            return any(name == root or name.startswith(root + DELIMITER)
                       for root in self.mailboxes)
        return False


@dataclass(frozen=True)
class Notify(Command):
    """NOTIFY SET [STATUS] groups, or NOTIFY NONE (``groups`` None)."""

    NAME: ClassVar[str] = "NOTIFY"
    groups: tuple[EventGroup, ...] | None = None
    status: bool = False


@dataclass(frozen=True)
class NotifySpec:
    """What a NOTIFY SET asked for, in the shape the session asks questions of."""

    groups: tuple[EventGroup, ...]

    @property
    def selected(self) -> EventGroup | None:
        """The SELECTED or SELECTED-DELAYED group, if any."""
        for group in self.groups:
            if group.filter in (SELECTED, SELECTED_DELAYED):
                return group
        return None

    @property
    def selected_events(self) -> frozenset[str]:
        group = self.selected
        return frozenset(group.events) if group is not None else frozenset()

    @property
    def delayed(self) -> bool:
        """Expunges in the selected mailbox wait for a command that allows them (RFC 5465
        6.1 SELECTED-DELAYED); with SELECTED they are sent at once, even between
        commands."""
        group = self.selected
        return group is None or group.filter == SELECTED_DELAYED

    @property
    def fetch_atts(self) -> tuple[FetchAtt, ...]:
        group = self.selected
        return group.fetch_atts if group is not None else ()

    def unsupported(self) -> tuple[str, ...]:
        """The events asked for that objmail does not report, in the order given."""
        seen: dict[str, None] = {}
        for group in self.groups:
            for event in group.events:
                if event not in SUPPORTED:
                    seen.setdefault(event)
        return tuple(seen)

    def wants(self, event: str) -> bool:
        """Whether any group of mailboxes by name asks for ``event``."""
        return any(event in g.events for g in self.groups
                   if g.filter not in (SELECTED, SELECTED_DELAYED))

    def events_for(self, name: str, subscribed: frozenset[str] | set[str]) -> frozenset[str]:
        """The events asked for on mailbox ``name`` (not counting the SELECTED groups)."""
        events: set[str] = set()
        for group in self.groups:
            if group.matches(name, subscribed):
                events.update(group.events)
        return frozenset(events)


# -- syntax (RFC 5465 8) ----------------------------------------------------------------------


def parse_notify(lexer: Lexer, tag: str, uid: bool) -> Notify:
    """The arguments of NOTIFY::

        notify       = "NOTIFY" SP (notify-set / notify-none)
        notify-set   = "SET" [SP "STATUS"] SP event-groups
        event-groups = event-group *(SP event-group)
        event-group  = "(" filter-mailboxes SP events ")"
        events       = ( "(" event *(SP event) ")" ) / "NONE"

    :raises ParseError: bad syntax, or a combination RFC 5465 answers with BAD.
    """
    lexer.sp()
    word = lexer.word()
    if word == "NONE":
        lexer.end()
        return Notify(tag)
    if word != "SET":
        raise ParseError("expected SET or NONE")
    lexer.sp()
    status = False
    if lexer.peek() != ord("("):
        if lexer.word() != "STATUS":
            raise ParseError("expected STATUS or an event group")
        status = True
        lexer.sp()
    groups = [_event_group(lexer)]
    while not lexer.at_end():
        lexer.sp()
        groups.append(_event_group(lexer))
    selected = [g for g in groups if g.filter in (SELECTED, SELECTED_DELAYED)]
    if len(selected) > 1:
        raise ParseError("only one SELECTED or SELECTED-DELAYED filter")
    return Notify(tag, tuple(groups), status)


def _event_group(lexer: Lexer) -> EventGroup:
    lexer.expect(b"(")
    name = lexer.word()
    if name not in _OTHER_FILTERS and name not in (SELECTED, SELECTED_DELAYED):
        raise ParseError(f"unknown NOTIFY filter {name[:30]}")
    mailboxes: tuple[str, ...] = ()
    if name in ("SUBTREE", "MAILBOXES"):
        lexer.sp()
        mailboxes = _one_or_more_mailbox(lexer)
    lexer.sp()
    events: list[str] = []
    fetch_atts: tuple[FetchAtt, ...] = ()
    if lexer.accept(b"("):
        while True:
            word = lexer.word()
            # An event this server does not know is not a syntax error but a BADEVENT.
            event = EVENTS.get(word, word)
            events.append(event)
            if event == MESSAGE_NEW and lexer.startswith(b" ("):
                lexer.sp()
                if name not in (SELECTED, SELECTED_DELAYED):
                    raise ParseError("MessageNew's FETCH attributes need the SELECTED filter")
                fetch_atts = parse_fetch_atts(lexer)
            if lexer.accept(b")"):
                break
            lexer.sp()
    elif lexer.word() != "NONE":
        raise ParseError("expected a list of events or NONE")
    lexer.expect(b")")
    _check_events(name, events)
    return EventGroup(name, mailboxes, tuple(dict.fromkeys(events)), fetch_atts)


def _one_or_more_mailbox(lexer: Lexer) -> tuple[str, ...]:
    if not lexer.accept(b"("):
        return (lexer.mailbox(),)
    names = [lexer.mailbox()]
    while not lexer.accept(b")"):
        lexer.sp()
        names.append(lexer.mailbox())
    return tuple(names)


def _check_events(name: str, events: list[str]) -> None:
    """RFC 5465 5 and 6.1: what makes a group BAD."""
    given = set(events)
    if (MESSAGE_NEW in given) != (MESSAGE_EXPUNGE in given):
        raise ParseError("MessageNew and MessageExpunge go together")
    if given & {FLAG_CHANGE, ANNOTATION_CHANGE} and MESSAGE_NEW not in given:
        raise ParseError("FlagChange and AnnotationChange need MessageNew and MessageExpunge")
    if name in (SELECTED, SELECTED_DELAYED) and given - MESSAGE_EVENTS:
        raise ParseError("the SELECTED filters take message events only")
