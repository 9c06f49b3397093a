"""LMTP session tests over the real storage stack (PostgreSQL, Redis Cluster, objstored).

The wire-level tests with Python's smtplib.LMTP against a running imapd are in
tests/test_imapd_lmtp_wire.py; here the session logic is driven command by command.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from imapd.lmtp import LMTPSession, trace_fields
from imapd.lmtp_parser import Command, MessageData
from metadata.delivery import Delivered, Deliverer
from metadata.records import User
from metadata.uidset import UidSet
from ops.config import Config
from tests.conftest import CORPUS
from tests.mailstack import MailStack, open_stack


@pytest.fixture(scope="module")
def stack(storage_cluster: Config) -> Iterator[MailStack]:
    with open_stack(storage_cluster) as s:
        yield s


def session(stack: MailStack) -> LMTPSession:
    return LMTPSession(stack.deliverer, stack.config.imapd, "lmtp.test")


def say(stack: MailStack, s: LMTPSession, line: str) -> list[str]:
    verb, _, arg = line.partition(" ")
    lines, _start = stack.run(s.handle(Command(verb.upper(), arg)))
    return lines


def codes(lines: list[str]) -> list[str]:
    return [line[:9] for line in lines]


def test_lhlo_advertises_extensions(stack: MailStack) -> None:
    """LHLO answers with PIPELINING, ENHANCEDSTATUSCODES, 8BITMIME and SIZE."""
    s = session(stack)
    lines = say(stack, s, "LHLO mx.example")
    assert lines[0] == "250-lmtp.test"
    assert {"250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250-8BITMIME"} <= set(lines)
    assert f"250-SIZE {stack.config.imapd.max_message_size}" in lines
    assert say(stack, s, "EHLO x")[0].startswith("500 5.5.1")


def test_one_reply_per_recipient_in_rcpt_order(stack: MailStack) -> None:
    """DATA answers each accepted recipient in RCPT order: delivered, over quota."""
    ok = stack.new_user("ok")
    full = stack.new_user("full", quota=100)
    s = session(stack)
    say(stack, s, "LHLO mx")
    assert codes(say(stack, s, "MAIL FROM:<sender@example.org> BODY=8BITMIME")) == ["250 2.1.0"]
    assert codes(say(stack, s, f"RCPT TO:<{ok.name}@example.org>")) == ["250 2.1.5"]
    assert codes(say(stack, s, "RCPT TO:<nobody-at-all@example.org>")) == ["550 5.1.1"]
    assert codes(say(stack, s, f"RCPT TO:<{full.name}@example.org>")) == ["250 2.1.5"]
    lines, start = stack.run(s.handle(Command("DATA", "")))
    assert codes(lines) == ["354 Start"] and start
    raw = (CORPUS / "apache-james-mime4j/mimetools-testmsgs/twopart.msg").read_bytes()
    replies = stack.run(s.data(MessageData(raw, len(raw))))
    assert codes(replies) == ["250 2.0.0", "552 5.2.2"]
    box = stack.run(stack.store.mailboxes.status(ok.id, "INBOX"))
    assert box.messages == 1
    assert stack.run(stack.store.mailboxes.status(full.id, "INBOX")).messages == 0


def test_a_full_message_quota_is_552_for_that_recipient(stack: MailStack) -> None:
    """A recipient at their message limit gets 552 5.2.2 (mailbox full), the others 250."""
    ok = stack.new_user("room")
    full = stack.new_user("counted")
    stack.run(stack.store.users.set_quota(full.name, None, 1))
    stack.run(stack.deliverer.deliver(full.name, b"Subject: one\r\n\r\n1\r\n"))
    s = session(stack)
    say(stack, s, "LHLO mx")
    say(stack, s, "MAIL FROM:<sender@example.org>")
    assert codes(say(stack, s, f"RCPT TO:<{full.name}@example.org>")) == ["250 2.1.5"]
    assert codes(say(stack, s, f"RCPT TO:<{ok.name}@example.org>")) == ["250 2.1.5"]
    stack.run(s.handle(Command("DATA", "")))
    raw = b"Subject: two\r\n\r\n2\r\n"
    replies = stack.run(s.data(MessageData(raw, len(raw))))
    assert replies[0].startswith("552 5.2.2 ") and "mailbox full" in replies[0]
    assert codes(replies[1:]) == ["250 2.0.0"]
    assert stack.run(stack.store.mailboxes.status(full.id, "INBOX")).messages == 1


def test_plus_detail_and_full_address(stack: MailStack) -> None:
    """user+Folder@domain delivers into Folder; an unknown folder falls back to INBOX."""
    user = stack.new_user("plus")
    s = session(stack)
    say(stack, s, "LHLO mx")
    say(stack, s, "MAIL FROM:<>")
    say(stack, s, f"RCPT TO:<{user.name}+Archive@example.org>")
    say(stack, s, f"RCPT TO:<{user.name}+NoSuchFolder@example.org>")
    stack.run(s.handle(Command("DATA", "")))
    replies = stack.run(s.data(MessageData(b"Subject: p\r\n\r\nx\r\n", 20)))
    assert codes(replies) == ["250 2.0.0", "250 2.0.0"]
    assert stack.run(stack.store.mailboxes.status(user.id, "Archive")).messages == 1
    assert stack.run(stack.store.mailboxes.status(user.id, "INBOX")).messages == 1


def test_sequence_errors(stack: MailStack) -> None:
    """Commands out of order get 503; bad syntax gets 501; an oversize SIZE gets 552."""
    s = session(stack)
    assert codes(say(stack, s, "MAIL FROM:<a@b>")) == ["503 5.5.1"]
    say(stack, s, "LHLO mx")
    assert codes(say(stack, s, "RCPT TO:<a@b>")) == ["503 5.5.1"]
    assert codes(say(stack, s, "DATA")) == ["503 5.5.1"]
    assert codes(say(stack, s, "MAIL FROM:a@b")) == ["501 5.5.4"]
    limit = stack.config.imapd.max_message_size
    assert codes(say(stack, s, f"MAIL FROM:<a@b> SIZE={limit + 1}")) == ["552 5.3.4"]
    assert codes(say(stack, s, "MAIL FROM:<a@b>")) == ["250 2.1.0"]
    assert codes(say(stack, s, "MAIL FROM:<a@b>")) == ["503 5.5.1"]
    assert codes(say(stack, s, "DATA")) == ["503 5.5.1"]  # no valid recipient
    assert codes(say(stack, s, "RSET")) == ["250 2.0.0"]
    assert codes(say(stack, s, "BOGUS")) == ["500 5.5.2"]


def test_too_big_data_gets_552_per_recipient(stack: MailStack) -> None:
    """A message that turned out larger than the limit is refused for each recipient."""
    a, b = stack.new_user("a"), stack.new_user("b")
    s = session(stack)
    say(stack, s, "LHLO mx")
    say(stack, s, "MAIL FROM:<>")
    say(stack, s, f"RCPT TO:<{a.name}>")
    say(stack, s, f"RCPT TO:<{b.name}>")
    stack.run(s.handle(Command("DATA", "")))
    replies = stack.run(s.data(MessageData(b"", 10**9, too_big=True)))
    assert codes(replies) == ["552 5.3.4", "552 5.3.4"]


def test_stored_message_is_exact(stack: MailStack) -> None:
    """What LMTP delivered reads back byte for byte, after its trace fields."""

    user = stack.new_user("exact")
    raw = (CORPUS / "apache-james-mime4j/mimetools-testmsgs/frag.msg").read_bytes()
    s = session(stack)
    say(stack, s, "LHLO mx")
    say(stack, s, "MAIL FROM:<>")
    say(stack, s, f"RCPT TO:<{user.name}@x>")
    stack.run(s.handle(Command("DATA", "")))
    assert codes(stack.run(s.data(MessageData(raw, len(raw))))) == ["250 2.0.0"]
    assert stack.only_message(user) == trace_fields("", f"{user.name}@x", raw) + raw


def test_trace_fields_follow_the_message_line_ending() -> None:
    """Return-Path and Delivered-To take the message's line ending and drop control
    characters an address could carry."""
    assert trace_fields("a@b", "c@d", b"Subject: x\r\n\r\n") == (
        b"Return-Path: <a@b>\r\nDelivered-To: c@d\r\n")
    assert trace_fields("", "c@d", b"Subject: x\n\n") == (
        b"Return-Path: <>\nDelivered-To: c@d\n")
    assert trace_fields("a\r\nX: y@b", "c\x00@d", b"") == (
        b"Return-Path: <aX: y@b>\r\nDelivered-To: c@d\r\n")


def test_each_recipient_gets_its_trace_fields_and_shares_the_blobs(stack: MailStack) -> None:
    """Two recipients of one DATA each get Return-Path and their own Delivered-To on top of
    the message; the attachment is one blob referenced by both copies."""
    a, b = stack.new_user("ra"), stack.new_user("rb")
    raw = (CORPUS / "apache-james-mime4j/mimetools-testmsgs/twopart.msg").read_bytes()
    s = session(stack)
    say(stack, s, "LHLO mx")
    say(stack, s, "MAIL FROM:<bounce@example.org>")
    say(stack, s, f"RCPT TO:<{a.name}@example.org>")
    say(stack, s, f"RCPT TO:<{b.name}+Archive@example.org>")
    stack.run(s.handle(Command("DATA", "")))
    assert codes(stack.run(s.data(MessageData(raw, len(raw))))) == ["250 2.0.0", "250 2.0.0"]
    assert stack.only_message(a) == (
        f"Return-Path: <bounce@example.org>\nDelivered-To: {a.name}@example.org\n".encode()
        + raw)
    assert stack.only_message(b, "Archive").startswith(
        f"Return-Path: <bounce@example.org>\nDelivered-To: {b.name}+Archive@example.org\n"
        .encode())

    def blobs(user: User, mailbox: str) -> set[str]:
        box = stack.run(stack.store.mailboxes.get(user.id, mailbox))
        (entry,) = stack.run(stack.store.messages.fetch(user.id, box.id, UidSet.all()))
        return set(stack.run(stack.store.messages.blob_ids(user.id, entry.message_id)))

    shared = blobs(a, "INBOX") & blobs(b, "Archive")
    assert len(shared) == 1 and len(blobs(a, "INBOX")) == 2


def _with_attachment(tag: str) -> bytes:
    """A message with a new 6 KB base64 attachment (stored decoded, as one blob)."""
    attachment = base64.encodebytes(secrets.token_bytes(4500)).replace(b"\n", b"\r\n")
    return (b"Received: from mx.example by lmtp.test; Mon, 7 Dec 2026 10:00:00 +0000\r\n"
            b"From: a@example.org\r\nSubject: " + tag.encode() + b"\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
            b"--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
            b"--b1\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + attachment + b"--b1--\r\n")


def test_ten_recipients_one_analysis_one_attachment(stack: MailStack) -> None:
    """Ten recipients of one DATA: each gets the message byte for byte under its own
    Return-Path and Delivered-To, the one over quota gets 552 and the others 250, and
    the attachment is uploaded once and referenced by every copy (dedup across
    recipients); each copy's skeleton is its own."""
    users = [stack.new_user(f"t{n}") for n in range(9)]
    full = stack.new_user("tfull", quota=100)
    order = [*users[:4], full, *users[4:]]
    raw = _with_attachment("ten")
    s = session(stack)
    say(stack, s, "LHLO mx")
    say(stack, s, "MAIL FROM:<list@example.org>")
    for user in order:
        assert codes(say(stack, s, f"RCPT TO:<{user.name}@example.org>")) == ["250 2.1.5"]
    stack.run(s.handle(Command("DATA", "")))
    uploads = stack.blobs.stats.uploads
    replies = stack.run(s.data(MessageData(raw, len(raw))))
    assert codes(replies) == ["250 2.0.0"] * 4 + ["552 5.2.2"] + ["250 2.0.0"] * 5
    # 10 skeletons (the refused recipient's was stored before its commit) + 1 attachment.
    assert stack.blobs.stats.uploads - uploads == 11
    skeletons = set()
    for user in users:
        assert stack.only_message(user) == (
            f"Return-Path: <list@example.org>\r\nDelivered-To: {user.name}@example.org\r\n"
            .encode() + raw)
        box = stack.run(stack.store.mailboxes.get(user.id, "INBOX"))
        (entry,) = stack.run(stack.store.messages.fetch(user.id, box.id, UidSet.all(),
                                                        items={"skeleton"}))
        skeletons.add(entry.skeleton_id)
        parts = set(stack.run(stack.store.messages.blob_ids(user.id, entry.message_id)))
        assert len(parts - {entry.skeleton_id}) == 1
    assert len(skeletons) == 9
    assert stack.run(stack.store.mailboxes.status(full.id, "INBOX")).messages == 0


