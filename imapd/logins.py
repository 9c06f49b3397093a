"""Failed-login limits per client address and per account, shared by every imapd process.

Theory of operation.  Password guessing is slowed three ways: each failure waits
``login_delay`` seconds, a connection is closed after a few failures, and - this module -
an address or an account that failed too often recently is refused outright, whatever
process or connection the next attempt comes through.  The counts live in Redis Cluster
under the installation's prefix, so every imapd process sees the same ones.

Each *subject* (a client address, an IPv6 client's /64 network, or an account name, case
folded as the users table compares it) counts its failures in fixed windows of
``login_fail_window`` seconds, one Redis counter per window.  The rate is estimated over
a sliding window from the current and the previous counter,
``current + previous * (1 - elapsed fraction of the current window)``: no burst at a
window boundary doubles the allowance, and two small counters per subject are all the
state.  A subject is limited while its estimate has reached its limit; then no password
is checked for it at all (a guess cannot succeed), and the client is told to come back
later (``NO [UNAVAILABLE]``, ``-ERR [SYS/TEMP]``).  Successful logins neither count nor
reset anything; refused attempts do not count either, so a limit ends one window after
the guessing stops.

Keys (docs/redis-schema.md, "Failed logins")::

    <prefix>login:ip:{<address>}:<window number>      string counter, TTL 2 windows
    <prefix>login:user:{<hash of the name>}:<window number>

Both windows of a subject share a hash tag, so they are read in one round trip.  When
Redis cannot be reached the limiter lets logins through (logged and counted): the
delay and the per-connection limit still apply, and the mailboxes would be unreadable
without Redis anyway.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from director.errors import DirectorError
from director.redisconn import ClusterRunner, Command
from imapd.errors import ImapdError
from metadata.records import User
from runtime import errors as kinds

__all__ = ["LIMITED_TEXT", "LoginLimiter", "LoginsLimited", "NoLoginLimit",
           "RedisLoginLimiter", "WindowKeys", "address_subject", "authenticate",
           "estimate", "user_subject", "window_keys"]

log = logging.getLogger(__name__)

#: What a limited client is told (IMAP ``NO [UNAVAILABLE]``, POP3 ``-ERR [SYS/TEMP]``).
LIMITED_TEXT = "Too many failed logins, try again later"


class LoginsLimited(ImapdError, kinds.LimitExceeded):
    """Too many recent failed logins from this address or for this account."""


class LoginLimiter(Protocol):
    """Counts failed logins and says when to refuse further attempts."""

    async def allowed(self, peer: str, user: str) -> bool:
        """False while ``peer`` (``host:port``) or ``user`` is over its limit."""
        ...

    async def failed(self, peer: str, user: str) -> None:
        """Count one failed login of ``user`` from ``peer``."""
        ...


class NoLoginLimit:
    """No limit (tests of the sessions, and limits configured to 0)."""

    async def allowed(self, peer: str, user: str) -> bool:
        return True

    async def failed(self, peer: str, user: str) -> None:
        return None


class _Users(Protocol):
    async def authenticate(self, name: str, password: str) -> User | None: ...


async def authenticate(users: _Users, limiter: LoginLimiter, peer: str, name: str,
                       password: str) -> User | None:
    """The user if ``password`` is theirs, None if not (counted as a failure).

    :raises LoginsLimited: ``peer`` or ``name`` is over its limit; the password was not
        checked.
    """
    if not await limiter.allowed(peer, name):
        raise LoginsLimited(name)
    user = await users.authenticate(name, password)
    if user is None:
        await limiter.failed(peer, name)
    return user


# -- pure decisions ----------------------------------------------------------------------


def address_subject(peer: str) -> str:
    """The subject counted for a client: its IPv4 address or its IPv6 /64 network (one
    host usually has a whole /64), from ``host:port``; the raw text if unparseable."""
    host = peer.rsplit(":", 1)[0].strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def user_subject(name: str) -> str:
    """The subject counted for an account name: case folded as the users table compares
    names, hashed so that any string makes a short, safe key."""
    return hashlib.blake2b(name.lower().encode("utf-8", "surrogatepass"),
                           digest_size=12).hexdigest()


@dataclass(frozen=True)
class WindowKeys:
    """The counters of one subject at one instant."""

    current: str
    previous: str
    #: How much of the current window has passed (0 <= elapsed < 1).
    elapsed: float


def window_keys(prefix: str, kind: str, subject: str, now: float,
                window: float) -> WindowKeys:
    """The keys of ``subject``'s current and previous windows at ``now``."""
    number, into = divmod(now, window)
    base = f"{prefix}login:{kind}:{{{subject}}}:"
    return WindowKeys(f"{base}{int(number)}", f"{base}{int(number) - 1}", into / window)


