"""Unit tests of scrypt password hashing in passlib's $scrypt$ format."""

from __future__ import annotations

import base64
import hashlib

import pytest

from metadata.passwords import (
    MAX_PASSWORD_BYTES,
    ScryptParams,
    VerifiedLogins,
    hash_password,
    needs_rehash,
    verify_password,
)

FAST = ScryptParams(log_n=4)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def test_rfc7914_vector_verifies() -> None:
    """A hash string built from the RFC 7914 test vector (N=1024, r=8, p=16) verifies, so
    ln means log2(N) and the salt/key are standard base64 without padding."""
    key = bytes.fromhex(
        "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162"
        "2eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc0640")
    stored = f"$scrypt$ln=10,r=8,p=16${_b64(b'NaCl')}${_b64(key)}"
    assert verify_password("password", stored)
    assert not verify_password("Password", stored)


def test_hash_round_trip_and_format() -> None:
    """A new hash names its parameters, carries a 16-byte salt and verifies only the right
    password."""
    stored = hash_password("s3cret é", FAST)
    prefix, scheme, params, salt, key = stored.split("$")
    assert (prefix, scheme, params) == ("", "scrypt", "ln=4,r=8,p=1")
    assert len(base64.b64decode(salt + "==")) == 16
    expected = hashlib.scrypt("s3cret é".encode(), salt=base64.b64decode(salt + "=="),
                              n=16, r=8, p=1, dklen=32)
    assert base64.b64decode(key + "=") == expected
    assert verify_password("s3cret é", stored)
    assert not verify_password("s3cret e", stored)


def test_salts_differ() -> None:
    """Two hashes of one password differ (random salt) and both verify."""
    a, b = hash_password("pw", FAST), hash_password("pw", FAST)
    assert a != b
    assert verify_password("pw", a) and verify_password("pw", b)


def test_default_parameters_verify() -> None:
    """The default cost (N=2^14) works within OpenSSL's memory limit."""
    stored = hash_password("pw")
    assert stored.startswith("$scrypt$ln=14,r=8,p=1$")
    assert verify_password("pw", stored)


@pytest.mark.parametrize("stored", [
    "",
    "plain",
    "$scrypt$ln=4,r=8,p=1$c2FsdA",
    "$scrypt$ln=99,r=8,p=1$c2FsdA$a2V5a2V5a2V5a2V5",
    "$scrypt$ln=4,r=8,p=1$!!!$a2V5",
    "$2b$12$abcdefghijklmnopqrstuu",
])
def test_malformed_hash_never_verifies(stored: str) -> None:
    """A malformed or foreign hash string verifies nothing and asks for a rehash."""
    assert not verify_password("pw", stored)
    assert needs_rehash(stored)


def test_needs_rehash_compares_parameters() -> None:
    """A hash made with other parameters than the current ones needs a rehash."""
    stored = hash_password("pw", FAST)
    assert not needs_rehash(stored, FAST)
    assert needs_rehash(stored, ScryptParams(log_n=5))


def test_empty_and_oversized_passwords() -> None:
    """Empty passwords cannot be set or verified; oversized ones are refused."""
    with pytest.raises(ValueError):
        hash_password("", FAST)
    assert not verify_password("", hash_password("x", FAST))
    with pytest.raises(ValueError):
        hash_password("x" * (MAX_PASSWORD_BYTES + 1), FAST)
    assert not verify_password("x" * (MAX_PASSWORD_BYTES + 1), hash_password("x", FAST))


def test_bad_parameters_rejected() -> None:
    """Cost parameters outside the sane range are refused when configured."""
    with pytest.raises(ValueError):
        ScryptParams(log_n=0)
    with pytest.raises(ValueError):
        ScryptParams(r=0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_verified_logins_remember_successes_for_their_ttl() -> None:
    """A remembered password is known against the same stored hash until the TTL passes."""
    clock = FakeClock()
    cache = VerifiedLogins(ttl=60, clock=clock)
    assert not cache.known("pw", "$scrypt$A")
    cache.remember("pw", "$scrypt$A")
    assert cache.known("pw", "$scrypt$A")
    assert not cache.known("pw2", "$scrypt$A")
    assert not cache.known("pw", "$scrypt$B")  # the password was changed: a miss
    clock.now += 59.9
    assert cache.known("pw", "$scrypt$A")
    clock.now += 0.2
    assert not cache.known("pw", "$scrypt$A")
    assert len(cache) == 0


def test_verified_logins_keep_neither_password_nor_hash() -> None:
    """Entries are keyed digests: the password and stored hash appear nowhere in them."""
    cache = VerifiedLogins()
    cache.remember("correct horse", "$scrypt$ln=14,r=8,p=1$salt$key")
    entries = list(cache._entries)
    assert len(entries) == 1 and len(entries[0]) == 32
    assert b"correct horse" not in entries[0] and b"scrypt" not in entries[0]
    # Another process (another random key) does not recognise the entry.
    assert not VerifiedLogins().known("correct horse", "$scrypt$ln=14,r=8,p=1$salt$key")


def test_verified_logins_are_bounded() -> None:
    """The oldest entries are dropped beyond max_entries; ttl 0 turns the cache off."""
    cache = VerifiedLogins(max_entries=3)
    for n in range(5):
        cache.remember(f"pw{n}", "h")
    assert len(cache) == 3
    assert not cache.known("pw0", "h") and not cache.known("pw1", "h")
    assert cache.known("pw4", "h")
    off = VerifiedLogins(ttl=0)
    off.remember("pw", "h")
    assert not off.known("pw", "h") and len(off) == 0
