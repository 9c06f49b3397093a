"""What the IMAP server announces in CAPABILITY, before and after login.

The list depends on the connection: STARTTLS only while it is cleartext and a certificate is
configured; LOGINDISABLED (RFC 3501 6.2.3) and no ``AUTH=PLAIN`` while it is cleartext and
``imapd.allow_plaintext_auth`` is off.  After login the list grows by the extensions that
only make sense for an authenticated user, which the tagged OK of LOGIN/AUTHENTICATE carries
in a ``[CAPABILITY ...]`` code so clients need not ask again.
"""

from __future__ import annotations

__all__ = ["ENABLEABLE", "REV2_NEEDS", "capabilities", "rev2_missing"]

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
    "NOTIFY",
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
    "ESORT",
    "CONTEXT=SEARCH",
    "CONTEXT=SORT",
    "THREAD=ORDEREDSUBJECT",
    "THREAD=REFERENCES",
    "COMPRESS=DEFLATE",  # RFC 4978: authenticated state only (its ABNF: command-auth)
    "BINARY",
    "CATENATE",
)

#: What ENABLE (RFC 5161) can switch on (upper-cased, as the grammar reads them); IMAP4rev2
#: only while it is announced.
ENABLEABLE = frozenset({"CONDSTORE", "QRESYNC", "IMAP4REV2"})

#: The extensions RFC 9051 folds into IMAP4rev2 (Appendix E, docs/imap-protocol.md): a
#: rev2 client may use any of them without looking, so IMAP4rev2 is announced only once
#: every one is.  LITERAL+ stands for LITERAL- (RFC 7888 5: a superset); BINARY, the last
#: to come, completed the set.
REV2_NEEDS = frozenset({
    "NAMESPACE", "UNSELECT", "UIDPLUS", "ESEARCH", "SEARCHRES", "ENABLE", "IDLE", "SASL-IR",
    "LIST-EXTENDED", "LIST-STATUS", "MOVE", "LITERAL+", "BINARY", "SPECIAL-USE",
    "STATUS=SIZE",
})


def rev2_missing(caps: tuple[str, ...]) -> frozenset[str]:
    """What IMAP4rev2 still lacks among an authenticated session's capabilities."""
    return REV2_NEEDS - set(caps)


def capabilities(*, authenticated: bool, secure: bool, tls_available: bool,
                 allow_plaintext_auth: bool) -> tuple[str, ...]:
    """The capability list for a session in this state.

    :param secure: the connection is protected by TLS (IMAPS, or after STARTTLS).
    :param tls_available: a certificate is configured, so STARTTLS can work.
    """
    caps = list(_ALWAYS)
    if not rev2_missing((*_ALWAYS, *_AUTHENTICATED)):
        # Before login too: a client decides from the greeting which protocol it speaks.
        caps.insert(1, "IMAP4rev2")
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
