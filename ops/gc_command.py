"""``objmail gc [--grace S] [--dry-run | --status | --cancel] [--json]``: delete blobs
no message references any more.

Runs the gc job (:mod:`director.collector`) in the foreground under its lease.  A run
announces itself, waits out the grace period (``director.gc_grace``, or ``--grace``)
so that deliveries in flight commit their references, then sweeps the index bucket by
bucket.  ``--grace`` below ``director.gc_min_grace`` (:data:`ops.config.MIN_GC_GRACE`,
600 s, by default) is refused: a delivery slower than the grace fails with a temporary
error rather than losing its blobs, but it still fails.  Ctrl-C stops at the next page of buckets; running the command again resumes the
same run where it stopped (its grace period already served).  ``--dry-run`` counts the
unreferenced blobs without deleting or announcing anything; ``--status`` shows a run in
progress; ``--cancel`` ends one, so puts stop announcing themselves.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from director.client import BlobClient
from director.collector import RUN_FIELDS, Collector, GcStats
from director.jobstate import number
from metadata.errors import Unavailable
from metadata.store import MetadataStore
from ops.cli import EX_OK, EX_TEMPFAIL, EX_USAGE, CommandContext
from ops.exitcodes import fail
from ops.jobrun import (
    EX_INTERRUPTED,
    ProgressLine,
    StopFlag,
    cancel_run,
    combine,
    run_job,
    when,
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("gc", help="delete blobs that no message references (mark and "
                                       "sweep after a grace period; resumable)")
    parser.add_argument("--grace", type=float, default=None, metavar="SECONDS",
                        help="wait this long after announcing before collecting "
                             "(default director.gc_grace; at least director.gc_min_grace); "
                             "a resumed run keeps its own")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--dry-run", action="store_true",
                      help="count unreferenced blobs; delete nothing")
    what.add_argument("--status", action="store_true", help="show a run in progress")
    what.add_argument("--cancel", action="store_true",
                      help="end a run in progress (what it deleted stays deleted)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=run)


def run(ctx: CommandContext) -> int:
    least = ctx.config.director.gc_min_grace
    if ctx.args.grace is not None and not ctx.args.grace >= least:
        ctx.warn(f"objmail: --grace {ctx.args.grace:g} is below the minimum of {least:g} s "
                 "(director.gc_min_grace): deliveries slower than the grace would fail")
        return EX_USAGE

    async def work(client: BlobClient, stop: StopFlag) -> int:
        store = await MetadataStore.open(ctx.config.cluster.pg_dsn, pool_min=1, pool_max=2,
                                         password=ctx.credentials.pg_password)
        try:
            # metadata's References is the collector's ReferenceChecker.
            collector = Collector(client, store.references, grace=ctx.args.grace)
            if ctx.args.dry_run:
                return await dry_run(ctx, collector)
            if ctx.args.status:
                return await status(ctx, collector)
            if ctx.args.cancel:
                return await cancel_run(ctx, collector, RUN_FIELDS)
            return await collect(ctx, collector, stop)
        except Unavailable as exc:  # PostgreSQL went away during the run
            return fail(ctx, exc, hint="run gc again to resume")
        finally:
            await store.close()

    return run_job(ctx, work)


async def collect(ctx: CommandContext, collector: Collector, stop: StopFlag) -> int:
    line = ProgressLine(ctx, "gc")

    def progress(stats: object) -> None:
        assert isinstance(stats, GcStats)
        if stats.phase == "guard":
            line.show(f"waiting {stats.guard_left:.0f} s of grace for deliveries in flight")
        else:
            line.show(f"{stats.buckets_done}/{stats.buckets} buckets, {stats.items} "
                      f"entries, {stats.collected} collected, {stats.kept} kept")

    try:
        stats = await collector.run_once(stop=stop, progress=progress)
    finally:
        line.done()
    if ctx.args.json:
        ctx.say(json.dumps(combine([stats]), indent=2))
    elif stats.finished:
        ctx.say(f"gc: {stats.items} index entries examined, {stats.referenced} referenced, "
                f"{stats.collected} blob(s) collected ({stats.copies_deleted} object-server "
                f"items deleted), {stats.kept} unreferenced kept for the next run")
        if stats.examples:
            ctx.say(f"collected e.g. {', '.join(stats.examples[:3])}")
    else:
        where = (f"{stats.guard_left:.0f} s of grace left" if stats.phase == "guard"
                 else f"{stats.buckets_done}/{stats.buckets} buckets swept")
        ctx.say(f"gc: stopped ({where}; {stats.collected} collected so far in this "
                "invocation); run objmail gc again to resume")
    if stop() or not stats.finished:
        return EX_INTERRUPTED
    return EX_OK if not stats.errors else EX_TEMPFAIL


async def dry_run(ctx: CommandContext, collector: Collector) -> int:
    line = ProgressLine(ctx, "gc --dry-run")
    try:
        survey = await collector.survey(
            progress=lambda done, total: line.show(f"{done}/{total} buckets"))
    finally:
        line.done()
    if ctx.args.json:
        ctx.say(json.dumps(asdict(survey), indent=2))
    else:
        ctx.say(f"gc --dry-run: {survey.entries} index entries, {survey.unreferenced} "
                "referenced by no message (collected by a run unless put again)")
        if survey.examples:
            ctx.say(f"e.g. {', '.join(survey.examples[:3])}")
    return EX_OK


async def status(ctx: CommandContext, collector: Collector) -> int:
    fields = await collector.status()
    running = "active_since" in fields
    if ctx.args.json:
        ctx.say(json.dumps({"running": running, **fields}, indent=2))
    elif not running:
        last = number(fields, "last_finished", 0.0)
        ctx.say("gc: no run in progress" + (f"; last finished at {when(last)}" if last else ""))
    else:
        buckets = collector.index.layout.buckets
        ctx.say(f"gc: a run is in progress since {when(number(fields, 'active_since'))}; "
                f"collecting from {when(number(fields, 'guard_until'))}; "
                f"{int(number(fields, 'cursor'))}/{buckets} buckets swept")
    return EX_OK
