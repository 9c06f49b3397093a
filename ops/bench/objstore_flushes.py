"""What a durable write waits for on this disk: LMDB's two flushes against a log's one.

objstored acknowledges a write once it is on disk.  LMDB (opened as objstored opens it,
``MDB_NOMETASYNC``) needs two ordered flushes for that: the commit's ``fdatasync`` of the
data pages, then a flush of the meta page (the next commit's, or an explicit
``mdb_env_sync`` when nothing else is queued).  Redis ``appendfsync always`` and a
write-ahead log need one: append the batch, ``fdatasync``.  This measures both on the
same file system, without the server: the ceiling a write-ahead log could lift a durable
set to, before any CPU is spent on the protocol.

For each batch size it times, alternating, (a) one LMDB write transaction of that many
puts of ``--size`` bytes at random keys of a store prefilled with ``--prefill`` items,
its commit and the ``mdb_env_sync`` that makes it durable, and (b) one ``write`` of the
same records to an append-only file and its ``fdatasync``, and (c) the two together as
a log beside LMDB would run them: the commit (its data flush; the meta page left to the
next commit) while a second thread appends the batch to the log and flushes it.  Medians
of ``--reps``.

Usage::

    python -m ops.bench.objstore_flushes [--dir /work/tmp] [--size 4096]
        [--prefill 50000] [--batches 1,16,128] [--reps 200]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from objstore.lmdbstore import LmdbStore

MIB = 1024 * 1024


def _key(i: int) -> bytes:
    return b"k%09d" % i


def prefill(store: LmdbStore, count: int, size: int) -> None:
    value = os.urandom(size)
    env = store.env
    for start in range(0, count, 1000):
        with env.begin(write=True) as txn:
            for i in range(start, min(start + 1000, count)):
                txn.put(_key(i), value)
    store.sync()


def lmdb_batch(store: LmdbStore, keys: list[bytes], value: bytes) -> tuple[float, float]:
    """(commit seconds, sync seconds) of one durable batch."""
    env = store.env
    t0 = time.perf_counter()
    with env.begin(write=True) as txn:
        for key in keys:
            txn.put(key, value)
    t1 = time.perf_counter()
    store.sync()
    return t1 - t0, time.perf_counter() - t1


def overlapped_batch(store: LmdbStore, keys: list[bytes], value: bytes, fd: int,
                     records: bytes, pool: ThreadPoolExecutor) -> float:
    """One batch made durable the way a log beside LMDB would: the commit (data flush, meta
    written unflushed) while another thread appends the batch to the log and flushes it."""
    env = store.env
    t0 = time.perf_counter()
    txn = env.begin(write=True)
    for key in keys:
        txn.put(key, value)
    logged = pool.submit(log_batch, fd, records)
    txn.commit()
    logged.result()
    return time.perf_counter() - t0


def log_batch(fd: int, records: bytes) -> float:
    t0 = time.perf_counter()
    os.write(fd, records)
    os.fdatasync(fd)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=None, help="file system to measure (default: the temp dir)")
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--prefill", type=int, default=50000)
    ap.add_argument("--batches", default="1,16,128")
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args(argv)
    rng = random.Random(1)
    value = os.urandom(args.size)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        store = LmdbStore(Path(tmp) / "lmdb", map_size=max(4 * args.prefill * args.size, 64 * MIB),
                          max_item_size=2 * args.size + 4096)
        prefill(store, args.prefill, args.size)
        fd = os.open(Path(tmp) / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        print(f"{args.prefill} items of {args.size} B prefilled in {tmp}; medians of {args.reps}",
              file=sys.stderr)
        pool = ThreadPoolExecutor(1)
        print("| writes per batch | LMDB commit (data flush) µs | LMDB meta flush µs | "
              "LMDB durable µs | log append + fdatasync µs | log / LMDB | "
              "commit beside the log µs | beside / LMDB |")
        print("|---|---|---|---|---|---|---|---|")
        for batch in (int(b) for b in args.batches.split(",")):
            commits, syncs, logs, beside = [], [], [], []
            record = len(value).to_bytes(4, "big") + value
            for _ in range(args.reps):
                keys = [_key(rng.randrange(args.prefill)) for _ in range(batch)]
                commit, sync = lmdb_batch(store, keys, value)
                commits.append(commit)
                syncs.append(sync)
                records = b"".join(k + record for k in keys)
                logs.append(log_batch(fd, records))
                keys = [_key(rng.randrange(args.prefill)) for _ in range(batch)]
                beside.append(overlapped_batch(store, keys, value, fd, records, pool))
            c, s, w, b = (statistics.median(x) * 1e6 for x in (commits, syncs, logs, beside))
            print(f"| {batch} | {c:,.0f} | {s:,.0f} | {c + s:,.0f} | {w:,.0f} | "
                  f"{w / (c + s):.2f}x | {b:,.0f} | {b / (c + s):.2f}x |")
        pool.shutdown()
        os.close(fd)
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
