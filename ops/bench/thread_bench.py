"""What THREAD costs in the session once the keys are fetched: ``imapd.threads``
(REFERENCES or ORDEREDSUBJECT) plus the ``* THREAD`` line, on seeded synthetic mailboxes,
for the trees given, alternating, in one run (no servers, no PostgreSQL).

Each ``--tree NAME=PATH`` is timed in its own subprocess with ``PATH`` first on the
import path (so a ``git archive main`` copy runs main's code); the tree's own way of
turning nodes into ``ThreadNode`` is used (recursive before branch threaddeep, bottom up
after).  Mailboxes: ``normal`` (threads of up to 20 replies, References kept to the last
64 ids, as the search bench's corpus mailbox) and ``chain`` (one reply chain; main
cannot thread it past ~1,000 and reports the error)::

    .venv/bin/python -m ops.bench.thread_bench --messages 10000 --reps 7 \\
        --tree before=/tmp/before --tree after=$PWD
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any

_CHILD = r"""
import json, random, sys, time
from imapd import threads
from imapd.response import ThreadData, ThreadNode, to_bytes
from metadata.records import ThreadEntry

kind, count, inner = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(7)
entries = []
if kind == "chain":
    for n in range(count):
        entries.append(ThreadEntry(n + 1, n + 1, "chain", n > 0, f"<{n}@c>",
                                   (f"<{n - 1}@c>",) if n else ()))
else:
    ancestry = {}
    for n in range(count):
        parent = rng.randrange(n) if n and rng.random() < 0.7 else None
        refs = () if parent is None else (*ancestry[parent], f"<{parent}@m>")[-64:]
        if len(refs) > 20:
            refs = ()
        ancestry[n] = refs
        subject = f"subject {n if not refs else refs[0]}"
        entries.append(ThreadEntry(n + 1, rng.randrange(count * 4) * count + n, subject,
                                   bool(refs), f"<{n}@m>", refs))
    order = sorted(range(count), key=lambda i: entries[i].rank)
    ranks = {i: r + 1 for r, i in enumerate(order)}
    entries = [e._replace(rank=ranks[i]) for i, e in enumerate(entries)]

def render(roots):
    seqs = {e.uid: e.uid for e in entries}
    if hasattr(threads, "inner_nodes"):
        made = {}  # as imapd/selected.py does
        def level(nodes):
            return tuple([made.pop(id(node)) if node.children
                          else ThreadNode(None if node.entry is None else seqs[node.entry.uid])
                          for node in nodes])
        for node in reversed(threads.inner_nodes(roots)):
            made[id(node)] = ThreadNode(None if node.entry is None else seqs[node.entry.uid],
                                        level(node.children))
        return to_bytes(ThreadData(level(roots)))
    def one(node):
        entry = node.entry
        if not node.children:
            return ThreadNode(None if entry is None else seqs[entry.uid])
        return ThreadNode(None if entry is None else seqs[entry.uid],
                          tuple([one(c) for c in node.children]))
    return to_bytes(ThreadData(tuple(one(r) for r in roots)))

out = {}
for name, algorithm in (("REFERENCES", threads.references),
                        ("ORDEREDSUBJECT", threads.ordered_subject)):
    times = []
    try:
        for _ in range(inner):
            start = time.perf_counter()
            line = render(algorithm(entries))
            times.append(time.perf_counter() - start)
        out[name] = min(times)
    except RecursionError:
        out[name] = None
assert line
print(json.dumps(out))
"""


def _run(path: str, kind: str, count: int, inner: int) -> dict[str, Any]:
    # cwd too: ``-c`` puts the working directory first on the import path.
    env = dict(os.environ, PYTHONPATH=path)
    done = subprocess.run([sys.executable, "-c", _CHILD, kind, str(count), str(inner)],
                          env=env, cwd=path, capture_output=True, check=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--inner", type=int, default=3, help="best of, per subprocess")
    parser.add_argument("--kind", choices=("normal", "chain"), action="append")
    parser.add_argument("--tree", action="append", required=True, help="NAME=PATH")
    args = parser.parse_args(argv)
    trees = [tuple(t.split("=", 1)) for t in args.tree]
    print(f"load average {os.getloadavg()[0]:.2f}; {args.messages} messages, "
          f"{args.reps} alternating reps, best of {args.inner} each; medians:")
    for kind in args.kind or ["normal", "chain"]:
        samples: dict[tuple[str, str], list[float | None]] = {}
        for _ in range(args.reps):
            for name, path in trees:
                for algorithm, took in _run(path, kind, args.messages, args.inner).items():
                    samples.setdefault((name, algorithm), []).append(took)
        for (name, algorithm), values in samples.items():
            ok = [v for v in values if v is not None]
            shown = f"{statistics.median(ok) * 1000:.1f} ms" if len(ok) == len(values) \
                else "RecursionError"
            print(f"| {kind} | {algorithm} | {name} | {shown} |")
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
