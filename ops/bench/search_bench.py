"""SEARCH BODY / TEXT on a large mailbox and THREAD / SORT on a threaded one: objmail
against Dovecot, the same messages in both, in one run.

One run generates two mailboxes of synthetic plain-text mail (deterministic from
``--seed``): ``--search-messages`` (default 100,000) for the searches and
``--thread-messages`` (default 10,000) shaped as discussions (997 base subjects, 60%
replies whose ``References:`` chain goes up to 20 deep, 8 senders, random sent dates)
for THREAD and SORT.  Bodies are drawn from a 20,000-word Zipf vocabulary of letters that
never form the planted words, so the number of matches of every query is known
beforehand and checked on both servers:

* a rare word planted in 1 message of 1,000, searched whole and by a 6-letter substring
  from its middle (RFC 3501: "contain the specified string");
* a word planted in 30% of the messages;
* a word that is in no message (the whole mailbox is read, or the whole index);
* ``TEXT`` (header and body) for a word planted only in a header.

objmail runs as ``objmail dev up`` does (:class:`ops.bench.common.ObjmailCluster`), the
mail loaded with ``objmail import`` from a Maildir; Dovecot
(:class:`ops.bench.dovecot.PrivateDovecot`, maildir, no FTS plugin: its default) gets the
same files in its maildir.  Each server is first asked once (SELECT builds Dovecot's
index; both caches warm), then each query runs ``--reps`` times, alternating which server
goes first; reported are the median wall time per command (send to tagged OK) and the
ratio.

With ``--tree NAME=PATH`` (given twice or more) each tree gets its own objmail cluster
whose daemons and import run that source tree (its ``PYTHONPATH``), so a change is
measured against the code without it in the same run, beside Dovecot, the servers taking
turns first.  ``--search-messages 0`` leaves the search mailbox out (THREAD and SORT
only).

Usage::

    python -m ops.bench.search_bench [--search-messages 100000] [--thread-messages 10000]
        [--reps 5] [--json results.json] [--tree before=/tmp/before --tree after=.]
"""

from __future__ import annotations

import argparse
import contextlib
import imaplib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

from ops.bench.common import ObjmailCluster, load_text, markdown_table, median, wait_for_quiet
from ops.bench.dovecot import PrivateDovecot

DOVECOT = "dovecot"
SEARCH_USER = "searcher"
THREAD_USER = "threader"
#: Planted words use q, x and z, which the vocabulary never does, so a substring of them
#: matches nothing else.
RARE = "quixzotically"
RARE_PART = "xzotic"
COMMON = "zephyrquux"
ABSENT = "qqzzxxnothere"
HEADER_ONLY = "xqzheaderword"
_SYLLABLES = [c + v for c in "bcdfghjklmnprstvw" for v in "aeiou"]


@dataclass(frozen=True)
class Query:
    name: str
    user: str
    command: str
    expected: int | None  # matches, where known in advance


@dataclass
class Timing:
    query: str
    target: str
    rep: int
    seconds: float
    matches: int


def vocabulary(rng: random.Random, size: int = 20_000) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))))
    return sorted(words)


def paragraph(rng: random.Random, words: Sequence[str], weights: Sequence[float],
              count: int) -> str:
    chosen = rng.choices(words, cum_weights=weights, k=count)
    return "\r\n".join(" ".join(chosen[i:i + 12]) for i in range(0, count, 12))


def build_search_mail(rng: random.Random, count: int) -> tuple[list[bytes], dict[str, int]]:
    words = vocabulary(rng)
    weights: list[float] = []
    total = 0.0
    for rank in range(1, len(words) + 1):
        total += 1.0 / rank
        weights.append(total)
    counts = {"rare": 0, "common": 0, "header": 0}
    start = datetime(2025, 1, 1, tzinfo=UTC)
    out = []
    for n in range(count):
        body = paragraph(rng, words, weights, rng.randint(80, 300))
        extra = []
        if n % 1000 == 7:
            body += f"\r\nas {RARE} as ever\r\n"
            counts["rare"] += 1
        if rng.random() < 0.3:
            body = f"{COMMON} {body}"
            counts["common"] += 1
        if n % 500 == 3:
            extra.append(f"X-Bench-Tag: {HEADER_ONLY}")
            counts["header"] += 1
        head = [f"From: sender{n % 50} <sender{n % 50}@example.org>",
                f"To: {SEARCH_USER}@example.org",
                f"Subject: {paragraph(rng, words, weights, 5)}",
                f"Date: {format_datetime(start + timedelta(minutes=n))}",
                f"Message-ID: <s{n}@bench.example.org>", *extra]
        out.append(("\r\n".join(head) + "\r\n\r\n" + body + "\r\n").encode())
    return out, counts


