"""What RFC 5267 updating searches cost: the latency of one flag change (``UID STORE``) in a
session that keeps K updating searches (``SEARCH RETURN (UPDATE)``) over a mailbox of N
messages, objmail against Dovecot, in one run.

objmail runs every kept search again when the mailbox changed (one PostgreSQL query each,
``imapd/contextsearch.py``); Dovecot updates its results incrementally.  Both servers get the
same N corpus messages through their LMTP listeners; for each K the same session keeps K
searches (UNSEEN, FLAGGED, UNFLAGGED, UNDELETED, ALL: results from a few to all N), then
times ``--stores`` single ``UID STORE u +FLAGS.SILENT``/``-FLAGS.SILENT (\\Flagged)`` on
random messages, each answered with its ADDTO/REMOVEFROM.  Medians over ``--reps``
alternating runs::

    .venv/bin/python -m ops.bench.context_bench --messages 2000 --stores 40 --reps 3
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ops.bench.common import (
    DEFAULT_CORPUS,
    ObjmailCluster,
    corpus_messages,
    lmtp_payload,
    load_text,
    markdown_table,
    median,
)
from ops.bench.dovecot import PrivateDovecot
from ops.bench.imap_bench import Connection

#: The kept searches, in the order they are added (K takes the first K).
SEARCHES = (b"UNSEEN", b"FLAGGED", b"UNFLAGGED", b"UNDELETED", b"ALL")
USER = "ctx0"


async def store_latencies(port: int, password: str, kept: int, stores: int, messages: int,
                          rng: random.Random) -> list[float]:
    """Seconds per ``UID STORE`` with ``kept`` updating searches in the session."""
    conn = await Connection.open("127.0.0.1", port, None)
    try:
        await conn.command(b"LOGIN %s %s" % (USER.encode(), password.encode()))
        await conn.command(b"SELECT INBOX")
        for criteria in SEARCHES[:kept]:
            await conn.command(b"UID SEARCH RETURN (UPDATE COUNT) " + criteria)
        out = []
        for n in range(stores):
            uid = rng.randint(1, messages)
            sign = b"+" if n % 2 == 0 else b"-"
            started = time.perf_counter()
            await conn.command(b"UID STORE %d %sFLAGS.SILENT (\\Flagged)" % (uid, sign))
            out.append(time.perf_counter() - started)
        return out
    finally:
        await conn.close()


def run(args: argparse.Namespace) -> int:
    from ops.bench.lmtp_bench import deliver_batch, stamped

    corpus = corpus_messages(Path(args.corpus), args.corpus_limit)
    if not corpus:
        raise SystemExit(f"no messages under {args.corpus}")
    payloads = [(f"{USER}@example.org",
                 lmtp_payload(stamped(corpus[k % len(corpus)], f"ctx.{k}")))
                for k in range(args.messages)]
    levels = [int(k) for k in args.kept.split(",")]
    results: dict[tuple[str, int], list[float]] = {}
    with ObjmailCluster() as objmail, PrivateDovecot([USER], password=args.password) as dovecot:
        objmail.add_users([USER], args.password)
        ports = {"objmail": (objmail.imap_port, objmail.lmtp_port),
                 "dovecot": (dovecot.imap_port, dovecot.lmtp_port)}
        for target, (_imap, lmtp) in ports.items():
            elapsed, _lat, refused = asyncio.run(deliver_batch(lmtp, payloads, 4))
            if refused:
                raise SystemExit(f"{target} refused {refused} messages")
            print(f"{target}: {len(payloads)} messages in {elapsed:.1f}s", file=sys.stderr)
        for rep in range(args.reps):
            order = list(ports) if rep % 2 == 0 else list(reversed(ports))
            for target in order:
                for kept in levels:
                    rng = random.Random(rep * 1000 + kept)
                    latencies = asyncio.run(store_latencies(
                        ports[target][0], args.password, kept, args.stores, args.messages,
                        rng))
                    results.setdefault((target, kept), []).append(median(latencies))
            print(f"rep {rep + 1} done (load {load_text()})", file=sys.stderr)
    rows = []
    for kept in levels:
        ours = median(results["objmail", kept]) * 1000
        theirs = median(results["dovecot", kept]) * 1000
        rows.append((kept, f"{ours:.2f}", f"{theirs:.2f}", f"{ours / theirs:.1f}"))
    print(markdown_table(("kept searches", "objmail STORE ms", "Dovecot STORE ms",
                          "objmail/Dovecot"), rows))
    print(f"\n{args.messages} messages, {args.stores} STOREs per level, medians of "
          f"{args.reps} reps; load average after: {load_text()}")
    return 0


def build_arg_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--stores", type=int, default=40)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--kept", default="0,1,5", help="numbers of kept searches to measure")
    ap.add_argument("--password", default="secret")
    ap.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    ap.add_argument("--corpus-limit", type=int, default=200)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_arg_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
