"""LMTP group commit (metadata/groupcommit.py) over the real stack: PostgreSQL, Redis
Cluster, objstored.

Batches are made to form without timing: a first delivery (to a user of its own) is held
inside its commit transaction, at the gc fence, until every other delivery of the test
waits in the committer's queue; then it is let go, and the one lane takes them all as one
batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import pytest

from director.client import BlobClient
from director.errors import BlobUnavailable
from imapd.lmtp import LMTPSession, trace_fields
from imapd.lmtp_parser import Command, MessageData
from imapd.metrics import commit_families
from metadata.delivery import Deliverer, prepare
from metadata.groupcommit import GroupCommitter
from metadata.records import User
from metadata.splitter import parse_skeleton, reassemble
from metadata.uidset import UidSet
from ops.config import Config
from tests.conftest import CORPUS
from tests.mailstack import MailStack, open_stack

SENDER = "bounce@example.org"


@pytest.fixture(scope="module")
def stack(storage_cluster: Config) -> Iterator[MailStack]:
    with open_stack(storage_cluster) as s:
        yield s


class _Gate:
    """The real blob client, but the first commit fence waits until :attr:`opened`; the
    fence calls are recorded, and a fence over any id in :attr:`refuse` is refused as if gc
    had collected it."""

    def __init__(self, blobs: BlobClient) -> None:
        self.blobs = blobs
        self.held = asyncio.Event()
        self.opened = asyncio.Event()
        self.calls: list[tuple[set[str], int]] = []
        self.refuse: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.blobs, name)

    async def check_kept(self, ids: Iterable[str], generation: int) -> None:
        wanted = set(ids)
        self.calls.append((wanted, generation))
        if not self.held.is_set():
            self.held.set()
            await self.opened.wait()
        if wanted & self.refuse:
            raise BlobUnavailable("gc collected a blob of this delivery (test)")
        await self.blobs.check_kept(wanted, generation)


def corpus_message(n: int) -> bytes:
    files = sorted((CORPUS / "apache-james-mime4j/mimetools-testmsgs").glob("*.msg"))
    return files[n % len(files)].read_bytes()


async def ready(session: LMTPSession, address: str) -> None:
    """``session`` past RCPT to ``address`` and DATA's 354."""
    for verb, arg in (("LHLO", "mx"), ("MAIL", f"FROM:<{SENDER}>"),
                      ("RCPT", f"TO:<{address}>"), ("DATA", "")):
        lines, _start = await session.handle(Command(verb, arg))
        assert lines[0][:1] in ("2", "3"), (verb, lines)


def held_batch(stack: MailStack, deliveries: list[tuple[str, bytes]], *,
               after_rcpt: Callable[[], Awaitable[None]] | None = None,
               refuse: Iterable[str] = ()) -> tuple[list[str], GroupCommitter, _Gate]:
    """Deliver each ``(address, raw)`` on a connection of its own, all reaching their
    commit while a first delivery holds the committer's only lane: the one reply of each,
    in order.

    :param after_rcpt: awaited once every recipient was accepted, before DATA.
    :param refuse: the fence refuses commits referencing these blobs.
    """
    holder = stack.new_user("holder")

    async def go() -> tuple[list[str], GroupCommitter, _Gate]:
        gate = _Gate(stack.blobs)
        gate.refuse.update(refuse)
        deliverer = Deliverer(stack.store, gate, stack.config.metadata,
                              stack.config.imapd.max_message_size)
        committer = GroupCommitter(deliverer, lanes=1)

        def session() -> LMTPSession:
            return LMTPSession(deliverer, stack.config.imapd, "lmtp.test", committer)

        first = session()
        await ready(first, holder.name)
        sessions = []
        for address, _raw in deliveries:
            sessions.append(s := session())
            await ready(s, address)
        if after_rcpt is not None:
            await after_rcpt()
        hold = b"Subject: first\r\n\r\nholds the lane\r\n"
        first_reply = asyncio.ensure_future(first.data(MessageData(hold, len(hold))))
        await gate.held.wait()
        tasks = [asyncio.ensure_future(s.data(MessageData(raw, len(raw))))
                 for s, (_address, raw) in zip(sessions, deliveries, strict=True)]
        for _ in range(2000):  # every one uploaded and waiting at the commit
            if committer.waiting == len(tasks) or any(t.done() for t in tasks):
                break
            await asyncio.sleep(0.01)
        assert committer.waiting == len(tasks), "not every delivery reached its commit"
        gate.opened.set()
        assert (await first_reply)[0].startswith("250 2.0.0")
        replies = [reply for lines in await asyncio.gather(*tasks) for reply in lines]
        return replies, committer, gate

    return stack.run(go())


