"""CPU per durable set inside objstored, without the network or the disk.

The real parser, protocol adapter, handler, LMDB store (on ``/dev/shm`` by default, so
``fdatasync`` costs nothing) and reply path, over Twisted's ``StringTransport``: each round
feeds ``--conns`` connections ``--depth`` pipelined sets each, then commits them as one
group-commit batch and fires their callbacks the way the daemon does
(``ObjstoreFactory.complete_writes``).  Prints the CPU time per set of the two halves
(what the reactor thread spends before the commit, and the commit with the replies), and
with ``--profile`` the functions that cost most.  What it leaves out: syscalls, the
reactor's event plumbing and the thread hand-over, which a running server adds.

Usage::

    python -m ops.bench.objstore_setpath [--size 4096] [--conns 16] [--depth 16]
        [--rounds 40] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import task
from twisted.internet.testing import StringTransport

from objstore.handler import Handler
from objstore.items import Callback, WriteOp
from objstore.lmdbstore import LmdbStore
from objstore.server import ObjstoreFactory
from objstore.stats import Counters, HotKeys, totals
from ops.config import ObjstoreConfig

MIB = 1024 * 1024


class HeldCommitter:
    """Queues writes until :meth:`commit` applies them as one batch, as the group-commit
    thread would (minus the thread)."""

    def __init__(self, store: LmdbStore, factory: ObjstoreFactory) -> None:
        self.store = store
        self.factory = factory
        self.queue: list[tuple[WriteOp, Callback]] = []

    def enqueue(self, op: WriteOp, done: Callback) -> None:
        self.queue.append((op, done))

    def stop(self) -> None:
        self.commit()

    def commit(self) -> None:
        batch, self.queue = self.queue, []
        results = self.store.apply_batch([op for op, _ in batch])
        self.factory.complete_writes([(done, res) for (_, done), res in zip(
            batch, results, strict=True)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        clock = task.Clock()
        clock.advance(1_800_000_000)
        config = ObjstoreConfig(map_size=256 * MIB, max_item_size=2 * MIB)
        store = LmdbStore(Path(tmp) / "lmdb", map_size=config.map_size,
                          max_item_size=config.max_item_size, clock=clock.seconds)
        counters = Counters()
        handler = Handler(store, config, counters, HotKeys(),
                          lambda: totals([counters.snapshot()]), clock=clock.seconds)
        factory = ObjstoreFactory(handler, config, counters, clock)
        committer = HeldCommitter(store, factory)
        store.use_committer(committer)
        conns = []
        for _ in range(args.conns):
            proto, transport = factory.buildProtocol(None), StringTransport()
            proto.makeConnection(transport)
            conns.append((proto, transport))
        value = b"x" * args.size
        requests = [b"".join(b"set k%d 0 0 %d\r\n%s\r\n" % ((c * args.depth + i) % 1000,
                                                            args.size, value)
                             for i in range(args.depth)) for c in range(args.conns)]

        def one_round() -> tuple[float, float]:
            started = time.process_time()
            for (proto, _), data in zip(conns, requests, strict=True):
                proto.dataReceived(data)
            parsed = time.process_time()
            committer.commit()
            done = time.process_time()
            for _, transport in conns:
                transport.clear()
            return parsed - started, done - parsed

        for _ in range(5):
            one_round()
        before = commit = 0.0
        for _ in range(args.rounds):
            a, b = one_round()
            before += a
            commit += b
        n = args.rounds * args.conns * args.depth
        print(f"set {args.size} B, {args.conns} connections x {args.depth} pipelined: "
              f"parse + handler + queue {before / n * 1e6:.1f} µs, "
              f"commit + callbacks + replies {commit / n * 1e6:.1f} µs, "
              f"total {(before + commit) / n * 1e6:.1f} µs CPU per set")
        if args.profile:
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(args.rounds):
                one_round()
            profile.disable()
            pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        store.use_committer(None)
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
