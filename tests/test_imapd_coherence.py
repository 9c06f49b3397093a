"""Several sessions of one mailbox on two imapd processes, interleaving STORE, EXPUNGE and
APPEND: each session's picture of the mailbox, built only from what the server told it
(EXISTS, EXPUNGE, FETCH FLAGS, in whatever command they came), ends exactly PostgreSQL's.

The sessions speak raw IMAP (a small client here), so that no untagged response is lost
or interpreted by a library: every one of them is applied to the session's model, and a
FETCH whose UID disagrees with the model's sequence numbers fails the test at once.  The
changes of the other process arrive through the change feed (PostgreSQL notifications),
so the final comparison polls with NOOP until the feed has been heard.
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import pytest

from metadata.flags import Flags
from tests.conftest import SessionCluster
from tests.imapd_process import Imapd, Mail, self_signed, start_imapd
from tests.waiting import wait_until

pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]

_TAGGED = re.compile(rb"^(t\d+) (OK|NO|BAD)")
_NUMBERED = re.compile(rb"^\* (\d+) (EXISTS|EXPUNGE|FETCH)\b(.*)$")
_FETCH_UID = re.compile(rb"\bUID (\d+)")
_FETCH_FLAGS = re.compile(rb"\bFLAGS \(([^)]*)\)")
_VANISHED = re.compile(rb"^\* VANISHED")
#: The UID of an announced message that FETCH did not return (expunged meanwhile).
_UNKNOWN = 0


@pytest.fixture(scope="module")
def servers(test_cluster: SessionCluster, storage_cluster: object,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Imapd, Imapd]]:
    tls = self_signed(tmp_path_factory.mktemp("tls"))
    first = start_imapd(test_cluster, "imapd-coherence-a", tls)
    try:
        second = start_imapd(test_cluster, "imapd-coherence-b", tls)
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()


@pytest.fixture(scope="module")
def mail(test_cluster: SessionCluster, storage_cluster: object) -> Mail:
    return Mail(test_cluster.config)


class Session:
    """One IMAP session and its model of the selected mailbox: UIDs in sequence order and
    each message's flags (without ``\\Recent``, which is per session)."""

    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.file = self.sock.makefile("rb")
        self.counter = 0
        self.uids: list[int] = []
        self.flags: dict[int, frozenset[str]] = {}
        self.exists = 0
        #: UIDs whose FLAGS the server sent during the last top-level command.
        self.heard_flags: set[int] = set()
        greeting = self.file.readline()
        assert greeting.startswith(b"* OK"), greeting

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def command(self, text: str, literal: bytes | None = None, *,
                catch_up: bool = True) -> bytes:
        """Run one command; apply its untagged responses; return the tagged status."""
        self.counter += 1
        tag = f"t{self.counter}".encode()
        if catch_up:
            self.heard_flags = set()
        if literal is None:
            self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        else:
            self.sock.sendall(tag + b" " + text.encode() + b" {%d+}\r\n" % len(literal)
                              + literal + b"\r\n")
        while True:
            line = self.file.readline()
            assert line, f"{self.name}: connection closed during {text}"
            line = line.rstrip(b"\r\n")
            found = _TAGGED.match(line)
            if found and found.group(1) == tag:
                assert found.group(2) == b"OK", f"{self.name}: {text}: {line!r}"
                break
            self._untagged(line)
        if catch_up:
            self._catch_up()
        return line

    def _untagged(self, line: bytes) -> None:
        assert not _VANISHED.match(line), "QRESYNC is not enabled: no VANISHED expected"
        found = _NUMBERED.match(line)
        if found is None:
            return
        number, kind, rest = int(found.group(1)), found.group(2), found.group(3)
        if kind == b"EXISTS":
            assert number >= len(self.uids), f"{self.name}: EXISTS {number} went back"
            self.exists = number
        elif kind == b"EXPUNGE":
            assert 1 <= number <= len(self.uids), f"{self.name}: EXPUNGE {number}"
            uid = self.uids.pop(number - 1)
            self.flags.pop(uid, None)
            self.exists -= 1
        else:
            uid_match = _FETCH_UID.search(rest)
            flags_match = _FETCH_FLAGS.search(rest)
            if number > len(self.uids):
                # A new message, announced by EXISTS before, named in sequence order.
                assert number <= self.exists, (
                    f"{self.name}: FETCH {number} of an unannounced message")
                assert uid_match is not None
                uid = int(uid_match.group(1))
                assert uid > max(self.uids, default=0)
                self._pad(number - 1)
                self.uids.append(uid)
            uid = self.uids[number - 1]
            if uid_match is not None:
                if uid == _UNKNOWN:
                    uid = self.uids[number - 1] = int(uid_match.group(1))
                assert int(uid_match.group(1)) == uid, (
                    f"{self.name}: FETCH {number} says UID {uid_match.group(1)!r}, "
                    f"the session's sequence numbers say {uid}")
            if flags_match is not None:
                self.heard_flags.add(uid)
                self.flags[uid] = frozenset(
                    f.decode() for f in flags_match.group(1).split() if f != b"\\Recent")

    def _catch_up(self) -> None:
        """Learn the UIDs and flags of the messages EXISTS announced.  A message expunged
        elsewhere meanwhile is announced but no longer returned by FETCH: its UID stays
        unknown until its EXPUNGE comes (and the pictures differ until then)."""
        while self.exists > len(self.uids):
            announced = self.exists
            self.command(f"FETCH {len(self.uids) + 1}:{announced} (UID FLAGS)",
                         catch_up=False)
            self._pad(announced)

    def _pad(self, count: int) -> None:
        self.uids += [_UNKNOWN] * (count - len(self.uids))

    def picture(self) -> list[tuple[int, frozenset[str] | None]]:
        return [(uid, self.flags.get(uid)) for uid in self.uids]


