"""``objmail level [--once] [--wait] [--dry-run] [--json] [--tolerance F] [--rate R]``: even
out usage across object servers.

Runs the directors' leveling job (:mod:`director.leveler`) in the foreground, under the
job's lease (exit 75 when a directord runs it at that moment, unless ``--wait``).
``--dry-run`` only prints the plan: each node's bytes and deviation from its target now
and after, and the moves, hot blobs first.  ``--once`` runs one pass; without it, passes
run (each waiting for fresh load reports) until every node is within the tolerance of
its target or a pass moves nothing.  ``--wait`` keeps at it until the nodes are level:
it waits for a directord's pass to end instead of giving up, and goes on after a pass
that moved nothing (twice in a row ends it).  A progress bar on a terminal shows the
bytes moved of those to move, the rate and the time left; ``--json`` prints the same
figures once done.  Ctrl-C stops after the moves in hand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from director.client import BlobClient
from director.errors import LeaseHeld
from director.leveler import Leveler, LevelPlan, LevelStats, eta
from ops.cli import EX_OK, EX_TEMPFAIL, CommandContext
from ops.jobrun import EX_INTERRUPTED, ProgressLine, StopFlag, combine, human, run_job
from runtime.config import parse_size

#: Moves listed by --dry-run without --json.
SHOWN_MOVES = 20
#: With --wait, passes in a row that move nothing before giving up.
IDLE_PASSES = 2
#: Width of the progress bar, in characters.
BAR = 20


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("level", help="move blobs until every object server holds its "
                                          "capacity's share, hot ones first")
    parser.add_argument("--once", action="store_true", help="one pass")
    parser.add_argument("--wait", action="store_true",
                        help="keep going until every node is within the tolerance (wait "
                             "for a directord's pass instead of exiting 75)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan and move nothing")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--tolerance", type=fraction, metavar="F",
                        help="allowed deviation of a node's bytes from its target, as a "
                             "fraction of it (default director.level_tolerance)")
    parser.add_argument("--rate", type=rate, metavar="BYTES",
                        help="bytes/s moved at most, all nodes together, e.g. 50M; 0 = no "
                             "limit (default director.level_rate)")
    parser.add_argument("--source-rate", type=rate, metavar="BYTES",
                        help="bytes/s moved at most from any one node (default "
                             "director.level_source_rate)")
    parser.set_defaults(handler=run)


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def rate(text: str) -> int:
    try:
        value = parse_size(text, "--rate")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def run(ctx: CommandContext) -> int:
    args = ctx.args

    async def work(client: BlobClient, stop: StopFlag) -> int:
        leveler = Leveler(client, tolerance=args.tolerance, rate=args.rate,
                          source_rate=args.source_rate)
        if args.dry_run:
            show_plan(ctx, await leveler.plan())
            return EX_OK
        line = ProgressLine(ctx, "level")
        progress = Progress(line)
        passes: list[LevelStats] = []
        idle = 0
        try:
            while True:
                try:
                    stats = await leveler.run_once(stop=stop, progress=progress.show)
                except LeaseHeld as exc:
                    if not args.wait:
                        raise
                    line.show(f"{exc.holder} is leveling; waiting", force=True)
                    await asyncio.sleep(1.0)
                    continue
                finished = time.time()  # the next plan needs reports counting every move
                progress.passed(stats)
                passes.append(stats)
                idle = idle + 1 if not stats.moved else 0
                if args.once or stop() or stats.balanced:
                    break
                if not stats.moved and (not args.wait or idle >= IDLE_PASSES):
                    break
                line.show("waiting for fresh load reports", force=True)
                await fresh_reports(client, finished, ctx.config.objstore.report_ttl)
        finally:
            line.done()
        report(ctx, passes, leveler.tolerance)
        if stop():
            return EX_INTERRUPTED
        last = passes[-1]
        settled = last.balanced or args.once or last.spread_planned <= leveler.tolerance
        return EX_OK if settled else EX_TEMPFAIL

    return run_job(ctx, work)


class Progress:
    """The progress bar of a run of several passes: bytes moved of those to move when the
    run began, the rate and the time left."""

    def __init__(self, line: ProgressLine, clock: Any = time.monotonic) -> None:
        self.line = line
        self.clock = clock
        self.started = clock()
        self.total: int | None = None
        self.before = 0  # bytes moved by the passes done

    def figures(self, stats: LevelStats) -> dict[str, Any]:
        if self.total is None:
            self.total = stats.to_move
        moved = self.before + stats.bytes
        elapsed = self.clock() - self.started
        speed = moved / elapsed if elapsed > 0 else 0.0
        left = max(0, (self.total or 0) - moved)
        return {"to_move": self.total, "moved_bytes": moved,
                "progress": round(min(1.0, moved / self.total), 4) if self.total else 1.0,
                "rate": round(speed, 1), "eta": eta(left, speed)}

    def show(self, stats: Any) -> None:
        f = self.figures(stats)
        filled = int(BAR * f["progress"])
        when = "?" if f["eta"] is None else f"{f['eta']:.0f} s"
        self.line.show(f"[{'#' * filled}{'.' * (BAR - filled)}] {human(f['moved_bytes'])} "
                       f"of {human(f['to_move'])} ({100 * f['progress']:.0f}%), "
                       f"{human(f['rate'])}/s, ETA {when}; largest deviation "
                       f"{100 * stats.spread_before:.1f}% (tolerance "
                       f"{100 * stats.tolerance:.0f}%)")

    def passed(self, stats: LevelStats) -> None:
        if self.total is None:
            self.total = stats.to_move
        self.before += stats.bytes


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
        "to_move": plan.to_move, "busy": list(plan.busy),
        "nodes": [{"id": n.node_id, "number": n.number, "zone": n.zone, "used": n.used,
                   "capacity": n.capacity, "fraction": round(n.fraction, 6),
                   "deviation": round(plan.deviations.get(n.node_id, 0.0), 6),
                   "planned_fraction": round(plan.projected.get(n.node_id, n.fraction), 6),
                   "planned_deviation": round(plan.planned.get(n.node_id, 0.0), 6)}
                  for n in plan.nodes],
        "moves": [{"blob": m.blob_id, "source": m.source, "target": m.target,
                   "size": m.size, "heat": m.heat, "busy": m.busy} for m in plan.moves],
        "bytes": sum(m.size for m in plan.moves),
    }


def show_plan(ctx: CommandContext, plan: LevelPlan) -> None:
    if ctx.args.json:
        ctx.say(json.dumps(plan_json(plan), indent=2))
        return
    ctx.say(f"mean usage {100 * plan.mean:.3f}% of capacity, {human(plan.to_move)} above "
            f"the targets; largest deviation from a target {100 * plan.spread:.1f}% "
            f"(tolerance {100 * plan.tolerance:.0f}%)"
            + (": level, nothing to move" if plan.balanced else ""))
    if plan.busy:
        ctx.say(f"busy (CPU or I/O above the mean): {', '.join(plan.busy)}")
    for n in plan.nodes:
        now = plan.deviations.get(n.node_id, 0.0)
        after = plan.planned.get(n.node_id, now)
        ctx.say(f"  {n.node_id:<24} zone {n.zone:<6} {human(n.used):>10} of "
                f"{human(n.capacity):>10}  {100 * now:+7.1f}% -> {100 * after:+7.1f}%")
    if plan.moves:
        total = sum(m.size for m in plan.moves)
        hot = sum(1 for m in plan.moves if m.heat > 0)
        ctx.say(f"{len(plan.moves)} move(s), {human(total)}, {hot} of hot blobs:")
        for m in plan.moves[:SHOWN_MOVES]:
            heat = f"  hot {m.heat:g}/s" if m.heat > 0 else ""
            ctx.say(f"  {m.blob_id[:16]}…  {m.source} -> {m.target}  {human(m.size)}{heat}")
        if len(plan.moves) > SHOWN_MOVES:
            ctx.say(f"  ... and {len(plan.moves) - SHOWN_MOVES} more")


def report(ctx: CommandContext, passes: list[LevelStats], tolerance: float) -> None:
    total = combine(passes)
    first, last = passes[0], passes[-1]
    seconds = total.get("seconds", 0.0)
    total["to_move"] = first.to_move
    total["rate"] = round(total["bytes"] / seconds, 1) if seconds else 0.0
    total["deviations"] = last.deviations
    if ctx.args.json:
        ctx.say(json.dumps(total, indent=2))
        return
    if last.balanced and not total["moved"]:
        ctx.say(f"level: every node is within {100 * tolerance:.0f}% of its target (mean "
                f"usage {100 * last.mean:.3f}%): nothing to move")
        return
    ctx.say(f"level: moved {total['moved']} of {total['planned']} planned blob(s) "
            f"({total['hot_moved']} hot, {total['busy_moved']} off busy nodes), "
            f"{human(total['bytes'])} of {human(first.to_move)} to move, in "
            f"{total['passes']} pass(es) at {human(total['rate'])}/s; largest deviation "
            f"{100 * first.spread_before:.1f}% -> {100 * last.spread_planned:.1f}%")
    if total["skipped"]:
        ctx.warn(f"warning: {total['skipped']} move(s) skipped (bad source copy, target "
                 "refused, or blob collected); bad copies were queued for repair")
