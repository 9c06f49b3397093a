"""LIST-STATUS (RFC 5819) against its reference, LIST and then one STATUS per mailbox, in
one run on one objmail cluster.

A user with ``--mailboxes`` mailboxes (``Folders/f000`` ...; the six defaults besides),
``--messages`` APPENDed to each of the first ``--filled`` of them, a third of them seen.
Each rep times, in alternating order:

* over IMAP (imaplib, one connection): ``LIST "" "*" RETURN (STATUS (items))`` against
  ``LIST "" "*"`` followed by ``STATUS <name> (items)`` for every mailbox, which is what a
  client does without LIST-STATUS and what the server did per mailbox before;
* in process, against the same PostgreSQL: ``Mailboxes.statuses`` (one statement for
  every mailbox) against ``Mailboxes.status`` called for each.

Medians over ``--reps``; the table gives each side and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import imaplib
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from ops.bench.common import ObjmailCluster, markdown_table, median

PASSWORD = "secret"


def _timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return (time.perf_counter() - start) * 1000


def _ok(typ: str, data: Any) -> Any:
    if typ != "OK":
        raise RuntimeError(f"IMAP said {typ}: {data!r}")
    return data


def populate(imap: imaplib.IMAP4, args: argparse.Namespace) -> list[str]:
    """Create the mailboxes and messages; the names LIST will return."""
    names = [f"Folders/f{i:03d}" for i in range(args.mailboxes)]
    for name in names:
        _ok(*imap.create(name))
    for i, name in enumerate(names[:args.filled]):
        for j in range(args.messages):
            flags = "(\\Seen)" if j % 3 == 0 else None
            raw = f"Subject: m{i}-{j}\r\nFrom: a@example.org\r\n\r\nbody {j}\r\n".encode()
            _ok(*imap.append(name, flags, None, raw))
    return names


def imap_reps(imap: imaplib.IMAP4, args: argparse.Namespace) -> tuple[list[float], list[float]]:
    items = f"({args.items})"

    def list_status() -> None:
        _ok(*imap._simple_command("LIST", '""', '"*"', "RETURN", f"(STATUS {items})"))
        imap.untagged_responses.clear()

    def list_then_status() -> None:
        listed = _ok(*imap.list('""', '"*"'))
        for line in listed:
            name = line.rsplit(b' "/" ', 1)[1].decode()
            if b"\\Noselect" not in line:
                _ok(*imap._simple_command("STATUS", name, items))
        imap.untagged_responses.clear()

    one: list[float] = []
    many: list[float] = []
    for rep in range(args.reps):
        order = [(list_status, one), (list_then_status, many)]
        for work, into in (order if rep % 2 == 0 else order[::-1]):
            into.append(_timed(work))
    return one, many


async def metadata_reps(cluster: ObjmailCluster, user: str,
                        args: argparse.Namespace) -> tuple[list[float], list[float]]:
    from metadata.store import MetadataStore

    store = await MetadataStore.open(cluster.conf.cluster.pg_dsn, pool_min=1, pool_max=2,
                                     password=cluster.cluster.credentials.pg_password)
    try:
        account = await store.users.get(user)
        tree = await store.mailboxes.tree(account.id)
        ids = [b.id for b in tree.mailboxes if not b.noselect]
        recent = "RECENT" in args.items.upper().split()
        one: list[float] = []
        many: list[float] = []
        for rep in range(args.reps):
            async def together() -> None:
                await store.mailboxes.statuses(account.id, ids, recent=recent)

            async def each() -> None:
                for box_id in ids:
                    await store.mailboxes.status(account.id, box_id)

            order = [(together, one), (each, many)]
            for work, into in (order if rep % 2 == 0 else order[::-1]):
                start = time.perf_counter()
                await work()
                into.append((time.perf_counter() - start) * 1000)
        return one, many
    finally:
        await store.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    with ObjmailCluster() as cluster:
        user = "lister"
        cluster.add_users([user], PASSWORD)
        imap = imaplib.IMAP4("127.0.0.1", cluster.imap_port)
        try:
            _ok(*imap.login(user, PASSWORD))
            names = populate(imap, args)
            imap_one, imap_many = imap_reps(imap, args)
        finally:
            imap.logout()
        meta_one, meta_many = asyncio.run(metadata_reps(cluster, user, args))
    return {
        "mailboxes": len(names) + 6, "items": args.items, "reps": args.reps,
        "imap_list_status_ms": median(imap_one), "imap_list_then_status_ms": median(imap_many),
        "statuses_ms": median(meta_one), "status_each_ms": median(meta_many),
    }


def table(report: dict[str, Any]) -> str:
    rows = [
        ("IMAP: LIST RETURN (STATUS) vs LIST + STATUS each", report["imap_list_status_ms"],
         report["imap_list_then_status_ms"]),
        ("metadata: statuses() vs status() each", report["statuses_ms"],
         report["status_each_ms"]),
    ]
    return markdown_table(
        ("what", "one statement ms", "per mailbox ms", "speed-up"),
        [(what, f"{a:.2f}", f"{b:.2f}", f"{b / a:.1f}x") for what, a, b in rows])


def build_arg_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mailboxes", type=int, default=200)
    ap.add_argument("--filled", type=int, default=20, help="mailboxes that get messages")
    ap.add_argument("--messages", type=int, default=10, help="messages per filled mailbox")
    ap.add_argument("--items", default="MESSAGES UNSEEN UIDNEXT", help="STATUS items")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--json", action="store_true")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['mailboxes']} mailboxes, STATUS ({args.items}), medians of "
              f"{args.reps} reps", file=sys.stderr)
        print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
