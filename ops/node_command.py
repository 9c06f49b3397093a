"""``objmail node add|list|drain|activate|dead|remove``: the object servers in the registry.

Registration is explicit (see :mod:`director.registry`): an object server that
reports to Redis but was never added is listed as ``new`` and gets no blobs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

from director.nodes import DEFAULT_SITE, Node, NodeState
from director.redisconn import RetryPolicy
from director.redisstate import RedisState
from director.registry import remove_node
from ops.cli import CommandContext
from ops.exitcodes import EX_DATAERR, EX_INTERRUPTED, EX_OK, EX_TEMPFAIL, FAILURES, fail

#: An operator waits this long for a Redis Cluster in trouble before being told so (one
#: that cannot be reached at all is reported after RetryPolicy.unreachable seconds).
CLI_RETRY = RetryPolicy(deadline=10.0)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("node", help="register, list, drain and remove object servers")
    actions = parser.add_subparsers(dest="node_action", metavar="ACTION", required=True)

    add = actions.add_parser("add", help="register an object server; it then takes blobs")
    add.add_argument("address", metavar="ADDR", help="host:port the object server serves on")
    add.add_argument("--zone", required=True, help="failure domain (replicas spread over zones)")
    add.add_argument("--site", help="failure domain above the zone, e.g. a building: replicas "
                                    "spread over sites first (default: the site the object "
                                    "server reports, else 'default')")
    add.add_argument("--tier", required=True, help="storage class, e.g. ssd or hdd")
    add.add_argument("--weight", type=float, default=1.0,
                     help="relative share of new blobs on top of the node's capacity "
                          "share, which its load reports give (default 1)")
    add.add_argument("--id", dest="node_id",
                     help="node id (default: the id the object server at ADDR reports)")
    add.set_defaults(handler=run_add)

    lst = actions.add_parser("list", help="table of nodes, their state and load")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.add_argument("--all", action="store_true", help="include removed nodes")
    lst.set_defaults(handler=run_list)

    drain = actions.add_parser("drain", help="stop new blobs going to a node; directors "
                                             "move its blobs away")
    drain.add_argument("node_id", metavar="ID")
    drain.add_argument("--wait", action="store_true",
                       help="move the blobs now, in the foreground, until the node is empty "
                            "(Ctrl-C stops; run again to resume)")
    drain.add_argument("--json", action="store_true",
                       help="with --wait: machine-readable result")
    drain.set_defaults(handler=run_drain)

    activate = actions.add_parser("activate", help="undo a drain")
    activate.add_argument("node_id", metavar="ID")
    activate.set_defaults(handler=run_activate)

    dead = actions.add_parser("dead", help="declare a node gone (disk lost, machine "
                                           "dead): repair replaces its copies now, without "
                                           "waiting for director.repair_down_grace")
    dead.add_argument("node_id", metavar="ID")
    dead.set_defaults(handler=run_dead)

    remove = actions.add_parser("remove", help="remove a node for good (refused while it "
                                               "holds the only copy of any blob)")
    remove.add_argument("node_id", metavar="ID")
    remove.set_defaults(handler=run_remove)


def with_state(ctx: CommandContext, work: Callable[[RedisState], Awaitable[int]]) -> int:
    """Open the director's Redis state, run ``work``, map failures to exit codes."""

    async def main() -> int:
        state = await RedisState.open(ctx.config.cluster, ctx.config.director, retry=CLI_RETRY,
                                      auth=ctx.credentials.redis)
        async with state:
            return await work(state)

    try:
        return asyncio.run(main())
    except FAILURES as exc:
        return fail(ctx, exc)


def progress_printer(ctx: CommandContext, what: str) -> Callable[[int, int], None]:
    """A progress line on stderr when it is a terminal (scans can take minutes)."""
    last = [0.0]
    tty = ctx.err.isatty()

    def show(done: int, total: int) -> None:
        now = time.monotonic()
        if tty and (now - last[0] > 0.2 or done == total):
            last[0] = now
            end = "\n" if done == total else ""
            print(f"\r{what}: {100 * done // max(total, 1)}%", end=end, file=ctx.err,
                  flush=True)

    return show


# -- add ------------------------------------------------------------------------------


