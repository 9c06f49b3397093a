"""The IMAP mix of :mod:`ops.bench.imap_bench` against two objmail clusters whose daemons
run two source trees (before and after a change), alternating which goes first; commands/s,
the whole cluster's CPU per command and imapd's own.

Each cluster's processes run the tree given for it (their working directory, which
``python -m`` puts first on ``sys.path``, and ``PYTHONPATH``), so a change to
imapd is measured against the same code without it, in the same run and under the same
load, which on a shared machine moves far more than most single changes do::

    git archive main | tar -x -C /tmp/before
    python -m ops.bench.imap_ab /tmp/before "$PWD" --reps 7 --duration 15 --workers 1

``--pure before`` (or ``after``) runs that cluster's daemons with ``OBJMAIL_PURE=1``: with
the same tree twice, what the compiled modules (:mod:`runtime.compiled`) buy::

    python -m ops.bench.imap_ab "$PWD" "$PWD" --pure before --reps 7 --workers 1

A tree that is to run compiled but has no build of its own sources (an edited module
listed in :data:`runtime.compiled.MODULES`, or one its listed modules import) would fall
back to pure Python without a word and make the comparison one of compiling; the script
refuses to start then and says how to build it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from ops.bench import imap_bench
from ops.bench.common import DEFAULT_CORPUS, ObjmailCluster, load_text, tree_cpu_seconds
from ops.bench.lmtp_bench import deliver_batch


def compiled_status(tree: str) -> tuple[bool, str]:
    """Whether this interpreter's venv holds a build of ``tree``'s compiled modules, and
    what ``ops.compiled status`` said."""
    done = subprocess.run([sys.executable, "-m", "ops.compiled", "status"], cwd=tree,
                          env={**os.environ, "PYTHONPATH": str(Path(tree).resolve())},
                          capture_output=True, text=True, check=False)
    return done.returncode == 0, (done.stdout + done.stderr).strip()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", help="source tree of the first cluster")
    ap.add_argument("after", help="source tree of the second cluster")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--workers", type=int, default=1, help="[imapd] workers")
    ap.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    ap.add_argument("--pure", choices=("before", "after"),
                    help="run this cluster's daemons on the pure-Python modules")
    ap.add_argument("--mix", default=imap_bench.DEFAULT_MIX,
                    help="name=weight,... as imap_bench's (e.g. store=3,expunge=1 to "
                    "measure the writes alone)")
    args = ap.parse_args(argv)
    trees = {"before": args.before, "after": args.after}
    for name, tree in trees.items():
        if name == args.pure:
            continue
        ok, said = compiled_status(tree)
        if not ok:
            print(f"the {name} tree {tree} has no compiled build of its own sources ({said});"
                  f" its daemons would run pure Python. Build it first: cd {tree} && "
                  f"{sys.executable} -m ops.compiled build (or pass --pure {name}).",
                  file=sys.stderr)
            return 2
    bench = ["--clients", str(args.clients), "--duration", str(args.duration),
             "--corpus", args.corpus, "--mix", args.mix]
    seed_args = imap_bench.build_arg_parser().parse_args(bench)
    corpus = imap_bench.load_corpus(Path(args.corpus), seed_args.corpus_limit)
    users = [seed_args.user_format.format(n=n) for n in range(args.clients)]
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in trees}
    with contextlib.ExitStack() as stack:
        clusters = {}
        for name, tree in trees.items():
            os.environ["PYTHONPATH"] = str(Path(tree).resolve())  # the daemons' code
            cluster = stack.enter_context(ObjmailCluster(imapd_workers=args.workers,
                                                         pure=name == args.pure,
                                                         source_root=tree))
            cluster.add_users(users, seed_args.password)
            seed = imap_bench.seed_deliveries(seed_args, corpus, users)
            asyncio.run(deliver_batch(cluster.lmtp_port, seed, 10))
            clusters[name] = cluster
        for rep in range(args.reps):
            for name in (list(trees) if rep % 2 == 0 else list(reversed(trees))):
                cluster = clusters[name]
                run_args = imap_bench.build_arg_parser().parse_args(
                    [*bench, "--port", str(cluster.imap_port)])
                imapd = [pid for pid in [cluster.pid("imapd")] if pid]
                before = tree_cpu_seconds(imapd)
                report = asyncio.run(imap_bench.run(run_args, cpu_pids=cluster.server_pids()))
                commands = report["commands_per_second"] * report["duration_s"]
                imapd_ms = (tree_cpu_seconds(imapd) - before) * 1000 / max(commands, 1)
                row = (float(report["commands_per_second"]),
                       float(report["server_cpu_ms_per_command"]), imapd_ms)
                results[name].append(row)
                print(f"rep {rep + 1} {name}: {row[0]:.1f} commands/s, cluster {row[1]:.2f} "
                      f"ms/command, imapd {row[2]:.2f} ms/command (load {load_text()})",
                      flush=True)
    for name, rows in results.items():
        print(f"{name}: median {statistics.median(r[0] for r in rows):.1f} commands/s, "
              f"cluster {statistics.median(r[1] for r in rows):.2f} ms/command, "
              f"imapd {statistics.median(r[2] for r in rows):.2f} ms/command")
    return 0


if __name__ == "__main__":
    sys.exit(main())
