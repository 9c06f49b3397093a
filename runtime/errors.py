"""The kinds of failure, shared by every package so each protocol maps them once.

Each package has one base error (``ObjstoreError``, ``DirectorError``, ``MetadataError``,
``ImapdError``), and every exception it raises on purpose also derives from exactly one
kind below, e.g. ``class BlobCorrupt(BlobError, Corruption)``.  A protocol's error map
(:func:`objstore.replies.error_reply` for memcached, :mod:`imapd.errormap` for IMAP, POP3
and LMTP, :mod:`ops.exitcodes` for the CLI) switches on the kind, plus the few classes that
have words of their own (``NO [OVERQUOTA]``, ``550 5.1.1``), so the same condition gets the
same answer whichever package noticed it.

A misuse of our own API (a wrong argument, a state that cannot happen) is a bug, not a kind:
it raises a plain ``ValueError``/``TypeError``/``AssertionError``, which every map answers as
an internal error and logs with its traceback.
"""

from __future__ import annotations

import os
import ssl

__all__ = [
    "KINDS",
    "Corruption",
    "Error",
    "InvalidInput",
    "LimitExceeded",
    "Misconfigured",
    "Unavailable",
    "kind_of",
    "reason",
]


class Error(Exception):
    """Base of the kinds: an error every protocol map knows how to say."""


class Corruption(Error):
    """Stored data fails its checks (hash, checksum, format): never serve it; it needs
    repair, and retrying will not help until it is repaired."""


class Unavailable(Error):
    """A dependency (PostgreSQL, Redis Cluster, object servers) is down, unreachable,
    timing out or answering nonsense: temporary, try again later."""


class LimitExceeded(Error):
    """A configured limit (quota, message size, UID space) would be exceeded."""


class InvalidInput(Error):
    """The peer or user sent something wrong: bad syntax, an unknown name, a request
    the current state does not allow."""


class Misconfigured(Error):
    """The deployment does not match the code (schema not migrated, index bucket count,
    key file): an operator must act; retrying alone will not help."""


#: Every kind, most specific first (a class derives from one of them).
KINDS: tuple[type[Error], ...] = (Corruption, Unavailable, LimitExceeded, InvalidInput,
                                  Misconfigured)


def kind_of(exc: BaseException) -> type[Error] | None:
    """The kind of ``exc``; None for a bug (anything else).

    An ``OSError`` (a refused connection, a reset, a timeout) that reached a map unwrapped
    counts as :class:`Unavailable`: it came from a dependency, not from the caller.
    """
    if isinstance(exc, Error):
        for kind in KINDS:
            if isinstance(exc, kind):
                return kind
    if isinstance(exc, OSError):
        return Unavailable
    return None


def reason(exc: BaseException) -> str:
    """Why a connection failed, in a few words an operator reads (``Connection refused``,
    ``timed out``, ``TLS handshake failed (CERTIFICATE_VERIFY_FAILED)``), from the
    innermost cause of ``exc`` that says it, rather than a driver's message."""
    chain = [exc]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None \
            and nxt not in chain:
        chain.append(nxt)
    for e in reversed(chain):
        if isinstance(e, ssl.SSLError):  # its errno is OpenSSL's, not the OS's
            return f"TLS handshake failed ({getattr(e, 'reason', None) or e.strerror or e})"
        if isinstance(e, TimeoutError):
            return "timed out"
        if isinstance(e, OSError) and e.errno:
            return os.strerror(e.errno)
    return " ".join(str(chain[-1]).split()) or type(chain[-1]).__name__
