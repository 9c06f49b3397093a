"""Real clients from Debian against a real imapd process: mbsync (isync) and offlineimap3
sync a mailbox down and up — new messages, flag changes, deletions — over COMPRESS=DEFLATE,
and the local maildir holds exactly the delivered bytes; getmail6 fetches and deletes over POP3.

The messages are LF-only corpus files: maildir clients store LF line ends (IMAP sends CRLF
and they convert back), so for these the maildir file must equal the delivered file byte
for byte.  What the clients themselves do to messages is allowed for, and only that:

* mbsync writes its own ``X-TUID:`` line at the end of the header of every message it
  propagates (isync's crash-recovery marker, sync.c ``copy_msg_convert``);
  :func:`without_tuid` removes exactly that one line before comparing;
* offlineimap3 and getmail6 pass every message through Python's ``email`` package, which
  drops an mbox ``From `` line and re-spaces some headers; they get corpus messages tagged
  ``stdlib-roundtrip-exact`` (FEATURES.tsv), which that round trip leaves intact;
* getmail6 writes the envelope sender as a first ``Return-Path:`` line; POP3 carries no
  envelope, so it is ``<unknown>``, and :func:`without_return_path` removes that line.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from imapclient import IMAPClient

from metadata.sections import imap_view
from tests.imapd_process import Imapd, Mail, imapd_fixtures
from tests.imapd_support import corpus

pytestmark = pytest.mark.timeout(120)

#: LF-only, two with an mbox "From " line, attachments, message/rfc822 (for mbsync).
LF_MESSAGES = (
    "apache-spamassassin/nice/mime9",
    "mailgun-flanker/attached-pdf.eml",
    "apache-james-mime4j/mimetools-testmsgs/mp-msg-rfc822.msg",
    "apache-james-mime4j/mimetools-testmsgs/twopart.msg",
    "apache-james-mime4j/mimetools-testmsgs/attachment-filename-encoding-UTF8.msg",
)
#: LF-only and ``stdlib-roundtrip-exact`` (for the clients built on Python's email).
ROUNDTRIP_MESSAGES = (
    "mailgun-flanker/attached-pdf.eml",
    "mailgun-flanker/spam/broken-ctype.eml",
    "apache-spamassassin/nice/cjk/big5-base64.1",
    "mailgun-flanker/bounce/delayed.eml",
    "apache-james-mime4j/mimetools-testmsgs/infinite.msg",
)


cluster, certificate, imapd, mail = imapd_fixtures("imapd-clients")


def new_user(mail: Mail, label: str) -> str:
    name = f"{label}{time.time_ns() % 10**12}"
    mail.create_user(name)
    return name


def maildir_files(folder: Path) -> dict[str, Path]:
    """Message files of a maildir folder by their unique part (before ':2,')."""
    out = {}
    for sub in ("cur", "new"):
        for path in (folder / sub).iterdir() if (folder / sub).exists() else ():
            out[path.name.split(":2,")[0].split(",U=")[0]] = path
    return out


def flags_of(path: Path) -> str:
    return path.name.split(":2,")[1] if ":2," in path.name else ""


def contents(folder: Path) -> list[bytes]:
    return sorted(p.read_bytes() for p in maildir_files(folder).values())


_TUID = re.compile(rb"\nX-TUID: [^\n]{12}(\r?\n)(\r?\n)")


def without_tuid(data: bytes, *, required: bool = True) -> bytes:
    """``data`` without the one ``X-TUID`` line mbsync inserts before the blank line that
    ends the header (and only there); ``required``: mbsync wrote this copy."""
    header_end = data.find(b"\n\n")
    crlf_end = data.find(b"\r\n\r\n")
    ends = [e for e in (header_end, crlf_end) if e >= 0]
    limit = min(ends) + 4 if ends else len(data)
    found = _TUID.search(data, 0, limit + 40)
    if found is None and not required:
        return data
    assert found is not None, "mbsync's X-TUID line is missing"
    return data[:found.start()] + b"\n" + found.group(2) + data[found.end():]


def without_return_path(data: bytes) -> bytes:
    """``data`` without the ``Return-Path: <unknown>`` line getmail puts first."""
    line = b"Return-Path: <unknown>\n"
    assert data.startswith(line), "getmail's Return-Path line is missing"
    return data[len(line):]


def run_client(argv: list[str], env: dict[str, str] | None = None) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                            env={**os.environ, **(env or {})}, check=False)
    assert result.returncode == 0, f"{argv[0]} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def imap(imapd: Imapd, user: str) -> IMAPClient:
    client = IMAPClient("127.0.0.1", port=imapd.imap_port, ssl=False, timeout=10)
    client.login(user, "secret")
    return client


def server_bodies(imapd: Imapd, user: str) -> dict[int, bytes]:
    with imap(imapd, user) as c:
        c.select_folder("INBOX", readonly=True)
        uids = c.search()
        if not uids:
            return {}
        return {uid: item[b"BODY[]"] for uid, item in c.fetch(uids, ["BODY.PEEK[]"]).items()}


def test_mbsync_syncs_down_and_up(imapd: Imapd, mail: Mail, tmp_path: Path,
                                  certificate: tuple[Path, Path]) -> None:
    """mbsync over IMAPS: the delivered messages land in the maildir byte for byte; a flag
    set on the server and one set locally cross over; a message written locally is
    uploaded exactly; deletions on either side are propagated."""
    user = new_user(mail, "mbsync")
    raws = [corpus(name) for name in LF_MESSAGES]
    mail.deliver(user, raws)
    local = tmp_path / "mail"
    local.mkdir()
    config = tmp_path / "mbsyncrc"
    config.write_text(f"""
