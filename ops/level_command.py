"""``objmail level [--once] [--dry-run] [--json]``: even out usage across object servers.

Runs the directors' leveling job (:mod:`director.leveler`) in the foreground, under the
job's lease (exit 75 when a directord runs it at that moment).  ``--dry-run`` only
prints the plan: each node's usage now and after, and the moves, hot blobs first.
``--once`` runs one pass; without it, passes run (each waiting for fresh load reports)
until every node is within ``director.level_tolerance`` of the mean or a pass moves
nothing.  Ctrl-C stops after the move in hand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from director.client import BlobClient
from director.leveler import Leveler, LevelPlan, LevelStats
from ops.cli import EX_OK, EX_TEMPFAIL, CommandContext
from ops.jobrun import EX_INTERRUPTED, ProgressLine, StopFlag, combine, human, run_job

#: Moves listed by --dry-run without --json.
SHOWN_MOVES = 20


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("level", help="move blobs from the fullest object servers to "
                                          "the emptiest, hot ones first")
    parser.add_argument("--once", action="store_true", help="one pass")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan and move nothing")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=run)


def run(ctx: CommandContext) -> int:
    async def work(client: BlobClient, stop: StopFlag) -> int:
        leveler = Leveler(client)
        if ctx.args.dry_run:
            show_plan(ctx, await leveler.plan())
            return EX_OK
        line = ProgressLine(ctx, "level")
        passes: list[LevelStats] = []
        try:
            while True:
                started = time.time()
                stats = await leveler.run_once(stop=stop, progress=line.stats)
                passes.append(stats)
                if ctx.args.once or stop() or stats.balanced or not stats.moved:
                    break
                line.show("waiting for fresh load reports", force=True)
                await fresh_reports(client, started, ctx.config.objstore.report_ttl)
        finally:
            line.done()
        report(ctx, passes)
        if stop():
            return EX_INTERRUPTED
        last = passes[-1]
        settled = last.balanced or ctx.args.once or last.spread_planned <= \
            ctx.config.director.level_tolerance
        return EX_OK if settled else EX_TEMPFAIL

    return run_job(ctx, work)


async def fresh_reports(client: BlobClient, since: float, timeout: float) -> None:
    """Wait until every active node has reported after ``since`` (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = await client.snapshot(force=True)
        live = [n for n in snap.nodes if n.report is not None and n.readable]
        if all(n.report is not None and n.report.reported_at > since for n in live):
            return
        await asyncio.sleep(0.5)


def plan_json(plan: LevelPlan) -> dict[str, Any]:
    return {
        "mean": round(plan.mean, 6), "spread": round(plan.spread, 6),
        "tolerance": plan.tolerance, "balanced": plan.balanced,
        "nodes": [{"id": n.node_id, "number": n.number, "zone": n.zone, "used": n.used,
                   "capacity": n.capacity, "fraction": round(n.fraction, 6),
                   "planned_fraction": round(plan.projected.get(n.node_id, n.fraction), 6)}
                  for n in plan.nodes],
        "moves": [{"blob": m.blob_id, "source": m.source, "target": m.target,
                   "size": m.size, "heat": m.heat} for m in plan.moves],
        "bytes": sum(m.size for m in plan.moves),
    }


def show_plan(ctx: CommandContext, plan: LevelPlan) -> None:
    if ctx.args.json:
        ctx.say(json.dumps(plan_json(plan), indent=2))
        return
    ctx.say(f"mean usage {100 * plan.mean:.2f}%, largest deviation {100 * plan.spread:.2f} "
            f"points (tolerance {100 * plan.tolerance:.2f})"
            + (": level, nothing to move" if plan.balanced else ""))
    for n in plan.nodes:
        after = plan.projected.get(n.node_id, n.fraction)
        ctx.say(f"  {n.node_id:<24} zone {n.zone:<6} {human(n.used):>10} of "
                f"{human(n.capacity):>10}  {100 * n.fraction:6.2f}% -> {100 * after:6.2f}%")
    if plan.moves:
        total = sum(m.size for m in plan.moves)
        hot = sum(1 for m in plan.moves if m.heat > 0)
        ctx.say(f"{len(plan.moves)} move(s), {human(total)}, {hot} of hot blobs:")
        for m in plan.moves[:SHOWN_MOVES]:
            heat = f"  hot {m.heat:g}/s" if m.heat > 0 else ""
            ctx.say(f"  {m.blob_id[:16]}…  {m.source} -> {m.target}  {human(m.size)}{heat}")
        if len(plan.moves) > SHOWN_MOVES:
            ctx.say(f"  ... and {len(plan.moves) - SHOWN_MOVES} more")


def report(ctx: CommandContext, passes: list[LevelStats]) -> None:
    total = combine(passes)
    if ctx.args.json:
        ctx.say(json.dumps(total, indent=2))
        return
    last = passes[-1]
    if last.balanced and not total["moved"]:
        ctx.say(f"level: every node is within {100 * ctx.config.director.level_tolerance:.2f}"
                f" points of the mean usage ({100 * last.mean:.2f}%): nothing to move")
        return
    ctx.say(f"level: moved {total['moved']} of {total['planned']} planned blob(s) "
            f"({total['hot_moved']} hot), {human(total['bytes'])}, in {total['passes']} "
            f"pass(es); largest deviation {100 * passes[0].spread_before:.2f} -> "
            f"{100 * last.spread_planned:.2f} points")
    if total["skipped"]:
        ctx.warn(f"warning: {total['skipped']} move(s) skipped (bad source copy, target "
                 "refused, or blob collected); bad copies were queued for repair")