def build_thread_mail(rng: random.Random, count: int) -> list[bytes]:
    words = vocabulary(rng, 2_000)
    subjects = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 6)))
                for _ in range(997)]
    start = datetime(2025, 1, 1, tzinfo=UTC)
    by_subject: dict[int, list[tuple[str, list[str]]]] = {}
    out = []
    for n in range(count):
        base = rng.randrange(len(subjects))
        earlier = by_subject.setdefault(base, [])
        msgid = f"<t{n}@bench.example.org>"
        head = [f"From: person{n % 8} <person{n % 8}@example.org>",
                f"To: {THREAD_USER}@example.org",
                f"Date: {format_datetime(start + timedelta(minutes=rng.randrange(10**6)))}",
                f"Message-ID: {msgid}"]
        refs: list[str] = []
        if earlier and rng.random() < 0.6:
            parent_id, parent_refs = rng.choice(earlier)
            refs = ([*parent_refs, parent_id])[-20:]
            head += [f"Subject: Re: {subjects[base]}", f"In-Reply-To: {parent_id}",
                     "References: " + "\r\n ".join(refs)]
        else:
            head.append(f"Subject: {subjects[base]}")
        earlier.append((msgid, refs))
        body = " ".join(rng.choice(words) for _ in range(40))
        out.append(("\r\n".join(head) + "\r\n\r\n" + body + "\r\n").encode())
    return out


def write_maildir(root: Path, messages: Sequence[bytes]) -> Path:
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    for n, raw in enumerate(messages):
        (root / "cur" / f"{1_700_000_000 + n}.M{n}P1.bench:2,").write_bytes(raw)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def import_objmail(cluster: ObjmailCluster, user: str, src: Path, count: int,
                   log: Callable[[str], None], *, cwd: str | None = None) -> float:
    """``objmail import`` of ``src``, resumed as the tool says when a run stops (a
    busy machine can make an object server miss its reply deadline); seconds in all.

    :param cwd: the source tree to run (``python -m`` puts it first on ``sys.path``)."""
    started = time.monotonic()
    for attempt in range(1, 11):
        done = subprocess.run([sys.executable, "-m", "ops.cli", "--config",
                               str(cluster.cluster.config_path), "import", "--user", user,
                               "--json", str(src)], capture_output=True, check=False,
                              cwd=cwd)
        if done.returncode == 0:
            stats = json.loads(done.stdout)
            if stats["imported"] + stats["skipped"] != count:
                raise SystemExit(f"objmail import: {stats} of {count}")
            return time.monotonic() - started
        log(f"objmail import attempt {attempt} stopped, resuming: "
            f"{done.stderr.decode().strip().splitlines()[-1:]}")
    raise SystemExit(f"objmail import failed: {done.stderr.decode()}")


def fill_dovecot(dove: PrivateDovecot, user: str, src: Path) -> None:
    box = dove.maildir(user) / "cur"
    for path in sorted((src / "cur").iterdir()):
        (box / path.name).write_bytes(path.read_bytes())
        if os.geteuid() == 0:
            os.chown(box / path.name, dove.mail_uid, dove.mail_gid)


def matches_of(typ: str, data: list[bytes | tuple[bytes, bytes] | None], command: str) -> int:
    """How many messages an answer names: SEARCH numbers, or THREAD's parenthesised ids."""
    if typ != "OK":
        raise SystemExit(f"{command}: {typ} {data!r}")
    text = b" ".join(d for d in data if isinstance(d, bytes)).decode()
    return len(text.replace("(", " ").replace(")", " ").split())