def test_a_copy_that_cannot_be_derived_is_analysed_for_its_recipient(
        stack: MailStack) -> None:
    """A message that does not start with a header field (an mbox From line) is analysed
    again for each recipient, and each still gets its exact copy."""
    a, b = stack.new_user("fa"), stack.new_user("fb")
    raw = b"From someone Mon Dec  7 10:00:00 2026\r\n" + _with_attachment("from-line")
    s = session(stack)
    say(stack, s, "LHLO mx")
    say(stack, s, "MAIL FROM:<>")
    say(stack, s, f"RCPT TO:<{a.name}>")
    say(stack, s, f"RCPT TO:<{b.name}>")
    stack.run(s.handle(Command("DATA", "")))
    assert codes(stack.run(s.data(MessageData(raw, len(raw))))) == ["250 2.0.0"] * 2
    for user in (a, b):
        assert stack.only_message(user) == trace_fields("", user.name, raw) + raw


def test_a_nul_in_rcpt_to_is_an_unknown_user(stack: MailStack) -> None:
    """An address holding a NUL (or another control character) is answered 550 5.1.1."""
    user = stack.new_user("nul")
    s = session(stack)
    say(stack, s, "LHLO mx")
    say(stack, s, "MAIL FROM:<>")
    assert say(stack, s, f"RCPT TO:<{user.name}\x00@example.org>") == [
        f"550 5.1.1 <{user.name}@example.org>: no such user here"]
    assert codes(say(stack, s, f"RCPT TO:<{user.name}+a\x00b@example.org>")) == ["550 5.1.1"]


