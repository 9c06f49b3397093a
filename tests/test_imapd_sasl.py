"""SASL PLAIN messages."""

from __future__ import annotations

import pytest

from imapd.sasl import PlainCredentials, ProxyRefused, SaslError, decode_plain


def test_plain_with_and_without_authzid() -> None:
    """An empty authzid, or one equal to the user, is accepted; UTF-8 passwords work."""
    assert decode_plain(b"\0alice\0s\xc3\xa9cret") == PlainCredentials("alice", "sécret")
    assert decode_plain(b"alice\0alice\0pw") == PlainCredentials("alice", "pw")


@pytest.mark.parametrize("message", [b"alice\0pw", b"\0\0pw", b"\0a\0b\0c", b"\0\xff\0pw",
                                     b"\0" + b"a" * 2000 + b"\0pw"])
def test_malformed_plain(message: bytes) -> None:
    """Wrong field count, empty user, non-UTF-8 or over-long fields are SaslError."""
    with pytest.raises(SaslError):
        decode_plain(message)


def test_proxy_authorisation_is_refused() -> None:
    """Asking to act as someone else is ProxyRefused (NO [AUTHORIZATIONFAILED])."""
    with pytest.raises(ProxyRefused):
        decode_plain(b"root\0alice\0pw")


def test_password_is_not_in_repr() -> None:
    """Credentials never print their password."""
    assert "pw" not in repr(PlainCredentials("alice", "pw"))