def run_add(ctx: CommandContext) -> int:
    args = ctx.args

    async def work(state: RedisState) -> int:
        report = await state.registry.reporter_at(args.address)
        node_id = args.node_id or (report.node_id if report is not None else None)
        if node_id is None:
            ctx.warn(f"objmail: no object server reports from {args.address} (is it running "
                     f"and pointed at this Redis Cluster?); pass --id to register it anyway")
            return EX_DATAERR
        site = args.site or (report.site if report is not None and report.site else
                             DEFAULT_SITE)
        node = await state.registry.add(node_id, args.address, zone=args.zone,
                                        tier=args.tier, weight=args.weight, site=site)
        ctx.say(f"added node {node.id} (number {node.number}) at {node.address}: site "
                f"{node.site}, zone {node.zone}, tier {node.tier}, weight {node.weight:g}; "
                f"state {node.state}")
        if report is not None and report.site and report.site != node.site:
            ctx.warn(f"note: the object server itself reports site {report.site}; "
                     f"placement uses the registry's site {node.site}")
        if report is not None and (report.zone, report.tier) != (node.zone, node.tier):
            ctx.warn(f"note: the object server itself reports zone {report.zone}, tier "
                     f"{report.tier}; placement uses the registry's zone {node.zone}, "
                     f"tier {node.tier}")
        if node.state is NodeState.DOWN:
            ctx.warn(f"note: no live load report from {node.id} yet; it gets blobs once it "
                     "reports")
        return EX_OK

    return with_state(ctx, work)


# -- list -----------------------------------------------------------------------------


def run_list(ctx: CommandContext) -> int:
    async def work(state: RedisState) -> int:
        snapshot = await state.registry.snapshot()
        nodes = [n for n in snapshot.nodes
                 if ctx.args.all or n.state is not NodeState.REMOVED]
        nodes += await state.registry.unregistered()
        now = time.time()
        if ctx.args.json:
            ctx.say(json.dumps([node_json(n, now) for n in nodes], indent=2))
        else:
            for line in node_table(nodes, now):
                ctx.say(line)
        return EX_OK

    return with_state(ctx, work)


def node_json(node: Node, now: float) -> dict[str, Any]:
    r = node.report
    return {
        "id": node.id, "number": node.number or None, "address": node.address,
        "site": node.site, "zone": node.zone, "tier": node.tier, "weight": node.weight,
        "state": node.state.value, "admin_state": node.admin_state.value,
        "capacity_bytes": r.capacity_bytes if r else None,
        "used_bytes": r.used_bytes if r else None,
        "items": r.items if r else None,
        "ops_per_sec": r.ops_per_sec if r else None,
        "fs_free_bytes": r.fs_free_bytes if r and r.fs_free_bytes >= 0 else None,
        "cpu_process": r.cpu_process if r else None,
        "cpu_host": r.cpu_host if r else None,
        "io_bps": r.io_bps if r else None,
        "disk_util": r.disk_util if r else None,
        "get_p99_ms": r.get_p99_ms if r else None,
        "set_p99_ms": r.set_p99_ms if r else None,
        "report_age": round(max(0.0, now - r.reported_at), 1) if r else None,
    }


def node_table(nodes: list[Node], now: float) -> list[str]:
    header = ("ID", "NUM", "ADDRESS", "SITE", "ZONE", "TIER", "STATE", "USED/CAPACITY",
              "ITEMS", "OPS/S", "CPU", "IO/S", "REPORT")
    rows = [header]
    for n in nodes:
        r = n.report
        rows.append((
            n.id, str(n.number) if n.number else "-", n.address, n.site, n.zone, n.tier,
            state_label(n),
            f"{human_bytes(r.used_bytes)}/{human_bytes(r.capacity_bytes)}" if r else "-",
            str(r.items) if r else "-",
            f"{r.ops_per_sec:.1f}" if r else "-",
            f"{r.cpu_process:.2f}" if r else "-",
            human_bytes(int(r.io_bps)) if r else "-",
            f"{human_age(now - r.reported_at)} ago" if r else "none"))
    return format_table(rows, right={1, 8, 9, 10, 11})


