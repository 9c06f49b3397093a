"""How an ``objmail`` command ends on an error: one line on stderr and the sysexits code a
script can act on.  The one CLI error map, for every package's errors.

Commands catch :data:`FAILURES` around their work and return :func:`fail`; a command adds
its own cases (``deliver``'s flags from the command line) in front.  The code follows the
error's kind (:mod:`runtime.errors`), so PostgreSQL down and Redis Cluster down end every
command the same way:

=============== ==================================================================
kind            exit code
=============== ==================================================================
unavailable     69 EX_UNAVAILABLE (PostgreSQL, Redis Cluster, object servers, an OS
                error); ``deliver`` and ``import`` pass ``unavailable=EX_TEMPFAIL``,
                75, since an MTA retries 75 and bounces 69, and an import is resumed
misconfigured   78 EX_CONFIG (schema not migrated, index bucket count, key file)
invalid input   65 EX_DATAERR (a taken name, an unknown node, a bad blob id)
limit           65 EX_DATAERR (a message too big)
corruption      65 EX_DATAERR
=============== ==================================================================

A few classes have a code of their own: an unknown user 67 EX_NOUSER, an unknown mailbox
73 EX_CANTCREAT, over quota 77 EX_NOPERM (as an LDA answers), and the refusals that a
later try can get past, 75 EX_TEMPFAIL: a job whose lease another director holds, a lease
lost, a node removal that would lose the only copies.  Anything else is a bug: it is not
caught, so its traceback shows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from director.errors import LeaseHeld, LeaseLost, RemoveRefused
from metadata.errors import NoSuchMailbox, NoSuchUser, OverQuota
from runtime import errors as kinds

if TYPE_CHECKING:
    from ops.cli import CommandContext

__all__ = [
    "EX_CANTCREAT",
    "EX_CONFIG",
    "EX_DATAERR",
    "EX_INTERRUPTED",
    "EX_NOINPUT",
    "EX_NOPERM",
    "EX_NOUSER",
    "EX_OK",
    "EX_SIGPIPE",
    "EX_SOFTWARE",
    "EX_TEMPFAIL",
    "EX_UNAVAILABLE",
    "EX_USAGE",
    "FAILURES",
    "exit_code",
    "fail",
]

#: Exit codes (sysexits.h), so scripts can tell usage errors from outages.
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78
#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EX_INTERRUPTED = 130
#: What a shell reports for a process killed by SIGPIPE (128 + 13).
EX_SIGPIPE = 141

#: What :func:`fail` maps (``except FAILURES as exc: return fail(ctx, exc)``); anything
#: else is a bug.
FAILURES: tuple[type[BaseException], ...] = (kinds.Error, OSError)

#: Classes with a code of their own, and what to add to their message: first match wins.
_OWN: tuple[tuple[type[Exception], int, str], ...] = (
    (RemoveRefused, EX_TEMPFAIL, ""),
    (LeaseHeld, EX_TEMPFAIL, "; try again later"),
    (LeaseLost, EX_TEMPFAIL, "; another director carries the job on"),
    (NoSuchUser, EX_NOUSER, ""),
    (NoSuchMailbox, EX_CANTCREAT, ""),
    (OverQuota, EX_NOPERM, ""),
)

_KINDS: dict[type[kinds.Error], int] = {
    kinds.Corruption: EX_DATAERR,
    kinds.Unavailable: EX_UNAVAILABLE,
    kinds.LimitExceeded: EX_DATAERR,
    kinds.InvalidInput: EX_DATAERR,
    kinds.Misconfigured: EX_CONFIG,
}


def exit_code(exc: BaseException, *, unavailable: int = EX_UNAVAILABLE) -> int | None:
    """The exit code for ``exc``; None for a bug (an error of no kind).

    :param unavailable: the code for an unavailable dependency.
    """
    for cls, code, _hint in _OWN:
        if isinstance(exc, cls):
            return code
    kind = kinds.kind_of(exc)
    if kind is None:
        return None
    return unavailable if kind is kinds.Unavailable else _KINDS[kind]


def fail(ctx: CommandContext, exc: BaseException, command: str = "objmail", *,
         unavailable: int = EX_UNAVAILABLE, hint: str = "") -> int:
    """Say what went wrong, on one line; the exit code for it.

    :param command: what the line starts with (``objmail user add``).
    :param hint: what to do about it, appended after a ``;``.
    :raises BaseException: ``exc`` itself when it is a bug (no kind).
    """
    code = exit_code(exc, unavailable=unavailable)
    if code is None:
        raise exc
    extra = next((h for cls, _code, h in _OWN if isinstance(exc, cls)), "")
    text = " ".join(str(exc).split()) or type(exc).__name__
    ctx.warn(f"{command}: {text}{extra}" + (f"; {hint}" if hint else ""))
    return code
