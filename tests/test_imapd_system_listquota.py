"""End to end: LIST-EXTENDED, LIST-STATUS and QUOTA on a real imapd process over real
PostgreSQL, Redis Cluster and object servers, driven by imapclient (its quota helpers)
and imaplib (for the LIST-EXTENDED syntax imapclient does not write), and LMTP refusing
a delivery past the message quota."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from ops.launcher import free_port
from tests.conftest import SessionCluster
from tests.imapd_process import Imapd, Mail, imapd_fixtures, start_imapd

pytestmark = pytest.mark.timeout(120)

cluster, certificate, _plain_imapd, mail = imapd_fixtures("imapd-listquota")
del _plain_imapd  # replaced below by one that also listens for LMTP


@pytest.fixture(scope="module")
def imapd(cluster: SessionCluster, certificate: tuple[Path, Path]) -> Iterator[Imapd]:
    """The process, with LMTP listening too."""
    server = start_imapd(cluster, "imapd-listquota", certificate,
                         lmtp_listen=f"127.0.0.1:{free_port()}")
    try:
        yield server
    finally:
        server.stop()

_names = iter(range(1_000_000))


def new_user(mail: Mail, quota_bytes: int = 0, quota_messages: int = 0) -> str:
    name = f"lq{next(_names)}-{int(time.time() * 1000) % 1_000_000}"
    mail.create_user(name, quota_bytes=quota_bytes, quota_messages=quota_messages)
    return name


def connect(imapd: Imapd, user: str) -> IMAPClient:
    client = IMAPClient("127.0.0.1", port=imapd.imap_port, ssl=False, timeout=10)
    client.login(user, "secret")
    return client


def raw_list(client: IMAPClient, *arguments: str) -> tuple[list[bytes], list[bytes]]:
    """A LIST with these arguments through imaplib: the LIST and the STATUS lines."""
    imap = client._imap
    typ, data = imap._simple_command("LIST", *arguments)
    assert typ == "OK", data
    _, listed = imap._untagged_response(typ, data, "LIST")
    statuses = imap.untagged_responses.pop("STATUS", [])
    return [line for line in listed if line is not None], statuses


def test_list_extended_and_list_status_over_the_process(imapd: Imapd, mail: Mail) -> None:
    """LIST-EXTENDED and LIST-STATUS are announced; LIST (SUBSCRIBED RECURSIVEMATCH)
    returns CHILDINFO for an unsubscribed parent; several patterns and RETURN (STATUS)
    give each mailbox's STATUS right after it, equal to what STATUS says."""
    user = new_user(mail)
    c = connect(imapd, user)
    caps = c.capabilities()
    assert {b"LIST-EXTENDED", b"LIST-STATUS", b"SPECIAL-USE"} <= set(caps)
    c.create_folder("Lists/Python")
    c.create_folder("Lists/Rust")
    c.subscribe_folder("Lists/Python")
    c.append("Lists/Python", b"Subject: a\r\n\r\none\r\n")
    c.append("Lists/Python", b"Subject: b\r\n\r\ntwo\r\n", flags=[b"\\Seen"])
    listed, _ = raw_list(c, "(SUBSCRIBED RECURSIVEMATCH)", '""', '"L%"')
    assert listed == [b'(\\HasChildren) "/" "Lists" ("CHILDINFO" ("SUBSCRIBED"))']
    listed, statuses = raw_list(c, '""', '("Lists/%" "INBOX")', "RETURN",
                                "(CHILDREN STATUS (MESSAGES UNSEEN))")
    assert listed == [b'(\\HasNoChildren) "/" "INBOX"',
                      b'(\\HasNoChildren) "/" "Lists/Python"',
                      b'(\\HasNoChildren) "/" "Lists/Rust"']
    assert statuses == [b'"INBOX" (MESSAGES 0 UNSEEN 0)',
                        b'"Lists/Python" (MESSAGES 2 UNSEEN 1)',
                        b'"Lists/Rust" (MESSAGES 0 UNSEEN 0)']
    assert c.folder_status("Lists/Python", ["MESSAGES", "UNSEEN"]) == {
        b"MESSAGES": 2, b"UNSEEN": 1}
    c.logout()


def test_quota_over_the_process_with_imapclient_and_lmtp(imapd: Imapd, mail: Mail) -> None:
    """imapclient's quota helpers read STORAGE and MESSAGE under the root ""; APPEND past
    the message limit is NO [OVERQUOTA], LMTP answers 552 5.2.2, and SETQUOTA is refused."""
    user = new_user(mail, quota_bytes=1 << 20, quota_messages=2)
    c = connect(imapd, user)
    assert {b"QUOTA", b"QUOTA=RES-STORAGE", b"QUOTA=RES-MESSAGE"} <= set(c.capabilities())
    message = b"Subject: q\r\n\r\n" + b"z" * 2000 + b"\r\n"
    c.append("INBOX", message)
    roots, quotas = c.get_quota_root("INBOX")
    assert (roots.mailbox, roots.quota_roots) == ("INBOX", [""])
    assert [(q.quota_root, q.resource, q.usage, q.limit) for q in quotas] == [
        ("", "STORAGE", 2, 1024), ("", "MESSAGE", 1, 2)]
    c.append("Drafts", message)
    with pytest.raises(IMAPClientError, match="OVERQUOTA"):
        c.append("INBOX", message)
    lmtp = smtplib.LMTP("127.0.0.1", imapd.lmtp_port)
    try:
        lmtp.ehlo_or_helo_if_needed()
        with pytest.raises(smtplib.SMTPDataError) as refused:
            lmtp.sendmail("sender@example.org", [f"{user}@example.org"], message)
        error = refused.value.smtp_error
        assert refused.value.smtp_code == 552
        assert isinstance(error, bytes) and error.startswith(b"5.2.2 ")
    finally:
        lmtp.quit()
    assert [(q.resource, q.usage) for q in c._get_quota("")] == [("STORAGE", 4),
                                                                 ("MESSAGE", 2)]
    typ, data = c._imap._simple_command("SETQUOTA", '""', "(STORAGE 2048)")
    assert typ == "NO" and data[0].startswith(b"[NOPERM] ")
    c.logout()