def messages(stack: MailStack, user: User, mailbox: str = "INBOX") -> dict[int, bytes]:
    """UID -> the stored bytes, reassembled from skeleton and blobs."""
    box = stack.run(stack.store.mailboxes.get(user.id, mailbox))
    out = {}
    for entry in stack.run(stack.store.messages.fetch(user.id, box.id, UidSet.all(),
                                                      items={"skeleton"})):
        assert entry.skeleton_id is not None
        skeleton = stack.run(stack.blobs.get(entry.skeleton_id))
        parts = stack.run(stack.blobs.get_many(parse_skeleton(skeleton).blob_ids()))
        out[entry.uid] = reassemble(skeleton, parts)
    return out


def stored(address: str, raw: bytes) -> bytes:
    return trace_fields(SENDER, address, raw) + raw


def test_concurrent_deliveries_commit_as_one_batch_byte_exact(stack: MailStack) -> None:
    """Twelve deliveries to four users (one of them also into a second mailbox), waiting at
    their commit together, are committed in one transaction: each gets 250, each mailbox
    distinct consecutive UIDs, and every message reads back byte for byte."""
    users = [stack.new_user(f"g{n}") for n in range(4)]
    deliveries = []
    for n in range(11):
        user = users[n % 4]
        deliveries.append((f"{user.name}@example.org", corpus_message(n)))
    deliveries.append((f"{users[0].name}+Archive@example.org", corpus_message(11)))
    replies, committer, gate = held_batch(stack, deliveries)
    assert all(r.startswith("250 2.0.0") for r in replies), replies
    assert committer.batch_sizes == {1: 1, 12: 1}  # the holder alone, then all at once
    assert committer.retried == 0
    # The batch's fence covered every blob of the twelve, from the oldest generation.
    batch_ids, _generation = gate.calls[1]
    for address, raw in deliveries:
        prepared = prepare(stored(address, raw), stack.config.metadata.split_threshold,
                           stack.blobs.id_of)
        assert {prepared.row.skeleton_id, *prepared.blob_ids} <= batch_ids

    for user in users:
        got = messages(stack, user)
        want = [stored(a, raw) for a, raw in deliveries if a == f"{user.name}@example.org"]
        assert sorted(got.values()) == sorted(want)
        assert sorted(got) == list(range(1, len(want) + 1))
    (archived,) = messages(stack, users[0], "Archive").values()
    assert archived == stored(deliveries[-1][0], deliveries[-1][1])


def test_one_recipients_failure_in_a_batch_is_its_own(stack: MailStack) -> None:
    """A batch holding a delivery over quota and one to a mailbox deleted since RCPT fails
    as a whole; each is then committed alone: those two get their own errors, the others
    250, and nothing of the failed ones is stored."""
    ok1, ok2, full, gone = (stack.new_user(p) for p in ("ok", "ok", "full", "gone"))
    stack.run(stack.store.users.set_quota(full.name, 100, None))
    stack.run(stack.store.mailboxes.create(gone.id, "Doomed"))
    deliveries = [(f"{ok1.name}@example.org", corpus_message(1)),
                  (f"{full.name}@example.org", corpus_message(2)),
                  (f"{gone.name}+Doomed@example.org", corpus_message(3)),
                  (f"{ok2.name}@example.org", corpus_message(4))]
    replies, committer, _gate = held_batch(
        stack, deliveries,  # RCPT found Doomed's id; DATA comes after its deletion
        after_rcpt=lambda: stack.store.mailboxes.delete(gone.id, "Doomed"))
    assert replies[0].startswith("250 2.0.0") and replies[3].startswith("250 2.0.0")
    assert replies[1].startswith("552 5.2.2"), replies
    assert replies[2].startswith("451 4.2.0"), replies  # mailbox went away
    # The holder alone, the batch, then the four alone again.
    assert committer.batch_sizes == {1: 5, 4: 1} and committer.retried == 1
    assert list(messages(stack, ok1).values()) == [stored(*deliveries[0])]
    assert list(messages(stack, ok2).values()) == [stored(*deliveries[3])]
    assert stack.run(stack.store.mailboxes.status(full.id, "INBOX")).messages == 0