def estimate(current: int, previous: int, elapsed: float) -> float:
    """Failures over the last window, weighting the previous window by what of it still
    overlaps the sliding window."""
    return current + previous * (1.0 - elapsed)


# -- Redis -------------------------------------------------------------------------------


@dataclass
class LimiterStats:
    """Counters for metrics and tests."""

    refused: int = 0
    unavailable: int = 0


class RedisLoginLimiter:
    """:class:`LoginLimiter` over Redis Cluster, shared by every imapd process.

    :param runner: its own runner, with a short retry deadline: a login must not wait
        out a Redis failover.
    :param prefix: ``cluster.redis_prefix``.
    :param user_limit: failures per account per window (0 = not limited).
    :param address_limit: failures per client address per window (0 = not limited).
    :param window: seconds.
    :param clock: wall clock (shared by processes on several hosts).
    """

    def __init__(self, runner: ClusterRunner, prefix: str, *, user_limit: int,
                 address_limit: int, window: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.runner = runner
        self.prefix = prefix
        self.user_limit = user_limit
        self.address_limit = address_limit
        self.window = window
        self.stats = LimiterStats()
        self._clock = clock

    def _subjects(self, peer: str, user: str, now: float) -> list[tuple[int, WindowKeys]]:
        found = []
        if self.address_limit > 0:
            found.append((self.address_limit, window_keys(
                self.prefix, "ip", address_subject(peer), now, self.window)))
        if self.user_limit > 0:
            found.append((self.user_limit, window_keys(
                self.prefix, "user", user_subject(user), now, self.window)))
        return found

    async def allowed(self, peer: str, user: str) -> bool:
        subjects = self._subjects(peer, user, self._clock())
        if not subjects:
            return True
        commands = [Command(key, ("GET", key)) for _limit, keys in subjects
                    for key in (keys.current, keys.previous)]
        replies = await self._run("login limit check", commands)
        if replies is None:
            return True
        for i, (limit, keys) in enumerate(subjects):
            current, previous = (int(r or 0) for r in replies[2 * i:2 * i + 2])
            if estimate(current, previous, keys.elapsed) >= limit:
                self.stats.refused += 1
                log.warning("refusing login for %r from %s: too many failed logins",
                            user[:100], peer)
                return False
        return True

    async def failed(self, peer: str, user: str) -> None:
        subjects = self._subjects(peer, user, self._clock())
        ttl = max(1, int(2 * self.window) + 1)
        # The counter gets its TTL when it is created, so it can never outlive it.
        commands = [cmd for _limit, keys in subjects for cmd in (
            Command(keys.current, ("SET", keys.current, 0, "EX", ttl, "NX")),
            Command(keys.current, ("INCR", keys.current)))]
        await self._run("login failure count", commands)

    async def _run(self, what: str, commands: Sequence[Command]) -> list[Any] | None:
        try:
            return await self.runner.run(what, commands)
        except DirectorError as exc:
            self.stats.unavailable += 1
            log.warning("%s skipped, Redis unavailable: %s", what, exc)
            return None

    async def aclose(self) -> None:
        await self.runner.aclose()
