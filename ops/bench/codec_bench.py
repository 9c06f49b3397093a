"""What keyed ids and AES-GCM cost per message, in-process: the codec with a keyring
against the codec without one, on the corpus, alternating, in one run.

For each corpus message (whole, as one blob: the bytes a delivery stores, in fewer
pieces) one round is what a delivery and a fetch do to it in the director: its id
(HMAC-SHA-256 under the id key, or plain SHA-256), encoding (zlib-ng level 1, then
AES-256-GCM under the per-blob key when keyed), decoding, and verifying the content
against its id.  It prints the median microseconds per message of each, over ``--reps``
passes over the corpus, and the difference: the part of a delivery's server CPU that
encryption can account for.

Usage::

    python -m ops.bench.codec_bench [--corpus /work/shared/corpus] [--reps 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from director.blobids import BlobIds
from director.codec import BlobCodec
from director.keyring import Keyring
from ops.bench.common import DEFAULT_CORPUS, corpus_messages


def one_pass(messages: Sequence[bytes], codec: BlobCodec, ids: BlobIds) -> float:
    """Seconds for id + encode + decode + verify of every message."""
    start = time.perf_counter()
    for raw in messages:
        bid = ids.id_of(raw)
        payload, flags = codec.encode(raw, bid)
        ids.verify(bid, codec.decode(payload, flags, bid))
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args(argv)
    messages = corpus_messages(args.corpus, max_size=512 * 1024)
    if not messages:
        raise SystemExit(f"no messages under {args.corpus}")
    ring = Keyring.generate()
    setups = {"keyed + AES-GCM": (BlobCodec(1, ring), BlobIds(ring.id_key)),
              "plain": (BlobCodec(1, None), BlobIds(None))}
    times: dict[str, list[float]] = {name: [] for name in setups}
    for rep in range(args.reps):
        order = list(setups) if rep % 2 == 0 else list(reversed(setups))
        for name in order:
            times[name].append(one_pass(messages, *setups[name]))
    per = {name: statistics.median(t) * 1e6 / len(messages) for name, t in times.items()}
    size = sum(map(len, messages)) / len(messages)
    for name, us in per.items():
        print(f"{name}: {us:,.1f} µs per message (id, encode, decode, verify)")
    print(f"difference: {per['keyed + AES-GCM'] - per['plain']:,.1f} µs per message; "
          f"{len(messages)} messages, {size / 1024:.1f} KiB mean, median of {args.reps} "
          "passes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