IMAPAccount objmail
Host localhost
Port {imapd.imaps_port}
User {user}
Pass secret
SSLType IMAPS
CertificateFile {certificate[0]}

IMAPStore remote
Account objmail

MaildirStore local
Path {local}/
Inbox {local}/INBOX

Channel sync
Far :remote:
Near :local:
Patterns INBOX
Create Both
Expunge Both
SyncState *
""")
    sync = ["mbsync", "-c", str(config), "-a"]
    run_client(sync)
    # isync 1.4 compresses whenever the server offers COMPRESS=DEFLATE (inside TLS here).
    assert f"DEFLATE on for {user}" in imapd.log()
    inbox = local / "INBOX"

    def local_messages() -> list[bytes]:
        # The message written locally below has no X-TUID: mbsync only marks its copies.
        return sorted(without_tuid(data, required=False) for data in contents(inbox))

    def local_file(raw: bytes) -> Path:
        return next(p for p in maildir_files(inbox).values()
                    if without_tuid(p.read_bytes(), required=False) == raw)

    assert sorted(without_tuid(data) for data in contents(inbox)) == sorted(raws)

    # A flag set on the server reaches the file name; one set locally reaches the server.
    with imap(imapd, user) as c:
        c.select_folder("INBOX")
        c.add_flags([1], [b"\\Flagged"])
    run_client(sync)
    assert "F" in flags_of(local_file(raws[0]))
    assert all("F" not in flags_of(local_file(raw)) for raw in raws[1:])
    target = local_file(raws[1])
    target.rename(target.parent.parent / "cur" / (target.name.split(":2,")[0] + ":2,S"))
    run_client(sync)
    with imap(imapd, user) as c:
        c.select_folder("INBOX")
        assert c.search(["SEEN"]) == [2]

    # A message written into the maildir is uploaded exactly (CRLF on the wire).
    new = b"From: local@example.org\nSubject: written locally\n\nhello from the maildir\n"
    (inbox / "new" / f"{time.time_ns()}.local.host").write_bytes(new)
    run_client(sync)
    bodies = server_bodies(imapd, user)
    assert imap_view(new) in [without_tuid(b, required=False) for b in bodies.values()]
    assert len(bodies) == len(raws) + 1

    # Deleted on the server: gone locally; deleted locally: gone on the server.
    with imap(imapd, user) as c:
        c.select_folder("INBOX")
        c.add_flags([3], [b"\\Deleted"])
        c.expunge()
    run_client(sync)
    assert raws[2] not in local_messages() and len(local_messages()) == len(raws)
    local_file(raws[4]).unlink()
    run_client(sync)
    bodies = server_bodies(imapd, user)
    assert sorted(without_tuid(b, required=False) for b in bodies.values()) == sorted(
        imap_view(r) for r in local_messages())
    assert imap_view(raws[4]) not in bodies.values()


def test_offlineimap_syncs_down_and_up(imapd: Imapd, mail: Mail, tmp_path: Path) -> None:
    """offlineimap3 (plain IMAP, LOGIN allowed by the test config): delivered messages land
    byte for byte; flags and deletions cross over both ways; a local message is uploaded
    exactly."""
    user = new_user(mail, "offlineimap")
    raws = [corpus(name) for name in ROUNDTRIP_MESSAGES[:4]]
    mail.deliver(user, raws)
    local = tmp_path / "mail"
    config = tmp_path / "offlineimaprc"
    config.write_text(f"""
