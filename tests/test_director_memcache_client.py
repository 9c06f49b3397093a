"""The director's object-server client: how its connections are made (credentials from
``director.objstore_auth_file``, TLS from ``objstore_tls_*``), against real objstored
processes with and without an auth file and TLS."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from director.config import DirectorConfig
from director.memcache_client import (
    NodeAccess,
    NodeAddress,
    NodeAuthFailed,
    NodeClient,
    NodeUnavailable,
)
from objstore.auth import AUTH_KEY
from runtime.config import ConfigError
from tests.objstore_process import Objstored, objstored
from tests.tls_support import TlsFiles, make_certificates

USER, PASSWORD = "director", "pw-of-the-director"


def auth_file(directory: Path, text: str = f"{USER}:{PASSWORD}\n", mode: int = 0o600) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "blob-auth"
    path.write_text(text)
    path.chmod(mode)
    return path


def node(server: Objstored, access: NodeAccess, timeout: float = 5.0) -> NodeClient:
    return NodeClient(NodeAddress(server.host, server.port), access=access, timeout=timeout)


async def roundtrip(client: NodeClient, key: bytes = b"k") -> bytes | None:
    try:
        assert await client.set(key, b"value")
        got = await client.get(key)
        return None if got is None else got.value
    finally:
        await client.close()


# -- configuration (no process) -------------------------------------------------------


def test_access_reads_the_first_authfile_line(tmp_path: Path) -> None:
    """objstore_auth_file is a memcached authfile (the servers' own will do): the client
    logs in as its first user; without the key it sends no credentials."""
    path = auth_file(tmp_path, f"{USER}:{PASSWORD}\nother:pw\n")
    access = NodeAccess.load(DirectorConfig(objstore_auth_file=str(path)))
    assert (access.user, access.password, access.tls) == (USER, PASSWORD, None)
    assert PASSWORD not in repr(access)
    assert NodeAccess.load(DirectorConfig()) == NodeAccess()


@pytest.mark.parametrize(("text", "mode", "words"), [
    (f"{USER}:{PASSWORD}\n", 0o644, "chmod 600"),
    ("no colon here\n", 0o600, "expected user:password"),
    ("user:two words\n", 0o600, "hold no space"),
    ("\n\n", 0o600, "no user:password line"),
])
def test_access_refuses_bad_authfiles(tmp_path: Path, text: str, mode: int,
                                      words: str) -> None:
    """A readable, malformed or empty file is a ConfigError naming the key."""
    path = auth_file(tmp_path, text, mode)
    with pytest.raises(ConfigError) as info:
        NodeAccess.load(DirectorConfig(objstore_auth_file=str(path)))
    assert info.value.key == "director.objstore_auth_file"
    assert words in str(info.value)


def test_access_tls_settings_are_checked(tmp_path: Path) -> None:
    """A client certificate without a CA (TLS off) is refused; a missing CA file is a
    ConfigError naming objstore_tls_ca."""
    with pytest.raises(ConfigError, match="objstore_tls_ca"):
        DirectorConfig(objstore_tls_cert="c.pem", objstore_tls_key="k.pem")
    with pytest.raises(ConfigError) as info:
        NodeAccess.load(DirectorConfig(objstore_tls_ca=str(tmp_path / "missing.pem")))
    assert info.value.key == "director.objstore_tls_ca"


# -- against objstored ----------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Objstored]:
    tmp = tmp_path_factory.mktemp("auth")
    with objstored(tmp, auth_file=str(auth_file(tmp)),
                   access=NodeAccess(USER, PASSWORD)) as s:
        yield s


@pytest.mark.system
def test_client_logs_in_on_each_connection(auth_server: Objstored) -> None:
    """With the right credentials every pooled connection logs in before its first
    request; the login stores nothing."""
    client = node(auth_server, NodeAccess(USER, PASSWORD))

    async def go() -> None:
        keys = [b"pooled-%d" % i for i in range(16)]
        assert all(await asyncio.gather(*(client.set(k, b"v") for k in keys)))
        assert len(client._conns) > 1
        assert await client.get(AUTH_KEY) is None
        # (An unauthenticated connection's set would have been refused.)
        assert int((await client.stats())["auth_cmds"]) >= len(client._conns)
        await client.close()

    asyncio.run(go())


@pytest.mark.system
def test_wrong_password_is_a_prompt_node_error(auth_server: Objstored) -> None:
    """Refused credentials raise NodeAuthFailed (an unavailable node) at once, with the
    server's words, instead of hanging until a timeout."""
    client = node(auth_server, NodeAccess(USER, "wrong"), timeout=30)
    started = time.monotonic()
    with pytest.raises(NodeAuthFailed, match="authentication failure"):
        asyncio.run(roundtrip(client))
    assert time.monotonic() - started < 5
    assert issubclass(NodeAuthFailed, NodeUnavailable)


@pytest.mark.system
def test_missing_credentials_are_a_node_error(auth_server: Objstored) -> None:
    """A client without credentials talking to a server that wants some gets
    NodeAuthFailed naming the setting, not a protocol error."""
    with pytest.raises(NodeAuthFailed, match="objstore_auth_file"):
        asyncio.run(roundtrip(node(auth_server, NodeAccess())))


@pytest.mark.system
def test_credentials_never_reach_an_open_server(tmp_path: Path) -> None:
    """Against a server without an auth file the client sees VERSION and does not send
    its login, so the password is not stored there."""
    with objstored(tmp_path) as server:
        assert asyncio.run(roundtrip(node(server, NodeAccess(USER, PASSWORD)))) == b"value"

        async def look() -> None:
            probe = node(server, NodeAccess())
            try:
                assert await probe.get(AUTH_KEY) is None
                assert int((await probe.stats())["curr_items"]) == 1
            finally:
                await probe.close()

        asyncio.run(look())


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_certificates(tmp_path_factory.mktemp("tls"))


def tls_access(certs: TlsFiles, *, with_cert: bool, user: str = "",
               password: str = "") -> NodeAccess:
    config = DirectorConfig(
        objstore_tls_ca=str(certs.ca),
        objstore_tls_cert=str(certs.client_cert) if with_cert else "",
        objstore_tls_key=str(certs.client_key) if with_cert else "")
    return NodeAccess(user, password, NodeAccess.load(config).tls)


@pytest.mark.system
def test_tls_with_client_certificate_and_login(tmp_path: Path, certs: TlsFiles) -> None:
    """The client speaks TLS with its certificate to a server that verifies clients,
    then logs in; without a certificate it cannot connect (NodeUnavailable)."""
    access = tls_access(certs, with_cert=True, user=USER, password=PASSWORD)
    with objstored(tmp_path, tls_cert=str(certs.server_cert), tls_key=str(certs.server_key),
                   tls_ca=str(certs.ca), auth_file=str(auth_file(tmp_path / "s")),
                   access=access) as server:
        assert asyncio.run(roundtrip(node(server, access))) == b"value"
        with pytest.raises(NodeUnavailable):
            asyncio.run(roundtrip(node(server, tls_access(certs, with_cert=False, user=USER,
                                                          password=PASSWORD))))
