"""``objmail scrub [--node ID] [--rate BYTES] [--status | --cancel] [--json]``: read back
and verify every stored copy; queue bad ones for repair.

Runs the scrub job (:mod:`director.scrubber`) in the foreground under its lease.  Ctrl-C
stops after the page of index buckets in hand; running the command again resumes the
same run where it stopped, its counters intact.  ``--status`` shows a run in progress;
``--cancel`` forgets it, so the next invocation starts from the first bucket.  Exits 0
when every copy verified, 75 when some were bad (queued for repair: ``objmail repair``,
or a directord, rewrites them) or could not be asked, 78 when the keyring lacks a key
some copy is sealed under (nothing is queued for it).
"""

from __future__ import annotations

import argparse
import json

from director.client import BlobClient
from director.scrubber import RUN_FIELDS, Scrubber, ScrubStats
from ops.cli import EX_OK, EX_TEMPFAIL, EX_USAGE, CommandContext
from ops.config import ConfigError
from ops.jobrun import (
    EX_INTERRUPTED,
    ProgressLine,
    StopFlag,
    add_run_arguments,
    cancel_run,
    combine,
    human,
    parse_rate,
    run_job,
    when,
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("scrub", help="read back and verify every stored copy; queue "
                                          "bad ones for repair (resumable)")
    parser.add_argument("--node", metavar="ID", help="only the copies on this object server")
    add_run_arguments(parser, "read at most this much per second (e.g. 50M; default: no "
                              "limit)")
    parser.set_defaults(handler=run)


def run(ctx: CommandContext) -> int:
    try:
        rate = parse_rate(ctx.args.rate)
    except ConfigError as exc:
        ctx.warn(f"objmail: {exc}")
        return EX_USAGE

    async def work(client: BlobClient, stop: StopFlag) -> int:
        scrubber = Scrubber(client, node_id=ctx.args.node, rate=rate)
        if ctx.args.node is not None:
            snap = await client.snapshot(force=True)
            if snap.get(ctx.args.node) is None:
                ctx.warn(f"objmail: no object server {ctx.args.node!r} is registered "
                         "(objmail node list)")
                return EX_USAGE
        if ctx.args.status:
            return await status(ctx, scrubber)
        if ctx.args.cancel:
            return await cancel_run(ctx, scrubber, RUN_FIELDS)
        return await scrub(ctx, scrubber, stop)

    return run_job(ctx, work)


async def scrub(ctx: CommandContext, scrubber: Scrubber, stop: StopFlag) -> int:
    line = ProgressLine(ctx, scrubber.job)

    def progress(stats: object) -> None:
        assert isinstance(stats, ScrubStats)
        line.show(f"{stats.buckets_done}/{stats.buckets} buckets, {stats.items} blobs, "
                  f"{stats.copies} copies good ({human(stats.bytes)}), "
                  f"{stats.corrupt + stats.missing} bad")

    try:
        stats = await scrubber.run_once(stop=stop, progress=progress)
    finally:
        line.done()
    if ctx.args.json:
        ctx.say(json.dumps(combine([stats]), indent=2))
    else:
        head = (f"{scrubber.job}: " + ("done" if stats.finished else
                f"stopped at {stats.buckets_done}/{stats.buckets} buckets; run objmail "
                "scrub again to resume"))
        ctx.say(f"{head}: {stats.items} blob(s), {stats.copies} copies verified "
                f"({human(stats.bytes)}), {stats.corrupt} corrupt, {stats.missing} missing, "
                f"{stats.unreachable} not reachable; {stats.queued} blob(s) queued for "
                "repair")
        if stats.examples:
            ctx.say(f"bad copies of e.g. {', '.join(stats.examples[:3])} (objmail where "
                    "ID; objmail repair rewrites them)")
    if stop() or not stats.finished:
        return EX_INTERRUPTED
    bad = stats.corrupt + stats.missing + stats.unreachable
    return EX_OK if not bad else EX_TEMPFAIL


async def status(ctx: CommandContext, scrubber: Scrubber) -> int:
    fields = await scrubber.status()
    if ctx.args.json:
        ctx.say(json.dumps(fields, indent=2))
    elif not fields["running"]:
        last = fields.get("last_finished", 0.0)
        ctx.say(f"{scrubber.job}: no run in progress" + (
            f"; the last finished at {when(last)} with {fields.get('last_bad', 0):.0f} bad "
            f"copies in {fields.get('last_items', 0):.0f} blobs" if last else ""))
    else:
        ctx.say(f"{scrubber.job}: a run is in progress since {when(fields['started_at'])}: "
                f"{fields['cursor']}/{scrubber.index.layout.buckets} buckets, "
                f"{fields.get('items', 0):.0f} blobs, {fields.get('corrupt', 0):.0f} corrupt "
                f"and {fields.get('missing', 0):.0f} missing copies so far")
    return EX_OK
