"""LMTP over the wire: Python's smtplib.LMTP against a real imapd process.

Also the fan-out case of the design: one attachment delivered in 1,000 different
messages to 1,000 users from 10 parallel LMTP connections, stored once.
"""

from __future__ import annotations

import base64
import contextlib
import os
import smtplib
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from metadata.splitter import parse_skeleton, reassemble
from metadata.uidset import UidSet
from ops.config import Config
from ops.stats_command import collect
from tests.conftest import CORPUS, SessionCluster
from tests.imapd_process import Imapd, free_port, self_signed, start_imapd
from tests.mailstack import MailStack, open_stack


@pytest.fixture(scope="module")
def imapd(storage_cluster: Config, test_cluster: SessionCluster,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Imapd]:
    tls = self_signed(tmp_path_factory.mktemp("tls"))
    server = start_imapd(test_cluster, "imapd-lmtp", tls,
                         lmtp_listen=f"127.0.0.1:{free_port()}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stack(storage_cluster: Config) -> Iterator[MailStack]:
    with open_stack(storage_cluster) as s:
        yield s


def lmtp(server: Imapd) -> smtplib.LMTP:
    client = smtplib.LMTP()
    client.connect("127.0.0.1", server.lmtp_port)
    return client


def test_smtplib_delivers_to_several_recipients(imapd: Imapd, stack: MailStack) -> None:
    """One LMTP transaction, three recipients: 250 for known users, 550 for the unknown;
    each stored copy starts with its trace fields."""
    a, b = stack.new_user("wa"), stack.new_user("wb")
    # A CRLF message with no line starting with a dot: smtplib sends it unchanged.
    raw = (CORPUS / "apache-james-mime4j/mimetools-testmsgs/bluedot-simple.msg").read_bytes()
    assert b"\r\n." not in raw and raw.count(b"\n") == raw.count(b"\r\n")
    client = lmtp(imapd)
    try:
        code, lines = client.ehlo("mx.test")
        assert code == 250 and b"PIPELINING" in lines and b"ENHANCEDSTATUSCODES" in lines
        refused = client.sendmail("sender@example.org",
                                  [f"{a.name}@example.org", "nobody-x@example.org",
                                   f"{b.name}@example.org"], raw)
    finally:
        client.quit()
    assert set(refused) == {"nobody-x@example.org"}
    assert refused["nobody-x@example.org"][0] == 550
    for user in (a, b):
        assert stack.only_message(user) == (
            f"Return-Path: <sender@example.org>\r\nDelivered-To: {user.name}@example.org\r\n"
            .encode() + raw)


def lmtp_replies(server: Imapd) -> dict[tuple[str, str], float]:
    """imapd_lmtp_replies_total from the process's /metrics: (command, code) -> count."""
    url = f"http://{server.config.imapd.metrics_listen}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {(s.labels["command"], s.labels["code"]): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == "imapd_lmtp_replies_total"}


def test_deliveries_and_refusals_are_counted_by_reply_code(imapd: Imapd,
                                                           stack: MailStack) -> None:
    """/metrics counts LMTP replies by command and code: a delivery is DATA 250, an
    unknown recipient RCPT 550, a message over the size limit MAIL 552."""
    user = stack.new_user("wm")
    before = lmtp_replies(imapd)
    client = lmtp(imapd)
    try:
        client.ehlo("mx.test")
        client.sendmail("s@example.org", [f"{user.name}@example.org", "nobody-m@example.org"],
                        b"Subject: counted\r\n\r\nbody\r\n")
        code, _msg = client.mail("a@b", [f"SIZE={imapd.config.imapd.max_message_size + 1}"])
        assert code == 552
    finally:
        client.quit()
    after = lmtp_replies(imapd)
    for key in (("DATA", "250"), ("RCPT", "550"), ("MAIL", "552")):
        assert after[key] == before.get(key, 0) + 1, key
    assert after["DATA", "451"] == before["DATA", "451"] == 0


def test_oversize_is_refused_at_mail_from(imapd: Imapd) -> None:
    """SIZE above the limit is refused with 552 5.3.4 before any data is sent."""
    client = lmtp(imapd)
    try:
        client.ehlo("mx.test")
        code, msg = client.mail("a@b", [f"SIZE={imapd.config.imapd.max_message_size + 1}"])
        assert code == 552 and msg.startswith(b"5.3.4")
    finally:
        client.quit()


FANOUT_USERS = 1000
CONNECTIONS = 10


def fanout_message(user: str, n: int, attachment: bytes) -> bytes:
    body = base64.encodebytes(attachment).replace(b"\n", b"\r\n")
    return (b"From: hr@example.org\r\nTo: " + user.encode() + b"@example.org\r\n"
            b"Subject: Handbook, copy " + str(n).encode() + b"\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n"
            b"Content-Type: text/plain\r\n\r\nHello " + user.encode() + b"\r\n--XX\r\n"
            b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
            body + b"--XX--\r\n")


def test_fanout_from_parallel_connections(imapd: Imapd, stack: MailStack) -> None:
    """1,000 messages sharing one attachment, over 10 LMTP connections: all delivered,
    the attachment stored once."""
    attachment = b"%PDF-1.5\n" + os.urandom(64 * 1024)
    users = [stack.new_user("fo").name for _ in range(FANOUT_USERS)]
    before = stack.run(collect(stack.config, stack.credentials))

    def connection(share: list[int]) -> int:
        client = lmtp(imapd)
        try:
            client.ehlo("mx.test")
            for n in share:
                refused = client.sendmail("hr@example.org", [f"{users[n]}@example.org"],
                                          fanout_message(users[n], n, attachment))
                assert not refused
            return len(share)
        finally:
            client.quit()

    started = time.monotonic()
    with ThreadPoolExecutor(CONNECTIONS) as pool:
        shares = [list(range(i, FANOUT_USERS, CONNECTIONS)) for i in range(CONNECTIONS)]
        assert sum(pool.map(connection, shares)) == FANOUT_USERS
    elapsed = time.monotonic() - started
    after = stack.run(collect(stack.config, stack.credentials))
    print(f"\n{FANOUT_USERS} deliveries over {CONNECTIONS} LMTP connections: "
          f"{elapsed:.1f}s, {FANOUT_USERS / elapsed:.0f} msg/s")
    assert after.messages - before.messages == FANOUT_USERS
    assert after.blobs - before.blobs == FANOUT_USERS + 1  # skeletons + one attachment
    physical = after.physical_bytes - before.physical_bytes
    assert physical < stack.config.director.replicas * (len(attachment) + FANOUT_USERS * 2048)


def test_lmtp_refuses_connections_over_the_limit(storage_cluster: Config,
                                                 test_cluster: SessionCluster,
                                                 tmp_path: Path) -> None:
    """Past max_connections, a new LMTP client gets 421 and is closed."""
    server = start_imapd(test_cluster, "imapd-lmtp-limit", self_signed(tmp_path),
                         lmtp_listen=f"127.0.0.1:{free_port()}", max_connections=1)
    try:
        first = lmtp(server)
        with pytest.raises(smtplib.SMTPConnectError) as info:
            smtplib.LMTP("127.0.0.1", server.lmtp_port)  # raises on a non-220 greeting
        assert info.value.smtp_code == 421
        first.quit()
    finally:
        server.stop()


def rss_bytes(pid: int) -> int:
    """The resident set size of process ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def read_reply(sock: socket.socket) -> list[bytes]:
    """One (possibly multi-line) SMTP reply, read line by line from ``sock``."""
    lines: list[bytes] = []
    data = b""
    while True:
        while b"\n" not in data:
            chunk = sock.recv(1)
            assert chunk, f"connection closed after {lines!r}"
            data += chunk
        line, _, data = data.partition(b"\n")
        lines.append(line.rstrip(b"\r"))
        if line[3:4] != b"-":
            return lines


FLOOD = 100 * 1024 * 1024


def test_pipelining_during_a_delivery_keeps_memory_bounded(
        storage_cluster: Config, test_cluster: SessionCluster, stack: MailStack,
        tmp_path: Path) -> None:
    """A client that pipelines ~100 MB of commands behind a message without reading its
    replies gets the delivery done, imapd's memory stays bounded (reading pauses, the
    bytes stay in the socket), and the stalled connection is cut off (a reset) after the
    idle timeout and one more period."""
    server = start_imapd(test_cluster, "imapd-lmtp-flood", self_signed(tmp_path),
                         lmtp_listen=f"127.0.0.1:{free_port()}", idle_timeout=2.0)
    user = stack.new_user("flood")
    raw = (CORPUS / "apache-james-mime4j/mimetools-testmsgs/bluedot-simple.msg").read_bytes()
    assert b"\r\n." not in raw
    try:
        pid = server.launcher.pid_of(server.spec)
        assert pid is not None
        sock = socket.create_connection(("127.0.0.1", server.lmtp_port))
        with sock:
            assert read_reply(sock)[0].startswith(b"220 ")
            for command in (b"LHLO mx.test", b"MAIL FROM:<s@example.org>",
                            f"RCPT TO:<{user.name}@example.org>".encode(), b"DATA"):
                sock.sendall(command + b"\r\n")
                assert read_reply(sock)[-1][:1] in (b"2", b"3")
            baseline = peak = rss_bytes(pid)
            done = threading.Event()

            def sample() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, rss_bytes(pid))
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample)
            sampler.start()
            sent = 0
            error: OSError | None = None
            started = time.monotonic()
            try:
                sock.sendall(raw + b".\r\n")
                chunk = b"NOOP\r\n" * (64 * 1024 // 6)
                sock.settimeout(1.0)
                while sent < FLOOD:
                    assert time.monotonic() - started < 60, "imapd neither read nor closed"
                    try:
                        sent += sock.send(chunk)
                    except TimeoutError:
                        continue
                    except OSError as exc:  # the reset that ends a stalled connection
                        error = exc
                        break
            finally:
                done.set()
                sampler.join()
            print(f"\nsent {sent / 2**20:.1f} MiB before {error!r}; imapd RSS "
                  f"{baseline / 2**20:.0f} -> peak {peak / 2**20:.0f} MiB")
            assert isinstance(error, ConnectionResetError | BrokenPipeError)
            assert sent < FLOOD
            assert peak - baseline < 32 * 1024 * 1024
            # What arrived before the reset is still readable: the delivery came first.
            replies = b""
            sock.settimeout(5.0)
            with contextlib.suppress(OSError):
                while len(replies) < 1 << 24 and (chunk := sock.recv(1 << 16)):
                    replies += chunk
        assert replies.startswith(f"250 2.0.0 <{user.name}@example.org> delivered".encode())
        assert b"250 2.0.0 OK\r\n" in replies
        assert stack.only_message(user) == (
            f"Return-Path: <s@example.org>\r\nDelivered-To: {user.name}@example.org\r\n"
            .encode() + raw)
    finally:
        server.stop()


def lmtp_commits(server: Imapd) -> dict[int, float]:
    """imapd_lmtp_commits_total from the process's /metrics: deliveries each -> commits."""
    url = f"http://{server.config.imapd.metrics_listen}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {int(s.labels["deliveries"]): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == "imapd_lmtp_commits_total"}