class Session:
    """One logged-in IMAP connection with a mailbox selected."""

    def __init__(self, port: int, user: str) -> None:
        self.imap = imaplib.IMAP4("127.0.0.1", port, timeout=600)
        self.imap.login(user, "secret")
        typ, data = self.imap.select("INBOX", readonly=True)
        if typ != "OK":
            raise SystemExit(f"SELECT for {user}: {data!r}")

    def run(self, command: str) -> tuple[float, int]:
        verb, _, args = command.partition(" ")
        started = time.perf_counter()
        # imaplib's uid() returns the untagged SEARCH, SORT or THREAD data.
        typ, data = self.imap.uid(verb, args)
        return time.perf_counter() - started, matches_of(typ, data, command)

    def close(self) -> None:
        with contextlib.suppress(OSError, imaplib.IMAP4.error):
            self.imap.logout()


def queries(search_counts: dict[str, int], search_n: int, thread_n: int) -> list[Query]:
    searches = [
        Query("SEARCH BODY rare word (0.1%)", SEARCH_USER, f"SEARCH BODY {RARE}",
              search_counts["rare"]),
        Query("SEARCH BODY substring of it", SEARCH_USER, f"SEARCH BODY {RARE_PART}",
              search_counts["rare"]),
        Query("SEARCH BODY common word (30%)", SEARCH_USER, f"SEARCH BODY {COMMON}",
              search_counts["common"]),
        Query("SEARCH BODY absent word", SEARCH_USER, f"SEARCH BODY {ABSENT}", 0),
        Query("SEARCH TEXT header-only word", SEARCH_USER, f"SEARCH TEXT {HEADER_ONLY}",
              search_counts["header"]),
    ] if search_n else []
    return [
        *searches,
        Query(f"THREAD REFERENCES ({thread_n:,})", THREAD_USER,
              "THREAD REFERENCES UTF-8 ALL", thread_n),
        Query(f"THREAD ORDEREDSUBJECT ({thread_n:,})", THREAD_USER,
              "THREAD ORDEREDSUBJECT UTF-8 ALL", thread_n),
        Query(f"SORT (SUBJECT) ({thread_n:,})", THREAD_USER, "SORT (SUBJECT) UTF-8 ALL",
              thread_n),
        Query(f"SORT (REVERSE DATE) ({thread_n:,})", THREAD_USER,
              "SORT (REVERSE DATE) UTF-8 ALL", thread_n),
        Query(f"SORT (DISPLAYFROM SIZE) ({thread_n:,})", THREAD_USER,
              "SORT (DISPLAYFROM SIZE) UTF-8 ALL", thread_n),
        Query(f"SORT (ARRIVAL) ({thread_n:,})", THREAD_USER, "SORT (ARRIVAL) UTF-8 ALL",
              thread_n),
        # ESORT (RFC 5267): the answer is ESEARCH, not counted here.
        Query(f"SORT RETURN (MIN MAX COUNT) (SUBJECT) ({thread_n:,})", THREAD_USER,
              "SORT RETURN (MIN MAX COUNT) (SUBJECT) UTF-8 ALL", None),
    ]


def measure(ports: dict[str, int], qs: Sequence[Query], reps: int,
            log: Callable[[str], None]) -> list[Timing]:
    targets = list(ports)
    sessions = {(t, u): Session(ports[t], u) for t in targets
                for u in {q.user for q in qs}}
    timings: list[Timing] = []
    try:
        for q in qs:  # once each, unmeasured: Dovecot's index and every cache warm
            for target in targets:
                sessions[target, q.user].run(q.command)
        for rep in range(reps):
            # Each server takes its turn first.
            shift = rep % len(targets)
            order = targets[shift:] + targets[:shift]
            for q in qs:
                for target in order:
                    seconds, found = sessions[target, q.user].run(q.command)
                    if q.expected is not None and found != q.expected:
                        raise SystemExit(f"{target} {q.command}: {found} matches, "
                                         f"expected {q.expected}")
                    timings.append(Timing(q.name, target, rep + 1, seconds, found))
            log(f"rep {rep + 1} done (load {load_text()})")
    finally:
        for s in sessions.values():
            s.close()
    return timings


