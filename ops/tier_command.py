"""``objmail tier [--once] [--dry-run] [--rate BYTES] [--status | --cancel] [--json]``:
move blobs between the tiers of the storage hierarchy.

Runs the tier job (:mod:`director.tiering`) in the foreground under its lease, as the
directors do every ``director.tier_interval``: hot blobs (read ``tier_hot_reads`` times,
decayed) get their hot layout back, blobs not accessed for ``tier_cold_after`` get the
cold one.  Without ``--once``, passes run until the demotion sweep has gone round the
whole index; Ctrl-C stops after the blob in hand and the next run resumes from the saved
cursor.  ``--dry-run`` lists what a pass would move and changes nothing.  ``--status``
shows the sweep, the tiers and the hottest blobs.  Exits 0 when every move was made, 75
when some blob could not be moved now (a node down, a copy refused, no good copy), 78
when no tiers are configured.
"""

from __future__ import annotations

import argparse
import json

from director.client import BlobClient
from director.tiering import RUN_FIELDS, Tierer, TierStats
from ops.cli import EX_OK, EX_TEMPFAIL, EX_USAGE, CommandContext
from ops.config import ConfigError
from ops.exitcodes import EX_CONFIG
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
    parser = sub.add_parser("tier", help="demote cold blobs to slower tiers and promote hot "
                                         "ones (what the directors do in the background)")
    parser.add_argument("--once", action="store_true",
                        help="one pass (promotions, then a slice of the demotion sweep)")
    parser.add_argument("--dry-run", action="store_true",
                        help="show what one pass would move; change nothing")
    add_run_arguments(parser, "bytes/s copied at most, e.g. 50M (default "
                              "director.tier_rate)")
    parser.set_defaults(handler=run)


def run(ctx: CommandContext) -> int:
    try:
        rate = parse_rate(ctx.args.rate)
    except ConfigError as exc:
        ctx.warn(f"objmail: {exc}")
        return EX_USAGE

    async def work(client: BlobClient, stop: StopFlag) -> int:
        tierer = Tierer(client, rate=rate, dry_run=ctx.args.dry_run)
        if ctx.args.status:
            return await status(ctx, tierer)
        if tierer.tiers is None:
            ctx.warn("objmail: no storage tiers are configured ([[director.tiers]] in the "
                     "config; docs/director.md, \"Tiers\")")
            return EX_CONFIG
        if ctx.args.cancel:
            return await cancel_run(ctx, tierer, RUN_FIELDS)
        return await tier(ctx, tierer, stop)

    return run_job(ctx, work)


async def tier(ctx: CommandContext, tierer: Tierer, stop: StopFlag) -> int:
    line = ProgressLine(ctx, tierer.job)

    def progress(stats: object) -> None:
        assert isinstance(stats, TierStats)
        line.show(f"bucket {stats.cursor}/{stats.buckets}, {stats.checked} blobs checked, "
                  f"{stats.promoted} promoted, {stats.demoted} demoted "
                  f"({human(stats.bytes)})")

    passes: list[TierStats] = []
    try:
        while True:
            stats = await tierer.run_once(stop=stop, progress=progress)
            passes.append(stats)
            if ctx.args.once or ctx.args.dry_run or stop() or stats.finished:
                break
    finally:
        line.done()
    total = combine(passes)
    if ctx.args.json:
        ctx.say(json.dumps(total, indent=2))
    else:
        verb = "would move" if tierer.dry_run else "moved"
        ctx.say(f"tier: {verb} {total['promoted']} blob(s) to the hot layout and "
                f"{total['demoted']} to the cold one, {total['fixed']} in neither to the "
                f"hot one ({human(total['bytes'])} copied) in "
                f"{total['passes']} pass(es); {total['checked']} checked, "
                f"{total['skipped']} left as they were, {total['bad']} queued for repair"
                + ("" if passes[-1].finished else
                   f"; the sweep stopped at bucket {passes[-1].cursor}/"
                   f"{passes[-1].buckets}: run objmail tier again to resume"))
        if tierer.dry_run:
            for move in total["moves"][:50]:
                added = ", ".join(move["added"]) or "-"
                removed = ", ".join(move["removed"]) or "-"
                ctx.say(f"  {move['blob']} -> {move['to']}: + {added}; - {removed}")
    if stop():
        return EX_INTERRUPTED
    return EX_TEMPFAIL if total["skipped"] or total["bad"] or total["errors"] else EX_OK


async def status(ctx: CommandContext, tierer: Tierer) -> int:
    fields = await tierer.status()
    if ctx.args.json:
        ctx.say(json.dumps(fields, indent=2))
        return EX_OK
    tiers = fields["tiers"]
    if not tiers:
        ctx.say("tier: no storage tiers are configured")
    else:
        ctx.say("tiers (fastest first): " + ", ".join(
            f"{t['name']} (rank {t['rank']}: {t['replicas']} hot, {t['cold_replicas']} cold "
            "copies)" for t in tiers))
    last = fields.get("last_finished", 0.0)
    sweep = (f"a sweep is in progress since {when(fields['started_at'])}, at bucket "
             f"{fields.get('cursor', 0)}/{fields['buckets']}" if fields["running"]
             else "no sweep in progress")
    ctx.say(f"tier: {sweep}" + (f"; the last finished at {when(last)} "
                                f"({fields.get('last_promoted', 0):.0f} promoted, "
                                f"{fields.get('last_demoted', 0):.0f} demoted)"
                                if last else ""))
    temp = fields["temperature"]
    ctx.say(f"temperature: {temp['tracked_reads']} blobs with reads tracked, "
            f"{temp['tracked_seen']} with a last access")
    for hot in temp["hottest"]:
        ctx.say(f"  {hot['blob']}  {hot['reads']:.1f} reads (decayed)")
    return EX_OK
