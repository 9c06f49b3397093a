"""Loading the TLS context from the configured PEM files."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from OpenSSL import SSL

from imapd.tls import ServerTLS, server_context
from ops.config import ConfigError, ImapdConfig
from tests.tls_support import make_certificates


def make_pair(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def test_no_certificate_means_no_tls() -> None:
    """Without tls_cert the server offers no TLS (None)."""
    assert server_context(ImapdConfig()) is None


@pytest.mark.system
def test_a_matching_pair_and_a_chain_load(tmp_path: Path) -> None:
    """A certificate with its key loads; a file holding a chain (leaf first) too."""
    cert, key = make_pair(tmp_path, "leaf")
    other, _ = make_pair(tmp_path, "intermediate")
    assert server_context(ImapdConfig(tls_cert=str(cert), tls_key=str(key))) is not None
    chain = tmp_path / "chain.pem"
    chain.write_bytes(cert.read_bytes() + other.read_bytes())
    assert server_context(ImapdConfig(tls_cert=str(chain), tls_key=str(key))) is not None


@pytest.mark.system
def test_problems_name_the_key(tmp_path: Path) -> None:
    """A missing file, a file without a certificate and a key of another certificate are
    ConfigErrors naming imapd.tls_cert / imapd.tls_key."""
    cert, key = make_pair(tmp_path, "a")
    _, other_key = make_pair(tmp_path, "b")
    with pytest.raises(ConfigError, match=r"imapd\.tls_cert"):
        server_context(ImapdConfig(tls_cert=str(tmp_path / "nope"), tls_key=str(key)))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"imapd\.tls_cert"):
        server_context(ImapdConfig(tls_cert=str(junk), tls_key=str(key)))
    with pytest.raises(ConfigError, match=r"imapd\.tls_key"):
        server_context(ImapdConfig(tls_cert=str(cert), tls_key=str(other_key)))


def handshake(server: ServerTLS, client: ssl.SSLContext) -> tuple[str | None, str]:
    """One TLS handshake between ``server`` (on a thread) and ``client`` over a socket
    pair: the version and suite the client negotiated.

    :raises ssl.SSLError: the handshake failed.
    """
    ours, theirs = socket.socketpair()
    failure: list[BaseException] = []

    def serve() -> None:
        conn = SSL.Connection(server.getContext(), ours)
        conn.set_accept_state()
        try:
            conn.do_handshake()
            conn.recv(1)  # until the client closes
        except (SSL.Error, OSError) as exc:
            failure.append(exc)
        finally:
            ours.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(theirs, server_hostname="localhost") as tls:
            cipher = tls.cipher()
            assert cipher is not None
            return tls.version(), cipher[0]
    finally:
        theirs.close()
        thread.join(10)


def client_context(*, maximum: ssl.TLSVersion | None = None,
                   ciphers: str | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if maximum is not None:
        if maximum < ssl.TLSVersion.TLSv1_2:
            context.minimum_version = maximum
        context.maximum_version = maximum
    if ciphers is not None:
        # SECLEVEL=0: the client really offers these suites; refusing them is the server's.
        context.set_ciphers(f"{ciphers}:@SECLEVEL=0")
    return context


@pytest.fixture(scope="module")
def rsa_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    files = make_certificates(tmp_path_factory.mktemp("tls-rsa"), rsa_keys=True)
    return files.server_cert, files.server_key


def context_for(pair: tuple[Path, Path], min_version: str = "1.2") -> ServerTLS:
    tls = server_context(ImapdConfig(tls_cert=str(pair[0]), tls_key=str(pair[1]),
                                     tls_min_version=min_version))
    assert tls is not None
    return tls


def test_tls13_is_negotiated_by_default(rsa_pair: tuple[Path, Path]) -> None:
    """A client that speaks TLS 1.3 gets it."""
    assert handshake(context_for(rsa_pair), client_context())[0] == "TLSv1.3"


@pytest.mark.parametrize("suite", ["ECDHE-RSA-AES128-GCM-SHA256",
                                   "ECDHE-RSA-AES256-GCM-SHA384",
                                   "ECDHE-RSA-CHACHA20-POLY1305"])
def test_tls12_takes_forward_secret_aead_suites(rsa_pair: tuple[Path, Path],
                                                suite: str) -> None:
    """A TLS 1.2 client gets an ECDHE suite with AES-GCM or ChaCha20-Poly1305."""
    got = handshake(context_for(rsa_pair),
                    client_context(maximum=ssl.TLSVersion.TLSv1_2, ciphers=suite))
    assert got == ("TLSv1.2", suite)


@pytest.mark.parametrize("suite", ["AES256-SHA", "AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA",
                                   "ECDHE-RSA-AES256-SHA384"])
def test_tls12_refuses_suites_without_forward_secrecy_or_aead(rsa_pair: tuple[Path, Path],
                                                              suite: str) -> None:
    """RSA key exchange (no forward secrecy) and CBC suites are refused (each of these
    handshakes succeeds against OpenSSL's permissive defaults)."""
    with pytest.raises(ssl.SSLError):
        handshake(context_for(rsa_pair),
                  client_context(maximum=ssl.TLSVersion.TLSv1_2, ciphers=suite))


def test_versions_below_the_minimum_are_refused(rsa_pair: tuple[Path, Path]) -> None:
    """TLS 1.1 is always refused; with tls_min_version = "1.3", TLS 1.2 is too."""
    with pytest.raises(ssl.SSLError):
        handshake(context_for(rsa_pair), client_context(maximum=ssl.TLSVersion.TLSv1_1,
                                                        ciphers="ECDHE-RSA-AES128-SHA"))
    strict = context_for(rsa_pair, "1.3")
    with pytest.raises(ssl.SSLError):
        handshake(strict, client_context(maximum=ssl.TLSVersion.TLSv1_2))
    assert handshake(strict, client_context())[0] == "TLSv1.3"


def test_unknown_minimum_version_names_the_key() -> None:
    """tls_min_version accepts "1.2" or "1.3" only."""
    with pytest.raises(ConfigError, match=r"tls_min_version"):
        ImapdConfig(tls_min_version="1.1")
