"""SASL PLAIN (RFC 4616): the one mechanism objmail offers, over TLS.

The client's message is ``[authzid] NUL authcid NUL passwd`` in UTF-8.  objmail has no
proxy authorisation, so an authorisation identity is accepted only when it is empty or names
the authenticating user itself.  Shared by IMAP AUTHENTICATE and POP3 AUTH.
"""

from __future__ import annotations

from dataclasses import dataclass

from imapd.errors import ImapdError
from runtime import errors as kinds

__all__ = ["MECHANISMS", "PlainCredentials", "ProxyRefused", "SaslError", "decode_plain"]

#: Mechanisms offered.
MECHANISMS = ("PLAIN",)

#: RFC 4616 caps each field at 255 octets; be a little lenient but bounded.
_MAX_FIELD = 1024


class SaslError(ImapdError, kinds.InvalidInput):
    """The client's SASL message is malformed (answered BAD / -ERR, not a failed login)."""


class ProxyRefused(SaslError):
    """The client asked to act as another user (answered NO [AUTHORIZATIONFAILED])."""


@dataclass(frozen=True)
class PlainCredentials:
    """What a PLAIN message says; the password is kept out of ``repr``."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"PlainCredentials(username={self.username!r}, password=<hidden>)"


def decode_plain(message: bytes) -> PlainCredentials:
    """Read a PLAIN client message.

    :raises SaslError: not three NUL-separated fields, not UTF-8, an empty user name, or
        an over-long field.
    :raises ProxyRefused: an authorisation identity other than the user.
    """
    fields = message.split(b"\0")
    if len(fields) != 3:
        raise SaslError("PLAIN needs authzid NUL authcid NUL password")
    if any(len(field) > _MAX_FIELD for field in fields):
        raise SaslError("PLAIN field too long")
    try:
        authzid, authcid, password = (field.decode("utf-8") for field in fields)
    except UnicodeDecodeError:
        raise SaslError("PLAIN fields must be UTF-8") from None
    if not authcid:
        raise SaslError("PLAIN needs a user name")
    if authzid and authzid != authcid:
        raise ProxyRefused("proxy authorisation is not supported")
    return PlainCredentials(authcid, password)
