"""TLS contexts from the PEM files a config names: servers (imapd, objstored, directord)
and the director's client to the object servers.

One policy for every listener: TLS 1.3 whenever the client has it (the handshake takes
the highest version both sides speak; all its suites are forward-secret AEAD), TLS 1.2
down to the configured minimum with only ECDHE key exchange and AES-GCM or
ChaCha20-Poly1305 (Mozilla's "intermediate" list without finite-field DHE): a recorded
session cannot be decrypted later with the server's key, and no CBC suite is offered.
Older versions, compression and renegotiation are off.

A server certificate file may hold a chain (leaf first, then intermediates), as Let's
Encrypt and most CAs deliver it.  With a CA file, the server asks every client for a
certificate and refuses the handshake of a client without one signed by that CA.

Problems are reported as :class:`~runtime.config.ConfigError` naming the key, at
start-up, not at the first client's handshake.  Server contexts are pyOpenSSL contexts
handed to Twisted through the plain ``getContext()`` interface that ``listenSSL``,
``startTLS`` and ``TLSMemoryBIOFactory`` accept; the client context is the standard
library's, for asyncio.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from OpenSSL import SSL

from runtime.config import ConfigError

__all__ = ["TLS12_CIPHERS", "TLS_VERSIONS", "ServerTLS", "client_context", "server_context"]

#: The TLS 1.2 suites offered, best first: forward-secret (ECDHE), authenticated
#: encryption (AES-GCM, ChaCha20-Poly1305).  TLS 1.3 suites are OpenSSL's (all such).
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")

#: The accepted values of a ``tls_min_version`` setting.
TLS_VERSIONS = ("1.2", "1.3")

_MIN_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
_CLIENT_MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

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


def _verify(_conn: SSL.Connection, _cert: object, _errno: int, _depth: int, ok: int) -> bool:
    # OpenSSL has checked the chain against the CA; its verdict stands.
    return bool(ok)


def server_context(section: str, cert: str, key: str, ca: str = "", *,
                   min_version: str = "1.2") -> ServerTLS:
    """The server context for ``<section>.tls_cert``/``tls_key`` (and ``tls_ca``: client
    certificates required and verified against it).

    :param section: the config section, for the keys errors name (``imapd``...).
    :raises ConfigError: a file is unreadable, not PEM, or the key does not match.
    """
    chain = _PEM_CERT.findall(_read(cert, f"{section}.tls_cert"))
    if not chain:
        raise ConfigError(f"{section}.tls_cert", f"no PEM certificate in {cert}")
    key_pem = _read(key, f"{section}.tls_key")
    try:
        certificates = [x509.load_pem_x509_certificate(pem) for pem in chain]
    except ValueError as exc:
        raise ConfigError(f"{section}.tls_cert", f"unreadable certificate: {exc}") from None
    try:
        private = load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{section}.tls_key",
                          f"unreadable or encrypted key: {exc}") from None
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(_MIN_VERSIONS[min_version])
    context.set_cipher_list(TLS12_CIPHERS.encode())
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE
                        | SSL.OP_NO_RENEGOTIATION)
    try:
        context.use_certificate(certificates[0])
        for extra in certificates[1:]:
            context.add_extra_chain_cert(extra)
        context.use_privatekey(private)  # type: ignore[arg-type]
        context.check_privatekey()
    except SSL.Error as exc:
        raise ConfigError(f"{section}.tls_key",
                          f"key does not match the certificate: {exc}") from None
    if ca:
        _read(ca, f"{section}.tls_ca")  # say which file is unreadable, by its key
        try:
            context.load_verify_locations(ca)
        except SSL.Error as exc:
            raise ConfigError(f"{section}.tls_ca", f"no usable CA certificate in {ca}: "
                                                   f"{exc}") from None
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verify)
        # Sessions resumed with a verified peer need an id context (OpenSSL refuses the
        # resumption otherwise).
        context.set_session_id(f"objmail-{section}".encode())
    return ServerTLS(context)


def client_context(ca: str, cert: str = "", key: str = "", *, prefix: str,
                   min_version: str = "1.2") -> ssl.SSLContext:
    """A client context that trusts only ``ca`` (and checks the server's name), presenting
    ``cert``/``key`` when given.

    :param prefix: the dotted prefix of the keys errors name (``director.objstore_`` for
        ``director.objstore_tls_ca``...).
    :raises ConfigError: a file is unreadable or not PEM, or the key does not match.
    """
    for name, path in (("tls_ca", ca), ("tls_cert", cert), ("tls_key", key)):
        if path:
            _read(path, f"{prefix}{name}")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    except ssl.SSLError as exc:
        raise ConfigError(f"{prefix}tls_ca", f"no usable CA certificate in {ca}: "
                                             f"{exc}") from None
    context.minimum_version = _CLIENT_MIN_VERSIONS[min_version]
    context.set_ciphers(TLS12_CIPHERS)
    if cert:
        try:
            context.load_cert_chain(cert, key or None)
        except ssl.SSLError as exc:
            raise ConfigError(f"{prefix}tls_key", f"unusable certificate or key: "
                                                  f"{exc}") from None
    return context
