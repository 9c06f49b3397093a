"""A real terminal client against a real imapd: neomutt (Debian's package), run inside a
private tmux server and driven with ``send-keys`` / ``capture-pane`` as a person at the
keyboard would, reads, threads, searches and moves mail.

What each step checks on the screen is what neomutt drew from the server's answers; what
it checks through a second IMAP connection is what neomutt made the server do:

* threading: neomutt threads from the ``References:``/``In-Reply-To:`` it fetched
  (``HEADER.FIELDS``), so a reply is drawn under its parent with the tree characters;
* reading: the pager shows the body (fetched with ``BODY.PEEK[]``), and after a sync the
  message is ``\\Seen`` on the server;
* searching: a ``=b`` limit pattern is neomutt's server-side body search (``UID SEARCH
  BODY``), so only the message containing the word stays in the index;
* moving: ``s`` (save) to a new folder, then ``$`` (sync): the message is in the folder
  byte for byte and gone from INBOX.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import pytest
from imapclient import IMAPClient

from metadata.sections import imap_view
from tests.imapd_process import Imapd, Mail, imapd_fixtures
from tests.imapd_support import corpus
from tests.waiting import wait_until

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("neomutt") is None or shutil.which("tmux") is None,
                       reason="needs Debian's neomutt and tmux (ops/setup-env installs them)"),
]

cluster, certificate, imapd, mail = imapd_fixtures("imapd-neomutt")

#: Corpus messages beside the thread, so the index holds more than the test's own mail.
CORPUS = (
    "apache-james-mime4j/mimetools-testmsgs/twopart.msg",
    "mailgun-flanker/attached-pdf.eml",
)

NEEDLE = "xylophonequartz"


def message(msgid: str, subject: str, body: str, day: int, parent: str | None = None) -> bytes:
    date = format_datetime(datetime(2026, 11, day, 9, 30, tzinfo=UTC))
    lines = [f"From: Ada <ada{day}@example.org>", "To: team@example.org",
             f"Subject: {subject}", f"Date: {date}", f"Message-ID: <{msgid}@example.org>"]
    if parent is not None:
        lines += [f"In-Reply-To: <{parent}@example.org>", f"References: <{parent}@example.org>"]
    return ("\r\n".join(lines) + "\r\n\r\n" + body + "\r\n").encode()


class Terminal:
    """neomutt in a detached tmux session on its own tmux server socket."""

    def __init__(self, workdir: Path, command: list[str]) -> None:
        self.socket = str(workdir / "tmux.sock")
        self.home = workdir
        self._tmux("-f", "/dev/null", "new-session", "-d", "-s", "mutt", "-x", "160",
                   "-y", "45", "-e", f"HOME={workdir}", "-e", "TERM=xterm-256color",
                   "-e", "LC_ALL=C.UTF-8", " ".join(command))

    def _tmux(self, *args: str) -> str:
        result = subprocess.run(["tmux", "-S", self.socket, *args], capture_output=True,
                                text=True, timeout=20, check=False)
        assert result.returncode == 0, f"tmux {args[0]} failed: {result.stderr}"
        return result.stdout

    def keys(self, *keys: str) -> None:
        """Named keys (``Enter``, ``C-u``) or single characters."""
        self._tmux("send-keys", "-t", "mutt", *keys)

    def type(self, text: str) -> None:
        self._tmux("send-keys", "-t", "mutt", "-l", text)

    def open_message(self, number: int) -> None:
        """Jump to message ``number`` (the jump prompt takes the first Enter), open it."""
        self.type(str(number))
        self.keys("Enter")
        self.keys("Enter")

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "mutt")

    def wait_for(self, test: Callable[[str], bool], what: str, timeout: float = 30) -> str:
        shown: list[str] = []

        def ready() -> bool:
            shown[:] = [self.screen()]
            return test(shown[0])

        try:
            wait_until(ready, timeout=timeout, interval=0.2, what=what)
        except AssertionError as failed:
            raise AssertionError(f"{failed}; the screen:\n{shown[-1]}") from None
        return shown[-1]

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True,
                       timeout=20, check=False)


@pytest.fixture
def neomutt(imapd: Imapd, mail: Mail, tmp_path: Path) -> Iterator[tuple[Terminal, str]]:
    user = f"neomutt{time.time_ns() % 10**12}"
    mail.create_user(user)
    mail.deliver(user, [corpus(name) for name in CORPUS])
    mail.deliver(user, [
        message("kickoff", "Project kickoff", "Let us start on Monday.", 1),
        message("reply1", "Re: Project kickoff", "Monday works for me.", 2, parent="kickoff"),
        message("lunch", "Lunch plans", f"The secret word is {NEEDLE} today.", 3),
        message("reply2", "Re: Project kickoff", "Tuesday would be better.", 4,
                parent="reply1"),
    ])
    rc = tmp_path / "muttrc"
    rc.write_text(f"""
