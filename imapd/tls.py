"""The server's TLS context, from the PEM files named by ``imapd.tls_cert``/``tls_key``.

One context serves IMAPS, STARTTLS and POP3 STLS.  The certificate file may hold a chain
(leaf first, then intermediates), as Let's Encrypt and most CAs deliver it.  Problems are
reported as :class:`~ops.config.ConfigError` naming the key, at start-up, not at the first
client's handshake.

Protocol versions and suites: TLS 1.3 whenever the client has it (the handshake takes the
highest version both sides speak; all its suites are forward-secret AEAD), TLS 1.2 down
to ``imapd.tls_min_version`` with only ECDHE key exchange and AES-GCM or ChaCha20-Poly1305
(Mozilla's "intermediate" list without finite-field DHE): a recorded session cannot be
decrypted later with the server's key, and no CBC suite is offered.  Older versions,
compression and renegotiation are off.

The context is built with ``cryptography`` objects and handed to Twisted through the plain
``getContext()`` interface that ``listenSSL`` and ``startTLS`` accept.
"""

from __future__ import annotations

import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from OpenSSL import SSL

from imapd.config import ImapdConfig
from runtime.config import ConfigError

__all__ = ["TLS12_CIPHERS", "ServerTLS", "server_context"]

#: The TLS 1.2 suites offered, best first: forward-secret (ECDHE), authenticated
#: encryption (AES-GCM, ChaCha20-Poly1305).  TLS 1.3 suites are OpenSSL's (all such).
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")

_MIN_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


class ServerTLS:
    """A Twisted context factory over one prepared server context."""

    def __init__(self, context: SSL.Context) -> None:
        self._context = context

    def getContext(self) -> SSL.Context:
        return self._context


def _read(path: str, key: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from None


def server_context(config: ImapdConfig) -> ServerTLS | None:
    """The context for the configured certificate, or None when TLS is not configured.

    :raises ConfigError: a file is unreadable, not PEM, or the key does not match.
    """
    if not config.tls_cert:
        return None
    chain = _PEM_CERT.findall(_read(config.tls_cert, "imapd.tls_cert"))
    if not chain:
        raise ConfigError("imapd.tls_cert", f"no PEM certificate in {config.tls_cert}")
    key_pem = _read(config.tls_key, "imapd.tls_key")
    try:
        certificates = [x509.load_pem_x509_certificate(pem) for pem in chain]
    except ValueError as exc:
        raise ConfigError("imapd.tls_cert", f"unreadable certificate: {exc}") from None
    try:
        key = load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError("imapd.tls_key", f"unreadable or encrypted key: {exc}") from None
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(_MIN_VERSIONS[config.tls_min_version])
    context.set_cipher_list(TLS12_CIPHERS.encode())
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE
                        | SSL.OP_NO_RENEGOTIATION)
    try:
        context.use_certificate(certificates[0])
        for extra in certificates[1:]:
            context.add_extra_chain_cert(extra)
        context.use_privatekey(key)  # type: ignore[arg-type]
        context.check_privatekey()
    except SSL.Error as exc:
        raise ConfigError("imapd.tls_key", f"key does not match the certificate: {exc}") \
            from None
    return ServerTLS(context)
