"""What the IMAP server announces in CAPABILITY, before and after login.

The list depends on the connection: STARTTLS only while it is cleartext and a certificate is
configured; LOGINDISABLED (RFC 3501 6.2.3) and no ``AUTH=PLAIN`` while it is cleartext and
``imapd.allow_plaintext_auth`` is off.  After login the list grows by the extensions that
only make sense for an authenticated user, which the tagged OK of LOGIN/AUTHENTICATE carries
in a ``[CAPABILITY ...]`` code so clients need not ask again.
"""

from __future__ import annotations

__all__ = ["ENABLEABLE", "capabilities"]

#: Every session's list, first: the base protocol and what works in any state.
_ALWAYS = ("IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE")

#: Added once authenticated.
_AUTHENTICATED = (
    "NAMESPACE",
    "UIDPLUS",
    "MOVE",
    "SPECIAL-USE",
    "CREATE-SPECIAL-USE",
    "UNSELECT",
    "CHILDREN",
    "MULTIAPPEND",
    "CONDSTORE",
    "QRESYNC",
    "LIST-EXTENDED",
    "LIST-STATUS",
    "STATUS=SIZE",
    "QUOTA",
    "QUOTA=RES-STORAGE",
    "QUOTA=RES-MESSAGE",
    "ESEARCH",
    "SEARCHRES",
    "SORT",
    "SORT=DISPLAY",
    "THREAD=ORDEREDSUBJECT",
    "THREAD=REFERENCES",
)

#: What ENABLE (RFC 5161) can switch on.
ENABLEABLE = frozenset({"CONDSTORE", "QRESYNC"})


def capabilities(*, authenticated: bool, secure: bool, tls_available: bool,
                 allow_plaintext_auth: bool) -> tuple[str, ...]:
    """The capability list for a session in this state.

    :param secure: the connection is protected by TLS (IMAPS, or after STARTTLS).
    :param tls_available: a certificate is configured, so STARTTLS can work.
    """
    caps = list(_ALWAYS)
    if authenticated:
        caps.extend(_AUTHENTICATED)
        return tuple(caps)
    if tls_available and not secure:
        caps.append("STARTTLS")
    if secure or allow_plaintext_auth:
        caps.append("AUTH=PLAIN")
    else:
        caps.append("LOGINDISABLED")
    return tuple(caps)
