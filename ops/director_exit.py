"""How a director error ends an ``objmail`` command: one line on stderr and the sysexits
code a script can act on.

Every command that opens the director's Redis state (``node``, ``where``) or runs a
director job (``repair``, ``level``, ``inventory``, ``node drain --wait``) may meet these;
they are mapped here only.  A command adds its own cases (a refused node removal, a held
lease) in front of them.
"""

from __future__ import annotations

from director.errors import (
    DirectorError,
    IndexLayoutMismatch,
    IndexUnavailable,
    KeyUnavailable,
    RegistryError,
)
from ops.cli import EX_CONFIG, EX_DATAERR, EX_UNAVAILABLE, CommandContext

__all__ = ["DIRECTOR_FAILURES", "director_exit"]

#: The errors :func:`director_exit` maps (``except DIRECTOR_FAILURES as exc:``).
DIRECTOR_FAILURES = (IndexUnavailable, IndexLayoutMismatch, RegistryError, KeyUnavailable)


def director_exit(ctx: CommandContext, exc: DirectorError) -> int:
    """Say what went wrong; the exit code for it.

    :raises DirectorError: ``exc`` itself when it is none of :data:`DIRECTOR_FAILURES`
        (the caller should not have caught it).
    """
    if isinstance(exc, IndexUnavailable):
        ctx.warn(f"objmail: {exc}")
        return EX_UNAVAILABLE
    if isinstance(exc, IndexLayoutMismatch | KeyUnavailable):
        ctx.warn(f"objmail: configuration error: {exc}")
        return EX_CONFIG
    if isinstance(exc, RegistryError):
        ctx.warn(f"objmail: {exc}")
        return EX_DATAERR
    raise exc