def truth(dsn: str, password: str | None, user: str) -> list[tuple[int, frozenset[str]]]:
    """The INBOX of ``user`` as PostgreSQL holds it."""
    async def read() -> list[tuple[int, frozenset[str]]]:
        conn = await asyncpg.connect(dsn, password=password)
        try:
            rows = await conn.fetch(
                "SELECT mm.uid, mm.flags, mm.keywords FROM mailbox_messages mm "
                "JOIN users u ON u.id = mm.user_id JOIN mailboxes mb ON mb.user_id = u.id "
                "AND mb.id = mm.mailbox_id WHERE u.name = $1 AND mb.name = 'INBOX' "
                "ORDER BY mm.uid", user)
        finally:
            await conn.close()
        return [(r["uid"], frozenset(Flags(r["flags"], tuple(r["keywords"])).names()))
                for r in rows]

    return asyncio.run(read())


def message(n: int) -> bytes:
    return (f"From: a{n}@example.org\r\nTo: b@example.org\r\nSubject: coherence {n}\r\n"
            f"Message-ID: <coherence.{n}@example.org>\r\n\r\nbody {n}\r\n").encode()


def run_script(session: Session, rng: random.Random, first_message: int) -> None:
    """A random mix of STORE, EXPUNGE, APPEND, NOOP and FETCH by one session."""
    flags = ["\\Seen", "\\Flagged", "\\Answered", "$Work", "$Later"]
    appended = first_message
    for _step in range(30):
        op = rng.choices(["store", "expunge", "append", "noop", "fetch"], [6, 2, 2, 1, 1])[0]
        # A message announced and expunged before this session could FETCH it has no
        # known UID (until its EXPUNGE arrives): not one to name in a command.
        known = [uid for uid in session.uids if uid != _UNKNOWN]
        if op == "append":
            appended += 1
            session.command("APPEND INBOX", message(appended))
        elif op == "noop" or not known:
            session.command("NOOP")
        elif op == "fetch":
            session.command("FETCH 1:* (UID FLAGS)")
        elif op == "store":
            picked = sorted(rng.sample(known, min(len(known), rng.choice([1, 1, 3]))))
            sign = rng.choice("+-")
            names = " ".join(rng.sample(flags, rng.choice([1, 2])))
            silent = rng.choice(["", ".SILENT"])
            session.command(f"UID STORE {','.join(map(str, picked))} "
                            f"{sign}FLAGS{silent} ({names})")
            if silent:
                # The client knows what it did (RFC 3501 6.4.6); the server tells it only
                # what others did.  A message expunged meanwhile is gone from the model.
                # FLAGS the server sent for a message during the STORE were read after it
                # (the flags found, or a later change by another session that the report
                # after the command carried): they include this change, and applying it
                # again on top could undo the later one.
                change = frozenset(names.split())
                for uid in picked:
                    if uid in session.flags and uid not in session.heard_flags:
                        old = session.flags[uid]
                        session.flags[uid] = old | change if sign == "+" else old - change
        else:
            uid = rng.choice(known)
            session.command(f"UID STORE {uid} +FLAGS.SILENT (\\Deleted)")
            session.command("EXPUNGE")


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_sessions_on_two_processes_see_exactly_postgresql(
        servers: tuple[Imapd, Imapd], mail: Mail, seed: int) -> None:
    user = f"coherent{seed}"
    mail.create_user(user)
    mail.deliver(user, [message(n) for n in range(12)])
    first, second = servers
    sessions = [Session(f"{server.name}#{k}", server.imap_port)
                for k, server in enumerate((first, second, first, second))]
    try:
        for session in sessions:
            session.command(f"LOGIN {user} secret")
            session.command("SELECT INBOX")
        # Each session runs its own script in its own thread: the four really run at
        # once, two in each process.
        with ThreadPoolExecutor(len(sessions)) as pool:
            for done in [pool.submit(run_script, s, random.Random(seed * 10 + k), 1000 * k)
                         for k, s in enumerate(sessions)]:
                done.result()
        dsn = mail.config.cluster.pg_dsn
        password = mail.credentials.pg_password
        expected = truth(dsn, password, user)
        assert expected, "the script should leave messages behind"

        def converged() -> bool:
            for s in sessions:
                s.command("NOOP")
            return all(s.picture() == expected for s in sessions)

        try:
            wait_until(converged, timeout=30, interval=0.2)
        except AssertionError:
            for s in sessions:
                picture = s.picture()
                assert picture == expected, (s.name, sorted(set(picture) ^ set(expected)))
            raise
        for s in sessions:
            s.command("FETCH 1:* (UID FLAGS)")  # and a full re-read agrees with the model
            assert s.picture() == expected, s.name
    finally:
        for s in sessions:
            s.close()


