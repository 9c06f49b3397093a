"""Bulk import (``objmail import``, :mod:`ops.importer`, :mod:`ops.mailsource`) into the
session's real stack: the corpus's mbox files and Maildir++ trees built from corpus
messages; every imported message read back from its blobs byte for byte.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from metadata.delivery import Deliverer
from metadata.records import User
from metadata.splitter import parse_skeleton, reassemble
from metadata.uidset import UidSet
from ops.cli import EX_OK, main
from ops.config import Config
from ops.importer import Importer, ImportStats
from ops.mailsource import discover, from_line_date, maildir_flags, mbox_flags
from tests.conftest import CORPUS, SessionCluster
from tests.mailstack import MailStack, open_stack

RLUG = CORPUS / "apache-james-mime4j" / "mbox" / "test-1"
NICE = CORPUS / "apache-spamassassin" / "nice.mbox"


@pytest.fixture()
def stack(storage_cluster: Config) -> Iterator[MailStack]:
    with open_stack(storage_cluster) as s:
        yield s


def mailbox_messages(stack: MailStack, user: User, name: str) -> list[tuple[bytes, set[str],
                                                                            dt.datetime]]:
    """(bytes reassembled from the blobs, flag names, INTERNALDATE) per entry, by UID."""
    box = stack.run(stack.store.mailboxes.get(user.id, name))
    out = []
    for entry in stack.run(stack.store.messages.fetch(user.id, box.id, UidSet.all(),
                                                      items={"skeleton"})):
        assert entry.skeleton_id is not None
        skeleton = stack.run(stack.blobs.get(entry.skeleton_id))
        parts = stack.run(stack.blobs.get_many(parse_skeleton(skeleton).blob_ids()))
        out.append((reassemble(skeleton, parts), set(entry.flags.names()),
                    entry.internaldate))
    return out


def run_import(stack: MailStack, user: User, path: Path, mailbox: str = "INBOX",
               **kw: object) -> ImportStats:
    importer = Importer(stack.store, stack.deliverer, user, **kw)  # type: ignore[arg-type]
    return stack.run(importer.run(discover(path, mailbox)))


def test_mbox_messages_arrive_byte_for_byte_and_a_rerun_adds_nothing(stack: MailStack
                                                                     ) -> None:
    """mime4j's test mbox holds five messages, each also in a file of its own (with the
    blank line that separates it from the next, which mbox does not count as part of
    the message, RFC 4155).  Imported, each reads back exactly, dated by its From line;
    importing again finds all five there and adds nothing."""
    user = stack.new_user("mbox")
    stats = run_import(stack, user, RLUG / "mbox.rlug")
    assert (stats.total, stats.imported, stats.skipped, stats.failed) == (5, 5, 0, 0)
    got = mailbox_messages(stack, user, "INBOX")
    assert [raw + b"\n" for raw, _f, _d in got] == [
        (RLUG / f"mbox.rlug-{n}").read_bytes() for n in range(5)]
    first_from = (RLUG / "mbox.rlug").read_bytes().split(b"\n", 1)[0].decode()
    assert got[0][2] == from_line_date(first_from)
    again = run_import(stack, user, RLUG / "mbox.rlug")
    assert (again.imported, again.skipped) == (0, 5)
    assert len(mailbox_messages(stack, user, "INBOX")) == 5


def maildir(root: Path, files: dict[str, tuple[bytes, int]]) -> Path:
    """A Maildir at ``root``: ``files`` maps ``cur/NAME`` or ``new/NAME`` to (bytes,
    mtime)."""
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name, (data, mtime) in files.items():
        (root / name).write_bytes(data)
        os.utime(root / name, (mtime, mtime))
    return root


def corpus(n: int) -> list[bytes]:
    return [f.read_bytes() for f in sorted((CORPUS / "mikel-mail").rglob("*.eml"))[:n]]


def test_a_maildir_tree_with_flags_keywords_and_dates(stack: MailStack, tmp_path: Path,
                                                      test_cluster: SessionCluster,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    """``objmail import`` of a Maildir++ tree as Dovecot leaves it: INBOX in order of
    arrival with flags from the file names (``new/`` unflagged), a Dovecot keyword,
    INTERNALDATE from each file's mtime; ``.Sent`` into the existing Sent, ``.Lists.py``
    into a created ``Lists/py``; identical messages under two names are both kept."""
    m = corpus(6)
    root = maildir(tmp_path / "Maildir", {
        "cur/1000.a.host:2,S": (m[0], 1_600_000_000),
        "cur/1001.b.host:2,FRSa": (m[1], 1_600_000_100),
        "new/1002.c.host": (m[2], 1_600_000_200),
        "cur/1003.d.host:2,T": (m[3], 1_600_000_300),
        "cur/1004.e.host:2,S": (m[3], 1_600_000_400),  # the same bytes again
    })
    (root / "dovecot-keywords").write_text("0 $Junk\n")
    (root / "dovecot-uidlist").write_text("3 V1 N5\n")  # not a message
    maildir(root / ".Sent", {"cur/2000.f.host:2,S": (m[4], 1_600_000_500)})
    maildir(root / ".Lists.py", {"cur/3000.g.host:2,": (m[5], 1_600_000_600)})
    user = stack.new_user("maildir")
    cfg = ["--config", str(test_cluster.run_dir / "objmail.toml")]
    capsys.readouterr()
    assert main([*cfg, "import", "--user", user.name, "--json", str(root)]) == EX_OK
    stats = json.loads(capsys.readouterr().out)
    assert (stats["total"], stats["imported"], stats["skipped"]) == (7, 7, 0)
    assert stats["folders"] == {"INBOX": 5, "Sent": 1, "Lists/py": 1}
    assert stats["created"] == ["Lists/py"]

    def at(t: int) -> dt.datetime:
        return dt.datetime.fromtimestamp(t, dt.UTC)

    assert mailbox_messages(stack, user, "INBOX") == [
        (m[0], {"\\Seen"}, at(1_600_000_000)),
        (m[1], {"\\Flagged", "\\Answered", "\\Seen", "$Junk"}, at(1_600_000_100)),
        (m[2], set(), at(1_600_000_200)),
        (m[3], {"\\Deleted"}, at(1_600_000_300)),
        (m[3], {"\\Seen"}, at(1_600_000_400))]
    assert mailbox_messages(stack, user, "Sent") == [(m[4], {"\\Seen"}, at(1_600_000_500))]
    assert mailbox_messages(stack, user, "Lists/py") == [(m[5], set(), at(1_600_000_600))]

    assert main([*cfg, "import", "--user", user.name, str(root)]) == EX_OK
    out = capsys.readouterr().out
    assert "7 of 7 messages: 0 imported" in out and "7 there already" in out


def test_an_interrupted_import_resumes_without_duplicates(stack: MailStack,
                                                          tmp_path: Path) -> None:
    """Stopped after a few messages (messages in flight are still committed), an import
    run again brings in exactly the rest, once each, in source order; a message in the
    source twice ends up in the mailbox twice."""
    m = corpus(12)
    files = {f"cur/{1000 + i}.x.host:2,S": (data, 1_600_000_000 + i)
             for i, data in enumerate([*m, m[0]])}
    root = maildir(tmp_path / "md", files)
    user = stack.new_user("resume")
    committed = [0]

    def progress(stats: ImportStats) -> None:
        committed[0] = stats.imported

    stopped = run_import(stack, user, root, window=4, batch=2, progress=progress,
                         stop=lambda: committed[0] >= 3)
    assert stopped.interrupted and 3 <= stopped.imported < 13
    assert len(mailbox_messages(stack, user, "INBOX")) == stopped.imported
    rest = run_import(stack, user, root, window=4, batch=2)
    assert not rest.interrupted
    assert rest.skipped == stopped.imported and rest.imported == 13 - stopped.imported
    assert [raw for raw, _f, _d in mailbox_messages(stack, user, "INBOX")] == [*m, m[0]]


def test_a_directory_of_mbox_files_is_one_mailbox_each(stack: MailStack, tmp_path: Path
                                                       ) -> None:
    """mutt-style mail directory: each mbox file becomes a mailbox under ``--mailbox``;
    files that are not mbox (the per-message copies beside it) are left alone."""
    user = stack.new_user("mboxdir")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "rlug").write_bytes((RLUG / "mbox.rlug").read_bytes())
    (tmp_path / "nice").write_bytes(NICE.read_bytes())
    (tmp_path / "notes.txt").write_text("not mail\n")
    stats = run_import(stack, user, tmp_path, "Archive")
    assert stats.folders == {"Archive/lists/rlug": 5, "Archive/nice": 3}
    assert len(mailbox_messages(stack, user, "Archive/nice")) == 3


def test_command_errors(stack: MailStack, tmp_path: Path, test_cluster: SessionCluster,
                        capsys: pytest.CaptureFixture[str]) -> None:
    """66 for a path with no mail, 67 for an unknown user, 73 for a missing mailbox with
    ``--no-create`` (nothing imported)."""
    cfg = ["--config", str(test_cluster.run_dir / "objmail.toml")]
    user = stack.new_user("errors")
    (tmp_path / "empty").mkdir()
    assert main([*cfg, "import", "-u", user.name, str(tmp_path / "empty")]) == 66
    assert "holds no mbox files" in capsys.readouterr().err
    assert main([*cfg, "import", "-u", user.name, str(tmp_path / "missing")]) == 66
    assert main([*cfg, "import", "-u", "no-such-user-q", str(NICE)]) == 67
    assert main([*cfg, "import", "-u", user.name, "-m", "Nope", "--no-create",
                 str(NICE)]) == 73
    assert "Nope" in capsys.readouterr().err
    assert stack.run(stack.store.mailboxes.status(user.id, "INBOX")).messages == 0
    # Over quota: the mailbox fills up to it (as deliveries would), then the import stops.
    first = next(iter(discover(NICE)[0].messages())).raw
    # Its IMAP size counts a CRLF per LF; the next message is 1 KB more.
    tight = stack.new_user("tight", quota=len(first) + first.count(b"\n") + 200)
    assert main([*cfg, "import", "-u", tight.name, str(NICE)]) == 77
    assert "over quota" in capsys.readouterr().err.lower()
    assert stack.run(stack.store.mailboxes.status(tight.id, "INBOX")).messages == 1


def test_messages_over_the_size_limit_are_refused_and_the_rest_imported(
        stack: MailStack) -> None:
    """A message larger than ``imapd.max_message_size`` is counted and named, and the
    import goes on with the others."""
    sizes = [len((RLUG / f"mbox.rlug-{n}").read_bytes()) - 1 for n in range(5)]
    limit = sorted(sizes)[2]  # the three smallest fit
    config = dataclasses.replace(stack.config, imapd=dataclasses.replace(
        stack.config.imapd, max_message_size=limit))
    user = stack.new_user("limits")
    importer = Importer(stack.store, Deliverer(stack.store, stack.blobs, config.metadata, config.imapd.max_message_size), user)
    stats = stack.run(importer.run(discover(RLUG / "mbox.rlug")))
    assert (stats.imported, stats.failed) == (3, 2)
    assert len(stats.failures) == 2 and all("mbox.rlug message" in f for f in stats.failures)
    assert sorted(len(raw) for raw, _f, _d in mailbox_messages(stack, user, "INBOX")) == \
        sorted(n for n in sizes if n <= limit)


def test_flag_and_date_parsing() -> None:
    """The pure parts: Maildir info letters, mbox Status headers, From-line dates."""
    assert maildir_flags("1.x.host:2,DFRST") == ("\\Draft", "\\Flagged", "\\Answered",
                                                 "\\Seen", "\\Deleted")
    assert maildir_flags("1.x.host:2,Sab", {"a": "$Work", "b": "Later"}) == (
        "\\Seen", "$Work", "Later")
    assert maildir_flags("1.x.host") == () and maildir_flags("1.x.host:2,") == ()
    assert mbox_flags(b"Subject: x\nStatus: RO\nX-Status: AF\n\nStatus: D\n") == (
        "\\Seen", "\\Answered", "\\Flagged")
    assert from_line_date("From a@b  Wed May 16 00:40:34 2001") == dt.datetime(
        2001, 5, 16, 0, 40, 34, tzinfo=dt.UTC)
    assert from_line_date("From a@b Thu Dec  3 07:43 2026") == dt.datetime(
        2026, 12, 3, 7, 43, tzinfo=dt.UTC)
    assert from_line_date("From MAILER-DAEMON") is None
