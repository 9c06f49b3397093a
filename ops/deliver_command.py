"""``objmail deliver --user U [--mailbox M]``: a local delivery agent reading stdin.

Like an LDA (dovecot-lda, procmail) for an MTA's pipe transport or for scripts.
Exit codes follow sysexits.h (:mod:`ops.exitcodes`), so an MTA bounces permanent failures
and retries temporary ones: 0 delivered, 67 no such user, 73 no such mailbox, 77 over quota,
65 message too big, 75 temporary failure (PostgreSQL, Redis Cluster or object servers), 78
misconfigured (schema not migrated: retried too), 64 a bad --flag.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys

from director.client import BlobClient
from metadata.delivery import Deliverer
from metadata.flags import InvalidFlag
from metadata.store import MetadataStore
from ops.cli import CommandContext
from ops.exitcodes import EX_DATAERR, EX_OK, EX_TEMPFAIL, EX_USAGE, FAILURES, fail


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("deliver", help="deliver one message from stdin (exit codes as "
                                            "sysexits, like an LDA)")
    parser.add_argument("--user", "-u", required=True, help="recipient user name")
    parser.add_argument("--mailbox", "-m", default="INBOX", help="target mailbox (INBOX)")
    parser.add_argument("--flag", action="append", default=[], dest="flags",
                        help="flag to set, e.g. '\\Seen' (repeatable)")
    parser.set_defaults(handler=run)


def run(ctx: CommandContext) -> int:
    raw = sys.stdin.buffer.read()
    if not raw:
        ctx.warn("objmail deliver: empty message on stdin")
        return EX_DATAERR

    async def deliver() -> int:
        creds = ctx.credentials
        store = await MetadataStore.open(ctx.config.cluster.pg_dsn, pool_min=1, pool_max=2,
                                         password=creds.pg_password)
        try:
            blobs = await BlobClient.open(ctx.config.cluster, ctx.config.director,
                                          auth=creds.redis)
            try:
                done = await Deliverer(store, blobs, ctx.config.metadata, ctx.config.imapd.max_message_size).deliver(
                    ctx.args.user, raw, mailbox=ctx.args.mailbox, flags=ctx.args.flags,
                    internaldate=dt.datetime.now(dt.UTC))
            finally:
                await blobs.aclose()
        finally:
            await store.close()
        ctx.say(f"delivered to {done.user}/{done.mailbox} as UID {done.uid} "
                f"(UIDVALIDITY {done.uidvalidity}, {done.size} bytes)")
        return EX_OK

    try:
        return asyncio.run(deliver())
    except InvalidFlag as exc:  # from our command line, not from the message
        ctx.warn(f"objmail deliver: {exc}")
        return EX_USAGE
    except FAILURES as exc:  # an MTA retries 75 and bounces 69: outages are temporary
        return fail(ctx, exc, "objmail deliver", unavailable=EX_TEMPFAIL)
