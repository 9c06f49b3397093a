"""System tests of delivery: real PostgreSQL, Redis Cluster and object servers.

The corpus is the oracle: every real message delivered comes back byte for byte
from its skeleton and blobs (the tags in the test id name the features).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import secrets
from collections.abc import Iterator

import pytest

from director.errors import BlobUnavailable
from metadata.delivery import Delivered, MessageTooBig
from metadata.errors import NoSuchMailbox, NoSuchUser, OverQuota
from metadata.splitter import parse_skeleton, reassemble
from metadata.uidset import UidSet
from ops.config import Config
from tests.conftest import CORPUS
from tests.corpus_features import feature_rows
from tests.mailstack import MailStack, open_stack


def corpus_files() -> list[tuple[str, str]]:
    return [(f"{r['source']}/{r['path']}", r["features"]) for r in feature_rows()]


MANIFEST = {line.split()[1][2:]: line.split()[0]
            for line in (CORPUS / "MANIFEST.sha256").read_text().splitlines() if line.strip()}


@pytest.fixture(scope="module")
def stack(storage_cluster: Config) -> Iterator[MailStack]:
    with open_stack(storage_cluster) as s:
        yield s


@pytest.fixture(scope="module")
def corpus_user(stack: MailStack) -> str:
    return stack.new_user("corpus").name


async def read_back(stack: MailStack, done: Delivered) -> bytes:
    user = await stack.store.users.get(done.user)
    (entry,) = await stack.store.messages.fetch(user.id, done.mailbox_id,
                                                UidSet.from_uids([done.uid]),
                                                items={"skeleton"})
    assert entry.skeleton_id is not None
    skeleton_bytes = await stack.blobs.get(entry.skeleton_id)
    skeleton = parse_skeleton(skeleton_bytes)
    blobs = await stack.blobs.get_many(skeleton.blob_ids())
    return reassemble(skeleton_bytes, blobs)


@pytest.mark.parametrize(("path", "features"), corpus_files(),
                         ids=[f"{p}[{f}]" for p, f in corpus_files()])
def test_corpus_message_comes_back_exactly(stack: MailStack, corpus_user: str, path: str,
                                           features: str) -> None:
    """Delivering a corpus message and reading it back gives the same SHA-256."""
    raw = (CORPUS / path).read_bytes()
    done = stack.run(stack.deliverer.deliver(corpus_user, raw))
    back = stack.run(read_back(stack, done))
    assert hashlib.sha256(back).hexdigest() == MANIFEST[path]


def test_parallel_deliveries_get_distinct_increasing_uids(stack: MailStack) -> None:
    """Concurrent deliveries to one mailbox get distinct UIDs, in commit order, no reuse."""
    user = stack.new_user("par")
    raws = [b"Subject: m%d\r\n\r\nbody %d\r\n" % (i, i) for i in range(30)]

    async def go() -> list[Delivered]:
        return list(await asyncio.gather(*(stack.deliverer.deliver(user.name, r)
                                           for r in raws)))

    done = stack.run(go())
    uids = sorted(d.uid for d in done)
    assert uids == list(range(1, 31))
    assert len({d.uidvalidity for d in done}) == 1


def test_refusals_commit_nothing(stack: MailStack) -> None:
    """Unknown user, unknown mailbox, over quota and too big are refused before storing."""
    user = stack.new_user("q", quota=1000)
    with pytest.raises(NoSuchUser):
        stack.run(stack.deliverer.deliver("nobody-" + user.name, b"Subject: x\r\n\r\n"))
    with pytest.raises(NoSuchMailbox):
        stack.run(stack.deliverer.deliver(user.name, b"Subject: x\r\n\r\n", mailbox="Nope"))
    with pytest.raises(OverQuota):
        stack.run(stack.deliverer.deliver(user.name, b"Subject: big\r\n\r\n" + b"x" * 2000))
    big = b"x" * (stack.config.imapd.max_message_size + 1)
    with pytest.raises(MessageTooBig):
        stack.run(stack.deliverer.deliver(user.name, big))
    status = stack.run(stack.store.mailboxes.status(user.id, "INBOX"))
    assert status.messages == 0


def test_delivery_to_another_mailbox_with_flags(stack: MailStack) -> None:
    """deliver() honours the mailbox, flags and internal date it is given."""
    import datetime as dt

    user = stack.new_user("box")
    when = dt.datetime(2020, 2, 29, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    done = stack.run(stack.deliverer.deliver(user.name, b"Subject: s\r\n\r\nhi\r\n",
                                             mailbox="Archive", flags=["\\Seen", "$Work"],
                                             internaldate=when))
    (entry,) = stack.run(stack.store.messages.fetch(user.id, done.mailbox_id,
                                                    UidSet.from_uids([done.uid])))
    assert done.mailbox == "Archive"
    assert set(entry.flags.names()) == {"\\Seen", "$Work"}
    assert entry.internaldate == when


def test_commit_by_mailbox_id_refuses_a_mailbox_deleted_meanwhile(stack: MailStack) -> None:
    """A commit given the mailbox's id (LMTP found it at RCPT) lands there without a
    lookup; when that mailbox was deleted since, it is refused and nothing stays."""
    user = stack.new_user("byid")
    box = stack.run(stack.store.mailboxes.create(user.id, "Later"))
    prepared = stack.run(stack.deliverer.prepare(b"Subject: id\r\n\r\nhi\r\n"))
    stack.run(stack.deliverer.upload(prepared))
    done = stack.run(stack.deliverer.commit(user, prepared, mailbox="Later",
                                            mailbox_id=box.id))
    assert (done.mailbox, done.mailbox_id, done.uid) == ("Later", box.id, 1)
    stack.run(stack.store.mailboxes.delete(user.id, "Later"))
    with pytest.raises(NoSuchMailbox):
        stack.run(stack.deliverer.commit(user, prepared, mailbox="Later", mailbox_id=box.id))
    assert stack.run(stack.store.users.get_by_id(user.id)).message_count == 0


def test_no_object_servers_means_nothing_visible(stack: MailStack) -> None:
    """When no object server can take the blobs, delivery fails and nothing is visible."""
    user = stack.new_user("down")
    # The same PostgreSQL and Redis Cluster, but an installation (key prefix) whose
    # registry holds no object server at all: every put is refused for real.
    lonely = dataclasses.replace(stack.config, cluster=dataclasses.replace(
        stack.config.cluster, redis_prefix=f"nodeless{secrets.token_hex(3)}:"))
    with open_stack(lonely) as other:
        with pytest.raises(BlobUnavailable, match="0 active object server"):
            other.run(other.deliverer.deliver(user.name, b"Subject: x\r\n\r\n" + b"y" * 9000))
        assert other.run(other.store.mailboxes.status(user.id, "INBOX")).messages == 0
