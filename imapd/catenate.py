"""CATENATE (RFC 4469): an APPEND whose message is joined from TEXT literals and the data
of IMAP URLs (RFC 5092) naming messages, or parts of them, in the user's own mailboxes.

:func:`parse_url` is pure: it reads one URL of the forms RFC 4469 5 allows, absolute or
relative, into an :class:`ImapUrl`::

    imap://user@host/INBOX;UIDVALIDITY=385759045/;UID=20/;SECTION=1.MIME/;PARTIAL=0.512
    //host/Drafts/;UID=20                 (network-path reference)
    /Drafts;UIDVALIDITY=385759045/;UID=20/;section=HEADER          (absolute path)
    ;UID=20/;SECTION=2                    (relative to the selected mailbox)

:func:`catenate` then joins the parts, reading each URL as ``BODY.PEEK[section]<partial>``
would (so no ``\\Seen`` is set), and stops with ``TOOBIG`` as soon as the total passes the
message size limit.  The session delivers the result like any APPEND, through the
splitter and the blob store, so parts taken from stored messages are stored once.

A URL that cannot be served is ``NO [BADURL url]``: a syntax RFC 5092 does not allow here,
``URLAUTH`` (not offered), a user name other than the logged-in one, a mailbox that does not
exist, a UIDVALIDITY that does not match, a UID that is not there, a relative URL while no
mailbox is selected.  The host is not checked: an installation has no one name, and the
mailbox, UIDVALIDITY and UID must all match the user's own data anyway.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from imapd import fetchatts, mutf7
from imapd.commands import CatText, CatUrl
from imapd.errors import ImapdError
from imapd.fetchatts import BodySection, Partial
from imapd.lexer import ParseError
from metadata.errors import MessageTooBig
from runtime import errors as kinds

__all__ = ["BadUrl", "ImapUrl", "catenate", "parse_url"]

_URL = re.compile(
    r"""(?ix)
    ^(?:(?:(?:imap:)?//(?:(?P<user>[^@/;?]*)(?:;AUTH=[^@/;?]*)?@)?[^/;?@]*)?  # a server
       /(?P<mailbox>[^;?]+?)(?:;UIDVALIDITY=(?P<uidvalidity>[1-9][0-9]{0,9}))?/)?
    ;UID=(?P<uid>[1-9][0-9]{0,9})
    (?:/;SECTION=(?P<section>[^/;?]+))?
    (?:/;PARTIAL=(?P<origin>[0-9]{1,10})(?:\.(?P<count>[1-9][0-9]{0,9}))?)?$
    """)


class BadUrl(ImapdError, kinds.InvalidInput):
    """A CATENATE URL this server cannot serve (answered ``NO [BADURL url]``).

    :ivar url: the URL as the client sent it.
    """

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{reason}: {url}")
        self.url = url
        self.reason = reason


@dataclass(frozen=True)
class ImapUrl:
    """One message (part) an IMAP URL names.

    :ivar mailbox: the mailbox's name, None for a URL relative to the selected mailbox.
    :ivar uidvalidity: the UIDVALIDITY the URL requires, if it names one.
    :ivar section: ``BODY.PEEK[section]<partial>`` of the message, what the URL stands for.
    """

    mailbox: str | None
    uidvalidity: int | None
    uid: int
    section: BodySection


def _mailbox_name(encoded: str) -> str:
    """A URL's mailbox: %-escapes undone, UTF-8, then modified UTF-7 undone when the name
    is written that way (RFC 5092 allows both)."""
    name = urllib.parse.unquote(encoded, errors="strict")
    if "&" in name and name.isascii():
        try:
            return mutf7.decode(name)
        except mutf7.MUTF7Error:
            return name
    return name if name.upper() != "INBOX" else "INBOX"


def parse_url(url: str, *, user: str) -> ImapUrl:
    """Read one CATENATE URL (see the module docstring).

    :param user: the logged-in user: a URL naming another is refused.
    :raises BadUrl: the URL is not one this server can serve.
    """
    found = _URL.match(url)
    if found is None:
        raise BadUrl(url, "Not an IMAP URL of a message")
    if found["user"] and urllib.parse.unquote(found["user"]) != user:
        raise BadUrl(url, "The URL names another user")
    try:
        mailbox = (_mailbox_name(found["mailbox"]) if found["mailbox"] is not None
                   else None)
        section_text = urllib.parse.unquote(found["section"] or "", errors="strict")
    except UnicodeDecodeError:
        raise BadUrl(url, "The URL is not UTF-8") from None
    try:
        (att,) = fetchatts.parse(b"BODY.PEEK[" + section_text.encode("ascii") + b"]")
    except (ParseError, UnicodeEncodeError, ValueError):
        raise BadUrl(url, "Invalid section") from None
    assert isinstance(att, BodySection)
    if found["origin"] is not None:
        count = int(found["count"]) if found["count"] is not None else None
        att = BodySection(att.section, peek=True, partial=Partial(int(found["origin"]), count))
    uidvalidity = int(found["uidvalidity"]) if found["uidvalidity"] is not None else None
    return ImapUrl(mailbox, uidvalidity, int(found["uid"]), att)


async def catenate(parts: Sequence[CatText | CatUrl], *, limit: int,
                   read: Callable[[str], Awaitable[bytes]]) -> bytes:
    """The message ``parts`` make.

    :param limit: the largest message (``imapd.max_message_size``).
    :param read: the data of one URL (raises :class:`BadUrl`).
    :raises MessageTooBig: the parts add up to more than ``limit``.
    """
    out: list[bytes] = []
    size = 0
    for part in parts:
        data = part.data if isinstance(part, CatText) else await read(part.url)
        size += len(data)
        if size > limit:
            raise MessageTooBig(size, limit)
        out.append(data)
    return b"".join(out)