def test_a_users_quota_counts_all_its_messages_in_a_batch(stack: MailStack) -> None:
    """Three messages for one user whose quota takes two: the batch is refused as a whole,
    then alone two are delivered and one gets 552; two that fit commit together."""
    raw = corpus_message(5)
    tight = stack.new_user("tight")
    size = len(stored(f"{tight.name}@example.org", raw))
    # Enough for two (a message's stored size is at most its length plus a CR per LF).
    two = 2 * (size + raw.count(b"\n") + 2)
    stack.run(stack.store.users.set_quota(tight.name, two + size // 2, None))
    replies, committer, _gate = held_batch(stack, [(f"{tight.name}@example.org", raw)] * 3)
    assert sorted(r[:9] for r in replies) == ["250 2.0.0", "250 2.0.0", "552 5.2.2"], replies
    assert committer.batch_sizes == {1: 4, 3: 1} and committer.retried == 1
    assert sorted(messages(stack, tight)) == [1, 2]

    roomy = stack.new_user("roomy")
    stack.run(stack.store.users.set_quota(roomy.name, two + size // 2, None))
    replies, committer, _gate = held_batch(stack, [(f"{roomy.name}@example.org", raw)] * 2)
    assert [r[:9] for r in replies] == ["250 2.0.0", "250 2.0.0"]
    assert committer.batch_sizes == {1: 1, 2: 1} and committer.retried == 0
    assert sorted(messages(stack, roomy)) == [1, 2]


def test_a_batch_whose_gc_fence_refuses_is_retried_one_by_one(stack: MailStack) -> None:
    """The batch's fence refuses (gc collected one delivery's blob meanwhile): nothing of
    the batch commits; alone, that delivery is refused again (451) and the others commit."""
    a, b, c = stack.new_user("fa"), stack.new_user("fb"), stack.new_user("fc")
    deliveries = [(f"{u.name}@example.org", corpus_message(6 + n))
                  for n, u in enumerate((a, b, c))]
    doomed = prepare(stored(*deliveries[1]), stack.config.metadata.split_threshold,
                     stack.blobs.id_of).row.skeleton_id

    replies, committer, gate = held_batch(stack, deliveries, refuse=[doomed])
    assert [r[:9] for r in replies] == ["250 2.0.0", "451 4.3.0", "250 2.0.0"], replies
    assert committer.batch_sizes == {1: 4, 3: 1} and committer.retried == 1
    # The holder's fence, the batch's, then one per delivery alone.
    assert len(gate.calls) == 1 + 1 + 3 and doomed in gate.calls[1][0]
    assert list(messages(stack, a).values()) == [stored(*deliveries[0])]
    assert messages(stack, b) == {}
    assert list(messages(stack, c).values()) == [stored(*deliveries[2])]


def test_a_lone_delivery_takes_the_single_path(stack: MailStack) -> None:
    """With nothing else waiting a delivery is committed alone (no batch, no waiting)."""
    user = stack.new_user("lone")
    committer = GroupCommitter(stack.deliverer)
    s = LMTPSession(stack.deliverer, stack.config.imapd, "x", committer)
    raw = corpus_message(0)
    stack.run(ready(s, user.name))
    assert stack.run(s.data(MessageData(raw, len(raw))))[0].startswith("250 2.0.0")
    assert committer.batch_sizes == {1: 1}
    assert list(messages(stack, user).values()) == [stored(user.name, raw)]


def test_commits_are_exported_by_deliveries_each(stack: MailStack) -> None:
    """imapd_lmtp_commits_total counts transactions by the deliveries they carried, and
    imapd_lmtp_batch_retries_total the failed batches (what the collector serves)."""
    committer = GroupCommitter(stack.deliverer)
    committer.batch_sizes.update({1: 3, 5: 2})
    committer.retried = 1
    families = {f.name: f for f in commit_families([committer])}
    assert {(s.labels["deliveries"], s.value)
            for s in families["imapd_lmtp_commits"].samples
            if s.name.endswith("_total")} == {("1", 3), ("5", 2)}
    assert [s.value for s in families["imapd_lmtp_batch_retries"].samples
            if s.name.endswith("_total")] == [1]
