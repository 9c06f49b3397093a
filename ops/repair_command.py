"""``objmail repair [--once] [--json] [--rate R]``: bring under-replicated blobs back to
full copies.

Runs the directors' repair job (:mod:`director.repairer`) in the foreground, under the
job's lease: when a directord is running it at that moment, the command says so and
exits 75 (try again later).  ``--once`` runs one pass; without it, passes run until the
index sweep has gone round the whole index and nothing is due in the queue.  Ctrl-C
stops after the blob in hand.  Exits 0 when everything it found was repaired, 75 when
some blob could not be (retried later by the directors) or was lost.
"""

from __future__ import annotations

import argparse
import json

from director.client import BlobClient
from director.repairer import Repairer, RepairStats
from ops.cli import EX_OK, EX_TEMPFAIL, CommandContext
from ops.jobrun import EX_INTERRUPTED, ProgressLine, StopFlag, combine, human, run_job
from ops.level_command import rate


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("repair", help="re-replicate blobs short of copies and fix bad "
                                           "ones (what the directors do in the background)")
    parser.add_argument("--once", action="store_true",
                        help="one pass (a slice of the index sweep and the due queue)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--rate", type=rate, metavar="BYTES",
                        help="bytes/s copied at most, e.g. 100M; 0 = no limit (default "
                             "director.repair_rate; copies replacing those of a dead node "
                             "are never held back)")
    parser.set_defaults(handler=run)


def run(ctx: CommandContext) -> int:
    async def work(client: BlobClient, stop: StopFlag) -> int:
        repairer = Repairer(client, rate=ctx.args.rate)
        line = ProgressLine(ctx, "repair")
        passes: list[RepairStats] = []
        wrapped = False
        try:
            while True:
                stats = await repairer.run_once(stop=stop, progress=line.stats)
                passes.append(stats)
                wrapped = wrapped or stats.sweep_wrapped
                if ctx.args.once or stop() or stats.interrupted \
                        or (wrapped and not stats.claimed and not stats.full_sweep_left):
                    break
        finally:
            line.done()
        report(ctx, passes)
        if stop():
            return EX_INTERRUPTED
        return EX_TEMPFAIL if any(p.unrepairable or p.lost for p in passes) else EX_OK

    return run_job(ctx, work)


def report(ctx: CommandContext, passes: list[RepairStats]) -> None:
    total = combine(passes)
    total["lost_nodes"] = passes[-1].lost_nodes
    if ctx.args.json:
        ctx.say(json.dumps(total, indent=2))
        return
    ctx.say(f"repair: {total['claimed']} queued blob(s) checked in {total['passes']} "
            f"pass(es): {total['repaired']} repaired ({total['copies_made']} new copies, "
            f"{total['rewritten']} rewritten in place, {human(total['bytes'])}), "
            f"{total['whole']} already whole, {total['gone']} collected")
    lost = f" (lost node(s): {', '.join(total['lost_nodes'])})" if total["lost_nodes"] else ""
    ctx.say(f"index sweep: {total['swept_buckets']} bucket(s) checked, "
            f"{total['sweep_queued']} blob(s) found short of copies, "
            f"{total['sweep_last_copy']} of them down to one{lost}; "
            f"{total['backlog']} left in the queue ({total['urgent']} short of copies)")
    if total["unrepairable"] or total["lost"]:
        ctx.warn(f"warning: {total['unrepairable']} blob(s) could not be repaired now (no "
                 f"good copy reachable, or too few nodes; retried later), "
                 f"{total['lost']} lost; e.g. {', '.join(total['examples'][:5])}")
