"""The server's TLS context, from the PEM files named by ``imapd.tls_cert``/``tls_key``.

One context serves IMAPS, STARTTLS and POP3 STLS; :mod:`runtime.tls` builds it with the
policy every objmail listener shares (TLS 1.3 preferred, TLS 1.2 down to
``imapd.tls_min_version`` with forward-secret AEAD suites only).
"""

from __future__ import annotations

from imapd.config import ImapdConfig
from runtime.tls import TLS12_CIPHERS, ServerTLS
from runtime.tls import server_context as _server_context

__all__ = ["TLS12_CIPHERS", "ServerTLS", "server_context"]


def server_context(config: ImapdConfig) -> ServerTLS | None:
    """The context for the configured certificate, or None when TLS is not configured.

    :raises ConfigError: a file is unreadable, not PEM, or the key does not match.
    """
    if not config.tls_cert:
        return None
    return _server_context("imapd", config.tls_cert, config.tls_key,
                           min_version=config.tls_min_version)
