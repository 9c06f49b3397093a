"""memcached's text-protocol authentication (``memcached -Y authfile``), for objstored and
directord alike, and the client's side of it.

Theory of operation
-------------------
With an auth file configured, a connection starts unauthenticated.  The protocol adapter
(:class:`~objstore.server.ObjstoreProtocol`) then hands every parsed command to
:func:`authenticate` instead of the handler, until a command authenticates it; after
that the gate costs one attribute test per command.  As in memcached 1.6 (checked
byte for byte against memcached 1.6.18 ``-Y``):

* the first ``set <any key> <flags> <exptime> <bytes>`` whose value is ``user password``
  (split on spaces; more words are ignored) authenticates: ``STORED``, even with
  ``noreply``; nothing is stored;
* a ``set`` whose credentials match no entry gets ``CLIENT_ERROR authentication
  failure``, one whose value is a single word ``CLIENT_ERROR bad authentication token
  format``, one whose value does not end in ``\\r\\n`` ``CLIENT_ERROR bad command line
  termination``; the connection stays open and may try again;
* every other command, ``version``, ``stats`` and ``quit`` included, gets ``CLIENT_ERROR
  unauthenticated``.

Where objstored differs from memcached, on purpose: ``quit`` gets memcached's reply and
then closes the connection (memcached keeps it open); the ``set`` must be well formed
(a valid key, numeric flags and exptime), otherwise its line and its value line each get
``CLIENT_ERROR unauthenticated``; pipelined unauthenticated commands each get their reply
(memcached 1.6.18 answers only the first); and until it authenticates a client may send
lines of :data:`AUTH_LIMITS` ``max_line`` bytes and values of its ``max_item_size``
(memcached closes after 2048 bytes without a newline and waits forever for a longer
value): a longer ``set`` value is an authentication failure, a longer line closes the
connection.  The binary protocol (and its SASL) is not spoken at all: its magic byte
gets ``ERROR`` and the connection closes, before login as after; an HTTP request line
closes it silently.

Credentials are compared in constant time against every entry, so the time taken says
nothing about which user exists.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from objstore import protocol as p
from objstore.replies import STORED, ErrorReply, Reply, Status
from runtime.secrets import read_authfile

__all__ = ["AUTH_KEY", "AUTH_LIMITS", "AUTH_REFUSALS", "E_AUTH_FAILURE", "E_UNAUTHENTICATED",
           "AuthTable", "auth_request", "authenticate"]

E_UNAUTHENTICATED: Final = ErrorReply(b"CLIENT_ERROR", b"unauthenticated")
E_AUTH_FAILURE: Final = ErrorReply(b"CLIENT_ERROR", b"authentication failure")
E_AUTH_FORMAT: Final = ErrorReply(b"CLIENT_ERROR", b"bad authentication token format")
E_AUTH_TERMINATION: Final = ErrorReply(b"CLIENT_ERROR", b"bad command line termination")
#: What a client that did not log in may hear (a set before login is a login attempt).
AUTH_REFUSALS: Final = frozenset((E_UNAUTHENTICATED, E_AUTH_FAILURE, E_AUTH_FORMAT))
_STORED: Final = Status(STORED)

#: What an unauthenticated client may send: memcached's 2048-byte line, and a value far
#: longer than any ``user password`` (memcached's auth file lines are at most 255 bytes).
AUTH_LIMITS: Final = p.Limits(max_line=2048, max_item_size=1024, max_get_line=2048)

#: The key the director's client names in its authenticating ``set`` (ignored by servers).
AUTH_KEY: Final = b"auth"


class AuthTable:
    """The users of an auth file and their passwords.

    :param entries: ``(user, password)`` pairs; memcached's authfile format is read by
        :meth:`load`.
    """

    __slots__ = ("_entries", "source")

    def __init__(self, entries: Iterable[tuple[str, str]], source: str = "") -> None:
        self._entries = tuple((u.encode(), pw.encode()) for u, pw in entries)
        #: Where the entries came from (``stats settings`` shows it, as memcached does).
        self.source = source

    @classmethod
    def load(cls, path: str | Path, key: str) -> AuthTable:
        """Read a memcached authfile once (``user:password`` lines, mode 0600).

        :param key: the config key naming the file, for errors.
        :raises ConfigError: the file is missing, readable by others or malformed.
        """
        return cls(read_authfile(path, key), str(path))

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, user: bytes, password: bytes) -> bool:
        """True when ``user`` has ``password``; every entry is compared, in constant time."""
        found = False
        for known_user, known_password in self._entries:
            # Both comparisons run whatever the first says: no early exit to time.
            same_user = hmac.compare_digest(user, known_user)
            same_password = hmac.compare_digest(password, known_password)
            found |= same_user and same_password
        return found


def authenticate(cmd: p.Command, table: AuthTable) -> tuple[Reply | None, bool | None]:
    """memcached's reply to ``cmd`` from a connection not authenticated yet (None: close
    without a word), and what it was: True (now authenticated), False (a failed attempt)
    or None (not an attempt)."""
    if type(cmd) is p.Store:
        if cmd.name != b"set":
            return E_UNAUTHENTICATED, None
        words = [w for w in cmd.value.split(b" ") if w]
        if len(words) < 2:
            return E_AUTH_FORMAT, None  # memcached counts neither this nor a bad end
        if table.check(words[0], words[1]):
            return _STORED, True
        return E_AUTH_FAILURE, False
    if type(cmd) is p.TooLarge and cmd.name == b"set":
        return E_AUTH_FAILURE, False  # longer than any credentials
    if type(cmd) is p.ProtocolError:
        if cmd.message == p.E_BAD_CHUNK:
            return E_AUTH_TERMINATION, None
        if cmd.fatal:
            # The stream is lost (a line too long, the binary protocol, an HTTP request):
            # the same words as after login, and the adapter closes.
            if cmd.noreply:
                return None, None
            kind, _, message = cmd.message.partition(b" ")
            return ErrorReply(kind, message), None
    return E_UNAUTHENTICATED, None


def auth_request(user: str, password: str) -> list[bytes]:
    """The ``set`` that authenticates a connection as ``user``, as wire chunks."""
    value = f"{user} {password}".encode()
    return [b"set %s 0 0 %d\r\n" % (AUTH_KEY, len(value)), value, b"\r\n"]
