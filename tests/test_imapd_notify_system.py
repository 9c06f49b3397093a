"""End to end: NOTIFY (RFC 5465) and IMAP4rev2 on real imapd processes over the real
PostgreSQL, Redis Cluster and object servers.  Session A, on one process, sets NOTIFY over
a raw socket and then only reads; session B, imapclient on another process, appends,
stores, expunges, creates and renames; A is told of each without sending a command."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest
from imapclient import IMAPClient

from tests.conftest import SessionCluster as Cluster
from tests.imapd_process import Imapd, Mail, imapd_fixtures, start_imapd

pytestmark = pytest.mark.timeout(120)

cluster, certificate, imapd, mail = imapd_fixtures("imapd-1")

_names = iter(range(1_000_000))


def new_user(mail: Mail) -> str:
    name = f"nfy{next(_names)}-{int(time.time() * 1000) % 1_000_000}"
    mail.create_user(name)
    return name


class Raw:
    """An IMAP client on a plain socket that sends a command when told and otherwise only
    reads what the server sends of its own accord."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        self.mark = 0
        self.wait_for(rb"^\* OK .*\r\n")

    def command(self, line: str) -> bytes:
        """Send ``tag rest`` and return everything up to its tagged answer."""
        tag = line.split(" ", 1)[0]
        self.sock.sendall(line.encode() + b"\r\n")
        return self.wait_for(rb"^" + re.escape(tag.encode()) + rb" (OK|NO|BAD).*\r\n")

    def wait_for(self, pattern: bytes, within: float = 10.0) -> bytes:
        """Read until ``pattern`` (a multi-line regex) matches what arrived since the last
        match; return that text."""
        found = re.compile(pattern, re.M)
        deadline = time.monotonic() + within
        while True:
            match = found.search(self.buf, self.mark)
            if match is not None:
                text, self.mark = self.buf[self.mark:match.end()], match.end()
                return text
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {pattern!r} in {self.buf[self.mark:]!r}")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed waiting for {pattern!r}")
            self.buf += chunk

    def close(self) -> None:
        self.sock.close()


def test_notify_across_two_processes_without_polling(cluster: Cluster,
                                                     certificate: tuple[Path, Path],
                                                     imapd: Imapd, mail: Mail) -> None:
    """A (NOTIFY SET STATUS on process 1) receives STATUS for B's APPEND to another
    mailbox, EXISTS and the requested FETCH for a delivery to its selected INBOX, FETCH
    for B's STORE, EXPUNGE for B's EXPUNGE and LIST for B's CREATE and RENAME, all made on
    process 2, while sending nothing."""
    second = start_imapd(cluster, "imapd-2", certificate)
    try:
        user = new_user(mail)
        b = IMAPClient("127.0.0.1", port=second.imap_port, ssl=False, timeout=10)
        b.login(user, "secret")
        b.create_folder("Lists")
        a = Raw(imapd.imap_port)
        assert b"a OK" in a.command(f"a LOGIN {user} secret")
        assert b"NOTIFY" in a.command("c CAPABILITY")
        a.command("s SELECT INBOX")
        reply = a.command("n NOTIFY SET STATUS (SELECTED (MessageNew (UID) MessageExpunge "
                          "FlagChange)) (PERSONAL (MessageNew MessageExpunge MailboxName))")
        assert re.search(rb'^\* STATUS "Lists" \(MESSAGES 0 UIDNEXT 1 ', reply, re.M)
        assert reply.endswith(b"n OK NOTIFY completed\r\n")

        b.append("Lists", b"Subject: list mail\r\n\r\nhello\r\n")
        a.wait_for(rb'^\* STATUS "Lists" \(MESSAGES 1 UIDNEXT 2 UIDVALIDITY \d+ UNSEEN 1\)\r\n')
        mail.deliver(user, [b"Subject: news\r\n\r\nnews\r\n"])
        a.wait_for(rb"^\* 1 EXISTS\r\n(.*\r\n)*\* 1 FETCH \(UID 1\)\r\n")
        b.select_folder("INBOX")
        b.add_flags([1], [b"\\Flagged"])
        a.wait_for(rb"^\* 1 FETCH \(UID 1 FLAGS \(\\Flagged \\Recent\)\)\r\n")
        b.delete_messages([1])
        b.expunge()
        a.wait_for(rb"^\* 1 EXPUNGE\r\n")
        b.create_folder("Projects")
        a.wait_for(rb'^\* LIST \(\) "/" "Projects"\r\n')
        b.rename_folder("Projects", "Done")
        a.wait_for(rb'^\* LIST \(\) "/" "Done" \("OLDNAME" \("Projects"\)\)\r\n')
        assert a.command("z LOGOUT").endswith(b"z OK Logout completed\r\n")
        a.close()
        b.logout()
    finally:
        second.stop()


def test_a_rev2_session_next_to_a_rev1_one(imapd: Imapd, mail: Mail) -> None:
    """ENABLE IMAP4rev2 works exactly when CAPABILITY announces it; then SELECT and FETCH
    show no \\Recent and SEARCH answers ESEARCH, while a rev1 session still sees RECENT.
    (Until every extension rev2 folds in is announced, ENABLE leaves the session rev1.)"""
    user = new_user(mail)
    mail.deliver(user, [b"Subject: one\r\n\r\none\r\n"])
    a = Raw(imapd.imap_port)
    a.command(f"a LOGIN {user} secret")
    announced = b" IMAP4rev2" in a.command("c CAPABILITY")
    enabled = a.command("e ENABLE IMAP4rev2")
    assert (b"* ENABLED IMAP4rev2\r\n" in enabled) == announced
    selected = a.command("s SELECT INBOX")
    searched = a.command("f SEARCH ALL")
    if announced:
        assert b"RECENT" not in selected and b'* LIST (' in selected
        assert searched.startswith(b'* ESEARCH (TAG "f") ALL 1\r\n')
        assert b"\\Recent" not in a.command("g FETCH 1 FLAGS")
        rev1 = IMAPClient("127.0.0.1", port=imapd.imap_port, ssl=False, timeout=10)
        rev1.login(user, "secret")
        assert rev1.select_folder("INBOX")[b"RECENT"] == 1
        rev1.logout()
    else:
        assert b"* 1 RECENT\r\n" in selected and searched.startswith(b"* SEARCH 1\r\n")
    a.close()
