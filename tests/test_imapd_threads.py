"""THREAD ORDEREDSUBJECT and REFERENCES (RFC 5256 3) over stored keys, in memory; the same
threads as the previous implementation (tests/sort_reference.py) on random mailboxes."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from imapd.response import ThreadData, ThreadNode, to_bytes
from imapd.threads import Node, inner_nodes, ordered_subject, references
from metadata.records import SortEntry, ThreadEntry
from metadata.sortkeys import MAX_REFERENCES, SortKeys, base_subject
from tests import sort_reference as reference


def entry(uid: int, subject: str = "s", *, msgid: str = "", refs: tuple[str, ...] = (),
          minute: int | None = None) -> ThreadEntry:
    """Message ``uid`` sent ``minute`` minutes after a start (its UID by default); its
    rank is that minute, then the UID (distinct, ordered as sent date then UID)."""
    base, reply = base_subject(subject)
    return ThreadEntry(uid, (uid if minute is None else minute) * 1000 + uid,
                       base.casefold(), reply, msgid, refs)


def wire(roots: list[Node]) -> bytes:
    """The ``* THREAD`` line for ``roots``, numbered by UID (built bottom up, as the
    session does: threads may be deeper than Python's recursion limit)."""
    made: dict[int, ThreadNode] = {}

    def convert(node: Node) -> ThreadNode:
        if node.children:
            return made.pop(id(node))
        return ThreadNode(None if node.entry is None else node.entry.uid)

    for node in reversed(inner_nodes(roots)):
        made[id(node)] = ThreadNode(None if node.entry is None else node.entry.uid,
                                    tuple(convert(child) for child in node.children))
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


def _random_mailbox(rng: random.Random, count: int) -> list[SortEntry]:
    """Entries with every hard case drawn often: repeated and missing Message-IDs,
    references to absent and later messages, loops, equal sent dates, subjects shared
    by replies and originals, and none."""
    ids = [f"id{n}" for n in range(count // 2 + 2)]
    subjects = ["", "plan", "Re: plan", "Fwd: plan", "trip", "Re: trip", "[x] Re: trip",
                "lunch (fwd)"]
    start = dt.datetime(2024, 7, 1, tzinfo=dt.UTC)
    out = []
    for uid in range(1, count + 1):
        base, reply = base_subject(rng.choice(subjects))
        refs = tuple(rng.choice(ids) for _ in range(rng.choice((0, 0, 1, 2, 3, 5))))
        when = start + dt.timedelta(minutes=rng.randrange(count // 3 + 1))
        out.append(SortEntry(uid, 1, when, when, 100, SortKeys(
            subject=base.casefold(), reply=reply,
            message_id=rng.choice(["", *ids]) if rng.random() < 0.9 else "",
            references=refs)))
    return out


def _narrowed(entries: list[SortEntry]) -> list[ThreadEntry]:
    """What :meth:`metadata.messages.Messages.thread_entries` returns for ``entries``:
    the rank is the position by sent date, then UID."""
    order = sorted(range(len(entries)), key=lambda i: (entries[i].sent_at, entries[i].uid))
    rank = {entries[i].uid: position + 1 for position, i in enumerate(order)}
    return [ThreadEntry(e.uid, rank[e.uid], e.keys.subject, e.keys.reply, e.keys.message_id,
                        e.keys.references) for e in entries]


@pytest.mark.parametrize("seed", range(200))
def test_both_algorithms_thread_as_the_reference_does(seed: int) -> None:
    """On random mailboxes full of duplicates, loops, absent parents and date ties, the
    rank-based REFERENCES and ORDEREDSUBJECT give the same threads as the previous
    implementation over full rows (tests/sort_reference.py)."""
    rng = random.Random(seed)
    entries = _random_mailbox(rng, rng.randrange(1, 60))
    narrowed = _narrowed(entries)
    assert [reference.shape(n) for n in references(narrowed)] == [
        reference.shape(n) for n in reference.references(entries)]
    assert [reference.shape(n) for n in ordered_subject(narrowed)] == [
        reference.shape(n) for n in reference.ordered_subject(entries)]


@pytest.mark.parametrize("seed", range(200))
def test_rendering_is_the_recursive_renderers(seed: int) -> None:
    """On the threads of random mailboxes (dummies, branches, chains), the stack-based
    renderer writes the bytes the recursive one did (tests/sort_reference.py)."""
    rng = random.Random(seed)
    narrowed = _narrowed(_random_mailbox(rng, rng.randrange(1, 60)))
    for roots in (references(narrowed), ordered_subject(narrowed)):
        threads = [_tree(root) for root in roots]
        assert wire(roots) == reference.thread_line(threads)


def _tree(node: Node) -> ThreadNode:
    return ThreadNode(None if node.entry is None else node.entry.uid,
                      tuple(_tree(child) for child in node.children))


#: Far deeper than Python's recursion limit (1,000): a chain anyone can mail a user.
DEEP = 20_000


def _chain(order: list[int], parents: int) -> list[ThreadEntry]:
    """A reply chain of :data:`DEEP` messages, message ``n`` (UID n + 1, sent n-th)
    replying to ``n - 1``, stored in ``order``: each names its last ``parents`` ancestors
    (References as stored, cut to MAX_REFERENCES), or 1 for In-Reply-To only."""
    ids = [f"<{n}@chain>" for n in range(DEEP)]
    rows = {n: ThreadEntry(n + 1, n + 1, "chain", n > 0, ids[n],
                           tuple(ids[max(0, n - parents):n])) for n in range(DEEP)}
    return [rows[n] for n in order]


ORDERS = {
    "sent": list(range(DEEP)),
    "reversed": list(reversed(range(DEEP))),
    "shuffled": random.Random(5).sample(range(DEEP), DEEP),
}


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("parents", [MAX_REFERENCES, 1], ids=["references", "in-reply-to"])
def test_a_chain_deeper_than_the_recursion_limit_threads(order: str, parents: int) -> None:
    """A 20,000-message reply chain, linked by References or by In-Reply-To and stored
    in any order, is one thread written as a flat run of numbers (RFC 5256: single
    replies do not nest); ORDEREDSUBJECT puts the rest under the first."""
    entries = _chain(ORDERS[order], parents)
    chain = b" ".join(b"%d" % uid for uid in range(1, DEEP + 1))
    assert wire(references(entries)) == b"* THREAD (" + chain + b")"
    flat = b"".join(b"(%d)" % uid for uid in range(2, DEEP + 1))
    assert wire(ordered_subject(entries)) == b"* THREAD (1 " + flat + b")"


def test_a_branching_chain_nests_as_deep_as_it_goes() -> None:
    """Each message of a 10,000-deep chain also has a lone reply: every level but the
    last is a branch, so the lists nest 9,999 deep, and still thread and render."""
    ids = [f"<{n}@tree>" for n in range(DEEP)]
    # UID 2k+1 is the k-th of the chain, UID 2k+2 a leaf reply to it (sent first).
    entries = [ThreadEntry(n + 1, n + 1, "tree", n > 0, ids[n],
                           () if n == 0 else (ids[n - 2 if n % 2 == 0 else n - 1],))
               for n in range(DEEP)]
    links = DEEP // 2 - 1
    expected = (b"* THREAD ("
                + b"".join(b"%d (%d)(" % (2 * k + 1, 2 * k + 2) for k in range(links))
                + b"%d %d" % (DEEP - 1, DEEP) + b")" * links + b")")
    assert wire(references(entries)) == expected
