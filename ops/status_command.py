"""``objmail status [--json]``: the installation on one screen.

* **Nodes**: every object server (registered or only reporting): number, address, site, zone,
  tier, fill (used over capacity, from its load report), ops/s, state and the age of its
  report, as ``objmail node list`` computes them.
* **Jobs**: every background job that ran or runs (``repair``, ``level``, ``gc``,
  ``scrub``, ``index-rebuild``, ``items-migrate`` and the per-node ``drain:``, ``inventory:``, ``scrub:``,
  ``index-rebuild:``): which director holds its lease now, when its last pass or run
  ended (a date and an age), and the progress of a run in progress, from the job hashes
  the jobs' own ``--status`` read.
* **Repair backlog**: blobs in the repair queue.
* **Index**: entries of both key spaces (a pass over every bucket, as ``objmail stats``
  counts them) and the memory the Redis masters use (all keys, not only objmail's).

``--json`` prints the same figures.  Exits 0; 69/75 when Redis cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from director.jobstate import JobState, integer, number
from director.lease import Lease
from director.nodes import Node, NodeState
from director.redisstate import RedisState
from ops.cli import EX_OK, CommandContext
from ops.jobrun import human, when
from ops.node_command import format_table, human_age, node_json, state_label, with_state

#: Jobs every installation has (per-node jobs are found from the registry).
GLOBAL_JOBS = ("repair", "level", "gc", "scrub", "index-rebuild", "items-migrate")
#: Per-node jobs, ``<kind>:<node id>``.
NODE_JOBS = ("drain", "inventory", "scrub", "index-rebuild")
#: The job-hash field that says when a job's last pass or run ended, by job kind.
LAST_FIELD = {"repair": "swept_at", "level": "last_pass_at", "gc": "last_finished",
              "scrub": "last_finished", "index-rebuild": "last_finished",
              "items-migrate": "last_finished",
              "drain": "updated_at", "inventory": "checked_at"}


@dataclass
class JobStatus:
    """One background job as the status shows it.

    :param holder: the lease holder's token (``host:pid:random``), None when no director
        runs it now.
    :param last: when its last pass (or run) ended, unix seconds (None: never).
    :param progress: what a run in progress has done so far ("" when none is).
    """

    job: str
    holder: str | None
    last: float | None
    progress: str
    fields: dict[str, str] = field(default_factory=dict)


@dataclass
class Status:
    nodes: list[Node]
    jobs: list[JobStatus]
    repair_backlog: int
    index_entries: int
    item_entries: int
    redis_memory: dict[str, int]
    taken_at: float


async def collect(state: RedisState, lease_ttl: float) -> Status:
    """Read everything the status shows (a few round trips, plus an index count)."""
    snap = await state.registry.snapshot()
    nodes = [n for n in snap.nodes if n.state is not NodeState.REMOVED]
    nodes += await state.registry.unregistered()
    names = list(GLOBAL_JOBS) + [f"{kind}:{n.id}" for n in nodes if n.number
                                 for kind in NODE_JOBS]
    jobs, backlog, entries, items, memory = await asyncio.gather(
        read_jobs(state, lease_ttl, names), state.repairs.backlog(), state.index.count(),
        state.index.item_space().count(), redis_memory(state))
    return Status(nodes, jobs, backlog, entries, items, memory, time.time())


async def read_jobs(state: RedisState, ttl: float, names: list[str]) -> list[JobStatus]:
    """Lease holder and job hash of each job; per-node jobs only when they ever ran."""
    keys = state.index.keys

    async def one(name: str) -> JobStatus | None:
        holder, fields = await asyncio.gather(
            Lease(state.runner, keys, name, ttl=ttl).holder(),
            JobState(state.runner, keys, name).load())
        if ":" in name and holder is None and not fields:
            return None
        kind = name.split(":", 1)[0]
        return JobStatus(name, holder, number(fields, LAST_FIELD[kind], 0.0) or None,
                         progress_of(kind, fields, state.index.layout.buckets,
                                     holder is not None), fields)

    return [j for j in await asyncio.gather(*map(one, names)) if j is not None]


def progress_of(kind: str, fields: dict[str, str], buckets: int, held: bool) -> str:
    """A run in progress, in words, from the job's hash ("" when none is)."""
    if kind == "gc" and "active_since" in fields:
        guard = number(fields, "guard_until")
        if guard > time.time():
            return f"waiting out its grace period until {when(guard)}"
        return f"sweeping: {integer(fields, 'cursor')}/{buckets} buckets"
    if kind == "scrub" and "started_at" in fields:
        return (f"{integer(fields, 'cursor')}/{buckets} buckets, {integer(fields, 'items')} "
                f"blobs, {integer(fields, 'corrupt') + integer(fields, 'missing')} bad copies")
    if kind == "index-rebuild" and "started_at" in fields:
        return (f"at {fields.get('node') or 'the first node'}: {integer(fields, 'items')} "
                f"entries, {integer(fields, 'indexed')} copies indexed, "
                f"{integer(fields, 'bad')} bad")
    if kind == "items-migrate" and "started_at" in fields:
        return (f"at {fields.get('node') or 'the first node'}: {integer(fields, 'items')} "
                f"item keys, {integer(fields, 'moved')} moved")
    if kind == "drain" and "empty_at" not in fields and "started_at" in fields:
        return (f"{integer(fields, 'moved')} blobs moved ({human(integer(fields, 'bytes'))}), "
                f"bucket {integer(fields, 'cursor')}/{buckets}")
    if kind == "inventory" and "fix_cursor" in fields:
        return f"fixing: after {fields['fix_cursor'][:12]}..."
    if kind == "repair" and integer(fields, "full_left"):
        return (f"whole-index sweep for lost node(s) {fields.get('full_for', '?')}: "
                f"{integer(fields, 'full_left')} buckets left")
    if kind == "repair" and held:
        return f"sweep at bucket {integer(fields, 'cursor')}/{buckets}"
    return ""