@pytest.mark.parametrize("uid_store", [False, True])
def test_silent_store_reports_what_another_process_did_to_the_message(
        servers: tuple[Imapd, Imapd], mail: Mail, uid_store: bool) -> None:
    """``STORE .SILENT`` over a message another session changed since this one last heard:
    the change would be masked (the message's mod-sequence is now this session's own, and
    a session is not told its own changes), so the STORE reports the flags it found."""
    user = f"masked{int(uid_store)}"
    mail.create_user(user)
    mail.deliver(user, [message(n) for n in range(3)])
    first, second = servers
    one, other = Session("one", first.imap_port), Session("other", second.imap_port)
    try:
        for session in (one, other):
            session.command(f"LOGIN {user} secret")
            session.command("SELECT INBOX")
        assert one.picture() == other.picture() == [(u, frozenset()) for u in (1, 2, 3)]
        other.command("UID STORE 2 +FLAGS (\\Flagged)")
        one.command(f"{'UID ' if uid_store else ''}STORE 2 +FLAGS.SILENT (\\Seen)")
        one.flags[2] = one.flags[2] | {"\\Seen"}  # what the client knows it did
        one.command("NOOP")
        assert one.flags[2] == {"\\Seen", "\\Flagged"}
        assert one.picture() == truth(mail.config.cluster.pg_dsn,
                                      mail.credentials.pg_password, user)
    finally:
        one.close()
        other.close()
