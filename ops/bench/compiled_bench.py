"""Microbenchmarks of the compiled modules: the same work under the pure-Python modules and
under their mypyc build (:mod:`runtime.compiled`), in fresh interpreters, alternating.

Each rep starts one interpreter with ``OBJMAIL_PURE=1`` and one without (alternating which
goes first); each interpreter times every benchmark as the median of ``--rounds`` rounds of
about ``--round-s`` CPU seconds (process time: on a shared machine, time spent waiting for a
core is not the code's), and the report gives the median over the reps:

``imap_parse``      one IMAP command of the benchmark mix through :class:`imapd.parser.Parser`
                    (feed, frame, lex, grammar), per command
``imap_render``     one response of a 20-message header FETCH (``* n FETCH (UID FLAGS
                    BODY[HEADER.FIELDS ...] {n})``) or a tagged OK, per response
``mime_parse``      :func:`metadata.mimetree.parse` of a corpus message, per message
``mime_split``      :func:`metadata.splitter.split` (parse, cut into skeleton and blobs,
                    hash), per message
``mime_render``     BODYSTRUCTURE, BODY and ENVELOPE of a parsed message, per message
``body_derive``     BODY cut out of a stored BODYSTRUCTURE (FETCH BODY since schema 8), per
                    message
``mime_prepare``    :func:`metadata.delivery.prepare`: everything LMTP delivery computes per
                    message (also search text, section map, sort keys: not compiled)
``objstore_parse``  one memcached request (get, set 4 KiB, mg, ms 4 KiB) through
                    :class:`objstore.protocol.CommandParser`, per request
``objstore_reply``  :func:`objstore.replies.serialize` of a 4 KiB VALUE, STORED and a meta
                    reply, per reply

Usage::

    python -m ops.bench.compiled_bench [--reps 5] [--corpus ../shared/corpus] [--limit 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ops.bench.common import DEFAULT_CORPUS, corpus_messages, load_text, markdown_table

#: The benchmarks, in report order.
BENCHES = ("imap_parse", "imap_render", "mime_parse", "mime_split", "mime_render",
           "body_derive", "mime_prepare", "objstore_parse", "objstore_reply")

IMAP_COMMANDS = (
    b"a1 UID FETCH 3,9,17:20,44 (FLAGS BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE)])\r\n",
    b"a2 UID FETCH 4711 BODY.PEEK[]\r\n",
    b"a3 UID SEARCH FLAGGED\r\n",
    b'a4 UID SEARCH SUBJECT "quarterly report"\r\n',
    b"a5 UID STORE 17 +FLAGS (\\Flagged)\r\n",
    b"a6 NOOP\r\n",
    b"a7 SELECT INBOX\r\n",
    b"a8 STATUS INBOX (MESSAGES UIDNEXT UNSEEN)\r\n",
    b'a9 LIST "" "*"\r\n',
    b"a10 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345)\r\n",
    b"a11 UID STORE 17 +FLAGS (\\Deleted)\r\n",
    b"a12 EXPUNGE\r\n",
)


def _timed(fn: Callable[[], int], rounds: int, round_s: float) -> float:
    """Median over rounds of the CPU seconds per operation; ``fn`` runs a batch, returns
    ops.  CPU time, not wall time: on a shared machine waiting for a core is not work."""
    fn()  # warm up
    per_op = []
    for _ in range(rounds):
        ops = 0
        start = time.process_time()
        while True:
            ops += fn()
            elapsed = time.process_time() - start
            if elapsed >= round_s:
                break
        per_op.append(elapsed / ops)
    return statistics.median(per_op)


def _benches(corpus: Sequence[bytes]) -> dict[str, Callable[[], int]]:
    import datetime as dt

    from imapd import response as r
    from imapd.parser import BadCommand, Parser
    from metadata.bodystructure import (
        body_from_bodystructure,
        render_body,
        render_bodystructure,
    )
    from metadata.delivery import prepare
    from metadata.envelope import tree_envelope
    from metadata.mimetree import parse
    from metadata.splitter import split
    from objstore.protocol import CommandParser
    from objstore.replies import MetaReply, Reply, Status, Value, Values, serialize

    def imap_parse() -> int:
        parser = Parser()
        for command in IMAP_COMMANDS:
            parser.feed(command)
            event = parser.next_event()
            assert not isinstance(event, BadCommand), event
        return len(IMAP_COMMANDS)

    header = (b"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\n"
              b"Subject: quarterly report\r\nDate: Mon, 7 Dec 2026 10:00:00 +0000\r\n\r\n")
    when = dt.datetime(2026, 12, 7, 10, 0, tzinfo=dt.UTC)
    responses: list[r.Response] = [
        r.FetchData(n, (r.FetchNumber("UID", 1000 + n), r.FetchFlags(("\\Seen", "$Label1")),
                        r.FetchDate(when),
                        r.FetchLiteral("BODY[HEADER.FIELDS (FROM TO SUBJECT DATE)]", header)))
        for n in range(1, 21)]
    responses.append(r.Tagged("a1", r.Status.OK, "UID FETCH completed"))

    def imap_render() -> int:
        for response in responses:
            r.render(response)
        return len(responses)

    trees = [parse(raw) for raw in corpus]

    def mime_parse() -> int:
        for raw in corpus:
            parse(raw)
        return len(corpus)

    def mime_split() -> int:
        for raw in corpus:
            split(raw, 4096)
        return len(corpus)

    def mime_render() -> int:
        for tree in trees:
            render_bodystructure(tree)
            render_body(tree)
            tree_envelope(tree)
        return len(trees)

    structures = [render_bodystructure(tree) for tree in trees]

    def body_derive() -> int:
        # FETCH BODY since schema 8: cut out of the stored BODYSTRUCTURE.
        for structure in structures:
            body_from_bodystructure(structure)
        return len(structures)

    def mime_prepare() -> int:
        for raw in corpus:
            prepare(raw, 4096)
        return len(corpus)

    blob = bytes(range(256)) * 16
    key = b"k3f9a0c2b1d4e5f60718293a4b5c6d7e8f9012345"
    requests = [b"get " + key + b"\r\n",
                b"set " + key + b" 0 0 4096\r\n" + blob + b"\r\n",
                b"mg " + key + b" v f t\r\n",
                b"ms " + key + b" 4096 T0 F0\r\n" + blob + b"\r\n"]

    def objstore_parse() -> int:
        parser = CommandParser()
        for request in requests:
            parser.feed(request)
            parser.next_command()
        return len(requests)

    replies: list[Reply] = [Values((Value(key, 0, blob),)), Status(b"STORED"),
               MetaReply(b"VA", (b"t-1", b"f0"), blob)]

    def objstore_reply() -> int:
        for reply in replies:
            serialize(reply)
        return len(replies)

    return {"imap_parse": imap_parse, "imap_render": imap_render, "mime_parse": mime_parse,
            "mime_split": mime_split, "mime_render": mime_render, "body_derive": body_derive,
            "mime_prepare": mime_prepare,
            "objstore_parse": objstore_parse, "objstore_reply": objstore_reply}


def child(args: argparse.Namespace) -> int:
    """Run every benchmark in this interpreter; print µs per op as JSON."""
    from runtime import compiled

    corpus = corpus_messages(Path(args.corpus), args.limit)
    benches = _benches(corpus)
    out: dict[str, object] = {"compiled": None, "messages": len(corpus)}
    for name in args.only or BENCHES:
        out[name] = _timed(benches[name], args.rounds, args.round_s) * 1e6
    out["compiled"] = compiled.active_key()
    print(json.dumps(out))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--round-s", type=float, default=0.2)
    ap.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    ap.add_argument("--limit", type=int, default=200, help="corpus messages")
    ap.add_argument("--only", nargs="*", choices=BENCHES)
    ap.add_argument("--json", type=Path, help="also write every run here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    runs: dict[str, list[dict[str, float]]] = {"pure": [], "compiled": []}
    load_before = load_text()
    passed = ["--rounds", str(args.rounds), "--round-s", str(args.round_s),
              "--corpus", args.corpus, "--limit", str(args.limit)]
    if args.only:
        passed += ["--only", *args.only]
    for rep in range(args.reps):
        order = ("pure", "compiled") if rep % 2 == 0 else ("compiled", "pure")
        for mode in order:
            env = {k: v for k, v in os.environ.items() if k != "OBJMAIL_PURE"}
            if mode == "pure":
                env["OBJMAIL_PURE"] = "1"
            done = subprocess.run([sys.executable, "-m", "ops.bench.compiled_bench", "--child",
                                   *passed], env=env, check=True, capture_output=True, text=True)
            result = json.loads(done.stdout)
            if (result["compiled"] is None) != (mode == "pure"):
                raise SystemExit(f"the {mode} interpreter ran compiled={result['compiled']}: "
                                 "build first (python -m ops.compiled build)")
            runs[mode].append(result)
            print(f"rep {rep + 1} {mode} (load {load_text()})", file=sys.stderr)
    rows = []
    for name in args.only or BENCHES:
        pure = statistics.median(run[name] for run in runs["pure"])
        comp = statistics.median(run[name] for run in runs["compiled"])
        rows.append([name, f"{pure:,.2f}", f"{comp:,.2f}", f"{pure / comp:.2f}x"])
    print(markdown_table(["benchmark", "pure µs/op", "compiled µs/op", "speed-up"], rows))
    print(f"\n{args.reps} reps alternating, medians; {runs['pure'][0]['messages']:.0f} corpus "
          f"messages; load average before: {load_before}, after: {load_text()}")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
