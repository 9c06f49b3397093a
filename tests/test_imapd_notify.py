"""NOTIFY's syntax and filters (RFC 5465): the RFC's examples and every rule that makes a
NOTIFY command BAD, through the grammar and the framing parser."""

from __future__ import annotations

import pytest

from imapd.fetchatts import parse as parse_atts
from imapd.grammar import CommandError, parse_command
from imapd.lexer import Frame
from imapd.notify import (
    SUPPORTED,
    EventGroup,
    Notify,
    NotifySpec,
)
from imapd.parser import NEED_DATA, Parser


def parse(line: str) -> Notify:
    cmd = parse_command(Frame.from_line(line.encode()))
    assert isinstance(cmd, Notify)
    return cmd


def test_rfc_example_selected_with_fetch_attributes_and_a_subtree() -> None:
    """RFC 5465 6's example: MessageNew's FETCH attributes on the selected mailbox and
    message events on a subtree; filter and event names in any case."""
    cmd = parse("a NOTIFY SET STATUS (selected (MessageNew (uid "
                "body.peek[header.fields (from to subject)]) MessageExpunge)) "
                "(subtree Lists (MessageNew MessageExpunge))")
    assert cmd.status
    assert cmd.groups == (
        EventGroup("SELECTED", (), ("MessageNew", "MessageExpunge"),
                   parse_atts(b"(UID BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT)])")),
        EventGroup("SUBTREE", ("Lists",), ("MessageNew", "MessageExpunge")),
    )


def test_notify_none_and_groups_with_none() -> None:
    """NOTIFY NONE turns notifications off (``groups`` None); a group may say NONE."""
    assert parse("a NOTIFY NONE") == Notify("a")
    cmd = parse("b NOTIFY SET (selected NONE) (mailboxes (INBOX Sent) (MessageNew "
                "MessageExpunge FlagChange)) (personal (MailboxName SubscriptionChange))")
    assert cmd.groups is not None and not cmd.status
    assert cmd.groups[0] == EventGroup("SELECTED")
    assert cmd.groups[1].mailboxes == ("INBOX", "Sent")


@pytest.mark.parametrize("line", [
    "a NOTIFY SET (personal (MessageNew))",
    "a NOTIFY SET (personal (MessageExpunge))",
    "a NOTIFY SET (personal (FlagChange))",
    "a NOTIFY SET (inboxes (AnnotationChange))",
    "a NOTIFY SET (selected (MessageNew MessageExpunge MailboxName))",
    "a NOTIFY SET (selected (MessageNew MessageExpunge)) (selected-delayed (MessageNew "
    "MessageExpunge))",
    "a NOTIFY SET (personal (MessageNew (UID) MessageExpunge))",
    "a NOTIFY SET (personal ())",
    "a NOTIFY SET (subtree (MessageNew MessageExpunge))",
    "a NOTIFY SET (mailboxes () (MessageNew MessageExpunge))",
    "a NOTIFY SET (everything (MessageNew MessageExpunge))",
    "a NOTIFY SET STATUS",
    "a NOTIFY SET",
    "a NOTIFY NONE STATUS",
    "a NOTIFY",
    "a NOTIFY GET (personal (MailboxName))",
])
def test_what_rfc_5465_answers_with_bad(line: str) -> None:
    """MessageNew without MessageExpunge (or the reverse), FlagChange/AnnotationChange
    without both, non-message events or two SELECTED filters, FETCH attributes outside
    SELECTED, empty lists, unknown filters and missing groups are BAD (RFC 5465 5, 6.1,
    8)."""
    with pytest.raises(CommandError) as caught:
        parse_command(Frame.from_line(line.encode()))
    assert caught.value.tag == "a"


def test_unknown_events_parse_and_are_reported_as_unsupported() -> None:
    """An event objmail does not report is no syntax error: the session answers NO
    [BADEVENT] listing what it supports."""
    cmd = parse("a NOTIFY SET (inboxes (MessageNew MessageExpunge AnnotationChange)) "
                "(personal (MailboxMetadataChange XFuture))")
    assert cmd.groups is not None
    spec = NotifySpec(cmd.groups)
    assert spec.unsupported() == ("AnnotationChange", "MailboxMetadataChange", "XFUTURE")
    assert set(SUPPORTED) == {"MessageNew", "MessageExpunge", "FlagChange", "MailboxName",
                              "SubscriptionChange"}


def test_filters_decide_the_events_of_each_mailbox() -> None:
    """SUBTREE covers the name and what lies below it, MAILBOXES only the names, INBOXES
    INBOX, SUBSCRIBED the subscriptions, PERSONAL everything; the SELECTED group only the
    selected mailbox, and its absence means delayed expunges."""
    cmd = parse("a NOTIFY SET (selected (MessageNew (FLAGS) MessageExpunge FlagChange)) "
                "(subtree Lists (MessageNew MessageExpunge)) "
                "(mailboxes Drafts (MessageNew MessageExpunge FlagChange)) "
                "(inboxes (MessageNew MessageExpunge)) "
                "(subscribed (MailboxName)) (personal (SubscriptionChange))")
    assert cmd.groups is not None
    spec = NotifySpec(cmd.groups)
    subscribed = {"Lists/ietf"}
    assert spec.events_for("Lists", subscribed) == {"MessageNew", "MessageExpunge",
                                                    "SubscriptionChange"}
    assert spec.events_for("Lists/ietf", subscribed) == {
        "MessageNew", "MessageExpunge", "MailboxName", "SubscriptionChange"}
    assert "MessageNew" not in spec.events_for("Listserv", subscribed)
    assert "FlagChange" in spec.events_for("Drafts", subscribed)
    assert "FlagChange" not in spec.events_for("Drafts/old", subscribed)
    assert "MessageNew" in spec.events_for("INBOX", subscribed)
    assert spec.selected_events == {"MessageNew", "MessageExpunge", "FlagChange"}
    assert not spec.delayed and spec.fetch_atts == parse_atts(b"(FLAGS)")
    assert spec.wants("MailboxName") and not spec.wants("AnnotationChange")
    assert NotifySpec(()).delayed
    delayed = parse("b NOTIFY SET (selected-delayed (MessageNew MessageExpunge))")
    assert delayed.groups is not None and NotifySpec(delayed.groups).delayed


def test_notify_through_the_parser_one_byte_at_a_time() -> None:
    """The framing parser hands NOTIFY over whole when fed one byte at a time, with a
    literal mailbox name inside and a command after it."""
    data = (b"a NOTIFY SET (mailboxes ({5+}\r\nDraft INBOX) (MessageNew MessageExpunge))"
            b"\r\nb NOOP\r\n")
    parser = Parser()
    events = []
    for octet in data:
        parser.feed(bytes([octet]))
        while (event := parser.next_event()) is not NEED_DATA:
            events.append(event)
    assert events[0] == Notify("a", (EventGroup("MAILBOXES", ("Draft", "INBOX"),
                                                ("MessageNew", "MessageExpunge")),))
    assert len(events) == 2
