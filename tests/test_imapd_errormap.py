"""The one error map of IMAP, POP3 and LMTP: each kind of error to its exact reply, and the
LMTP session answering every recipient through it (over a real PostgreSQL)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from director.codec import CodecError
from director.errors import (
    BlobCorrupt,
    BlobUnavailable,
    IndexLayoutMismatch,
    IndexUnavailable,
)
from director.memcache_client import NodeTimeout
from imapd.binary import UnknownCte
from imapd.errormap import imap_error, lmtp_reply, log_failure, pop3_error
from imapd.errors import TryCreate
from imapd.fetch import Unsupported
from imapd.lmtp import LMTPSession
from imapd.lmtp_parser import Command, MessageData
from imapd.response import to_bytes
from metadata.errors import (
    InvalidName,
    MailboxExists,
    MailboxRefused,
    MessageTooBig,
    NoSuchMailbox,
    NoSuchMessage,
    NoSuchUser,
    OverQuota,
    SchemaError,
    UidsExhausted,
    Unavailable,
)
from metadata.flags import InvalidFlag
from metadata.sections import SectionError, SectionMapError
from metadata.splitter import SkeletonError
from runtime import errors as kinds
from tests.imapd_support import Env, environment
from tests.metadata_support import fresh_database

# -- IMAP ------------------------------------------------------------------------------


@pytest.mark.parametrize(("exc", "line"), [
    # corruption, whichever package found it
    (SkeletonError("truncated skeleton"), "t NO [CORRUPTION] Message data is corrupt"),
    (SectionMapError("not a section map"), "t NO [CORRUPTION] Message data is corrupt"),
    (BlobCorrupt("every replica"), "t NO [CORRUPTION] Message data is corrupt"),
    (CodecError("decryption failed"), "t NO [CORRUPTION] Message data is corrupt"),
    # unavailable
    (Unavailable("PostgreSQL unreachable"),
     "t NO [UNAVAILABLE] Temporarily unavailable, try again"),
    (IndexUnavailable("Redis Cluster unreachable"),
     "t NO [UNAVAILABLE] Temporarily unavailable, try again"),
    (BlobUnavailable("too few"), "t NO [UNAVAILABLE] Temporarily unavailable, try again"),
    (NodeTimeout("no reply"), "t NO [UNAVAILABLE] Temporarily unavailable, try again"),
    (ConnectionResetError(104, "reset"),
     "t NO [UNAVAILABLE] Temporarily unavailable, try again"),
    # limits
    (OverQuota(1, 2, 3), "t NO [OVERQUOTA] Quota exceeded"),
    (MessageTooBig(10, 5), "t NO [TOOBIG] Message too large"),
    (UidsExhausted("no UIDs left"), "t NO [LIMIT] Mailbox has used every UID"),
    (kinds.LimitExceeded("too many things"), "t NO [LIMIT] too many things"),
    # the client's mistakes
    (InvalidFlag("bad flag \\Foo"), "t BAD bad flag \\Foo"),
    (SectionError("invalid section '1.X'"), "t BAD invalid section '1.X'"),
    (Unsupported("cannot answer that"), "t BAD cannot answer that"),
    (UnknownCte("Unknown Content-Transfer-Encoding x-gzip"),
     "t NO [UNKNOWN-CTE] Unknown Content-Transfer-Encoding x-gzip"),
    (TryCreate("no mailbox 'x'"), "t NO [TRYCREATE] No such mailbox"),
    (NoSuchMailbox("no mailbox"), "t NO [NONEXISTENT] No such mailbox"),
    (MailboxExists("exists"), "t NO [ALREADYEXISTS] Mailbox already exists"),
    (InvalidName("empty level"), "t NO [CANNOT] Invalid mailbox name: empty level"),
    (MailboxRefused("INBOX cannot be deleted"), "t NO [CANNOT] INBOX cannot be deleted"),
    (NoSuchMessage("gone"), "t NO [EXPUNGEISSUED] Some messages were expunged meanwhile"),
    # misconfigured, and bugs
    (SchemaError("run objmail db migrate"), "t NO [CONTACTADMIN] Server misconfigured"),
    (IndexLayoutMismatch("buckets"), "t NO [CONTACTADMIN] Server misconfigured"),
    (KeyError("internals"), "t NO [SERVERBUG] Internal server error"),
])
def test_imap_words_for_each_error(exc: BaseException, line: str) -> None:
    """IMAP's map: each kind gets its RFC 5530 code, a few classes their own; the same
    condition gets the same answer whichever package noticed it."""
    assert to_bytes(imap_error("t", exc)) == line.encode() + b"\r\n"


# -- POP3 ------------------------------------------------------------------------------


@pytest.mark.parametrize(("exc", "line"), [
    (SkeletonError("x"), b"-ERR [SYS/PERM] Message data is corrupt"),
    (SectionMapError("x"), b"-ERR [SYS/PERM] Message data is corrupt"),
    (BlobUnavailable("x"), b"-ERR [SYS/TEMP] Temporarily unavailable, try again"),
    (Unavailable("x"), b"-ERR [SYS/TEMP] Temporarily unavailable, try again"),
    (OverQuota(1, 2, 3), b"-ERR [SYS/PERM] over quota: 1 + 3 bytes exceeds the limit of 2"),
    (NoSuchMailbox("no mailbox 'INBOX'"), b"-ERR no mailbox 'INBOX'"),
    (SchemaError("x"), b"-ERR [SYS/PERM] Server misconfigured"),
    (RuntimeError("internals"), b"-ERR [SYS/PERM] Internal server error"),
])
def test_pop3_words_for_each_error(exc: BaseException, line: bytes) -> None:
    """POP3's map: temporary problems are [SYS/TEMP], ones retrying will not fix
    [SYS/PERM] (RFC 3206), the client's mistakes a plain -ERR."""
    assert pop3_error(exc) == line + b"\r\n"