def report(qs: Sequence[Query], timings: Sequence[Timing], header: str) -> str:
    """A row per query: the median of each server, each objmail's speed against
    Dovecot's, and with several trees the last one's speed-up over the first."""
    trees = list(dict.fromkeys(x.target for x in timings if x.target != DOVECOT))
    rows = []
    for q in qs:
        med = {t: median(x.seconds for x in timings if x.query == q.name and x.target == t)
               for t in [*trees, DOVECOT]}
        found = next(x.matches for x in timings if x.query == q.name)
        row = [q.name, f"{found:,}" if q.expected is not None else "-",
               *(f"{med[t] * 1000:,.1f} ms" for t in [*trees, DOVECOT]),
               *(f"**{med[DOVECOT] / med[t]:.2f}x**" if med[t] else "-" for t in trees)]
        if len(trees) > 1:
            row.append(f"{med[trees[0]] / med[trees[-1]]:.1f}x" if med[trees[-1]] else "-")
        rows.append(row)
    names = ["objmail" if t == "objmail" else f"objmail {t}" for t in trees]
    columns = ["command", "matches", *(f"{n} (median)" for n in names), "Dovecot (median)",
               *(f"{n} speed / Dovecot's" for n in names)]
    if len(trees) > 1:
        columns.append(f"{trees[-1]} / {trees[0]}")
    return header + "\n\n" + markdown_table(columns, rows)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--search-messages", type=int, default=100_000)
    ap.add_argument("--thread-messages", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=5256)
    ap.add_argument("--max-load", type=float, default=1.5,
                    help="wait for the 1-minute load average to drop below this")
    ap.add_argument("--wait", type=float, default=600, help="longest wait for that, s")
    ap.add_argument("--json", type=Path, help="also write every timing here")
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                    help="an objmail cluster running the source tree at PATH (repeat to "
                         "compare trees; default: one cluster of this environment's code)")
    args = ap.parse_args(argv)
    trees: dict[str, str | None] = {"objmail": None}
    if args.tree:
        trees = {}
        for spec in args.tree:
            name, sep, path = spec.partition("=")
            if not sep or not name or name == DOVECOT or not Path(path).is_dir():
                ap.error(f"--tree {spec!r}: expected NAME=DIRECTORY")
            trees[name] = str(Path(path).resolve())

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    rng = random.Random(args.seed)
    search_mail, counts = build_search_mail(rng, args.search_messages)
    thread_mail = build_thread_mail(rng, args.thread_messages)
    size = sum(map(len, search_mail))
    log(f"generated {len(search_mail):,} messages ({size / 2**20:.0f} MiB) to search, "
        f"{len(thread_mail):,} to thread; planted: {counts}")
    with tempfile.TemporaryDirectory(prefix="objmail-search-bench-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        sources = {THREAD_USER: write_maildir(root / "thread", thread_mail)}
        if search_mail:
            sources[SEARCH_USER] = write_maildir(root / "search", search_mail)
        del search_mail, thread_mail
        users = list(sources)
        with contextlib.ExitStack() as stack:
            dove = stack.enter_context(PrivateDovecot(users, protocols=("imap",)))
            ports = {}
            for name, tree in trees.items():
                if tree is not None:
                    os.environ["PYTHONPATH"] = tree  # the daemons' and the import's code
                objmail = stack.enter_context(ObjmailCluster(source_root=tree or ""))
                objmail.add_users(users, "secret")
                for user, src in sources.items():
                    n = len(list((src / "cur").iterdir()))
                    took = import_objmail(objmail, user, src, n, log, cwd=tree)
                    log(f"objmail {name}: import of {n:,} messages for {user}: {took:.0f} s")
                ports[name] = objmail.imap_port
            for user, src in sources.items():
                fill_dovecot(dove, user, src)
            ports[DOVECOT] = dove.imap_port
            load = f"{wait_for_quiet(args.max_load, args.wait):.2f}"
            qs = queries(counts, args.search_messages, args.thread_messages)
            timings = measure(ports, qs, args.reps, log)
    header = (f"{args.search_messages:,} messages searched ({size / 2**20:.0f} MiB), "
              f"{args.thread_messages:,} threaded; {args.reps} reps alternating; "
              f"load average before: {load}, after: {load_text()}")
    print(report(qs, timings, header))
    if args.json:
        args.json.write_text(json.dumps([asdict(t) for t in timings], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