[general]
accounts = objmail
metadata = {tmp_path / "meta"}
ui = quiet

[Account objmail]
localrepository = local
remoterepository = remote

[Repository local]
type = Maildir
localfolders = {local}

[Repository remote]
type = IMAP
remotehost = 127.0.0.1
remoteport = {imapd.imap_port}
remoteuser = {user}
remotepass = secret
ssl = no
starttls = no
usecompression = yes
folderfilter = lambda folder: folder == "INBOX"
""")
    sync = ["offlineimap", "-c", str(config), "-o", "-u", "quiet"]
    run_client(sync, {"HOME": str(tmp_path)})
    inbox = local / "INBOX"
    assert contents(inbox) == sorted(raws)
    assert f"DEFLATE on for {user}" in imapd.log()  # it synced over COMPRESS=DEFLATE

    with imap(imapd, user) as c:
        c.select_folder("INBOX")
        c.add_flags([2], [b"\\Answered"])
    run_client(sync, {"HOME": str(tmp_path)})
    answered = [p for p in maildir_files(inbox).values() if "R" in flags_of(p)]
    assert [p.read_bytes() for p in answered] == [raws[1]]

    target = next(p for p in maildir_files(inbox).values() if p.read_bytes() == raws[0])
    target.rename(target.parent.parent / "cur" / (target.name.split(":2,")[0] + ":2,FS"))
    new = b"From: local@example.org\nSubject: offline\n\nwritten offline\n"
    (inbox / "new" / f"{time.time_ns()}_0.local.host,FMD5=x").write_bytes(new)
    run_client(sync, {"HOME": str(tmp_path)})
    with imap(imapd, user) as c:
        c.select_folder("INBOX")
        assert c.search(["FLAGGED", "SEEN"]) == [1]
    bodies = server_bodies(imapd, user)
    assert imap_view(new) in bodies.values()

    with imap(imapd, user) as c:
        c.select_folder("INBOX")
        c.add_flags([4], [b"\\Deleted"])
        c.expunge()
    victim = next(p for p in maildir_files(inbox).values() if p.read_bytes() == raws[2])
    victim.unlink()
    run_client(sync, {"HOME": str(tmp_path)})
    assert raws[3] not in contents(inbox)
    bodies = server_bodies(imapd, user)
    assert imap_view(raws[2]) not in bodies.values()
    assert sorted(bodies.values()) == sorted(imap_view(r) for r in contents(inbox))


def test_getmail_fetches_and_deletes_over_pop3(imapd: Imapd, mail: Mail,
                                              tmp_path: Path) -> None:
    """getmail6 over POP3 retrieves every message into a maildir, byte for byte, and with
    delete=true leaves INBOX empty."""
    user = new_user(mail, "getmail")
    raws = [corpus(name) for name in ROUNDTRIP_MESSAGES]
    mail.deliver(user, raws)
    # getmail refuses to write a maildir as root; it then delivers as "nobody", which needs
    # a directory outside pytest's private (0700) temp tree.
    as_root = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix="objmail-getmail-")) if as_root else tmp_path
    maildir = base / "maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    if as_root:
        for path in (base, maildir, *(maildir / sub for sub in ("cur", "new", "tmp"))):
            path.chmod(0o777)
    rc = tmp_path / "getmailrc"
    rc.write_text(f"""
[retriever]
type = SimplePOP3Retriever
server = 127.0.0.1
port = {imapd.pop3_port}
username = {user}
password = secret

[destination]
type = Maildir
path = {maildir}/
{"user = nobody" if as_root else ""}

[options]
delete = true
read_all = true
received = false
delivered_to = false
verbose = 0
""")
    try:
        run_client(["getmail", "--getmaildir", str(tmp_path), "--rcfile", str(rc)])
        got = contents(maildir)
        # The messages that carry a Return-Path of their own are left alone.
        assert sorted(d if d in raws else without_return_path(d) for d in got) == sorted(raws)
    finally:
        if as_root:
            shutil.rmtree(base, ignore_errors=True)
    assert server_bodies(imapd, user) == {}


def test_tools_are_installed() -> None:
    """The Debian clients the other tests drive are on this machine."""
    for tool in ("mbsync", "offlineimap", "getmail"):
        assert shutil.which(tool) is not None, tool