def format_table(rows: Sequence[Sequence[str]], right: Collection[int] = ()) -> list[str]:
    """Rows as aligned columns (the first row is the header); columns in ``right`` are
    right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                      for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in rows]


def state_label(node: Node) -> str:
    """The effective state, plus the operator's when it says more (a draining node that
    is down is still being drained once it is back)."""
    if node.state is NodeState.DOWN and node.admin_state is NodeState.DRAINING:
        return "down (draining)"
    return node.state.value


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024:
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}P"


def human_age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h"


# -- drain / activate / remove --------------------------------------------------------


def run_drain(ctx: CommandContext) -> int:
    async def work(state: RedisState) -> int:
        node = await state.registry.drain(ctx.args.node_id)
        if ctx.args.wait:
            return EX_OK
        items = f"its {node.report.items} blobs" if node.report else "its blobs"
        ctx.say(f"node {node.id} is draining: it takes no new blobs and the directors move "
                f"{items} to other nodes; objmail node remove {node.id} once it is empty")
        return EX_OK

    code = with_state(ctx, work)
    if code != EX_OK or not ctx.args.wait:
        return code
    return drain_until_empty(ctx, ctx.args.node_id)


def drain_until_empty(ctx: CommandContext, node_id: str) -> int:
    """``node drain --wait``: run the node's drain passes here until the index lists
    nothing on it; while another director holds the drain's lease, follow its saved
    progress instead.  Exits 0 when empty, 75 when blobs are left that cannot be moved
    (lost, or their only source unreachable) or the node still holds keys no index entry
    names, 130 after Ctrl-C (a rerun resumes)."""
    from director.drainer import Drainer, DrainStats
    from director.errors import LeaseHeld
    from ops.jobrun import ProgressLine, combine, human, run_job

    async def work(client: Any, stop: Any) -> int:
        drainer = Drainer(client, node_id)
        line = ProgressLine(ctx, f"draining {node_id}")
        passes: list[DrainStats] = []
        moved = 0

        def show(stats: Any) -> None:
            where = f"bucket {stats.cursor}/{stats.buckets}" if stats.buckets else ""
            line.show(f"{moved + stats.moved} blob(s) moved, {human(stats.bytes)}; {where}")

        try:
            while True:
                try:
                    stats = await drainer.run_once(stop=stop, progress=show)
                except LeaseHeld as exc:
                    saved = await drainer.progress()
                    line.show(f"{exc.holder} is draining it: {saved.moved} moved, bucket "
                              f"{saved.cursor}/{saved.buckets}", force=True)
                    if saved.empty or stop():
                        stats = saved
                    else:
                        await asyncio.sleep(1.0)
                        continue
                passes.append(stats)
                moved += stats.moved
                # A finished sweep that left something: stop and say what.
                if stats.empty or stop() or not stats.draining \
                        or (stats.remaining is not None and not stats.interrupted):
                    break
        finally:
            line.done()
        last = passes[-1]
        if ctx.args.json:
            ctx.say(json.dumps(combine(passes), indent=2))
        elif last.empty:
            ctx.say(f"node {node_id} is empty: moved {moved} blob(s) in {len(passes)} "
                    f"pass(es); remove it with: objmail node remove {node_id}")
        elif stop():
            ctx.say(f"stopped at bucket {last.cursor} of {last.buckets} after moving {moved} "
                    f"blob(s); run the same command again to resume")
        elif not last.draining:
            ctx.warn(f"objmail: node {node_id} is no longer draining (activated or removed "
                     f"meanwhile); stopped after moving {moved} blob(s)")
        elif last.remaining:
            ctx.warn(f"objmail: {last.remaining} blob(s) are still listed on {node_id} and "
                     f"cannot be moved now (lost, or no readable copy): e.g. "
                     f"{', '.join(last.examples)}")
        else:
            what = ("its keys could not be listed" if last.keys_left is None else
                    f"it still holds {last.keys_left} key(s) no index entry names (copies "
                    f"left by failed deletes or writes), e.g. {', '.join(last.examples)}")
            ctx.warn(f"objmail: node {node_id} is not empty: {what}; objmail inventory "
                     f"--fix {node_id} reclaims them once older than director.gc_grace")
        if last.empty:
            return EX_OK
        return EX_INTERRUPTED if stop() else EX_TEMPFAIL

    return run_job(ctx, work)


def run_activate(ctx: CommandContext) -> int:
    async def work(state: RedisState) -> int:
        node = await state.registry.activate(ctx.args.node_id)
        ctx.say(f"node {node.id} is active again (state {node.state})")
        return EX_OK

    return with_state(ctx, work)


def run_dead(ctx: CommandContext) -> int:
    async def work(state: RedisState) -> int:
        before = await state.registry.get(ctx.args.node_id)
        node = await state.registry.dead(ctx.args.node_id)
        items = f"its {before.report.items} blobs" if before.report else "its blobs"
        ctx.say(f"node {node.id} is dead: its copies no longer count, and the directors' "
                f"repair re-replicates {items} now (objmail repair does it in the "
                f"foreground); objmail node remove {node.id} once that is done, or objmail "
                f"node activate {node.id} if it comes back intact")
        if before.report is not None and not before.report.stale:
            ctx.warn(f"note: {node.id} still reports to Redis; it gets no reads or writes "
                     "from now on")
        return EX_OK

    return with_state(ctx, work)


def run_remove(ctx: CommandContext) -> int:
    async def work(state: RedisState) -> int:
        outcome = await remove_node(state.registry, state.index, ctx.args.node_id,
                                    progress=progress_printer(ctx, "scanning the index"))
        ctx.say(f"removed node {outcome.node.id} (number {outcome.node.number}); took it out "
                f"of {outcome.strip.removed} index entries")
        if outcome.strip.kept_sole:
            ctx.warn(f"warning: {outcome.strip.kept_sole} blob(s) were written to "
                     f"{outcome.node.id} while it was being removed and are only there; "
                     "they stay indexed on it until repaired")
        return EX_OK

    return with_state(ctx, work)
