"""Tests for imapd.commands: the command dataclasses themselves."""

from __future__ import annotations

import dataclasses

import pytest

from imapd import commands as c
from imapd.fetchatts import FetchItem
from imapd.searchkeys import All
from imapd.sequence import SequenceSet


def test_commands_are_frozen_and_hashable():
    """Commands are immutable values: assignment fails and equal commands hash equal."""
    one = c.Copy("a1", SequenceSet.parse("1:3"), "Trash", uid=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.mailbox = "Other"  # type: ignore[misc]
    assert hash(one) == hash(c.Copy("a1", SequenceSet.parse("1:3"), "Trash", uid=True))


@pytest.mark.parametrize(
    ("command", "name"),
    [
        (c.Fetch("t", SequenceSet.parse("1"), (FetchItem.UID,), uid=True), "UID FETCH"),
        (c.Fetch("t", SequenceSet.parse("1"), (FetchItem.UID,)), "FETCH"),
        (c.Search("t", All(), uid=True), "UID SEARCH"),
        (c.UidExpunge("t", SequenceSet.parse("1")), "UID EXPUNGE"),
        (c.Expunge("t"), "EXPUNGE"),
        (c.Examine("t", "INBOX"), "EXAMINE"),
        (c.Move("t", SequenceSet.parse("1"), "X", uid=True), "UID MOVE"),
    ],
)
def test_display_name(command, name):
    """display_name is the command as the tagged response names it, UID prefix included."""
    assert command.display_name == name


def test_select_and_examine_differ_only_in_read_only():
    """SELECT and EXAMINE share their fields; READ_ONLY tells them apart, not isinstance."""
    assert not c.Select.READ_ONLY and c.Examine.READ_ONLY
    assert not isinstance(c.Examine("t", "INBOX"), c.Select)
    assert isinstance(c.Examine("t", "INBOX"), c.SelectBase)


def test_secrets_and_bodies_stay_out_of_reprs():
    """LOGIN passwords and APPEND bodies are not written into logs through repr()."""
    login = c.Login("t", "fred", "hunter2")
    assert "hunter2" not in repr(login) and "fred" in repr(login)
    message = c.AppendMessage(b"Subject: secret\r\n\r\nbody")
    assert "secret" not in repr(message) and "23 octets" in repr(message)