def test_parallel_deliveries_through_the_group_committer(imapd: Imapd,
                                                         stack: MailStack) -> None:
    """20 connections deliver 4 distinct messages to each of 5 users at once through the
    process's group committer: every one 250, stored byte for byte, UIDs 1 to 4 in each
    INBOX, and every delivery counted in one commit (alone or batched)."""
    users = [stack.new_user("gw") for _ in range(5)]
    raw = (CORPUS / "apache-james-mime4j/mimetools-testmsgs/bluedot-simple.msg").read_bytes()
    assert b"\r\n." not in raw and raw.count(b"\n") == raw.count(b"\r\n")
    jobs = [(users[n % 5], b"X-Group-Test: %d\r\n" % n + raw) for n in range(20)]
    before = lmtp_commits(imapd)

    def deliver(job: tuple[Any, bytes]) -> dict[str, tuple[int, bytes]]:
        user, message = job
        client = lmtp(imapd)
        try:
            client.ehlo("mx.test")
            return client.sendmail("s@example.org", [f"{user.name}@example.org"], message)
        finally:
            client.quit()

    with ThreadPoolExecutor(len(jobs)) as pool:
        assert list(pool.map(deliver, jobs)) == [{}] * len(jobs)
    after = lmtp_commits(imapd)
    committed = sum(n * (after.get(n, 0) - before.get(n, 0)) for n in after)
    assert committed == len(jobs)
    for user in users:
        box = stack.run(stack.store.mailboxes.get(user.id, "INBOX"))
        entries = stack.run(stack.store.messages.fetch(user.id, box.id, UidSet.all(),
                                                       items={"skeleton"}))
        assert sorted(e.uid for e in entries) == [1, 2, 3, 4]
        got = set()
        for entry in entries:
            assert entry.skeleton_id is not None
            skeleton = stack.run(stack.blobs.get(entry.skeleton_id))
            parts = stack.run(stack.blobs.get_many(parse_skeleton(skeleton).blob_ids()))
            got.add(reassemble(skeleton, parts))
        trace = (f"Return-Path: <s@example.org>\r\nDelivered-To: {user.name}@example.org\r\n"
                 .encode())
        assert got == {trace + message for u, message in jobs if u is user}
