"""``objmail where BLOB_ID``: which object servers hold a blob, and the raw Redis lookup.

Exits 0 when the blob is indexed, 1 when it is not (like ``grep``), 65 for a string
that is not a blob id.
"""

from __future__ import annotations

import argparse
import json
import shlex

from director.keys import IndexLayout, InvalidBlobId, Keyspace, check_blob_id
from director.redisstate import RedisState
from ops.cli import EX_OK, CommandContext
from ops.config import ClusterConfig, parse_hostport
from ops.exitcodes import fail
from ops.node_command import with_state

#: Exit status when the blob is not in the index.
EX_NOT_INDEXED = 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("where", help="which object servers hold a blob")
    parser.add_argument("blob_id", metavar="BLOB_ID", help="64 hex digits (SHA-256)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=run)


def redis_cli_command(cluster: ClusterConfig, node: str | None = None) -> str:
    """``redis-cli -c -h H -p P`` with the config's credentials, for a shell.

    The password is read from its file into ``REDISCLI_AUTH`` by the shell, so it shows
    neither in the printed line nor in ``ps`` (as ``-a`` would).
    """
    host, port = parse_hostport(node or cluster.redis_nodes[0])
    words = ["redis-cli"]
    if cluster.redis_user:
        words += ["--user", shlex.quote(cluster.redis_user)]
    if cluster.redis_tls:
        words.append("--tls")
        if cluster.redis_tls_ca:
            words += ["--cacert", shlex.quote(cluster.redis_tls_ca)]
        if cluster.redis_tls_cert:
            words += ["--cert", shlex.quote(cluster.redis_tls_cert),
                      "--key", shlex.quote(cluster.redis_tls_key)]
    words += ["-c", "-h", host, "-p", str(port)]
    line = " ".join(words)
    if cluster.redis_password_file:
        line = f'REDISCLI_AUTH="$(cat {shlex.quote(cluster.redis_password_file)})" {line}'
    return line


def redis_cli_line(blob_id: str, layout: IndexLayout, keys: Keyspace,
                   cluster: ClusterConfig, *, items: bool = False) -> str:
    """A shell line that asks Redis directly (the field is binary: redis-cli reads the
    ``\\xHH`` escapes from a quoted argument on its standard input).

    :param items: the id is a directord item's (its own key space).
    """
    bucket = layout.bucket_name(layout.bucket_of(blob_id))
    key = keys.item_bucket(bucket) if items else keys.index_bucket(bucket)
    field = "".join(f"\\x{b:02x}" for b in layout.field_of(blob_id))
    command = f'HGET {key} "{field}"'
    return f"printf '%s\\n' {shlex.quote(command)} | {redis_cli_command(cluster)}"


def run(ctx: CommandContext) -> int:
    try:
        blob_id = check_blob_id(ctx.args.blob_id.strip().lower())
    except InvalidBlobId as exc:
        return fail(ctx, exc, "objmail where")

    async def work(state: RedisState) -> int:
        index = state.index
        numbers = await index.locations(blob_id)
        if not numbers:  # perhaps the index id of a directord item
            items = index.item_space()
            if found := await items.locations(blob_id):
                index, numbers = items, found
        snapshot = await state.registry.snapshot()
        layout, keys = index.layout, index.keys
        bucket = index.bucket_key(blob_id)
        cli = redis_cli_line(blob_id, layout, keys, ctx.config.cluster, items=index.items)
        rows = []
        for number in numbers:
            node = snapshot.by_number(number)
            rows.append({"number": number, "id": node.id if node else None,
                         "address": node.address if node else None,
                         "site": node.site if node else None,
                         "zone": node.zone if node else None,
                         "tier": node.tier if node else None,
                         "state": node.state.value if node else "unknown"})
        if ctx.args.json:
            ctx.say(json.dumps({"blob": blob_id, "indexed": bool(numbers), "bucket": bucket,
                                "field_hex": layout.field_of(blob_id).hex(), "nodes": rows,
                                "redis_cli": cli}, indent=2))
        else:
            ctx.say(f"blob {blob_id}")
            if not numbers:
                ctx.say("  not in the index")
            for row in rows:
                ctx.say(f"  node {row['number']:>4}  {row['id'] or '(not registered)'}  "
                        f"{row['address'] or '-'}  site {row['site'] or '-'}  "
                        f"zone {row['zone'] or '-'}  "
                        f"tier {row['tier'] or '-'}  {row['state']}")
            ctx.say(f"  index: {bucket} (hash), field = id bytes {layout.field_offset}..31")
            ctx.say(f"  raw:   {cli}")
        return EX_OK if numbers else EX_NOT_INDEXED

    return with_state(ctx, work)