set folder="imap://{user}@127.0.0.1:{imapd.imap_port}/"
set spoolfile="+INBOX"
set imap_user="{user}"
set imap_pass="secret"
set imap_authenticators="login"
set ssl_starttls=no
set ssl_force_tls=no
set imap_check_subscribed=no
set header_cache=""
set message_cachedir=""
set tmpdir="{tmp_path}"
set sort=threads
set sort_aux=date-sent
set ascii_chars=yes
set hide_thread_subject=no
set index_format="%4C %-12.12L %s"
set help=no
set markers=no
set wait_key=no
set confirmcreate=no
set confirmappend=no
set delete=yes
set move=no
set record=""
set postponed=""
set trash=""
set mark_old=no
set pager_index_lines=0
set pager_stop=yes
set timeout=2
set mail_check=2
""")
    terminal = Terminal(tmp_path, ["neomutt", "-n", "-F", str(rc)])
    try:
        yield terminal, user
    finally:
        terminal.close()


def imap(imapd: Imapd, user: str) -> IMAPClient:
    client = IMAPClient("127.0.0.1", port=imapd.imap_port, ssl=False, timeout=10)
    client.login(user, "secret")
    return client


def index_lines(screen: str) -> list[str]:
    """The index rows: they start with the message number neomutt draws (``%4C``)."""
    return [line for line in screen.splitlines() if line[:4].strip().isdigit()]


def test_neomutt_reads_threads_searches_and_moves(neomutt: tuple[Terminal, str],
                                                   imapd: Imapd) -> None:
    term, user = neomutt
    screen = term.wait_for(lambda s: "Lunch plans" in s and "Tuesday" not in s
                           and len(index_lines(s)) == 6, "the index with six messages")

    # Threads: both replies sit under "Project kickoff", the second under the first.
    rows = index_lines(screen)
    kickoff = next(i for i, row in enumerate(rows) if "Project kickoff" in row
                   and "Re:" not in row)
    assert "->Re: Project kickoff" in rows[kickoff + 1], screen
    assert "->Re: Project kickoff" in rows[kickoff + 2], screen
    depth = [rows[kickoff + k].index("->") for k in (1, 2)]
    assert depth[1] > depth[0], f"the second reply is not nested under the first:\n{screen}"

    # Reading: open "Lunch plans"; the pager shows its body.
    lunch = next(i for i, row in enumerate(rows) if "Lunch plans" in row)
    term.open_message(lunch + 1)
    term.wait_for(lambda s: f"The secret word is {NEEDLE} today." in s, "the message body")
    term.keys("q")
    term.wait_for(lambda s: len(index_lines(s)) == 6, "back at the index")
    term.keys("$")  # sync: neomutt writes the \Seen it set locally
    with imap(imapd, user) as c:
        c.select_folder("INBOX", readonly=True)
        wait_until(lambda: c.noop() is not None and c.search(["SEEN", "SUBJECT", "Lunch"]) != [],
                   timeout=20, what="\\Seen on the server")
        assert c.search(["SEEN"]) == c.search(["SUBJECT", "Lunch"])

    # Searching: a server-side body search keeps only the message with the word.
    term.keys("l")
    term.wait_for(lambda s: "Limit to messages matching" in s, "the limit prompt")
    term.type(f"=b {NEEDLE}")
    term.keys("Enter")
    screen = term.wait_for(lambda s: len(index_lines(s)) == 1, "one message after the limit")
    assert "Lunch plans" in index_lines(screen)[0]
    term.keys("l")
    term.wait_for(lambda s: "Limit to messages matching" in s, "the limit prompt")
    term.type("all")
    term.keys("Enter")
    screen = term.wait_for(lambda s: len(index_lines(s)) == 6, "all six again")

    # Moving: save the first reply to a new folder, then sync; it leaves INBOX.
    with imap(imapd, user) as c:
        c.select_folder("INBOX", readonly=True)
        uid = c.search(["HEADER", "Message-ID", "reply1@example.org"])[0]
        original = c.fetch([uid], ["BODY.PEEK[]"])[uid][b"BODY[]"]
    rows = index_lines(screen)
    reply = next(i for i, row in enumerate(rows) if "Re: Project kickoff" in row
                 and row.index("->") == depth[0])
    term.open_message(reply + 1)
    term.wait_for(lambda s: "Monday works for me." in s, "the first reply open")
    term.keys("s")
    term.wait_for(lambda s: "Save to mailbox" in s, "the save prompt")
    term.keys("C-u")
    term.type("=Archive")
    term.keys("Enter")
    term.wait_for(lambda s: "Save to mailbox" not in s, "the save to finish")
    term.keys("q")
    term.wait_for(lambda s: len(index_lines(s)) == 6, "back at the index")
    term.keys("$")
    term.wait_for(lambda s: len(index_lines(s)) == 5, "INBOX without the moved message")

    with imap(imapd, user) as c:
        c.select_folder("Archive", readonly=True)
        moved = c.search()
        assert len(moved) == 1
        assert c.fetch(moved, ["BODY.PEEK[]"])[moved[0]][b"BODY[]"] == original
        c.select_folder("INBOX", readonly=True)
        assert c.search(["HEADER", "Message-ID", "reply1@example.org"]) == []
        assert len(c.search()) == 5
    assert original == imap_view(message("reply1", "Re: Project kickoff",
                                         "Monday works for me.", 2, parent="kickoff"))