def test_a_date_the_store_cannot_hold_is_delivered_to_every_recipient(
        stack: MailStack) -> None:
    """A Date: beyond what the store holds does not fail delivery: one 250 per recipient,
    and the header is kept as sent."""
    a, b = stack.new_user("da"), stack.new_user("db")
    raw = b"Date: Fri, 31 Dec 9999 23:59:59 -1200\r\nSubject: late\r\n\r\nx\r\n"
    s = session(stack)
    say(stack, s, "LHLO mx")
    say(stack, s, "MAIL FROM:<>")
    say(stack, s, f"RCPT TO:<{a.name}>")
    say(stack, s, f"RCPT TO:<{b.name}>")
    stack.run(s.handle(Command("DATA", "")))
    assert codes(stack.run(s.data(MessageData(raw, len(raw))))) == ["250 2.0.0", "250 2.0.0"]
    assert stack.only_message(b).endswith(raw)


class _FailingFor(Deliverer):
    """The real deliverer, except that committing for one user hits a bug."""

    doomed = 0

    async def commit(self, user: User, *args: Any, **kwargs: Any) -> Delivered:
        if user.id == self.doomed:
            raise RuntimeError("a bug in delivery")
        return await super().commit(user, *args, **kwargs)


def test_an_unexpected_failure_still_answers_every_recipient(stack: MailStack) -> None:
    """A bug while delivering to one recipient answers it 451 and the others as usual:
    never fewer replies than accepted recipients."""
    ok, doomed = stack.new_user("ok"), stack.new_user("doomed")
    failing = _FailingFor(stack.store, stack.blobs, stack.config.metadata,
                          stack.config.imapd.max_message_size)
    failing.doomed = doomed.id
    s = LMTPSession(failing, stack.config.imapd, "lmtp.test")
    say(stack, s, "LHLO mx")
    say(stack, s, "MAIL FROM:<>")
    say(stack, s, f"RCPT TO:<{doomed.name}>")
    say(stack, s, f"RCPT TO:<{ok.name}>")
    stack.run(s.handle(Command("DATA", "")))
    raw = b"Subject: x\r\n\r\nx\r\n"
    assert codes(stack.run(s.data(MessageData(raw, len(raw))))) == ["451 4.3.0", "250 2.0.0"]
