"""THREAD ORDEREDSUBJECT and REFERENCES (RFC 5256 3) over stored keys, in memory."""

from __future__ import annotations

import datetime as dt

from imapd.response import ThreadData, ThreadNode, to_bytes
from imapd.threads import Node, ordered_subject, references
from metadata.records import SortEntry
from metadata.sortkeys import SortKeys, base_subject

_START = dt.datetime(2024, 7, 1, tzinfo=dt.UTC)


def entry(uid: int, subject: str = "s", *, msgid: str = "", refs: tuple[str, ...] = (),
          minute: int | None = None) -> SortEntry:
    """Message ``uid`` sent ``minute`` minutes after a start (its UID by default)."""
    base, reply = base_subject(subject)
    when = _START + dt.timedelta(minutes=uid if minute is None else minute)
    return SortEntry(uid, 1, when, when, 100,
                     SortKeys(subject=base.casefold(), reply=reply, message_id=msgid,
                              references=refs))


def wire(roots: list[Node]) -> bytes:
    """The ``* THREAD`` line for ``roots``, numbered by UID."""

    def convert(node: Node) -> ThreadNode:
        number = None if node.entry is None else node.entry.uid
        return ThreadNode(number, tuple(convert(child) for child in node.children))

    return to_bytes(ThreadData(tuple(convert(root) for root in roots))).rstrip(b"\r\n")


def test_rendering_follows_the_rfc_example() -> None:
    """A chain of single replies is a run of numbers and each branch a nested list (RFC
    5256's ``(3 6 (4 23)(44 7 96))``); a dummy parent is only its branches."""
    tree = ThreadNode(3, (ThreadNode(6, (ThreadNode(4, (ThreadNode(23),)),
                                         ThreadNode(44, (ThreadNode(7, (ThreadNode(96),)),)))),))
    assert to_bytes(ThreadData((ThreadNode(2), tree))) == (
        b"* THREAD (2)(3 6 (4 23)(44 7 96))\r\n")
    assert to_bytes(ThreadData((ThreadNode(None, (ThreadNode(3), ThreadNode(5))),))) == (
        b"* THREAD ((3)(5))\r\n")
    assert to_bytes(ThreadData(())) == b"* THREAD\r\n"


def test_ordered_subject_groups_by_base_subject_under_the_first_sent() -> None:
    """Each base subject is one thread: the earliest sent message is the parent of all the
    others (flat, by sent date), threads ordered by their first message's date."""
    roots = ordered_subject([
        entry(1, "Lunch", minute=30), entry(2, "Re: Lunch", minute=10),
        entry(3, "Report", minute=20), entry(4, "Fwd: lunch", minute=40),
        entry(5, "Re: Report", minute=5)])
    assert wire(roots) == b"* THREAD (5 3)(2 (1)(4))"


def test_references_links_parents_and_sorts_by_sent_date() -> None:
    """Children hang under the last message of their References, siblings ordered by sent
    date rather than arrival."""
    roots = references([
        entry(1, "Plan", msgid="a"),
        entry(2, "Re: Plan", msgid="b", refs=("a",), minute=50),
        entry(3, "Re: Plan", msgid="c", refs=("a", "b")),
        entry(4, "Re: Plan", msgid="d", refs=("a",), minute=20),
        entry(5, "Other", msgid="e")])
    assert wire(roots) == b"* THREAD (1 (4)(2 3))(5)"


def test_references_missing_parents_become_dummies_or_vanish() -> None:
    """Two replies to a message not in the mailbox share a dummy parent; a lone one stands
    alone; References order builds the chain even through missing messages."""
    roots = references([
        entry(1, "Trip", msgid="m1", refs=("gone",)),
        entry(2, "Trip", msgid="m2", refs=("gone",)),
        entry(3, "Alone", msgid="m3", refs=("missing",)),
        entry(4, "Deep", msgid="m4", refs=("x", "y")),
        entry(5, "Deep", msgid="m5", refs=("x", "y", "m4"))])
    assert wire(roots) == b"* THREAD ((1)(2))(3)(4 5)"


def test_references_groups_roots_by_subject() -> None:
    """Unlinked roots with one base subject join: a reply goes under the original, two
    originals share a dummy; a dummy thread takes in a root of its subject."""
    roots = references([
        entry(1, "Budget", msgid="a"),
        entry(2, "Re: Budget", msgid="b"),
        entry(3, "Party", msgid="c"),
        entry(4, "Party", msgid="d"),
        entry(5, "Trip", msgid="e", refs=("gone",)),
        entry(6, "Trip", msgid="f", refs=("gone",)),
        entry(7, "Re: Trip", msgid="g")])
    assert wire(roots) == b"* THREAD (1 2)((3)(4))((5)(6)(7))"


def test_references_survives_loops_duplicates_and_no_ids() -> None:
    """A References loop links nothing twice, a repeated Message-ID is a new message, and
    messages without ids or subjects are threads of their own."""
    roots = references([
        entry(1, "", msgid="a", refs=("b",)),
        entry(2, "", msgid="b", refs=("a",)),
        entry(3, "", msgid="a"),
        entry(4, ""),
        entry(5, "")])
    assert wire(roots) == b"* THREAD (2 1)(3)(4)(5)"
