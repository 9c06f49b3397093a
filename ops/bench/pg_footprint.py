"""PostgreSQL footprint per message, and what header fetches cost.

One run starts an objmail cluster (:class:`ops.bench.common.ObjmailCluster`, plain),
imports ``--messages`` corpus messages into one user's INBOX with ``objmail import`` (each
with a header line of its own, so no two are the same message), then reports:

- bytes per message of every table and index a message makes (``messages``,
  ``message_blobs``, ``mailbox_messages``): heap, TOAST, each index (the trigram GIN
  indexes included), from ``pg_relation_size`` after a ``VACUUM``, so free space maps and
  visibility maps count;
- the average ``pg_column_size`` of each ``messages`` column (as stored: compressed or a
  TOAST pointer) next to its raw ``octet_length``;
- the median time (of ``--reps``) of ``UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (FROM
  SUBJECT DATE)])``, ``UID FETCH 1:* ENVELOPE`` and ``UID FETCH 1:* BODY`` over the whole
  mailbox, on one logged-in session, each response read whole;
- the median time (of ``3 * --reps``) of the store's own read of the same rows
  (``Messages.fetch`` of the whole INBOX with the ``header``, ``envelope`` and ``body``
  items), PostgreSQL and the store without imapd's rendering and the network: the part a
  schema change moves, with less of the shared machine's noise.

Run it in two trees to compare schemas (before/after), alternating::

    PYTHONPATH=$PWD python -m ops.bench.pg_footprint [--messages 3000] [--reps 7] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg

from ops.bench.common import DEFAULT_CORPUS, ObjmailCluster, corpus_messages, median

USER = "footprint@example.org"
PASSWORD = "bench-password"
FETCHES = {
    "header.fields": b"UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)])",
    "envelope": b"UID FETCH 1:* (ENVELOPE)",
    "body": b"UID FETCH 1:* (BODY)",
}
STORE_ITEMS = ("header", "envelope", "body")
TABLES = ("messages", "message_blobs", "mailbox_messages")


def build_maildir(root: Path, corpus: Sequence[bytes], count: int) -> Path:
    src = root / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (src / sub).mkdir(parents=True)
    for n in range(count):
        raw = f"X-Footprint-Bench: {n}\r\n".encode() + corpus[n % len(corpus)]
        (src / "cur" / f"{1_600_000_000 + n}.M{n}P1.bench:2,S").write_bytes(raw)
    return src


async def footprint(dsn: str, password: str | None) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn, password=password)
    try:
        await conn.execute("VACUUM ANALYZE")
        count = await conn.fetchval("SELECT count(*) FROM messages")
        corpus_bytes = await conn.fetchval("SELECT coalesce(sum(size), 0) FROM messages")
        relations: dict[str, int] = {}
        for table in TABLES:
            row = await conn.fetchrow(
                "SELECT pg_relation_size(c.oid, 'main') + pg_relation_size(c.oid, 'fsm') "
                "+ pg_relation_size(c.oid, 'vm') AS heap, "
                "coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0) AS toast "
                "FROM pg_class c WHERE c.relname = $1", table)
            relations[f"{table} heap"] = row["heap"]
            relations[f"{table} toast"] = row["toast"]
            for index in await conn.fetch(
                    "SELECT indexrelid::regclass::text AS name, "
                    "pg_relation_size(indexrelid) AS size FROM pg_index "
                    "WHERE indrelid = $1::regclass ORDER BY 1", table):
                relations[f"{table} index {index['name']}"] = index["size"]
        types = {r["attname"]: r["type"] for r in await conn.fetch(
            "SELECT attname, atttypid::regtype::text AS type FROM pg_attribute "
            "WHERE attrelid = 'messages'::regclass AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum")}
        columns = list(types)
        # Raw: the value's own bytes (bytea, text), else its text form.
        stored = await conn.fetchrow("SELECT " + ", ".join(
            f"coalesce(sum(pg_column_size({c})), 0) AS s_{c}, coalesce(sum(octet_length("
            f"{c if types[c] in ('bytea', 'text') else c + '::text'})), 0) AS r_{c}"
            for c in columns) + " FROM messages")
        methods = {c: r["m"] for c in columns if types[c] in ("bytea", "text", "jsonb")
                   for r in [await conn.fetchrow(
                       f"SELECT string_agg(coalesce(k, 'none') || '=' || n, ' ' ORDER BY k) "
                       f"AS m FROM (SELECT pg_column_compression({c}) AS k, count(*) AS n "
                       f"FROM messages GROUP BY 1) AS x")]}
        toast_mode = await conn.fetchval("SHOW default_toast_compression")
    finally:
        await conn.close()
    return {"messages": count, "corpus_bytes": int(corpus_bytes), "relations": relations,
            "columns": {c: (int(stored[f"s_{c}"]), int(stored[f"r_{c}"])) for c in columns},
            "compression": methods, "default_toast_compression": toast_mode}


def _read_tagged(sock: socket.socket, tag: bytes) -> bytes:
    chunks: list[bytes] = []
    tail = b""
    end = b"\r\n" + tag + b" "
    while True:
        data = sock.recv(1 << 20)
        if not data:
            raise ConnectionError("server closed the connection")
        chunks.append(data)
        tail = (tail + data)[-4096:]
        if end in tail or tail.startswith(tag + b" "):
            line_start = tail.rfind(end)
            rest = tail[line_start + len(end):] if line_start >= 0 else tail[len(tag) + 1:]
            if b"\r\n" in rest:
                if not rest.startswith(b"OK"):
                    raise RuntimeError(f"{tag.decode()} failed: {rest[:200]!r}")
                return b"".join(chunks)


def fetch_times(port: int, reps: int) -> dict[str, float]:
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        sock.recv(4096)
        n = 0

        def command(text: bytes) -> tuple[float, bytes]:
            nonlocal n
            n += 1
            tag = b"t%d" % n
            started = time.perf_counter()
            sock.sendall(tag + b" " + text + b"\r\n")
            data = _read_tagged(sock, tag)
            return time.perf_counter() - started, data

        command(b'LOGIN "%s" "%s"' % (USER.encode(), PASSWORD.encode()))
        command(b"SELECT INBOX")
        times: dict[str, list[float]] = {name: [] for name in FETCHES}
        for _ in range(reps):
            for name, text in FETCHES.items():
                seconds, _data = command(text)
                times[name].append(seconds)
        command(b"LOGOUT")
    finally:
        sock.close()
    return {name: median(values) for name, values in times.items()}


async def store_fetch_times(dsn: str, password: str | None, reps: int) -> dict[str, float]:
    from metadata.store import MetadataStore
    from metadata.uidset import UidSet

    store = await MetadataStore.open(dsn, pool_min=1, pool_max=1, password=password)
    try:
        user = await store.users.get(USER)
        inbox = await store.mailboxes.get(user.id, "INBOX")
        times: dict[str, list[float]] = {item: [] for item in STORE_ITEMS}
        for _ in range(reps):
            for item in STORE_ITEMS:
                started = time.perf_counter()
                await store.messages.fetch(user.id, inbox.id, UidSet.all(), items=[item])
                times[item].append(time.perf_counter() - started)
    finally:
        await store.close()
    return {item: median(values) for item, values in times.items()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    corpus = corpus_messages(Path(args.corpus), max_size=args.max_size)
    with tempfile.TemporaryDirectory(prefix="objmail-footprint-") as tmp, \
            ObjmailCluster(security="plain") as cluster:
        cluster.add_users([USER], PASSWORD, fast_hash=True)
        src = build_maildir(Path(tmp), corpus, args.messages)
        argv = [sys.executable, "-m", "ops.cli", "--config", str(cluster.cluster.config_path),
                "import", "--user", USER, "--json", str(src)]
        started = time.monotonic()
        done = subprocess.run(argv, capture_output=True, check=False, env=os.environ.copy())
        if done.returncode != 0:
            raise SystemExit(f"objmail import failed: {done.stderr.decode()}")
        imported = time.monotonic() - started
        report = asyncio.run(footprint(cluster.conf.cluster.pg_dsn,
                                       cluster.cluster.credentials.pg_password))
        report["import_seconds"] = imported
        report["fetch_seconds"] = fetch_times(cluster.imap_port, args.reps)
        report["store_fetch_seconds"] = asyncio.run(store_fetch_times(
            cluster.conf.cluster.pg_dsn, cluster.cluster.credentials.pg_password,
            3 * args.reps))
    return report


def render(report: dict[str, Any]) -> str:
    count = report["messages"] or 1
    lines = [f"{report['messages']} messages, corpus {report['corpus_bytes'] / count:.0f} "
             f"B/message, default_toast_compression={report['default_toast_compression']}",
             "", "relation                                           B/message"]
    total = 0
    for name, size in report["relations"].items():
        total += size
        lines.append(f"  {name:<48} {size / count:8.0f}")
    lines.append(f"  {'TOTAL':<48} {total / count:8.0f}")
    trigram = sum(size for name, size in report["relations"].items() if "_trgm_" in name)
    lines.append(f"  {'TOTAL without the trigram indexes':<48} {(total - trigram) / count:8.0f}")
    lines += ["", "messages column                   stored B/msg   raw B/msg  compression"]
    for name, (stored, raw) in report["columns"].items():
        lines.append(f"  {name:<32} {stored / count:10.0f} {raw / count:11.0f}  "
                     f"{report['compression'].get(name) or ''}")
    lines.append("")
    for name, seconds in report["fetch_seconds"].items():
        lines.append(f"UID FETCH 1:* {name}: {seconds * 1000:.1f} ms "
                     f"({seconds / count * 1e6:.1f} us/message, median)")
    for name, seconds in report.get("store_fetch_seconds", {}).items():
        lines.append(f"Messages.fetch {name}: {seconds * 1000:.1f} ms "
                     f"({seconds / count * 1e6:.1f} us/message, median)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    parser.add_argument("--max-size", type=int, default=512 * 1024,
                        help="skip corpus files of this many bytes or more")
    parser.add_argument("--json", help="write the report here too")
    args = parser.parse_args(argv)
    report = run(args)
    print(render(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
