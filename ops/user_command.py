"""``objmail user add|passwd|del|list|quota``: the user directory.

Passwords are read from the terminal without echo (asked twice), or with
``--password-stdin`` from the first line of standard input, for scripts.  They are never
taken from the command line, where other local users could read them in the process list.
Exit codes (:mod:`ops.exitcodes`): EX_NOUSER for an unknown user, EX_DATAERR for a taken or
invalid name or a bad password, EX_USAGE when no password source is available,
EX_UNAVAILABLE when PostgreSQL cannot be reached, EX_CONFIG when its schema is not migrated.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Callable
from typing import Any, TextIO

from metadata.records import User
from metadata.store import MetadataStore
from ops.cli import CommandContext
from ops.config import ConfigError, parse_size
from ops.exitcodes import EX_DATAERR, EX_OK, EX_USAGE, FAILURES, fail

Prompt = Callable[[str], str]


class PasswordUnavailable(Exception):
    """No password could be read (no terminal and no --password-stdin, or a mismatch)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("user", help="add, change, delete and list users")
    actions = parser.add_subparsers(dest="user_action", metavar="ACTION", required=True)

    add = actions.add_parser("add", help="create a user with the default mailboxes")
    add.add_argument("name")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of standard input")
    add.add_argument("--quota", default="0",
                     help="storage quota such as 500M or 2G (default 0 = unlimited)")
    add.add_argument("--messages", type=_count, default=0, metavar="N",
                     help="most messages over all mailboxes (default 0 = unlimited)")

    passwd = actions.add_parser("passwd", help="change a user's password")
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of standard input")

    delete = actions.add_parser("del", help="delete a user, their mailboxes and references")
    delete.add_argument("name")

    listing = actions.add_parser("list", help="list users with quota and usage")
    listing.add_argument("--json", action="store_true", help="machine-readable output")

    quota = actions.add_parser("quota", help="set a user's quotas (0 = unlimited)")
    quota.add_argument("name")
    quota.add_argument("size", nargs="?", help="storage, such as 500M or 2G (omitted: "
                       "unchanged)")
    quota.add_argument("--messages", type=_count, default=None, metavar="N",
                       help="most messages over all mailboxes (omitted: unchanged)")

    parser.set_defaults(handler=run)


def _count(text: str) -> int:
    """A message count for ``--messages``."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a message count: {text!r}")
    return int(text)


def read_password(ctx: CommandContext, *, stdin: TextIO, prompt: Prompt,
                  interactive: bool) -> str:
    """The new password from stdin (``--password-stdin``) or typed twice at the terminal.

    :raises PasswordUnavailable: with the exit code to use.
    """
    if ctx.args.password_stdin:
        password = stdin.readline().rstrip("\r\n")
    elif interactive:
        password = prompt("Password: ")
        if prompt("Retype password: ") != password:
            raise PasswordUnavailable("the passwords do not match", EX_DATAERR)
    else:
        raise PasswordUnavailable("no terminal to ask for the password on; "
                                  "use --password-stdin", EX_USAGE)
    if not password:
        raise PasswordUnavailable("the password must not be empty", EX_DATAERR)
    return password


def _human(size: int) -> str:
    """``size`` bytes in binary units, as ``--quota`` takes them (``512B``, ``1.5G``)."""
    if size < 1024:
        return f"{size}B"
    value = float(size)
    for unit in ("K", "M", "G"):
        value /= 1024
        if value < 1024:
            return f"{value:.1f}{unit}"
    return f"{value / 1024:.1f}T"


def _user_json(user: User) -> dict[str, Any]:
    return {"name": user.name, "id": user.id, "quota_bytes": user.quota_bytes,
            "used_bytes": user.used_bytes, "messages": user.message_count,
            "quota_messages": user.quota_messages,
            "created_at": user.created_at.isoformat()}


def run(ctx: CommandContext, *, stdin: TextIO | None = None, prompt: Prompt | None = None,
        interactive: bool | None = None) -> int:
    """Dispatch ``objmail user ACTION``; ``stdin``, ``prompt`` and ``interactive`` default to
    the process's standard input, :func:`getpass.getpass` and whether stdin is a terminal."""
    stdin = sys.stdin if stdin is None else stdin
    prompt = getpass.getpass if prompt is None else prompt
    interactive = stdin.isatty() if interactive is None else interactive
    action = ctx.args.user_action
    try:
        quota: int | None = 0
        if action == "add":
            quota = parse_size(ctx.args.quota, "quota")
        elif action == "quota":
            if ctx.args.size is None and ctx.args.messages is None:
                raise ConfigError("", "give a storage size, --messages N, or both")
            quota = None if ctx.args.size is None else parse_size(ctx.args.size, "quota")
        password = None
        if action in ("add", "passwd"):
            password = read_password(ctx, stdin=stdin, prompt=prompt, interactive=interactive)
        return asyncio.run(_dispatch(ctx, action, password, quota))
    except PasswordUnavailable as exc:
        ctx.warn(f"objmail user {action}: {exc}")
        return exc.code
    except ConfigError as exc:
        ctx.warn(f"objmail user {action}: {exc.message}")
        return EX_USAGE
    except FAILURES as exc:
        return fail(ctx, exc, f"objmail user {action}")


async def _dispatch(ctx: CommandContext, action: str, password: str | None,
                    quota: int | None) -> int:
    store = await MetadataStore.open(ctx.config.cluster.pg_dsn, pool_min=1, pool_max=2,
                                     password=ctx.credentials.pg_password)
    try:
        name = getattr(ctx.args, "name", "")
        if action == "add":
            assert password is not None
            user = await store.users.create(name, password, quota_bytes=quota or 0,
                                            quota_messages=ctx.args.messages)
            ctx.say(f"created user {user.name} (quota {_limits(user)}) with mailboxes "
                    "INBOX, Drafts, Sent, Trash, Junk, Archive")
        elif action == "passwd":
            assert password is not None
            await store.users.set_password(name, password)
            ctx.say(f"password of {name} changed")
        elif action == "del":
            gone = await store.users.delete(name)
            ctx.say(f"deleted user {gone.name}: {gone.mailboxes} mailbox(es), "
                    f"{gone.messages} message(s), {gone.references} blob reference(s) dropped")
        elif action == "quota":
            user = await store.users.set_quota(name, quota, ctx.args.messages)
            ctx.say(f"quota of {user.name} is {_limits(user)} ({_human(user.used_bytes)}, "
                    f"{user.message_count} messages used)")
        else:
            _list(ctx, await store.users.list())
        return EX_OK
    finally:
        await store.close()


def _limits(user: User) -> str:
    """The user's limits in words: ``1.0G``, ``1.0G, 5000 messages``, ``unlimited``."""
    parts = []
    if user.quota_bytes:
        parts.append(_human(user.quota_bytes))
    if user.quota_messages:
        parts.append(f"{user.quota_messages} messages")
    return ", ".join(parts) or "unlimited"


def _list(ctx: CommandContext, users: list[User]) -> None:
    if ctx.args.json:
        ctx.say(json.dumps([_user_json(u) for u in users], indent=2))
        return
    ctx.say(f"{'NAME':<32} {'QUOTA':>10} {'USED':>10} {'MESSAGES':>9}  CREATED")
    for u in users:
        limit = _human(u.quota_bytes) if u.quota_bytes else "-"
        ctx.say(f"{u.name:<32} {limit:>10} {_human(u.used_bytes):>10} {u.message_count:>9}  "
                f"{u.created_at.strftime('%Y-%m-%d')}")
