"""Bulk import benchmark: ``objmail import`` against Dovecot's ``doveadm import`` of the
same source (an mbox file, or a Maildir) into its own maildir store, in one run.

One run builds a source of ``--messages`` corpus messages (each with a header line of
its own, so no two are the same message), as a Maildir (flags rotated through ``S``,
``FS``, none, ``RS``; mtimes one second apart) and as an mbox file of the same
messages, starts an objmail cluster
(:class:`ops.bench.common.ObjmailCluster`: the stages of ``objmail dev up``, durable,
``replicas = 2``) and a private Dovecot (:class:`ops.bench.dovecot.PrivateDovecot`),
then, ``--reps`` times and alternating which goes first, imports the whole source into
a fresh user of each: ``objmail import --user U SRC`` and ``doveadm import -u U
mbox:DIR:INBOX=SRC "" all`` (or ``maildir:SRC``), each a subprocess as an operator
would run it.  The mbox source is the default: from a Maildir on the same file system
Dovecot hard-links the files instead of copying them, which measures ``link(2)``.  Reported: messages/s
(wall time of the command), and for objmail a second, resumed run over the same source
(which finds every message there and imports nothing).  Every import is checked: the
user ends with exactly ``--messages`` messages.

Usage::

    python -m ops.bench.import_bench [--messages 1000] [--reps 3] [--source mbox|maildir]
        [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import mailbox
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ops.bench.common import (
    DEFAULT_CORPUS,
    ObjmailCluster,
    corpus_messages,
    load_text,
    markdown_table,
    median,
    wait_for_quiet,
)
from ops.bench.dovecot import PrivateDovecot

DOVEADM = shutil.which("doveadm") or "/usr/bin/doveadm"
FLAGS = ("S", "FS", "", "RS")
TARGETS = ("objmail", "dovecot")


@dataclass
class Run:
    target: str
    rep: int
    messages: int
    seconds: float
    resumed_seconds: float | None = None

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


def build_sources(root: Path, corpus: Sequence[bytes], count: int) -> dict[str, Path]:
    """A Maildir and an mbox file of the same ``count`` messages under ``root``
    (readable by every user: Dovecot's import runs as the mail user)."""
    src = root / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (src / sub).mkdir(parents=True)
    (root / "mbox").mkdir()
    box = mailbox.mbox(root / "mbox" / "inbox")
    start = 1_600_000_000
    for n in range(count):
        raw = f"X-Import-Bench: {n}\r\n".encode() + corpus[n % len(corpus)]
        path = src / "cur" / f"{start + n}.M{n}P1.bench:2,{FLAGS[n % len(FLAGS)]}"
        path.write_bytes(raw)
        os.utime(path, (start + n, start + n))
        box.add(raw)
    box.close()
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return {"maildir": src, "mbox": root / "mbox" / "inbox"}


def import_objmail(cluster: ObjmailCluster, user: str, src: Path, count: int) -> Run:
    argv = [sys.executable, "-m", "ops.cli", "--config", str(cluster.cluster.config_path),
            "import", "--user", user, "--json", str(src)]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"objmail import failed ({done.returncode}): {done.stderr.decode()}")
    stats = json.loads(done.stdout)
    if stats["imported"] != count:
        raise SystemExit(f"objmail imported {stats['imported']} of {count}")
    started = time.monotonic()
    again = subprocess.run(argv, capture_output=True, check=False)
    resumed = time.monotonic() - started
    if again.returncode != 0 or json.loads(again.stdout)["skipped"] != count:
        raise SystemExit(f"objmail import rerun did not skip everything: {again.stdout!r}")
    return Run("objmail", 0, count, seconds, resumed)


def import_dovecot(dovecot: PrivateDovecot, user: str, src: Path, count: int) -> Run:
    # Its own copy of the source: Dovecot writes its uidlist and indexes into it.
    copy = Path(tempfile.mkdtemp(prefix="objmail-import-src-"))
    try:
        if src.is_dir():
            shutil.copytree(src, copy / "Maildir")
            location = f"maildir:{copy / 'Maildir'}"
        else:
            (copy / "mail").mkdir()
            shutil.copy(src, copy / "inbox")
            location = f"mbox:{copy / 'mail'}:INBOX={copy / 'inbox'}"
        if os.geteuid() == 0:
            for path in [copy, *copy.rglob("*")]:
                os.chown(path, dovecot.mail_uid, dovecot.mail_gid)
        argv = [DOVEADM, "-c", str(dovecot.root / "dovecot.conf"), "import", "-u", user,
                location, "", "all"]
        started = time.monotonic()
        done = subprocess.run(argv, capture_output=True, check=False)
        seconds = time.monotonic() - started
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    if done.returncode != 0:
        raise SystemExit(f"doveadm import failed ({done.returncode}): {done.stderr.decode()}")
    box = dovecot.maildir(user)
    got = len(list((box / "cur").iterdir())) + len(list((box / "new").iterdir()))
    if got != count:
        raise SystemExit(f"Dovecot imported {got} of {count}")
    return Run("dovecot", 0, count, seconds)


def report(runs: list[Run], args: argparse.Namespace, load_before: str) -> str:
    lines = [f"source: {args.source}; messages per import: {args.messages}; reps: {args.reps}; "
             f"load before: {load_before}", ""]
    rows = []
    rates: dict[str, float] = {}
    for target in TARGETS:
        mine = [r for r in runs if r.target == target]
        if not mine:
            continue
        rates[target] = median(r.per_second for r in mine)
        resumed = [r.resumed_seconds for r in mine if r.resumed_seconds is not None]
        rows.append([target, " / ".join(f"{r.per_second:,.0f}" for r in mine),
                     f"**{rates[target]:,.0f}**",
                     f"{median(resumed):.2f} s" if resumed else "-"])
    lines.append(markdown_table(["importer", "msgs/s per rep", "median msgs/s",
                                 "rerun over the same source (all skipped)"], rows))
    if len(rates) == 2 and rates["dovecot"]:
        lines += ["", f"objmail / Dovecot: **{rates['objmail'] / rates['dovecot']:.2f}x**"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--source", choices=("mbox", "maildir"), default="mbox")
    ap.add_argument("--max-load", type=float, default=1.0,
                    help="wait for the 1-minute load average to drop below this")
    ap.add_argument("--wait", type=float, default=600, help="longest wait for that, s")
    ap.add_argument("--json", type=Path, help="also write every run here")
    args = ap.parse_args(argv)
    corpus = corpus_messages(args.corpus)
    if not corpus:
        raise SystemExit(f"no messages under {args.corpus}")
    users = [f"imp{n}" for n in range(args.reps)]
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="objmail-import-bench-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        src = build_sources(root / "source", corpus, args.messages)[args.source]
        with ObjmailCluster() as objmail, PrivateDovecot(users, protocols=("imap",)) as dove:
            objmail.add_users(users, "secret", fast_hash=True)
            load_before = f"{wait_for_quiet(args.max_load, args.wait):.2f} (1 min)"
            for rep, user in enumerate(users):
                order = TARGETS if rep % 2 == 0 else tuple(reversed(TARGETS))
                for target in order:
                    if target == "objmail":
                        run = import_objmail(objmail, user, src, args.messages)
                    else:
                        run = import_dovecot(dove, user, src, args.messages)
                    run.rep = rep + 1
                    runs.append(run)
                    print(f"rep {rep + 1} {target}: {run.per_second:,.1f} msgs/s "
                          f"(load {load_text()})", file=sys.stderr)
    print(report(runs, args, load_before))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in runs], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
