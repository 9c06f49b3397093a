"""Mail stored the classic ways, read for import: Maildir, Maildir++ trees, mbox files.

What a migration from Dovecot, Courier or a Unix mail spool finds on disk:

* a **Maildir** (``cur/``, ``new/``, ``tmp/``): one file per message; flags in the name's
  ``:2,`` info (``D`` draft, ``F`` flagged, ``R`` answered, ``S`` seen, ``T`` trashed,
  imported as ``\\Deleted``; the letters ``a``-``z`` are Dovecot's keywords, named in the
  folder's ``dovecot-keywords``); the file's mtime is when it arrived (Dovecot's received
  date), which becomes INTERNALDATE.  ``new/`` holds messages no client has seen yet
  (imported without flags).  ``tmp/`` is deliveries in progress and is not read.
* a **Maildir++** tree: a Maildir whose subfolders ``.Sent``, ``.Lists.python`` are
  mailboxes ``Sent`` and ``Lists/python`` (names in modified UTF-7, as IMAP sends them);
* an **mbox** file (one message after each ``From `` line): read with the standard
  library's :class:`mailbox.mbox`; flags from the ``Status:``/``X-Status:`` headers
  (``R`` seen, ``A`` answered, ``F`` flagged, ``D`` deleted), INTERNALDATE from the
  ``From `` line's date; a directory of mbox files (mutt's, pine's) is one mailbox per
  file.

Messages are imported byte for byte as the source holds them: mbox's ``>From``
quoting is left as it is (mboxo and mboxrd cannot be told apart), and LF line ends stay
LF (imapd serves them as CRLF, as it does for any delivery).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import mailbox
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from imapd import mutf7
from metadata.mailboxnames import DELIMITER, INBOX

#: Maildir info letters and the IMAP flags they stand for.
MAILDIR_FLAGS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen",
                 "T": "\\Deleted"}
#: mbox Status/X-Status letters (as :meth:`mailbox.mboxMessage.get_flags` gives them).
MBOX_FLAGS = {"R": "\\Seen", "A": "\\Answered", "F": "\\Flagged", "D": "\\Deleted"}

_STATUS = re.compile(rb"^(?:X-)?Status:[ \t]*([A-Za-z]*)", re.M | re.I)
_DATE = re.compile(rb"^Date:[ \t]*(.*)$", re.M | re.I)
_FROM_DATE = re.compile(r"(\w{3} \w{3} [ \d]\d \d\d:\d\d(?::\d\d)? \d{4})\s*$")


class SourceError(ValueError):
    """A path holds nothing this module can import."""


@dataclass(frozen=True)
class SourceMessage:
    """One message to import.

    :param origin: where it came from (a file, or an mbox and the message's number), for
        reports.
    """

    raw: bytes
    flags: tuple[str, ...]
    internaldate: dt.datetime
    origin: str


@dataclass(frozen=True)
class SourceFolder:
    """One folder of the source and the mailbox it goes to."""

    mailbox: str
    path: Path
    kind: str  # "maildir" or "mbox"

    def messages(self) -> Iterator[SourceMessage]:
        """The folder's messages, oldest first."""
        if self.kind == "maildir":
            return _maildir_messages(self.path)
        return _mbox_messages(self.path)

    def count(self) -> int:
        if self.kind == "maildir":
            return len(_maildir_files(self.path))
        box = mailbox.mbox(self.path, create=False)
        try:
            return len(box)
        finally:
            box.close()


def is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir() and (path / "new").is_dir()


def discover(path: Path, mailbox_name: str = INBOX) -> list[SourceFolder]:
    """The folders under ``path`` and their target mailboxes (``mailbox_name`` for
    ``path`` itself, its descendants below it, except that INBOX's children are top
    level as in Maildir++).

    :raises SourceError: ``path`` is neither a Maildir, a Maildir++ tree, an mbox file
        nor a directory of mbox files.
    """
    if path.is_file():
        _check_mbox(path)
        return [SourceFolder(mailbox_name, path, "mbox")]
    if not path.is_dir():
        raise SourceError(f"{path}: no such file or directory")
    if is_maildir(path):
        found = [SourceFolder(mailbox_name, path, "maildir")]
        for sub in sorted(path.iterdir()):
            if sub.name.startswith(".") and sub.name not in (".", "..") and is_maildir(sub):
                levels = [mutf7.decode(p) for p in sub.name[1:].split(".") if p]
                found.append(SourceFolder(_child(mailbox_name, levels), sub, "maildir"))
        return found
    found = []
    for file in sorted(path.rglob("*")):
        rel = file.relative_to(path)
        if file.is_file() and not any(p.startswith(".") for p in rel.parts) \
                and _looks_like_mbox(file):
            found.append(SourceFolder(_child(mailbox_name, list(rel.parts)), file, "mbox"))
    if not found:
        raise SourceError(f"{path}: not a Maildir (no cur/ and new/) and holds no mbox files")
    return found


def _child(parent: str, levels: list[str]) -> str:
    if parent.upper() == INBOX:
        return DELIMITER.join(levels)
    return DELIMITER.join([parent, *levels])


def _looks_like_mbox(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(5) == b"From " or path.stat().st_size == 0


def _check_mbox(path: Path) -> None:
    if not _looks_like_mbox(path):
        raise SourceError(f"{path}: not an mbox file (it does not start with 'From ')")


# -- Maildir -----------------------------------------------------------------------------


def _maildir_files(path: Path) -> list[tuple[Path, bool]]:
    """(file, is it in new/), oldest first (mtime, then name: names start with the
    delivery time)."""
    files = []
    for sub in ("cur", "new"):
        with os.scandir(path / sub) as it:
            for entry in it:
                if entry.is_file() and not entry.name.startswith("."):
                    files.append((entry.stat().st_mtime, entry.name, Path(entry.path),
                                  sub == "new"))
    files.sort()
    return [(p, new) for _m, _n, p, new in files]


def _keywords(path: Path) -> dict[str, str]:
    """Dovecot's ``dovecot-keywords``: lines ``<n> <name>`` for the letters a-z."""
    names: dict[str, str] = {}
    try:
        text = (path / "dovecot-keywords").read_text("utf-8", "replace")
    except OSError:
        return names
    for line in text.splitlines():
        number, _, name = line.partition(" ")
        if number.isdigit() and int(number) < 26 and name.strip():
            names[chr(ord("a") + int(number))] = name.strip()
    return names


def maildir_flags(filename: str, keywords: dict[str, str] | None = None) -> tuple[str, ...]:
    """The IMAP flags of a Maildir file name's ``:2,`` info (unknown letters ignored)."""
    _, sep, info = filename.rpartition(":2,")
    if not sep:
        return ()
    names = [MAILDIR_FLAGS[c] for c in info if c in MAILDIR_FLAGS]
    names += [keywords[c] for c in info if keywords and c in keywords]
    return tuple(dict.fromkeys(names))


def _maildir_messages(path: Path) -> Iterator[SourceMessage]:
    keywords = _keywords(path)
    for file, new in _maildir_files(path):
        try:
            raw = file.read_bytes()
            mtime = file.stat().st_mtime
        except FileNotFoundError:  # expunged by a client while we read
            continue
        flags = () if new else maildir_flags(file.name, keywords)
        yield SourceMessage(raw, flags, dt.datetime.fromtimestamp(int(mtime), dt.UTC),
                            str(file))


# -- mbox --------------------------------------------------------------------------------


def from_line_date(from_: str) -> dt.datetime | None:
    """The date of an mbox ``From `` line (``sender Thu Dec  3 07:43:29 2026``), as
    UTC (the format has no zone), or None when it has none."""
    found = _FROM_DATE.search(from_)
    if found is None:
        return None
    text = " ".join(found.group(1).split())
    for fmt in ("%a %b %d %H:%M:%S %Y", "%a %b %d %H:%M %Y"):
        try:
            return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.UTC)
        except ValueError:
            continue
    return None


def mbox_flags(raw: bytes) -> tuple[str, ...]:
    """The IMAP flags a message's ``Status:`` and ``X-Status:`` headers give."""
    end = re.search(rb"\r?\n\r?\n", raw)
    header = raw[:end.start()] if end else raw
    letters = "".join(m.group(1).decode("ascii", "replace") for m in _STATUS.finditer(header))
    return tuple(dict.fromkeys(MBOX_FLAGS[c] for c in letters if c in MBOX_FLAGS))


def _mbox_messages(path: Path) -> Iterator[SourceMessage]:
    box = mailbox.mbox(path, create=False)
    try:
        for n, key in enumerate(box.keys(), 1):
            with_from = box.get_bytes(key, from_=True)
            from_line, _, raw = with_from.partition(b"\n")
            when = from_line_date(from_line.decode("latin-1")) or _date_header(raw) \
                or dt.datetime.fromtimestamp(int(path.stat().st_mtime), dt.UTC)
            yield SourceMessage(raw, mbox_flags(raw), when, f"{path} message {n}")
    finally:
        box.close()


def _date_header(raw: bytes) -> dt.datetime | None:
    found = _DATE.search(raw.split(b"\n\n", 1)[0])
    if found is None:
        return None
    try:
        when = email.utils.parsedate_to_datetime(found.group(1).decode("latin-1").strip())
    except (TypeError, ValueError, IndexError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
