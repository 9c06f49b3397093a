"""End to end: a real imapd process over real PostgreSQL, Redis Cluster and object servers,
driven by imapclient over every command of the issue, two imapd processes seeing each
other's changes, TLS both ways, POP3, and failure injection (object servers down)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import imaplib
import poplib
import re
import signal
import socket
import ssl
import time
import urllib.request
from pathlib import Path

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError
from prometheus_client.parser import text_string_to_metric_families

from director.client import BlobClient
from metadata.sections import imap_view
from metadata.store import MetadataStore
from metadata.uidset import UidSet
from tests.conftest import SessionCluster as Cluster
from tests.imapd_process import (
    Imapd,
    Mail,
    imapd_fixtures,
    imaps_context,
    start_imapd,
)
from tests.imapd_support import ATTACHMENT, NESTED, PICTURE, corpus

pytestmark = pytest.mark.timeout(120)


cluster, certificate, imapd, mail = imapd_fixtures("imapd-1")


_names = iter(range(1_000_000))


def new_user(mail: Mail) -> str:
    name = f"e2e{next(_names)}-{int(time.time() * 1000) % 1_000_000}"
    mail.create_user(name)
    return name


def connect(imapd: Imapd, user: str | None = None) -> IMAPClient:
    client = IMAPClient("127.0.0.1", port=imapd.imap_port, ssl=False, timeout=10)
    if user is not None:
        client.login(user, "secret")
    return client


def test_imapclient_session_covers_the_commands(imapd: Imapd, mail: Mail) -> None:
    """imapclient logs in and runs CAPABILITY, ID, ENABLE, NAMESPACE, CREATE/RENAME/
    DELETE with hierarchies, SUBSCRIBE/LSUB/LIST, STATUS, APPEND, SELECT/EXAMINE, FETCH of
    every item, STORE, SEARCH (full text from PostgreSQL), COPY, MOVE, EXPUNGE, UID
    EXPUNGE, CLOSE, UNSELECT, CHECK, NOOP and LOGOUT against the real process; bodies
    come back exactly as delivered."""
    user = new_user(mail)
    raws = [corpus(ATTACHMENT), corpus(NESTED), corpus(PICTURE)]
    c = connect(imapd)
    caps = c.capabilities()
    for cap in (b"IMAP4REV1", b"IDLE", b"LITERAL+", b"ID", b"ENABLE", b"STARTTLS"):
        assert cap in caps
    c.login(user, "secret")
    caps = c.capabilities()
    for cap in (b"NAMESPACE", b"UIDPLUS", b"MOVE", b"SPECIAL-USE", b"UNSELECT",
                b"CONDSTORE", b"QRESYNC"):
        assert cap in caps
    assert c.id_({"name": "e2e"})[0][:2] == (b"name", b"objmail")
    assert c.enable("CONDSTORE") == [b"CONDSTORE"]
    assert c.namespace().personal == (("", "/"),)
    c.create_folder("Projects/Alpha/Notes")
    c.rename_folder("Projects/Alpha", "Projects/Beta")
    names = [name for _flags, _delim, name in c.list_folders()]
    assert "Projects/Beta/Notes" in names and "Projects/Alpha/Notes" not in names
    c.subscribe_folder("Projects/Beta/Notes")
    assert "Projects/Beta/Notes" in [n for _f, _d, n in c.list_sub_folders()]
    c.unsubscribe_folder("Projects/Beta/Notes")
    assert "Projects/Beta/Notes" not in [n for _f, _d, n in c.list_sub_folders()]
    specials = {name: flags for flags, _d, name in c.list_folders()}
    assert b"\\Sent" in specials["Sent"] and b"\\Trash" in specials["Trash"]
    c.delete_folder("Projects/Beta/Notes")

    when = dt.datetime(2024, 7, 1, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    appended = c.append("INBOX", raws[0], flags=[b"$Work"], msg_time=when)
    assert b"APPENDUID" in appended
    for raw in raws[1:]:
        c.append("INBOX", raw)
    status = c.folder_status("INBOX", ["MESSAGES", "UNSEEN", "UIDNEXT", "HIGHESTMODSEQ"])
    assert status[b"MESSAGES"] == 3 and status[b"UNSEEN"] == 3 and status[b"UIDNEXT"] == 4

    info = c.select_folder("INBOX")
    assert info[b"EXISTS"] == 3 and info[b"UIDNEXT"] == 4 and b"HIGHESTMODSEQ" in info
    uids = c.search()
    assert uids == [1, 2, 3]
    data = c.fetch(uids, ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODYSTRUCTURE",
                          "BODY.PEEK[]", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]", "MODSEQ"])
    for uid, raw in zip(uids, raws, strict=True):
        item = data[uid]
        assert item[b"BODY[]"] == imap_view(raw)
        assert item[b"RFC822.SIZE"] == len(imap_view(raw))
        assert item[b"MODSEQ"][0] > 0
    assert data[1][b"FLAGS"] == (b"$Work", b"\\Recent")
    # imapclient gives INTERNALDATE as naive local time.
    assert data[1][b"INTERNALDATE"] == when.astimezone().replace(tzinfo=None)
    assert data[2][b"ENVELOPE"].subject is not None
    assert data[3][b"BODYSTRUCTURE"].is_multipart
    partial = c.fetch([1], ["BODY.PEEK[]<10.20>"])[1][b"BODY[]<10>"]
    assert partial == imap_view(raws[0])[10:30]

    c.add_flags([1, 2], [b"\\Flagged"])
    c.remove_flags([2], [b"\\Flagged"])
    c.set_flags([3], [b"\\Answered", b"$Done"])
    assert c.get_flags([1, 2, 3]) == {1: (b"\\Flagged", b"$Work", b"\\Recent"),
                                     2: (b"\\Recent",),
                                     3: (b"\\Answered", b"$Done", b"\\Recent")}
    assert c.search(["FLAGGED"]) == [1]
    assert c.search(["TEXT", "Gtube"]) == [3]
    assert c.search(["OR", "ANSWERED", "FLAGGED"]) == [1, 3]
    assert c.search(["NOT", "KEYWORD", "$Done", "LARGER", "5000"]) == [1]

    c.copy([1], "Archive")
    assert c.folder_status("Archive", ["MESSAGES"])[b"MESSAGES"] == 1
    c.move([2], "Trash")
    assert c.search() == [1, 3]
    c.add_flags([3], [b"\\Deleted"])
    c.uid_expunge([3])
    assert c.search() == [1]
    c.noop()
    assert c._imap.check()[0] == "OK"  # imapclient has no CHECK wrapper
    c.unselect_folder()
    info = c.select_folder("Trash", readonly=True)
    assert info[b"EXISTS"] == 1 and info[b"READ-ONLY"] == [b""]
    with pytest.raises(IMAPClientError):
        c.add_flags([1], [b"\\Seen"])
    c.close_folder()
    c.select_folder("Archive")
    c.add_flags([1], [b"\\Deleted"])
    assert c.expunge() == (b"EXPUNGE completed", [(1, b"EXPUNGE")])
    assert c.logout() == b"Logging out"


def test_imapclient_sorts_threads_and_saves_searches(imapd: Imapd, mail: Mail) -> None:
    """Over the real process, imapclient's SORT and THREAD see the keys stored at delivery,
    and ESEARCH/SEARCHRES answer a UID SEARCH RETURN and a later FETCH of ``$``."""
    user = new_user(mail)
    c = connect(imapd, user)
    caps = c.capabilities()
    for cap in (b"ESEARCH", b"SEARCHRES", b"SORT", b"SORT=DISPLAY", b"THREAD=REFERENCES",
                b"THREAD=ORDEREDSUBJECT"):
        assert cap in caps
    for header in (b"Message-ID: <a@x>\r\nFrom: zoe@x\r\nSubject: Plan\r\n"
                   b"Date: Mon, 1 Jul 2024 10:00:00 +0000",
                   b"Message-ID: <b@x>\r\nFrom: adam@x\r\nIn-Reply-To: <a@x>\r\n"
                   b"Subject: Re: Plan\r\nDate: Tue, 2 Jul 2024 10:00:00 +0000",
                   b"Message-ID: <c@x>\r\nFrom: mia@x\r\nSubject: Budget\r\n"
                   b"Date: Wed, 3 Jul 2024 10:00:00 +0000"):
        c.append("INBOX", header + b"\r\n\r\nbody\r\n")
    c.select_folder("INBOX")
    assert c.sort(["FROM"]) == [2, 3, 1]
    assert c.sort(["SUBJECT", "REVERSE", "DATE"]) == [3, 2, 1]
    assert c.thread("REFERENCES") == ((1, 2), (3,))
    assert c.thread("ORDEREDSUBJECT") == ((1, 2), (3,))
    imap = c._imap  # imapclient has no ESEARCH wrapper
    typ, data = imap._simple_command("UID", "SEARCH", "RETURN", "(MIN MAX COUNT SAVE)", "ALL")
    assert typ == "OK"
    assert imap._untagged_response(typ, data, "ESEARCH")[1][0].endswith(
        b"UID MIN 1 MAX 3 COUNT 3")
    typ, data = imap.fetch("$", "(UID)")
    assert (typ, data) == ("OK", [b"1 (UID 1)", b"2 (UID 2)", b"3 (UID 3)"])
    c.logout()


def _thread_uids(line: bytes) -> tuple[int, list[int]]:
    """The deepest nesting and the numbers, in order, of a ``* THREAD`` answer, parsed
    without recursion (imapclient's parser recurses per nesting level)."""
    depth = deepest = 0
    numbers: list[int] = []
    assert line.startswith(b"THREAD (")
    for token in re.findall(rb"\(|\)|\d+|.", line[len(b"THREAD "):]):
        if token == b"(":
            depth += 1
            deepest = max(deepest, depth)
        elif token == b")":
            depth -= 1
            assert depth >= 0
        elif token.isdigit():
            numbers.append(int(token))
        else:
            assert token == b" "
    assert depth == 0
    return deepest, numbers


def test_thread_answers_for_a_reply_chain_deeper_than_the_recursion_limit(
        imapd: Imapd, mail: Mail) -> None:
    """A 3,000-message reply chain (anyone can mail one) where every other message also
    has a lone reply threads over the real process: THREAD REFERENCES nests 1,500 lists
    deep with every UID once, UID THREAD too, and ORDEREDSUBJECT groups them all."""
    user = new_user(mail)
    c = connect(imapd, user)
    count = 3_000

    def message(n: int) -> bytes:
        # n even: the next of the chain, replying to n - 2; n odd: a reply to n - 1.
        parent = b"" if n == 0 else b"In-Reply-To: <%d@chain>\r\n" % (n - 2 + n % 2)
        return (b"Message-ID: <%d@chain>\r\n%sSubject: %sdeep\r\n"
                b"Date: Mon, 1 Jul 2024 10:00:00 +0000\r\n\r\nbody\r\n"
                % (n, parent, b"Re: " if n else b""))

    mail.deliver_many(user, map(message, range(count)))
    imap = c._imap  # imapclient's THREAD parser recurses per nesting level
    c.select_folder("INBOX")
    links = count // 2 - 1
    expected = (b"THREAD ("
                + b"".join(b"%d (%d)(" % (2 * k + 1, 2 * k + 2) for k in range(links))
                + b"%d %d" % (count - 1, count) + b")" * links + b")")
    for command in (("THREAD",), ("UID", "THREAD")):
        typ, data = imap._simple_command(*command, "REFERENCES", "UTF-8", "ALL")
        assert typ == "OK", data
        (line,) = imap._untagged_response(typ, data, "THREAD")[1]
        line = b"THREAD " + line
        assert _thread_uids(line) == (links + 1, list(range(1, count + 1)))
        assert line == expected
    typ, data = imap._simple_command("THREAD", "ORDEREDSUBJECT", "UTF-8", "ALL")
    assert typ == "OK", data
    (line,) = imap._untagged_response(typ, data, "THREAD")[1]
    assert b"THREAD " + line == b"THREAD (1 " + b"".join(
        b"(%d)" % n for n in range(2, count + 1)) + b")"
    c.logout()


def test_imaps_starttls_and_authenticate_plain(imapd: Imapd, mail: Mail) -> None:
    """IMAPS with the configured certificate and STARTTLS on the plain port both work,
    and AUTHENTICATE PLAIN logs in over them."""
    user = new_user(mail)
    with IMAPClient("127.0.0.1", port=imapd.imaps_port, ssl=True,
                    ssl_context=imaps_context(), timeout=10) as c:
        assert b"STARTTLS" not in c.capabilities()
        c.plain_login(user, "secret")
        assert c.select_folder("INBOX")[b"EXISTS"] == 0
    c = connect(imapd)
    c.starttls(imaps_context())
    assert b"AUTH=PLAIN" in c.capabilities()
    c.plain_login(user, "secret")
    assert c.list_folders(pattern="INBOX")
    c.logout()


def test_imaps_prefers_tls13_and_refuses_suites_without_forward_secrecy(
        imapd: Imapd) -> None:
    """The IMAPS port negotiates TLS 1.3 with a default client; a TLS 1.2 client offering
    only RSA key exchange (AES256-SHA) is refused, one offering ECDHE-AES-GCM served."""

    def negotiate(context: ssl.SSLContext) -> tuple[str | None, str | None]:
        with socket.create_connection(("127.0.0.1", imapd.imaps_port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.recv(5) == b"* OK "
            cipher = tls.cipher()
            return tls.version(), cipher[0] if cipher else None

    assert negotiate(imaps_context())[0] == "TLSv1.3"
    old = imaps_context()
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    old.set_ciphers("AES256-SHA:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        negotiate(old)
    old.set_ciphers("ECDHE-RSA-AES256-GCM-SHA384")
    assert negotiate(old) == ("TLSv1.2", "ECDHE-RSA-AES256-GCM-SHA384")


def test_two_processes_see_each_others_changes(cluster: Cluster,
                                               certificate: tuple[Path, Path],
                                               imapd: Imapd, mail: Mail) -> None:
    """A session IDLE on one imapd process hears, through PostgreSQL, an APPEND, a STORE
    and an EXPUNGE made by a session on another imapd process."""
    second = start_imapd(cluster, "imapd-2", certificate)
    try:
        user = new_user(mail)
        mail.deliver(user, [b"Subject: first\r\n\r\none\r\n"])
        watcher = connect(imapd, user)
        watcher.select_folder("INBOX")
        actor = connect(second, user)
        actor.select_folder("INBOX")
        watcher.idle()
        heard: list[object] = []

        def wait_for(kind: bytes) -> None:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                heard.extend(watcher.idle_check(timeout=0.5))
                if any(isinstance(r, tuple) and kind in r for r in heard):
                    return
            raise AssertionError(f"no {kind!r} in {heard}")

        actor.append("INBOX", b"Subject: second\r\n\r\ntwo\r\n")
        wait_for(b"EXISTS")
        actor.add_flags([1], [b"\\Deleted"])
        wait_for(b"FETCH")
        actor.expunge()
        wait_for(b"EXPUNGE")
        watcher.idle_done()
        assert watcher.search() == [2]
        watcher.logout()
        actor.logout()
    finally:
        second.stop()


def test_noop_reports_another_process_flags_and_expunges(cluster: Cluster,
                                                        certificate: tuple[Path, Path],
                                                        imapd: Imapd, mail: Mail) -> None:
    """NOOP, which now re-reads only what the change feed reported, still shows a flag
    change and an expunge made on another imapd process, and nothing when nothing moved."""
    second = start_imapd(cluster, "imapd-2", certificate)
    try:
        user = new_user(mail)
        mail.deliver(user, [b"Subject: a\r\n\r\na\r\n", b"Subject: b\r\n\r\nb\r\n"])
        watcher = connect(imapd, user)
        watcher.select_folder("INBOX")
        actor = connect(second, user)
        actor.select_folder("INBOX")
        assert watcher.noop()[1] == []

        def poll_for(kind: bytes) -> list[object]:
            heard: list[object] = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                heard.extend(watcher.noop()[1])
                if any(isinstance(r, tuple) and kind in r for r in heard):
                    return heard
                time.sleep(0.05)
            raise AssertionError(f"no {kind!r} in {heard}")

        actor.add_flags([2], [b"\\Flagged"])
        assert any(r[:2] == (2, b"FETCH") for r in poll_for(b"FETCH")
                   if isinstance(r, tuple))
        actor.delete_messages([1])
        actor.expunge()
        assert (1, b"EXPUNGE") in poll_for(b"EXPUNGE")
        assert b"\\Flagged" in watcher.get_flags([2])[2]  # UID 2, now message 1
        watcher.logout()
        actor.logout()
    finally:
        second.stop()


def test_keywords_reach_the_sessions_of_another_process(cluster: Cluster,
                                                      certificate: tuple[Path, Path],
                                                      imapd: Imapd, mail: Mail) -> None:
    """SELECT lists the keywords in use in FLAGS and PERMANENTFLAGS (with \\*); when a
    session on another imapd process stores a new keyword, the next NOOP answers FLAGS,
    keeping the old keyword, before the FETCH that shows the new one."""
    second = start_imapd(cluster, "imapd-2", certificate)
    try:
        user = new_user(mail)
        mail.deliver(user, [b"Subject: k\r\n\r\nk\r\n"])
        actor = connect(second, user)
        actor.select_folder("INBOX")
        actor.add_flags([1], [b"$Label1"])
        watcher = connect(imapd, user)
        selected = watcher.select_folder("INBOX")
        assert b"$Label1" in selected[b"FLAGS"]
        assert {b"$Label1", b"\\*"} <= set(selected[b"PERMANENTFLAGS"])
        actor.add_flags([1], [b"$Label2"])
        heard: list[object] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
                isinstance(r, tuple) and b"FETCH" in r for r in heard):
            heard.extend(watcher.noop()[1])
            time.sleep(0.1)
        kinds = [r[0] if r[0] == b"FLAGS" else r[1] for r in heard if isinstance(r, tuple)]
        assert b"FLAGS" in kinds and kinds.index(b"FLAGS") < kinds.index(b"FETCH"), heard
        flags = next(r[1] for r in heard if isinstance(r, tuple) and r[0] == b"FLAGS")
        assert {b"$Label1", b"$Label2"} <= set(flags)
        assert set(watcher.get_flags([1])[1]) == {b"$Label1", b"$Label2"}
        watcher.logout()
        actor.logout()
    finally:
        second.stop()


def test_updating_search_hears_another_process_changes(cluster: Cluster,
                                                      certificate: tuple[Path, Path],
                                                      imapd: Imapd, mail: Mail) -> None:
    """A raw-socket session IDLE on one imapd process with ``UID SEARCH RETURN (UPDATE)
    FLAGGED`` hears ADDTO when a session of another process flags a message or appends a
    flagged one, and REMOVEFROM before the EXPUNGE when it expunges one (RFC 5267 over the
    change feed); after CANCELUPDATE it hears no more."""
    second = start_imapd(cluster, "imapd-2", certificate)
    try:
        user = new_user(mail)
        mail.deliver(user, [b"Subject: a\r\n\r\na\r\n", b"Subject: b\r\n\r\nb\r\n"])
        with socket.create_connection(("127.0.0.1", imapd.imap_port), timeout=10) as sock:
            reader = sock.makefile("rb")
            assert reader.readline().startswith(b"* OK")

            def until(end: bytes, *, tagged: bool = False) -> list[bytes]:
                """Lines up to the one holding ``end`` (starting with it: ``tagged``)."""
                lines = [reader.readline()]
                while not (lines[-1].startswith(end) if tagged else end in lines[-1]):
                    lines.append(reader.readline())
                return lines

            def command(line: bytes) -> list[bytes]:
                sock.sendall(line + b"\r\n")
                return until(line.split(b" ", 1)[0] + b" ", tagged=True)

            assert command(f"a LOGIN {user} secret".encode())[-1].startswith(b"a OK")
            assert command(b"b SELECT INBOX")[-1].startswith(b"b OK")
            assert command(b"c UID SEARCH RETURN (UPDATE) FLAGGED") == [
                b'* ESEARCH (TAG "c") UID\r\n', b"c OK UID SEARCH completed, will notify\r\n"]
            sock.sendall(b"d IDLE\r\n")
            assert reader.readline() == b"+ idling\r\n"
            actor = connect(second, user)
            actor.select_folder("INBOX")
            actor.add_flags([2], [b"\\Flagged"])
            heard = until(b"ADDTO")
            assert heard[-1] == b'* ESEARCH (TAG "c") UID ADDTO (0 2)\r\n', heard
            assert any(line.startswith(b"* 2 FETCH") for line in heard), heard
            actor.append("INBOX", b"Subject: c\r\n\r\nc\r\n", flags=[b"\\Flagged"])
            heard = until(b"ADDTO")
            assert heard[0] == b"* 3 EXISTS\r\n", heard
            assert heard[-1] == b'* ESEARCH (TAG "c") UID ADDTO (0 3)\r\n', heard
            actor.delete_messages([2])
            actor.expunge()
            heard = until(b"EXPUNGE")
            assert heard[-2:] == [b'* ESEARCH (TAG "c") UID REMOVEFROM (0 2)\r\n',
                                  b"* 2 EXPUNGE\r\n"], heard
            sock.sendall(b"DONE\r\n")
            assert until(b"d ", tagged=True)[-1] == b"d OK IDLE terminated\r\n"
            assert command(b'e CANCELUPDATE "c"') == [b"e OK CANCELUPDATE completed\r\n"]
            actor.add_flags([1], [b"\\Flagged"])
            polled: list[bytes] = []
            deadline = time.monotonic() + 10
            while not any(line.startswith(b"* 1 FETCH") for line in polled):
                assert time.monotonic() < deadline, polled
                polled += command(b"f NOOP")
                time.sleep(0.05)
            # The flag change came (in the refresh that would carry an update): no ESEARCH.
            assert not any(b"ESEARCH" in line for line in polled), polled
            actor.logout()
            assert command(b"g LOGOUT")[-1] == b"g OK Logout completed\r\n"
    finally:
        second.stop()


def test_metrics_endpoint_counts_commands(imapd: Imapd, mail: Mail) -> None:
    """GET /metrics on imapd.metrics_listen shows the commands, successful and failed
    logins just made, the open connections per listener, and build and process metrics;
    every name of ours starts with imapd_."""
    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        url = f"http://{imapd.config.imapd.metrics_listen}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    failed = (("protocol", "imap"), ("result", "failed"))
    before = scrape()
    user = new_user(mail)
    with connect(imapd, user) as c:
        c.select_folder("INBOX")
        c.noop()
        got = scrape()
    wrong = connect(imapd)
    with pytest.raises(LoginError):
        wrong.login(user, "not the password")
    wrong.logout()
    after = scrape()
    select = (("command", "SELECT"), ("protocol", "imap"), ("status", "OK"))
    assert got["imapd_commands_total", select] >= 1
    assert got["imapd_logins_total", (("protocol", "imap"), ("result", "ok"))] >= 1
    assert got["imapd_open_connections", (("listener", "imap"),)] >= 1
    assert after["imapd_logins_total", failed] == before["imapd_logins_total", failed] + 1
    assert any(name == "imapd_build_info" for name, _ in after)
    assert after["process_resident_memory_bytes", ()] > 0
    ours = {name for name, _ in after if not name.startswith(("process_", "python_"))}
    assert all(name.startswith("imapd_") for name in ours), ours


def test_garbage_over_a_raw_socket_gets_bad_and_the_server_lives(imapd: Imapd) -> None:
    """Binary garbage, a huge line and a bogus literal are answered BAD; the same
    connection then still answers NOOP."""
    with socket.create_connection(("127.0.0.1", imapd.imap_port), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"* OK")
        sock.sendall(b"\x00\xff\xfe garbage\r\n")
        assert reader.readline() == b"* BAD Invalid or missing tag\r\n"
        sock.sendall(b"a1 NOOP " + b"x" * 100_000 + b"\r\n")
        assert reader.readline().startswith(b"a1 BAD [TOOBIG]")
        sock.sendall(b"a2 LOGIN {99999999999}\r\n")
        assert reader.readline().startswith(b"a2 BAD")
        sock.sendall(b"a3 NOOP\r\n")
        assert reader.readline() == b"a3 OK NOOP completed\r\n"


def test_pop3_over_the_process(imapd: Imapd, mail: Mail) -> None:
    """poplib reads INBOX: STAT, LIST, UIDL, RETR (exact bytes, CRLF), TOP, DELE, and
    QUIT removes the deleted message for IMAP as well."""
    user = new_user(mail)
    raws = [corpus(NESTED), b"Subject: short\r\n\r\n.dot line\r\nend\r\n"]
    mail.deliver(user, raws)
    pop = poplib.POP3("127.0.0.1", imapd.pop3_port, timeout=10)
    assert "STLS" in pop.capa()
    pop.stls(imaps_context())
    pop.user(user)
    pop.pass_("secret")
    count, size = pop.stat()
    assert count == 2 and size == sum(len(imap_view(r)) for r in raws)
    _resp, lines, _octets = pop.retr(2)
    assert b"\r\n".join(lines) + b"\r\n" == raws[1]
    _resp, lines, _octets = pop.retr(1)
    assert hashlib.sha256(b"\r\n".join(lines) + b"\r\n").digest() == \
        hashlib.sha256(imap_view(raws[0])).digest()
    _resp, top, _octets = pop.top(1, 2)
    assert top[0].startswith(b"Date:") and len(top) < 40
    uidl = pop.uidl()[1]
    assert len(uidl) == 2
    pop.dele(1)
    pop.quit()
    with connect(imapd, user) as c:
        c.select_folder("INBOX")
        assert c.search() == [2]


def test_object_servers_down_gives_unavailable(cluster: Cluster, imapd: Imapd,
                                               mail: Mail) -> None:
    """With every object server stopped, FETCH of a body the imapd has not cached answers
    NO [UNAVAILABLE] while metadata FETCH works; after restarting them it succeeds."""
    user = new_user(mail)
    # A header of its own: blobs are shared by content, and the imapd may have cached
    # this picture's for another test; this skeleton it cannot have seen.
    raw = f"X-Unique: {time.time_ns()}\r\n".encode() + corpus(PICTURE)
    mail.deliver(user, [raw])
    c = connect(imapd, user)
    c.select_folder("INBOX")
    assert c.fetch([1], ["RFC822.SIZE"])[1][b"RFC822.SIZE"] > 0
    stores = cluster.cluster("objstore")
    specs = [s for stage in stores.stages() for s in stage.specs]
    for spec in specs:
        stores.launcher.stop(spec)
    try:
        with pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE"):
            c.fetch([1], ["BODY.PEEK[]"])
        assert c.fetch([1], ["ENVELOPE"])[1][b"ENVELOPE"].subject == b"Gtube jpg"
    finally:
        for spec in specs:
            stores.launcher.start(spec)
    body = c.fetch([1], ["BODY.PEEK[]"])[1][b"BODY[]"]
    assert body == imap_view(raw)
    c.logout()



def test_sigterm_says_bye_and_stops_cleanly(cluster: Cluster, certificate: tuple[Path, Path],
                                            mail: Mail) -> None:
    """SIGTERM makes the process tell connected clients BYE, close its services and exit;
    the log records the clean stop."""
    server = start_imapd(cluster, "imapd-term", certificate)
    user = new_user(mail)
    try:
        with socket.create_connection(("127.0.0.1", server.imap_port), timeout=10) as sock:
            reader = sock.makefile("rb")
            reader.readline()
            sock.sendall(f"a LOGIN {user} secret\r\nb SELECT INBOX\r\nc IDLE\r\n".encode())
            while not reader.readline().startswith(b"+ idling"):
                pass
            server.launcher.signal(server.spec, signal.SIGTERM)
            assert reader.readline() == b"* BYE Server shutting down\r\n"
            assert reader.readline() == b""  # closed by the server
        deadline = time.monotonic() + 15
        while server.launcher.pid_of(server.spec) is not None:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        assert "imapd stopped" in server.log()
    finally:
        server.stop()


def test_fetches_through_imapd_make_the_message_hot(imapd: Imapd, mail: Mail) -> None:
    """Every FETCH of a message through imapd counts as a read of its skeleton blob in
    the decayed read counters (director/temperature.py), whether imapd's blob cache
    served it or not; the counters reach Redis in imapd's background flush."""
    user = new_user(mail)
    (delivered,) = mail.deliver(user, [corpus(ATTACHMENT)])
    c = connect(imapd, user)
    c.select_folder("INBOX", readonly=True)
    for _ in range(6):
        assert c.fetch([delivered.uid], ["BODY.PEEK[]"])
    c.logout()

    async def heat() -> float:
        store = await MetadataStore.open(mail.config.cluster.pg_dsn, pool_min=1, pool_max=1,
                                         password=mail.credentials.pg_password)
        blobs = await BlobClient.open(mail.config.cluster, mail.config.director,
                                      auth=mail.credentials.redis)
        try:
            owner = await store.users.get(user)
            (entry,) = await store.messages.fetch(owner.id, delivered.mailbox_id,
                                                  UidSet.all(), items={"skeleton"})
            assert entry.skeleton_id is not None
            deadline = time.monotonic() + 20
            while True:
                reads = (await blobs.heat.lookup([entry.skeleton_id]))[
                    entry.skeleton_id].reads
                if reads >= 5.9 or time.monotonic() > deadline:  # decayed a little
                    return reads
                await asyncio.sleep(0.2)
        finally:
            await blobs.aclose()
            await store.close()

    assert asyncio.run(heat()) >= 5.9


class _Raw:
    """A bare IMAP client that returns the untagged lines of each command as sent, to
    check exactly what a session was told (imapclient hides and merges them)."""

    def __init__(self, imapd: Imapd, user: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", imapd.imap_port), timeout=10)
        self.file = self.sock.makefile("rb")
        self.file.readline()  # the greeting
        self.counter = 0
        self.command(f'LOGIN "{user}" "secret"'.encode())

    def command(self, text: bytes, literal: bytes | None = None) -> list[bytes]:
        self.counter += 1
        tag = b"r%d" % self.counter
        if literal is None:
            self.sock.sendall(tag + b" " + text + b"\r\n")
        else:
            self.sock.sendall(tag + b" " + text + b" {%d+}\r\n" % len(literal) + literal
                              + b"\r\n")
        untagged: list[bytes] = []
        while True:
            line = self.file.readline()
            assert line, "connection closed"
            if line.startswith(tag + b" "):
                assert line.split()[1] == b"OK", line
                return untagged
            untagged.append(line.rstrip(b"\r\n"))

    def close(self) -> None:
        self.command(b"LOGOUT")
        self.sock.close()


def _exists(lines: list[bytes]) -> list[int]:
    return [int(line.split()[1]) for line in lines if line.endswith(b" EXISTS")]


def test_own_appends_and_another_process_changes_are_reported_exactly(
        cluster: Cluster, certificate: tuple[Path, Path], imapd: Imapd, mail: Mail) -> None:
    """A session's own APPEND is announced from what the insert returned, not re-read:
    two sessions on two imapd processes append, store and expunge in turn, and each is
    told exactly what the other did (EXISTS, FLAGS, FETCH, EXPUNGE) and its own new
    messages once, with the sequence numbers PostgreSQL agrees with."""
    second = start_imapd(cluster, "imapd-2", certificate)
    try:
        user = new_user(mail)
        mail.deliver(user, [b"Subject: one\r\n\r\none\r\n"])
        a, b = _Raw(imapd, user), _Raw(second, user)
        a.command(b"SELECT INBOX")
        b.command(b"SELECT INBOX")
        # A's own APPEND, with a keyword new to the mailbox: FLAGS before EXISTS.
        told = a.command(b"APPEND INBOX ($Fresh)", b"Subject: two\r\n\r\ntwo\r\n")
        assert _exists(told) == [2]
        assert told[0].startswith(b"* FLAGS (") and b"$Fresh" in told[0], told
        assert b"* 2 RECENT" in told and not any(b"FETCH" in line for line in told), told
        assert a.command(b"NOOP") == []
        # B hears of it (the feed, then NOOP's re-read), with the keyword first.
        deadline = time.monotonic() + 10
        heard: list[bytes] = []
        while not _exists(heard) and time.monotonic() < deadline:
            heard += b.command(b"NOOP")
        assert _exists(heard) == [2] and b"* 0 RECENT" in heard, heard
        assert b"$Fresh" in heard[0], heard
        # B changes a flag; A appends right after: A must hear B's flag change too, not
        # just its own message (the fast path must not skip someone else's mod-sequence).
        assert b.command(b"STORE 1 +FLAGS (\\Flagged)") == [b"* 1 FETCH (FLAGS (\\Flagged))"]
        told = a.command(b"APPEND INBOX ()", b"Subject: three\r\n\r\nthree\r\n")
        told += a.command(b"NOOP")
        deadline = time.monotonic() + 10
        flagged = b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent))"  # recent to A
        while flagged not in told and time.monotonic() < deadline:
            told += a.command(b"NOOP")
        assert flagged in told and told.count(flagged) == 1, told
        assert _exists(told) == [3], told
        # B appends and A appends: A's EXISTS covers both, B's own comes once.
        told_b = b.command(b"APPEND INBOX ()", b"Subject: four\r\n\r\nfour\r\n")
        assert _exists(told_b) == [3, 4] or _exists(told_b) == [4], told_b
        told = a.command(b"APPEND INBOX ()", b"Subject: five\r\n\r\nfive\r\n")
        assert _exists(told) == [5], told
        assert a.command(b"NOOP") == []
        # A expunges message 1 (its own STORE and EXPUNGE): B hears one EXPUNGE, then
        # A appends again and both agree on the UIDs.
        a.command(b"STORE 1 +FLAGS.SILENT (\\Deleted)")
        assert a.command(b"EXPUNGE") == [b"* 1 EXPUNGE"]
        told = a.command(b"APPEND INBOX ()", b"Subject: six\r\n\r\nsix\r\n")
        assert _exists(told) == [5], told
        heard = []
        deadline = time.monotonic() + 10
        while not _exists(heard) and time.monotonic() < deadline:
            heard += b.command(b"NOOP")
        assert [line for line in heard if line.endswith(b"EXPUNGE")] == [b"* 1 EXPUNGE"]
        assert _exists(heard) == [5], heard
        for session in (a, b):
            uids = [line for line in session.command(b"FETCH 1:* (UID)")]
            assert uids == [b"* %d FETCH (UID %d)" % (n, n + 1) for n in range(1, 6)], uids
            assert session.command(b"UID SEARCH ALL") == [b"* SEARCH 2 3 4 5 6"]
        a.close()
        b.close()
    finally:
        second.stop()
