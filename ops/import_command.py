"""``objmail import --user U [--mailbox M] [--no-create] [--json] PATH...``: bring a
user's existing mail (Maildir, Maildir++ tree, mbox file or directory of them) into
objmail, with flags and arrival dates.

Resumable: Ctrl-C stops after the messages in flight are committed, and running the
same command again skips what is there already (:mod:`ops.importer`).  Exit codes as
``objmail deliver``: 0 imported, 65 some messages refused (too big; the rest went in),
66 a path holds no mail, 67 no such user, 73 no such mailbox (with ``--no-create``),
77 over quota, 75 PostgreSQL or object servers unavailable (rerun to resume), 130
interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from dataclasses import asdict
from pathlib import Path

from director.client import BlobClient
from metadata.delivery import Deliverer
from metadata.errors import NoSuchMailbox, OverQuota
from metadata.mailboxnames import INBOX
from metadata.store import MetadataStore
from ops.cli import CommandContext
from ops.exitcodes import (
    EX_DATAERR,
    EX_INTERRUPTED,
    EX_NOINPUT,
    EX_OK,
    EX_TEMPFAIL,
    FAILURES,
    exit_code,
    fail,
)
from ops.importer import Importer, ImportStats
from ops.jobrun import ProgressLine, StopFlag, human
from ops.mailsource import SourceError, SourceFolder, discover


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("import", help="import Maildir or mbox mail into a user's "
                                           "mailboxes (resumable)")
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="a Maildir (its Maildir++ subfolders too), an mbox file, or a "
                             "directory of mbox files")
    parser.add_argument("--user", "-u", required=True, help="the user to import into")
    parser.add_argument("--mailbox", "-m", default=INBOX,
                        help="mailbox for PATH itself; its subfolders go below it "
                             "(default INBOX, whose subfolders are top level)")
    parser.add_argument("--no-create", action="store_true",
                        help="refuse mailboxes that do not exist instead of creating them")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=run)


def run(ctx: CommandContext) -> int:
    folders: list[SourceFolder] = []
    try:
        for path in ctx.args.paths:
            folders += discover(Path(path), ctx.args.mailbox)
    except SourceError as exc:
        ctx.warn(f"objmail import: {exc}")
        return EX_NOINPUT
    line = ProgressLine(ctx, "import")

    def progress(stats: ImportStats) -> None:
        line.show(f"{stats.messages}/{stats.total} messages, {stats.imported} imported "
                  f"({human(stats.bytes)}), {stats.skipped} there already")

    async def work() -> tuple[ImportStats, BaseException | None]:
        flag = StopFlag(ctx, asyncio.current_task())
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, flag.press)
        creds = ctx.credentials
        store = await MetadataStore.open(ctx.config.cluster.pg_dsn, pool_min=1, pool_max=4,
                                         password=creds.pg_password)
        try:
            blobs = await BlobClient.open(ctx.config.cluster, ctx.config.director,
                                          auth=creds.redis)
            try:
                user = await store.users.get(ctx.args.user)
                importer = Importer(store, Deliverer(store, blobs, ctx.config.metadata, ctx.config.imapd.max_message_size), user,
                                    create=not ctx.args.no_create, stop=flag,
                                    progress=progress)
                try:
                    return await importer.run(folders), None
                except FAILURES as exc:
                    return importer.stats, exc
            finally:
                await blobs.aclose()
        finally:
            await store.close()
            loop.remove_signal_handler(signal.SIGINT)

    try:
        stats, failure = asyncio.run(work())
    except FAILURES as exc:  # before any message: an outage is worth a rerun (75)
        return fail(ctx, exc, "objmail import", unavailable=EX_TEMPFAIL)
    finally:
        line.done()
    report(ctx, stats)
    if failure is not None:
        return failed(ctx, failure)
    if stats.interrupted:
        ctx.warn("objmail import: interrupted; run the same command again to resume")
        return EX_INTERRUPTED
    return EX_DATAERR if stats.failed else EX_OK


def failed(ctx: CommandContext, exc: BaseException) -> int:
    """End an import stopped by ``exc`` after its report, saying how to go on."""
    if isinstance(exc, NoSuchMailbox):
        hint = "leave out --no-create to create it"
    elif isinstance(exc, OverQuota):
        hint = "stopped (raise the quota and run again)"
    elif exit_code(exc, unavailable=EX_TEMPFAIL) == EX_TEMPFAIL:
        hint = "run the same command again to resume"
    else:
        hint = ""
    return fail(ctx, exc, "objmail import", unavailable=EX_TEMPFAIL, hint=hint)


def report(ctx: CommandContext, stats: ImportStats) -> None:
    if ctx.args.json:
        ctx.say(json.dumps(asdict(stats), indent=2))
        return
    ctx.say(f"import: {stats.messages} of {stats.total} messages: {stats.imported} imported "
            f"({human(stats.bytes)}), {stats.skipped} there already, {stats.failed} refused")
    for name, count in stats.folders.items():
        ctx.say(f"  {name}: {count} imported" + (" (created)" if name in stats.created
                                                 else ""))
    for failure in stats.failures:
        ctx.warn(f"  refused: {failure}")
