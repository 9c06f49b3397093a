"""COMPRESS=DEFLATE's cost and gain: imapd's Deflater/Inflater (zlib-ng) against the
stdlib's zlib doing the same raw DEFLATE with sync flushes (what Dovecot's zlib plugin
does, at its default level 6), on FETCH responses built from the shared corpus.

Each corpus message becomes one burst, ``* n FETCH (UID n FLAGS (\\Seen) BODY[] {size}``
+ the message + ``)`` + a tagged OK, rendered by ``imapd.response`` and compressed with
one sync flush per burst, as ``IMAPServerProtocol.send`` does; small bursts (``a OK NOOP
completed``) show what a flush costs.  Reported per variant: octets out / in, MB/s of
input compressed and inflated (medians of ``--reps`` runs, CPU time of this process)::

    .venv/bin/python -m ops.bench.compress_bench --reps 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

from zlib_ng import zlib_ng

from imapd.deflate import Deflater, Inflater
from imapd.response import (
    FetchData,
    FetchFlags,
    FetchLiteral,
    FetchNumber,
    Status,
    Tagged,
    render_all,
)
from metadata.sections import imap_view

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"


def bursts(corpus: Path) -> list[list[bytes]]:
    """One FETCH burst per corpus message, as imapd renders it."""
    out = []
    files = sorted(p for p in corpus.rglob("*")
                   if p.is_file() and p.parent != corpus and "LICENSES" not in p.parts)
    for n, path in enumerate(files, 1):
        body = imap_view(path.read_bytes())
        out.append(render_all([
            FetchData(n, (FetchNumber("UID", n), FetchFlags(("\\Seen",)),
                          FetchLiteral("BODY[]", body))),
            Tagged("a", Status.OK, "FETCH completed")]))
    return out


class _Stdlib:
    """The reference: the stdlib's zlib, raw DEFLATE, one sync flush per burst."""

    def __init__(self, level: int) -> None:
        self._c = zlib.compressobj(level, zlib.DEFLATED, -15)

    def compress(self, chunks: Iterable[bytes]) -> bytes:
        out = [self._c.compress(chunk) for chunk in chunks]
        out.append(self._c.flush(zlib.Z_SYNC_FLUSH))
        return b"".join(out)


def _inflate_stdlib(stream: list[bytes]) -> int:
    d = zlib.decompressobj(-15)
    return sum(len(d.decompress(part)) for part in stream)


def _inflate_ours(stream: list[bytes]) -> int:
    inflater = Inflater()
    total = 0
    for part in stream:
        inflater.feed(part)
        while inflater.ready:
            total += len(inflater.read(64 * 1024))
    return total


def measure(make: Callable[[], object], inflate: Callable[[list[bytes]], int],
            data: list[list[bytes]], reps: int) -> dict[str, float]:
    size = sum(len(c) for burst in data for c in burst)
    out_size = 0
    compress_rates, inflate_rates = [], []
    for _ in range(reps):
        compressor = make()
        start = time.process_time()
        stream = [compressor.compress(burst) for burst in data]  # type: ignore[attr-defined]
        compress_rates.append(size / (time.process_time() - start) / 1e6)
        out_size = sum(map(len, stream))
        start = time.process_time()
        assert inflate(stream) == size
        inflate_rates.append(size / (time.process_time() - start) / 1e6)
    small = make()
    flushes = [small.compress([b"a%d OK NOOP completed\r\n" % i])  # type: ignore[attr-defined]
               for i in range(1000)]
    return {"in": size, "out": out_size, "ratio": out_size / size,
            "compress_mb_s": statistics.median(compress_rates),
            "inflate_mb_s": statistics.median(inflate_rates),
            "noop_bytes": statistics.median(len(f) for f in flushes[10:])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    args = parser.parse_args(argv)
    data = bursts(args.corpus)
    variants: list[tuple[str, Callable[[], object], Callable[[list[bytes]], int]]] = [
        ("stdlib zlib level 6 (reference)", lambda: _Stdlib(6), _inflate_stdlib),
        ("stdlib zlib level 1", lambda: _Stdlib(1), _inflate_stdlib),
        ("imapd Deflater, zlib-ng level 1", lambda: Deflater(1), _inflate_ours),
        ("imapd Deflater, zlib-ng level 2 (default)", lambda: Deflater(), _inflate_ours),
        ("imapd Deflater, zlib-ng level 6", lambda: Deflater(6), _inflate_ours),
    ]
    print(f"{len(data)} corpus messages as FETCH bursts, {zlib_ng.ZLIBNG_VERSION=}, "
          f"medians of {args.reps} runs")
    print("| variant | out/in | compress MB/s | inflate MB/s | NOOP answer, octets |")
    print("|---|---|---|---|---|")
    for name, make, inflate in variants:
        r = measure(make, inflate, data, args.reps)
        print(f"| {name} | {r['ratio']:.3f} | {r['compress_mb_s']:.0f} | "
              f"{r['inflate_mb_s']:.0f} | {r['noop_bytes']:.0f} (plain: 21) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
