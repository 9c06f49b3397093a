"""``objmail index rebuild [--node ID] [--rate BYTES] [--status | --cancel] [--json]``:
rebuild the location index from the object servers' own key lists.

Runs the rebuild job (:mod:`director.indexrebuild`) in the foreground under its lease,
online: mail keeps flowing, and each blob reads again as soon as a node holding it has
been rebuilt.  First, every object server that reports the registry number it kept but
that the registry does not know (the registry was lost with the index) is registered
again with that number, so the rebuilt entries name the same numbers as before; after
such a loss the command first waits for the object servers' reports (until none has
come back for two ``objstore.report_interval``, at most ``objstore.report_ttl``).  Every blob copy the index does not already place on its node is read
back and verified before it is indexed.  Ctrl-C stops after the page in hand; running
the command again resumes the run, its counters intact.  ``--status`` shows a run in
progress; ``--cancel`` forgets it.  Exits 0 when every node was rebuilt and every copy
verified, 75 when some node was skipped or some copy was bad, 130 after Ctrl-C.

``objmail index migrate-items [--status | --cancel] [--json]``: the upgrade step of an
index written before directord's items had a key space of their own
(:mod:`director.itemmigration`): moves their entries out of the blobs' key space, online
and resumable the same way; gc refuses to run until a migration has covered every node.
Exits 0 once every item is in its own space, 75 when some node was skipped (run it again
once the node answers), 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from director.client import BlobClient
from director.indexrebuild import RUN_FIELDS, IndexRebuild, RebuildStats
from director.itemmigration import RUN_FIELDS as MIGRATE_FIELDS
from director.itemmigration import ItemMigration, MigrateStats
from director.nodes import Node
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
    parser = sub.add_parser("index", help="the location index: rebuild it from the object "
                                          "servers' keys")
    actions = parser.add_subparsers(dest="index_action", metavar="ACTION", required=True)
    rebuild = actions.add_parser(
        "rebuild", help="index every verified copy the object servers hold (online, "
                        "resumable); registers lost nodes again with their numbers")
    rebuild.add_argument("--node", metavar="ID", help="only this object server's keys")
    add_run_arguments(rebuild, "read at most this much per second to verify copies (e.g. "
                               "50M; default: no limit)")
    rebuild.set_defaults(handler=run)
    migrate = actions.add_parser(
        "migrate-items", help="move directord's items recorded before they had a key space "
                              "of their own out of the blobs' (an upgrade step; online, "
                              "resumable; gc waits for it)")
    what = migrate.add_mutually_exclusive_group()
    what.add_argument("--status", action="store_true",
                      help="show a run in progress and whether the items are migrated")
    what.add_argument("--cancel", action="store_true",
                      help="forget a run in progress (the next one starts afresh)")
    migrate.add_argument("--json", action="store_true", help="machine-readable output")
    migrate.set_defaults(handler=run_migrate)


def run(ctx: CommandContext) -> int:
    try:
        rate = parse_rate(ctx.args.rate)
    except ConfigError as exc:
        ctx.warn(f"objmail: {exc}")
        return EX_USAGE

    async def work(client: BlobClient, stop: StopFlag) -> int:
        job = IndexRebuild(client, node_id=ctx.args.node, rate=rate)
        if ctx.args.status:
            return await status(ctx, job)
        if ctx.args.cancel:
            return await cancel_run(ctx, job, RUN_FIELDS)
        back = await reregister(ctx, client, stop)
        try:
            nodes = job.nodes(await client.snapshot(force=True))
        except LookupError as exc:
            ctx.warn(f"objmail: {exc} (objmail node list)")
            return EX_USAGE
        if not nodes:
            ctx.warn("objmail: no object server is registered, and none reports a number "
                     "it kept; start them (or wait for their load reports) and run again")
            return EX_TEMPFAIL
        return await rebuild(ctx, job, stop, back)

    return run_job(ctx, work)


async def reregister(ctx: CommandContext, client: BlobClient, stop: StopFlag) -> list[Node]:
    """Register again the object servers that kept a number the registry lost.

    When the registry was lost (it is empty, or some server came back), keep looking
    until no newcomer has appeared for two report intervals: every live object server
    reports again within one (bounded by ``objstore.report_ttl``)."""
    interval = ctx.config.objstore.report_interval
    deadline = time.monotonic() + ctx.config.objstore.report_ttl
    back = await client.registry.reregister()
    lost = bool(back) or not (await client.snapshot(force=True)).nodes
    quiet_until = time.monotonic() + 2 * interval
    while lost and not stop() and time.monotonic() < min(deadline, quiet_until):
        await asyncio.sleep(min(0.5, interval))
        more = await client.registry.reregister()
        if more:
            back += more
            quiet_until = time.monotonic() + 2 * interval
    for node in back:
        if not ctx.args.json:
            ctx.say(f"registered {node.id} again as number {node.number} (the number it "
                    f"kept), zone {node.zone}, tier {node.tier}, weight {node.weight:g}")
    if back:
        await client.snapshot(force=True)
    return back


async def rebuild(ctx: CommandContext, job: IndexRebuild, stop: StopFlag,
                  back: list[Node]) -> int:
    line = ProgressLine(ctx, job.job)

    def progress(stats: object) -> None:
        assert isinstance(stats, RebuildStats)
        line.show(f"{stats.node} (node {stats.nodes_done + 1}/{stats.nodes}): "
                  f"{stats.items}/{stats.total or 0} entries, {stats.indexed} copies verified "
                  f"and indexed ({human(stats.bytes)}), {stats.already} already there, "
                  f"{stats.bad} bad")

    try:
        stats = await job.run_once(stop=stop, progress=progress)
    finally:
        line.done()
    if ctx.args.json:
        ctx.say(json.dumps({**combine([stats]), "registered_again": [
            {"id": n.id, "number": n.number} for n in back]}, indent=2))
    else:
        head = (f"{job.job}: " + ("done" if stats.finished else
                f"stopped at {stats.node or 'the start'}; run objmail index rebuild "
                "again to resume"))
        ctx.say(f"{head}: {stats.nodes_done} of {stats.nodes} node(s), {stats.keys} key(s) "
                f"listed; {stats.indexed} blob copies verified and indexed "
                f"({human(stats.bytes)} read), {stats.already} already indexed, "
                f"{stats.item_keys} item(s), {stats.bad} bad, {stats.orphans} orphan "
                "chunk(s)")
        for example in stats.examples[:5]:
            ctx.say(f"  bad copy (left unindexed): {example}")
        for node_id in stats.skipped:
            ctx.warn(f"not rebuilt: {node_id} (down, or it did not answer); run objmail "
                     f"index rebuild --node {node_id} once it is up")
    if stop() or not stats.finished:
        return EX_INTERRUPTED
    return EX_TEMPFAIL if stats.skipped or stats.bad else EX_OK


async def status(ctx: CommandContext, job: IndexRebuild) -> int:
    fields = await job.status()
    if ctx.args.json:
        ctx.say(json.dumps(fields, indent=2))
    elif not fields["running"]:
        last = fields.get("last_finished", 0.0)
        ctx.say(f"{job.job}: no run in progress" + (
            f"; the last finished at {when(last)} with {fields.get('last_indexed', 0):.0f} "
            f"copies indexed and {fields.get('last_bad', 0):.0f} bad" if last else ""))
    else:
        node = fields.get("node") or "the first node"
        ctx.say(f"{job.job}: a run is in progress since {when(fields['started_at'])}: at "
                f"{node}, {fields.get('items', 0):.0f} entries done, "
                f"{fields.get('indexed', 0):.0f} copies indexed, {fields.get('bad', 0):.0f} "
                "bad so far" + (f"; skipped {fields['skipped']}" if fields.get("skipped")
                                else ""))
    return EX_OK


# -- migrate-items --------------------------------------------------------------------------


def run_migrate(ctx: CommandContext) -> int:
    async def work(client: BlobClient, stop: StopFlag) -> int:
        job = ItemMigration(client)
        if ctx.args.status:
            return await migrate_status(ctx, job)
        if ctx.args.cancel:
            return await cancel_run(ctx, job, MIGRATE_FIELDS)
        return await migrate(ctx, job, stop)

    return run_job(ctx, work)


async def migrate(ctx: CommandContext, job: ItemMigration, stop: StopFlag) -> int:
    line = ProgressLine(ctx, job.job)

    def progress(stats: object) -> None:
        assert isinstance(stats, MigrateStats)
        line.show(f"{stats.node} (node {stats.nodes_done + 1}/{stats.nodes}): "
                  f"{stats.items}/{stats.total or 0} item keys, {stats.moved} moved, "
                  f"{stats.already} already there, {stats.unindexed} unindexed")

    try:
        stats = await job.run_once(stop=stop, progress=progress)
    finally:
        line.done()
    if ctx.args.json:
        ctx.say(json.dumps(combine([stats]), indent=2))
    else:
        head = (f"{job.job}: " + ("done" if stats.finished else
                f"stopped at {stats.node or 'the start'}; run objmail index migrate-items "
                "again to resume"))
        ctx.say(f"{head}: {stats.nodes_done} of {stats.nodes} node(s), {stats.keys} key(s) "
                f"listed; {stats.moved} item entr(ies) moved to the items' key space, "
                f"{stats.superseded} superseded by a newer one, {stats.already} already "
                f"there, {stats.unindexed} unindexed")
        if stats.unindexed:
            ctx.say("  unindexed items are in neither key space: objmail index rebuild "
                    "records them again, objmail inventory lists them")
        for node_id in stats.skipped:
            ctx.warn(f"not migrated: {node_id} (down, or it did not answer); run objmail "
                     "index migrate-items again once it is up (gc waits until then)")
        if stats.complete:
            ctx.say("every directord item is in its own key space: gc may run")
    if stop() or not stats.finished:
        return EX_INTERRUPTED
    return EX_OK if stats.complete else EX_TEMPFAIL


async def migrate_status(ctx: CommandContext, job: ItemMigration) -> int:
    fields = await job.status()
    since = await job.index.items_keyspace()
    fields["items_keyspace"] = since
    if ctx.args.json:
        ctx.say(json.dumps(fields, indent=2))
        return EX_OK
    if since is None:
        state = "not migrated yet (gc refuses to run until it is)"
    elif since == "created":
        state = "in their own key space since the index was created (nothing to migrate)"
    else:
        state = f"migrated {when(float(since.split()[-1]))}"
    ctx.say(f"directord items: {state}")
    if fields["running"]:
        node = fields.get("node") or "the first node"
        ctx.say(f"{job.job}: a run is in progress since {when(fields['started_at'])}: at "
                f"{node}, {fields.get('items', 0):.0f} item keys done, "
                f"{fields.get('moved', 0):.0f} moved so far"
                + (f"; skipped {fields['skipped']}" if fields.get("skipped") else ""))
    elif fields.get("last_finished"):
        ctx.say(f"{job.job}: the last run finished at {when(fields['last_finished'])} with "
                f"{fields.get('last_moved', 0):.0f} moved, "
                f"{fields.get('last_unindexed', 0):.0f} unindexed"
                + (f", {fields['last_skipped']} skipped" if fields.get("last_skipped")
                   else ""))
    else:
        ctx.say(f"{job.job}: no run in progress")
    return EX_OK
