"""Where a delivery's CPU goes: CPU milliseconds per message of each process of the
cluster (imapd, PostgreSQL, Redis, objstored, directord), for LMTP deliveries and for an
``objmail import`` (whose own CPU is counted apart), on one cluster.

It starts a cluster (:class:`ops.bench.common.ObjmailCluster`, as ``lmtp_bench``), delivers
100 messages to warm it, then ``--messages`` corpus messages over ``--conns`` LMTP
connections (one recipient each, 10 users in turn), then imports the same number from an
mbox file into a fresh user.  Process groups are told apart by their command lines.

Usage::

    python -m ops.bench.cpu_split [--corpus /work/shared/corpus] [--messages 1000]
        [--conns 10] [--what lmtp,import]
"""

from __future__ import annotations

import argparse
import asyncio
import mailbox
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from ops.bench.common import DEFAULT_CORPUS, GROUPS, ObjmailCluster, corpus_messages, group_cpu
from ops.bench.lmtp_bench import batch, deliver_batch
from runtime.config import parse_hostport


def per_message(before: dict[str, float], after: dict[str, float], count: int) -> str:
    parts = [f"{g} {(after[g] - before[g]) * 1000 / count:.2f}" for g in GROUPS]
    total = sum(after.values()) - sum(before.values())
    return ", ".join(parts) + f"; cluster {total * 1000 / count:.2f} ms/msg"


def lmtp_commits(cluster: ObjmailCluster) -> str:
    """imapd's ``imapd_lmtp_commits_total`` summed over its workers (worker i serves metrics
    on the configured port + i), as ``deliveries per commit: commits``; empty when imapd does
    not export it (a tree without LMTP group commit)."""
    host, port = parse_hostport(cluster.conf.imapd.metrics_listen)
    found: dict[int, float] = {}
    for worker in range(os.cpu_count() or 1):
        try:
            with urllib.request.urlopen(f"http://{host}:{port + worker}/metrics",
                                        timeout=5) as reply:
                text = reply.read().decode()
        except OSError:
            continue
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "imapd_lmtp_commits_total":
                    n = int(sample.labels["deliveries"])
                    found[n] = found.get(n, 0) + sample.value
    return ", ".join(f"{n}: {int(c)}" for n, c in sorted(found.items()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--conns", type=int, default=10)
    ap.add_argument("--what", default="lmtp,import")
    args = ap.parse_args()
    corpus = corpus_messages(args.corpus)
    if not corpus:
        raise SystemExit(f"no messages under {args.corpus}")
    users = [f"u{i}" for i in range(10)]
    with ObjmailCluster() as cluster:
        cluster.add_users([*users, "importer"], "pw", fast_hash=True)
        roots = cluster.server_pids()
        asyncio.run(deliver_batch(cluster.lmtp_port, batch(corpus, users, 100, "w", 0), 10))
        if "lmtp" in args.what:
            start = group_cpu(roots)
            took, _latencies, refused = asyncio.run(deliver_batch(
                cluster.lmtp_port, batch(corpus, users, args.messages, "m", 100), args.conns))
            print(f"LMTP: {args.messages / took:.0f} msgs/s, {refused} refused; CPU ms/msg: "
                  f"{per_message(start, group_cpu(roots), args.messages)}; "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
            commits = lmtp_commits(cluster)
            if commits:
                print(f"LMTP commits by deliveries each (warm-up included): {commits}",
                      flush=True)
        if "import" in args.what:
            with tempfile.TemporaryDirectory() as tmp:
                src = Path(tmp) / "src.mbox"
                box = mailbox.mbox(str(src))
                for i in range(args.messages):
                    raw = corpus[i % len(corpus)].replace(b"\r\n", b"\n")
                    box.add(mailbox.mboxMessage(b"X-Bench-Id: %d\n" % i + raw))
                box.flush()
                box.close()
                argv = [sys.executable, "-m", "ops.cli", "--config",
                        str(cluster.cluster.config_path), "import", "--user", "importer", str(src)]
                start = group_cpu(roots)
                own = resource.getrusage(resource.RUSAGE_CHILDREN)
                began = time.monotonic()
                done = subprocess.run(argv, capture_output=True, check=False)
                took = time.monotonic() - began
                used = resource.getrusage(resource.RUSAGE_CHILDREN)
                if done.returncode:
                    raise SystemExit(f"objmail import failed: {done.stderr.decode()[-500:]}")
                client = (used.ru_utime + used.ru_stime - own.ru_utime - own.ru_stime)
                print(f"import: {args.messages / took:.0f} msgs/s; objmail import "
                      f"{client * 1000 / args.messages:.2f} CPU ms/msg (start-up included); "
                      f"servers: {per_message(start, group_cpu(roots), args.messages)}; "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
