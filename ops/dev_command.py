"""``objmail dev up|down|status|stop|start|restart``: the local cluster for development
and demos.

``up`` starts every process that is not running and names each one it started.  A
process stopped with ``dev stop NAME`` is *held*: ``up`` leaves it stopped (and says
so) until ``dev start NAME`` or ``dev restart NAME``; ``dev down`` stops everything and
forgets the holds, so the next ``up`` starts the whole cluster.  NAME is a process
(``objstored-2``, ``imapd``, ``redis-7001``) or a kind (``objstored``, ``redis``).

The run directory is ``--dir``; without it, the directory of a config written by
``dev up`` when one is named (``--config var2/objmail.toml`` means ``var2``), else ``./var``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from ops.binaries import MissingBinary
from ops.cli import EX_OK, EX_UNAVAILABLE, EX_USAGE, CommandContext
from ops.config import ENV_PG_DSN, ENV_REDIS_NODES, load_config
from ops.devcluster import (
    DEV_CONFIG_HEADER,
    DEV_LOCATION_CACHE_ENTRIES,
    DevCluster,
    DevOptions,
    parse_dev_tiers,
)
from ops.launcher import LaunchError
from runtime.secrets import load_credentials


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("dev", help="run a complete local cluster under ./var")
    parser.add_argument("action", choices=("up", "down", "status", "demo", "stop", "start",
                                           "restart"),
                        help="up: start what is not running (except held processes); down: "
                             "stop all; status: a table; demo: create the demo user with "
                             "sample mail; stop NAME: stop and hold; start NAME: release and "
                             "start; restart NAME")
    parser.add_argument("names", metavar="NAME", nargs="*",
                        help="with stop, start, restart: processes (objstored-2, imapd) or "
                             "kinds (objstored, redis)")
    parser.add_argument("--dir", default=None, type=Path,
                        help="run directory for data, logs and pid files (default: that of "
                             "a dev config given with --config, else ./var)")
    parser.add_argument("--objstores", type=int, default=3,
                        help="number of object servers (default 3, zones a, b, c)")
    parser.add_argument("--sites", type=int, default=1,
                        help="sites the object servers are dealt into in turn (default 1: "
                             "all in site 'default'; 2: s1, s2, s1...)")
    parser.add_argument("--tiers", default=None, metavar="FAST:N,SLOW:M",
                        help="a storage hierarchy to try tiering on (e.g. ssd:2,hdd:2): that "
                             "many object servers in each tier (instead of --objstores), and "
                             "[[director.tiers]] keeping a hot blob on one FAST and one SLOW "
                             "node, a cold one on two SLOW nodes")
    parser.add_argument("--location-cache", type=int, default=DEV_LOCATION_CACHE_ENTRIES,
                        metavar="N",
                        help="directord's location cache of plain items when the config "
                             "leaves director.location_cache_entries at 0 (default "
                             f"{DEV_LOCATION_CACHE_ENTRIES:,}; 0: off; never with an "
                             "external Redis)")
    parser.add_argument("--json", action="store_true", help="machine-readable status")
    parser.add_argument("--user", default="demo", help="demo user name (default demo)")
    parser.add_argument("--password", default="demo",
                        help="demo user's password (default demo; local cluster only)")
    parser.set_defaults(handler=run)


def run_dir_of(ctx: CommandContext) -> Path:
    """``--dir``; else the directory of the config file when ``dev up`` wrote it (its
    pid files are beside it); else ``./var``."""
    if ctx.args.dir is not None:
        return Path(ctx.args.dir)
    path = ctx.config_path
    if path is not None and written_by_dev(path):
        return path.parent
    return Path("var")


def written_by_dev(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().startswith(DEV_CONFIG_HEADER)
    except OSError:
        return False


def make_cluster(ctx: CommandContext) -> DevCluster:
    run_dir = run_dir_of(ctx)
    config = ctx.config
    # A cluster that was brought up keeps its own config: reuse it, so that
    # `down` and `status` see the same ports `up` used.
    generated = run_dir / "objmail.toml"
    if ctx.config_path is None and generated.is_file():
        config = load_config(generated, ctx.environ)
    text = getattr(ctx.args, "tiers", None)
    tiers = parse_dev_tiers(text) if text else ()
    options = DevOptions(objstore_count=sum(n for _t, n in tiers) if tiers
                         else ctx.args.objstores,
                         sites=max(1, getattr(ctx.args, "sites", 1)), tiers=tiers,
                         external_pg=bool(ctx.environ.get(ENV_PG_DSN)),
                         external_redis=bool(ctx.environ.get(ENV_REDIS_NODES)),
                         location_cache_entries=getattr(ctx.args, "location_cache",
                                                        DEV_LOCATION_CACHE_ENTRIES))
    return DevCluster(config, run_dir, options)


def run(ctx: CommandContext) -> int:
    action = ctx.args.action
    named = action in ("stop", "start", "restart")
    if named != bool(ctx.args.names):
        ctx.warn(f"objmail dev {action}: " + ("name the processes (objmail dev status "
                                               "lists them)" if named else
                                               "takes no process names"))
        return EX_USAGE
    try:
        parse_dev_tiers(ctx.args.tiers) if getattr(ctx.args, "tiers", None) else ()
    except ValueError as exc:
        ctx.warn(f"objmail dev {action}: {exc}")
        return EX_USAGE
    try:
        cluster = make_cluster(ctx)
        if named:
            return _one(ctx, cluster, action, ctx.args.names)
        if action == "up":
            return _up(ctx, cluster)
        if ctx.args.action == "demo":
            return _demo(ctx, cluster)
        if ctx.args.action == "down":
            stopped = cluster.down(progress=ctx.say)
            ctx.say(f"stopped {len(stopped)} process(es)" if stopped else "nothing was running")
            return EX_OK
        return _status(ctx, cluster)
    except (LaunchError, MissingBinary) as exc:
        ctx.warn(f"objmail dev {action}: {exc}")
        return EX_UNAVAILABLE


def _up(ctx: CommandContext, cluster: DevCluster) -> int:
    t0 = time.monotonic()
    started = cluster.up(progress=ctx.say)
    elapsed = time.monotonic() - t0
    if started:
        ctx.say(f"started {len(started)} process(es) in {elapsed:.1f}s: "
                f"{', '.join(started)}; config: {cluster.config_path}")
    else:
        ctx.say("nothing to start: every process runs (or is held)")
    _status(ctx, cluster)
    return EX_OK


def _one(ctx: CommandContext, cluster: DevCluster, action: str, names: list[str]) -> int:
    """``dev stop|start|restart NAME...``."""
    try:
        cluster.select(names)
    except KeyError as exc:
        ctx.warn(f"objmail dev {action}: {exc.args[0]}")
        return EX_USAGE
    if action in ("stop", "restart"):
        stopped = cluster.stop_named(names, progress=ctx.say)
        if action == "stop":
            ctx.say(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
            return EX_OK
    started = cluster.start_named(names, progress=ctx.say)
    ctx.say(f"started {', '.join(started)}" if started else "already running")
    return EX_OK


def _status(ctx: CommandContext, cluster: DevCluster) -> int:
    rows = cluster.status()
    if ctx.args.json:
        ctx.say(json.dumps([{"name": r.name, "kind": r.kind, "port": r.port, "pid": r.pid,
                             "state": r.state, "log": str(r.log)} for r in rows], indent=2))
    else:
        ctx.say(f"{'NAME':<14} {'KIND':<10} {'PORT':>6} {'PID':>8}  STATE      LOG")
        for r in rows:
            pid = str(r.pid) if r.pid else "-"
            ctx.say(f"{r.name:<14} {r.kind:<10} {r.port:>6} {pid:>8}  {r.state:<10} {r.log}")
    return EX_OK if all(r.state == "healthy" for r in rows) else EX_UNAVAILABLE


def _demo(ctx: CommandContext, cluster: DevCluster) -> int:
    """Create the demo user and deliver the sample mail once (idempotent)."""
    from director.client import BlobClient
    from metadata.delivery import Deliverer
    from metadata.errors import NoSuchUser
    from metadata.store import MetadataStore
    from ops.demo import demo_messages

    config = cluster.config
    name, password = ctx.args.user, ctx.args.password
    # The cluster's own config names its generated secrets (ctx.config may not).
    creds = load_credentials(config.cluster)

    async def seed() -> int:
        store = await MetadataStore.open(config.cluster.pg_dsn, pool_min=1, pool_max=2,
                                         password=creds.pg_password)
        try:
            try:
                user = await store.users.get(name)
            except NoSuchUser:
                user = await store.users.create(name, password)
                ctx.say(f"created user {name!r} with password {password!r}")
            if (await store.mailboxes.status(user.id, "INBOX")).messages:
                return 0
            blobs = await BlobClient.open(config.cluster, config.director, auth=creds.redis)
            try:
                deliverer = Deliverer(store, blobs, config.metadata, config.imapd.max_message_size)
                messages = demo_messages(name)
                for raw in messages:
                    await deliverer.deliver(name, raw)
                return len(messages)
            finally:
                await blobs.aclose()
        finally:
            await store.close()

    delivered = asyncio.run(seed())
    if delivered:
        ctx.say(f"delivered {delivered} sample messages to {name}'s INBOX")
    imap = config.imapd.imap_listen
    host, _, port = imap.rpartition(":")
    ctx.say(f"""
Connect an IMAP client to the local cluster:
  server {host}, port {port}, no encryption (or STARTTLS), user {name!r}, password {password!r}
  e.g.  python3 -c "import imaplib; m = imaplib.IMAP4('{host}', {port}); \\
        m.login('{name}', '{password}'); print(m.select('INBOX'))"
  or    mutt -f imap://{name}@{host}:{port}/INBOX
POP3 on {config.imapd.pop3_listen}, LMTP delivery on {config.imapd.lmtp_listen}.
See what dedup saved: .venv/bin/objmail stats""")
    return EX_OK
