"""``objmail inventory [NODE ...] [--json]``: compare object servers' keys with the index.

For each node (default: every registered node that is up) its key list is compared with
the index (:mod:`director.inventory`): index entries whose key the node lacks are queued
for repair (run ``objmail repair`` or let the directors do it), keys the index does not
place there are reported.  Exits 0 when everything matched, 75 when something was
queued or reported, 69 when a node could not be listed.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from director.client import BlobClient
from director.inventory import Inventory, InventoryStats
from ops.cli import EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE, CommandContext
from ops.jobrun import EX_INTERRUPTED, StopFlag, run_job


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("inventory", help="compare object servers' key lists with the "
                                              "index; queue what is missing for repair")
    parser.add_argument("nodes", metavar="NODE", nargs="*",
                        help="node ids (default: every node that is up)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=run)


def run(ctx: CommandContext) -> int:
    async def work(client: BlobClient, stop: StopFlag) -> int:
        snap = await client.snapshot(force=True)
        names = ctx.args.nodes or [n.id for n in snap.nodes if n.readable]
        results: list[InventoryStats] = []
        for name in names:
            if stop():
                break
            results.append(await Inventory(client, name).run_once(stop=stop))
        report(ctx, results)
        if stop():
            return EX_INTERRUPTED
        if any(r.errors for r in results):
            return EX_UNAVAILABLE
        return EX_TEMPFAIL if any(r.missing or r.unindexed for r in results) else EX_OK

    return run_job(ctx, work)


def report(ctx: CommandContext, results: list[InventoryStats]) -> None:
    if ctx.args.json:
        rows: list[dict[str, Any]] = [r.as_json() for r in results]
        ctx.say(json.dumps(rows, indent=2))
        return
    for r in results:
        if r.errors:
            ctx.warn(f"{r.node}: could not list its keys (down or unreachable)")
            continue
        ctx.say(f"{r.node}: {r.keys} key(s), {r.indexed} index entr(ies) on it; "
                f"{r.missing} missing there (queued for repair), {r.unindexed} unindexed")
        for example in r.missing_examples:
            ctx.say(f"  missing:   {example}")
        for example in r.unindexed_examples:
            ctx.say(f"  unindexed: {example}")
