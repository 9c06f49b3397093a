"""``objmail db migrate|status|compact``: the metadata schema in PostgreSQL.

``migrate`` applies every pending migration (each in its own transaction) and is a no-op on
an up-to-date database; ``status`` lists each migration as applied or pending; ``compact``
rewrites message rows stored before schema 6 into its compact form, online, ``--batch``
rows per transaction (metadata/compact.py), and can be stopped and run again.  Both refuse
a database whose applied migrations differ from this release's files.  Exit codes: 0 up to
date, EX_CONFIG when migrations are pending (status) or applied ones were changed, EX_UNAVAILABLE
when PostgreSQL cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json

import asyncpg

from metadata.compact import compact_batch
from metadata.db import translate_errors
from metadata.migrate import migrate_dsn, status_dsn
from ops.cli import EX_CONFIG, EX_OK, CommandContext
from ops.exitcodes import FAILURES, fail


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("db", help="create or upgrade the metadata schema in PostgreSQL")
    parser.add_argument("action", choices=("migrate", "status", "compact"),
                        help="migrate: apply pending migrations; status: list them; "
                        "compact: rewrite rows stored before schema 6, online")
    parser.add_argument("--batch", type=int, default=500,
                        help="compact: rows per transaction (default 500)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=run)


def run(ctx: CommandContext) -> int:
    dsn = ctx.config.cluster.pg_dsn
    try:
        with translate_errors():
            if ctx.args.action == "migrate":
                return _migrate(ctx, dsn)
            if ctx.args.action == "compact":
                return _compact(ctx, dsn)
            return _status(ctx, dsn)
    except asyncpg.exceptions.InvalidCatalogNameError as exc:
        ctx.warn(f"objmail db {ctx.args.action}: {exc}; create it first "
                 "(`createdb`, or `objmail dev up` for a local cluster)")
        return EX_CONFIG
    except FAILURES as exc:
        return fail(ctx, exc, f"objmail db {ctx.args.action}")


def _migrate(ctx: CommandContext, dsn: str) -> int:
    password = ctx.credentials.pg_password
    applied = migrate_dsn(dsn, password=password)
    states = status_dsn(dsn, password=password)
    version = max((s.version for s in states if s.state == "applied"), default=0)
    if ctx.args.json:
        ctx.say(json.dumps({"applied": [f"{m.version:04d}_{m.name}" for m in applied],
                            "version": version}))
    elif applied:
        for m in applied:
            ctx.say(f"applied {m.version:04d}_{m.name}")
        ctx.say(f"schema at version {version}")
    else:
        ctx.say(f"schema is up to date (version {version})")
    return EX_OK


def _status(ctx: CommandContext, dsn: str) -> int:
    states = status_dsn(dsn, password=ctx.credentials.pg_password)
    if ctx.args.json:
        ctx.say(json.dumps([{"version": s.version, "name": s.name, "state": s.state,
                             "applied_at": s.applied_at.isoformat() if s.applied_at else None}
                            for s in states], indent=2))
    else:
        ctx.say(f"{'VERSION':<8} {'NAME':<32} {'STATE':<9} APPLIED")
        for s in states:
            when = s.applied_at.strftime("%Y-%m-%d %H:%M:%S %Z") if s.applied_at else "-"
            ctx.say(f"{s.version:04d}     {s.name:<32} {s.state:<9} {when}")
    bad = [s for s in states if s.state != "applied"]
    if bad and not ctx.args.json:
        ctx.warn("the schema is not up to date: run `objmail db migrate`"
                 if all(s.state == "pending" for s in bad)
                 else "applied migrations differ from this release's files")
    return EX_CONFIG if bad else EX_OK


def _compact(ctx: CommandContext, dsn: str) -> int:
    if ctx.args.batch < 1:
        ctx.warn("objmail db compact: --batch must be positive")
        return EX_CONFIG

    async def run() -> tuple[int, int]:
        conn = await asyncpg.connect(dsn, password=ctx.credentials.pg_password)
        seen = changed = 0
        try:
            after = (0, 0)
            while True:
                # Each batch its own transaction: locks held for one batch only.
                async with conn.transaction():
                    done = await compact_batch(conn, after, ctx.args.batch)
                if done.last is None:
                    return seen, changed
                seen, changed, after = seen + done.seen, changed + done.changed, done.last
        finally:
            await conn.close()

    seen, changed = asyncio.run(run())
    if ctx.args.json:
        ctx.say(json.dumps({"messages": seen, "compacted": changed}))
    else:
        ctx.say(f"{changed} of {seen} messages compacted")
    return EX_OK
