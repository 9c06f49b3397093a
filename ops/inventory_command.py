"""``objmail inventory [NODE ...] [--fix [--grace S] [--rate BYTES]] [--json]``: compare
object servers' keys with the index, and reclaim the copies it does not list.

For each node (default: every registered node that is up) its key list is compared with
the index (:mod:`director.inventory`): index entries whose key the node lacks are queued
for repair (run ``objmail repair`` or let the directors do it), keys the index does not
place there are reported.  With ``--fix``, unindexed blob copies last written more than
the grace period ago (``director.gc_grace``, or ``--grace``, at least
``director.gc_min_grace``) are reclaimed: adopted into the index when a message
references them and the index lacks copies, deleted otherwise; directord's plain items
and keys this installation cannot verify are left alone.  Ctrl-C stops after the page in
hand; the same command resumes.  Exits 0 when everything matched (or was fixed), 75 when
something was queued, reported or left, 69 when a node could not be listed.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from director.client import BlobClient
from director.inventory import Inventory, InventoryStats, Reclaim
from metadata.errors import Unavailable
from metadata.store import MetadataStore
from ops.cli import EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE, CommandContext
from ops.config import ConfigError
from ops.exitcodes import fail
from ops.jobrun import EX_INTERRUPTED, StopFlag, parse_rate, run_job


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("inventory", help="compare object servers' key lists with the "
                                              "index; queue what is missing for repair; "
                                              "--fix reclaims unindexed copies")
    parser.add_argument("nodes", metavar="NODE", nargs="*",
                        help="node ids (default: every node that is up)")
    parser.add_argument("--fix", action="store_true",
                        help="reclaim unindexed blob copies older than the grace period "
                             "(adopt the referenced ones the index lacks, delete the rest)")
    parser.add_argument("--grace", type=float, default=None, metavar="SECONDS",
                        help="with --fix: only copies last written longer ago than this "
                             "(default director.gc_grace; at least director.gc_min_grace)")
    parser.add_argument("--rate", metavar="BYTES", default=None,
                        help="with --fix: read at most this many stored bytes per second "
                             "(e.g. 50M)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=run)


def run(ctx: CommandContext) -> int:
    dconf = ctx.config.director
    grace = dconf.gc_grace if ctx.args.grace is None else ctx.args.grace
    if not grace >= dconf.gc_min_grace:
        ctx.warn(f"objmail: --grace {grace:g} is below the minimum of "
                 f"{dconf.gc_min_grace:g} s (director.gc_min_grace): a put in flight could "
                 "lose its copies")
        return EX_USAGE
    try:
        rate = parse_rate(ctx.args.rate)
    except ConfigError as exc:
        ctx.warn(f"objmail: {exc}")
        return EX_USAGE

    async def work(client: BlobClient, stop: StopFlag) -> int:
        if not ctx.args.fix:
            return await inventory(ctx, client, stop, None)
        store = await MetadataStore.open(ctx.config.cluster.pg_dsn, pool_min=1, pool_max=2)
        try:
            # metadata's References is the fix's ReferenceChecker.
            return await inventory(ctx, client, stop, Reclaim(store.references, grace, rate))
        except Unavailable as exc:  # PostgreSQL went away during the run
            return fail(ctx, exc, hint="run the command again to resume")
        finally:
            await store.close()

    return run_job(ctx, work)


async def inventory(ctx: CommandContext, client: BlobClient, stop: StopFlag,
                    fix: Reclaim | None) -> int:
    snap = await client.snapshot(force=True)
    names = ctx.args.nodes or [n.id for n in snap.nodes if n.readable]
    results: list[InventoryStats] = []
    for name in names:
        if stop():
            break
        results.append(await Inventory(client, name, fix=fix).run_once(stop=stop))
    report(ctx, results, fixing=fix is not None)
    if stop() or any(r.interrupted for r in results):
        return EX_INTERRUPTED
    if any(r.errors for r in results):
        return EX_UNAVAILABLE
    if fix is None:
        return EX_TEMPFAIL if any(r.missing or r.unindexed for r in results) else EX_OK
    left = any(r.missing or r.young or r.kept or r.foreign or not r.fixed for r in results)
    return EX_TEMPFAIL if left else EX_OK


def report(ctx: CommandContext, results: list[InventoryStats], *, fixing: bool) -> None:
    if ctx.args.json:
        rows: list[dict[str, Any]] = [r.as_json() for r in results]
        ctx.say(json.dumps(rows, indent=2))
        return
    for r in results:
        if r.errors and not r.keys:
            ctx.warn(f"{r.node}: could not list its keys (down or unreachable)")
            continue
        ctx.say(f"{r.node}: {r.keys} key(s), {r.indexed} index entr(ies) on it; "
                f"{r.missing} missing there (queued for repair), {r.unindexed} unindexed")
        for example in r.missing_examples:
            ctx.say(f"  missing:   {example}")
        for example in r.unindexed_examples:
            ctx.say(f"  unindexed: {example}")
        if fixing:
            ctx.say(f"  fix: {r.reclaimed} blob(s) reclaimed ({r.copies_deleted} key(s) "
                    f"deleted), {r.adopted} adopted, {r.young} younger than the grace "
                    f"period, {r.kept} kept, {r.foreign} foreign key(s) left"
                    + (f", {r.errors} error(s)" if r.errors else ""))
            for example in r.reclaimed_examples:
                ctx.say(f"  reclaimed: {example}")
