"""What CAPABILITY announces in each situation."""

from __future__ import annotations

from imapd.capabilities import REV2_NEEDS, capabilities, rev2_missing


def test_cleartext_without_plaintext_auth() -> None:
    """Cleartext with a certificate: STARTTLS and LOGINDISABLED, no AUTH=PLAIN."""
    caps = capabilities(authenticated=False, secure=False, tls_available=True,
                        allow_plaintext_auth=False)
    assert caps[0] == "IMAP4rev1"
    assert "STARTTLS" in caps and "LOGINDISABLED" in caps and "AUTH=PLAIN" not in caps


def test_tls_or_allowed_plaintext() -> None:
    """Over TLS (or when plaintext is allowed) AUTH=PLAIN replaces LOGINDISABLED, and
    STARTTLS is gone once TLS is active."""
    caps = capabilities(authenticated=False, secure=True, tls_available=True,
                        allow_plaintext_auth=False)
    assert "AUTH=PLAIN" in caps and "STARTTLS" not in caps and "LOGINDISABLED" not in caps
    caps = capabilities(authenticated=False, secure=False, tls_available=False,
                        allow_plaintext_auth=True)
    assert "AUTH=PLAIN" in caps and "STARTTLS" not in caps


def test_after_login() -> None:
    """Authenticated sessions get the extensions of the issue, and no login words."""
    caps = capabilities(authenticated=True, secure=False, tls_available=True,
                        allow_plaintext_auth=False)
    for name in ("IDLE", "NAMESPACE", "UIDPLUS", "MOVE", "SPECIAL-USE", "LITERAL+", "ENABLE",
                 "ID", "UNSELECT", "CONDSTORE", "QRESYNC", "ESEARCH", "SEARCHRES", "SORT",
                 "SORT=DISPLAY", "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES"):
        assert name in caps
    assert "STARTTLS" not in caps and "LOGINDISABLED" not in caps


def test_notify_and_imap4rev2_follow_what_they_need() -> None:
    """NOTIFY is announced after login; IMAP4rev2 (before login too) exactly when every
    extension it folds in is announced, which a list lacking BINARY is not."""
    caps = capabilities(authenticated=True, secure=True, tls_available=False,
                        allow_plaintext_auth=True)
    assert "NOTIFY" in caps and "IMAP4rev1" in caps
    assert ("IMAP4rev2" in caps) == (not rev2_missing(caps))
    before = capabilities(authenticated=False, secure=True, tls_available=False,
                          allow_plaintext_auth=True)
    assert ("IMAP4rev2" in before) == ("IMAP4rev2" in caps)
    assert rev2_missing(tuple(REV2_NEEDS)) == frozenset()
    assert rev2_missing(tuple(REV2_NEEDS - {"BINARY"})) == {"BINARY"}


def test_list_extended_list_status_and_quota_after_login() -> None:
    """LIST-EXTENDED, LIST-STATUS and QUOTA with both resources are announced after login,
    QUOTASET never (SETQUOTA is refused), none of them before."""
    caps = capabilities(authenticated=True, secure=True, tls_available=True,
                        allow_plaintext_auth=False)
    for name in ("LIST-EXTENDED", "LIST-STATUS", "QUOTA", "QUOTA=RES-STORAGE",
                 "QUOTA=RES-MESSAGE"):
        assert name in caps
    assert "QUOTASET" not in caps
    before = capabilities(authenticated=False, secure=True, tls_available=True,
                          allow_plaintext_auth=False)
    assert not {"LIST-EXTENDED", "QUOTA"} & set(before)