async def redis_memory(state: RedisState) -> dict[str, int]:
    """``used_memory`` of each Redis master (``host:port`` -> bytes)."""
    async def info(client: Any) -> Any:
        return await client.execute_command("INFO", "memory",
                                            target_nodes=client.get_primaries())

    reply = await state.runner.call("status memory", info)
    per = reply if isinstance(reply, dict) and all(isinstance(v, dict)
                                                   for v in reply.values()) else {}
    return {str(name): int(section.get("used_memory", 0)) for name, section in per.items()}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("status", help="nodes, jobs, repair backlog and index size on "
                                           "one screen")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=run)


def run(ctx: CommandContext) -> int:
    async def work(state: RedisState) -> int:
        status = await collect(state, ctx.config.director.lease_ttl)
        if ctx.args.json:
            ctx.say(json.dumps(as_json(status), indent=2))
        else:
            for line in render(status):
                ctx.say(line)
        return EX_OK

    return with_state(ctx, work)


def fill(node: Node) -> float | None:
    """Used bytes over capacity, from the node's report (None without one)."""
    r = node.report
    if r is None or r.capacity_bytes <= 0:
        return None
    return r.used_bytes / r.capacity_bytes


def as_json(status: Status) -> dict[str, Any]:
    return {
        "nodes": [{**node_json(n, status.taken_at), "fill": fill(n)} for n in status.nodes],
        "jobs": [{**asdict(j), "last_age": None if j.last is None
                  else round(max(0.0, status.taken_at - j.last), 1)} for j in status.jobs],
        "repair_backlog": status.repair_backlog,
        "index": {"entries": status.index_entries, "item_entries": status.item_entries,
                  "redis_used_memory": sum(status.redis_memory.values()),
                  "redis_masters": status.redis_memory},
        "taken_at": status.taken_at,
    }


def render(status: Status) -> list[str]:
    now = status.taken_at
    rows = [("ID", "NUM", "ADDRESS", "SITE", "ZONE", "TIER", "FILL", "OPS/S", "STATE",
             "REPORT")]
    for n in status.nodes:
        r, f = n.report, fill(n)
        rows.append((n.id, str(n.number) if n.number else "-", n.address, n.site, n.zone,
                     n.tier,
                     "-" if f is None else f"{100 * f:.1f}%",
                     f"{r.ops_per_sec:.1f}" if r else "-", state_label(n),
                     f"{human_age(now - r.reported_at)} ago" if r else "none"))
    out = ["Nodes", *format_table(rows, right={1, 6, 7}), "", "Jobs"]
    jobs = [("JOB", "HELD BY", "LAST PASS", "IN PROGRESS")]
    for j in status.jobs:
        jobs.append((j.job, j.holder or "-", when(j.last, now) if j.last else "never",
                     j.progress or "-"))
    out += format_table(jobs)
    used = sum(status.redis_memory.values())
    out += ["", f"Repair backlog: {status.repair_backlog} blob(s)",
            f"Index: {status.index_entries:,} blob entries, {status.item_entries:,} item "
            f"entries; Redis memory {human(used)} on {len(status.redis_memory)} master(s) "
            "(all keys)"]
    return out
