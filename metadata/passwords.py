"""Password hashing with scrypt (hashlib), in passlib's ``$scrypt$`` string format.

A stored hash reads ``$scrypt$ln=14,r=8,p=1$<salt>$<key>`` (salt and key in standard base64
without padding), so it carries its own salt and cost parameters: raising the cost later
needs no migration, old hashes still verify, and :func:`needs_rehash` says when to replace
one at the next successful login.  The format is passlib's, so tools that read passlib hashes
read these.

These functions are CPU- and memory-bound (tens of milliseconds); async callers run them in a
thread (hashlib releases the GIL during scrypt).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DEFAULT_PARAMS", "ScryptParams", "VerifiedLogins", "hash_password", "needs_rehash",
           "verify_password"]

_PREFIX = "$scrypt$"
_FORMAT = re.compile(r"\$scrypt\$ln=([0-9]{1,2}),r=([0-9]{1,3}),p=([0-9]{1,3})"
                     r"\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)\Z")
#: Largest accepted password, in UTF-8 bytes: bounds the work an attacker can ask for.
MAX_PASSWORD_BYTES = 4096


@dataclass(frozen=True)
class ScryptParams:
    """scrypt cost: ``N = 2**log_n``, block size ``r``, parallelism ``p``.

    Memory needed is about ``128 * r * N`` bytes (16 MiB for the defaults).
    """

    log_n: int = 14
    r: int = 8
    p: int = 1
    salt_bytes: int = 16
    key_bytes: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.log_n <= 24:
            raise ValueError(f"scrypt log_n must be 1..24, got {self.log_n}")
        if not 1 <= self.r <= 64 or not 1 <= self.p <= 16:
            raise ValueError(f"scrypt r must be 1..64 and p 1..16, got r={self.r} p={self.p}")
        if self.salt_bytes < 8 or self.key_bytes < 16:
            raise ValueError("scrypt salt must be at least 8 bytes and the key 16")

    @property
    def maxmem(self) -> int:
        # OpenSSL refuses anything above 32 MiB unless told; give it what N and r need.
        return 128 * self.r * (2 ** self.log_n + self.p + 2) + 1024 * 1024


#: Cost for new hashes: ~16 MiB and a few tens of ms, affordable for an IMAP login rate.
DEFAULT_PARAMS = ScryptParams()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _encode_password(password: str) -> bytes:
    raw = password.encode("utf-8")
    if len(raw) > MAX_PASSWORD_BYTES:
        raise ValueError(f"password longer than {MAX_PASSWORD_BYTES} bytes")
    return raw


def _derive(password: bytes, salt: bytes, log_n: int, r: int, p: int, length: int) -> bytes:
    maxmem = ScryptParams(log_n, r, p).maxmem
    return hashlib.scrypt(password, salt=salt, n=2 ** log_n, r=r, p=p, maxmem=maxmem,
                          dklen=length)


def hash_password(password: str, params: ScryptParams = DEFAULT_PARAMS,
                  salt: bytes | None = None) -> str:
    """A new ``$scrypt$`` hash of ``password`` with a random salt.

    :param salt: fixed salt, for tests only; None draws ``params.salt_bytes`` from os.urandom.
    :raises ValueError: the password is empty or longer than :data:`MAX_PASSWORD_BYTES`.
    """
    if not password:
        raise ValueError("password must not be empty")
    salt = os.urandom(params.salt_bytes) if salt is None else salt
    key = _derive(_encode_password(password), salt, params.log_n, params.r, params.p,
                  params.key_bytes)
    return (f"{_PREFIX}ln={params.log_n},r={params.r},p={params.p}"
            f"${_b64(salt)}${_b64(key)}")


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    match = _FORMAT.match(stored)
    if match is None:
        return None
    log_n, r, p = (int(g) for g in match.group(1, 2, 3))
    try:
        ScryptParams(log_n, r, p)
        salt, key = _unb64(match.group(4)), _unb64(match.group(5))
    except (ValueError, binascii.Error):
        return None
    return log_n, r, p, salt, key


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches the ``stored`` hash; False for a malformed hash.

    The comparison takes the same time whatever the bytes that differ.
    """
    parsed = _parse(stored)
    if parsed is None or not password:
        return False
    log_n, r, p, salt, key = parsed
    try:
        candidate = _derive(_encode_password(password), salt, log_n, r, p, len(key))
    except ValueError:
        return False
    return hmac.compare_digest(candidate, key)


def needs_rehash(stored: str, params: ScryptParams = DEFAULT_PARAMS) -> bool:
    """Whether ``stored`` was made with other parameters than ``params`` (or is malformed)."""
    parsed = _parse(stored)
    if parsed is None:
        return True
    log_n, r, p, salt, key = parsed
    return ((log_n, r, p, len(salt), len(key))
            != (params.log_n, params.r, params.p, params.salt_bytes, params.key_bytes))


class VerifiedLogins:
    """Passwords this process verified recently, so a client that logs in again and
    again (a phone polling every minute, a webmail opening a connection per request)
    pays scrypt once per ``ttl`` instead of every time.

    An entry is an HMAC, under a random key that never leaves the process, of the
    stored hash and the password: neither is kept, a memory dump does not reveal a
    password that could be tested offline faster than scrypt, and because the stored
    hash is part of the entry a password change (``objmail user passwd``, from any
    process) makes every entry of the old one miss at once.  Only successes are
    remembered; failures always pay scrypt (and the login rate limit).

    :param ttl: seconds an entry is honoured.
    :param max_entries: bound on memory; the oldest entries go first.
    :param clock: monotonic seconds (injected for tests).
    """

    def __init__(self, ttl: float = 300.0, max_entries: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._key = os.urandom(32)
        self._entries: OrderedDict[bytes, float] = OrderedDict()

    def _entry(self, password: str, stored: str) -> bytes:
        return hmac.digest(self._key, stored.encode("ascii", "replace") + b"\0"
                           + password.encode("utf-8", "surrogatepass"), "sha256")

    def known(self, password: str, stored: str) -> bool:
        """Whether ``password`` was verified against ``stored`` less than ``ttl`` ago."""
        if self.ttl <= 0:
            return False
        entry = self._entry(password, stored)
        expires = self._entries.get(entry)
        if expires is None:
            return False
        if expires <= self._clock():
            del self._entries[entry]
            return False
        return True

    def remember(self, password: str, stored: str) -> None:
        """Record a successful verification of ``password`` against ``stored``."""
        if self.ttl <= 0:
            return
        entry = self._entry(password, stored)
        self._entries[entry] = self._clock() + self.ttl
        self._entries.move_to_end(entry)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