# -- LMTP ------------------------------------------------------------------------------


@pytest.mark.parametrize(("exc", "line"), [
    (NoSuchUser("x"), "550 5.1.1 <ann@x.org>: no such user here"),
    (NoSuchMailbox("x"), "451 4.2.0 <ann@x.org>: mailbox went away, try again later"),
    (OverQuota(1, 2, 3), "552 5.2.2 <ann@x.org>: mailbox full"),
    (UidsExhausted("x"), "552 5.2.2 <ann@x.org>: mailbox full"),
    (MessageTooBig(10, 5), "552 5.3.4 Message size exceeds fixed limit of 5"),
    (kinds.LimitExceeded("too many"), "552 5.3.0 <ann@x.org>: too many"),
    (BlobCorrupt("x"), "554 5.3.0 <ann@x.org>: stored data is corrupt"),
    (Unavailable("x"), "451 4.3.0 <ann@x.org>: temporary failure, try again later"),
    (IndexUnavailable("x"), "451 4.3.0 <ann@x.org>: temporary failure, try again later"),
    (OSError(113, "No route to host"),
     "451 4.3.0 <ann@x.org>: temporary failure, try again later"),
    (InvalidName("bad"), "554 5.0.0 <ann@x.org>: bad"),
    (SchemaError("x"), "451 4.3.5 <ann@x.org>: system incorrectly configured"),
    (ZeroDivisionError("bug"), "451 4.3.0 <ann@x.org>: internal error"),
])
def test_lmtp_reply_for_each_error(exc: BaseException, line: str) -> None:
    """LMTP's map: RFC 3463 enhanced codes; outages, misconfiguration and bugs are 4xx
    (the MTA keeps the mail and retries), corruption, limits and bad input 5xx."""
    assert lmtp_reply(exc, "ann@x.org") == line


def test_lmtp_reply_without_an_address() -> None:
    """Before recipients are known (DATA analysis), the reply names no address."""
    assert lmtp_reply(BlobUnavailable("x")) == "451 4.3.0 temporary failure, try again later"


def test_log_failure_levels(caplog: pytest.LogCaptureFixture) -> None:
    """Bugs are logged with their traceback, corruption and misconfiguration as errors,
    outages as warnings, the client's mistakes not at all."""
    log = logging.getLogger("test.errormap")
    with caplog.at_level(logging.DEBUG, logger="test.errormap"):
        for exc in (KeyError("k"), BlobCorrupt("c"), SchemaError("s"), Unavailable("u"),
                    InvalidFlag("f"), OverQuota(1, 2, 3)):
            log_failure(log, exc, "FETCH")
    got = [(r.levelname, r.exc_info is not None) for r in caplog.records]
    assert got == [("ERROR", True), ("ERROR", False), ("ERROR", False), ("WARNING", False)]


# -- the LMTP session over the map ------------------------------------------------------


@pytest.fixture(scope="module")
def dsn(postgres: str) -> Iterator[str]:
    with fresh_database(postgres) as target:
        yield target


async def _deliver_two(env: Env, failure: Exception | None) -> list[str]:
    """One LMTP transaction for two users with the blob store failing as ``failure``."""
    ann = await env.user(f"ann{id(failure)}")
    bob = await env.user(f"bob{id(failure)}")
    s = LMTPSession(env.deliverer, env.config.imapd, "lmtp.test")
    await s.handle(Command("LHLO", "mx"))
    await s.handle(Command("MAIL", "FROM:<x@y.org>"))
    for user in (ann, bob):
        lines, _ = await s.handle(Command("RCPT", f"TO:<{user.name}@example.org>"))
        assert lines[0].startswith("250 ")
    env.blobs.failure = failure
    raw = b"Subject: kinds\r\n\r\nbody\r\n"
    return await s.data(MessageData(raw, len(raw), False))


@pytest.mark.parametrize(("failure", "code"), [
    (None, "250 2.0.0"),
    (BlobUnavailable("object servers down"), "451 4.3.0"),
    (BlobCorrupt("every replica is corrupt"), "554 5.3.0"),
    (IndexLayoutMismatch("index_buckets differs"), "451 4.3.5"),
    (RuntimeError("a bug in the blob store"), "451 4.3.0"),
], ids=["delivered", "unavailable", "corruption", "misconfigured", "bug"])
def test_lmtp_data_answers_every_recipient_through_the_map(
        dsn: str, failure: Exception | None, code: str) -> None:
    """Whatever kind of error storing the message meets, DATA answers it once per
    recipient, in the map's words (a bug included: no single 'Internal error' line)."""

    async def main() -> list[str]:
        async with environment(dsn) as env:
            return await _deliver_two(env, failure)

    replies = asyncio.run(main())
    assert [line[:9] for line in replies] == [code, code]
