"""Loading the TLS context from the configured PEM files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from imapd.tls import server_context
from ops.config import ConfigError, ImapdConfig


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
